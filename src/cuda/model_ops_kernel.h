// Launchers of the kernels in src/cuda/model_ops.cu, in plain types, called by
// src/cuda/model_ops.cpp after it has checked the arguments (the .cu file is C++17).
#pragma once

#include <cstddef>
#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda::detail {

// All sizes >= 1 unless said otherwise.
void launch_embedding_forward(float* out, const int64_t* ids, const float* table, int64_t tokens,
                              int64_t streams, int64_t c, void* stream);
void launch_streams_sum(float* dx, const float* dout, int64_t tokens, int64_t streams, int64_t c,
                        void* stream);

// slots[i] = i for i < n (the sparse row sum's slots; src/cuda/sparse_rows_kernel.h).
void launch_slots(int32_t* slots, int64_t n, void* stream);

void launch_add(float* y, const float* x, int64_t n, void* stream);
void launch_scale(float* x, float s, int64_t n, void* stream);
void launch_copy_bytes(void* dst, const void* src, size_t bytes, void* stream);
void launch_zero_bytes(void* x, size_t bytes, void* stream);
void launch_cast_to_bf16(bf16* out, const float* x, int64_t n, void* stream);
void launch_cast_to_f32(float* out, const bf16* x, int64_t n, void* stream);
// Waits for the stream.
double launch_sum_squares(const float* x, int64_t n, void* stream);

}  // namespace engram::cuda::detail
