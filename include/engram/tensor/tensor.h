// A small tensor: dtype, shape and strides over a buffer it owns or shares (e.g. a memory-mapped
// safetensors file). Row-major; strides are in elements.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/tensor/dtype.h"

namespace engram {

class Tensor {
 public:
  Tensor() = default;
  // A new zero-filled contiguous tensor.
  Tensor(DType dtype, std::vector<int64_t> shape);
  // A view of `data` (kept alive by `owner`), contiguous unless strides are given.
  static Tensor view(DType dtype, std::vector<int64_t> shape, void* data,
                     std::shared_ptr<void> owner, std::vector<int64_t> strides = {});

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  bool empty() const { return data_ == nullptr; }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  // Typed access; throws engram::Error if T does not match dtype().
  template <class T>
  T* data();
  template <class T>
  const T* data() const;

  // A contiguous copy converted to `dtype` (float types among themselves; integers among
  // themselves). Throws engram::Error for unsupported conversions.
  Tensor to(DType dtype) const;
  // A contiguous copy.
  Tensor contiguous() const;
  // "F32[2, 12, 4, 64]".
  std::string describe() const;

 private:
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_, strides_;
  void* data_ = nullptr;
  std::shared_ptr<void> owner_;
};

// Row-major contiguous strides of a shape.
std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape);

}  // namespace engram
