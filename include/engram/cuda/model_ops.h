// The small pieces of the whole model on the GPU that are not a layer: the token embedding and
// its sparse gradient, the broadcast of the embedding to the residual streams and its backward,
// elementwise adds / scales / copies, float32 <-> bfloat16 casts, and the sum of squares that
// gradient clipping needs. Each matches the CPU function it names (engram/nn/embedding.h).
//
//   embedding_forward      nn::embedding_forward, then nn::broadcast_streams_forward
//   streams_sum            nn::broadcast_streams_backward (into a zeroed buffer)
//   embedding_backward     nn::embedding_backward (the same rows, the same sums, bit for bit)
//
// Conventions, for every function here:
//   * Pointers are device memory, row-major, shapes in elements; they are not checked (they must
//     be valid for the sizes given). Negative sizes throw engram::InputError naming the function
//     and the value; sizes of 0 do nothing.
//   * `stream` is a cudaStream_t (nullptr = the default stream); work is enqueued and the call
//     returns, except where a function says it waits (it reads a count back).
//   * Results do not depend on timing: sums run in a fixed order (no floating-point atomics).
//   * Launch failures throw engram::Error naming the CUDA call. A build without CUDA has the
//     same functions, each throwing engram::Error("... built without CUDA").
#pragma once

#include <cstdint>

#include "engram/cuda/buffer.h"
#include "engram/nn/engram_layer.h"  // SparseRowGrad
#include "engram/tensor/dtype.h"

namespace engram::cuda {

// ---- Embedding --------------------------------------------------------------------------------

// out (N, m, C): out[t, k, :] = table[ids[t], :] for every stream k < m (m = 1 is the plain
// embedding). table (V, C), ids (N) int64, already checked to lie in [0, V) (not checked here).
void embedding_forward(float* out, const int64_t* ids, const float* table, int64_t tokens,
                       int64_t streams, int64_t c, void* stream = nullptr);

// dx (N, C) = sum over k of dout (N, m, C), streams summed in order 0..m-1 starting from 0
// (written, not +=; the CPU's += into a zeroed buffer).
void streams_sum(float* dx, const float* dout, int64_t tokens, int64_t streams, int64_t c,
                 void* stream = nullptr);

// A sparse row gradient on the device, nn::SparseRowGrad's layout: `unique` rows (ascending,
// distinct) in rows[0 .. unique) and their gradients in values (unique, width). The buffers
// grow as needed and are never shrunk (their sizes are capacities); the rest is scratch.
struct GpuSparseRowGrad {
  DeviceBuffer<int64_t> rows;  // capacity: tokens
  DeviceBuffer<float> values;  // capacity: tokens * width
  int64_t unique = 0;
  int64_t width = 0;

  // Scratch of embedding_backward.
  DeviceBuffer<int64_t> keys_sorted;
  DeviceBuffer<int32_t> slots, slots_sorted, counts, starts, num_runs;
  DeviceBuffer<uint8_t> temp;

  // Copies rows and values to the host (grad is replaced).
  void download(nn::SparseRowGrad<float>& grad) const;
};

// grad = the gradient of a (V, C) table from dout (N, C) and the ids (N, int64, in [0, V)) the
// forward read: the distinct ids ascending, each with the sum of its tokens' rows of dout taken
// in token order starting from 0 (a stable radix sort of the ids, a run-length encoding and a
// segmented sum): nn::embedding_backward's result bit for bit. `vocab` (V >= 1) bounds the sort's
// key bits. Waits for `stream` (the number of distinct rows is read back into grad.unique).
// dout must not be grad's own memory.
void embedding_backward(GpuSparseRowGrad& grad, const float* dout, const int64_t* ids,
                        int64_t tokens, int64_t c, int64_t vocab, void* stream = nullptr);

// ---- Elementwise ------------------------------------------------------------------------------

// y[i] += x[i] for i < n.
void add_inplace(float* y, const float* x, int64_t n, void* stream = nullptr);
// x[i] *= s for i < n.
void scale_inplace(float* x, float s, int64_t n, void* stream = nullptr);
// dst[i] = src[i] for i < n (a device-to-device copy; dst and src must not overlap).
void copy(float* dst, const float* src, int64_t n, void* stream = nullptr);
// x[i] = 0 for i < n.
void zero(float* x, int64_t n, void* stream = nullptr);
// The same for other trivially copyable element types: n elements of `bytes_per_element`.
void copy_bytes(void* dst, const void* src, int64_t n, int64_t bytes_per_element,
                void* stream = nullptr);

// out[i] = bf16(x[i]) (round to nearest even) / out[i] = float(x[i]) (exact), i < n.
void cast(bf16* out, const float* x, int64_t n, void* stream = nullptr);
void cast(float* out, const bf16* x, int64_t n, void* stream = nullptr);

// ---- Reductions -------------------------------------------------------------------------------

// Returns sum_i x[i]^2 over i < n, in double: per-block partial sums over fixed chunks, then the
// partials in order (identical bits on every call). Waits for `stream`.
double sum_squares(const float* x, int64_t n, void* stream = nullptr);

}  // namespace engram::cuda
