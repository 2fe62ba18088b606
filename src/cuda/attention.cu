// Kernels of causal attention (include/engram/cuda/attention.h); src/cuda/attention.cpp checks
// the arguments and calls the launchers at the end of this file.
//
// The float32-math kernels (AttentionKernel::kPlain, and every float32 call) give each row they
// own (a query row, or a key row in the dk/dv pass) to kLanes = hd/16 consecutive threads, each
// thread holding 16 of the row's dims as 4 float4 chunks: thread `lane` owns chunks lane,
// lane + kLanes, lane + 2 kLanes, lane + 3 kLanes (chunk c = dims 4c..4c+3). A dot product is 16
// FMAs per thread and an xor-shuffle sum over the kLanes threads, which leaves the same bits in
// every one of them. Blocks own 64 rows; the other side streams through shared memory in tiles
// of 64*64/hd rows (32 KiB for K and V together), widened to float32 on load. Decode follows
// them, then the bf16 tensor-core kernels (mma.sync), each section with its own notes, and the
// launchers. Softmax runs in base 2 everywhere: scores are scaled by scale * log2(e).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/attention_kernel.h"
#include "cuda/check.h"

namespace engram::cuda::detail {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int HD>
struct Cfg {
  static constexpr int kRows = 64;        // rows owned by a block
  static constexpr int kLanes = HD / 16;  // threads per row
  static constexpr int kThreads = kRows * kLanes;
  static constexpr int kChunks = HD / 4;      // float4 chunks per row
  static constexpr int kTile = 64 * 64 / HD;  // rows of a streamed tile
  static_assert(HD % 64 == 0 && kTile * HD == 64 * 64, "head_dim 64 or 128");
};

// ---- element access: 4 consecutive elements as one float4 -------------------------------------

__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                     __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ void store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ uint32_t bf16_bits(float x) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
  uint2 u;
  u.x = bf16_bits(v.x) | (bf16_bits(v.y) << 16);
  u.y = bf16_bits(v.z) | (bf16_bits(v.w) << 16);
  *reinterpret_cast<uint2*>(p) = u;
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}
__device__ __forceinline__ void axpy4(float4& y, float a, float4 x) {
  y.x += a * x.x;
  y.y += a * x.y;
  y.z += a * x.z;
  y.w += a * x.w;
}
__device__ __forceinline__ float4 scale4(float4 v, float a) {
  return make_float4(v.x * a, v.y * a, v.z * a, v.w * a);
}
__device__ __forceinline__ float4 zero4() {
  return make_float4(0.f, 0.f, 0.f, 0.f);
}

// Sum over the L consecutive threads of a row (L a power of two dividing 32). Every thread of
// the group ends with the same bits: each step adds the same two partial sums, in either order.
template <int L>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int o = 1; o < L; o *= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// rows x (HD/4) float4 tile from `rows` rows starting at `base`, `stride` elements apart; rows
// at or beyond `valid` are zeros (never read).
template <int HD, int ROWS, int THREADS, class T>
__device__ __forceinline__ void load_tile(float4 (*dst)[HD / 4], const T* base, int64_t stride,
                                          int valid) {
  constexpr int kC = HD / 4;
  for (int e = static_cast<int>(threadIdx.x); e < ROWS * kC; e += THREADS) {
    const int r = e / kC, c = e % kC;
    dst[r][c] = r < valid ? load4(base + r * stride + 4 * c) : zero4();
  }
}

// ---- forward ----------------------------------------------------------------------------------

// Grid (query tiles, Hq, B), the last tile (the most keys) first. ctx, q (B, T, Hq, HD);
// k, v (B, T, Hkv, HD); lse (B, Hq, T).
template <class T, int HD>
__global__ void __launch_bounds__(Cfg<HD>::kThreads)
    flash_forward_kernel(T* ctx, float* lse, const T* q, const T* k, const T* v, int seq, int heads,
                         int kv_heads, float scale_log2) {
  using C = Cfg<HD>;
  constexpr int L = C::kLanes, NT = C::kTile;
  __shared__ float4 ks[NT][C::kChunks];
  __shared__ float4 vs[NT][C::kChunks];

  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int g = h / (heads / kv_heads);
  const int row = static_cast<int>(threadIdx.x) / L, lane = static_cast<int>(threadIdx.x) % L;
  const int q0 = tile * C::kRows, t = q0 + row;
  const bool live = t < seq;
  const int64_t q_stride = static_cast<int64_t>(heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const int64_t q_off =
      (static_cast<int64_t>(b) * seq + t) * q_stride + static_cast<int64_t>(h) * HD;

  float4 qr[4], o[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    qr[i] = live ? load4(q + q_off + 4 * (lane + L * i)) : zero4();
    o[i] = zero4();
  }
  float m = -INFINITY, l = 0.f;
  const T* kb = k + static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const T* vb = v + static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const int key_end = min(seq, q0 + C::kRows);  // tiles past the block's last query are masked
  for (int k0 = 0; k0 < key_end; k0 += NT) {
    const int valid = min(NT, seq - k0);
    __syncthreads();  // the previous tile is no longer read
    load_tile<HD, NT, C::kThreads>(ks, kb + k0 * kv_stride, kv_stride, valid);
    load_tile<HD, NT, C::kThreads>(vs, vb + k0 * kv_stride, kv_stride, valid);
    __syncthreads();
    // Key 0 is visible to every row, so mx is finite from the first tile on.
    float s[NT];
    float mx = m;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      float d = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) d += dot4(qr[i], ks[j][lane + L * i]);
      d = group_sum<L>(d);
      s[j] = k0 + j <= t ? d * scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    const float alpha = exp2f(m - mx);  // 0 on the first tile (m = -inf)
    l *= alpha;
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = scale4(o[i], alpha);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const float p = exp2f(s[j] - mx);
      l += p;
#pragma unroll
      for (int i = 0; i < 4; ++i) axpy4(o[i], p, vs[j][lane + L * i]);
    }
    m = mx;
  }
  if (!live) return;
  const float inv = 1.f / l;
#pragma unroll
  for (int i = 0; i < 4; ++i) store4(ctx + q_off + 4 * (lane + L * i), scale4(o[i], inv));
  if (lane == 0) {
    lse[(static_cast<int64_t>(b) * heads + h) * seq + t] = (m + log2f(l)) * kLn2;
  }
}

// ---- backward ---------------------------------------------------------------------------------

// dd[b,h,t] = sum_i dctx[b,t,h,i] ctx[b,t,h,i]: one warp per (b, t, h) row, 8 rows per block.
// dd (B, Hq, T); dctx, ctx (B, T, Hq, HD).
template <class T, int HD>
__global__ void __launch_bounds__(256)
    row_dot_kernel(float* dd, const T* dctx, const T* ctx, int64_t rows, int seq, int heads) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (r >= rows) return;  // whole warps leave together
  float s = 0.f;
  for (int c = lane; c < HD / 4; c += 32) {
    s += dot4(load4(dctx + r * HD + 4 * c), load4(ctx + r * HD + 4 * c));
  }
  s = group_sum<32>(s);
  if (lane == 0) {
    const int64_t h = r % heads, t = (r / heads) % seq, b = r / (static_cast<int64_t>(heads) * seq);
    dd[(b * heads + h) * seq + t] = s;
  }
}

// dk, dv: grid (key tiles, Hkv, B), the block's 64 keys held in registers; loops over the query
// heads of the kv head, then over the query tiles at or after the key tile, in order.
//   p = exp(q.k scale - lse), dv += p dctx, ds = p (dctx.v - D), dk += ds q (times scale at the
//   end)
template <class T, int HD>
__global__ void __launch_bounds__(Cfg<HD>::kThreads)
    flash_backward_dkdv_kernel(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dctx,
                               const float* lse, const float* dd, int seq, int heads, int kv_heads,
                               float scale, float scale_log2) {
  using C = Cfg<HD>;
  constexpr int L = C::kLanes, NT = C::kTile;
  __shared__ float4 qs[NT][C::kChunks];
  __shared__ float4 dos[NT][C::kChunks];
  __shared__ float lse_s[NT];  // lse * log2(e)
  __shared__ float d_s[NT];

  const int g = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int group = heads / kv_heads;
  const int row = static_cast<int>(threadIdx.x) / L, lane = static_cast<int>(threadIdx.x) % L;
  const int k0 = static_cast<int>(blockIdx.x) * C::kRows, s_pos = k0 + row;
  const bool live = s_pos < seq;
  const int64_t q_stride = static_cast<int64_t>(heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const int64_t kv_off =
      (static_cast<int64_t>(b) * seq + s_pos) * kv_stride + static_cast<int64_t>(g) * HD;

  float4 kr[4], vr[4], dk_acc[4], dv_acc[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    kr[i] = live ? load4(k + kv_off + 4 * (lane + L * i)) : zero4();
    vr[i] = live ? load4(v + kv_off + 4 * (lane + L * i)) : zero4();
    dk_acc[i] = zero4();
    dv_acc[i] = zero4();
  }
  for (int h = g * group; h < (g + 1) * group; ++h) {
    const T* qb = q + static_cast<int64_t>(b) * seq * q_stride + static_cast<int64_t>(h) * HD;
    const T* ob = dctx + static_cast<int64_t>(b) * seq * q_stride + static_cast<int64_t>(h) * HD;
    const float* lse_row = lse + (static_cast<int64_t>(b) * heads + h) * seq;
    const float* d_row = dd + (static_cast<int64_t>(b) * heads + h) * seq;
    // k0 is a multiple of NT, so the first query tile starts at the block's first key.
    for (int q0 = k0; q0 < seq; q0 += NT) {
      const int valid = min(NT, seq - q0);
      __syncthreads();
      load_tile<HD, NT, C::kThreads>(qs, qb + q0 * q_stride, q_stride, valid);
      load_tile<HD, NT, C::kThreads>(dos, ob + q0 * q_stride, q_stride, valid);
      for (int e = static_cast<int>(threadIdx.x); e < NT; e += C::kThreads) {
        lse_s[e] = e < valid ? lse_row[q0 + e] * kLog2e : 0.f;
        d_s[e] = e < valid ? d_row[q0 + e] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int j = 0; j < NT; ++j) {
        const int t = q0 + j;
        float sc = 0.f, dp = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          sc += dot4(kr[i], qs[j][lane + L * i]);
          dp += dot4(vr[i], dos[j][lane + L * i]);
        }
        sc = group_sum<L>(sc);
        dp = group_sum<L>(dp);
        const float p = s_pos <= t && t < seq ? exp2f(sc * scale_log2 - lse_s[j]) : 0.f;
        const float ds = p * (dp - d_s[j]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          axpy4(dv_acc[i], p, dos[j][lane + L * i]);
          axpy4(dk_acc[i], ds, qs[j][lane + L * i]);
        }
      }
    }
  }
  if (!live) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    store4(dk + kv_off + 4 * (lane + L * i), scale4(dk_acc[i], scale));
    store4(dv + kv_off + 4 * (lane + L * i), dv_acc[i]);
  }
}

// dq: grid (query tiles, Hq, B), the last tile first; loops over the key tiles at or below the
// diagonal, in order.  dq = scale sum_s p (dctx.v_s - D) k_s
template <class T, int HD>
__global__ void __launch_bounds__(Cfg<HD>::kThreads)
    flash_backward_dq_kernel(T* dq, const T* q, const T* k, const T* v, const T* dctx,
                             const float* lse, const float* dd, int seq, int heads, int kv_heads,
                             float scale, float scale_log2) {
  using C = Cfg<HD>;
  constexpr int L = C::kLanes, NT = C::kTile;
  __shared__ float4 ks[NT][C::kChunks];
  __shared__ float4 vs[NT][C::kChunks];

  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int g = h / (heads / kv_heads);
  const int row = static_cast<int>(threadIdx.x) / L, lane = static_cast<int>(threadIdx.x) % L;
  const int q0 = tile * C::kRows, t = q0 + row;
  const bool live = t < seq;
  const int64_t q_stride = static_cast<int64_t>(heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const int64_t q_off =
      (static_cast<int64_t>(b) * seq + t) * q_stride + static_cast<int64_t>(h) * HD;
  const int64_t stat = (static_cast<int64_t>(b) * heads + h) * seq + t;

  float4 qr[4], orow[4], dq_acc[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    qr[i] = live ? load4(q + q_off + 4 * (lane + L * i)) : zero4();
    orow[i] = live ? load4(dctx + q_off + 4 * (lane + L * i)) : zero4();
    dq_acc[i] = zero4();
  }
  const float lse2 = live ? lse[stat] * kLog2e : 0.f;
  const float d_t = live ? dd[stat] : 0.f;
  const T* kb = k + static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const T* vb = v + static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const int key_end = min(seq, q0 + C::kRows);
  for (int k0 = 0; k0 < key_end; k0 += NT) {
    const int valid = min(NT, seq - k0);
    __syncthreads();
    load_tile<HD, NT, C::kThreads>(ks, kb + k0 * kv_stride, kv_stride, valid);
    load_tile<HD, NT, C::kThreads>(vs, vb + k0 * kv_stride, kv_stride, valid);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < NT; ++j) {
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sc += dot4(qr[i], ks[j][lane + L * i]);
        dp += dot4(orow[i], vs[j][lane + L * i]);
      }
      sc = group_sum<L>(sc);
      dp = group_sum<L>(dp);
      const float p = k0 + j <= t ? exp2f(sc * scale_log2 - lse2) : 0.f;
      const float ds = p * (dp - d_t);
#pragma unroll
      for (int i = 0; i < 4; ++i) axpy4(dq_acc[i], ds, ks[j][lane + L * i]);
    }
  }
  if (!live) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) store4(dq + q_off + 4 * (lane + L * i), scale4(dq_acc[i], scale));
}

// ---- decode -----------------------------------------------------------------------------------

constexpr int kDecodeChunk = 256;  // keys per split
constexpr int kDecodeThreads = 128;

// Grid (chunks, Hq, B). Each group of HD/4 threads (one float4 of the row per thread) takes
// every (threads / (HD/4))-th key of the chunk with its own online softmax; the groups are then
// merged in order. Writes the chunk's unnormalised output, running max (base 2) and sum:
//   part_o (B, Hq, chunks, HD), part_m, part_l (B, Hq, chunks); an empty chunk gets -inf, 0, 0.
template <class T, int HD>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_partial_kernel(float* part_o, float* part_m, float* part_l, const T* q, const T* k_cache,
                          const T* v_cache, const int32_t* lengths, int t_max, int heads,
                          int kv_heads, float scale_log2) {
  constexpr int LK = HD / 4, kGroups = kDecodeThreads / LK;
  __shared__ float4 o_s[kGroups][LK];
  __shared__ float m_s[kGroups], l_s[kGroups];

  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int g = h / (heads / kv_heads);
  const int grp = static_cast<int>(threadIdx.x) / LK, li = static_cast<int>(threadIdx.x) % LK;
  const int len = min(max(lengths[b], 0), t_max);
  const int c0 = chunk * kDecodeChunk, c_end = min(c0 + kDecodeChunk, len);
  const int64_t part = (static_cast<int64_t>(b) * heads + h) * chunks + chunk;

  const float4 qf = load4(q + (static_cast<int64_t>(b) * heads + h) * HD + 4 * li);
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const int64_t base = static_cast<int64_t>(b) * t_max * kv_stride + static_cast<int64_t>(g) * HD;
  float m = -INFINITY, l = 0.f;
  float4 o = zero4();
  // The loop bound is the same for the whole block, so every shuffle has all its lanes.
  for (int s0 = c0; s0 < c_end; s0 += kGroups) {
    const int s = s0 + grp;
    const bool ok = s < c_end;
    const int64_t off = base + static_cast<int64_t>(s) * kv_stride + 4 * li;
    float d = ok ? dot4(qf, load4(k_cache + off)) : 0.f;
    d = group_sum<LK>(d);
    if (ok) {
      const float sc = d * scale_log2;
      const float mx = fmaxf(m, sc);
      const float alpha = exp2f(m - mx), p = exp2f(sc - mx);
      l = l * alpha + p;
      o = scale4(o, alpha);
      axpy4(o, p, load4(v_cache + off));
      m = mx;
    }
  }
  o_s[grp][li] = o;
  if (li == 0) {
    m_s[grp] = m;
    l_s[grp] = l;
  }
  __syncthreads();
  if (threadIdx.x >= LK) return;
  float mx = -INFINITY;
  for (int i = 0; i < kGroups; ++i) mx = fmaxf(mx, m_s[i]);
  float lsum = 0.f;
  float4 osum = zero4();
  if (mx != -INFINITY) {
    for (int i = 0; i < kGroups; ++i) {
      const float w = exp2f(m_s[i] - mx);  // 0 for a group that saw no key
      lsum += l_s[i] * w;
      axpy4(osum, w, o_s[i][li]);
    }
  }
  store4(part_o + part * HD + 4 * li, osum);
  if (li == 0) {
    part_m[part] = mx;
    part_l[part] = lsum;
  }
}

// Grid (Hq, B), HD/4 threads: merges the chunks in order. ctx, q (B, Hq, HD).
template <class T, int HD>
__global__ void decode_combine_kernel(T* ctx, const float* part_o, const float* part_m,
                                      const float* part_l, int chunks, int heads) {
  const int h = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y);
  const int li = static_cast<int>(threadIdx.x);
  const int64_t first = (static_cast<int64_t>(b) * heads + h) * chunks;
  float mx = -INFINITY;
  for (int c = 0; c < chunks; ++c) mx = fmaxf(mx, part_m[first + c]);
  float lsum = 0.f;
  float4 osum = zero4();
  if (mx != -INFINITY) {
    for (int c = 0; c < chunks; ++c) {
      const float w = exp2f(part_m[first + c] - mx);
      lsum += part_l[first + c] * w;
      axpy4(osum, w, load4(part_o + (first + c) * HD + 4 * li));
    }
  }
  const float inv = lsum > 0.f ? 1.f / lsum : 0.f;  // no keys (length 0): ctx = 0
  store4(ctx + (static_cast<int64_t>(b) * heads + h) * HD + 4 * li, scale4(osum, inv));
}

// ---- forward on tensor cores (bf16) ------------------------------------------------------------
//
// FlashAttention-2's forward with mma.sync.m16n8k16 (bf16 inputs, float32 accumulators): 4 warps,
// each owning 16 of the block's 64 query rows, stream 64-key tiles of K and V through shared
// memory. In the fragment layouts of the PTX manual, with gid = lane / 4 and tig = lane % 4, a
// thread holds rows gid and gid + 8 of its warp's 16 and, of every 8 columns, columns 2 tig and
// 2 tig + 1: S = Q K^T comes out in that layout, its exponentials P are packed to bf16 in place
// as the A operand of O += P V, and the row statistics (max, sum) are reduced over the 4 threads
// of a quad. K and V tiles are row-major (rows padded by 8 elements, so that the 8 rows an
// ldmatrix phase reads fall in different banks); the B fragments come from ldmatrix (K) and
// ldmatrix.trans (V). Tiles arrive by cp.async: the next K tile loads while P V runs and the
// next V tile while Q K^T runs. The probabilities enter P V rounded to bf16; the row sums use
// them in float32, as FlashAttention does.

constexpr int kMmaRows = 64;  // queries per block
constexpr int kMmaKeys = 64;  // keys per tile
constexpr int kMmaThreads = 128;
// Shared-memory stages of the backward kernels: two (one loading while the other is read) fit in
// 48 KiB for hd 64, one for hd 128.
template <int HD>
constexpr int kMmaStages = HD == 64 ? 2 : 1;

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, the first in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return bf16_bits(lo) | (bf16_bits(hi) << 16);
}

__device__ __forceinline__ uint32_t load32(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Four 8x8 bf16 matrices; lane i gives the address of row i % 8 of matrix i / 8, and receives
// in r[m] the elements (i / 4, 2 (i % 4) .. +1) of matrix m, or with .trans the elements
// (2 (i % 4) .. +1, i / 4): the B-fragment layout either way.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
// 16 bytes global -> shared without passing through registers; zeros when !valid (src is then
// not read but must be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 2^x in one SFU instruction (ex2.approx.ftz: relative error ~2^-22, results below 2^-126
// flushed to 0, 2^-inf = 0), for the tensor-core kernels, whose probabilities are rounded to bf16
// anyway; the float32 kernels keep exp2f.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// A shared-memory tile of bf16 (as raw 16-bit values), rows padded to P elements, by cp.async
// (enqueued; complete after cp_async_wait): dst[r][d] = src[r * stride + d] for ROWS rows of HD,
// rows >= valid (>= 1) zeros. Consecutive threads take consecutive 16-byte chunks of a row.
template <int HD, int ROWS, int P>
__device__ __forceinline__ void load_rows_bf16_async(uint16_t (*dst)[P], const uint16_t* src,
                                                     int64_t stride, int valid) {
  constexpr int CH = HD / 8;
  for (int e = static_cast<int>(threadIdx.x); e < ROWS * CH; e += kMmaThreads) {
    const int r = e / CH, c = e % CH;
    cp_async16(&dst[r][8 * c], r < valid ? src + r * stride + 8 * c : src, r < valid);
  }
}

// The A fragments (16 rows x HD, row-major) of rows `lo` and `lo + 8` of a warp's 16, straight
// from global memory; a row that is not `ok` reads as zeros. a[kk] covers columns 16 kk ..+15.
template <int HD>
__device__ __forceinline__ void load_a_fragments(uint32_t (&a)[HD / 16][4], const uint16_t* lo,
                                                 bool ok_lo, const uint16_t* hi, bool ok_hi,
                                                 int tig) {
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const int d = 16 * kk + 2 * tig;
    a[kk][0] = ok_lo ? load32(lo + d) : 0u;
    a[kk][1] = ok_hi ? load32(hi + d) : 0u;
    a[kk][2] = ok_lo ? load32(lo + d + 8) : 0u;
    a[kk][3] = ok_hi ? load32(hi + d + 8) : 0u;
  }
}

// C fragments (16 x HD, float32) of rows lo and hi written as bf16, times `scale`.
template <int HD>
__device__ __forceinline__ void store_c_fragments(uint16_t* lo, bool ok_lo, uint16_t* hi,
                                                  bool ok_hi, const float (&c)[HD / 8][4],
                                                  float scale, int tig) {
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    const int d = 8 * nd + 2 * tig;
    if (ok_lo) {
      *reinterpret_cast<uint32_t*>(lo + d) = pack_bf16(c[nd][0] * scale, c[nd][1] * scale);
    }
    if (ok_hi) {
      *reinterpret_cast<uint32_t*>(hi + d) = pack_bf16(c[nd][2] * scale, c[nd][3] * scale);
    }
  }
}

// Grid (query tiles, Hq, B), the last tile first. Same arguments as flash_forward_kernel.
template <int HD>
__global__ void __launch_bounds__(kMmaThreads)
    flash_forward_mma_kernel(__nv_bfloat16* ctx, float* lse, const __nv_bfloat16* q,
                             const __nv_bfloat16* k, const __nv_bfloat16* v, int seq, int heads,
                             int kv_heads, float scale_log2) {
  constexpr int RP = HD + 8;                           // padded row of ks and vs
  constexpr int KK = HD / 16;                          // k-steps of Q K^T
  constexpr int ND = HD / 8;                           // 8-column tiles of O
  constexpr int NT = kMmaKeys / 8;                     // 8-key tiles of S
  __shared__ __align__(16) uint16_t ks[kMmaKeys][RP];  // K tile (keys, hd)
  __shared__ __align__(16) uint16_t vs[kMmaKeys][RP];  // V tile (keys, hd)

  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int g = h / (heads / kv_heads);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gid = lane / 4, tig = lane % 4;
  const int mat = lane / 8, mrow = lane % 8;  // the ldmatrix row this lane addresses
  const int q0 = tile * kMmaRows;
  const int t_lo = q0 + warp * 16 + gid, t_hi = t_lo + 8;  // the thread's two query rows
  const int64_t q_stride = static_cast<int64_t>(heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const auto* q16 = reinterpret_cast<const uint16_t*>(q);
  const int64_t off_lo =
      (static_cast<int64_t>(b) * seq + t_lo) * q_stride + static_cast<int64_t>(h) * HD;
  const int64_t off_hi = off_lo + 8 * q_stride;

  const auto* k16 = reinterpret_cast<const uint16_t*>(k) +
                    static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const auto* v16 = reinterpret_cast<const uint16_t*>(v) +
                    static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const int key_end = min(seq, q0 + kMmaRows);
  // Groups of cp.async in flight, oldest first: K(k0), V(k0) | then K(next), V(next) per tile.
  load_rows_bf16_async<HD, kMmaKeys>(ks, k16, kv_stride, min(kMmaKeys, seq));
  cp_async_commit();
  load_rows_bf16_async<HD, kMmaKeys>(vs, v16, kv_stride, min(kMmaKeys, seq));
  cp_async_commit();

  // Q as A fragments: qa[kk] covers dims 16 kk .. 16 kk + 15.
  uint32_t qa[KK][4];
  load_a_fragments<HD>(qa, q16 + off_lo, t_lo < seq, q16 + off_hi, t_hi < seq, tig);
  float o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

  for (int k0 = 0; k0 < key_end; k0 += kMmaKeys) {
    const int next = k0 + kMmaKeys;
    cp_async_wait<1>();  // K(k0) has landed
    __syncthreads();

    // S = Q K^T for the warp's 16 rows and the tile's 64 keys. ldmatrix: matrix m of 8 keys x
    // 8 dims at dims 16 kk + 8 m gives b0, b1 of k-step kk (m = 0, 1) and kk + 1 (m = 2, 3).
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KK; kk += 2) {
        uint32_t bk[4];
        ldmatrix_x4(bk, &ks[8 * nt + mrow][16 * kk + 8 * mat]);
        mma_bf16(s[nt], qa[kk], bk[0], bk[1]);
        mma_bf16(s[nt], qa[kk + 1], bk[2], bk[3]);
      }
    }
    __syncthreads();  // every warp is done with ks
    if (next < key_end) {
      load_rows_bf16_async<HD, kMmaKeys>(ks, k16 + next * kv_stride, kv_stride,
                                         min(kMmaKeys, seq - next));
    }
    cp_async_commit();

    // Scale, mask above the diagonal, and the new row maxima (key 0 is visible to every row,
    // so they are finite from the first tile on).
    float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int key = k0 + 8 * nt + 2 * tig;
      s[nt][0] = key <= t_lo ? s[nt][0] * scale_log2 : -INFINITY;
      s[nt][1] = key + 1 <= t_lo ? s[nt][1] * scale_log2 : -INFINITY;
      s[nt][2] = key <= t_hi ? s[nt][2] * scale_log2 : -INFINITY;
      s[nt][3] = key + 1 <= t_hi ? s[nt][3] * scale_log2 : -INFINITY;
      mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
      mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
    }
    mx_lo = quad_max(mx_lo);
    mx_hi = quad_max(mx_hi);
    const float a_lo = fast_exp2(m_lo - mx_lo), a_hi = fast_exp2(m_hi - mx_hi);
    l_lo *= a_lo;
    l_hi *= a_hi;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      o[nd][0] *= a_lo;
      o[nd][1] *= a_lo;
      o[nd][2] *= a_hi;
      o[nd][3] *= a_hi;
    }
    m_lo = mx_lo;
    m_hi = mx_hi;

    cp_async_wait<1>();  // V(k0) has landed (K(next) may still be in flight)
    __syncthreads();
    // O += P V, 16 keys (two S tiles) per k-step. ldmatrix.trans: matrix m of 8 keys x 8 dims at
    // keys 16 kk + 8 (m % 2), dims 8 nd + 8 (m / 2) gives b0, b1 of column tile nd (m = 0, 1)
    // and nd + 1 (m = 2, 3).
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
      float p[2][4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float* sv = s[2 * kk + half];
        p[half][0] = fast_exp2(sv[0] - mx_lo);
        p[half][1] = fast_exp2(sv[1] - mx_lo);
        p[half][2] = fast_exp2(sv[2] - mx_hi);
        p[half][3] = fast_exp2(sv[3] - mx_hi);
        l_lo += p[half][0] + p[half][1];
        l_hi += p[half][2] + p[half][3];
      }
      const uint32_t pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]),
                              pack_bf16(p[1][0], p[1][1]), pack_bf16(p[1][2], p[1][3])};
#pragma unroll
      for (int nd = 0; nd < ND; nd += 2) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, &vs[16 * kk + 8 * (mat % 2) + mrow][8 * nd + 8 * (mat / 2)]);
        mma_bf16(o[nd], pa, bv[0], bv[1]);
        mma_bf16(o[nd + 1], pa, bv[2], bv[3]);
      }
    }
    __syncthreads();  // every warp is done with vs
    if (next < key_end) {
      load_rows_bf16_async<HD, kMmaKeys>(vs, v16 + next * kv_stride, kv_stride,
                                         min(kMmaKeys, seq - next));
    }
    cp_async_commit();
  }
  cp_async_wait<0>();  // nothing is left in flight when the block exits
  // Row sums over the quad, then the output rows.
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  const float inv_lo = 1.f / l_lo, inv_hi = 1.f / l_hi;
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
    o[nd][0] *= inv_lo;
    o[nd][1] *= inv_lo;
    o[nd][2] *= inv_hi;
    o[nd][3] *= inv_hi;
  }
  auto* c16 = reinterpret_cast<uint16_t*>(ctx);
  store_c_fragments<HD>(c16 + off_lo, t_lo < seq, c16 + off_hi, t_hi < seq, o, 1.f, tig);
  if (tig == 0) {
    float* lse_row = lse + (static_cast<int64_t>(b) * heads + h) * seq;
    if (t_lo < seq) lse_row[t_lo] = (m_lo + log2f(l_lo)) * kLn2;
    if (t_hi < seq) lse_row[t_hi] = (m_hi + log2f(l_hi)) * kLn2;
  }
}

// ---- backward on tensor cores (bf16) -----------------------------------------------------------
//
// FlashAttention-2's backward with the fragment layouts of the forward above: 4 warps of 16 rows,
// tiles of 64 rows of the other side in shared memory (row-major, loaded by cp.async), B
// fragments by ldmatrix, or ldmatrix.trans where the tile enters a product transposed. The
// probabilities and dS enter their products rounded to bf16, as in FlashAttention.

// dk, dv: grid (key tiles of 64, Hkv, B). Each warp holds 16 keys' K and V as A fragments and
// walks the query heads of its kv head and, for each, the query tiles from the key tile on, in
// order, 16 queries at a time:
//   S^T = K Q^T, dP^T = V dO^T, P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - D),
//   dV += P^T dO, dK += dS^T Q   (dK times scale at the end)
template <int HD>
__global__ void __launch_bounds__(kMmaThreads)
    flash_backward_dkdv_mma_kernel(__nv_bfloat16* dk, __nv_bfloat16* dv, const __nv_bfloat16* q,
                                   const __nv_bfloat16* k, const __nv_bfloat16* v,
                                   const __nv_bfloat16* dctx, const float* lse, const float* dd,
                                   int seq, int heads, int kv_heads, float scale,
                                   float scale_log2) {
  constexpr int BQ = kMmaRows;
  constexpr int RP = HD + 8, KK = HD / 16, ND = HD / 8;
  constexpr int ST = kMmaStages<HD>;
  __shared__ __align__(16) uint16_t qs[ST][BQ][RP];
  __shared__ __align__(16) uint16_t os[ST][BQ][RP];
  __shared__ float lse_s[ST][BQ];  // lse * log2(e)
  __shared__ float d_s[ST][BQ];

  const int g = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int group = heads / kv_heads;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gid = lane / 4, tig = lane % 4;
  const int mat = lane / 8, mrow = lane % 8;  // the ldmatrix row this lane addresses
  const int k0 = static_cast<int>(blockIdx.x) * kMmaRows;
  const int kw0 = k0 + 16 * warp;               // the warp's first key
  const int s_lo = kw0 + gid, s_hi = s_lo + 8;  // the thread's two key rows
  const int64_t q_stride = static_cast<int64_t>(heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const int64_t kv_lo =
      (static_cast<int64_t>(b) * seq + s_lo) * kv_stride + static_cast<int64_t>(g) * HD;
  const int64_t kv_hi = kv_lo + 8 * kv_stride;
  const auto* k16 = reinterpret_cast<const uint16_t*>(k);
  const auto* v16 = reinterpret_cast<const uint16_t*>(v);

  uint32_t ka[KK][4], va[KK][4];
  load_a_fragments<HD>(ka, k16 + kv_lo, s_lo < seq, k16 + kv_hi, s_hi < seq, tig);
  load_a_fragments<HD>(va, v16 + kv_lo, s_lo < seq, v16 + kv_hi, s_hi < seq, tig);
  float dk_acc[ND][4], dv_acc[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[nd][e] = dv_acc[nd][e] = 0.f;
  }

  // Steps: the query heads of the group, and for each the query tiles from the block's first key
  // on (k0 is a multiple of BQ). Step i is loaded into stage i % ST.
  const int tiles = (seq - k0 + BQ - 1) / BQ, steps = group * tiles;
  const auto issue = [&](int i) {
    const int h = g * group + i / tiles, q0 = k0 + (i % tiles) * BQ, stage = i % ST;
    const int valid = min(BQ, seq - q0);
    const int64_t rows =
        (static_cast<int64_t>(b) * seq + q0) * q_stride + static_cast<int64_t>(h) * HD;
    load_rows_bf16_async<HD, BQ>(qs[stage], reinterpret_cast<const uint16_t*>(q) + rows, q_stride,
                                 valid);
    load_rows_bf16_async<HD, BQ>(os[stage], reinterpret_cast<const uint16_t*>(dctx) + rows,
                                 q_stride, valid);
    const int64_t stat = (static_cast<int64_t>(b) * heads + h) * seq + q0;
    for (int e = static_cast<int>(threadIdx.x); e < BQ; e += kMmaThreads) {
      lse_s[stage][e] = e < valid ? lse[stat + e] * kLog2e : 0.f;
      d_s[stage][e] = e < valid ? dd[stat + e] : 0.f;
    }
  };
  issue(0);
  cp_async_commit();
  for (int i = 0; i < steps; ++i) {
    if constexpr (ST == 2) {  // load the next step while this one runs
      if (i + 1 < steps) issue(i + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    {
      const int q0 = k0 + (i % tiles) * BQ, stage = i % ST;
#pragma unroll
      for (int j = 0; j < BQ / 16; ++j) {
        if (q0 + 16 * j + 15 < kw0) continue;  // every query of the slice precedes the warp's keys
        float st[2][4], dpt[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
          for (int kk = 0; kk < KK; kk += 2) {
            uint32_t bq[4], bo[4];
            ldmatrix_x4(bq, &qs[stage][16 * j + 8 * nt + mrow][16 * kk + 8 * mat]);
            ldmatrix_x4(bo, &os[stage][16 * j + 8 * nt + mrow][16 * kk + 8 * mat]);
            mma_bf16(st[nt], ka[kk], bq[0], bq[1]);
            mma_bf16(st[nt], ka[kk + 1], bq[2], bq[3]);
            mma_bf16(dpt[nt], va[kk], bo[0], bo[1]);
            mma_bf16(dpt[nt], va[kk + 1], bo[2], bo[3]);
          }
        }
        // Element e of tile nt: key row e < 2 ? s_lo : s_hi, query column 16 j + 8 nt + 2 tig +
        // (e & 1) of the tile.
        float p[2][4], ds[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = 16 * j + 8 * nt + 2 * tig + (e & 1);
            const int t = q0 + col;
            const int s_row = e < 2 ? s_lo : s_hi;
            p[nt][e] =
                s_row <= t && t < seq ? fast_exp2(st[nt][e] * scale_log2 - lse_s[stage][col]) : 0.f;
            ds[nt][e] = p[nt][e] * (dpt[nt][e] - d_s[stage][col]);
          }
        }
        const uint32_t pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]),
                                pack_bf16(p[1][0], p[1][1]), pack_bf16(p[1][2], p[1][3])};
        const uint32_t dsa[4] = {pack_bf16(ds[0][0], ds[0][1]), pack_bf16(ds[0][2], ds[0][3]),
                                 pack_bf16(ds[1][0], ds[1][1]), pack_bf16(ds[1][2], ds[1][3])};
#pragma unroll
        for (int nd = 0; nd < ND; nd += 2) {
          uint32_t bo[4], bq[4];
          ldmatrix_x4_trans(bo, &os[stage][16 * j + 8 * (mat % 2) + mrow][8 * nd + 8 * (mat / 2)]);
          ldmatrix_x4_trans(bq, &qs[stage][16 * j + 8 * (mat % 2) + mrow][8 * nd + 8 * (mat / 2)]);
          mma_bf16(dv_acc[nd], pa, bo[0], bo[1]);
          mma_bf16(dv_acc[nd + 1], pa, bo[2], bo[3]);
          mma_bf16(dk_acc[nd], dsa, bq[0], bq[1]);
          mma_bf16(dk_acc[nd + 1], dsa, bq[2], bq[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage
    if constexpr (ST == 1) {
      if (i + 1 < steps) issue(i + 1);
      cp_async_commit();
    }
  }
  auto* dk16 = reinterpret_cast<uint16_t*>(dk);
  auto* dv16 = reinterpret_cast<uint16_t*>(dv);
  store_c_fragments<HD>(dk16 + kv_lo, s_lo < seq, dk16 + kv_hi, s_hi < seq, dk_acc, scale, tig);
  store_c_fragments<HD>(dv16 + kv_lo, s_lo < seq, dv16 + kv_hi, s_hi < seq, dv_acc, 1.f, tig);
}

// dq: grid (query tiles of 64, Hq, B), the last tile first. Each warp holds 16 queries' Q and dO
// as A fragments and walks the key tiles at or below the diagonal, in order, 16 keys at a time:
//   S = Q K^T, dP = dO V^T, P = exp(S scale - lse), dS = P (dP - D), dQ += dS K
template <int HD>
__global__ void __launch_bounds__(kMmaThreads)
    flash_backward_dq_mma_kernel(__nv_bfloat16* dq, const __nv_bfloat16* q, const __nv_bfloat16* k,
                                 const __nv_bfloat16* v, const __nv_bfloat16* dctx,
                                 const float* lse, const float* dd, int seq, int heads,
                                 int kv_heads, float scale, float scale_log2) {
  constexpr int BK = kMmaKeys;
  constexpr int RP = HD + 8, KK = HD / 16, ND = HD / 8;
  constexpr int ST = kMmaStages<HD>;
  __shared__ __align__(16) uint16_t ks[ST][BK][RP];
  __shared__ __align__(16) uint16_t vs[ST][BK][RP];

  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int g = h / (heads / kv_heads);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gid = lane / 4, tig = lane % 4;
  const int mat = lane / 8, mrow = lane % 8;  // the ldmatrix row this lane addresses
  const int q0 = tile * kMmaRows;
  const int qw_last = q0 + 16 * warp + 15;  // the warp's last query
  const int t_lo = q0 + 16 * warp + gid, t_hi = t_lo + 8;
  const int64_t q_stride = static_cast<int64_t>(heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(kv_heads) * HD;
  const int64_t off_lo =
      (static_cast<int64_t>(b) * seq + t_lo) * q_stride + static_cast<int64_t>(h) * HD;
  const int64_t off_hi = off_lo + 8 * q_stride;
  const auto* q16 = reinterpret_cast<const uint16_t*>(q);
  const auto* o16 = reinterpret_cast<const uint16_t*>(dctx);

  uint32_t qa[KK][4], oa[KK][4];
  load_a_fragments<HD>(qa, q16 + off_lo, t_lo < seq, q16 + off_hi, t_hi < seq, tig);
  load_a_fragments<HD>(oa, o16 + off_lo, t_lo < seq, o16 + off_hi, t_hi < seq, tig);
  const int64_t stat = (static_cast<int64_t>(b) * heads + h) * seq;
  const float lse_lo = t_lo < seq ? lse[stat + t_lo] * kLog2e : 0.f;
  const float lse_hi = t_hi < seq ? lse[stat + t_hi] * kLog2e : 0.f;
  const float d_lo = t_lo < seq ? dd[stat + t_lo] : 0.f;
  const float d_hi = t_hi < seq ? dd[stat + t_hi] : 0.f;
  float dq_acc[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dq_acc[nd][e] = 0.f;
  }

  const int64_t kv_off = static_cast<int64_t>(b) * seq * kv_stride + static_cast<int64_t>(g) * HD;
  const auto* kb = reinterpret_cast<const uint16_t*>(k) + kv_off;
  const auto* vb = reinterpret_cast<const uint16_t*>(v) + kv_off;
  // Steps: the key tiles at or below the diagonal; step i is loaded into stage i % ST.
  const int steps = (min(seq, q0 + kMmaRows) + BK - 1) / BK;
  const auto issue = [&](int i) {
    const int k0 = i * BK, stage = i % ST;
    load_rows_bf16_async<HD, BK>(ks[stage], kb + k0 * kv_stride, kv_stride, min(BK, seq - k0));
    load_rows_bf16_async<HD, BK>(vs[stage], vb + k0 * kv_stride, kv_stride, min(BK, seq - k0));
  };
  issue(0);
  cp_async_commit();
  for (int i = 0; i < steps; ++i) {
    if constexpr (ST == 2) {  // load the next step while this one runs
      if (i + 1 < steps) issue(i + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int k0 = i * BK, stage = i % ST;
#pragma unroll
    for (int j = 0; j < BK / 16; ++j) {
      if (k0 + 16 * j > qw_last) continue;  // every key of the slice follows the warp's queries
      float s[2][4], dp[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KK; kk += 2) {
          uint32_t bk[4], bv[4];
          ldmatrix_x4(bk, &ks[stage][16 * j + 8 * nt + mrow][16 * kk + 8 * mat]);
          ldmatrix_x4(bv, &vs[stage][16 * j + 8 * nt + mrow][16 * kk + 8 * mat]);
          mma_bf16(s[nt], qa[kk], bk[0], bk[1]);
          mma_bf16(s[nt], qa[kk + 1], bk[2], bk[3]);
          mma_bf16(dp[nt], oa[kk], bv[0], bv[1]);
          mma_bf16(dp[nt], oa[kk + 1], bv[2], bv[3]);
        }
      }
      float ds[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + 16 * j + 8 * nt + 2 * tig + (e & 1);
          const bool lo = e < 2;
          const float p = key <= (lo ? t_lo : t_hi)
                              ? fast_exp2(s[nt][e] * scale_log2 - (lo ? lse_lo : lse_hi))
                              : 0.f;
          ds[nt][e] = p * (dp[nt][e] - (lo ? d_lo : d_hi));
        }
      }
      const uint32_t dsa[4] = {pack_bf16(ds[0][0], ds[0][1]), pack_bf16(ds[0][2], ds[0][3]),
                               pack_bf16(ds[1][0], ds[1][1]), pack_bf16(ds[1][2], ds[1][3])};
#pragma unroll
      for (int nd = 0; nd < ND; nd += 2) {
        uint32_t bk[4];
        ldmatrix_x4_trans(bk, &ks[stage][16 * j + 8 * (mat % 2) + mrow][8 * nd + 8 * (mat / 2)]);
        mma_bf16(dq_acc[nd], dsa, bk[0], bk[1]);
        mma_bf16(dq_acc[nd + 1], dsa, bk[2], bk[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage
    if constexpr (ST == 1) {
      if (i + 1 < steps) issue(i + 1);
      cp_async_commit();
    }
  }
  auto* dq16 = reinterpret_cast<uint16_t*>(dq);
  store_c_fragments<HD>(dq16 + off_lo, t_lo < seq, dq16 + off_hi, t_hi < seq, dq_acc, scale, tig);
}

// ---- launchers --------------------------------------------------------------------------------

// Device scratch on a stream, freed on the same stream when it goes out of scope.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    ENGRAM_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~StreamScratch() { (void)cudaFreeAsync(ptr_, stream_); }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  float* floats() const { return static_cast<float*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

unsigned tiles_of(int64_t n, int64_t tile) {
  return static_cast<unsigned>((n + tile - 1) / tile);
}

template <class T, int HD>
void forward(void* ctx, float* lse, const void* q, const void* k, const void* v,
             const AttentionDims& d, float scale, cudaStream_t st) {
  using C = Cfg<HD>;
  const dim3 grid(tiles_of(d.seq, C::kRows), static_cast<unsigned>(d.heads),
                  static_cast<unsigned>(d.batch));
  flash_forward_kernel<T, HD><<<grid, C::kThreads, 0, st>>>(
      static_cast<T*>(ctx), lse, static_cast<const T*>(q), static_cast<const T*>(k),
      static_cast<const T*>(v), static_cast<int>(d.seq), static_cast<int>(d.heads),
      static_cast<int>(d.kv_heads), scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <int HD>
void forward_mma(void* ctx, float* lse, const void* q, const void* k, const void* v,
                 const AttentionDims& d, float scale, cudaStream_t st) {
  const dim3 grid(tiles_of(d.seq, kMmaRows), static_cast<unsigned>(d.heads),
                  static_cast<unsigned>(d.batch));
  flash_forward_mma_kernel<HD><<<grid, kMmaThreads, 0, st>>>(
      static_cast<__nv_bfloat16*>(ctx), lse, static_cast<const __nv_bfloat16*>(q),
      static_cast<const __nv_bfloat16*>(k), static_cast<const __nv_bfloat16*>(v),
      static_cast<int>(d.seq), static_cast<int>(d.heads), static_cast<int>(d.kv_heads),
      scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class T, int HD>
void backward(void* dq, void* dk, void* dv, const void* dctx, const void* q, const void* k,
              const void* v, const void* ctx, const float* lse, const AttentionDims& d, float scale,
              cudaStream_t st) {
  using C = Cfg<HD>;
  const int64_t rows = d.batch * d.seq * d.heads;
  const StreamScratch dd(static_cast<size_t>(rows) * sizeof(float), st);
  const int seq = static_cast<int>(d.seq), heads = static_cast<int>(d.heads);
  const int kv_heads = static_cast<int>(d.kv_heads);
  const auto* qt = static_cast<const T*>(q);
  const auto* kt = static_cast<const T*>(k);
  const auto* vt = static_cast<const T*>(v);
  const auto* ot = static_cast<const T*>(dctx);
  row_dot_kernel<T, HD><<<tiles_of(rows, 8), 256, 0, st>>>(
      dd.floats(), ot, static_cast<const T*>(ctx), rows, seq, heads);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const dim3 kv_grid(tiles_of(d.seq, C::kRows), static_cast<unsigned>(d.kv_heads),
                     static_cast<unsigned>(d.batch));
  flash_backward_dkdv_kernel<T, HD><<<kv_grid, C::kThreads, 0, st>>>(
      static_cast<T*>(dk), static_cast<T*>(dv), qt, kt, vt, ot, lse, dd.floats(), seq, heads,
      kv_heads, scale, scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const dim3 q_grid(tiles_of(d.seq, C::kRows), static_cast<unsigned>(d.heads),
                    static_cast<unsigned>(d.batch));
  flash_backward_dq_kernel<T, HD><<<q_grid, C::kThreads, 0, st>>>(static_cast<T*>(dq), qt, kt, vt,
                                                                  ot, lse, dd.floats(), seq, heads,
                                                                  kv_heads, scale, scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <int HD>
void backward_mma(void* dq, void* dk, void* dv, const void* dctx, const void* q, const void* k,
                  const void* v, const void* ctx, const float* lse, const AttentionDims& d,
                  float scale, cudaStream_t st) {
  using T = __nv_bfloat16;
  const int64_t rows = d.batch * d.seq * d.heads;
  const StreamScratch dd(static_cast<size_t>(rows) * sizeof(float), st);
  const int seq = static_cast<int>(d.seq), heads = static_cast<int>(d.heads);
  const int kv_heads = static_cast<int>(d.kv_heads);
  const auto* qt = static_cast<const T*>(q);
  const auto* kt = static_cast<const T*>(k);
  const auto* vt = static_cast<const T*>(v);
  const auto* ot = static_cast<const T*>(dctx);
  row_dot_kernel<T, HD><<<tiles_of(rows, 8), 256, 0, st>>>(
      dd.floats(), ot, static_cast<const T*>(ctx), rows, seq, heads);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const dim3 kv_grid(tiles_of(d.seq, kMmaRows), static_cast<unsigned>(d.kv_heads),
                     static_cast<unsigned>(d.batch));
  flash_backward_dkdv_mma_kernel<HD><<<kv_grid, kMmaThreads, 0, st>>>(
      static_cast<T*>(dk), static_cast<T*>(dv), qt, kt, vt, ot, lse, dd.floats(), seq, heads,
      kv_heads, scale, scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  const dim3 q_grid(tiles_of(d.seq, kMmaRows), static_cast<unsigned>(d.heads),
                    static_cast<unsigned>(d.batch));
  flash_backward_dq_mma_kernel<HD><<<q_grid, kMmaThreads, 0, st>>>(static_cast<T*>(dq), qt, kt, vt,
                                                                   ot, lse, dd.floats(), seq, heads,
                                                                   kv_heads, scale, scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

template <class T, int HD>
void decode(void* ctx, const void* q, const void* k_cache, const void* v_cache,
            const int32_t* lengths, const AttentionDims& d, float scale, cudaStream_t st) {
  const int chunks = static_cast<int>(tiles_of(d.seq, kDecodeChunk));
  const int64_t parts = d.batch * d.heads * chunks;
  const StreamScratch scratch(static_cast<size_t>(parts * (HD + 2)) * sizeof(float), st);
  float* part_o = scratch.floats();
  float* part_m = part_o + parts * HD;
  float* part_l = part_m + parts;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(d.heads),
                  static_cast<unsigned>(d.batch));
  decode_partial_kernel<T, HD><<<grid, kDecodeThreads, 0, st>>>(
      part_o, part_m, part_l, static_cast<const T*>(q), static_cast<const T*>(k_cache),
      static_cast<const T*>(v_cache), lengths, static_cast<int>(d.seq), static_cast<int>(d.heads),
      static_cast<int>(d.kv_heads), scale * kLog2e);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
  decode_combine_kernel<T, HD>
      <<<dim3(static_cast<unsigned>(d.heads), static_cast<unsigned>(d.batch)), HD / 4, 0, st>>>(
          static_cast<T*>(ctx), part_o, part_m, part_l, chunks, static_cast<int>(d.heads));
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_flash_forward(void* ctx, float* lse, const void* q, const void* k, const void* v,
                          bool bf16, bool tensor_cores, const AttentionDims& d, float scale,
                          void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  if (bf16 && tensor_cores) {
    if (d.head_dim == 64) return forward_mma<64>(ctx, lse, q, k, v, d, scale, st);
    return forward_mma<128>(ctx, lse, q, k, v, d, scale, st);
  }
  if (bf16) {
    if (d.head_dim == 64) return forward<__nv_bfloat16, 64>(ctx, lse, q, k, v, d, scale, st);
    return forward<__nv_bfloat16, 128>(ctx, lse, q, k, v, d, scale, st);
  }
  if (d.head_dim == 64) return forward<float, 64>(ctx, lse, q, k, v, d, scale, st);
  forward<float, 128>(ctx, lse, q, k, v, d, scale, st);
}

void launch_flash_backward(void* dq, void* dk, void* dv, const void* dctx, const void* q,
                           const void* k, const void* v, const void* ctx, const float* lse,
                           bool bf16, bool tensor_cores, const AttentionDims& d, float scale,
                           void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  if (bf16 && tensor_cores) {
    if (d.head_dim == 64) {
      return backward_mma<64>(dq, dk, dv, dctx, q, k, v, ctx, lse, d, scale, st);
    }
    return backward_mma<128>(dq, dk, dv, dctx, q, k, v, ctx, lse, d, scale, st);
  }
  if (bf16) {
    if (d.head_dim == 64) {
      return backward<__nv_bfloat16, 64>(dq, dk, dv, dctx, q, k, v, ctx, lse, d, scale, st);
    }
    return backward<__nv_bfloat16, 128>(dq, dk, dv, dctx, q, k, v, ctx, lse, d, scale, st);
  }
  if (d.head_dim == 64)
    return backward<float, 64>(dq, dk, dv, dctx, q, k, v, ctx, lse, d, scale, st);
  backward<float, 128>(dq, dk, dv, dctx, q, k, v, ctx, lse, d, scale, st);
}

void launch_attention_decode(void* ctx, const void* q, const void* k_cache, const void* v_cache,
                             const int32_t* lengths, bool bf16, const AttentionDims& d, float scale,
                             void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  if (bf16) {
    if (d.head_dim == 64) {
      return decode<__nv_bfloat16, 64>(ctx, q, k_cache, v_cache, lengths, d, scale, st);
    }
    return decode<__nv_bfloat16, 128>(ctx, q, k_cache, v_cache, lengths, d, scale, st);
  }
  if (d.head_dim == 64) return decode<float, 64>(ctx, q, k_cache, v_cache, lengths, d, scale, st);
  decode<float, 128>(ctx, q, k_cache, v_cache, lengths, d, scale, st);
}

}  // namespace engram::cuda::detail
