// The Engram layer's kernels (src/cuda/engram_layer_kernel.h); the class over them, with the
// cuBLAS projections, is src/cuda/engram_layer.cpp. Reductions whose results feed weight
// gradients run over a fixed number of row chunks summed in chunk order: deterministic.
#include <cuda_runtime.h>

#include <algorithm>
#include <cub/cub.cuh>

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

// Sums N values over the block (kThreads threads); every thread gets the sums. `sh` holds
// N * kWarps floats; the block must not touch it between calls without a barrier (one is
// taken at the start).
template <int N>
__device__ __forceinline__ void block_sum(float (&v)[N], float* sh) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    for (int o = 16; o > 0; o >>= 1) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) sh[i * kWarps + warp] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    float s = 0.0f;
    for (int w = 0; w < kWarps; ++w) s += sh[i * kWarps + w];
    v[i] = s;
  }
}

// ---- deterministic column reduction: out[col] += sum_r f(r, col) ---------------------------

template <class F>
__global__ void __launch_bounds__(256) colsum_partial(F f, int64_t rows, int64_t cols,
                                                      float* partial) {
  __shared__ float sh[8][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = rows * chunk / kColChunks, r1 = rows * (chunk + 1) / kColChunks;
  float acc = 0.0f;
  if (col < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += f(r, col);
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float s = 0.0f;
    for (int i = 0; i < 8; ++i) s += sh[i][threadIdx.x];
    partial[chunk * cols + col] = s;
  }
}

__global__ void colsum_finish(const float* partial, int64_t cols, float* out) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float s = 0.0f;
  for (int c = 0; c < kColChunks; ++c) s += partial[c * cols + col];
  out[col] += s;
}

template <class F>
void column_sum(F f, int64_t rows, int64_t cols, float* partial, float* out) {
  if (cols == 0) return;
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32), kColChunks);
  colsum_partial<<<grid, dim3(32, 8)>>>(f, rows, cols, partial);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  colsum_finish<<<blocks_for(cols), kThreads>>>(partial, cols, out);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

struct BiasTerm {
  const float* dkv;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const { return dkv[r * cols + c]; }
};

// d key_norm[m*d+j]: ds * nq_j * k_j * rk;  d query_norm: ds * nk_j * q_j * rq.
struct NormTerm {
  const float *ds, *kv, *hidden, *key_rstd, *query_rstd, *other_w;
  int64_t M, d;
  bool key;  // true: the key norm's weight gradient
  __device__ float operator()(int64_t t, int64_t col) const {
    const int64_t m = col / d, j = col - m * d, i = t * M + m;
    const float k = kv[t * (1 + M) * d + (1 + m) * d + j];
    const float q = hidden[i * d + j];
    const float rk = key_rstd[i], rq = query_rstd[i];
    if (key) return ds[i] * (q * rq * other_w[col]) * k * rk;
    return ds[i] * (k * rk * other_w[col]) * q * rq;
  }
};

struct ConvWeightTerm {
  const float *du, *xn;
  int64_t seq, C, kernel, dilation;
  __device__ float operator()(int64_t bt, int64_t col) const {
    const int64_t c = col / kernel, j = col - c * kernel;
    const int64_t back = dilation * (kernel - 1 - j);
    if (bt % seq < back) return 0.0f;
    return du[bt * C + c] * xn[(bt - back) * C + c];
  }
};

struct ConvNormTerm {
  const float *dxn, *x, *rstd;
  int64_t M, d;
  __device__ float operator()(int64_t bt, int64_t c) const {
    return dxn[bt * M * d + c] * x[bt * M * d + c] * rstd[bt * M + c / d];
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

__global__ void add_bias_kernel(float* kv, const float* bias, int64_t n, int64_t cols) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) kv[i] += bias[i % cols];
}

// One block per (token, branch).
__global__ void __launch_bounds__(kThreads) gate_forward_kernel(GateArgs a) {
  __shared__ float sh[3 * kWarps];
  const int64_t i = blockIdx.x;  // t * M + m
  const int64_t t = i / a.M, m = i - t * a.M, d = a.d;
  const float* v = a.kv + t * (1 + a.M) * d;
  const float* k = v + (1 + m) * d;
  const float* q = a.hidden + i * d;
  const float* wk = a.key_w + m * d;
  const float* wq = a.query_w + m * d;
  float s[3] = {0.0f, 0.0f, 0.0f};
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    s[0] += k[j] * k[j];
    s[1] += q[j] * q[j];
    s[2] += (k[j] * wk[j]) * (q[j] * wq[j]);
  }
  block_sum<3>(s, sh);
  const float rk = 1.0f / sqrtf(s[0] / static_cast<float>(d) + a.eps);
  const float rq = 1.0f / sqrtf(s[1] / static_cast<float>(d) + a.eps);
  const float score = s[2] * rk * rq / sqrtf(static_cast<float>(d));
  const float mag = sqrtf(fmaxf(fabsf(score), 1e-6f));
  const float alpha = sigmoidf_(score > 0.0f ? mag : (score < 0.0f ? -mag : 0.0f));
  if (threadIdx.x == 0) {
    a.key_rstd[i] = rk;
    a.query_rstd[i] = rq;
    a.score[i] = score;
    a.alpha[i] = alpha;
  }
  float* vt = a.vt + i * d;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) vt[j] = alpha * v[j];
}

// One block per token, over its M branches (they share the value row of dkv).
__global__ void __launch_bounds__(kThreads) gate_backward_kernel(GateBwdArgs a) {
  __shared__ float sh[3 * kWarps];
  const int64_t t = blockIdx.x, d = a.d, M = a.M;
  const float* v = a.kv + t * (1 + M) * d;
  float* dv = a.dkv + t * (1 + M) * d;
  const float inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(d));
  for (int64_t m = 0; m < M; ++m) {
    const int64_t i = t * M + m;
    const float* g = a.dvt + i * d;
    const float* k = v + (1 + m) * d;
    const float* q = a.hidden + i * d;
    const float* wk = a.key_w + m * d;
    const float* wq = a.query_w + m * d;
    const float rk = a.key_rstd[i], rq = a.query_rstd[i], alpha = a.alpha[i], s = a.score[i];
    // dalpha, sum nq*wk*k, sum nk*wq*q
    float r[3] = {0.0f, 0.0f, 0.0f};
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      const float nq = q[j] * rq * wq[j], nk = k[j] * rk * wk[j];
      r[0] += g[j] * v[j];
      r[1] += nq * wk[j] * k[j];
      r[2] += nk * wq[j] * q[j];
      dv[j] = (m == 0 ? 0.0f : dv[j]) + alpha * g[j];
    }
    block_sum<3>(r, sh);
    const float as = fabsf(s);
    const float ssg = (s != 0.0f && as >= 1e-6f) ? 0.5f / sqrtf(as) : 0.0f;
    const float ds = r[0] * alpha * (1.0f - alpha) * ssg * inv_sqrt_d;
    const float ck = ds * r[1] * rk * rk * rk / static_cast<float>(d);
    const float cq = ds * r[2] * rq * rq * rq / static_cast<float>(d);
    float* dk = dv + (1 + m) * d;
    float* dq = a.d_hidden + i * d;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      const float nq = q[j] * rq * wq[j], nk = k[j] * rk * wk[j];
      dk[j] = rk * wk[j] * (ds * nq) - k[j] * ck;
      dq[j] += rq * wq[j] * (ds * nk) - q[j] * cq;
    }
    if (threadIdx.x == 0) a.ds[i] = ds;
  }
}

// Per-branch RMSNorm of the conv input: one block per (token, branch).
__global__ void __launch_bounds__(kThreads) conv_norm_kernel(ConvArgs a) {
  __shared__ float sh[kWarps];
  const int64_t i = blockIdx.x, m = i % a.M, d = a.d;
  const float* x = a.x + i * d;
  const float* w = a.norm_w + m * d;
  float s[1] = {0.0f};
  for (int64_t j = threadIdx.x; j < d; j += kThreads) s[0] += x[j] * x[j];
  block_sum<1>(s, sh);
  const float r = 1.0f / sqrtf(s[0] / static_cast<float>(d) + a.eps);
  if (threadIdx.x == 0) a.rstd[i] = r;
  float* xn = a.xn + i * d;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) xn[j] = x[j] * r * w[j];
}

__global__ void conv_kernel(ConvArgs a, float* out) {
  const int64_t C = a.M * a.d, n = a.batch * a.seq * C;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t bt = i / C, c = i - bt * C, t = bt % a.seq;
  float u = 0.0f;
  for (int64_t j = 0; j < a.kernel; ++j) {
    const int64_t back = a.dilation * (a.kernel - 1 - j);
    if (t - back < 0) continue;
    u += a.conv_w[c * a.kernel + j] * a.xn[i - back * C];
  }
  a.u[i] = u;
  out[i] = u * sigmoidf_(u) + a.x[i];
}

__global__ void conv_du_kernel(const float* dy, const float* u, float* du, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float sg = sigmoidf_(u[i]);
  du[i] = dy[i] * sg * (1.0f + u[i] * (1.0f - sg));
}

__global__ void conv_dxn_kernel(ConvArgs a, const float* du, float* dxn) {
  const int64_t C = a.M * a.d, n = a.batch * a.seq * C;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t bt = i / C, c = i - bt * C, t = bt % a.seq;
  float s = 0.0f;
  for (int64_t j = a.kernel - 1; j >= 0; --j) {
    const int64_t back = a.dilation * (a.kernel - 1 - j);
    if (t + back >= a.seq) continue;
    s += a.conv_w[c * a.kernel + j] * du[i + back * C];
  }
  dxn[i] = s;
}

// dx += RMSNorm backward; one block per (token, branch).
__global__ void __launch_bounds__(kThreads) conv_norm_backward_kernel(ConvArgs a, const float* dxn,
                                                                      float* dx) {
  __shared__ float sh[kWarps];
  const int64_t i = blockIdx.x, m = i % a.M, d = a.d;
  const float* x = a.x + i * d;
  const float* g = dxn + i * d;
  const float* w = a.norm_w + m * d;
  const float r = a.rstd[i];
  float s[1] = {0.0f};
  for (int64_t j = threadIdx.x; j < d; j += kThreads) s[0] += g[j] * w[j] * x[j];
  block_sum<1>(s, sh);
  const float k = s[0] * r * r * r / static_cast<float>(d);
  float* o = dx + i * d;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) o[j] += r * w[j] * g[j] - x[j] * k;
}

__global__ void segment_sum_kernel(float* out, const float* de, const int32_t* slots,
                                   const int32_t* starts, const int32_t* counts, int64_t runs,
                                   int64_t width) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= runs * width) return;
  const int64_t u = i / width, col = i - u * width;
  const int32_t b = starts[u], e = b + counts[u];
  float s = 0.0f;
  for (int32_t k = b; k < e; ++k) s += de[static_cast<int64_t>(slots[k]) * width + col];
  out[i] = s;
}

}  // namespace

void launch_table_rows(int64_t* rows, int32_t* slots, const int32_t* ids, const int64_t* offsets,
                       int64_t tokens, int64_t heads) {
  const int64_t n = tokens * heads;
  if (n == 0) return;
  table_rows_kernel<<<blocks_for(n), kThreads>>>(rows, slots, ids, offsets, n, heads);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_add_bias(float* kv, const float* bias, int64_t tokens, int64_t cols) {
  const int64_t n = tokens * cols;
  if (n == 0) return;
  add_bias_kernel<<<blocks_for(n), kThreads>>>(kv, bias, n, cols);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_gate_forward(const GateArgs& a) {
  if (a.tokens * a.M == 0) return;
  gate_forward_kernel<<<static_cast<unsigned>(a.tokens * a.M), kThreads>>>(a);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_gate_backward(const GateBwdArgs& a) {
  if (a.tokens == 0) return;
  gate_backward_kernel<<<static_cast<unsigned>(a.tokens), kThreads>>>(a);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const int64_t cols = a.M * a.d;
  column_sum(NormTerm{a.ds, a.kv, a.hidden, a.key_rstd, a.query_rstd, a.query_w, a.M, a.d, true},
             a.tokens, cols, a.partial, a.d_key_w);
  column_sum(NormTerm{a.ds, a.kv, a.hidden, a.key_rstd, a.query_rstd, a.key_w, a.M, a.d, false},
             a.tokens, cols, a.partial, a.d_query_w);
}

void launch_conv_forward(const ConvArgs& a, float* out) {
  const int64_t rows = a.batch * a.seq * a.M;
  if (rows == 0) return;
  conv_norm_kernel<<<static_cast<unsigned>(rows), kThreads>>>(a);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  conv_kernel<<<blocks_for(rows * a.d), kThreads>>>(a, out);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_conv_backward(const ConvArgs& a, const float* dy, float* dx, float* d_conv_w,
                          float* d_norm_w, float* du, float* dxn, float* partial) {
  const int64_t tokens = a.batch * a.seq, C = a.M * a.d, n = tokens * C;
  if (n == 0) return;
  conv_du_kernel<<<blocks_for(n), kThreads>>>(dy, a.u, du, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  conv_dxn_kernel<<<blocks_for(n), kThreads>>>(a, du, dxn);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  column_sum(ConvWeightTerm{du, a.xn, a.seq, C, a.kernel, a.dilation}, tokens, C * a.kernel,
             partial, d_conv_w);
  conv_norm_backward_kernel<<<static_cast<unsigned>(tokens * a.M), kThreads>>>(a, dxn, dx);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  column_sum(ConvNormTerm{dxn, a.x, a.rstd, a.M, a.d}, tokens, C, partial, d_norm_w);
}

void launch_bias_grad(float* d_bias, const float* dkv, int64_t tokens, int64_t cols,
                      float* partial) {
  column_sum(BiasTerm{dkv, cols}, tokens, cols, partial, d_bias);
}

size_t table_grad_temp_bytes(int64_t n, int end_bit) {
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

int64_t launch_table_grad(const TableGradArgs& a) {
  if (a.n == 0) return 0;
  const int ni = static_cast<int>(a.n);
  size_t bytes = a.temp_bytes;
  // Radix sort is stable: a row's slots stay in (token, head) order, as in the CPU's sum.
  ENGRAM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.rows),
      reinterpret_cast<uint64_t*>(a.rows_sorted), a.slots, a.slots_sorted, ni, 0, a.end_bit));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
      a.temp, bytes, reinterpret_cast<const uint64_t*>(a.rows_sorted),
      reinterpret_cast<uint64_t*>(a.out_rows), a.counts, a.num_runs, ni));
  int32_t runs = 0;
  ENGRAM_CUDA_CHECK(cudaMemcpy(&runs, a.num_runs, sizeof(runs), cudaMemcpyDeviceToHost));
  bytes = a.temp_bytes;
  ENGRAM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(a.temp, bytes, a.counts, a.starts, runs));
  if (runs > 0 && a.width > 0) {
    segment_sum_kernel<<<blocks_for(int64_t{runs} * a.width), kThreads>>>(
        a.out_values, a.de, a.slots_sorted, a.starts, a.counts, runs, a.width);
    ENGRAM_CUDA_CHECK(cudaGetLastError());
  }
  return runs;
}

}  // namespace engram::cuda::detail
