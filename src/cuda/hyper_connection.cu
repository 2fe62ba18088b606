// Kernels of the mHC coefficients, read-outs and write-back (include/engram/cuda/
// hyper_connection.h); src/cuda/hyper_connection.cpp checks arguments, runs the GEMMs and calls
// the launchers here. Each kernel follows the float operations of src/nn/hyper_connection.cpp in
// the same order where the work is per token (sigmoid, the Sinkhorn loop, the RMS backward), so
// only the long sums (over n·C values, over tokens) round differently.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/hyper_connection_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 128;  // block-per-token kernels
constexpr int kWarps = kThreads / kWarp;
constexpr int kMaxN = static_cast<int>(kHcMaxStreams);
constexpr int kMaxK = kMaxN * kMaxN + 2 * kMaxN;  // 80
constexpr int kElemThreads = 256;

constexpr float kRmsEps = 1e-6f;
constexpr float kPreEps = 1e-6f;
constexpr float kSinkhornEps = 1e-6f;
// The normalisation steps after the softmax: one column step, then (row, column) 19 times.
constexpr int kSinkhornSteps = 2 * 20 - 1;

unsigned grid_for(int64_t items, int threads, int64_t cap = 65535LL * 32) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((items + threads - 1) / threads, cap)));
}

// Calls f(std::integral_constant<int, n>{}) for n in [1, kMaxN].
template <class F>
void with_streams(int64_t n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

__device__ __forceinline__ float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

// Which α scales coefficient j: 0 pre, 1 post, 2 res.
__device__ __forceinline__ int alpha_slot(int j, int n) { return j < n ? 0 : (j < 2 * n ? 1 : 2); }

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Block-wide sum over a block of kThreads; every thread gets the result. The tree is fixed.
__device__ float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < kWarps ? scratch[lane] : 0.0f;
  return warp_sum(x);
}

// Block-wide sums of vals[0..N) over a block of kThreads: the totals land in out[0..N) (shared),
// visible to every thread on return. red: shared, kWarps * N values. Warp sums, then the warps
// in order.
template <int N>
__device__ __forceinline__ void block_sums(const float (&vals)[N], float* red, float* out) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int v = 0; v < N; ++v) {
    const float s = warp_sum(vals[v]);
    if (lane == 0) red[warp * N + v] = s;
  }
  __syncthreads();
  for (int v = threadIdx.x; v < N; v += blockDim.x) {
    float s = 0.0f;
    for (int w = 0; w < kWarps; ++w) s += red[w * N + v];
    out[v] = s;
  }
  __syncthreads();
}

// ---- Sinkhorn, one warp per token: lane l < n owns line l (a row or a column) ----------------
//
// The CPU's loops, line by line, with each line's sums in the CPU's element order.

// Element e of line l: row l when normalising rows, column l when normalising columns.
__device__ __forceinline__ int line_index(int l, int e, int n, bool columns) {
  return columns ? e * n + l : l * n + e;
}

// Row i of m (n, n) = row softmax of logits (+ eps when add_eps).
__device__ void softmax_row(float* m, const float* logits, int n, int i, bool add_eps) {
  const float* row = logits + i * n;
  float mx = row[0];
  for (int j = 1; j < n; ++j) mx = fmaxf(mx, row[j]);
  float sum = 0.0f;
  for (int j = 0; j < n; ++j) {
    const float e = expf(row[j] - mx);
    m[i * n + j] = e;
    sum += e;
  }
  for (int j = 0; j < n; ++j) {
    const float p = m[i * n + j] / sum;
    m[i * n + j] = add_eps ? p + kSinkhornEps : p;
  }
}

// Line l of out = line l of in / (its sum + eps). out may equal in.
__device__ void normalise_line(float* out, const float* in, int n, bool columns, int l) {
  float sum = 0.0f;
  for (int e = 0; e < n; ++e) sum += in[line_index(l, e, n, columns)];
  const float denom = sum + kSinkhornEps;
  for (int e = 0; e < n; ++e) {
    const int k = line_index(l, e, n, columns);
    out[k] = in[k] / denom;
  }
}

// y_e = x_e / (Σ x + eps):  dx_e = g_e / d - (Σ_f g_f x_f) / d², over line l; overwrites g.
__device__ void normalise_line_backward(float* g, const float* in, int n, bool columns, int l) {
  float sum = 0.0f, dot = 0.0f;
  for (int e = 0; e < n; ++e) {
    const int k = line_index(l, e, n, columns);
    sum += in[k];
    dot += g[k] * in[k];
  }
  const float denom = sum + kSinkhornEps;
  for (int e = 0; e < n; ++e) {
    const int k = line_index(l, e, n, columns);
    g[k] = g[k] / denom - dot / (denom * denom);
  }
}

// Step s (1-based) normalises columns when s is odd, rows when it is even.
__device__ __forceinline__ bool step_normalises_columns(int s) { return s % 2 == 1; }

// Called by all 32 lanes of one warp. comb (n, n) from logits (n, n); m: n·n shared scratch.
__device__ void sinkhorn_forward_warp(float* comb, const float* logits, float* m, int n,
                                      int lane) {
  if (lane < n) softmax_row(m, logits, n, lane, true);
  __syncwarp();
  for (int s = 1; s <= kSinkhornSteps; ++s) {
    if (lane < n) normalise_line(m, m, n, step_normalises_columns(s), lane);
    __syncwarp();
  }
  for (int k = lane; k < n * n; k += kWarp) comb[k] = m[k];
  __syncwarp();
}

// Called by all 32 lanes of one warp. dlogits (n, n) += the backward of dcomb (n, n), every
// state recomputed from the logits. states: (kSinkhornSteps + 1) n·n shared, g: n·n shared.
__device__ void sinkhorn_backward_warp(float* dlogits, const float* dcomb, const float* logits,
                                       float* states, float* g, int n, int lane) {
  const int nn = n * n;
  if (lane < n) softmax_row(states, logits, n, lane, true);
  __syncwarp();
  for (int s = 1; s <= kSinkhornSteps; ++s) {
    if (lane < n) {
      normalise_line(states + s * nn, states + (s - 1) * nn, n, step_normalises_columns(s), lane);
    }
    __syncwarp();
  }
  for (int k = lane; k < nn; k += kWarp) g[k] = dcomb[k];
  __syncwarp();
  for (int s = kSinkhornSteps; s >= 1; --s) {
    if (lane < n) {
      normalise_line_backward(g, states + (s - 1) * nn, n, step_normalises_columns(s), lane);
    }
    __syncwarp();
  }
  // M0 = P + eps with P the row softmax: dlogits_ij += P_ij (g_ij - Σ_k g_ik P_ik). P goes into
  // state 1's slot (no longer read); each lane touches only its own row.
  if (lane < n) {
    const int i = lane;
    float* p = states + nn;
    softmax_row(p, logits, n, i, false);
    float dot = 0.0f;
    for (int j = 0; j < n; ++j) dot += g[i * n + j] * p[i * n + j];
    for (int j = 0; j < n; ++j) dlogits[i * n + j] += p[i * n + j] * (g[i * n + j] - dot);
  }
  __syncwarp();
}

// One warp (block) per token.
__global__ void __launch_bounds__(kWarp)
    sinkhorn_forward_kernel(float* comb, const float* logits, int n) {
  __shared__ float m[kMaxN * kMaxN];
  const int64_t t = blockIdx.x;
  const int64_t nn = n * n;
  sinkhorn_forward_warp(comb + t * nn, logits + t * nn, m, n, static_cast<int>(threadIdx.x));
}

__global__ void __launch_bounds__(kWarp)
    sinkhorn_backward_kernel(float* dlogits, const float* dcomb, const float* logits, int n) {
  __shared__ float states[(kSinkhornSteps + 1) * kMaxN * kMaxN];
  __shared__ float g[kMaxN * kMaxN];
  const int64_t t = blockIdx.x;
  const int64_t nn = n * n;
  sinkhorn_backward_warp(dlogits + t * nn, dcomb + t * nn, logits + t * nn, states, g, n,
                         static_cast<int>(threadIdx.x));
}

// ---- Coefficients ---------------------------------------------------------------------------

// One block per token: r from the token's D = n·C values, m = r · proj, a = m α_slot + b, then
// pre, post, and the Sinkhorn in warp 0.
__global__ void __launch_bounds__(kThreads)
    coefficients_forward_kernel(float* pre, float* post, float* comb, float* proj, float* rstd,
                                const float* x, const float* b, const float* alpha, int n,
                                int64_t c) {
  __shared__ float scratch[kWarp];
  __shared__ float a[kMaxK];
  __shared__ float m[kMaxN * kMaxN];
  const int64_t t = blockIdx.x;
  const int k = n * n + 2 * n;
  const int64_t d = n * c;
  const float* v = x + t * d;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += v[i] * v[i];
  ss = block_sum(ss, scratch);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + kRmsEps);
  if (threadIdx.x == 0) rstd[t] = r;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const float mj = proj[t * k + j] * r;
    proj[t * k + j] = mj;
    const float aj = mj * alpha[alpha_slot(j, n)] + b[j];
    a[j] = aj;
    if (j < n) {
      pre[t * n + j] = sigmoidf(aj) + kPreEps;
    } else if (j < 2 * n) {
      post[t * n + (j - n)] = 2.0f * sigmoidf(aj);
    }
  }
  __syncthreads();
  if (threadIdx.x < kWarp) {
    sinkhorn_forward_warp(comb + t * n * n, a + 2 * n, m, n, static_cast<int>(threadIdx.x));
  }
}

// One block per token: da = dL/da (sigmoid backwards, the Sinkhorn backward in warp 0), then the
// RMS projection's backward for this token, as the CPU's rms_projection_backward.
__global__ void __launch_bounds__(kThreads)
    coefficients_backward_kernel(float* da, float* dp, float* dx, const float* dpre,
                                 const float* dpost, const float* dcomb, const float* x,
                                 const float* proj, const float* rstd, const float* b,
                                 const float* alpha, int n, int64_t c) {
  __shared__ float m_s[kMaxK], a_s[kMaxK], g_s[kMaxK];
  __shared__ float states[(kSinkhornSteps + 1) * kMaxN * kMaxN];
  __shared__ float gm[kMaxN * kMaxN];
  __shared__ float coef_s;
  const int64_t t = blockIdx.x;
  const int k = n * n + 2 * n, nn = n * n;
  const int64_t d = n * c;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const float mj = proj[t * k + j];
    m_s[j] = mj;
    a_s[j] = mj * alpha[alpha_slot(j, n)] + b[j];
    g_s[j] = 0.0f;
  }
  __syncthreads();
  if (threadIdx.x < kWarp) {
    const int lane = static_cast<int>(threadIdx.x);
    if (lane < n) {
      const float sp = sigmoidf(a_s[lane]), sq = sigmoidf(a_s[n + lane]);
      g_s[lane] = dpre[t * n + lane] * sp * (1.0f - sp);
      g_s[n + lane] = dpost[t * n + lane] * 2.0f * sq * (1.0f - sq);
    }
    sinkhorn_backward_warp(g_s + 2 * n, dcomb + t * nn, a_s + 2 * n, states, gm, n, lane);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const float g = g_s[j];
    da[t * k + j] = g;
    g_s[j] = g * alpha[alpha_slot(j, n)];
  }
  __syncthreads();
  const float r = rstd[t];
  if (threadIdx.x == 0) {
    float dr = 0.0f;
    for (int j = 0; j < k; ++j) dr += g_s[j] * m_s[j];
    dr /= r;  // m = r p, so Σ dm p = Σ dm m / r
    coef_s = dr * r * r * r / static_cast<float>(d);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < k; j += blockDim.x) dp[t * k + j] = g_s[j] * r;
  const float coef = coef_s;
  const float* v = x + t * d;
  float* dv = dx + t * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dv[i] -= coef * v[i];
}

// partial_b[chunk, j] = Σ da[t, j], partial_a[chunk, j] = Σ da[t, j] proj[t, j] over the chunk's
// tokens in order, in double.
__global__ void __launch_bounds__(kThreads)
    bias_alpha_partial_kernel(double* partial_b, double* partial_a, const float* da,
                              const float* proj, int64_t tokens, int k, int64_t chunks) {
  const int64_t chunk = blockIdx.x;
  const int64_t begin = tokens * chunk / chunks, end = tokens * (chunk + 1) / chunks;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    double sb = 0.0, sa = 0.0;
    for (int64_t t = begin; t < end; ++t) {
      const float g = da[t * k + j];
      sb += static_cast<double>(g);
      sa += static_cast<double>(g * proj[t * k + j]);
    }
    partial_b[chunk * k + j] = sb;
    partial_a[chunk * k + j] = sa;
  }
}

// One block: the chunks in order, then the α slots over j in order.
__global__ void __launch_bounds__(kThreads)
    bias_alpha_final_kernel(float* db, float* dalpha, const double* partial_b,
                            const double* partial_a, int k, int n, int64_t chunks) {
  __shared__ double sa_s[kMaxK];
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    double sb = 0.0, sa = 0.0;
    for (int64_t ch = 0; ch < chunks; ++ch) {
      sb += partial_b[ch * k + j];
      sa += partial_a[ch * k + j];
    }
    db[j] += static_cast<float>(sb);
    sa_s[j] = sa;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double s[3] = {0.0, 0.0, 0.0};
    for (int j = 0; j < k; ++j) s[alpha_slot(j, n)] += sa_s[j];
    const int slots = alpha_slot(k - 1, n) + 1;
    for (int i = 0; i < slots; ++i) dalpha[i] += static_cast<float>(s[i]);
  }
}

// ---- Read-out and write-back ----------------------------------------------------------------

// y[t, e] = Σ_i pre[t, i] x[t, i, e], over a grid of (t, e).
__global__ void readout_forward_kernel(float* y, const float* x, const float* pre, int64_t tokens,
                                       int n, int64_t c) {
  const int64_t size = tokens * c;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < size;
       idx += stride) {
    const int64_t t = idx / c, e = idx % c;
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc += pre[t * n + i] * x[(t * n + i) * c + e];
    y[idx] = acc;
  }
}

// One block per token: dx[t, i, :] += pre_i dy[t, :], dpre[t, i] += Σ_e dy x_i.
template <int N>
__global__ void __launch_bounds__(kThreads)
    readout_backward_kernel(float* dx, float* dpre, const float* dy, const float* x,
                            const float* pre, int64_t c) {
  __shared__ float red[kWarps * N];
  __shared__ float tot[N];
  const int64_t t = blockIdx.x;
  float w[N], dot[N];
#pragma unroll
  for (int i = 0; i < N; ++i) {
    w[i] = pre[t * N + i];
    dot[i] = 0.0f;
  }
  for (int64_t e = threadIdx.x; e < c; e += blockDim.x) {
    const float g = dy[t * c + e];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int64_t idx = (t * N + i) * c + e;
      dot[i] += g * x[idx];
      dx[idx] += w[i] * g;
    }
  }
  block_sums<N>(dot, red, tot);
  if (threadIdx.x < N) dpre[t * N + threadIdx.x] += tot[threadIdx.x];
}

// x_out[t, k, e] = post[t, k] f[t, e] + Σ_j comb[t, j, k] x[t, j, e], over a grid of (t, k, e).
__global__ void write_back_forward_kernel(float* x_out, const float* f, const float* x,
                                          const float* post, const float* comb, int64_t tokens,
                                          int n, int64_t c) {
  const int64_t size = tokens * n * c;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < size;
       idx += stride) {
    const int64_t e = idx % c, tk = idx / c;
    const int64_t t = tk / n, k = tk % n;
    float acc = post[tk] * f[t * c + e];
    const float* ct = comb + t * n * n;
    for (int j = 0; j < n; ++j) acc += ct[j * n + k] * x[(t * n + j) * c + e];
    x_out[idx] = acc;
  }
}

// One block per token. Per element e, in the CPU's order over k: df += post_k g_k,
// dx_j += comb[j,k] g_k; and the sums dpost[k] = Σ_e g_k f, dcomb[j,k] = Σ_e g_k x_j.
template <int N>
__global__ void __launch_bounds__(kThreads)
    write_back_backward_kernel(float* df, float* dx, float* dpost, float* dcomb,
                               const float* dx_out, const float* f, const float* x,
                               const float* post, const float* comb, int64_t c) {
  constexpr int kSums = N + N * N;  // dpost (N), then dcomb (N, N) row-major
  __shared__ float red[kWarps * kSums];
  __shared__ float tot[kSums];
  __shared__ float p[N], w[N * N];  // post (N), comb (N, N) of this token
  const int64_t t = blockIdx.x;
  for (int k = static_cast<int>(threadIdx.x); k < N; k += blockDim.x) p[k] = post[t * N + k];
  for (int jk = static_cast<int>(threadIdx.x); jk < N * N; jk += blockDim.x) {
    w[jk] = comb[t * N * N + jk];
  }
  __syncthreads();
  float acc[kSums];
#pragma unroll
  for (int v = 0; v < kSums; ++v) acc[v] = 0.0f;
  for (int64_t e = threadIdx.x; e < c; e += blockDim.x) {
    const float fe = f[t * c + e];
    float dfe = df[t * c + e];
    float xj[N], dxj[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      xj[j] = x[(t * N + j) * c + e];
      dxj[j] = dx[(t * N + j) * c + e];
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float g = dx_out[(t * N + k) * c + e];
      acc[k] += g * fe;
      dfe += p[k] * g;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        acc[N + j * N + k] += g * xj[j];
        dxj[j] += w[j * N + k] * g;
      }
    }
    df[t * c + e] = dfe;
#pragma unroll
    for (int j = 0; j < N; ++j) dx[(t * N + j) * c + e] = dxj[j];
  }
  block_sums<kSums>(acc, red, tot);
  for (int v = threadIdx.x; v < kSums; v += blockDim.x) {
    if (v < N) {
      dpost[t * N + v] += tot[v];
    } else {
      dcomb[t * N * N + (v - N)] += tot[v];
    }
  }
}

// ---- Head read-out --------------------------------------------------------------------------

// One block per token: r, m = r proj, pre = sigmoid(m α_h + b_h) + eps, y = Σ_i pre_i X_i.
__global__ void __launch_bounds__(kThreads)
    head_readout_forward_kernel(float* y, float* pre, float* proj, float* rstd, const float* x,
                                const float* b_h, const float* alpha_h, int n, int64_t c) {
  __shared__ float scratch[kWarp];
  __shared__ float pre_s[kMaxN];
  const int64_t t = blockIdx.x;
  const int64_t d = n * c;
  const float* v = x + t * d;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += v[i] * v[i];
  ss = block_sum(ss, scratch);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + kRmsEps);
  if (threadIdx.x == 0) rstd[t] = r;
  if (threadIdx.x < n) {
    const int i = static_cast<int>(threadIdx.x);
    const float m = proj[t * n + i] * r;
    proj[t * n + i] = m;
    const float pv = sigmoidf(m * alpha_h[0] + b_h[i]) + kPreEps;
    pre[t * n + i] = pv;
    pre_s[i] = pv;
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < c; e += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc += pre_s[i] * v[i * c + e];
    y[t * c + e] = acc;
  }
}

// One block per token: dL/dpre = Σ_e dy x_i, then the sigmoid's and the RMS projection's
// backward as the CPU's hc_head_readout_backward; dx += pre_i dy - coef v.
template <int N>
__global__ void __launch_bounds__(kThreads)
    head_readout_backward_kernel(float* da, float* dp, float* dx, const float* dy,
                                 const float* x, const float* pre, const float* proj,
                                 const float* rstd, const float* b_h, const float* alpha_h,
                                 int64_t c) {
  __shared__ float red[kWarps * N];
  __shared__ float tot[N];
  __shared__ float coef_s;
  const int64_t t = blockIdx.x;
  const int64_t d = N * c;
  float dot[N];
#pragma unroll
  for (int i = 0; i < N; ++i) dot[i] = 0.0f;
  for (int64_t e = threadIdx.x; e < c; e += blockDim.x) {
    const float g = dy[t * c + e];
#pragma unroll
    for (int i = 0; i < N; ++i) dot[i] += g * x[(t * N + i) * c + e];
  }
  block_sums<N>(dot, red, tot);
  if (threadIdx.x == 0) {
    const float r = rstd[t], al = alpha_h[0];
    float dr = 0.0f;
    for (int i = 0; i < N; ++i) {
      const float m = proj[t * N + i];
      const float s = sigmoidf(m * al + b_h[i]);
      float g = tot[i];
      g *= s * (1.0f - s);
      da[t * N + i] = g;
      g *= al;
      dr += g * m;
      dp[t * N + i] = g * r;
    }
    dr /= r;
    coef_s = dr * r * r * r / static_cast<float>(d);
  }
  __syncthreads();
  const float coef = coef_s;
  float w[N];
#pragma unroll
  for (int i = 0; i < N; ++i) w[i] = pre[t * N + i];
  for (int64_t e = threadIdx.x; e < c; e += blockDim.x) {
    const float g = dy[t * c + e];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int64_t idx = (t * N + i) * c + e;
      const float acc = dx[idx] + w[i] * g;
      dx[idx] = acc - coef * x[idx];
    }
  }
}

}  // namespace

void launch_hc_sinkhorn_forward(float* comb, const float* logits, int64_t tokens, int64_t n,
                                void* stream) {
  sinkhorn_forward_kernel<<<static_cast<unsigned>(tokens), kWarp, 0,
                            static_cast<cudaStream_t>(stream)>>>(comb, logits,
                                                                 static_cast<int>(n));
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_sinkhorn_backward(float* dlogits, const float* dcomb, const float* logits,
                                 int64_t tokens, int64_t n, void* stream) {
  sinkhorn_backward_kernel<<<static_cast<unsigned>(tokens), kWarp, 0,
                             static_cast<cudaStream_t>(stream)>>>(dlogits, dcomb, logits,
                                                                  static_cast<int>(n));
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_coefficients_forward(float* pre, float* post, float* comb, float* proj,
                                    float* rstd, const float* x, const float* b,
                                    const float* alpha, int64_t tokens, int64_t n, int64_t c,
                                    void* stream) {
  coefficients_forward_kernel<<<static_cast<unsigned>(tokens), kThreads, 0,
                                static_cast<cudaStream_t>(stream)>>>(
      pre, post, comb, proj, rstd, x, b, alpha, static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_coefficients_backward_tokens(float* da, float* dp, float* dx, const float* dpre,
                                            const float* dpost, const float* dcomb,
                                            const float* x, const float* proj, const float* rstd,
                                            const float* b, const float* alpha, int64_t tokens,
                                            int64_t n, int64_t c, void* stream) {
  coefficients_backward_kernel<<<static_cast<unsigned>(tokens), kThreads, 0,
                                 static_cast<cudaStream_t>(stream)>>>(
      da, dp, dx, dpre, dpost, dcomb, x, proj, rstd, b, alpha, static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_bias_alpha_grads(float* db, float* dalpha, const float* da, const float* proj,
                                int64_t tokens, int64_t k, int64_t n, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = std::min<int64_t>(tokens, 256);
  double* partial = nullptr;
  ENGRAM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial),
                                    static_cast<size_t>(2 * chunks * k) * sizeof(double), s));
  bias_alpha_partial_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, s>>>(
      partial, partial + chunks * k, da, proj, tokens, static_cast<int>(k), chunks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  bias_alpha_final_kernel<<<1, kThreads, 0, s>>>(db, dalpha, partial, partial + chunks * k,
                                                 static_cast<int>(k), static_cast<int>(n),
                                                 chunks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  ENGRAM_CUDA_CHECK(cudaFreeAsync(partial, s));
}

void launch_hc_readout_forward(float* y, const float* x, const float* pre, int64_t tokens,
                               int64_t n, int64_t c, void* stream) {
  readout_forward_kernel<<<grid_for(tokens * c, kElemThreads), kElemThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(y, x, pre, tokens,
                                                                static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_readout_backward(float* dx, float* dpre, const float* dy, const float* x,
                                const float* pre, int64_t tokens, int64_t n, int64_t c,
                                void* stream) {
  with_streams(n, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    readout_backward_kernel<N><<<static_cast<unsigned>(tokens), kThreads, 0,
                                 static_cast<cudaStream_t>(stream)>>>(dx, dpre, dy, x, pre, c);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_write_back_forward(float* x_out, const float* f, const float* x, const float* post,
                                  const float* comb, int64_t tokens, int64_t n, int64_t c,
                                  void* stream) {
  write_back_forward_kernel<<<grid_for(tokens * n * c, kElemThreads), kElemThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(x_out, f, x, post, comb, tokens,
                                                                   static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_write_back_backward(float* df, float* dx, float* dpost, float* dcomb,
                                   const float* dx_out, const float* f, const float* x,
                                   const float* post, const float* comb, int64_t tokens, int64_t n,
                                   int64_t c, void* stream) {
  with_streams(n, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    write_back_backward_kernel<N><<<static_cast<unsigned>(tokens), kThreads, 0,
                                    static_cast<cudaStream_t>(stream)>>>(
        df, dx, dpost, dcomb, dx_out, f, x, post, comb, c);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_head_readout_forward(float* y, float* pre, float* proj, float* rstd, const float* x,
                                    const float* b_h, const float* alpha_h, int64_t tokens,
                                    int64_t n, int64_t c, void* stream) {
  head_readout_forward_kernel<<<static_cast<unsigned>(tokens), kThreads, 0,
                                static_cast<cudaStream_t>(stream)>>>(
      y, pre, proj, rstd, x, b_h, alpha_h, static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_head_readout_backward_tokens(float* da, float* dp, float* dx, const float* dy,
                                            const float* x, const float* pre, const float* proj,
                                            const float* rstd, const float* b_h,
                                            const float* alpha_h, int64_t tokens, int64_t n,
                                            int64_t c, void* stream) {
  with_streams(n, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    head_readout_backward_kernel<N><<<static_cast<unsigned>(tokens), kThreads, 0,
                                      static_cast<cudaStream_t>(stream)>>>(
        da, dp, dx, dy, x, pre, proj, rstd, b_h, alpha_h, c);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace engram::cuda::detail
