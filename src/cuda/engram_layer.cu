// The Engram layer's kernels (src/cuda/engram_layer_kernel.h); the class over them, with the
// cuBLAS projections, is src/cuda/engram_layer.cpp. Reductions whose results feed weight
// gradients run over a fixed number of row chunks summed in chunk order: deterministic.
// Activations are float or bf16 (A); loads widen to float, stores round to nearest even.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/engram_layer_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

unsigned blocks_for(int64_t items) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, INT32_MAX)));
}

__device__ __forceinline__ float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }

// ---- loads and stores of activations (float or bf16), 1 or 4 values -------------------------

__device__ __forceinline__ float ld(const bf16* p) {
  return __uint_as_float(static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(p)) << 16);
}
__device__ __forceinline__ void st(bf16* p, float v) {
  *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(v);
}

template <int V>
__device__ __forceinline__ void ldv(const float* p, float (&o)[V]) {
  if constexpr (V == 4) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    o[0] = x.x, o[1] = x.y, o[2] = x.z, o[3] = x.w;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) o[i] = p[i];
  }
}
template <int V>
__device__ __forceinline__ void ldv(const bf16* p, float (&o)[V]) {
  if constexpr (V == 4) {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    o[0] = __uint_as_float(w.x << 16), o[1] = __uint_as_float(w.x & 0xffff0000u);
    o[2] = __uint_as_float(w.y << 16), o[3] = __uint_as_float(w.y & 0xffff0000u);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) o[i] = ld(p + i);
  }
}
template <int V>
__device__ __forceinline__ void stv(float* p, const float (&v)[V]) {
  if constexpr (V == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = v[i];
  }
}
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(a));
  const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(b));
  return lo | (hi << 16);
}
template <int V>
__device__ __forceinline__ void stv(bf16* p, const float (&v)[V]) {
  if constexpr (V == 4) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack2(v[0], v[1]), pack2(v[2], v[3]));
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) st(p + i, v[i]);
  }
}
// V values of the float vector p (parameters).
template <int V>
__device__ __forceinline__ void ldw(const float* p, float (&o)[V]) {
  ldv<V>(p, o);
}
// bias + j .. j+V, or zeros.
template <int V>
__device__ __forceinline__ void ldb(const float* bias, int64_t j, float (&o)[V]) {
  if (bias != nullptr) {
    ldv<V>(bias + j, o);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) o[i] = 0.0f;
  }
}

// Sums N values over the warp; every lane gets the sums (a fixed butterfly: deterministic).
template <int N>
__device__ __forceinline__ void warp_sum(float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
  }
}

// ---- deterministic column reduction: out[col] += sum_r f(r, col) ---------------------------
//
// A term F provides get<V>(r, col, out[V]): the values of columns col .. col+V of row r.

template <class F, int V>
__global__ void __launch_bounds__(256) colsum_partial(F f, int64_t rows, int64_t cols,
                                                      float* partial) {
  __shared__ float sh[8][32 * V + 1];
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x) * V;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = rows * chunk / kColChunks, r1 = rows * (chunk + 1) / kColChunks;
  float acc[V];
#pragma unroll
  for (int e = 0; e < V; ++e) acc[e] = 0.0f;
  if (col < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      float v[V];
      f.template get<V>(r, col, v);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] += v[e];
    }
  }
#pragma unroll
  for (int e = 0; e < V; ++e) sh[threadIdx.y][threadIdx.x * V + e] = acc[e];
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float s = 0.0f;
      for (int i = 0; i < 8; ++i) s += sh[i][threadIdx.x * V + e];
      partial[chunk * cols + col + e] = s;
    }
  }
}

__global__ void colsum_finish(const float* partial, int64_t cols, float* out) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float s = 0.0f;
  for (int c = 0; c < kColChunks; ++c) s += partial[c * cols + col];
  out[col] += s;
}

// four: the term may be read 4 columns at a time (cols % 4 == 0 and 4-aligned rows).
template <class F>
void column_sum(F f, int64_t rows, int64_t cols, float* partial, float* out, bool four = false) {
  if (cols == 0) return;
  if (four && cols % 4 == 0) {
    const dim3 grid(static_cast<unsigned>((cols / 4 + 31) / 32), kColChunks);
    colsum_partial<F, 4><<<grid, dim3(32, 8)>>>(f, rows, cols, partial);
  } else {
    const dim3 grid(static_cast<unsigned>((cols + 31) / 32), kColChunks);
    colsum_partial<F, 1><<<grid, dim3(32, 8)>>>(f, rows, cols, partial);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  colsum_finish<<<blocks_for(cols), kThreads>>>(partial, cols, out);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
struct BiasTerm {
  const A* dkv;
  int64_t cols;
  template <int V>
  __device__ void get(int64_t r, int64_t c, float (&o)[V]) const {
    ldv<V>(dkv + r * cols + c, o);
  }
};

// Both norm weights' gradients share one column sum:
//   d key_norm[m*d+j]   = sum_t ds * nq_j * k_j * rk = wq_j * S[m*d+j]
//   d query_norm[m*d+j] = sum_t ds * nk_j * q_j * rq = wk_j * S[m*d+j]
//   S[m*d+j] = sum_t ds[t,m] rk[t,m] rq[t,m] k[t,m,j] q[t,m,j]
// Columns col .. col+V-1 lie in one branch m (V divides d).
template <class A>
struct NormTerm {
  const float* ds;
  const A* kv;
  const float* bias;
  const A* hidden;
  const float *key_rstd, *query_rstd;
  int64_t M, d;
  template <int V>
  __device__ void get(int64_t t, int64_t col, float (&o)[V]) const {
    const int64_t m = col / d, j = col - m * d, i = t * M + m;
    const int64_t kc = (1 + m) * d + j;
    float k[V], b[V], q[V];
    ldv<V>(kv + t * (1 + M) * d + kc, k);
    ldb<V>(bias, kc, b);
    ldv<V>(hidden + i * d + j, q);
    const float g = ds[i] * key_rstd[i] * query_rstd[i];
#pragma unroll
    for (int e = 0; e < V; ++e) o[e] = g * (k[e] + b[e]) * q[e];
  }
};

// d_key_w[col] += wq[col] * S, d_query_w[col] += wk[col] * S, S = the partials' sum.
__global__ void norm_grad_finish(const float* partial, int64_t cols, const float* key_w,
                                 const float* query_w, float* d_key_w, float* d_query_w) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float s = 0.0f;
  for (int c = 0; c < kColChunks; ++c) s += partial[c * cols + col];
  d_key_w[col] += query_w[col] * s;
  d_query_w[col] += key_w[col] * s;
}

// Columns c .. c+V-1 lie in one branch (V divides d).
template <class A>
struct ConvNormTerm {
  const A *dxn, *x;
  const float* rstd;
  int64_t M, d;
  template <int V>
  __device__ void get(int64_t bt, int64_t c, float (&o)[V]) const {
    float g[V], xx[V];
    ldv<V>(dxn + bt * M * d + c, g);
    ldv<V>(x + bt * M * d + c, xx);
    const float r = rstd[bt * M + c / d];
#pragma unroll
    for (int e = 0; e < V; ++e) o[e] = g[e] * xx[e] * r;
  }
};

// ---- kernels ----------------------------------------------------------------------------------

__global__ void table_rows_kernel(int64_t* rows, int32_t* slots, const int32_t* ids,
                                  const int64_t* offsets, int64_t n, int64_t heads) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  rows[i] = offsets[i % heads] + ids[i];
  slots[i] = static_cast<int32_t>(i);
}

// One warp per (token, branch) row, kWarps rows per block; V values per lane and step (4 when
// d % 4 == 0).
template <class A, int V>
__global__ void __launch_bounds__(kThreads) gate_forward_kernel(GateArgs<A> a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // t * M + m
  const int lane = threadIdx.x % 32;
  if (i >= a.tokens * a.M) return;
  const int64_t t = i / a.M, m = i - t * a.M, d = a.d;
  const A* v = a.kv + t * (1 + a.M) * d;
  const A* k = v + (1 + m) * d;
  const A* q = a.hidden + i * d;
  const float* wk = a.key_w + m * d;
  const float* wq = a.query_w + m * d;
  const float* bk = a.bias != nullptr ? a.bias + (1 + m) * d : nullptr;
  float s[3] = {0.0f, 0.0f, 0.0f};
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float kk[V], qq[V], wkk[V], wqq[V], b[V];
    ldv<V>(k + j, kk);
    ldb<V>(bk, j, b);
    ldv<V>(q + j, qq);
    ldw<V>(wk + j, wkk);
    ldw<V>(wq + j, wqq);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      kk[e] += b[e];
      s[0] += kk[e] * kk[e];
      s[1] += qq[e] * qq[e];
      s[2] += (kk[e] * wkk[e]) * (qq[e] * wqq[e]);
    }
  }
  warp_sum<3>(s);
  const float rk = 1.0f / sqrtf(s[0] / static_cast<float>(d) + a.eps);
  const float rq = 1.0f / sqrtf(s[1] / static_cast<float>(d) + a.eps);
  const float score = s[2] * rk * rq / sqrtf(static_cast<float>(d));
  const float mag = sqrtf(fmaxf(fabsf(score), 1e-6f));
  const float alpha = sigmoidf_(score > 0.0f ? mag : (score < 0.0f ? -mag : 0.0f));
  if (lane == 0) {
    a.key_rstd[i] = rk;
    a.query_rstd[i] = rq;
    a.score[i] = score;
    a.alpha[i] = alpha;
  }
  A* vt = a.vt + i * d;
  float ss[1] = {0.0f};
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float vv[V], b[V];
    ldv<V>(v + j, vv);
    ldb<V>(a.bias, j, b);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      vv[e] = alpha * (vv[e] + b[e]);
      ss[0] += vv[e] * vv[e];
    }
    stv<V>(vt + j, vv);
  }
  if (a.conv_norm_w == nullptr) return;
  // The short conv's RMSNorm of this vt row (of the values as stored: bf16-rounded for bf16).
  if constexpr (!std::is_same_v<A, float>) {
    __syncwarp();
    ss[0] = 0.0f;
    for (int64_t j = lane * V; j < d; j += 32 * V) {
      float vv[V];
      ldv<V>(vt + j, vv);
#pragma unroll
      for (int e = 0; e < V; ++e) ss[0] += vv[e] * vv[e];
    }
  }
  warp_sum<1>(ss);
  const float r = 1.0f / sqrtf(ss[0] / static_cast<float>(d) + a.conv_eps);
  if (lane == 0) a.conv_rstd[i] = r;
  const float* w = a.conv_norm_w + m * d;
  A* xn = a.xn + i * d;
  __syncwarp();
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float vv[V], ww[V];
    ldv<V>(vt + j, vv);
    ldw<V>(w + j, ww);
#pragma unroll
    for (int e = 0; e < V; ++e) vv[e] = vv[e] * r * ww[e];
    stv<V>(xn + j, vv);
  }
}

// One block per token with one warp per branch (blockDim = 32 * M): warp m computes branch m's
// key and query gradients; then the block sums the value row's gradient over the branches.
template <class A, int V>
__global__ void gate_backward_kernel(GateBwdArgs<A> a) {
  const int64_t t = blockIdx.x, d = a.d, M = a.M;
  const int64_t m = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const A* v = a.kv + t * (1 + M) * d;
  A* dv = a.dkv + t * (1 + M) * d;
  const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(d));
  {
    const int64_t i = t * M + m;
    const A* g = a.dvt + i * d;
    const A* k = v + (1 + m) * d;
    const A* q = a.hidden + i * d;
    const float* wk = a.key_w + m * d;
    const float* wq = a.query_w + m * d;
    const float* bk = a.bias != nullptr ? a.bias + (1 + m) * d : nullptr;
    const float rk = a.key_rstd[i], rq = a.query_rstd[i], alpha = a.alpha[i], s = a.score[i];
    // dalpha, sum nq*wk*k, sum nk*wq*q
    float r[3] = {0.0f, 0.0f, 0.0f};
    for (int64_t j = lane * V; j < d; j += 32 * V) {
      float gg[V], vv[V], bv[V], kk[V], bb[V], qq[V], wkk[V], wqq[V];
      ldv<V>(g + j, gg);
      ldv<V>(v + j, vv);
      ldb<V>(a.bias, j, bv);
      ldv<V>(k + j, kk);
      ldb<V>(bk, j, bb);
      ldv<V>(q + j, qq);
      ldw<V>(wk + j, wkk);
      ldw<V>(wq + j, wqq);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float kb = kk[e] + bb[e];
        const float nq = qq[e] * rq * wqq[e], nk = kb * rk * wkk[e];
        r[0] += gg[e] * (vv[e] + bv[e]);
        r[1] += nq * wkk[e] * kb;
        r[2] += nk * wqq[e] * qq[e];
      }
    }
    warp_sum<3>(r);
    const float as = fabsf(s);
    const float ssg = (s != 0.0f && as >= 1e-6f) ? 0.5f / sqrtf(as) : 0.0f;
    const float ds = r[0] * alpha * (1.0f - alpha) * ssg * inv_sqrt_d;
    const float ck = ds * r[1] * rk * rk * rk / static_cast<float>(d);
    const float cq = ds * r[2] * rq * rq * rq / static_cast<float>(d);
    A* dk = dv + (1 + m) * d;
    A* dq = a.d_hidden + i * d;
    for (int64_t j = lane * V; j < d; j += 32 * V) {
      float kk[V], bb[V], qq[V], wkk[V], wqq[V], dqq[V], dkk[V];
      ldv<V>(k + j, kk);
      ldb<V>(bk, j, bb);
      ldv<V>(q + j, qq);
      ldw<V>(wk + j, wkk);
      ldw<V>(wq + j, wqq);
      ldv<V>(dq + j, dqq);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float kb = kk[e] + bb[e];
        const float nq = qq[e] * rq * wqq[e], nk = kb * rk * wkk[e];
        dkk[e] = rk * wkk[e] * (ds * nq) - kb * ck;
        dqq[e] += rq * wqq[e] * (ds * nk) - qq[e] * cq;
      }
      stv<V>(dk + j, dkk);
      stv<V>(dq + j, dqq);
    }
    if (lane == 0) a.ds[i] = ds;
  }
  // The value row's gradient: sum over branches, in branch order.
  for (int64_t j = threadIdx.x * V; j < d; j += blockDim.x * V) {
    float acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = 0.0f;
    for (int64_t mm = 0; mm < M; ++mm) {
      const float alpha = a.alpha[t * M + mm];
      float gg[V];
      ldv<V>(a.dvt + (t * M + mm) * d + j, gg);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] += alpha * gg[e];
    }
    stv<V>(dv + j, acc);
  }
}

// ---- the short conv ---------------------------------------------------------------------------
//
// Layout: channels c < C = M*d; tokens bt = b*T + t; the taps are conv_wt (kernel, C).
//
// Two sets of kernels. The shared-memory tile kernels (below, "on shared-memory tiles") run
// when C % 4 == 0 and the conv's reach dilation * (kernel - 1) is at most kMaxTileHalo tokens:
// every real Engram config. The chunk kernels here take any shape: a 2-D grid (conv_geometry)
// whose x covers the channels, V per thread (V = 4 when C % 4 == 0), kConvThreads per block,
// and whose y splits the tokens into chunks of `per` consecutive tokens that a thread walks
// kChunkU tokens at a time; the rows a tap reads behind a token were read a few tokens earlier
// by the same thread (L1/L2 hits).
//
// Chunk backward, two passes over the tokens:
//   conv_du_wgrad_kernel   du = dy SiLU'(u) (u recomputed from xn), and the conv weight
//                          gradient's per-chunk partial sums, dW[c, j] += du[bt, c] xn[bt-back_j, c];
//   conv_dxn_norm_kernel   dxn = the transposed conv of du (one warp per (token, branch) row),
//                          then the RMSNorm backward of that row: dx = dy + rstd w dxn - x k.
// The norm weight's gradient is a column sum over dxn afterwards.
//
// Measured on the H200 at issue 5's shape (bf16, 16,384 tokens, C = 4096), forward: tiles
// 0.16 ms; chunks of 8 tokens one token a step 0.24 ms, 2 or 4 tokens a step (chunks of 4 to
// 128) 0.40-0.48 ms. Backward through the norm: tiles 0.35-0.39 + 0.18 ms, chunks 0.84 ms.
constexpr int kMaxTaps = static_cast<int>(kMaxConvKernel);
constexpr int kConvThreads = 128;

// The values an activation of type A stores for v (what a later kernel would read back).
template <class A>
__device__ __forceinline__ float as_stored(float v) {
  if constexpr (std::is_same_v<A, float>) {
    return v;
  } else {
    return __bfloat162float(__float2bfloat16_rn(v));
  }
}

struct ConvGeometry {
  dim3 grid;
  int64_t per;  // tokens per y chunk
};
// `chunks` token chunks (clamped to [1, min(tokens, 65535)]); every chunk but the last holds
// `per` tokens.
ConvGeometry conv_geometry(int64_t tokens, int64_t C, int V, int64_t chunks) {
  chunks = std::max<int64_t>(1, std::min<int64_t>({chunks, tokens, 65535}));
  const int64_t per = (tokens + chunks - 1) / chunks;
  chunks = (tokens + per - 1) / per;
  return {dim3(static_cast<unsigned>((C / V + kConvThreads - 1) / kConvThreads),
               static_cast<unsigned>(chunks)),
          per};
}

// The chunk kernels' geometry (the measured best of the variants above).
constexpr int64_t kFwdChunkTokens = 8;  // tokens per y chunk of the forward
constexpr int64_t kDuChunks = 64;       // y chunks of conv_du_wgrad_kernel (<= kMaxConvChunks)
constexpr int kChunkU = 1;              // tokens a thread loads before computing

// w[j][e] = conv_wt[j, c + e] for j < kernel, else 0.
template <int V, int KT = kMaxTaps>
__device__ __forceinline__ void load_taps(const float* conv_wt, int64_t C, int64_t c,
                                          int64_t kernel, float (&w)[KT][V]) {
#pragma unroll
  for (int j = 0; j < KT; ++j) {
    if (j < kernel) {
      ldw<V>(conv_wt + j * C + c, w[j]);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) w[j][e] = 0.0f;
    }
  }
}

// u[e] = sum_j w[j][e] xn[bt - back_j, c + e] (causal within the sequence; t = bt's position).
template <class A, int V>
__device__ __forceinline__ void conv_at(const ConvArgs<A>& a, const float (&w)[kMaxTaps][V],
                                        int64_t bt, int64_t t, int64_t C, int64_t c,
                                        float (&u)[V]) {
#pragma unroll
  for (int e = 0; e < V; ++e) u[e] = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxTaps; ++j) {
    if (j >= a.kernel) break;
    const int64_t back = a.dilation * (a.kernel - 1 - j);
    if (t - back < 0) continue;
    float xn[V];
    ldv<V>(a.xn + (bt - back) * C + c, xn);
#pragma unroll
    for (int e = 0; e < V; ++e) u[e] += w[j][e] * xn[e];
  }
}

// u = conv(xn) (causal, dilated), out = x + SiLU(u).
template <class A, int V, int U>
__global__ void __launch_bounds__(kConvThreads) conv_fwd_kernel(ConvArgs<A> a, A* out,
                                                                int64_t per) {
  const int64_t C = a.M * a.d, tokens = a.batch * a.seq;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * kConvThreads + threadIdx.x) * V;
  if (c >= C) return;
  float w[kMaxTaps][V];
  load_taps<V>(a.conv_wt, C, c, a.kernel, w);
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * per;
  const int64_t r1 = r0 + per < tokens ? r0 + per : tokens;
  int64_t t = r0 % a.seq;
  for (int64_t bt = r0; bt < r1; bt += U) {
    float u[U][V], x[U][V];
#pragma unroll
    for (int k = 0; k < U; ++k) {
      if (bt + k < r1) {
        conv_at<A, V>(a, w, bt + k, t, C, c, u[k]);
        ldv<V>(a.x + (bt + k) * C + c, x[k]);
      }
      if (++t == a.seq) t = 0;
    }
#pragma unroll
    for (int k = 0; k < U; ++k) {
      if (bt + k >= r1) break;
#pragma unroll
      for (int e = 0; e < V; ++e) x[k][e] += u[k][e] * sigmoidf_(u[k][e]);
      stv<V>(out + (bt + k) * C + c, x[k]);
    }
  }
}

// du = dy * SiLU'(u), u = conv(xn) recomputed as the forward computed it, and chunk blockIdx.y's
// partial sums of the conv weight gradient, partial[chunk, j, c] = sum_bt du[bt, c] xn[bt -
// back_j, c] (du as stored).
template <class A, int V, int U>
__global__ void __launch_bounds__(kConvThreads) conv_du_wgrad_kernel(ConvArgs<A> a, const A* dy,
                                                                     A* du, float* partial,
                                                                     int64_t per) {
  const int64_t C = a.M * a.d, tokens = a.batch * a.seq;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * kConvThreads + threadIdx.x) * V;
  if (c >= C) return;
  float w[kMaxTaps][V], acc[kMaxTaps][V];
  load_taps<V>(a.conv_wt, C, c, a.kernel, w);
#pragma unroll
  for (int j = 0; j < kMaxTaps; ++j)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[j][e] = 0.0f;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * per;
  const int64_t r1 = r0 + per < tokens ? r0 + per : tokens;
  int64_t t = r0 % a.seq;
  for (int64_t bt = r0; bt < r1; bt += U) {
    float u[U][V], g[U][V];
    int64_t tk[U];
#pragma unroll
    for (int k = 0; k < U; ++k) {
      tk[k] = t;
      if (bt + k < r1) {
        conv_at<A, V>(a, w, bt + k, t, C, c, u[k]);
        ldv<V>(dy + (bt + k) * C + c, g[k]);
      }
      if (++t == a.seq) t = 0;
    }
#pragma unroll
    for (int k = 0; k < U; ++k) {
      if (bt + k >= r1) break;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float sg = sigmoidf_(u[k][e]);
        g[k][e] = as_stored<A>(g[k][e] * sg * (1.0f + u[k][e] * (1.0f - sg)));
      }
      stv<V>(du + (bt + k) * C + c, g[k]);
#pragma unroll
      for (int j = 0; j < kMaxTaps; ++j) {
        if (j >= a.kernel) break;
        const int64_t back = a.dilation * (a.kernel - 1 - j);
        if (tk[k] < back) continue;
        float xn[V];
        ldv<V>(a.xn + (bt + k - back) * C + c, xn);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[j][e] += g[k][e] * xn[e];
      }
    }
  }
  float* p = partial + static_cast<int64_t>(blockIdx.y) * a.kernel * C;
#pragma unroll
  for (int j = 0; j < kMaxTaps; ++j) {
    if (j >= a.kernel) break;
    stv<V>(p + j * C + c, acc[j]);
  }
}

// d_conv_w[c, j] += sum over chunks (in order) of partial[chunk, j, c].
__global__ void conv_wgrad_finish(const float* partial, int64_t chunks, int64_t C, int64_t K,
                                  float* out) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= C * K) return;
  const int64_t c = o / K, j = o - c * K;
  float s = 0.0f;
  for (int64_t ch = 0; ch < chunks; ++ch) s += partial[(ch * K + j) * C + c];
  out[o] += s;
}

// One warp per (token, branch) row i = bt*M + m:
//   dxn[bt, c] = sum_j w[c, j] du[bt + back_j, c]   (the transpose of the causal conv; stored)
//   dx = dy + rstd * norm_w * dxn - x * k,  k = rstd^3 / d * sum_c dxn norm_w x.
template <class A, int V>
__global__ void __launch_bounds__(kThreads) conv_dxn_norm_kernel(ConvArgs<A> a, const A* du,
                                                                 const A* dy, A* dxn, A* dx) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= a.batch * a.seq * a.M) return;
  const int64_t d = a.d, C = a.M * d, bt = i / a.M, m = i - bt * a.M, t = bt % a.seq;
  const int64_t row = bt * C + m * d;  // this row's offset in (tokens, C)
  const float* nw = a.norm_w + m * d;
  const float r = a.rstd[i];
  float s[1] = {0.0f};
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = 0.0f;
#pragma unroll
    for (int jj = kMaxTaps - 1; jj >= 0; --jj) {
      if (jj >= a.kernel) continue;
      const int64_t back = a.dilation * (a.kernel - 1 - jj);
      if (t + back >= a.seq) continue;
      float wv[V], g[V];
      ldw<V>(a.conv_wt + jj * C + m * d + j, wv);
      ldv<V>(du + row + back * C + j, g);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] += wv[e] * g[e];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = as_stored<A>(acc[e]);
    stv<V>(dxn + row + j, acc);
    float ww[V], xx[V];
    ldw<V>(nw + j, ww);
    ldv<V>(a.x + row + j, xx);
#pragma unroll
    for (int e = 0; e < V; ++e) s[0] += acc[e] * ww[e] * xx[e];
  }
  warp_sum<1>(s);
  const float k = s[0] * r * r * r / static_cast<float>(d);
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float gg[V], ww[V], xx[V], oo[V];
    ldv<V>(dxn + row + j, gg);  // this lane's own stores above
    ldw<V>(nw + j, ww);
    ldv<V>(a.x + row + j, xx);
    ldv<V>(dy + row + j, oo);
#pragma unroll
    for (int e = 0; e < V; ++e) oo[e] += r * ww[e] * gg[e] - xx[e] * k;
    stv<V>(dx + row + j, oo);
  }
}

// dx = dy + RMSNorm backward (the residual's gradient plus the norm's); one warp per
// (token, branch) row.
template <class A, int V>
__global__ void __launch_bounds__(kThreads) conv_norm_backward_kernel(ConvArgs<A> a, const A* dxn,
                                                                      const A* dy, A* dx) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= a.batch * a.seq * a.M) return;
  const int64_t m = i % a.M, d = a.d;
  const A* x = a.x + i * d;
  const A* g = dxn + i * d;
  const float* w = a.norm_w + m * d;
  const float r = a.rstd[i];
  float s[1] = {0.0f};
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float gg[V], ww[V], xx[V];
    ldv<V>(g + j, gg);
    ldw<V>(w + j, ww);
    ldv<V>(x + j, xx);
#pragma unroll
    for (int e = 0; e < V; ++e) s[0] += gg[e] * ww[e] * xx[e];
  }
  warp_sum<1>(s);
  const float k = s[0] * r * r * r / static_cast<float>(d);
  A* o = dx + i * d;
  const A* base = dy + i * d;
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float gg[V], ww[V], xx[V], oo[V];
    ldv<V>(g + j, gg);
    ldw<V>(w + j, ww);
    ldv<V>(x + j, xx);
    ldv<V>(base + j, oo);
#pragma unroll
    for (int e = 0; e < V; ++e) oo[e] += r * ww[e] * gg[e] - xx[e] * k;
    stv<V>(o + j, oo);
  }
}

// ---- the short conv on shared-memory tiles (C % 4 == 0, halo <= kMaxTileHalo) ----------------
//
// A block of (32, 8) threads owns kTileC = 128 channels (4 a thread) and walks tiles of
// consecutive tokens (tile blockIdx.y, then + gridDim.y, ...). It first copies the tile's xn rows
// and the `halo` = dilation * (kernel - 1) rows before them into shared memory (every load of
// the tile in flight at once), then computes from shared memory; the rows a tap reads behind a
// token are never fetched twice from global memory. Tokens of the previous sequence in the halo
// are masked by position (t >= back), as in conv_at.
constexpr int kTileC = 128;
constexpr int kTileRowsY = 8;
constexpr int kFwdTile = 64;
constexpr int kBwdTile = 32;
constexpr int64_t kMaxTileHalo = 32;

// The tile kernels apply: 4-channel rows and a halo that fits their shared memory.
bool tile_path(int64_t C, int64_t halo) { return C % 4 == 0 && halo <= kMaxTileHalo; }

size_t fwd_tile_smem(int64_t halo) {
  return static_cast<size_t>(kFwdTile + halo) * kTileC * sizeof(float);
}
size_t bwd_tile_smem(int64_t halo) {
  return static_cast<size_t>((kBwdTile + 2 * halo) + (kBwdTile + halo)) * kTileC * sizeof(float);
}

// rows [first, first + n) of src (tokens, C), channels c .. c+3, into s (n, kTileC) at column
// 4 * threadIdx.x; rows outside [0, tokens) (or a dead column) are zeros.
template <class A>
__device__ __forceinline__ void tile_load(const A* src, int64_t first, int n, int64_t tokens,
                                          int64_t C, int64_t c, bool live, float* s) {
#pragma unroll 4
  for (int r = threadIdx.y; r < n; r += kTileRowsY) {
    const int64_t bt = first + r;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (live && bt >= 0 && bt < tokens) ldv<4>(src + bt * C + c, v);
    *reinterpret_cast<float4*>(s + r * kTileC + 4 * threadIdx.x) = make_float4(v[0], v[1], v[2], v[3]);
  }
}

__device__ __forceinline__ void tile_row(const float* s, int r, float (&v)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(s + r * kTileC + 4 * threadIdx.x);
  v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
}

// The taps' reach behind a token, back[j] = dilation * (kernel - 1 - j), for j < kernel (KT
// entries; those past the kernel are never read). int: the reach is at most kMaxTileHalo.
template <int KT>
__device__ __forceinline__ void tap_backs(const int64_t kernel, const int64_t dilation,
                                          int (&back)[KT]) {
#pragma unroll
  for (int j = 0; j < KT; ++j) back[j] = static_cast<int>(dilation * (kernel - 1 - j));
}

// Position in its sequence of token b0 + r, given t0 = b0 % seq (r >= 0): no 64-bit division
// per token.
__device__ __forceinline__ int position(int t0, int r, int seq) {
  int t = t0 + r;
  while (t >= seq) t -= seq;
  return t;
}

// SiLU's sigmoid with the fast exponential and division (about 2 ulp; the tile kernels are
// bound by instruction issue, not memory).
__device__ __forceinline__ float fast_sigmoid(float v) {
  return __fdividef(1.0f, 1.0f + __expf(-v));
}

// u = sum_j w[j] xs[row - back[j]] over the taps whose reach stays in the sequence (t >= back[j]);
// row: the token's row in the tile xs, t: its position in its sequence.
template <int KT>
__device__ __forceinline__ void tile_conv(const float* xs, int row, int t, int K,
                                          const int (&back)[KT], const float (&w)[KT][4],
                                          float (&u)[4]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) u[e] = 0.0f;
#pragma unroll
  for (int j = 0; j < KT; ++j) {
    if (j >= K) break;
    if (t < back[j]) continue;
    float v[4];
    tile_row(xs, row - back[j], v);
#pragma unroll
    for (int e = 0; e < 4; ++e) u[e] += w[j][e] * v[e];
  }
}

// out = x + SiLU(conv(xn)), kFwdTile tokens a tile.
template <class A, int KT>
__global__ void __launch_bounds__(256) conv_fwd_tile_kernel(ConvArgs<A> a, A* out, int64_t halo) {
  extern __shared__ float xs[];  // (kFwdTile + halo, kTileC): xn rows b0 - halo ..
  const int64_t C = a.M * a.d, tokens = a.batch * a.seq;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileC + 4 * threadIdx.x;
  const bool live = c < C;
  float w[KT][4];
  load_taps<4, KT>(a.conv_wt, C, live ? c : 0, a.kernel, w);
  int back[KT];
  tap_backs<KT>(a.kernel, a.dilation, back);
  const int h = static_cast<int>(halo), K = static_cast<int>(a.kernel);
  const int seq = static_cast<int>(a.seq);
  for (int64_t b0 = static_cast<int64_t>(blockIdx.y) * kFwdTile; b0 < tokens;
       b0 += static_cast<int64_t>(gridDim.y) * kFwdTile) {
    tile_load<A>(a.xn, b0 - h, kFwdTile + h, tokens, C, c, live, xs);
    const int t0 = static_cast<int>(b0 % a.seq);
    __syncthreads();
#pragma unroll 4
    for (int r = threadIdx.y; r < kFwdTile; r += kTileRowsY) {
      const int64_t bt = b0 + r;
      if (!live || bt >= tokens) continue;
      const int t = position(t0, r, seq);
      float u[4], x[4];
      tile_conv<KT>(xs, r + h, t, K, back, w, u);
      ldv<4>(a.x + bt * C + c, x);
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e] += u[e] * fast_sigmoid(u[e]);
      stv<4>(out + bt * C + c, x);
    }
    __syncthreads();
  }
}

// One pass of the conv backward over kBwdTile-token tiles: du = dy SiLU'(u) (u recomputed; du
// as stored in A, kept in shared memory only, computed also for the `halo` rows after the tile),
// dxn[bt] = sum_j w_j du[bt + back_j] (the transposed conv; stored), and this block's partial
// sums of the weight gradient, partial[blockIdx.y, j, c] = sum over its tiles' tokens of
// du[bt, c] xn[bt - back_j, c] (summed over threadIdx.y in order).
template <class A, int KT>
__global__ void __launch_bounds__(256) conv_bwd_tile_kernel(ConvArgs<A> a, const A* dy, A* dxn,
                                                            float* partial, int64_t halo) {
  extern __shared__ float sm[];
  const int h = static_cast<int>(halo);
  float* xs = sm;                                 // (kBwdTile + 2h, kTileC): xn rows b0 - h ..
  float* ds = sm + (kBwdTile + 2 * h) * kTileC;   // (kBwdTile + h, kTileC): du rows b0 ..
  const int64_t C = a.M * a.d, tokens = a.batch * a.seq;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileC + 4 * threadIdx.x;
  const bool live = c < C;
  float w[KT][4], acc[KT][4];
  load_taps<4, KT>(a.conv_wt, C, live ? c : 0, a.kernel, w);
  int back[KT];
  tap_backs<KT>(a.kernel, a.dilation, back);
  const int K = static_cast<int>(a.kernel), seq = static_cast<int>(a.seq);
#pragma unroll
  for (int j = 0; j < KT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
  for (int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBwdTile; b0 < tokens;
       b0 += static_cast<int64_t>(gridDim.y) * kBwdTile) {
    tile_load<A>(a.xn, b0 - h, kBwdTile + 2 * h, tokens, C, c, live, xs);
    const int t0 = static_cast<int>(b0 % a.seq);
    __syncthreads();
    // du for rows b0 .. b0 + kBwdTile + h (the halo after the tile: for dxn only).
#pragma unroll 2
    for (int r = threadIdx.y; r < kBwdTile + h; r += kTileRowsY) {
      const int64_t bt = b0 + r;
      float g[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (live && bt < tokens) {
        const int t = position(t0, r, seq);
        float u[4];
        tile_conv<KT>(xs, r + h, t, K, back, w, u);
        ldv<4>(dy + bt * C + c, g);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float sg = fast_sigmoid(u[e]);
          g[e] = as_stored<A>(g[e] * sg * (1.0f + u[e] * (1.0f - sg)));
        }
        if (r < kBwdTile) {
#pragma unroll
          for (int j = 0; j < KT; ++j) {
            if (j >= K) break;
            if (t < back[j]) continue;
            float v[4];
            tile_row(xs, r + h - back[j], v);
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][e] += g[e] * v[e];
          }
        }
      }
      *reinterpret_cast<float4*>(ds + r * kTileC + 4 * threadIdx.x) =
          make_float4(g[0], g[1], g[2], g[3]);
    }
    __syncthreads();
#pragma unroll 4
    for (int r = threadIdx.y; r < kBwdTile; r += kTileRowsY) {
      const int64_t bt = b0 + r;
      if (!live || bt >= tokens) continue;
      const int t = position(t0, r, seq);
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = KT - 1; j >= 0; --j) {
        if (j >= K) continue;
        if (t + back[j] >= seq) continue;
        float v[4];
        tile_row(ds, r + back[j], v);
#pragma unroll
        for (int e = 0; e < 4; ++e) s[e] += w[j][e] * v[e];
      }
      stv<4>(dxn + bt * C + c, s);
    }
    __syncthreads();
  }
  // partial[blockIdx.y, j, c]: the 8 row threads' sums in threadIdx.y order, one tap at a time.
  float* red = sm;  // (kTileRowsY, kTileC)
  for (int j = 0; j < a.kernel; ++j) {
    *reinterpret_cast<float4*>(red + threadIdx.y * kTileC + 4 * threadIdx.x) =
        make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    __syncthreads();
    if (threadIdx.y == 0 && live) {
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int y = 0; y < kTileRowsY; ++y) {
        float v[4];
        tile_row(red, y, v);
#pragma unroll
        for (int e = 0; e < 4; ++e) s[e] += v[e];
      }
      stv<4>(partial + (static_cast<int64_t>(blockIdx.y) * a.kernel + j) * C + c, s);
    }
    __syncthreads();
  }
}

// Row kernels run 4 values per thread when every row start is 16-byte (float) or 8-byte (bf16)
// aligned: d % 4 == 0 with cudaMalloc'd (256-byte aligned) bases.
bool vec4(int64_t d) { return d % 4 == 0; }

}  // namespace

void launch_table_rows(int64_t* rows, int32_t* slots, const int32_t* ids, const int64_t* offsets,
                       int64_t tokens, int64_t heads) {
  const int64_t n = tokens * heads;
  if (n == 0) return;
  table_rows_kernel<<<blocks_for(n), kThreads>>>(rows, slots, ids, offsets, n, heads);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_gate_forward(const GateArgs<A>& a, void* stream) {
  if (a.tokens * a.M == 0) return;
  const auto blocks = static_cast<unsigned>((a.tokens * a.M + kWarps - 1) / kWarps);
  if (vec4(a.d)) {
    gate_forward_kernel<A, 4><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  } else {
    gate_forward_kernel<A, 1><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_gate_backward(const GateBwdArgs<A>& a) {
  if (a.tokens == 0) return;
  const auto blocks = static_cast<unsigned>(a.tokens);
  const auto threads = static_cast<unsigned>(32 * a.M);  // M <= 32, checked by the caller
  if (vec4(a.d)) {
    gate_backward_kernel<A, 4><<<blocks, threads>>>(a);
  } else {
    gate_backward_kernel<A, 1><<<blocks, threads>>>(a);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const int64_t cols = a.M * a.d;
  const NormTerm<A> term{a.ds, a.kv, a.bias, a.hidden, a.key_rstd, a.query_rstd, a.M, a.d};
  if (vec4(a.d)) {
    const dim3 grid(static_cast<unsigned>((cols / 4 + 31) / 32), kColChunks);
    colsum_partial<NormTerm<A>, 4><<<grid, dim3(32, 8)>>>(term, a.tokens, cols, a.partial);
  } else {
    const dim3 grid(static_cast<unsigned>((cols + 31) / 32), kColChunks);
    colsum_partial<NormTerm<A>, 1><<<grid, dim3(32, 8)>>>(term, a.tokens, cols, a.partial);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  norm_grad_finish<<<blocks_for(cols), kThreads>>>(a.partial, cols, a.key_w, a.query_w,
                                                   a.d_key_w, a.d_query_w);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_conv_forward(const ConvArgs<A>& a, A* out) {
  const int64_t tokens = a.batch * a.seq, C = a.M * a.d;
  if (tokens * C == 0) return;
  const int64_t halo = a.dilation * (a.kernel - 1);
  if (tile_path(C, halo)) {
    const dim3 grid(static_cast<unsigned>((C + kTileC - 1) / kTileC),
                    static_cast<unsigned>(std::min<int64_t>((tokens + kFwdTile - 1) / kFwdTile, 65535)));
    if (a.kernel <= 4) {
      conv_fwd_tile_kernel<A, 4><<<grid, dim3(32, kTileRowsY), fwd_tile_smem(halo)>>>(a, out, halo);
    } else {
      conv_fwd_tile_kernel<A, kMaxTaps><<<grid, dim3(32, kTileRowsY), fwd_tile_smem(halo)>>>(a, out,
                                                                                         halo);
    }
    ENGRAM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const int64_t chunks = (tokens + kFwdChunkTokens - 1) / kFwdChunkTokens;
  if (C % 4 == 0) {
    const ConvGeometry g = conv_geometry(tokens, C, 4, chunks);
    conv_fwd_kernel<A, 4, kChunkU><<<g.grid, kConvThreads>>>(a, out, g.per);
  } else {
    const ConvGeometry g = conv_geometry(tokens, C, 1, chunks);
    conv_fwd_kernel<A, 1, kChunkU><<<g.grid, kConvThreads>>>(a, out, g.per);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_conv_backward(const ConvArgs<A>& a, const A* dy, A* dx, float* d_conv_w,
                          float* d_norm_w, A* du, A* dxn, float* partial, PhaseHook hook) {
  const auto phase = [&](const char* name) {
    if (hook.fn != nullptr) hook.fn(hook.ctx, name);
  };
  const int64_t tokens = a.batch * a.seq, C = a.M * a.d, K = a.kernel;
  if (tokens * C == 0) return;
  const int64_t halo = a.dilation * (a.kernel - 1);
  if (tile_path(C, halo)) {
    // More than the default 48 KiB of dynamic shared memory: opted in at every launch, since
    // the attribute belongs to the current device (cheap next to the kernel).
    const int smem_limit = static_cast<int>(bwd_tile_smem(kMaxTileHalo));
    ENGRAM_CUDA_CHECK(cudaFuncSetAttribute(conv_bwd_tile_kernel<A, 4>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit));
    ENGRAM_CUDA_CHECK(cudaFuncSetAttribute(conv_bwd_tile_kernel<A, kMaxTaps>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit));
    const int64_t tiles = (tokens + kBwdTile - 1) / kBwdTile;
    const auto chunks = static_cast<unsigned>(std::min<int64_t>(tiles, kMaxConvChunks));
    const dim3 grid(static_cast<unsigned>((C + kTileC - 1) / kTileC), chunks);
    if (a.kernel <= 4) {
      conv_bwd_tile_kernel<A, 4><<<grid, dim3(32, kTileRowsY), bwd_tile_smem(halo)>>>(
          a, dy, dxn, partial, halo);
    } else {
      conv_bwd_tile_kernel<A, kMaxTaps><<<grid, dim3(32, kTileRowsY), bwd_tile_smem(halo)>>>(
          a, dy, dxn, partial, halo);
    }
    ENGRAM_CUDA_CHECK(cudaGetLastError());
    conv_wgrad_finish<<<blocks_for(C * K), kThreads>>>(partial, chunks, C, K, d_conv_w);
    ENGRAM_CUDA_CHECK(cudaGetLastError());
    phase("bwd: conv du, dxn, weight grad");
    const auto row_blocks = static_cast<unsigned>((tokens * a.M + kWarps - 1) / kWarps);
    if (vec4(a.d)) {
      conv_norm_backward_kernel<A, 4><<<row_blocks, kThreads>>>(a, dxn, dy, dx);
    } else {
      conv_norm_backward_kernel<A, 1><<<row_blocks, kThreads>>>(a, dxn, dy, dx);
    }
    ENGRAM_CUDA_CHECK(cudaGetLastError());
    phase("bwd: conv norm backward");
    column_sum(ConvNormTerm<A>{dxn, a.x, a.rstd, a.M, a.d}, tokens, C, partial, d_norm_w,
               vec4(a.d));
    return;
  }
  static_assert(kDuChunks <= kMaxConvChunks);
  const int V = C % 4 == 0 ? 4 : 1;
  const ConvGeometry g = conv_geometry(tokens, C, V, kDuChunks);
  if (V == 4) {
    conv_du_wgrad_kernel<A, 4, kChunkU><<<g.grid, kConvThreads>>>(a, dy, du, partial, g.per);
  } else {
    conv_du_wgrad_kernel<A, 1, kChunkU><<<g.grid, kConvThreads>>>(a, dy, du, partial, g.per);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  conv_wgrad_finish<<<blocks_for(C * K), kThreads>>>(partial, g.grid.y, C, K, d_conv_w);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  phase("bwd: conv du + weight grad");
  const auto row_blocks = static_cast<unsigned>((tokens * a.M + kWarps - 1) / kWarps);
  if (vec4(a.d)) {
    conv_dxn_norm_kernel<A, 4><<<row_blocks, kThreads>>>(a, du, dy, dxn, dx);
  } else {
    conv_dxn_norm_kernel<A, 1><<<row_blocks, kThreads>>>(a, du, dy, dxn, dx);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  phase("bwd: conv dxn + norm backward");
  column_sum(ConvNormTerm<A>{dxn, a.x, a.rstd, a.M, a.d}, tokens, C, partial, d_norm_w,
             vec4(a.d));
}

template <class A>
void launch_bias_grad(float* d_bias, const A* dkv, int64_t tokens, int64_t cols, float* partial) {
  column_sum(BiasTerm<A>{dkv, cols}, tokens, cols, partial, d_bias, cols % 4 == 0);
}

template <class A>
__global__ void conv_ring_store_kernel(ConvStepArgs<A> a) {
  const int64_t n = a.rows * a.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / a.C, c = i - r * a.C;
    const int64_t slot = static_cast<int64_t>(a.seq[r]) * a.ring_len + a.pos[r] % a.ring_len;
    a.ring[slot * a.C + c] = a.xn[i];
  }
}

template <class A>
__global__ void conv_step_kernel(ConvStepArgs<A> a, A* out) {
  const int64_t n = a.rows * a.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / a.C, c = i - r * a.C;
    const int64_t p = a.pos[r];
    const A* ring = a.ring + static_cast<int64_t>(a.seq[r]) * a.ring_len * a.C + c;
    float u = 0.0f;
    for (int64_t j = 0; j < a.kernel; ++j) {
      const int64_t back = a.dilation * (a.kernel - 1 - j);
      if (p < back) continue;
      float xn[1];
      ldv<1>(ring + ((p - back) % a.ring_len) * a.C, xn);
      u += a.conv_wt[j * a.C + c] * xn[0];
    }
    float x[1];
    ldv<1>(a.x + i, x);
    x[0] += u * sigmoidf_(u);
    stv<1>(out + i, x);
  }
}

template <class A>
void launch_conv_ring_store(const ConvStepArgs<A>& a, void* stream) {
  const int64_t n = a.rows * a.C;
  if (n == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  conv_ring_store_kernel<A><<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(a);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_conv_step(const ConvStepArgs<A>& a, A* out, void* stream) {
  const int64_t n = a.rows * a.C;
  if (n == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  conv_step_kernel<A><<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(a, out);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_copy(A* out, const A* in, int64_t n, void* stream) {
  if (n == 0) return;
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n) * sizeof(A),
                                    cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
}

#define ENGRAM_INSTANTIATE(A)                                                                  \
  template void launch_gate_forward<A>(const GateArgs<A>&, void*);                                 \
  template void launch_gate_backward<A>(const GateBwdArgs<A>&);                                \
  template void launch_conv_forward<A>(const ConvArgs<A>&, A*);                                \
  template void launch_conv_backward<A>(const ConvArgs<A>&, const A*, A*, float*, float*, A*, \
                                        A*, float*, PhaseHook);                                \
  template void launch_bias_grad<A>(float*, const A*, int64_t, int64_t, float*);               \
  template void launch_copy<A>(A*, const A*, int64_t, void*);                                  \
  template void launch_conv_ring_store<A>(const ConvStepArgs<A>&, void*);                      \
  template void launch_conv_step<A>(const ConvStepArgs<A>&, A*, void*);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(bf16)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::cuda::detail
