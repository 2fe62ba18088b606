// Manifold-constrained hyper-connections (mHC, BACKBONE_SPEC §1-2): n = hc_mult residual streams
// per token, read out before each sublayer and mixed on write-back.
//
// Per token, with X (n, C) the token's streams and v = flatten(X) (n·C), K = n² + 2n:
//   r = 1 / sqrt(mean(v²) + 1e-6),  m = r · (Φ v) (K),  a = m ⊙ α_slot + b
//   pre  = sigmoid(a[0:n]) + 1e-6            α_slot = α[0]
//   post = 2 · sigmoid(a[n:2n])              α_slot = α[1]
//   comb = Sinkhorn(a[2n:] as n×n row-major) α_slot = α[2]
// Sinkhorn: M = row softmax + 1e-6; M /= (column sums + 1e-6); then 19 times
// M /= (row sums + 1e-6), M /= (column sums + 1e-6). The last step normalises columns.
//
// The sublayer wrapper around F:  y = Σ_i pre_i X_i,  f = F(RMSNorm(y)),
//                                 X'_k = post_k · f + Σ_j comb[j,k] · X_j.
// Before the LM head a read-out with its own weights and no Sinkhorn:
//   pre = sigmoid(r · (Φ_h v) · α_h + b_h) + 1e-6,  y = Σ_i pre_i X_i.
//
// Every backward accumulates (+=) into all the gradients it writes, activations included, so
// the contributions of read-out, coefficients and write-back to dX simply add up.
#pragma once

#include <cstdint>
#include <vector>

namespace engram::nn {

// K = n² + 2n, the rows of Φ and the length of b for one sublayer.
inline int64_t hc_coefficient_count(int64_t n) {
  return n * n + 2 * n;
}

// Sinkhorn of one n×n logit matrix, row-major: comb (n, n) from logits (n, n).
template <class T>
void hc_sinkhorn_forward(T* comb, const T* logits, int64_t n);

// dlogits (n, n) (+=) from dcomb (n, n); recomputes every iteration from the logits.
template <class T>
void hc_sinkhorn_backward(T* dlogits, const T* dcomb, const T* logits, int64_t n);

// What hc_coefficients_forward (and the head read-out) saves for backward. Reuse one across
// steps: its buffers keep their capacity.
template <class T>
struct HcCoefficientsSaved {
  std::vector<T> proj;  // (N, K) m = r · (Φ v), before α and b
  std::vector<T> rstd;  // (N) r
};

// pre (N, n), post (N, n), comb (N, n, n) from x (N, n, C), phi (K, n·C), b (K), alpha (3).
template <class T>
void hc_coefficients_forward(T* pre, T* post, T* comb, HcCoefficientsSaved<T>& saved, const T* x,
                             const T* phi, const T* b, const T* alpha, int64_t tokens, int64_t n,
                             int64_t c);

// dx (N, n, C), dphi (K, n·C), db (K), dalpha (3), all +=, from dpre (N, n), dpost (N, n),
// dcomb (N, n, n) and what forward saved.
template <class T>
void hc_coefficients_backward(T* dx, T* dphi, T* db, T* dalpha, const T* dpre, const T* dpost,
                              const T* dcomb, const T* x, const HcCoefficientsSaved<T>& saved,
                              const T* phi, const T* b, const T* alpha, int64_t tokens, int64_t n,
                              int64_t c);

// y (N, C) = Σ_i pre_i X_i from x (N, n, C), pre (N, n).
template <class T>
void hc_readout_forward(T* y, const T* x, const T* pre, int64_t tokens, int64_t n, int64_t c);

// dx (N, n, C), dpre (N, n), both +=, from dy (N, C).
template <class T>
void hc_readout_backward(T* dx, T* dpre, const T* dy, const T* x, const T* pre, int64_t tokens,
                         int64_t n, int64_t c);

// x_out (N, n, C) = post_k f + Σ_j comb[j,k] X_j from f (N, C), x (N, n, C), post (N, n),
// comb (N, n, n). x_out must not alias x.
template <class T>
void hc_write_back_forward(T* x_out, const T* f, const T* x, const T* post, const T* comb,
                           int64_t tokens, int64_t n, int64_t c);

// df (N, C), dx (N, n, C), dpost (N, n), dcomb (N, n, n), all +=, from dx_out (N, n, C).
template <class T>
void hc_write_back_backward(T* df, T* dx, T* dpost, T* dcomb, const T* dx_out, const T* f,
                            const T* x, const T* post, const T* comb, int64_t tokens, int64_t n,
                            int64_t c);

// Head read-out: y (N, C) and pre (N, n) (saved, with saved.proj (N, n) and saved.rstd) from
// x (N, n, C), phi_h (n, n·C), b_h (n), alpha_h (1).
template <class T>
void hc_head_readout_forward(T* y, T* pre, HcCoefficientsSaved<T>& saved, const T* x,
                             const T* phi_h, const T* b_h, const T* alpha_h, int64_t tokens,
                             int64_t n, int64_t c);

// dx (N, n, C), dphi_h (n, n·C), db_h (n), dalpha_h (1), all +=, from dy (N, C).
template <class T>
void hc_head_readout_backward(T* dx, T* dphi_h, T* db_h, T* dalpha_h, const T* dy, const T* x,
                              const T* pre, const HcCoefficientsSaved<T>& saved, const T* phi_h,
                              const T* b_h, const T* alpha_h, int64_t tokens, int64_t n, int64_t c);

// Initialisation (BACKBONE_SPEC §2 [U]); defaults are ours where the spec leaves values open.
struct HcInit {
  double alpha = 0.01;              // every α slot (and α_h)
  double phi_std = 0.02 * 0.1;      // Φ ~ N(0, phi_std): small, but breaks stream symmetry
  double pre_favoured_logit = 2.0;  // b_pre of stream (layer mod n): pre ≈ 0.88
  double pre_other_logit = -2.0;    // b_pre of the other streams: pre ≈ 0.12
  double res_identity_logit = 4.0;  // b_res = this · I: comb diagonal ≈ e⁴/(e⁴ + n - 1)
};

// Sublayer parameters: phi (K, n·C), b (K), alpha (3). b_post = 0 (post = 1).
template <class T>
void hc_init(T* phi, T* b, T* alpha, int64_t n, int64_t c, int64_t layer, uint64_t seed,
             const HcInit& init = {});

// Head read-out parameters: phi_h (n, n·C), b_h (n) favouring stream (layer mod n), alpha_h (1).
template <class T>
void hc_head_init(T* phi_h, T* b_h, T* alpha_h, int64_t n, int64_t c, int64_t layer, uint64_t seed,
                  const HcInit& init = {});

}  // namespace engram::nn
