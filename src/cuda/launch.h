// Launch geometry shared by the .cu files (C++17, CUDA only): grid-stride loops.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace engram::cuda::detail {

// Blocks of `threads` for a grid-stride kernel over `items`: enough to cover them, at least 1,
// at most `cap` (the kernel loops over the rest).
inline unsigned grid_stride_blocks(int64_t items, int threads, int64_t cap = 65535LL * 16) {
  const int64_t b = (items + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, cap)));
}

// for (int64_t i = thread_index(); i < n; i += grid_stride()) ...
__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace engram::cuda::detail
