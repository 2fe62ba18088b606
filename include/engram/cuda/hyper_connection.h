// Manifold-constrained hyper-connections (mHC, BACKBONE_SPEC §1-2) on the GPU, forward and
// backward, float32: the functions of engram/nn/hyper_connection.h, each matching the CPU
// function of the same name to float rounding. The residual streams stay float32 on the GPU
// even when the sublayers compute in bf16.
//
// Per token, with X (n, C) the token's streams, v = flatten(X) (D = n·C), K = n² + 2n:
//   r = 1 / sqrt(mean(v²) + 1e-6),  m = r · (Φ v) (K),  a = m ⊙ α_slot + b
//   pre  = sigmoid(a[0:n]) + 1e-6            α_slot = α[0]
//   post = 2 · sigmoid(a[n:2n])              α_slot = α[1]
//   comb = Sinkhorn(a[2n:] as n×n row-major) α_slot = α[2]
// Sinkhorn: M = row softmax + 1e-6; M /= (column sums + 1e-6); then 19 times
// M /= (row sums + 1e-6), M /= (column sums + 1e-6). The last step normalises columns.
// Read-out y = Σ_i pre_i X_i; write-back X'_k = post_k f + Σ_j comb[j,k] X_j; head read-out
// pre = sigmoid(r (Φ_h v) α_h + b_h) + 1e-6, y = Σ_i pre_i X_i.
//
// How the work is split:
//   * Φ v (N, D) × (K, D)^T, and in backward dx += dp Φ and dΦ += dp^T v, are cuda::Blas GEMMs
//     with Math::kExact (plain FP32); dΦ accumulates with beta = 1.
//   * Everything per token (the RMS factor, the sigmoids, the read-out and write-back sums) is a
//     kernel with one block per token or a grid over elements. The Sinkhorn runs 32/n tokens per
//     warp, n lanes per token, lane l owning row or column l and summing it in the CPU's order;
//     its backward recomputes every state from the logits, as the CPU does.
//   * The sums over tokens (db, dα) run over fixed chunks of tokens in double, then over the
//     chunks in a fixed tree: no atomics, so repeated calls give identical bits.
//
// Conventions, for every function here:
//   * Pointers are device memory, row-major, shapes in elements; they are not checked (they
//     must be valid for the sizes given). N = tokens >= 0, 1 <= n <= kHcMaxStreams, C = c >= 1;
//     other sizes throw engram::InputError naming the function and the value. N = 0 does
//     nothing.
//   * Every backward accumulates (+=) into all the gradients it writes, like the CPU, so the
//     contributions of read-out, coefficients and write-back to dX simply add up.
//   * `stream` is a cudaStream_t (nullptr = the default stream); work is enqueued and the call
//     returns. Functions taking a Blas run their GEMMs on `stream` (the Blas's own stream is
//     restored on return). Backwards allocate scratch on `stream` (cudaMallocAsync).
//   * Launch failures throw engram::Error naming the CUDA call. A build without CUDA has the same
//     functions, each throwing engram::Error("... built without CUDA").
#pragma once

#include <cstdint>

#include "engram/cuda/buffer.h"

namespace engram::cuda {

class Blas;

// The largest number of streams n the kernels take.
inline constexpr int64_t kHcMaxStreams = 8;

// What hc_coefficients_forward (and hc_head_readout_forward) saves for backward. Reuse one
// across steps: the buffers grow when a call needs more and are never shrunk, so their sizes are
// capacities (at least N·K and N after a forward of N tokens).
struct GpuHcSaved {
  DeviceBuffer<float> proj;  // (N, K) m = r · (Φ v), before α and b
  DeviceBuffer<float> rstd;  // (N) r
};

// ---- Sinkhorn, batched ----------------------------------------------------------------------

// comb (N, n, n) = Sinkhorn of each token's logits (N, n, n), row-major.
void hc_sinkhorn_forward(float* comb, const float* logits, int64_t tokens, int64_t n,
                         void* stream = nullptr);

// dlogits (N, n, n) += the backward of dcomb (N, n, n), every Sinkhorn step unrolled and its
// state recomputed from the logits.
void hc_sinkhorn_backward(float* dlogits, const float* dcomb, const float* logits, int64_t tokens,
                          int64_t n, void* stream = nullptr);

// ---- Coefficients ---------------------------------------------------------------------------

// pre (N, n), post (N, n), comb (N, n, n) from x (N, n, C), phi (K, n·C), b (K), alpha (3);
// saves m and r in `saved`.
void hc_coefficients_forward(float* pre, float* post, float* comb, GpuHcSaved& saved,
                             const float* x, const float* phi, const float* b, const float* alpha,
                             int64_t tokens, int64_t n, int64_t c, Blas& blas,
                             void* stream = nullptr);

// dx (N, n, C), dphi (K, n·C), db (K), dalpha (3), all +=, from dpre (N, n), dpost (N, n),
// dcomb (N, n, n) and what the forward of the same x saved:
//   da = dL/da (sigmoid' and the Sinkhorn backward),  db += Σ_t da,  dα_s += Σ_t Σ_{j∈s} da_j m_j
//   dm = α_slot da,  dp = r dm,  dv = Φ^T dp - (Σ dm m / r) r³ v / D,  dΦ += dp^T v
// Throws InputError when `saved` holds fewer than N tokens.
void hc_coefficients_backward(float* dx, float* dphi, float* db, float* dalpha, const float* dpre,
                              const float* dpost, const float* dcomb, const float* x,
                              const GpuHcSaved& saved, const float* phi, const float* b,
                              const float* alpha, int64_t tokens, int64_t n, int64_t c, Blas& blas,
                              void* stream = nullptr);

// ---- Read-out and write-back ----------------------------------------------------------------

// y (N, C) = Σ_i pre_i X_i from x (N, n, C), pre (N, n).
void hc_readout_forward(float* y, const float* x, const float* pre, int64_t tokens, int64_t n,
                        int64_t c, void* stream = nullptr);

// dx (N, n, C) += pre_i dy,  dpre (N, n) += Σ_e dy x_i, from dy (N, C).
void hc_readout_backward(float* dx, float* dpre, const float* dy, const float* x, const float* pre,
                         int64_t tokens, int64_t n, int64_t c, void* stream = nullptr);

// x_out (N, n, C) = post_k f + Σ_j comb[j,k] X_j from f (N, C), x (N, n, C), post (N, n),
// comb (N, n, n). x_out must not alias x.
void hc_write_back_forward(float* x_out, const float* f, const float* x, const float* post,
                           const float* comb, int64_t tokens, int64_t n, int64_t c,
                           void* stream = nullptr);

// df (N, C), dx (N, n, C), dpost (N, n), dcomb (N, n, n), all +=, from dx_out (N, n, C):
//   df += Σ_k post_k g_k,  dx_j += Σ_k comb[j,k] g_k,  dpost_k += Σ_e g_k f,
//   dcomb[j,k] += Σ_e g_k X_j      (g_k = dx_out's stream k)
// No output may alias another or an input.
void hc_write_back_backward(float* df, float* dx, float* dpost, float* dcomb, const float* dx_out,
                            const float* f, const float* x, const float* post, const float* comb,
                            int64_t tokens, int64_t n, int64_t c, void* stream = nullptr);

// ---- Head read-out --------------------------------------------------------------------------

// y (N, C) and pre (N, n) (kept for backward, with saved.proj (N, n) and saved.rstd) from
// x (N, n, C), phi_h (n, n·C), b_h (n), alpha_h (1).
void hc_head_readout_forward(float* y, float* pre, GpuHcSaved& saved, const float* x,
                             const float* phi_h, const float* b_h, const float* alpha_h,
                             int64_t tokens, int64_t n, int64_t c, Blas& blas,
                             void* stream = nullptr);

// dx (N, n, C), dphi_h (n, n·C), db_h (n), dalpha_h (1), all +=, from dy (N, C), pre and saved
// from the forward. Throws InputError when `saved` holds fewer than N tokens.
void hc_head_readout_backward(float* dx, float* dphi_h, float* db_h, float* dalpha_h,
                              const float* dy, const float* x, const float* pre,
                              const GpuHcSaved& saved, const float* phi_h, const float* b_h,
                              const float* alpha_h, int64_t tokens, int64_t n, int64_t c,
                              Blas& blas, void* stream = nullptr);

}  // namespace engram::cuda
