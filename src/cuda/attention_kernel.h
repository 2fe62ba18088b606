// Launchers of the kernels in src/cuda/attention.cu, in plain types, called by
// src/cuda/attention.cpp after it has checked the arguments (the .cu file has no checks of its
// own). `bf16` selects the element type: true for bfloat16, false for float32;
// `tensor_cores` (with bf16 only) the mma.sync kernels instead of the float32-math ones.
#pragma once

#include <cstdint>

namespace engram::cuda::detail {

// The sizes of one call, all >= 1, heads % kv_heads == 0, head_dim 64 or 128.
struct AttentionDims {
  int64_t batch, seq, heads, kv_heads, head_dim;
};

void launch_flash_forward(void* ctx, float* lse, const void* q, const void* k, const void* v,
                          bool bf16, bool tensor_cores, const AttentionDims& d, float scale,
                          void* stream);

void launch_flash_backward(void* dq, void* dk, void* dv, const void* dctx, const void* q,
                           const void* k, const void* v, const void* ctx, const float* lse,
                           bool bf16, bool tensor_cores, const AttentionDims& d, float scale,
                           void* stream);

// d.seq is Tmax.
void launch_attention_decode(void* ctx, const void* q, const void* k_cache, const void* v_cache,
                             const int32_t* lengths, bool bf16, const AttentionDims& d, float scale,
                             void* stream);

}  // namespace engram::cuda::detail
