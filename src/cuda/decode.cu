// Incremental decoding's kernels (include/engram/cuda/decode.h). src/cuda/decode_stub.cpp stands
// in for this file in builds without CUDA.
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/reduce.h"
#include "engram/cuda/decode.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAttnWarps = 4;

cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

void check_sizes(const char* where, std::initializer_list<int64_t> sizes) {
  for (const int64_t s : sizes) {
    if (s < 0) throw InputError(error_message(where, "negative size " + std::to_string(s)));
  }
}

__global__ void kv_append_kernel(float* k_cache, float* v_cache, const float* k, const float* v,
                                 const int32_t* seq, const int32_t* pos, int64_t rows,
                                 int64_t kv_dim, int64_t max_len) {
  const int64_t n = rows * kv_dim;
  for (int64_t i = detail::thread_index(); i < n; i += detail::grid_stride()) {
    const int64_t r = i / kv_dim, e = i - r * kv_dim;
    const int64_t at = (static_cast<int64_t>(seq[r]) * max_len + pos[r]) * kv_dim + e;
    k_cache[at] = k[i];
    v_cache[at] = v[i];
  }
}

// One block of kAttnWarps warps per (row, query head): warp w takes keys w, w + kAttnWarps, ...
// with an online softmax (lane l holds dims l + 32 i, i < D); the warps' partial results are
// then merged in warp order.
template <int D>
__global__ void __launch_bounds__(kAttnWarps * 32)
    decode_attention_kernel(float* ctx, const float* q, const float* k_cache, const float* v_cache,
                            const int32_t* seq, const int32_t* pos, int64_t q_heads, int64_t group,
                            int64_t max_len, float scale) {
  constexpr int hd = D * 32;
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps];
  __shared__ float s_acc[kAttnWarps][hd];
  const int64_t r = blockIdx.x, h = blockIdx.y, g = h / group;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t kv_dim = q_heads / group * hd;
  const float* qr = q + (r * q_heads + h) * hd;
  float qv[D];
#pragma unroll
  for (int i = 0; i < D; ++i) qv[i] = qr[lane + 32 * i];
  const int64_t base = static_cast<int64_t>(seq[r]) * max_len * kv_dim + g * hd;
  const int last = pos[r];
  float m = -INFINITY, l = 0.0f, acc[D];
#pragma unroll
  for (int i = 0; i < D; ++i) acc[i] = 0.0f;
  for (int j = warp; j <= last; j += kAttnWarps) {
    const float* kr = k_cache + base + static_cast<int64_t>(j) * kv_dim;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < D; ++i) dot += qv[i] * kr[lane + 32 * i];
    const float s = detail::warp_sum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
    const float* vr = v_cache + base + static_cast<int64_t>(j) * kv_dim;
#pragma unroll
    for (int i = 0; i < D; ++i) acc[i] = acc[i] * corr + p * vr[lane + 32 * i];
    m = m_new;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < D; ++i) s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float mx = s_m[0];
  for (int w = 1; w < kAttnWarps; ++w) mx = fmaxf(mx, s_m[w]);
  float total = 0.0f, f[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    f[w] = s_l[w] > 0.0f ? expf(s_m[w] - mx) : 0.0f;  // a warp without keys has m = -inf
    total += s_l[w] * f[w];
  }
  float* out = ctx + (r * q_heads + h) * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) sum += s_acc[w][i] * f[w];
    out[i] = sum / total;
  }
}

// Grouped-query heads together: one block of kAttnWarps warps per (row, kv head) and its
// `group` (<= kMaxGroup) query heads, so that each key and value row is read once for all of
// them. Warp w takes keys w, w + kAttnWarps, ...; per query head an online softmax as above,
// merged across the warps in warp order.
constexpr int kMaxGroup = 8;

template <int D>
__global__ void __launch_bounds__(kAttnWarps * 32)
    decode_attention_grouped_kernel(float* ctx, const float* q, const float* k_cache,
                                    const float* v_cache, const int32_t* seq, const int32_t* pos,
                                    int64_t q_heads, int group, int64_t max_len, float scale) {
  constexpr int hd = D * 32;
  __shared__ float s_m[kAttnWarps][kMaxGroup], s_l[kAttnWarps][kMaxGroup];
  __shared__ float s_acc[kAttnWarps][kMaxGroup][hd];
  const int64_t r = blockIdx.x, g = blockIdx.y;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t kv_dim = q_heads / group * hd;
  float qv[kMaxGroup][D], m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][D];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int i = 0; i < D; ++i) {
      acc[h][i] = 0.0f;
      qv[h][i] = h < group ? q[(r * q_heads + g * group + h) * hd + lane + 32 * i] : 0.0f;
    }
  }
  const int64_t base = static_cast<int64_t>(seq[r]) * max_len * kv_dim + g * hd;
  const int last = pos[r];
  for (int j = warp; j <= last; j += kAttnWarps) {
    const float* kr = k_cache + base + static_cast<int64_t>(j) * kv_dim;
    const float* vr = v_cache + base + static_cast<int64_t>(j) * kv_dim;
    float kx[D], vx[D];
#pragma unroll
    for (int i = 0; i < D; ++i) {
      kx[i] = kr[lane + 32 * i];
      vx[i] = vr[lane + 32 * i];
    }
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h >= group) break;
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < D; ++i) dot += qv[h][i] * kx[i];
      const float s = detail::warp_sum(dot) * scale;
      const float m_new = fmaxf(m[h], s);
      const float corr = expf(m[h] - m_new), p = expf(s - m_new);
      l[h] = l[h] * corr + p;
#pragma unroll
      for (int i = 0; i < D; ++i) acc[h][i] = acc[h][i] * corr + p * vx[i];
      m[h] = m_new;
    }
  }
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h >= group) break;
    if (lane == 0) {
      s_m[warp][h] = m[h];
      s_l[warp][h] = l[h];
    }
#pragma unroll
    for (int i = 0; i < D; ++i) s_acc[warp][h][lane + 32 * i] = acc[h][i];
  }
  __syncthreads();
  for (int h = 0; h < group; ++h) {
    float mx = s_m[0][h];
    for (int w = 1; w < kAttnWarps; ++w) mx = fmaxf(mx, s_m[w][h]);
    float total = 0.0f, f[kAttnWarps];
    for (int w = 0; w < kAttnWarps; ++w) {
      f[w] = s_l[w][h] > 0.0f ? expf(s_m[w][h] - mx) : 0.0f;
      total += s_l[w][h] * f[w];
    }
    float* out = ctx + (r * q_heads + g * group + h) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
      float sum = 0.0f;
      for (int w = 0; w < kAttnWarps; ++w) sum += s_acc[w][h][i] * f[w];
      out[i] = sum / total;
    }
  }
}

__global__ void rope_at_kernel(float* x, const int32_t* pos, int64_t rows, int64_t heads,
                               int64_t half, const float* cos_t, const float* sin_t) {
  const int64_t n = rows * heads * half;
  for (int64_t i = detail::thread_index(); i < n; i += detail::grid_stride()) {
    const int64_t rh = i / half, k = i - rh * half, r = rh / heads;
    float* row = x + rh * 2 * half;
    const int64_t at = static_cast<int64_t>(pos[r]) * half + k;
    const float c = cos_t[at], s = sin_t[at];
    const float x1 = row[k], x2 = row[k + half];
    row[k] = x1 * c - x2 * s;
    row[k + half] = x2 * c + x1 * s;
  }
}

__global__ void select_rows_kernel(float* out, const float* x, const int32_t* index,
                                   int64_t count, int64_t width) {
  const int64_t n = count * width;
  for (int64_t i = detail::thread_index(); i < n; i += detail::grid_stride()) {
    const int64_t r = i / width, c = i - r * width;
    out[i] = x[static_cast<int64_t>(index[r]) * width + c];
  }
}

// (value, index) with NaN below every number; ties to the lower index.
__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  if (isnan(v)) return false;
  if (isnan(bv)) return true;
  return v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(int64_t* out, const float* x,
                                                          int64_t cols) {
  __shared__ float s_v[kThreads];
  __shared__ int64_t s_i[kThreads];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  float bv = NAN;
  int64_t bi = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    if (better(row[c], c, bv, bi)) {
      bv = row[c];
      bi = c;
    }
  }
  s_v[threadIdx.x] = bv;
  s_i[threadIdx.x] = bi;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o /= 2) {
    if (static_cast<int>(threadIdx.x) < o) {
      const float v = s_v[threadIdx.x + o];
      const int64_t i = s_i[threadIdx.x + o];
      if (better(v, i, s_v[threadIdx.x], s_i[threadIdx.x])) {
        s_v[threadIdx.x] = v;
        s_i[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = isnan(s_v[0]) ? 0 : s_i[0];
}

// Calls f(std::integral_constant<int, head_dim / 32>{}) for a head_dim the attention kernels
// take (32, 64, 128, 256); InputError otherwise.
template <class F>
void with_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 32: return f(std::integral_constant<int, 1>{});
    case 64: return f(std::integral_constant<int, 2>{});
    case 128: return f(std::integral_constant<int, 4>{});
    case 256: return f(std::integral_constant<int, 8>{});
    default:
      throw InputError(error_message("decode_attention", "head_dim " + std::to_string(head_dim) +
                                                             " (32, 64, 128 or 256)"));
  }
}

}  // namespace

void kv_cache_append(float* k_cache, float* v_cache, const float* k, const float* v,
                     const int32_t* seq, const int32_t* pos, int64_t rows, int64_t kv_dim,
                     int64_t max_len, void* stream) {
  check_sizes("kv_cache_append", {rows, kv_dim, max_len});
  if (rows == 0 || kv_dim == 0) return;
  kv_append_kernel<<<detail::grid_stride_blocks(rows * kv_dim, kThreads), kThreads, 0,
                     as_stream(stream)>>>(k_cache, v_cache, k, v, seq, pos, rows, kv_dim, max_len);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void decode_attention(float* ctx, const float* q, const float* k_cache, const float* v_cache,
                      const int32_t* seq, const int32_t* pos, int64_t rows, int64_t q_heads,
                      int64_t kv_heads, int64_t head_dim, int64_t max_len, float scale,
                      void* stream) {
  check_sizes("decode_attention", {rows, q_heads, kv_heads, head_dim, max_len});
  if (kv_heads < 1 || q_heads % kv_heads != 0) {
    throw InputError(error_message("decode_attention", std::to_string(q_heads) +
                                                           " query heads over " +
                                                           std::to_string(kv_heads) + " kv heads"));
  }
  if (rows == 0 || q_heads == 0) return;
  if (rows > 2147483647 || q_heads > 65535) {
    throw InputError(error_message("decode_attention", "rows " + std::to_string(rows) +
                                                           " or query heads " +
                                                           std::to_string(q_heads) + " too many"));
  }
  const int64_t group = q_heads / kv_heads;
  cudaStream_t s = as_stream(stream);
  const bool grouped = group > 1 && group <= kMaxGroup && head_dim <= 128;
  with_head_dim(head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    if constexpr (D <= 4) {  // the grouped kernel takes head_dim <= 128
      if (grouped) {
        const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(kv_heads));
        decode_attention_grouped_kernel<D><<<grid, kAttnWarps * 32, 0, s>>>(
            ctx, q, k_cache, v_cache, seq, pos, q_heads, static_cast<int>(group), max_len, scale);
        return;
      }
    }
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(q_heads));
    decode_attention_kernel<D><<<grid, kAttnWarps * 32, 0, s>>>(ctx, q, k_cache, v_cache, seq,
                                                                pos, q_heads, group, max_len, scale);
  });
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void rope_at(float* x, const int32_t* pos, int64_t rows, int64_t heads, int64_t head_dim,
             const float* cos_table, const float* sin_table, void* stream) {
  check_sizes("rope_at", {rows, heads, head_dim});
  if (head_dim % 2 != 0) {
    throw InputError(error_message("rope_at", "head_dim " + std::to_string(head_dim) + " is odd"));
  }
  const int64_t half = head_dim / 2, n = rows * heads * half;
  if (n == 0) return;
  rope_at_kernel<<<detail::grid_stride_blocks(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      x, pos, rows, heads, half, cos_table, sin_table);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void select_rows(float* out, const float* x, const int32_t* index, int64_t count, int64_t width,
                 void* stream) {
  check_sizes("select_rows", {count, width});
  if (count == 0 || width == 0) return;
  select_rows_kernel<<<detail::grid_stride_blocks(count * width, kThreads), kThreads, 0,
                       as_stream(stream)>>>(out, x, index, count, width);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void argmax_rows(int64_t* out, const float* x, int64_t rows, int64_t cols, void* stream) {
  check_sizes("argmax_rows", {rows, cols});
  if (rows == 0) return;
  if (cols < 1 || rows > 2147483647) {
    throw InputError(error_message("argmax_rows", std::to_string(rows) + " rows of " +
                                                      std::to_string(cols) + " columns"));
  }
  argmax_kernel<<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(out, x, cols);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace engram::cuda
