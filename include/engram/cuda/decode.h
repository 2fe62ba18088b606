// The pieces of incremental decoding on the GPU that training does not have: a key/value cache
// per sequence, attention of new rows over it, RoPE at per-row positions, row selection and a
// greedy argmax. infer::GpuDecoder (engram/infer/gpu_decoder.h) strings them together.
//
// A decoding step holds `rows` new tokens that may belong to different sequences; row r is
// token number pos[r] (0-based) of sequence seq[r]. The caches hold, per sequence s and
// position p < max_len, one row of kv_dim = Hkv*hd values:
//
//   k_cache, v_cache   (sequences, max_len, kv_dim)   row (s, p) at (s*max_len + p)*kv_dim
//
//   kv_cache_append      k_cache[seq[r], pos[r]] = k[r]; the same for v
//   decode_attention     ctx[r] = causal attention of q[r] over positions 0 .. pos[r] of
//                        sequence seq[r] (append first: a row attends to itself)
//   rope_at              RoPE of x[r] at angle pos[r] * theta^(-2i/hd), from cos/sin tables
//   select_rows          out[i] = x[index[i]]
//   argmax_rows          out[r] = the lowest index of row r's maximum (infer::Sampler's greedy
//                        choice, except that NaN is skipped where the sampler throws)
//
// Conventions (those of engram/cuda/ops.h): device pointers, row-major, float32; sizes checked
// (InputError), pointers not; seq/pos/index are int32 and must be in range (unchecked);
// `stream` is a cudaStream_t (nullptr: the default stream); every call only enqueues work. The
// results do not depend on timing (no atomics; fixed summation orders). A build without CUDA
// has the same functions, each throwing engram::Error("... built without CUDA").
//
// This header is plain C++17 (no <span>), so that .cu files can include it.
#pragma once

#include <cstdint>

namespace engram::cuda {

// k, v: (rows, kv_dim) each.
void kv_cache_append(float* k_cache, float* v_cache, const float* k, const float* v,
                     const int32_t* seq, const int32_t* pos, int64_t rows, int64_t kv_dim,
                     int64_t max_len, void* stream = nullptr);

// ctx (rows, q_heads*hd) from q (rows, q_heads*hd) (RoPE applied) and the caches: for query head
// h, kv head g = h / (q_heads / kv_heads),
//   s_j = scale * q[r, h] . k_cache[seq[r], j, g]     j = 0 .. pos[r]
//   ctx[r, h] = sum_j softmax(s)_j v_cache[seq[r], j, g]
// (max subtracted; float32 throughout; nn::attention_row's result to float rounding). head_dim
// must be 32, 64, 128 or 256 and q_heads a multiple of kv_heads (InputError otherwise). With
// grouped-query attention (2 to 8 query heads a kv head, head_dim <= 128) one block per (row, kv
// head) serves the group's query heads, reading each cached row once; otherwise one block per
// (row, query head). A block's warps take every fourth key and are merged at the end.
void decode_attention(float* ctx, const float* q, const float* k_cache, const float* v_cache,
                      const int32_t* seq, const int32_t* pos, int64_t rows, int64_t q_heads,
                      int64_t kv_heads, int64_t head_dim, int64_t max_len, float scale,
                      void* stream = nullptr);

// In place on x (rows, heads, head_dim), the rotate-half convention of nn::attention.h:
//   y[i] = x[i] c - x[i + hd/2] s,   y[i + hd/2] = x[i + hd/2] c + x[i] s
// with c = cos_table[pos[r]*hd/2 + i], s = sin_table[...] (tables (positions, hd/2), device; the
// CPU decoder's values, computed in double and rounded). head_dim must be even.
void rope_at(float* x, const int32_t* pos, int64_t rows, int64_t heads, int64_t head_dim,
             const float* cos_table, const float* sin_table, void* stream = nullptr);

// out (count, width) = x rows index[0 .. count) (x (*, width)).
void select_rows(float* out, const float* x, const int32_t* index, int64_t count, int64_t width,
                 void* stream = nullptr);

// out (rows) int64: per row of x (rows, cols), the index of its largest value, the lowest such
// index on ties; NaN is never chosen over a number (a row of NaNs gives 0). cols >= 1.
void argmax_rows(int64_t* out, const float* x, int64_t rows, int64_t cols, void* stream = nullptr);

}  // namespace engram::cuda
