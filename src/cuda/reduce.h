// Warp and block reductions shared by the .cu files (C++17, CUDA only). Blocks are a multiple of
// 32 threads (at most 1024) and every thread gets the result. The tree is fixed (xor shuffles in
// each warp, then one warp over the warps' results in warp order), so results do not depend on
// timing. `scratch`: 32 values of shared memory.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace engram::cuda::detail {

inline constexpr int kWarpSize = 32;

template <class T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int o = kWarpSize / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = kWarpSize / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

template <class T>
__device__ inline T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : T(0);
  return warp_sum(x);
}

__device__ inline float block_max(float x, float* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  x = warp_max(x);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(x);
}

}  // namespace engram::cuda::detail
