// Causal softmax attention on the GPU, the part of nn::attention_forward / attention_backward
// between the projections: the caller computes q = x Wq^T, k, v (cuBLAS) and applies RoPE
// (cuda::rope_forward); these functions compute
//
//   ctx[b,t,h] = sum_{s <= t} softmax_s(q[b,t,h] . k[b,s,g(h)] * scale) v[b,s,g(h)]
//
// flash-attention style: keys and values stream through shared memory in tiles, each query row
// keeps a running maximum and sum (online softmax), and the T x T score matrix is never stored.
// Query head h reads key/value head g(h) = h / (Hq / Hkv), as in nn/attention.h (Hkv == Hq is
// multi-head attention). The model uses scale = 1 / sqrt(hd).
//
// Layouts, row-major, as the projections write them:
//   q, ctx, dq, dctx   (B, T, Hq, hd)
//   k, v, dk, dv       (B, T, Hkv, hd)
//   lse                (B, Hq, T) float32: lse[b,h,t] = log sum_{s <= t} exp(q.k_s * scale)
// Element type of q/k/v/ctx and their gradients: DType::kF32 or DType::kBF16 (one type for all of
// them in a call). lse, the softmax statistics and every accumulation are float32; outputs are
// rounded once on store. (For bf16, AttentionKernel below says where products are bf16.)
//
// Conventions, for every function here:
//   * Pointers are device memory, valid for the sizes given (not checked), and aligned to 16
//     bytes, which cudaMalloc'd buffers and offsets of whole rows are (checked: InputError).
//     `stream` is a cudaStream_t (nullptr = the default stream); work is enqueued and the call
//     returns at once.
//   * The arguments are checked before anything touches the device: negative sizes, kv_heads
//     not dividing heads (or < 1), a head_dim other than 64 or 128, an element type other than
//     kF32 / kBF16, or a scale that is not finite throw engram::InputError naming the function
//     and the value. Sizes of 0 (batch, seq or heads) do nothing.
//   * Launch failures throw engram::Error naming the CUDA call. A build without CUDA has the
//     same functions, each throwing engram::Error("... built without CUDA").
//   * Results do not depend on timing: every sum runs in a fixed order (no atomics), so
//     repeated calls give identical bits.
//
// This header is plain C++17 (no <span>), so that .cu files can include it.
#pragma once

#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda {

struct FlashAttentionShape {
  int64_t batch;     // B
  int64_t seq;       // T (attention_decode: Tmax, the capacity of the KV cache)
  int64_t heads;     // Hq
  int64_t kv_heads;  // Hkv, divides Hq
  int64_t head_dim;  // hd: 64 or 128
};

// Which kernels run for bf16 (float32 always runs kPlain):
//   kAuto   tensor cores (mma.sync m16n8k16, bf16 products, float32 accumulators). As in
//           FlashAttention, the probabilities (and in backward dS) are rounded to bf16 before
//           they enter a product (|ctx - kPlain's ctx| ~ 1e-3 of ctx's scale); row maxima, sums,
//           lse and D stay float32.
//   kPlain  float32 math on bf16 values widened on load: the reference the other is tested
//           against.
enum class AttentionKernel : uint8_t { kAuto, kPlain };

// Forward. ctx (B, T, Hq, hd) and lse (B, Hq, T) are written; q (B, T, Hq, hd),
// k, v (B, T, Hkv, hd) are read. `type` is the element type of ctx, q, k and v.
// Blocks of 64 query rows of one (b, h) stream the key/value tiles at or below their diagonal.
void flash_attention_forward(void* ctx, float* lse, const void* q, const void* k, const void* v,
                             DType type, const FlashAttentionShape& shape, float scale,
                             void* stream = nullptr,
                             AttentionKernel kernel = AttentionKernel::kAuto);

// Backward (FlashAttention-2): from dctx (B, T, Hq, hd) and what forward read and wrote
// (q, k, v, ctx, lse), writes (not +=)
//   P[t,s] = exp(q_t . k_s * scale - lse_t) for s <= t (0 above the diagonal)
//   D[t]   = sum_i dctx[t,i] ctx[t,i]
//   dS     = P * (dctx v^T - D)
//   dq     = scale dS k               (B, T, Hq, hd)
//   dk     = scale dS^T q,  dv = P^T dctx, each summed over the query heads of the kv head
//                                     (B, T, Hkv, hd)
// P is recomputed from lse, never stored. dk and dv of one (b, kv head, key tile) are summed by
// one block over its query heads and query tiles in order; dq by one block per (b, h, query
// tile) over the key tiles in order. Scratch: D, B*Hq*T floats, allocated and freed on
// `stream` (cudaMallocAsync / cudaFreeAsync). The outputs must not overlap the inputs.
void flash_attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* q,
                              const void* k, const void* v, const void* ctx, const float* lse,
                              DType type, const FlashAttentionShape& shape, float scale,
                              void* stream = nullptr,
                              AttentionKernel kernel = AttentionKernel::kAuto);

// Decode: one new query per sequence against a KV cache.
//   q (B, Hq, hd), ctx (B, Hq, hd); k_cache, v_cache (B, Tmax, Hkv, hd) with Tmax = shape.seq;
//   lengths (B) device int32: sequence b has lengths[b] valid keys (positions 0..lengths[b]-1,
//   the new token's key and value already written at lengths[b]-1).
//   ctx[b,h] = sum_{s < lengths[b]} softmax_s(q[b,h] . k_cache[b,s,g(h)] * scale) v_cache[b,s,g(h)]
// This is flash_attention_forward's ctx at position lengths[b]-1. Positions >= lengths[b] are
// never read. A length outside [1, Tmax] is clamped to [0, Tmax]; length 0 gives ctx = 0.
// The keys are split into chunks of 256 (flash-decoding); the per-chunk partial results are
// combined in chunk order by a second kernel. Scratch: B*Hq*ceil(Tmax/256)*(hd+2) floats,
// allocated and freed on `stream` (cudaMallocAsync / cudaFreeAsync).
void attention_decode(void* ctx, const void* q, const void* k_cache, const void* v_cache,
                      const int32_t* lengths, DType type, const FlashAttentionShape& shape,
                      float scale, void* stream = nullptr);

}  // namespace engram::cuda
