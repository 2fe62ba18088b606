// DeepSeek-V3 mixture of experts (BACKBONE_SPEC §3), on N tokens u (N, C):
//
//   s = sigmoid(W_g u)                  (N, E) router scores, W_g (E, C), no bias
//   S_t = top-k of (s_t + bias)         bias (E): selection only, no gradient; ties go to the
//                                       lower expert index
//   w_t,i = route_scale · s_t,i / Σ_{j∈S_t} s_t,j     (i ∈ S_t)
//   y_t = Σ_{i∈S_t} w_t,i · E_i(u_t) + E_shared(u_t),   E(u) = W2 (SiLU(W1 u) ⊙ W3 u)
//
// Routed experts are SwiGLUs of width H (W1, W3 (H, C), W2 (C, H), no biases); the shared
// expert is one SwiGLU of width n_shared·H, absent when n_shared == 0. The router runs in T,
// which is float or double: fp32 or better, as the spec asks.
//
// Tokens are permuted per expert: the (token, slot) pairs routed to expert e are gathered in
// ascending token order into one block of rows, each expert runs swiglu_forward on its block,
// and the outputs are scattered back. Every sum over tokens or slots runs in a fixed order, so
// results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "engram/nn/mlp.h"

namespace engram::nn {

struct MoeShape {
  int64_t tokens;        // N
  int64_t dim;           // C
  int64_t experts;       // E, routed experts
  int64_t top_k;         // K, 1 <= K <= E
  int64_t hidden;        // H, width of each routed expert
  int64_t n_shared = 0;  // shared experts, fused into one SwiGLU of width n_shared·H
  double route_scale = 1.0;
  int64_t shared_hidden() const { return n_shared * hidden; }
};

// Throws engram::ConfigError naming the field when the shape makes no sense (non-positive sizes,
// top_k outside [1, experts], negative n_shared or tokens, non-finite or non-positive
// route_scale).
void validate(const MoeShape& s);

template <class T>
struct MoeWeights {
  const T* wg;         // (E, C) router
  const T* w1;         // (E, H, C) expert e's W1 at w1 + e·H·C
  const T* w3;         // (E, H, C)
  const T* w2;         // (E, C, H)
  const T* shared_w1;  // (n_shared·H, C); unused (may be null) when n_shared == 0
  const T* shared_w3;  // (n_shared·H, C)
  const T* shared_w2;  // (C, n_shared·H)
};

// Gradients, same shapes as the weights; backward accumulates (+=).
template <class T>
struct MoeGrads {
  T* dwg;
  T* dw1;
  T* dw3;
  T* dw2;
  T* dshared_w1;  // unused (may be null) when n_shared == 0
  T* dshared_w3;
  T* dshared_w2;
};

// What forward saves for backward (and for the balance loss). Reuse one across steps: its
// buffers keep their capacity.
template <class T>
struct MoeSaved {
  std::vector<T> scores;               // (N, E) s = sigmoid(W_g u)
  std::vector<int32_t> selected;       // (N, K) chosen experts, best (s + bias) first
  std::vector<T> weights;              // (N, K) w = route_scale · normalised gate
  std::vector<int64_t> counts;         // (E) tokens routed to each expert: the load
  std::vector<int64_t> offsets;        // (E + 1) expert e's rows are [offsets[e], offsets[e+1])
  std::vector<int64_t> row_of;         // (N, K) row of the permuted buffers holding (token, slot)
  std::vector<T> routed_in;            // (N·K, C) u gathered per expert
  std::vector<T> routed_out;           // (N·K, C) E_e(u) per row
  std::vector<SwiGluSaved<T>> expert;  // (E)
  SwiGluSaved<T> shared;
  // Backward's scratch, kept so that repeated steps do not allocate fresh pages.
  mutable std::vector<T> drouted, drouted_in, dlogits;
};

// y (N, C) from u (N, C), bias (E).
template <class T>
void moe_forward(T* y, MoeSaved<T>& saved, const T* u, const T* bias, const MoeWeights<T>& w,
                 const MoeShape& s);

// du (N, C) (+=) and grads (+=), from dy (N, C): through the experts, the gates and the router.
// The selection itself has no gradient.
template <class T>
void moe_backward(T* du, const MoeGrads<T>& grads, const T* dy, const T* u,
                  const MoeSaved<T>& saved, const MoeWeights<T>& w, const MoeShape& s);

// Auxiliary-loss-free balancing, after each step: bias_i += gamma · sign(mean(c) − c_i), with
// counts c (E) (e.g. MoeSaved::counts summed over the step's batches).
template <class T>
void aux_free_bias_update(T* bias, const int64_t* counts, int64_t experts, double gamma);

// Sequence-wise balance loss over the N tokens seen as N / seq_len sequences of seq_len tokens:
//   L = mean over sequences of alpha · Σ_i f_i P_i,
//   f_i = E / (K·T) · Σ_t 1[i ∈ S_t],   P_i = mean_t s_t,i / Σ_j s_t,j.
// Reads the scores and selection saved by moe_forward. Throws engram::ConfigError when seq_len
// does not divide N.
template <class T>
double moe_balance_loss(const MoeSaved<T>& saved, const MoeShape& s, int64_t seq_len, double alpha);

// du (N, C) (+=) and dwg (E, C) (+=) from dloss = dJ/dL. The gradient flows only through P
// (f counts selections).
template <class T>
void moe_balance_loss_backward(T* du, T* dwg, double dloss, const T* u, const MoeSaved<T>& saved,
                               const T* wg, const MoeShape& s, int64_t seq_len, double alpha);

}  // namespace engram::nn
