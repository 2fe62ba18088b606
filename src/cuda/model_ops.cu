// Kernels of the model's small pieces (include/engram/cuda/model_ops.h); src/cuda/model_ops.cpp
// checks arguments and calls the launchers here. src/cuda/model_ops_stub.cpp stands in for both
// without CUDA.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>

#include "cuda/check.h"
#include "cuda/model_ops_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;

cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

// A grid-stride launch over `items` (kernels loop, so the grid may be capped).
unsigned blocks_for(int64_t items) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 16)));
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
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

__global__ void keys_kernel(int64_t* keys, int32_t* slots, const int64_t* ids, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    keys[i] = ids[i];
    slots[i] = static_cast<int32_t>(i);
  }
}

// out (runs, width): row u = sum over its slots (in sorted order, i.e. token order) of dout.
__global__ void segment_sum_kernel(float* out, const float* dout, const int32_t* slots,
                                   const int32_t* starts, const int32_t* counts, int64_t runs,
                                   int64_t width) {
  const int64_t total = runs * width;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    const int64_t u = i / width, col = i - u * width;
    const int32_t b = starts[u], e = b + counts[u];
    float s = 0.0f;
    for (int32_t k = b; k < e; ++k) s += dout[static_cast<int64_t>(slots[k]) * width + col];
    out[i] = s;
  }
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

size_t sparse_grad_temp_bytes(int64_t n, int end_bit) {
  const int ni = static_cast<int>(n);
  size_t a = 0, b = 0, c = 0;
  ENGRAM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, a, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), ni, 0, end_bit));
  ENGRAM_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
      nullptr, b, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr), ni));
  ENGRAM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, c, static_cast<const int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), ni));
  return std::max({a, b, c, size_t{16}});
}

int64_t launch_sparse_grad(const SparseGradArgs& a, void* stream) {
  if (a.n == 0) return 0;
  const cudaStream_t s = as_stream(stream);
  const int ni = static_cast<int>(a.n);
  keys_kernel<<<blocks_for(a.n), kThreads, 0, s>>>(a.keys, a.slots, a.ids, a.n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  size_t bytes = a.temp_bytes;
  // Radix sort is stable: an id's tokens stay in token order, as in the CPU's sum.
  ENGRAM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.keys),
      reinterpret_cast<uint64_t*>(a.keys_sorted), a.slots, a.slots_sorted, ni, 0, a.end_bit, s));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.keys_sorted),
      reinterpret_cast<uint64_t*>(a.out_rows), a.counts, a.num_runs, ni, s));
  int32_t runs = 0;
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(&runs, a.num_runs, sizeof(runs), cudaMemcpyDeviceToHost, s));
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(s));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(a.temp, bytes, a.counts, a.starts, runs, s));
  if (runs > 0 && a.width > 0) {
    segment_sum_kernel<<<blocks_for(int64_t{runs} * a.width), kThreads, 0, s>>>(
        a.out_values, a.dout, a.slots_sorted, a.starts, a.counts, runs, a.width);
    ENGRAM_CUDA_CHECK(cudaGetLastError());
  }
  return runs;
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
