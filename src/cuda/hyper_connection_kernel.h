// Launchers of the mHC kernels in src/cuda/hyper_connection.cu, in plain types, called by
// src/cuda/hyper_connection.cpp after it has checked the arguments and run the GEMMs (the .cu
// file is C++17 and has no argument checks of its own).
//
// Shapes: N tokens, n streams (1 <= n <= kHcMaxStreams), C channels, D = n·C, K the number of
// coefficients per token (n² + 2n for a sublayer, n for the head read-out). Every launcher needs
// tokens, n, c >= 1.
#pragma once

#include <cstdint>

namespace engram::cuda::detail {

inline constexpr int64_t kHcMaxStreams = 8;

// comb (N, n, n) = Sinkhorn of logits (N, n, n), per token.
void launch_hc_sinkhorn_forward(float* comb, const float* logits, int64_t tokens, int64_t n,
                                void* stream);
// dlogits (N, n, n) += the Sinkhorn backward of dcomb (N, n, n), recomputed from logits.
void launch_hc_sinkhorn_backward(float* dlogits, const float* dcomb, const float* logits,
                                 int64_t tokens, int64_t n, void* stream);

// On entry proj (N, K) holds Φ v. Scales it by r (in place), writes rstd (N), and from
// a = proj ⊙ α_slot + b: pre (N, n), post (N, n), comb (N, n, n). K = n² + 2n.
void launch_hc_coefficients_forward(float* pre, float* post, float* comb, float* proj, float* rstd,
                                    const float* x, const float* b, const float* alpha,
                                    int64_t tokens, int64_t n, int64_t c, void* stream);

// Per token: da (N, K) = dL/da (written), dp (N, K) = α_slot · da · r (the gradient of Φ v,
// written), dx (N, D) -= (Σ_j α_slot da_j m_j / r) r³ v / D. K = n² + 2n.
void launch_hc_coefficients_backward_tokens(float* da, float* dp, float* dx, const float* dpre,
                                            const float* dpost, const float* dcomb, const float* x,
                                            const float* proj, const float* rstd, const float* b,
                                            const float* alpha, int64_t tokens, int64_t n,
                                            int64_t c, void* stream);

// db (K) += Σ_t da[t, :];  dalpha[s] += Σ_t Σ_{j in slot s} da[t, j] · proj[t, j], the slots
// being j < n (0), j < 2n (1), the rest (2); only the slots that occur are written (K = n: one).
// Sums over fixed chunks of tokens in double, then over the chunks in a fixed tree. Allocates
// scratch on the stream (cudaMallocAsync).
void launch_hc_bias_alpha_grads(float* db, float* dalpha, const float* da, const float* proj,
                                int64_t tokens, int64_t k, int64_t n, void* stream);

// y (N, C) = Σ_i pre_i X_i.
void launch_hc_readout_forward(float* y, const float* x, const float* pre, int64_t tokens,
                               int64_t n, int64_t c, void* stream);
// dx (N, n, C) += pre_i dy;  dpre (N, n) += Σ_e dy x_i.
void launch_hc_readout_backward(float* dx, float* dpre, const float* dy, const float* x,
                                const float* pre, int64_t tokens, int64_t n, int64_t c,
                                void* stream);

// x_out (N, n, C) = post_k f + Σ_j comb[j,k] X_j.
void launch_hc_write_back_forward(float* x_out, const float* f, const float* x, const float* post,
                                  const float* comb, int64_t tokens, int64_t n, int64_t c,
                                  void* stream);
// df, dx, dpost, dcomb += the write-back's backward from dx_out.
void launch_hc_write_back_backward(float* df, float* dx, float* dpost, float* dcomb,
                                   const float* dx_out, const float* f, const float* x,
                                   const float* post, const float* comb, int64_t tokens, int64_t n,
                                   int64_t c, void* stream);

// On entry proj (N, n) holds Φ_h v. Scales it by r, writes rstd (N), pre (N, n) =
// sigmoid(proj α_h + b_h) + 1e-6 and y (N, C) = Σ_i pre_i X_i.
void launch_hc_head_readout_forward(float* y, float* pre, float* proj, float* rstd, const float* x,
                                    const float* b_h, const float* alpha_h, int64_t tokens,
                                    int64_t n, int64_t c, void* stream);

// Per token: da (N, n) = dL/da (written), dp (N, n) = α_h da r (written), and
// dx (N, n, C) += pre_i dy - (Σ_i α_h da_i m_i / r) r³ v / D.
void launch_hc_head_readout_backward_tokens(float* da, float* dp, float* dx, const float* dy,
                                            const float* x, const float* pre, const float* proj,
                                            const float* rstd, const float* b_h,
                                            const float* alpha_h, int64_t tokens, int64_t n,
                                            int64_t c, void* stream);

}  // namespace engram::cuda::detail
