// The model's non-GEMM operations on the GPU, forward and backward, each matching the CPU
// function it names (float32 only). The GEMMs around them (x W^T, ...) are the caller's.
//
//   rmsnorm_forward / rmsnorm_backward      nn::rmsnorm_forward / nn::rmsnorm_backward
//   swiglu_gate_forward / _backward         the elementwise part of nn::swiglu_forward/backward
//   rope_forward / rope_backward            nn::rope_forward / nn::rope_backward
//   cross_entropy_forward_backward          nn::cross_entropy_forward_backward
//   adamw_step                              one group of train::AdamW::step
//   sparse_row_adam_step                    train::SparseRowAdam::step
//
// Conventions, for every function here:
//   * Pointers named d_* or documented as "device" are device memory; shapes are in elements,
//     row-major. Sizes are checked (negative sizes throw engram::InputError); the pointers are
//     not (they must be valid for the sizes given).
//   * `stream` is a cudaStream_t (nullptr = the default stream). Work is enqueued and the call
//     returns at once, except cross_entropy_forward_backward, which waits for its result.
//   * Launch failures throw engram::Error naming the CUDA call. A build without CUDA has the
//     same functions, each throwing engram::Error("... built without CUDA").
//   * Results do not depend on timing: every reduction (row sums, the rmsnorm weight gradient,
//     the loss) is done in a fixed order, so repeated calls give identical bits.
//
// This header is plain C++17 (no <span>), so that .cu files can include it.
#pragma once

#include <cstdint>

#include "engram/nn/rmsnorm.h"  // RowLayout

namespace engram::cuda {

// ---- RMSNorm ----------------------------------------------------------------------------------
//
// Over rows of length c (nn::RowLayout: n rows, c columns, x's row stride >= c):
//   rstd[r] = 1 / sqrt(mean_i x[r,i]^2 + eps),   y[r,i] = x[r,i] * rstd[r] * w[i]
// y (n, c) with row stride y_stride (>= c); rstd (n); w (c). y may equal x (same strides).
void rmsnorm_forward(float* y, int64_t y_stride, float* rstd, const float* x, nn::RowLayout x_layout,
                     const float* w, float eps, void* stream = nullptr);

// Accumulates (+=), from dy (n, c) with row stride dy_stride and what forward saved (rstd):
//   dx[r,i] += rstd w_i dy_i - x_i rstd^3 / c * sum_j dy_j w_j x_j      dx (n, c), dx_stride
//   dw[i]   += sum_r dy[r,i] x[r,i] rstd[r]                              dw (c)
// The dw sum runs over fixed chunks of rows (in double), then over the chunks in order.
// dx must not overlap dy or x. Allocates n/64-row scratch on `stream` (cudaMallocAsync).
void rmsnorm_backward(float* dx, int64_t dx_stride, float* dw, const float* dy, int64_t dy_stride,
                      const float* x, nn::RowLayout x_layout, const float* w, const float* rstd,
                      void* stream = nullptr);

// ---- SwiGLU, the elementwise part -------------------------------------------------------------
//
// With a = x W1^T and b = x W3^T (the CPU's saved h1, h3), `size` elements each:
//   h = silu(a) * b = a * sigmoid(a) * b                                  (written)
// and backward, s = sigmoid(a), from dh (the gradient of h, i.e. dy W2):
//   da = dh * b * s * (1 + a * (1 - s)),   db = dh * a * s                 (written, not +=)
// da or db may equal dh (each element is read before it is written).
void swiglu_gate_forward(float* h, const float* a, const float* b, int64_t size,
                         void* stream = nullptr);
void swiglu_gate_backward(float* da, float* db, const float* dh, const float* a, const float* b,
                          int64_t size, void* stream = nullptr);

// ---- RoPE -------------------------------------------------------------------------------------
//
// In place on x (batch, seq, heads, head_dim), head_dim even, theta > 0 (ConfigError otherwise):
// the rotate-half convention of nn::attention.h. For position t (the index within the sequence)
// and i in [0, hd/2), angle = sign * t * theta^(-2i/hd), computed with cos/sin in double and
// rounded to float as the CPU does:
//   y[i]        = x[i] cos - x[i + hd/2] sin
//   y[i + hd/2] = x[i + hd/2] cos + x[i] sin
// rope_forward uses sign = +1, rope_backward sign = -1 (the transpose, for gradients).
void rope_forward(float* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                  double theta, void* stream = nullptr);
void rope_backward(float* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                   double theta, void* stream = nullptr);

// ---- Cross-entropy ----------------------------------------------------------------------------
//
// logits (n, v), targets (n) int64 (device); a target < 0 is ignored (no loss, zero gradient).
// With count = the number of targets >= 0 and, per counted row,
//   loss[r] = logsumexp(logits[r]) - logits[r, target[r]]   (max subtracted, sums in double)
// returns sum_r loss[r] / count (0 when count == 0), and when dlogits is not null writes
//   dlogits (n, v) = (softmax(logits) - onehot(target)) * scale / count
// (zero rows for ignored targets; all zero when count == 0). dlogits may equal logits.
// row_loss (n, device, optional) gets loss[r] (0 for ignored rows); counted (host, optional)
// gets count. One block per row; the row losses are summed in double in a fixed order.
// Waits for `stream`. Throws InputError naming the first position of a target >= v (the
// outputs are then unspecified). Allocates scratch on `stream` (cudaMallocAsync).
double cross_entropy_forward_backward(float* dlogits, const float* logits, const int64_t* targets,
                                      int64_t n, int64_t v, float scale = 1.0f,
                                      float* row_loss = nullptr, int64_t* counted = nullptr,
                                      void* stream = nullptr);

// ---- Adam -------------------------------------------------------------------------------------

// train::AdamOptions' fields (PyTorch's defaults). Throws ConfigError when used with betas
// outside [0, 1) or eps < 0.
struct AdamHyper {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// One AdamW update of `size` elements at learning rate lr and step t (>= 1, the count after
// increment, as train::AdamW::step uses it), exactly train::AdamW's per-element float update:
//   p *= float(1 - lr * weight_decay)                           (only when weight_decay != 0)
//   m  = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g g
//   p -= float(lr / (1 - beta1^t)) * m / (sqrt(v) / float(sqrt(1 - beta2^t)) + eps)
// (constants computed in double and rounded to float; no fused multiply-adds, so the result is
// bit for bit the CPU's). param, grad, m, v: device, `size` each. Pass weight_decay = 0 for the
// groups the CPU registers with decay = false. Throws InputError for lr < 0 or not finite,
// t < 1, weight_decay < 0.
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t size, double lr,
                int64_t t, const AdamHyper& hyper, double weight_decay, void* stream = nullptr);

// One train::SparseRowAdam step at learning rate lr and global step t (>= 1, after increment):
// for each i < n_rows, r = rows[i] (device int64, strictly increasing, in [0, table_rows)),
//   k = t - 1 - last_step[r]; if k > 0: m[r] *= float(beta1^k), v[r] *= float(beta2^k)
//   then the Adam update above (no weight decay) of table[r] with values[i], and last_step[r] = t.
// table, m, v: device (table_rows, width); last_step: device (table_rows) int64 (0 = never);
// values: device (n_rows, width). Rows outside [0, table_rows) are skipped (nothing written);
// repeated rows are a precondition violation (unchecked, results undefined).
// Throws InputError for lr < 0 or not finite, t < 1, negative sizes.
void sparse_row_adam_step(float* table, float* m, float* v, int64_t* last_step, int64_t table_rows,
                          int64_t width, const int64_t* rows, const float* values, int64_t n_rows,
                          double lr, int64_t t, const AdamHyper& hyper, void* stream = nullptr);

}  // namespace engram::cuda
