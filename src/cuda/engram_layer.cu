// The Engram layer's kernels (src/cuda/engram_layer_kernel.h); the class over them, with the
// cuBLAS projections, is src/cuda/engram_layer.cpp. Reductions whose results feed weight
// gradients run over a fixed number of row chunks summed in chunk order: deterministic.
// Activations are float or bf16 (A); loads widen to float, stores round to nearest even.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/check.h"
#include "cuda/engram_layer_kernel.h"
#include "cuda/reduce.h"
#include "cuda/vec_io.h"

namespace engram::cuda::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

unsigned blocks_for(int64_t items) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, INT32_MAX)));
}

__device__ __forceinline__ float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }

// ---- loads and stores of activations: ldv / stv (src/cuda/vec_io.h) ------------------------

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

// Sums N values over the warp; every lane gets the sums (reduce.h's fixed butterfly each).
template <int N>
__device__ __forceinline__ void warp_sum(float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = detail::warp_sum(v[i]);
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
  const bool conv = a.conv_norm_w != nullptr;
  // s[0] = sum kb^2, s[1] = sum q^2, s[2] = sum (kb wk)(q wq); with the conv, s[3] = sum vb^2
  // (vb = v + bias: the conv norm's sum of Vt^2 is alpha^2 s[3], so Vt need not be formed here).
  float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
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
    if (conv) {
      float vv[V], bv[V];
      ldv<V>(v + j, vv);
      ldb<V>(a.bias, j, bv);
#pragma unroll
      for (int e = 0; e < V; ++e) s[3] += (vv[e] + bv[e]) * (vv[e] + bv[e]);
    }
  }
  warp_sum<4>(s);
  const float rk = 1.0f / sqrtf(s[0] / static_cast<float>(d) + a.eps);
  const float rq = 1.0f / sqrtf(s[1] / static_cast<float>(d) + a.eps);
  const float score = s[2] * rk * rq / sqrtf(static_cast<float>(d));
  const float mag = sqrtf(fmaxf(fabsf(score), 1e-6f));
  const float alpha = sigmoidf_(score > 0.0f ? mag : (score < 0.0f ? -mag : 0.0f));
  // The short conv's RMSNorm of this Vt row.
  const float r =
      conv ? 1.0f / sqrtf(alpha * alpha * s[3] / static_cast<float>(d) + a.conv_eps) : 0.0f;
  if (lane == 0) {
    a.key_rstd[i] = rk;
    a.query_rstd[i] = rq;
    a.score[i] = score;
    a.alpha[i] = alpha;
    if (conv) a.conv_rstd[i] = r;
  }
  A* vt = a.vt != nullptr ? a.vt + i * d : nullptr;
  if (vt == nullptr) return;
  A* xn = conv ? a.xn : nullptr;
  if (xn != nullptr) xn += i * d;
  const float* w = conv ? a.conv_norm_w + m * d : nullptr;
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float vv[V], b[V];
    ldv<V>(v + j, vv);
    ldb<V>(a.bias, j, b);
#pragma unroll
    for (int e = 0; e < V; ++e) vv[e] = alpha * (vv[e] + b[e]);
    stv<V>(vt + j, vv);
    if (xn != nullptr) {
      float ww[V];
      ldw<V>(w + j, ww);
#pragma unroll
      for (int e = 0; e < V; ++e) vv[e] = vv[e] * r * ww[e];
      stv<V>(xn + j, vv);
    }
  }
}

// One block per kGateTokens consecutive tokens with one warp per branch (blockDim = 32 * M):
// warp m computes branch m's d Vt rows (GateBwdArgs: d out, plus the conv norm's backward with
// the short conv) and from them the key and query gradients; then the block sums each value row's
// gradient over the branches. d Vt is never stored: the warps recompute it from its parts. A
// warp takes its block's tokens together, so that each parameter (norm weights, biases) it reads
// could serve several (kGateTokens). Measured on the H200 at issue 5's shape (bf16, with the
// short conv): 1 token a block 0.52 ms with the norm weights' column sum, 2 tokens 0.64 ms, 4
// tokens 0.78 ms: the kernel is bound by latency, not by the parameters' L2 traffic. Persistent
// blocks (each a contiguous run of tokens, summing the norm weights' and the bias's gradients in
// shared memory instead of the column-sum passes over the activations) measured 0.61-0.64 ms
// against 0.57 for this kernel with its passes (docs/benchmarks.md).
constexpr int kGateTokens = 1;

template <class A, int V>
__global__ void gate_backward_kernel(GateBwdArgs<A> a) {
  constexpr int TB = kGateTokens;
  __shared__ float branch[TB][3][32];  // per token and branch: alpha, conv rstd, conv norm k
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * TB, d = a.d, M = a.M;
  const int64_t m = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int nt = static_cast<int>(a.tokens - t0 < TB ? a.tokens - t0 : TB);  // tokens here
  const bool conv = a.dxn != nullptr;
  const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(d));
  const float* wk = a.key_w + m * d;
  const float* wq = a.query_w + m * d;
  const float* bk = a.bias != nullptr ? a.bias + (1 + m) * d : nullptr;
  const float* wn = conv ? a.conv_norm_w + m * d : nullptr;
  // Per token (row i = t*M + m): r[0] = sum dvt vb, r[1] = sum nq wk k, r[2] = sum nk wq q; with
  // the conv, r[3] = sum conv_norm_w dxn vb and r[4] = sum vb^2 (vb = v + bias; vt = alpha vb).
  float r[TB][5];
  float rk[TB], rq[TB];
#pragma unroll
  for (int b = 0; b < TB; ++b) {
#pragma unroll
    for (int x = 0; x < 5; ++x) r[b][x] = 0.0f;
    const int64_t i = (t0 + (b < nt ? b : 0)) * M + m;
    rk[b] = a.key_rstd[i];
    rq[b] = a.query_rstd[i];
  }
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float bv[V], bb[V], wkk[V], wqq[V], wnn[V];
    ldb<V>(a.bias, j, bv);
    ldb<V>(bk, j, bb);
    ldw<V>(wk + j, wkk);
    ldw<V>(wq + j, wqq);
    if (conv) ldw<V>(wn + j, wnn);
#pragma unroll
    for (int b = 0; b < TB; ++b) {
      if (b >= nt) break;
      const int64_t t = t0 + b, i = t * M + m;
      const A* v = a.kv + t * (1 + M) * d;
      float gg[V], vv[V], kk[V], qq[V];
      ldv<V>(a.dvt + i * d + j, gg);
      ldv<V>(v + j, vv);
      ldv<V>(v + (1 + m) * d + j, kk);
      ldv<V>(a.hidden + i * d + j, qq);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float kb = kk[e] + bb[e], vb = vv[e] + bv[e];
        const float nq = qq[e] * rq[b] * wqq[e], nk = kb * rk[b] * wkk[e];
        r[b][0] += gg[e] * vb;
        r[b][1] += nq * wkk[e] * kb;
        r[b][2] += nk * wqq[e] * qq[e];
      }
      if (conv) {
        float gxx[V];
        ldv<V>(a.dxn + i * d + j, gxx);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float vb = vv[e] + bv[e];
          r[b][3] += wnn[e] * gxx[e] * vb;
          r[b][4] += vb * vb;
        }
      }
    }
  }
  float ds[TB], ck[TB], cq[TB];
#pragma unroll
  for (int b = 0; b < TB; ++b) {
    warp_sum<5>(r[b]);
    const int64_t i = (t0 + (b < nt ? b : 0)) * M + m;
    const float alpha = a.alpha[i], s = a.score[i];
    // d alpha = sum_j dVt vb = r0 + rc r3 - kc alpha r4, kc = rc^3 / d * alpha * r3.
    float dalpha = r[b][0], rc = 0.0f, kc = 0.0f;
    if (conv) {
      rc = a.conv_rstd[i];
      kc = rc * rc * rc / static_cast<float>(d) * alpha * r[b][3];
      dalpha += rc * r[b][3] - kc * alpha * r[b][4];
    }
    if (lane == 0) {
      branch[b][0][m] = alpha;
      branch[b][1][m] = rc;
      branch[b][2][m] = kc;
    }
    const float as = fabsf(s);
    const float ssg = (s != 0.0f && as >= 1e-6f) ? 0.5f / sqrtf(as) : 0.0f;
    ds[b] = dalpha * alpha * (1.0f - alpha) * ssg * inv_sqrt_d;
    ck[b] = ds[b] * r[b][1] * rk[b] * rk[b] * rk[b] / static_cast<float>(d);
    cq[b] = ds[b] * r[b][2] * rq[b] * rq[b] * rq[b] / static_cast<float>(d);
    if (lane == 0 && b < nt) a.ds[i] = ds[b];
  }
  for (int64_t j = lane * V; j < d; j += 32 * V) {
    float bb[V], wkk[V], wqq[V];
    ldb<V>(bk, j, bb);
    ldw<V>(wk + j, wkk);
    ldw<V>(wq + j, wqq);
#pragma unroll
    for (int b = 0; b < TB; ++b) {
      if (b >= nt) break;
      const int64_t t = t0 + b, i = t * M + m;
      const A* k = a.kv + t * (1 + M) * d + (1 + m) * d;
      A* dk = a.dkv + t * (1 + M) * d + (1 + m) * d;
      A* dq = a.d_hidden + i * d;
      float kk[V], qq[V], dqq[V], dkk[V];
      ldv<V>(k + j, kk);
      ldv<V>(a.hidden + i * d + j, qq);
      ldv<V>(dq + j, dqq);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float kb = kk[e] + bb[e];
        const float nq = qq[e] * rq[b] * wqq[e], nk = kb * rk[b] * wkk[e];
        dkk[e] = rk[b] * wkk[e] * (ds[b] * nq) - kb * ck[b];
        dqq[e] += rq[b] * wqq[e] * (ds[b] * nk) - qq[e] * cq[b];
      }
      stv<V>(dk + j, dkk);
      stv<V>(dq + j, dqq);
    }
  }
  __syncthreads();
  // The value rows' gradients: sum over branches of alpha * d Vt, in branch order.
  for (int64_t j = threadIdx.x * V; j < d; j += blockDim.x * V) {
    float bv[V];
    ldb<V>(a.bias, j, bv);
#pragma unroll
    for (int b = 0; b < TB; ++b) {
      if (b >= nt) break;
      const int64_t t = t0 + b;
      float acc[V], vv[V];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = 0.0f;
      if (conv) ldv<V>(a.kv + t * (1 + M) * d + j, vv);
      for (int64_t mm = 0; mm < M; ++mm) {
        const float alpha = branch[b][0][mm];
        float gg[V];
        ldv<V>(a.dvt + (t * M + mm) * d + j, gg);
        if (conv) {
          const float rc = branch[b][1][mm], kc = branch[b][2][mm];
          float gxx[V], wnn[V];
          ldv<V>(a.dxn + (t * M + mm) * d + j, gxx);
          ldw<V>(a.conv_norm_w + mm * d + j, wnn);
#pragma unroll
          for (int e = 0; e < V; ++e) gg[e] += rc * wnn[e] * gxx[e] - alpha * (vv[e] + bv[e]) * kc;
        }
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += alpha * gg[e];
      }
      stv<V>(a.dkv + t * (1 + M) * d + j, acc);
    }
  }
}

// ---- the short conv ---------------------------------------------------------------------------
//
// Layout: channels c < C = M*d; tokens bt = b*T + t; the taps are conv_wt (kernel, C). The conv
// input xn = y * norm_w with y = vt * rstd, and the residual vt, are recomputed from v, alpha and
// rstd (ConvArgs) wherever they are read.
//
// Walks. The conv is causal and dilated: u[t] = sum_j w_j xn[t - dil (K-1-j)] reads only the
// positions of t's residue mod dil. A thread owns V channels (4 when d % 4 == 0, so that they lie
// in one branch) and walks one residue of one chunk of one sequence, L positions dil apart,
// keeping the last KT values of y in registers (a ring shifted each step; KT = 4 or 8 >= K, the
// slots older than the kernel's reach have weight 0): every input is loaded once per walk, plus
// the K-1 before it. The backward walk keeps the last KT du values as well, runs KT-1 positions
// past its chunk and emits dxn[s] = sum_j w_j du[s + dil (K-1-j)] once du[s + dil (KT-1)] is
// known, when s is the ring's oldest slot (so the norm weight's gradient, sum dxn * y, is summed
// there too). Block (32, kWalksY): 32 channel
// groups x kWalksY walks. No position limits. kExact: K == KT known at compile time (the
// default kernel of 4 taps), which lets the compiler share the registers of the three tap
// orders below.
//
// Measured on the H200 at issue 5's shape: docs/benchmarks.md ("The Engram layer with recomputed
// Vt and conv walks"): the walk length, walks a block and one position at a time were chosen there.
constexpr int kMaxTaps = static_cast<int>(kMaxConvKernel);
constexpr int kWalkLen = 64;  // positions a walk computes (L)
constexpr int kWalksY = 8;    // walks per block (blockDim.y)
// The forward walk's registers are capped for 4 blocks an SM with rings of 4 taps (64; 72
// uncapped, 3 blocks): the conv forward 0.130 -> 0.112 ms at issue 5's shape, a few bytes
// spilled. Rings of 8 taps (twice the registers) and the backward walk (111 registers) stay
// uncapped: the backward capped for 3 blocks spills ~250 bytes and takes twice as long.
constexpr int kFwdWalkBlocks = 4;

// SiLU's sigmoid with the fast exponential and division (__expf's error grows with |v|: a few
// ulp at the magnitudes here).
__device__ __forceinline__ float fast_sigmoid(float v) {
  return __fdividef(1.0f, 1.0f + __expf(-v));
}

// The walks of a batch: walk w is (b, chunk, residue) = (w / (chunks * dil), w / dil % chunks,
// w % dil); its positions are chunk * dil * L + residue + dil * k, k < L, below seq.
struct Walks {
  int64_t count, chunks;
};
Walks walks_of(int64_t batch, int64_t seq, int64_t dilation) {
  const int64_t span = dilation * kWalkLen;
  const int64_t chunks = (seq + span - 1) / span;
  return {batch * chunks * dilation, chunks};
}

// What a walk loads at one position: v (before the bias), alpha and rstd.
template <int V>
struct WalkIn {
  float v[V];
  float alpha, r;
};

// A thread's channels c .. c+V-1 of branch m, column j = c - m*d of the value row, and the
// parameters it reads at every position.
template <class A, int V, int KT, bool kExact>
struct WalkChannels {
  int64_t c, m, j;
  int K;
  bool live;
  float bias[V], norm_w[V];
  float wp[KT][V];  // wp[i] = tap i - (KT - K), 0 before it: the weight of ring slot i
  float wr[KT][V];  // wr[q] = tap K-1-q, 0 past the kernel: the taps reversed

  __device__ WalkChannels(const ConvArgs<A>& a) {
    const int64_t C = a.M * a.d;
    const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x) * V;
    live = c0 < C;
    c = live ? c0 : 0;
    m = c / a.d;
    j = c - m * a.d;
    K = kExact ? KT : static_cast<int>(a.kernel);
    ldb<V>(a.v_bias, j, bias);
    ldw<V>(a.norm_w + c, norm_w);
#pragma unroll
    for (int i = 0; i < KT; ++i) {
      if (i >= KT - K) {
        ldw<V>(a.conv_wt + (i - (KT - K)) * C + c, wp[i]);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) wp[i][e] = 0.0f;
      }
      if (i < K) {
        ldw<V>(a.conv_wt + (K - 1 - i) * C + c, wr[i]);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) wr[i][e] = 0.0f;
      }
    }
  }

  __device__ __forceinline__ void fetch(const ConvArgs<A>& a, int64_t bt, WalkIn<V>& in) const {
    ldv<V>(a.v + bt * a.v_stride + j, in.v);
    in.alpha = a.alpha[bt * a.M + m];
    in.r = a.rstd[bt * a.M + m];
  }
  // vt = alpha (v + bias) and y = vt * rstd (xn = y * norm_w).
  __device__ __forceinline__ void values(const WalkIn<V>& in, float (&vt)[V], float (&y)[V]) const {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      vt[e] = in.alpha * (in.v[e] + bias[e]);
      y[e] = vt[e] * in.r;
    }
  }
  // u = norm_w * sum over ring slots of wp * y (the taps in j order; the slots older than the
  // kernel's reach are skipped, not multiplied by 0, so that a non-finite value there stays out).
  __device__ __forceinline__ void conv(const float (&y)[KT][V], float (&u)[V]) const {
#pragma unroll
    for (int e = 0; e < V; ++e) u[e] = 0.0f;
#pragma unroll
    for (int i = 0; i < KT; ++i) {
      if (i < KT - K) continue;
#pragma unroll
      for (int e = 0; e < V; ++e) u[e] += wp[i][e] * y[i][e];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) u[e] *= norm_w[e];
  }
};

// Shifts the ring one slot older and puts `in` in the newest slot (KT - 1).
template <int KT, int V>
__device__ __forceinline__ void ring_push(float (&x)[KT][V], const float (&in)[V]) {
#pragma unroll
  for (int i = 0; i + 1 < KT; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) x[i][e] = x[i + 1][e];
#pragma unroll
  for (int e = 0; e < V; ++e) x[KT - 1][e] = in[e];
}

// The ring before a walk's first position t (whose push then shifts it one slot older): slot
// KT-i holds y at t - dil*i for 1 <= i < K (zero before the sequence), the rest zero.
template <class A, int V, int KT, bool kExact>
__device__ __forceinline__ void ring_fill(const ConvArgs<A>& a,
                                          const WalkChannels<A, V, KT, kExact>& ch, int64_t row0,
                                          int t, float (&y)[KT][V]) {
  const int dil = static_cast<int>(a.dilation);
#pragma unroll
  for (int i = 0; i < KT; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) y[i][e] = 0.0f;
#pragma unroll
  for (int i = 1; i < KT; ++i) {
    if (i >= ch.K || t - dil * i < 0) break;
    WalkIn<V> in;
    float vt[V];
    ch.fetch(a, row0 + t - dil * i, in);
    ch.values(in, vt, y[KT - i]);
  }
}

// out = vt + SiLU(conv(xn)).
template <class A, int V, int KT, bool kExact>
__global__ void __launch_bounds__(32 * kWalksY, KT == 4 ? kFwdWalkBlocks : 1)
    conv_fwd_walk_kernel(ConvArgs<A> a, A* out, Walks walks) {
  const WalkChannels<A, V, KT, kExact> ch(a);
  if (!ch.live) return;
  const int64_t C = a.M * a.d;
  const int dil = static_cast<int>(a.dilation), seq = static_cast<int>(a.seq);
  for (int64_t w = static_cast<int64_t>(blockIdx.y) * kWalksY + threadIdx.y; w < walks.count;
       w += static_cast<int64_t>(gridDim.y) * kWalksY) {
    const int64_t b = w / (walks.chunks * dil), chunk = w / dil % walks.chunks;
    const int64_t row0 = b * a.seq;  // the sequence's first token
    int t = static_cast<int>(chunk * dil * kWalkLen + w % dil);
    float y[KT][V];
    ring_fill<A, V, KT, kExact>(a, ch, row0, t, y);
    for (int k = 0; k < kWalkLen && t < seq; ++k, t += dil) {
      WalkIn<V> in;
      float vt[V], yy[V], uu[V];
      ch.fetch(a, row0 + t, in);
      ch.values(in, vt, yy);
      ring_push<KT, V>(y, yy);
      ch.conv(y, uu);
#pragma unroll
      for (int e = 0; e < V; ++e) vt[e] += uu[e] * fast_sigmoid(uu[e]);
      stv<V>(out + (row0 + t) * C + ch.c, vt);
    }
  }
}

// du = dy SiLU'(u) (u recomputed), dxn = the transposed conv of du (stored), and this block's
// partial sums of the weight gradients: partial[blockIdx.y, j, c] for tap j < K = norm_w[c] *
// sum of du[t, c] y[t - dil (K-1-j), c], and partial[blockIdx.y, K, c] = sum of dxn[t, c] y[t, c]
// (the norm weight's), each over the block's walks' positions: a thread sums its walks (in
// position order, then its next walk gridDim.y * kWalksY further), then the block its threads in
// threadIdx.y order. Deterministic.
template <class A, int V, int KT, bool kExact>
__global__ void __launch_bounds__(32 * kWalksY) conv_bwd_walk_kernel(ConvArgs<A> a, const A* dy,
                                                                     A* dxn, float* partial,
                                                                     Walks walks) {
  __shared__ float red[kWalksY][32 * V];
  const WalkChannels<A, V, KT, kExact> ch(a);
  const int64_t C = a.M * a.d;
  const int dil = static_cast<int>(a.dilation), seq = static_cast<int>(a.seq);
  const int K = ch.K, steps = kWalkLen + KT - 1;
  float acc[KT][V];  // by ring slot: slot i is tap i - (KT - K)
  float accn[V];     // the norm weight's
#pragma unroll
  for (int e = 0; e < V; ++e) accn[e] = 0.0f;
#pragma unroll
  for (int i = 0; i < KT; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[i][e] = 0.0f;
  for (int64_t w = static_cast<int64_t>(blockIdx.y) * kWalksY + threadIdx.y;
       ch.live && w < walks.count; w += static_cast<int64_t>(gridDim.y) * kWalksY) {
    const int64_t b = w / (walks.chunks * dil), chunk = w / dil % walks.chunks;
    const int64_t row0 = b * a.seq;
    const int first = static_cast<int>(chunk * dil * kWalkLen + w % dil);
    float y[KT][V], du[KT][V];  // du slot q: du at s + dil q, s = t - dil (KT-1)
    ring_fill<A, V, KT, kExact>(a, ch, row0, first, y);
#pragma unroll
    for (int i = 0; i < KT; ++i)
#pragma unroll
      for (int e = 0; e < V; ++e) du[i][e] = 0.0f;
    int t = first;
    for (int k = 0; k < steps; ++k, t += dil) {
      const int s = t - dil * (KT - 1);  // the position whose dxn this step completes
      if (s >= seq) break;
      float yy[V] = {}, gg[V] = {};
      if (t < seq) {
        WalkIn<V> in;
        float vt[V], uu[V];
        ch.fetch(a, row0 + t, in);
        ldv<V>(dy + (row0 + t) * C + ch.c, gg);
        ch.values(in, vt, yy);
        ring_push<KT, V>(y, yy);
        ch.conv(y, uu);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float sg = fast_sigmoid(uu[e]);
          gg[e] *= sg * (1.0f + uu[e] * (1.0f - sg));
        }
        if (k < kWalkLen) {
#pragma unroll
          for (int i = 0; i < KT; ++i)
#pragma unroll
            for (int e = 0; e < V; ++e) acc[i][e] += gg[e] * y[i][e];
        }
      } else {
        ring_push<KT, V>(y, yy);
      }
      ring_push<KT, V>(du, gg);
      if (s >= first) {
        // dxn[s] = sum_q wr[q] du-slot[q] (the taps j = K-1-q in descending order); y slot 0 is
        // y at s.
        float o[V] = {};
#pragma unroll
        for (int q = 0; q < KT; ++q) {
          if (q >= K) break;
#pragma unroll
          for (int e = 0; e < V; ++e) o[e] += ch.wr[q][e] * du[q][e];
        }
        stv<V>(dxn + (row0 + s) * C + ch.c, o);
#pragma unroll
        for (int e = 0; e < V; ++e) accn[e] += o[e] * y[0][e];
      }
    }
  }
  // partial[blockIdx.y, j, c]: the kWalksY walk threads' sums in threadIdx.y order, one tap (then
  // the norm weight) at a time.
  float* p = partial + static_cast<int64_t>(blockIdx.y) * (K + 1) * C + ch.c;
#pragma unroll
  for (int i = 0; i <= KT; ++i) {
    if (i < KT - K) continue;
#pragma unroll
    for (int e = 0; e < V; ++e)
      red[threadIdx.y][threadIdx.x * V + e] = i < KT ? acc[i][e] * ch.norm_w[e] : accn[e];
    __syncthreads();
    if (threadIdx.y == 0 && ch.live) {
      float sum[V] = {};
      for (int yy = 0; yy < kWalksY; ++yy)
#pragma unroll
        for (int e = 0; e < V; ++e) sum[e] += red[yy][threadIdx.x * V + e];
      stv<V>(p + static_cast<int64_t>(i - (KT - K)) * C, sum);
    }
    __syncthreads();
  }
}

// d_conv_w[c, j] += sum over chunks (in order) of partial[chunk, j, c] for j < K, and
// d_norm_w[c] += that of partial[chunk, K, c].
__global__ void conv_wgrad_finish(const float* partial, int64_t chunks, int64_t C, int64_t K,
                                  float* d_conv_w, float* d_norm_w) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= C * (K + 1)) return;
  const int64_t c = o / (K + 1), j = o - c * (K + 1);
  float s = 0.0f;
  for (int64_t ch = 0; ch < chunks; ++ch) s += partial[(ch * (K + 1) + j) * C + c];
  if (j < K) {
    d_conv_w[c * K + j] += s;
  } else {
    d_norm_w[c] += s;
  }
}

// Row kernels run 4 values per thread when every row start is 16-byte (float) or 8-byte (bf16)
// aligned: d % 4 == 0 with cudaMalloc'd (256-byte aligned) bases.
bool vec4(int64_t d) { return d % 4 == 0; }

// The walk kernels' grid: x covers the channels (32 groups of V a block), y the walks (kWalksY a
// block), at most max_y blocks (blocks then take further walks, gridDim.y apart).
dim3 walk_grid(int64_t C, int V, const Walks& w, int64_t max_y) {
  return dim3(static_cast<unsigned>((C / V + 31) / 32),
              static_cast<unsigned>(std::max<int64_t>(
                  1, std::min<int64_t>((w.count + kWalksY - 1) / kWalksY, max_y))));
}

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
  const auto blocks = static_cast<unsigned>((a.tokens + kGateTokens - 1) / kGateTokens);
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

// Runs F<V, KT, kExact> for the conv's shape: V = 4 when d % 4 == 0, KT = 4 or 8, kExact when
// the kernel has exactly KT taps.
template <class F>
void dispatch_walk(int64_t d, int64_t kernel, const F& f) {
  const bool v4 = vec4(d);
  if (kernel == 4) {
    v4 ? f.template operator()<4, 4, true>() : f.template operator()<1, 4, true>();
  } else if (kernel < 4) {
    v4 ? f.template operator()<4, 4, false>() : f.template operator()<1, 4, false>();
  } else if (kernel == kMaxTaps) {
    v4 ? f.template operator()<4, kMaxTaps, true>() : f.template operator()<1, kMaxTaps, true>();
  } else {
    v4 ? f.template operator()<4, kMaxTaps, false>() : f.template operator()<1, kMaxTaps, false>();
  }
}

template <class A>
struct FwdWalkLaunch {
  const ConvArgs<A>& a;
  A* out;
  Walks w;
  template <int V, int KT, bool kExact>
  void operator()() const {
    conv_fwd_walk_kernel<A, V, KT, kExact>
        <<<walk_grid(a.M * a.d, V, w, 65535), dim3(32, kWalksY)>>>(a, out, w);
  }
};

template <class A>
struct BwdWalkLaunch {
  const ConvArgs<A>& a;
  const A* dy;
  A* dxn;
  float* partial;
  Walks w;
  unsigned* chunks;
  template <int V, int KT, bool kExact>
  void operator()() const {
    const dim3 grid = walk_grid(a.M * a.d, V, w, kMaxConvChunks);
    *chunks = grid.y;
    conv_bwd_walk_kernel<A, V, KT, kExact><<<grid, dim3(32, kWalksY)>>>(a, dy, dxn, partial, w);
  }
};

template <class A>
void launch_conv_forward(const ConvArgs<A>& a, A* out) {
  if (a.batch * a.seq * a.M * a.d == 0) return;
  dispatch_walk(a.d, a.kernel, FwdWalkLaunch<A>{a, out, walks_of(a.batch, a.seq, a.dilation)});
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class A>
void launch_conv_backward(const ConvArgs<A>& a, const A* dy, A* dxn, float* d_conv_w,
                          float* d_norm_w, float* partial, PhaseHook hook) {
  const auto phase = [&](const char* name) {
    if (hook.fn != nullptr) hook.fn(hook.ctx, name);
  };
  const int64_t tokens = a.batch * a.seq, C = a.M * a.d, K = a.kernel;
  if (tokens * C == 0) return;
  unsigned chunks = 1;
  dispatch_walk(a.d, a.kernel, BwdWalkLaunch<A>{a, dy, dxn, partial,
                                                walks_of(a.batch, a.seq, a.dilation), &chunks});
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  conv_wgrad_finish<<<blocks_for(C * (K + 1)), kThreads>>>(partial, chunks, C, K, d_conv_w,
                                                           d_norm_w);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  phase("bwd: conv du, dxn, weight grads");
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


#define ENGRAM_INSTANTIATE(A)                                                                  \
  template void launch_gate_forward<A>(const GateArgs<A>&, void*);                                 \
  template void launch_gate_backward<A>(const GateBwdArgs<A>&);                                \
  template void launch_conv_forward<A>(const ConvArgs<A>&, A*);                                \
  template void launch_conv_backward<A>(const ConvArgs<A>&, const A*, A*, float*, float*,      \
                                        float*, PhaseHook);                                    \
  template void launch_bias_grad<A>(float*, const A*, int64_t, int64_t, float*);               \
  template void launch_conv_ring_store<A>(const ConvStepArgs<A>&, void*);                      \
  template void launch_conv_step<A>(const ConvStepArgs<A>&, A*, void*);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(bf16)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::cuda::detail
