// Where an Engram layer reads its table rows from.
//
// A RowStore holds `num_rows()` rows of `width()` values and copies requested rows out,
// converting to the compute type. The layer only ever asks for rows by index, so a store can keep
// its table anywhere: in memory here; host memory, a file or GPU memory in the memory tier.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engram/tensor/tensor.h"

namespace engram::memory {

class RowStore {
 public:
  virtual ~RowStore() = default;
  virtual int64_t num_rows() const = 0;
  virtual int64_t width() const = 0;
  // out[i * out_stride + j] = row rows[i], value j (j < width()). Rows must be in range (checked
  // by the caller; a store may throw engram::InputError).
  virtual void gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const = 0;
  virtual void gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const = 0;
};

// A table held in a Tensor (num_rows, width) of F64, F32 or BF16, e.g. a view into a
// memory-mapped safetensors file.
class TensorRowStore final : public RowStore {
 public:
  // Throws engram::Error for another dtype, a rank other than 2 or a non-contiguous tensor.
  explicit TensorRowStore(Tensor table);
  int64_t num_rows() const override { return table_.dim(0); }
  int64_t width() const override { return table_.dim(1); }
  void gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const override;
  void gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const override;
  const Tensor& tensor() const { return table_; }

 private:
  template <class Out>
  void gather_as(std::span<const int64_t> rows, Out* out, int64_t out_stride) const;
  Tensor table_;
};

// A table in a caller-owned std::vector of (rows * width) values of type V (float or double),
// read in place: the vector must outlive the store, and its values may change between calls
// (an optimizer updating the table, a gradient check perturbing it).
template <class V>
class VectorRowStore final : public RowStore {
 public:
  VectorRowStore(const std::vector<V>* values, int64_t width) : values_(values), width_(width) {}
  int64_t num_rows() const override { return static_cast<int64_t>(values_->size()) / width_; }
  int64_t width() const override { return width_; }
  void gather(std::span<const int64_t> rows, float* out, int64_t stride) const override {
    copy(rows, out, stride);
  }
  void gather(std::span<const int64_t> rows, double* out, int64_t stride) const override {
    copy(rows, out, stride);
  }

 private:
  template <class Out>
  void copy(std::span<const int64_t> rows, Out* out, int64_t stride) const {
    for (size_t i = 0; i < rows.size(); ++i) {
      const V* src = values_->data() + rows[i] * width_;
      Out* dst = out + static_cast<int64_t>(i) * stride;
      for (int64_t j = 0; j < width_; ++j) dst[j] = static_cast<Out>(src[j]);
    }
  }
  const std::vector<V>* values_;
  int64_t width_;
};

}  // namespace engram::memory
