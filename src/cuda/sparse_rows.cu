// Sparse row sums (src/cuda/sparse_rows_kernel.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/sparse_rows_kernel.h"
#include "cuda/vec_io.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;

// out (runs, width): distinct row u = the sum over its slots, in sorted (= slot) order; runs is
// read on the device (*num_runs). A thread sums V columns of one row (V divides width).
template <class A, int V>
__global__ void segment_sum_kernel(float* out, const A* values, const int32_t* slots,
                                   const int32_t* starts, const int32_t* counts,
                                   const int32_t* num_runs, int64_t width) {
  const int64_t groups = width / V;
  const int64_t total = static_cast<int64_t>(*num_runs) * groups;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    const int64_t u = i / groups, col = (i - u * groups) * V;
    const int32_t b = starts[u], e = b + counts[u];
    float s[V] = {};
    for (int32_t k = b; k < e; ++k) {
      float v[V];
      ldv<V>(values + static_cast<int64_t>(slots[k]) * width + col, v);
#pragma unroll
      for (int x = 0; x < V; ++x) s[x] += v[x];
    }
    if constexpr (V == 4) {
      *reinterpret_cast<float4*>(out + u * width + col) = make_float4(s[0], s[1], s[2], s[3]);
    } else {
      out[i] = s[0];
    }
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
void launch_sparse_rows_plan(const SparseRowsArgs<A>& a, void* stream) {
  if (a.n == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const int ni = static_cast<int>(a.n);
  ENGRAM_CUDA_CHECK(cudaMemsetAsync(a.counts, 0, static_cast<size_t>(a.n) * sizeof(int32_t), s));
  size_t bytes = a.temp_bytes;
  // Radix sort is stable: a row's slots stay in slot order, as in the CPU's sums.
  ENGRAM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.rows),
      reinterpret_cast<uint64_t*>(a.rows_sorted), a.slots, a.slots_sorted, ni, 0, a.end_bit, s));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.rows_sorted),
      reinterpret_cast<uint64_t*>(a.out_rows), a.counts, a.num_runs, ni, s));
  // Over all n counts (the run count stays on the device): the entries past it, zeroed first,
  // are not read, and a start depends only on the counts before it.
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(a.temp, bytes, a.counts, a.starts, ni, s));
}

template <class A>
void launch_sparse_rows_values(const SparseRowsArgs<A>& a, void* stream) {
  if (a.n == 0 || a.width == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  // 4 columns a thread when every row starts 16-byte (float) or 8-byte (bf16) aligned.
  const auto aligned = [](const void* p, size_t to) {
    return reinterpret_cast<uintptr_t>(p) % to == 0;
  };
  if (a.width % 4 == 0 && aligned(a.values, 4 * sizeof(A)) && aligned(a.out_values, 16)) {
    segment_sum_kernel<A, 4><<<grid_stride_blocks(a.n * a.width / 4, kThreads), kThreads, 0, s>>>(
        a.out_values, a.values, a.slots_sorted, a.starts, a.counts, a.num_runs, a.width);
  } else {
    segment_sum_kernel<A, 1><<<grid_stride_blocks(a.n * a.width, kThreads), kThreads, 0, s>>>(
        a.out_values, a.values, a.slots_sorted, a.starts, a.counts, a.num_runs, a.width);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

int64_t read_sparse_rows_count(const int32_t* num_runs, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t runs = 0;
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(&runs, num_runs, sizeof(runs), cudaMemcpyDeviceToHost, s));
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(s));
  return runs;
}

template <class A>
int64_t launch_sparse_rows_sum(const SparseRowsArgs<A>& a, void* stream) {
  if (a.n == 0) return 0;
  launch_sparse_rows_plan(a, stream);
  launch_sparse_rows_values(a, stream);
  return read_sparse_rows_count(a.num_runs, stream);
}

template int64_t launch_sparse_rows_sum<float>(const SparseRowsArgs<float>&, void*);
template int64_t launch_sparse_rows_sum<bf16>(const SparseRowsArgs<bf16>&, void*);
template void launch_sparse_rows_plan<float>(const SparseRowsArgs<float>&, void*);
template void launch_sparse_rows_plan<bf16>(const SparseRowsArgs<bf16>&, void*);
template void launch_sparse_rows_values<float>(const SparseRowsArgs<float>&, void*);
template void launch_sparse_rows_values<bf16>(const SparseRowsArgs<bf16>&, void*);

}  // namespace engram::cuda::detail
