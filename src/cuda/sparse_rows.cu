// Sparse row sums (src/cuda/sparse_rows_kernel.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cub/cub.cuh>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/sparse_rows_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const bf16* p) {
  return __uint_as_float(static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(p)) << 16);
}

// out (runs, width): distinct row u = the sum over its slots, in sorted (= slot) order.
template <class A>
__global__ void segment_sum_kernel(float* out, const A* values, const int32_t* slots,
                                   const int32_t* starts, const int32_t* counts, int64_t runs,
                                   int64_t width) {
  const int64_t total = runs * width;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    const int64_t u = i / width, col = i - u * width;
    const int32_t b = starts[u], e = b + counts[u];
    float s = 0.0f;
    for (int32_t k = b; k < e; ++k) s += ld(values + static_cast<int64_t>(slots[k]) * width + col);
    out[i] = s;
  }
}

}  // namespace

size_t sparse_rows_temp_bytes(int64_t n, int end_bit) {
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

template <class A>
int64_t launch_sparse_rows_sum(const SparseRowsArgs<A>& a, void* stream) {
  if (a.n == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  const int ni = static_cast<int>(a.n);
  size_t bytes = a.temp_bytes;
  // Radix sort is stable: a row's slots stay in slot order, as in the CPU's sums.
  ENGRAM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.rows),
      reinterpret_cast<uint64_t*>(a.rows_sorted), a.slots, a.slots_sorted, ni, 0, a.end_bit, s));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.rows_sorted),
      reinterpret_cast<uint64_t*>(a.out_rows), a.counts, a.num_runs, ni, s));
  int32_t runs = 0;
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(&runs, a.num_runs, sizeof(runs), cudaMemcpyDeviceToHost, s));
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(s));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(a.temp, bytes, a.counts, a.starts, runs, s));
  if (runs > 0 && a.width > 0) {
    segment_sum_kernel<A><<<grid_stride_blocks(int64_t{runs} * a.width, kThreads), kThreads, 0, s>>>(
        a.out_values, a.values, a.slots_sorted, a.starts, a.counts, runs, a.width);
    ENGRAM_CUDA_CHECK(cudaGetLastError());
  }
  return runs;
}

template int64_t launch_sparse_rows_sum<float>(const SparseRowsArgs<float>&, void*);
template int64_t launch_sparse_rows_sum<bf16>(const SparseRowsArgs<bf16>&, void*);

}  // namespace engram::cuda::detail
