// Kernels of the mixture-of-experts layer (include/engram/cuda/moe.h): routing, the permutation
// of (token, slot) pairs by expert, gathers and scatters, the SwiGLU gate and the router's
// backward. src/cuda/moe.cpp checks arguments, runs the GEMMs and calls the launchers here.
// Arithmetic that the CPU does in float is done here in the same order with explicit rounding
// (__fmul_rn, __fadd_rn: no fused multiply-adds), so only sigmoid's expf and the dot products'
// summation order differ from nn::moe_forward / nn::moe_backward.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/reduce.h"
#include "cuda/moe_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kRouteThreads = 128;
constexpr int kRowThreads = 128;  // router backward: one block per token
constexpr int kWarp = 32;

cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

unsigned blocks_for(int64_t items, int threads = kThreads) {
  return grid_stride_blocks(items, threads, 65535LL * 32);
}

// Activation loads and stores: float as is, bf16 widened exactly / rounded to nearest even.
__device__ __forceinline__ float load(const float* p) {
  return *p;
}
__device__ __forceinline__ float load(const engram::bf16* p) {
  return __uint_as_float(static_cast<unsigned>(p->bits) << 16);
}
__device__ __forceinline__ void store(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void store(engram::bf16* p, float v) {
  p->bits = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

__device__ __forceinline__ float sigmoidf(float v) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-v)));
}

// block_sum: src/cuda/reduce.h.

#define GRID_STRIDE(i, n)                                                                \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- Conversions ------------------------------------------------------------------------------

template <class A>
__global__ void to_f32_kernel(float* dst, const A* src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = load(src + i);
}

template <class A>
__global__ void from_f32_kernel(A* dst, const float* src, int64_t n) {
  GRID_STRIDE(i, n) store(dst + i, src[i]);
}

// ---- Routing ----------------------------------------------------------------------------------

// (key_a, a) ranks before (key_b, b): the larger key, ties to the lower index.
__device__ __forceinline__ bool ranks_before(float key_a, int a, float key_b, int b) {
  return key_a > key_b || (key_a == key_b && a < b);
}

// One thread per token. Pick j is the best expert ranking after pick j-1, so the K picks are the
// CPU's partial_sort order under the same strict ordering.
__global__ void route_kernel(float* scores, int32_t* selected, float* weights, const float* bias,
                             int64_t n, int64_t e_count, int64_t k, float route_scale) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  float* st = scores + t * e_count;
  for (int64_t i = 0; i < e_count; ++i) st[i] = sigmoidf(st[i]);
  int prev = -1;
  float prev_key = 0.0f;
  float total = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    int best = -1;
    float best_key = 0.0f;
    for (int i = 0; i < static_cast<int>(e_count); ++i) {
      const float key = __fadd_rn(st[i], bias[i]);
      if (prev >= 0 && !ranks_before(prev_key, prev, key, i)) continue;
      if (best < 0 || ranks_before(key, i, best_key, best)) {
        best = i;
        best_key = key;
      }
    }
    if (best < 0) best = static_cast<int>(j);  // NaN keys only: any valid index
    selected[t * k + j] = best;
    total = __fadd_rn(total, st[best]);
    prev = best;
    prev_key = best_key;
  }
  const float scale = __fdiv_rn(route_scale, total);
  for (int64_t j = 0; j < k; ++j) {
    weights[t * k + j] = __fmul_rn(scale, st[selected[t * k + j]]);
  }
}

// ---- Permutation ------------------------------------------------------------------------------

__global__ void iota_kernel(int32_t* v, int64_t n) {
  GRID_STRIDE(i, n) v[i] = static_cast<int32_t>(i);
}

// First index of sorted (n) holding a value >= x.
__device__ int64_t lower_bound(const int32_t* sorted, int64_t n, int32_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted[mid] < x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Thread e < E: offsets[e] and counts[e]; thread E: offsets[E] = P.
__global__ void offsets_kernel(int64_t* offsets, int64_t* counts, const int32_t* keys_sorted,
                               int64_t pairs, int64_t e_count) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e > e_count) return;
  const int64_t begin = lower_bound(keys_sorted, pairs, static_cast<int32_t>(e));
  offsets[e] = begin;
  if (e < e_count) {
    counts[e] = lower_bound(keys_sorted, pairs, static_cast<int32_t>(e + 1)) - begin;
  }
}

__global__ void row_of_kernel(int32_t* row_of, const int32_t* pair_of_row, int64_t pairs) {
  GRID_STRIDE(r, pairs) row_of[pair_of_row[r]] = static_cast<int32_t>(r);
}

template <class A>
__global__ void gather_kernel(A* routed_in, const A* u, const int32_t* pair_of_row, int64_t pairs,
                              int64_t k, int64_t c) {
  GRID_STRIDE(idx, pairs * c) {
    const int64_t r = idx / c, i = idx % c;
    const int64_t t = pair_of_row[r] / k;
    routed_in[idx] = u[t * c + i];
  }
}

// ---- SwiGLU gate ------------------------------------------------------------------------------

template <class A>
__global__ void gate_kernel(A* g, const float* h1, const float* h3, int64_t size) {
  GRID_STRIDE(i, size) {
    const float a = h1[i];
    store(g + i, __fmul_rn(__fmul_rn(a, sigmoidf(a)), h3[i]));
  }
}

template <class A>
__global__ void gate_backward_kernel(A* dh1, A* dh3, const float* dg, const float* h1,
                                     const float* h3, int64_t size) {
  GRID_STRIDE(i, size) {
    const float a = h1[i], b = h3[i], d = dg[i];
    const float s = sigmoidf(a);
    const float one_plus = __fadd_rn(1.0f, __fmul_rn(a, __fsub_rn(1.0f, s)));
    store(dh1 + i, __fmul_rn(__fmul_rn(__fmul_rn(d, b), s), one_plus));
    store(dh3 + i, __fmul_rn(__fmul_rn(d, a), s));
  }
}

// ---- Combine and its backward -----------------------------------------------------------------

template <class A>
__global__ void combine_kernel(A* y, const float* shared_out, const float* routed_out,
                               const float* weights, const int32_t* row_of, int64_t n, int64_t k,
                               int64_t c) {
  GRID_STRIDE(idx, n * c) {
    const int64_t t = idx / c, i = idx % c;
    float acc = shared_out != nullptr ? shared_out[idx] : 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = t * k + j;
      const int64_t row = row_of[p];
      acc = __fadd_rn(acc, __fmul_rn(weights[p], routed_out[row * c + i]));
    }
    store(y + idx, acc);
  }
}

template <class A>
__global__ void __launch_bounds__(kRowThreads)
    router_backward_kernel(A* drouted, float* dlogits, const A* dy, const float* routed_out,
                           const float* scores, const int32_t* selected, const float* weights,
                           const int32_t* row_of, int64_t e_count, int64_t k, int64_t c,
                           float route_scale) {
  extern __shared__ float dw[];  // (K)
  __shared__ float scratch[kWarp];
  const int64_t t = blockIdx.x;
  const A* dyt = dy + t * c;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t p = t * k + j;
    const int64_t row = row_of[p];
    const float* out = routed_out + row * c;
    A* dout = drouted + row * c;
    const float wt = weights[p];
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      const float d = load(dyt + i);
      acc = __fadd_rn(acc, __fmul_rn(d, out[i]));
      store(dout + i, __fmul_rn(wt, d));
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[j] = acc;
  }
  float* dl = dlogits + t * e_count;
  for (int64_t i = threadIdx.x; i < e_count; i += blockDim.x) dl[i] = 0.0f;
  __syncthreads();
  if (threadIdx.x != 0) return;
  const float* st = scores + t * e_count;
  const int32_t* sel = selected + t * k;
  float total = 0.0f;
  for (int64_t j = 0; j < k; ++j) total = __fadd_rn(total, st[sel[j]]);
  float dw_dot_g = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    dw_dot_g = __fadd_rn(dw_dot_g, __fdiv_rn(__fmul_rn(dw[j], st[sel[j]]), total));
  }
  const float scale = __fdiv_rn(route_scale, total);
  for (int64_t j = 0; j < k; ++j) {
    const float s = st[sel[j]];
    const float ds = __fmul_rn(scale, __fsub_rn(dw[j], dw_dot_g));
    dl[sel[j]] = __fmul_rn(__fmul_rn(ds, s), __fsub_rn(1.0f, s));
  }
}

__global__ void scatter_grad_kernel(float* du, const float* drouted_in, const int32_t* row_of,
                                    int64_t n, int64_t k, int64_t c) {
  GRID_STRIDE(idx, n * c) {
    const int64_t t = idx / c, i = idx % c;
    float acc = du[idx];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t row = row_of[t * k + j];
      acc = __fadd_rn(acc, drouted_in[row * c + i]);
    }
    du[idx] = acc;
  }
}

// ---- Balancing --------------------------------------------------------------------------------

__global__ void bias_update_kernel(float* bias, const int64_t* counts, int64_t e_count,
                                   double gamma) {
  __shared__ double mean;
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int64_t i = 0; i < e_count; ++i) sum += static_cast<double>(counts[i]);
    mean = sum / static_cast<double>(e_count);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < e_count; i += blockDim.x) {
    const double diff = mean - static_cast<double>(counts[i]);
    const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    bias[i] = __fadd_rn(bias[i], static_cast<float>(gamma * sign));
  }
}

__global__ void add_counts_kernel(int64_t* total, const int64_t* counts, int64_t e_count) {
  GRID_STRIDE(i, e_count) total[i] += counts[i];
}

}  // namespace

template <class A>
void launch_moe_to_f32(float* dst, const A* src, int64_t n, void* stream) {
  to_f32_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(dst, src, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_moe_from_f32(A* dst, const float* src, int64_t n, void* stream) {
  from_f32_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(dst, src, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_route(float* scores, int32_t* selected, float* weights, const float* bias,
                      int64_t n, int64_t e, int64_t k, float route_scale, void* stream) {
  const auto blocks = static_cast<unsigned>((n + kRouteThreads - 1) / kRouteThreads);
  route_kernel<<<blocks, kRouteThreads, 0, as_stream(stream)>>>(scores, selected, weights, bias, n,
                                                                e, k, route_scale);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

size_t moe_sort_temp_bytes(int64_t pairs, int end_bit) {
  size_t bytes = 0;
  ENGRAM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(pairs),
      0, end_bit));
  return std::max(bytes, size_t{16});
}

void launch_moe_permute(const MoePermuteArgs& a, void* stream) {
  cudaStream_t s = as_stream(stream);
  iota_kernel<<<blocks_for(a.pairs), kThreads, 0, s>>>(a.pair_iota, a.pairs);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  // Radix sort is stable: each expert's pairs keep their (token, slot) order, the CPU's row_of.
  size_t bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(a.temp, bytes, reinterpret_cast<const uint32_t*>(a.selected),
                                      reinterpret_cast<uint32_t*>(a.keys_sorted), a.pair_iota,
                                      a.pair_of_row, static_cast<int>(a.pairs), 0, a.end_bit, s));
  offsets_kernel<<<blocks_for(a.experts + 1), kThreads, 0, s>>>(a.offsets, a.counts, a.keys_sorted,
                                                                a.pairs, a.experts);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  row_of_kernel<<<blocks_for(a.pairs), kThreads, 0, s>>>(a.row_of, a.pair_of_row, a.pairs);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_moe_gather(A* routed_in, const A* u, const int32_t* pair_of_row, int64_t pairs,
                       int64_t k, int64_t c, void* stream) {
  gather_kernel<<<blocks_for(pairs * c), kThreads, 0, as_stream(stream)>>>(
      routed_in, u, pair_of_row, pairs, k, c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_moe_gate(A* g, const float* h1, const float* h3, int64_t size, void* stream) {
  gate_kernel<<<blocks_for(size), kThreads, 0, as_stream(stream)>>>(g, h1, h3, size);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_moe_gate_backward(A* dh1, A* dh3, const float* dg, const float* h1, const float* h3,
                              int64_t size, void* stream) {
  gate_backward_kernel<<<blocks_for(size), kThreads, 0, as_stream(stream)>>>(dh1, dh3, dg, h1, h3,
                                                                             size);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_moe_combine(A* y, const float* shared_out, const float* routed_out,
                        const float* weights, const int32_t* row_of, int64_t n, int64_t k,
                        int64_t c, void* stream) {
  combine_kernel<<<blocks_for(n * c), kThreads, 0, as_stream(stream)>>>(y, shared_out, routed_out,
                                                                        weights, row_of, n, k, c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_moe_router_backward(A* drouted, float* dlogits, const A* dy, const float* routed_out,
                                const float* scores, const int32_t* selected, const float* weights,
                                const int32_t* row_of, int64_t n, int64_t e, int64_t k, int64_t c,
                                float route_scale, void* stream) {
  const size_t shared = static_cast<size_t>(k) * sizeof(float);
  router_backward_kernel<<<static_cast<unsigned>(n), kRowThreads, shared, as_stream(stream)>>>(
      drouted, dlogits, dy, routed_out, scores, selected, weights, row_of, e, k, c, route_scale);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

__global__ void dense_rows_kernel(int32_t* row_of, const int32_t* selected, int64_t n,
                                  int64_t k) {
  const int64_t pairs = n * k;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    row_of[i] = static_cast<int32_t>(selected[i] * n + i / k);
  }
}

void launch_moe_dense_rows(int32_t* row_of, const int32_t* selected, int64_t n, int64_t k,
                           void* stream) {
  if (n * k == 0) return;
  dense_rows_kernel<<<blocks_for(n * k), kThreads, 0, as_stream(stream)>>>(row_of, selected, n, k);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_scatter_grad(float* du, const float* drouted_in, const int32_t* row_of, int64_t n,
                             int64_t k, int64_t c, void* stream) {
  scatter_grad_kernel<<<blocks_for(n * c), kThreads, 0, as_stream(stream)>>>(du, drouted_in, row_of,
                                                                             n, k, c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_bias_update(float* bias, const int64_t* counts, int64_t e, double gamma,
                            void* stream) {
  bias_update_kernel<<<1, kThreads, 0, as_stream(stream)>>>(bias, counts, e, gamma);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_add_counts(int64_t* total, const int64_t* counts, int64_t e, void* stream) {
  add_counts_kernel<<<blocks_for(e), kThreads, 0, as_stream(stream)>>>(total, counts, e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void moe_copy_to_host(int64_t* host, const int64_t* device, int64_t n, void* stream) {
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(host, device, static_cast<size_t>(n) * sizeof(int64_t),
                                    cudaMemcpyDeviceToHost, as_stream(stream)));
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
}

#define ENGRAM_INSTANTIATE(A)                                                                   \
  template void launch_moe_to_f32<A>(float*, const A*, int64_t, void*);                         \
  template void launch_moe_from_f32<A>(A*, const float*, int64_t, void*);                       \
  template void launch_moe_gather<A>(A*, const A*, const int32_t*, int64_t, int64_t, int64_t,   \
                                     void*);                                                    \
  template void launch_moe_gate<A>(A*, const float*, const float*, int64_t, void*);             \
  template void launch_moe_gate_backward<A>(A*, A*, const float*, const float*, const float*,   \
                                            int64_t, void*);                                    \
  template void launch_moe_combine<A>(A*, const float*, const float*, const float*,             \
                                      const int32_t*, int64_t, int64_t, int64_t, void*);        \
  template void launch_moe_router_backward<A>(A*, float*, const A*, const float*, const float*, \
                                              const int32_t*, const float*, const int32_t*,     \
                                              int64_t, int64_t, int64_t, int64_t, float, void*);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(engram::bf16)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::cuda::detail
