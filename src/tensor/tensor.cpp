#include "engram/tensor/tensor.h"

#include <cassert>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include "engram/util/error.h"

namespace engram {
namespace {

constexpr size_t kAlignment = 64;

std::string shape_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  return s + "]";
}

// Product of the dimensions; throws on a negative dimension or if the byte size would overflow.
int64_t checked_numel(const std::vector<int64_t>& shape, DType dtype, const char* where) {
  int64_t n = 1;
  const auto limit = std::numeric_limits<int64_t>::max() / static_cast<int64_t>(dtype_size(dtype));
  for (const int64_t d : shape) {
    if (d < 0)
      throw Error(error_message(where, "negative dimension in shape " + shape_string(shape)));
    if (d != 0 && n > limit / d) {
      throw Error(error_message(where, "shape " + shape_string(shape) + " is too large"));
    }
    n *= d;
  }
  return n;
}

std::shared_ptr<void> allocate_zeroed(size_t bytes) {
  // Round up so the size is a multiple of the alignment (as aligned_alloc requires) and never
  // zero, so that even a tensor without elements has a buffer.
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded == 0 ? kAlignment : rounded);
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>) return DType::kF64;
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  if constexpr (std::is_same_v<T, bf16>) return DType::kBF16;
  if constexpr (std::is_same_v<T, int64_t>) return DType::kI64;
  if constexpr (std::is_same_v<T, int32_t>) return DType::kI32;
  if constexpr (std::is_same_v<T, int16_t>) return DType::kI16;
  if constexpr (std::is_same_v<T, int8_t>) return DType::kI8;
  if constexpr (std::is_same_v<T, uint8_t>) return DType::kU8;
}

bool is_float(DType t) {
  return t == DType::kF64 || t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}
bool is_integer(DType t) {
  return t == DType::kI64 || t == DType::kI32 || t == DType::kI16 || t == DType::kI8 ||
         t == DType::kU8 || t == DType::kBool;
}

// Float element i of a contiguous buffer, widened to double (exact for every float dtype).
double load_float(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF64:
      return static_cast<const double*>(p)[i];
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kBF16:
      return bf16_to_float(static_cast<const bf16*>(p)[i]);
    case DType::kF16:
      return f16_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      break;
  }
  assert(false);
  return 0;
}

int64_t load_integer(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kI64:
      return static_cast<const int64_t*>(p)[i];
    case DType::kI32:
      return static_cast<const int32_t*>(p)[i];
    case DType::kI16:
      return static_cast<const int16_t*>(p)[i];
    case DType::kI8:
      return static_cast<const int8_t*>(p)[i];
    case DType::kU8:
      return static_cast<const uint8_t*>(p)[i];
    case DType::kBool:
      return static_cast<const uint8_t*>(p)[i] != 0;
    default:
      break;
  }
  assert(false);
  return 0;
}

template <class T>
void store_checked(void* p, int64_t i, int64_t v, DType to) {
  if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
    throw InputError(error_message(
        "Tensor::to(" + std::string(dtype_name(to)) + ")",
        "element " + std::to_string(i) + " = " + std::to_string(v) + " is out of range"));
  }
  static_cast<T*>(p)[i] = static_cast<T>(v);
}

}  // namespace

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

Tensor::Tensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
  const int64_t n = checked_numel(shape_, dtype_, "Tensor");
  strides_ = contiguous_strides(shape_);
  owner_ = allocate_zeroed(static_cast<size_t>(n) * dtype_size(dtype_));
  data_ = owner_.get();
}

Tensor Tensor::view(DType dtype, std::vector<int64_t> shape, void* data,
                    std::shared_ptr<void> owner, std::vector<int64_t> strides) {
  const int64_t n = checked_numel(shape, dtype, "Tensor::view");
  if (!strides.empty() && strides.size() != shape.size()) {
    throw Error(error_message("Tensor::view", std::to_string(strides.size()) +
                                                  " strides for shape " + shape_string(shape)));
  }
  if (data == nullptr && n > 0) throw Error(error_message("Tensor::view", "null data"));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.strides_ = strides.empty() ? contiguous_strides(t.shape_) : std::move(strides);
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape_) n *= d;
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 0) return true;
    if (shape_[i] != 1 && strides_[i] != expected) return false;  // a size-1 dim's stride is moot
    expected *= shape_[i];
  }
  return true;
}

template <class T>
T* Tensor::data() {
  return const_cast<T*>(std::as_const(*this).data<T>());
}

template <class T>
const T* Tensor::data() const {
  constexpr DType want = dtype_of<T>();
  if (dtype_ != want) {
    throw Error(error_message("Tensor::data<" + std::string(dtype_name(want)) + ">",
                              "tensor is " + describe()));
  }
  return static_cast<const T*>(data_);
}

#define ENGRAM_TENSOR_DATA(T)    \
  template T* Tensor::data<T>(); \
  template const T* Tensor::data<T>() const;
ENGRAM_TENSOR_DATA(double)
ENGRAM_TENSOR_DATA(float)
ENGRAM_TENSOR_DATA(bf16)
ENGRAM_TENSOR_DATA(int64_t)
ENGRAM_TENSOR_DATA(int32_t)
ENGRAM_TENSOR_DATA(int16_t)
ENGRAM_TENSOR_DATA(int8_t)
ENGRAM_TENSOR_DATA(uint8_t)
#undef ENGRAM_TENSOR_DATA

Tensor Tensor::contiguous() const {
  if (empty() && numel() != 0) return Tensor();  // a default-constructed tensor
  Tensor out(dtype_, shape_);
  const int64_t n = numel();
  if (n == 0) return out;
  const size_t esize = dtype_size(dtype_);
  if (is_contiguous()) {
    std::memcpy(out.data_, data_, static_cast<size_t>(n) * esize);
    return out;
  }
  // Walk the source in row-major order, one innermost row at a time. Strides may be anything,
  // including zero (broadcast) and negative.
  const size_t r = shape_.size();
  const int64_t inner = shape_[r - 1], inner_stride = strides_[r - 1];
  const auto* src = static_cast<const unsigned char*>(data_);
  auto* dst = static_cast<unsigned char*>(out.data_);
  std::vector<int64_t> index(r, 0);
  int64_t offset = 0;  // element offset of index[0..r-2] in the source
  for (int64_t row = 0, rows = n / inner; row < rows; ++row) {
    const unsigned char* s = src + offset * static_cast<int64_t>(esize);
    if (inner_stride == 1) {
      std::memcpy(dst, s, static_cast<size_t>(inner) * esize);
      dst += static_cast<size_t>(inner) * esize;
    } else {
      const int64_t step = inner_stride * static_cast<int64_t>(esize);
      for (int64_t j = 0; j < inner; ++j, s += step, dst += esize) std::memcpy(dst, s, esize);
    }
    for (size_t d = r - 1; d-- > 0;) {  // odometer over the outer dimensions
      offset += strides_[d];
      if (++index[d] < shape_[d]) break;
      offset -= strides_[d] * shape_[d];
      index[d] = 0;
    }
  }
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (empty() && numel() != 0) return Tensor();
  if (dtype == dtype_) return contiguous();
  const bool floats = is_float(dtype_) && is_float(dtype);
  const bool integers = is_integer(dtype_) && is_integer(dtype);
  if (!floats && !integers) {
    throw Error(error_message("Tensor::to", "unsupported conversion from " + describe() + " to " +
                                                std::string(dtype_name(dtype))));
  }
  const Tensor src = contiguous();
  Tensor out(dtype, shape_);
  const int64_t n = numel();
  const void* s = src.raw();
  void* d = out.raw();
  if (floats) {
    if (dtype_ == DType::kF32 && dtype == DType::kBF16) {  // the common case, kept cheap
      const auto* f = static_cast<const float*>(s);
      auto* b = static_cast<bf16*>(d);
      for (int64_t i = 0; i < n; ++i) b[i] = float_to_bf16(f[i]);
      return out;
    }
    // Widening to double is exact, so each conversion below rounds once.
    for (int64_t i = 0; i < n; ++i) {
      const double v = load_float(dtype_, s, i);
      switch (dtype) {
        case DType::kF64:
          static_cast<double*>(d)[i] = v;
          break;
        case DType::kF32:
          static_cast<float*>(d)[i] = static_cast<float>(v);
          break;
        case DType::kBF16:
          static_cast<bf16*>(d)[i] = double_to_bf16(v);
          break;
        case DType::kF16:
          static_cast<uint16_t*>(d)[i] = double_to_f16(v);
          break;
        default:
          assert(false);
      }
    }
    return out;
  }
  // Integers: values must fit the target (bool takes "non-zero").
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = load_integer(dtype_, s, i);
    switch (dtype) {
      case DType::kI64:
        static_cast<int64_t*>(d)[i] = v;
        break;
      case DType::kI32:
        store_checked<int32_t>(d, i, v, dtype);
        break;
      case DType::kI16:
        store_checked<int16_t>(d, i, v, dtype);
        break;
      case DType::kI8:
        store_checked<int8_t>(d, i, v, dtype);
        break;
      case DType::kU8:
        store_checked<uint8_t>(d, i, v, dtype);
        break;
      case DType::kBool:
        static_cast<uint8_t*>(d)[i] = v != 0;
        break;
      default:
        assert(false);
    }
  }
  return out;
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_string(shape_);
}

}  // namespace engram
