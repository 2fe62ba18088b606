// Warp and block reductions shared by the .cu files (C++17, CUDA only). Blocks are a multiple of
// 32 threads (at most 1024) and every thread gets the result. The tree is fixed (xor shuffles in
// each warp, then one warp over the warps' results in warp order), so results do not depend on
// timing. `scratch`: 32 values of shared memory.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace engram::cuda::detail {

inline constexpr int kWarpSize = 32;

// One value per thread combined over the warp with `op` (a fixed butterfly).
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T x, Op op) {
  for (int o = kWarpSize / 2; o > 0; o /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Over the block: each warp's result, then the warps' results in warp order (`identity` pads
// the lanes past the last warp).
template <class T, class Op>
__device__ inline T block_reduce(T x, T* scratch, T identity, Op op) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  x = warp_reduce(x, op);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : identity;
  return warp_reduce(x, op);
}

struct Plus {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class T>
__device__ __forceinline__ T warp_sum(T x) {
  return warp_reduce(x, Plus{});
}
__device__ __forceinline__ float warp_max(float x) {
  return warp_reduce(x, Max{});
}
template <class T>
__device__ inline T block_sum(T x, T* scratch) {
  return block_reduce(x, scratch, T(0), Plus{});
}
__device__ inline float block_max(float x, float* scratch) {
  return block_reduce(x, scratch, -INFINITY, Max{});
}

}  // namespace engram::cuda::detail
