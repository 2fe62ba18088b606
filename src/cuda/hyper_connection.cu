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
#include "cuda/reduce.h"

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
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 6:
      f(std::integral_constant<int, 6>{});
      break;
    case 7:
      f(std::integral_constant<int, 7>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
      break;
  }
}

__device__ __forceinline__ float sigmoidf(float v) {
  return 1.0f / (1.0f + expf(-v));
}

// Which α scales coefficient j: 0 pre, 1 post, 2 res.
__device__ __forceinline__ int alpha_slot(int j, int n) {
  return j < n ? 0 : (j < 2 * n ? 1 : 2);
}

// warp_sum, block_sum (here over blocks of kThreads): src/cuda/reduce.h.

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

// ---- Sinkhorn: a warp holds 32 / n tokens, lane l of a token's group owning line l ----------
//
// The CPU's loops, line by line (a row or a column), with each line's sums in the CPU's element
// order. A token's matrices live in shared memory; __syncwarp orders the steps.

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
__device__ __forceinline__ bool step_normalises_columns(int s) {
  return s % 2 == 1;
}

// Where token t's logits (n, n) are: element i = src[t * stride + i], times *scale plus bias[i]
// when scale is set (the coefficients' a = m α[2] + b, the same float operations as the kernels
// computing pre and post).
struct LogitSource {
  const float* src;
  int64_t stride;
  const float* scale;
  const float* bias;
};

// Where token t's logit gradient (n, n) goes: dst[t * stride + i], added or assigned.
struct LogitGrad {
  float* dst;
  int64_t stride;
  bool accumulate;
};

// This lane's token and line: groups of n lanes, one token each.
struct SinkhornLane {
  int group, line;
  int64_t token;
  bool active;
};

__device__ SinkhornLane sinkhorn_lane(int64_t tokens, int n) {
  const int lane = static_cast<int>(threadIdx.x);
  const int groups = kWarp / n;
  SinkhornLane s;
  s.group = lane / n;
  s.line = lane % n;
  s.token = static_cast<int64_t>(blockIdx.x) * groups + s.group;
  s.active = s.group < groups && s.token < tokens;
  return s;
}

// Row `line` of the token's logits into shared memory.
__device__ void load_logits(float* logits, const LogitSource& src, const SinkhornLane& s, int n) {
  const float* v = src.src + s.token * src.stride;
  for (int e = 0; e < n; ++e) {
    const int i = s.line * n + e;
    logits[i] = src.scale != nullptr ? v[i] * src.scale[0] + src.bias[i] : v[i];
  }
}

// Shared floats per token: logits and M (forward); logits, g and every state (backward).
constexpr int kSinkhornStates = kSinkhornSteps + 1;
__host__ __device__ constexpr int sinkhorn_forward_floats(int n) {
  return 2 * n * n;
}
__host__ __device__ constexpr int sinkhorn_backward_floats(int n) {
  return (2 + kSinkhornStates) * n * n;
}

// comb (N, n, n). One warp per block; dynamic shared memory: 32/n tokens × forward floats.
__global__ void __launch_bounds__(kWarp)
    sinkhorn_forward_kernel(float* comb, LogitSource src, int64_t tokens, int n) {
  extern __shared__ float smem[];
  const SinkhornLane s = sinkhorn_lane(tokens, n);
  const int nn = n * n;
  float* logits = smem + s.group * sinkhorn_forward_floats(n);
  float* m = logits + nn;
  if (s.active) load_logits(logits, src, s, n);
  __syncwarp();
  if (s.active) softmax_row(m, logits, n, s.line, true);
  __syncwarp();
  for (int step = 1; step <= kSinkhornSteps; ++step) {
    if (s.active) normalise_line(m, m, n, step_normalises_columns(step), s.line);
    __syncwarp();
  }
  if (s.active) {
    for (int e = 0; e < n; ++e) comb[s.token * nn + s.line * n + e] = m[s.line * n + e];
  }
}

// The Sinkhorn backward from dcomb (N, n, n), every state recomputed from the logits.
__global__ void __launch_bounds__(kWarp)
    sinkhorn_backward_kernel(LogitGrad out, const float* dcomb, LogitSource src, int64_t tokens,
                             int n) {
  extern __shared__ float smem[];
  const SinkhornLane s = sinkhorn_lane(tokens, n);
  const int nn = n * n, l = s.line;
  float* logits = smem + s.group * sinkhorn_backward_floats(n);
  float* g = logits + nn;
  float* states = g + nn;  // (kSinkhornStates, n, n)
  if (s.active) {
    load_logits(logits, src, s, n);
    for (int e = 0; e < n; ++e) g[l * n + e] = dcomb[s.token * nn + l * n + e];
  }
  __syncwarp();
  if (s.active) softmax_row(states, logits, n, l, true);
  __syncwarp();
  for (int step = 1; step <= kSinkhornSteps; ++step) {
    if (s.active) {
      normalise_line(states + step * nn, states + (step - 1) * nn, n, step_normalises_columns(step),
                     l);
    }
    __syncwarp();
  }
  for (int step = kSinkhornSteps; step >= 1; --step) {
    if (s.active) {
      normalise_line_backward(g, states + (step - 1) * nn, n, step_normalises_columns(step), l);
    }
    __syncwarp();
  }
  // M0 = P + eps with P the row softmax: dlogits_ij = P_ij (g_ij - Σ_k g_ik P_ik). P goes into
  // state 1's slot (no longer read); each lane touches only its own row.
  if (s.active) {
    float* p = states + nn;
    softmax_row(p, logits, n, l, false);
    float dot = 0.0f;
    for (int j = 0; j < n; ++j) dot += g[l * n + j] * p[l * n + j];
    float* d = out.dst + s.token * out.stride + l * n;
    for (int j = 0; j < n; ++j) {
      const float v = p[l * n + j] * (g[l * n + j] - dot);
      d[j] = out.accumulate ? d[j] + v : v;
    }
  }
}

void launch_sinkhorn_forward(float* comb, const LogitSource& src, int64_t tokens, int64_t n,
                             cudaStream_t stream) {
  const int groups = kWarp / static_cast<int>(n);
  const auto shared =
      static_cast<size_t>(groups * sinkhorn_forward_floats(static_cast<int>(n))) * sizeof(float);
  sinkhorn_forward_kernel<<<static_cast<unsigned>((tokens + groups - 1) / groups), kWarp, shared,
                            stream>>>(comb, src, tokens, static_cast<int>(n));
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_sinkhorn_backward(const LogitGrad& out, const float* dcomb, const LogitSource& src,
                              int64_t tokens, int64_t n, cudaStream_t stream) {
  const int groups = kWarp / static_cast<int>(n);
  const auto shared =
      static_cast<size_t>(groups * sinkhorn_backward_floats(static_cast<int>(n))) * sizeof(float);
  sinkhorn_backward_kernel<<<static_cast<unsigned>((tokens + groups - 1) / groups), kWarp, shared,
                             stream>>>(out, dcomb, src, tokens, static_cast<int>(n));
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

// ---- Coefficients ---------------------------------------------------------------------------

// One block per token: r from the token's D = n·C values, m = r · proj (in place),
// a = m α_slot + b, pre and post. The Sinkhorn follows in its own kernel.
__global__ void __launch_bounds__(kThreads)
    coefficients_forward_kernel(float* pre, float* post, float* proj, float* rstd, const float* x,
                                const float* b, const float* alpha, int n, int64_t c) {
  __shared__ float scratch[kWarp];
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
    if (j < n) {
      pre[t * n + j] = sigmoidf(mj * alpha[0] + b[j]) + kPreEps;
    } else if (j < 2 * n) {
      post[t * n + (j - n)] = 2.0f * sigmoidf(mj * alpha[1] + b[j]);
    }
  }
}

// One block per token, after the Sinkhorn backward has written da[t, 2n:]: da[t, :2n] from the
// sigmoids, then the RMS projection's backward for this token, as the CPU's
// rms_projection_backward: dp = α_slot da r, dx -= coef v.
__global__ void __launch_bounds__(kThreads)
    coefficients_backward_kernel(float* da, float* dp, float* dx, const float* dpre,
                                 const float* dpost, const float* x, const float* proj,
                                 const float* rstd, const float* b, const float* alpha, int n,
                                 int64_t c) {
  __shared__ float m_s[kMaxK], g_s[kMaxK];
  __shared__ float coef_s;
  const int64_t t = blockIdx.x;
  const int k = n * n + 2 * n;
  const int64_t d = n * c;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const float mj = proj[t * k + j];
    float g;
    if (j < n) {
      const float sp = sigmoidf(mj * alpha[0] + b[j]);
      g = dpre[t * n + j] * sp * (1.0f - sp);
      da[t * k + j] = g;
    } else if (j < 2 * n) {
      const float sq = sigmoidf(mj * alpha[1] + b[j]);
      g = dpost[t * n + (j - n)] * 2.0f * sq * (1.0f - sq);
      da[t * k + j] = g;
    } else {
      g = da[t * k + j];
    }
    m_s[j] = mj;
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

constexpr int kFinalThreads = 256;

// One block per coefficient j: thread i sums chunks i, i + 256, ... in order, then a fixed tree
// over the threads. db[j] += the bias sum; col_a[j] = the α product sum.
__global__ void __launch_bounds__(kFinalThreads)
    bias_alpha_final_kernel(float* db, double* col_a, const double* partial_b,
                            const double* partial_a, int k, int64_t chunks) {
  __shared__ double sb_s[kFinalThreads], sa_s[kFinalThreads];
  const int j = static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  double sb = 0.0, sa = 0.0;
  for (int64_t ch = tid; ch < chunks; ch += kFinalThreads) {
    sb += partial_b[ch * k + j];
    sa += partial_a[ch * k + j];
  }
  sb_s[tid] = sb;
  sa_s[tid] = sa;
  __syncthreads();
  for (int o = kFinalThreads / 2; o > 0; o /= 2) {
    if (tid < o) {
      sb_s[tid] += sb_s[tid + o];
      sa_s[tid] += sa_s[tid + o];
    }
    __syncthreads();
  }
  if (tid == 0) {
    db[j] += static_cast<float>(sb_s[0]);
    col_a[j] = sa_s[0];
  }
}

// One thread: the α slots, summing j in order.
__global__ void alpha_final_kernel(float* dalpha, const double* col_a, int k, int n) {
  double s[3] = {0.0, 0.0, 0.0};
  for (int j = 0; j < k; ++j) s[alpha_slot(j, n)] += col_a[j];
  const int slots = alpha_slot(k - 1, n) + 1;
  for (int i = 0; i < slots; ++i) dalpha[i] += static_cast<float>(s[i]);
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

// x_out[t, k, e] = post[t, k] f[t, e] + Σ_j comb[t, j, k] x[t, j, e], over a grid of (t, e):
// each thread reads the token's n stream values at e once and writes all n outputs.
template <int N>
__global__ void write_back_forward_kernel(float* x_out, const float* f, const float* x,
                                          const float* post, const float* comb, int64_t tokens,
                                          int64_t c) {
  const int64_t size = tokens * c;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < size;
       idx += stride) {
    const int64_t t = idx / c, e = idx - t * c;
    const float fe = f[idx];
    float xj[N];
#pragma unroll
    for (int j = 0; j < N; ++j) xj[j] = x[(t * N + j) * c + e];
    const float* ct = comb + t * N * N;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      float acc = post[t * N + k] * fe;
#pragma unroll
      for (int j = 0; j < N; ++j) acc += ct[j * N + k] * xj[j];
      x_out[(t * N + k) * c + e] = acc;
    }
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
    head_readout_backward_kernel(float* da, float* dp, float* dx, const float* dy, const float* x,
                                 const float* pre, const float* proj, const float* rstd,
                                 const float* b_h, const float* alpha_h, int64_t c) {
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
  launch_sinkhorn_forward(comb, LogitSource{logits, n * n, nullptr, nullptr}, tokens, n,
                          static_cast<cudaStream_t>(stream));
}

void launch_hc_sinkhorn_backward(float* dlogits, const float* dcomb, const float* logits,
                                 int64_t tokens, int64_t n, void* stream) {
  launch_sinkhorn_backward(LogitGrad{dlogits, n * n, true}, dcomb,
                           LogitSource{logits, n * n, nullptr, nullptr}, tokens, n,
                           static_cast<cudaStream_t>(stream));
}

void launch_hc_coefficients_forward(float* pre, float* post, float* comb, float* proj, float* rstd,
                                    const float* x, const float* b, const float* alpha,
                                    int64_t tokens, int64_t n, int64_t c, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t k = n * n + 2 * n;
  coefficients_forward_kernel<<<static_cast<unsigned>(tokens), kThreads, 0, s>>>(
      pre, post, proj, rstd, x, b, alpha, static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  // The comb logits a[2n:] = m[2n:] α[2] + b[2n:], from the scaled proj.
  launch_sinkhorn_forward(comb, LogitSource{proj + 2 * n, k, alpha + 2, b + 2 * n}, tokens, n, s);
}

void launch_hc_coefficients_backward_tokens(float* da, float* dp, float* dx, const float* dpre,
                                            const float* dpost, const float* dcomb, const float* x,
                                            const float* proj, const float* rstd, const float* b,
                                            const float* alpha, int64_t tokens, int64_t n,
                                            int64_t c, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t k = n * n + 2 * n;
  launch_sinkhorn_backward(LogitGrad{da + 2 * n, k, false}, dcomb,
                           LogitSource{proj + 2 * n, k, alpha + 2, b + 2 * n}, tokens, n, s);
  coefficients_backward_kernel<<<static_cast<unsigned>(tokens), kThreads, 0, s>>>(
      da, dp, dx, dpre, dpost, x, proj, rstd, b, alpha, static_cast<int>(n), c);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_bias_alpha_grads(float* db, float* dalpha, const float* da, const float* proj,
                                int64_t tokens, int64_t k, int64_t n, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = std::min<int64_t>(tokens, 1024);
  double* partial = nullptr;  // partial_b (chunks, K), partial_a (chunks, K), col_a (K)
  ENGRAM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial),
                                    static_cast<size_t>((2 * chunks + 1) * k) * sizeof(double), s));
  double* partial_a = partial + chunks * k;
  double* col_a = partial_a + chunks * k;
  const int threads =
      static_cast<int>(std::min<int64_t>(kThreads, (k + kWarp - 1) / kWarp * kWarp));
  bias_alpha_partial_kernel<<<static_cast<unsigned>(chunks), threads, 0, s>>>(
      partial, partial_a, da, proj, tokens, static_cast<int>(k), chunks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  bias_alpha_final_kernel<<<static_cast<unsigned>(k), kFinalThreads, 0, s>>>(
      db, col_a, partial, partial_a, static_cast<int>(k), chunks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  alpha_final_kernel<<<1, 1, 0, s>>>(dalpha, col_a, static_cast<int>(k), static_cast<int>(n));
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
    readout_backward_kernel<N>
        <<<static_cast<unsigned>(tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            dx, dpre, dy, x, pre, c);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_write_back_forward(float* x_out, const float* f, const float* x, const float* post,
                                  const float* comb, int64_t tokens, int64_t n, int64_t c,
                                  void* stream) {
  with_streams(n, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    write_back_forward_kernel<N>
        <<<grid_for(tokens * c, kElemThreads), kElemThreads, 0,
           static_cast<cudaStream_t>(stream)>>>(x_out, f, x, post, comb, tokens, c);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_hc_write_back_backward(float* df, float* dx, float* dpost, float* dcomb,
                                   const float* dx_out, const float* f, const float* x,
                                   const float* post, const float* comb, int64_t tokens, int64_t n,
                                   int64_t c, void* stream) {
  with_streams(n, [&](auto nc) {
    constexpr int N = decltype(nc)::value;
    write_back_backward_kernel<N>
        <<<static_cast<unsigned>(tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
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
    head_readout_backward_kernel<N>
        <<<static_cast<unsigned>(tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            da, dp, dx, dy, x, pre, proj, rstd, b_h, alpha_h, c);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace engram::cuda::detail
