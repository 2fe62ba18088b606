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

// The sparse row gradient's steps. Scratch bytes for a sort / encode / scan of n items.
size_t sparse_grad_temp_bytes(int64_t n, int end_bit);
struct SparseGradArgs {
  const float* dout;   // (n, width)
  const int64_t* ids;  // (n)
  int64_t n, width;
  int end_bit;            // key bits to sort on
  int64_t* keys;          // (n) scratch
  int64_t* keys_sorted;   // (n)
  int32_t* slots;         // (n)
  int32_t* slots_sorted;  // (n)
  int32_t* counts;        // (n)
  int32_t* starts;        // (n)
  int32_t* num_runs;      // (1)
  void* temp;
  size_t temp_bytes;
  int64_t* out_rows;  // (n)
  float* out_values;  // (n, width)
};
// Returns the number of distinct rows (waits for the stream).
int64_t launch_sparse_grad(const SparseGradArgs& a, void* stream);

void launch_add(float* y, const float* x, int64_t n, void* stream);
void launch_scale(float* x, float s, int64_t n, void* stream);
void launch_copy_bytes(void* dst, const void* src, size_t bytes, void* stream);
void launch_zero_bytes(void* x, size_t bytes, void* stream);
void launch_cast_to_bf16(bf16* out, const float* x, int64_t n, void* stream);
void launch_cast_to_f32(float* out, const bf16* x, int64_t n, void* stream);
// Waits for the stream.
double launch_sum_squares(const float* x, int64_t n, void* stream);

}  // namespace engram::cuda::detail
