// The model's small pieces on the GPU (include/engram/cuda/model_ops.h): argument checks and
// scratch sizing here; the kernels are in src/cuda/model_ops.cu. src/cuda/model_ops_stub.cpp
// stands in for both in builds without CUDA.
#include "engram/cuda/model_ops.h"

#include <cstdint>
#include <limits>
#include <string>

#include "cuda/model_ops_kernel.h"
#include "cuda/sparse_rows_kernel.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

void require_non_negative(const char* where, const char* what, int64_t value) {
  if (value < 0) {
    throw InputError(
        error_message(where, std::string(what) + " " + std::to_string(value) + " (expected >= 0)"));
  }
}

template <class T>
void grow(DeviceBuffer<T>& b, int64_t n) {
  if (b.size() < static_cast<size_t>(n)) b = DeviceBuffer<T>(static_cast<size_t>(n));
}

}  // namespace

void GpuSparseRowGrad::download(nn::SparseRowGrad<float>& grad) const {
  grad.width = width;
  grad.rows.assign(static_cast<size_t>(unique), 0);
  grad.values.assign(static_cast<size_t>(unique * width), 0.0f);
  if (unique == 0) return;
  copy_to_host(grad.rows.data(), rows.data(), grad.rows.size() * sizeof(int64_t));
  if (width > 0) {
    copy_to_host(grad.values.data(), values.data(), grad.values.size() * sizeof(float));
  }
}

void embedding_forward(float* out, const int64_t* ids, const float* table, int64_t tokens,
                       int64_t streams, int64_t c, void* stream) {
  const char* where = "cuda::embedding_forward";
  require_non_negative(where, "tokens", tokens);
  require_non_negative(where, "streams", streams);
  require_non_negative(where, "c", c);
  if (tokens == 0 || streams == 0 || c == 0) return;
  detail::launch_embedding_forward(out, ids, table, tokens, streams, c, stream);
}

void streams_sum(float* dx, const float* dout, int64_t tokens, int64_t streams, int64_t c,
                 void* stream) {
  const char* where = "cuda::streams_sum";
  require_non_negative(where, "tokens", tokens);
  require_non_negative(where, "streams", streams);
  require_non_negative(where, "c", c);
  if (tokens == 0 || c == 0) return;
  if (streams == 0) {
    zero(dx, tokens * c, stream);
    return;
  }
  detail::launch_streams_sum(dx, dout, tokens, streams, c, stream);
}

void embedding_backward(GpuSparseRowGrad& grad, const float* dout, const int64_t* ids,
                        int64_t tokens, int64_t c, int64_t vocab, void* stream) {
  const char* where = "cuda::embedding_backward";
  require_non_negative(where, "tokens", tokens);
  require_non_negative(where, "c", c);
  if (vocab < 1) {
    throw InputError(error_message(where, "vocab " + std::to_string(vocab) + " (expected >= 1)"));
  }
  if (tokens > std::numeric_limits<int32_t>::max()) {
    throw InputError(error_message(
        where, "tokens " + std::to_string(tokens) + " beyond the int32 range of the sort"));
  }
  grad.width = c;
  grad.unique = 0;
  if (tokens == 0) return;
  int end_bit = 1;
  while (end_bit < 63 && (int64_t{1} << end_bit) < vocab) ++end_bit;
  grow(grad.rows, tokens);
  grow(grad.values, tokens * c);
  grow(grad.keys_sorted, tokens);
  grow(grad.slots, tokens);
  grow(grad.slots_sorted, tokens);
  grow(grad.counts, tokens);
  grow(grad.starts, tokens);
  grow(grad.num_runs, 1);
  const size_t temp = detail::sparse_rows_temp_bytes(tokens, end_bit);
  if (grad.temp.size() < temp) grad.temp = DeviceBuffer<uint8_t>(temp);
  detail::launch_slots(grad.slots.data(), tokens, stream);
  // The ids are the rows: slot i (token i) adds dout's row i to row ids[i].
  const detail::SparseRowsArgs<float> a{ids,
                                        grad.slots.data(),
                                        dout,
                                        tokens,
                                        c,
                                        end_bit,
                                        grad.keys_sorted.data(),
                                        grad.slots_sorted.data(),
                                        grad.counts.data(),
                                        grad.starts.data(),
                                        grad.num_runs.data(),
                                        grad.temp.data(),
                                        grad.temp.size(),
                                        grad.rows.data(),
                                        grad.values.data()};
  grad.unique = detail::launch_sparse_rows_sum(a, stream);
}

void add_inplace(float* y, const float* x, int64_t n, void* stream) {
  require_non_negative("cuda::add_inplace", "n", n);
  if (n > 0) detail::launch_add(y, x, n, stream);
}

void scale_inplace(float* x, float s, int64_t n, void* stream) {
  require_non_negative("cuda::scale_inplace", "n", n);
  if (n > 0) detail::launch_scale(x, s, n, stream);
}

void copy(float* dst, const float* src, int64_t n, void* stream) {
  copy_bytes(dst, src, n, sizeof(float), stream);
}

void zero(float* x, int64_t n, void* stream) {
  require_non_negative("cuda::zero", "n", n);
  if (n > 0) detail::launch_zero_bytes(x, static_cast<size_t>(n) * sizeof(float), stream);
}

void copy_bytes(void* dst, const void* src, int64_t n, int64_t bytes_per_element, void* stream) {
  require_non_negative("cuda::copy_bytes", "n", n);
  require_non_negative("cuda::copy_bytes", "bytes_per_element", bytes_per_element);
  if (n > 0 && bytes_per_element > 0) {
    detail::launch_copy_bytes(dst, src, static_cast<size_t>(n * bytes_per_element), stream);
  }
}

void cast(bf16* out, const float* x, int64_t n, void* stream) {
  require_non_negative("cuda::cast", "n", n);
  if (n > 0) detail::launch_cast_to_bf16(out, x, n, stream);
}

void cast(float* out, const bf16* x, int64_t n, void* stream) {
  require_non_negative("cuda::cast", "n", n);
  if (n > 0) detail::launch_cast_to_f32(out, x, n, stream);
}

double sum_squares(const float* x, int64_t n, void* stream) {
  require_non_negative("cuda::sum_squares", "n", n);
  if (n == 0) return 0.0;
  return detail::launch_sum_squares(x, n, stream);
}

}  // namespace engram::cuda
