// Kernels of the non-GEMM ops (include/engram/cuda/ops.h); src/cuda/ops.cpp checks arguments
// and calls the launchers here. src/cuda/ops_stub.cpp stands in for both without CUDA.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/check.h"
#include "cuda/reduce.h"
#include "cuda/ops_kernel.h"

namespace engram::cuda::detail {
namespace {

constexpr int kWarp = 32;

unsigned grid_for(int64_t items, int threads, int64_t cap = 65535LL * 32) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((items + threads - 1) / threads, cap)));
}

// Block reductions: src/cuda/reduce.h.

// ---- RMSNorm ----------------------------------------------------------------------------------

constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_forward_kernel(float* y, int64_t y_stride, float* rstd, const float* x, int64_t c,
                           int64_t x_stride, const float* w, float eps) {
  __shared__ float scratch[kWarp];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * x_stride;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, scratch);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(c) + eps);
  float* yr = y + row * y_stride;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) yr[i] = xr[i] * r * w[i];
  if (threadIdx.x == 0) rstd[row] = r;
}

__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_backward_dx_kernel(float* dx, int64_t dx_stride, const float* dy, int64_t dy_stride,
                               const float* x, int64_t c, int64_t x_stride, const float* w,
                               const float* rstd) {
  __shared__ float scratch[kWarp];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * x_stride;
  const float* dyr = dy + row * dy_stride;
  float dot = 0;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) dot += dyr[i] * w[i] * xr[i];
  dot = block_sum(dot, scratch);
  const float r = rstd[row];
  const float k = dot * r * r * r / static_cast<float>(c);
  float* dxr = dx + row * dx_stride;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) dxr[i] += r * w[i] * dyr[i] - xr[i] * k;
}

// partial[chunk, col] = sum over the chunk's rows of dy x rstd, in double, rows in order.
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_backward_dw_partial_kernel(double* partial, const float* dy, int64_t dy_stride,
                                       const float* x, int64_t x_stride, const float* rstd,
                                       int64_t n, int64_t c, int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (col >= c) return;
  const int64_t begin = n * chunk / chunks, end = n * (chunk + 1) / chunks;
  double s = 0;
  for (int64_t r = begin; r < end; ++r) {
    s += static_cast<double>(dy[r * dy_stride + col] * x[r * x_stride + col] * rstd[r]);
  }
  partial[chunk * c + col] = s;
}

__global__ void rmsnorm_backward_dw_final_kernel(float* dw, const double* partial, int64_t c,
                                                 int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= c) return;
  double s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * c + col];
  dw[col] += static_cast<float>(s);
}

// ---- SwiGLU -----------------------------------------------------------------------------------

constexpr int kElemThreads = 256;

__device__ __forceinline__ float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

__global__ void swiglu_forward_kernel(float* h, const float* a, const float* b, int64_t size) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += stride) {
    const float ai = a[i];
    h[i] = __fmul_rn(__fmul_rn(ai, sigmoidf(ai)), b[i]);
  }
}

__global__ void swiglu_backward_kernel(float* da, float* db, const float* dh, const float* a,
                                       const float* b, int64_t size) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += stride) {
    const float ai = a[i], bi = b[i], d = dh[i];
    const float s = sigmoidf(ai);
    const float one_plus = __fadd_rn(1.0f, __fmul_rn(ai, 1.0f - s));
    da[i] = __fmul_rn(__fmul_rn(__fmul_rn(d, bi), s), one_plus);
    db[i] = __fmul_rn(__fmul_rn(d, ai), s);
  }
}

// ---- RoPE -------------------------------------------------------------------------------------

// One block per (b, t); thread i < hd/2 computes its cos/sin once and rotates every head.
__global__ void rope_kernel(float* x, int64_t seq, int64_t heads, int64_t head_dim, double theta,
                            double sign) {
  const int64_t bt = blockIdx.x;
  const int64_t t = bt % seq;
  const int64_t half = head_dim / 2;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const double inv_freq =
        pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    const double angle = sign * static_cast<double>(t) * inv_freq;
    const float c = static_cast<float>(cos(angle));
    const float s = static_cast<float>(sin(angle));
    for (int64_t h = 0; h < heads; ++h) {
      float* row = x + (bt * heads + h) * head_dim;
      const float x1 = row[i], x2 = row[i + half];
      row[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
      row[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
    }
  }
}

// ---- Cross-entropy ----------------------------------------------------------------------------

constexpr int kCeThreads = 512;
constexpr int kCeReduceThreads = 1024;

struct CeScratch {
  double loss_sum;
  long long count;
  long long bad_index;  // n when none
};

// One block: counts targets in [0, v) and finds the first target >= v.
__global__ void __launch_bounds__(kCeReduceThreads)
    ce_count_kernel(CeScratch* s, const int64_t* targets, int64_t n, int64_t v) {
  __shared__ long long counts[kCeReduceThreads];
  __shared__ long long bads[kCeReduceThreads];
  long long count = 0, bad = n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t tg = targets[i];
    if (tg >= v) {
      bad = min(bad, static_cast<long long>(i));
    } else if (tg >= 0) {
      ++count;
    }
  }
  counts[threadIdx.x] = count;
  bads[threadIdx.x] = bad;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o /= 2) {
    if (threadIdx.x < o) {
      counts[threadIdx.x] += counts[threadIdx.x + o];
      bads[threadIdx.x] = min(bads[threadIdx.x], bads[threadIdx.x + o]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    s->count = counts[0];
    s->bad_index = bads[0];
  }
}

// One block per row. Reads the whole row (max, then sum of exp) before writing the gradient,
// so dlogits may equal logits.
__global__ void __launch_bounds__(kCeThreads)
    ce_row_kernel(float* dlogits, const float* logits, const int64_t* targets, int64_t v,
                  float scale, const CeScratch* s, double* row_loss_d, float* row_loss) {
  __shared__ float fscratch[kWarp];
  __shared__ double dscratch[kWarp];
  const int64_t row = blockIdx.x;
  const int64_t target = targets[row];
  float* d = dlogits != nullptr ? dlogits + row * v : nullptr;
  if (target < 0 || target >= v) {
    if (d != nullptr) {
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) d[j] = 0.0f;
    }
    if (threadIdx.x == 0) {
      row_loss_d[row] = 0.0;
      if (row_loss != nullptr) row_loss[row] = 0.0f;
    }
    return;
  }
  const float* x = logits + row * v;
  const float target_logit = x[target];  // read before any thread writes the row
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = block_max(mx, fscratch);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) sum += static_cast<double>(expf(x[j] - mx));
  sum = block_sum(sum, dscratch);  // its __syncthreads also orders every read before the writes
  const double lse = static_cast<double>(mx) + log(sum);
  const double loss = lse - static_cast<double>(target_logit);
  if (threadIdx.x == 0) {
    row_loss_d[row] = loss;
    if (row_loss != nullptr) row_loss[row] = static_cast<float>(loss);
  }
  if (d == nullptr) return;
  const long long count = s->count;
  const double grad_scale = count > 0 ? static_cast<double>(scale) / static_cast<double>(count) : 0;
  const float lse_f = static_cast<float>(lse), gs_f = static_cast<float>(grad_scale);
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    if (j == target) {
      d[j] = static_cast<float>((exp(static_cast<double>(target_logit) - lse) - 1.0) * grad_scale);
    } else {
      d[j] = expf(x[j] - lse_f) * gs_f;
    }
  }
}

// One block: sum of the row losses, each thread over rows tid, tid + 1024, ... in order, then a
// fixed tree.
__global__ void __launch_bounds__(kCeReduceThreads)
    ce_sum_kernel(CeScratch* s, const double* row_loss_d, int64_t n) {
  __shared__ double sums[kCeReduceThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += row_loss_d[i];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o /= 2) {
    if (threadIdx.x < o) sums[threadIdx.x] += sums[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) s->loss_sum = sums[0];
}

// ---- Adam -------------------------------------------------------------------------------------

// train's adam_update, one element, with the same float operations in the same order and no
// contraction into fused multiply-adds.
__device__ __forceinline__ void adam_element(float& p, float& m, float& v, float g,
                                             const AdamCoeffsF& c) {
  m = __fadd_rn(__fmul_rn(c.beta1, m), __fmul_rn(c.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(c.beta2, v), __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), c.bc2_sqrt), c.eps);
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(c.step_size, m), denom));
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t size,
                             AdamCoeffsF c, bool decay, float decay_factor) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += stride) {
    float pi = p[i], mi = m[i], vi = v[i];
    if (decay) pi = __fmul_rn(pi, decay_factor);
    adam_element(pi, mi, vi, g[i], c);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

constexpr int kRowThreads = 128;

// One block per gradient row.
__global__ void __launch_bounds__(kRowThreads)
    sparse_row_adam_kernel(float* table, float* m, float* v, int64_t* last_step,
                           int64_t table_rows, int64_t width, const int64_t* rows,
                           const float* values, AdamCoeffsF c, int64_t t, double beta1,
                           double beta2) {
  const int64_t i = blockIdx.x;
  const int64_t r = rows[i];
  if (r < 0 || r >= table_rows) return;
  const int64_t skipped = t - 1 - last_step[r];
  __syncthreads();  // every thread has read last_step[r] before thread 0 rewrites it
  float m_decay = 1.0f, v_decay = 1.0f;
  if (skipped > 0) {
    const double k = static_cast<double>(skipped);
    m_decay = static_cast<float>(pow(beta1, k));
    v_decay = static_cast<float>(pow(beta2, k));
  }
  const int64_t off = r * width;
  const float* g = values + i * width;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    float pj = table[off + j], mj = m[off + j], vj = v[off + j];
    if (skipped > 0) {
      mj = __fmul_rn(mj, m_decay);
      vj = __fmul_rn(vj, v_decay);
    }
    adam_element(pj, mj, vj, g[j], c);
    table[off + j] = pj;
    m[off + j] = mj;
    v[off + j] = vj;
  }
  if (threadIdx.x == 0) last_step[r] = t;
}

}  // namespace

void launch_rmsnorm_forward(float* y, int64_t y_stride, float* rstd, const float* x, int64_t n,
                            int64_t c, int64_t x_stride, const float* w, float eps, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  rmsnorm_forward_kernel<<<static_cast<unsigned>(n), kNormThreads, 0, s>>>(y, y_stride, rstd, x, c,
                                                                           x_stride, w, eps);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_rmsnorm_backward(float* dx, int64_t dx_stride, float* dw, const float* dy,
                             int64_t dy_stride, const float* x, int64_t n, int64_t c,
                             int64_t x_stride, const float* w, const float* rstd, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  rmsnorm_backward_dx_kernel<<<static_cast<unsigned>(n), kNormThreads, 0, s>>>(
      dx, dx_stride, dy, dy_stride, x, c, x_stride, w, rstd);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const int64_t chunks = std::min<int64_t>(n, 256);
  double* partial = nullptr;
  ENGRAM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial),
                                    static_cast<size_t>(chunks * c) * sizeof(double), s));
  const dim3 grid(grid_for(c, kNormThreads, INT32_MAX), static_cast<unsigned>(chunks));
  rmsnorm_backward_dw_partial_kernel<<<grid, kNormThreads, 0, s>>>(partial, dy, dy_stride, x,
                                                                   x_stride, rstd, n, c, chunks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  rmsnorm_backward_dw_final_kernel<<<grid_for(c, kNormThreads, INT32_MAX), kNormThreads, 0, s>>>(
      dw, partial, c, chunks);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  ENGRAM_CUDA_CHECK(cudaFreeAsync(partial, s));
}

void launch_swiglu_forward(float* h, const float* a, const float* b, int64_t size, void* stream) {
  swiglu_forward_kernel<<<grid_for(size, kElemThreads), kElemThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(h, a, b, size);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_swiglu_backward(float* da, float* db, const float* dh, const float* a, const float* b,
                            int64_t size, void* stream) {
  swiglu_backward_kernel<<<grid_for(size, kElemThreads), kElemThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(da, db, dh, a, b, size);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_rope(float* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                 double theta, double sign, void* stream) {
  const int64_t half = head_dim / 2;
  const int threads = static_cast<int>(std::min<int64_t>(256, (half + kWarp - 1) / kWarp * kWarp));
  rope_kernel<<<static_cast<unsigned>(batch * seq), threads, 0,
                static_cast<cudaStream_t>(stream)>>>(x, seq, heads, head_dim, theta, sign);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

CrossEntropyOut launch_cross_entropy(float* dlogits, const float* logits, const int64_t* targets,
                                     int64_t n, int64_t v, float scale, float* row_loss,
                                     void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  void* mem = nullptr;
  ENGRAM_CUDA_CHECK(
      cudaMallocAsync(&mem, sizeof(CeScratch) + static_cast<size_t>(n) * sizeof(double), st));
  auto* scratch = static_cast<CeScratch*>(mem);
  auto* row_loss_d = reinterpret_cast<double*>(static_cast<char*>(mem) + sizeof(CeScratch));
  ce_count_kernel<<<1, kCeReduceThreads, 0, st>>>(scratch, targets, n, v);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  ce_row_kernel<<<static_cast<unsigned>(n), kCeThreads, 0, st>>>(dlogits, logits, targets, v,
                                                                 scale, scratch, row_loss_d,
                                                                 row_loss);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  ce_sum_kernel<<<1, kCeReduceThreads, 0, st>>>(scratch, row_loss_d, n);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  CeScratch host{};
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(&host, scratch, sizeof host, cudaMemcpyDeviceToHost, st));
  ENGRAM_CUDA_CHECK(cudaFreeAsync(mem, st));
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(st));
  CrossEntropyOut out;
  out.loss_sum = host.loss_sum;
  out.count = host.count;
  out.bad_index = host.bad_index < n ? host.bad_index : -1;
  return out;
}

void launch_adamw(float* p, const float* g, float* m, float* v, int64_t size,
                  const AdamCoeffsF& c, bool decay, float decay_factor, void* stream) {
  adamw_kernel<<<grid_for(size, kElemThreads), kElemThreads, 0,
                 static_cast<cudaStream_t>(stream)>>>(p, g, m, v, size, c, decay, decay_factor);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void launch_sparse_row_adam(float* table, float* m, float* v, int64_t* last_step,
                            int64_t table_rows, int64_t width, const int64_t* rows,
                            const float* values, int64_t n_rows, const AdamCoeffsF& c, int64_t t,
                            double beta1, double beta2, void* stream) {
  sparse_row_adam_kernel<<<static_cast<unsigned>(n_rows), kRowThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(
      table, m, v, last_step, table_rows, width, rows, values, c, t, beta1, beta2);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace engram::cuda::detail
