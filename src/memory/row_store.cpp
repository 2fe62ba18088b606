#include "engram/memory/row_store.h"

#include <string>

#include "engram/util/error.h"

namespace engram::memory {

TensorRowStore::TensorRowStore(Tensor table) : table_(std::move(table)) {
  if (table_.rank() != 2 || !table_.is_contiguous()) {
    throw Error("TensorRowStore: expected a contiguous (rows, width) table, got " +
                table_.describe());
  }
  const DType t = table_.dtype();
  if (t != DType::kF64 && t != DType::kF32 && t != DType::kBF16) {
    throw Error("TensorRowStore: table dtype must be F64, F32 or BF16, got " + table_.describe());
  }
}

template <class Out>
void TensorRowStore::gather_as(std::span<const int64_t> rows, Out* out, int64_t out_stride) const {
  const int64_t w = width();
  auto copy_rows = [&](const auto* src, auto convert) {
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto* row = src + rows[i] * w;
      Out* o = out + static_cast<int64_t>(i) * out_stride;
      for (int64_t j = 0; j < w; ++j) o[j] = convert(row[j]);
    }
  };
  switch (table_.dtype()) {
    case DType::kF64:
      copy_rows(table_.data<double>(), [](double v) { return static_cast<Out>(v); });
      break;
    case DType::kF32:
      copy_rows(table_.data<float>(), [](float v) { return static_cast<Out>(v); });
      break;
    case DType::kBF16:
      copy_rows(table_.data<bf16>(), [](bf16 v) { return static_cast<Out>(bf16_to_float(v)); });
      break;
    default:
      break;  // rejected by the constructor
  }
}

void TensorRowStore::gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const {
  gather_as(rows, out, out_stride);
}

void TensorRowStore::gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const {
  gather_as(rows, out, out_stride);
}

}  // namespace engram::memory
