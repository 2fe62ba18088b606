// Kernels of the model's small pieces (include/engram/cuda/model_ops.h); src/cuda/model_ops.cpp
// checks arguments and calls the launchers here. src/cuda/model_ops_stub.cpp stands in for both
// without CUDA.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/model_ops_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;

cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

// A grid-stride launch over `items` (kernels loop, so the grid may be capped).
unsigned blocks_for(int64_t items) {
  return grid_stride_blocks(items, kThreads);
}

// out (N, m, C): out[t, k, j] = table[ids[t], j].
__global__ void embedding_forward_kernel(float* out, const int64_t* ids, const float* table,
                                         int64_t tokens, int64_t streams, int64_t c) {
  const int64_t total = tokens * streams * c;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    const int64_t row = i / c, j = i - row * c;
    const int64_t t = row / streams;
    out[i] = table[ids[t] * c + j];
  }
}

// dx (N, C) = sum_k dout (N, m, C), k in order, from 0.
__global__ void streams_sum_kernel(float* dx, const float* dout, int64_t tokens, int64_t streams,
                                   int64_t c) {
  const int64_t total = tokens * c;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    const int64_t t = i / c, j = i - t * c;
    float s = 0.0f;
    for (int64_t k = 0; k < streams; ++k) s += dout[(t * streams + k) * c + j];
    dx[i] = s;
  }
}

// slots[i] = i: the slot numbers the sparse row sum sorts along with the ids.
__global__ void slots_kernel(int32_t* slots, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) slots[i] = static_cast<int32_t>(i);
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) y[i] += x[i];
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) x[i] *= s;
}

__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = __float2bfloat16_rn(x[i]);
}

__global__ void to_f32_kernel(float* out, const __nv_bfloat16* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = __bfloat162float(x[i]);
}

// Block tree sum in double (kThreads threads); thread 0 gets the result.
__device__ double block_sum(double x) {
  __shared__ double s[kThreads];
  s[threadIdx.x] = x;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o /= 2) {
    if (static_cast<int>(threadIdx.x) < o) s[threadIdx.x] += s[threadIdx.x + o];
    __syncthreads();
  }
  return s[0];
}

// partial[block] = sum of x[i]^2 over the block's grid-stride share (fixed for a fixed grid).
__global__ void __launch_bounds__(kThreads)
    sum_squares_partial(const float* x, int64_t n, double* partial) {
  double acc = 0.0;
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    const double v = x[i];
    acc += v * v;
  }
  const double s = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kThreads)
    sum_partials(const double* partial, int64_t count, double* out) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partial[i];
  const double s = block_sum(acc);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

void launch_embedding_forward(float* out, const int64_t* ids, const float* table, int64_t tokens,
                              int64_t streams, int64_t c, void* stream) {
  embedding_forward_kernel<<<blocks_for(tokens * streams * c), kThreads, 0, as_stream(stream)>>>(
      out, ids, table, tokens, streams, c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_streams_sum(float* dx, const float* dout, int64_t tokens, int64_t streams, int64_t c,
                        void* stream) {
  streams_sum_kernel<<<blocks_for(tokens * c), kThreads, 0, as_stream(stream)>>>(dx, dout, tokens,
                                                                                 streams, c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_slots(int32_t* slots, int64_t n, void* stream) {
  slots_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(slots, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_add(float* y, const float* x, int64_t n, void* stream) {
  add_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(y, x, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_scale(float* x, float s, int64_t n, void* stream) {
  scale_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(x, s, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_copy_bytes(void* dst, const void* src, size_t bytes, void* stream) {
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(stream)));
}

void launch_zero_bytes(void* x, size_t bytes, void* stream) {
  ENGRAM_CUDA_CHECK(cudaMemsetAsync(x, 0, bytes, as_stream(stream)));
}

void launch_cast_to_bf16(bf16* out, const float* x, int64_t n, void* stream) {
  to_bf16_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      reinterpret_cast<__nv_bfloat16*>(out), x, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_cast_to_f32(float* out, const bf16* x, int64_t n, void* stream) {
  to_f32_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      out, reinterpret_cast<const __nv_bfloat16*>(x), n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

double launch_sum_squares(const float* x, int64_t n, void* stream) {
  const cudaStream_t s = as_stream(stream);
  // A grid that depends on n only, so the partition (and the bits) are the same every call.
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>((n + kThreads * 8 - 1) / (kThreads * 8), 1024));
  double* scratch = nullptr;
  ENGRAM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch),
                                    static_cast<size_t>(blocks + 1) * sizeof(double), s));
  sum_squares_partial<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(x, n, scratch);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  sum_partials<<<1, kThreads, 0, s>>>(scratch, blocks, scratch + blocks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  double out = 0.0;
  ENGRAM_CUDA_CHECK(
      cudaMemcpyAsync(&out, scratch + blocks, sizeof(double), cudaMemcpyDeviceToHost, s));
  ENGRAM_CUDA_CHECK(cudaFreeAsync(scratch, s));
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

}  // namespace engram::cuda::detail
