// Causal self-attention with rotary position embeddings, multi-head or grouped-query.
//
//   x  (B, T, C)
//   q = x Wq^T  (B, T, Hq*hd),  k = x Wk^T, v = x Wv^T  (B, T, Hkv*hd)   (no biases)
//   q, k <- RoPE(q), RoPE(k)   per head, position t = index in the sequence
//   att[b,h,t,s] = softmax_s(q[b,t,h] . k[b,s,g(h)] / sqrt(hd)),  s <= t (causal)
//   ctx[b,t,h]   = sum_s att[b,h,t,s] v[b,s,g(h)]                 (B, T, Hq*hd)
//   out = ctx Wo^T  (B, T, C)
// Query head h reads key/value head g(h) = h / (Hq / Hkv): consecutive query heads share one
// key/value head (Hkv == Hq is multi-head attention).
//
// RoPE follows the Llama / Hugging Face "rotate_half" convention: within a head, dimension i is
// paired with i + hd/2 (not with i + 1), and the pair is rotated by the angle
// t * theta^(-2i/hd), i in [0, hd/2):
//   y[i]        = x[i] cos - x[i + hd/2] sin
//   y[i + hd/2] = x[i + hd/2] cos + x[i] sin
// Checkpoints in the interleaved (GPT-J) layout need their Wq/Wk rows permuted to match.
#pragma once

#include <cstdint>
#include <vector>

namespace engram::nn {

struct AttentionShape {
  int64_t batch, seq, dim;  // B, T, C
  int64_t heads;            // Hq
  int64_t kv_heads;         // Hkv, divides Hq
  int64_t head_dim;         // hd, even
  double rope_theta = 10000;
  int64_t tokens() const { return batch * seq; }
  int64_t q_dim() const { return heads * head_dim; }      // Hq*hd
  int64_t kv_dim() const { return kv_heads * head_dim; }  // Hkv*hd
};

// Throws engram::ConfigError naming the field when the shape makes no sense (non-positive
// sizes, kv_heads not dividing heads, odd head_dim, non-positive rope_theta).
void validate(const AttentionShape& s);

template <class T>
struct AttentionWeights {
  const T* wq;  // (Hq*hd, C)
  const T* wk;  // (Hkv*hd, C)
  const T* wv;  // (Hkv*hd, C)
  const T* wo;  // (C, Hq*hd)
};

// Gradients, same shapes as the weights; backward accumulates (+=).
template <class T>
struct AttentionGrads {
  T* dwq;
  T* dwk;
  T* dwv;
  T* dwo;
};

// What forward saves for backward.
template <class T>
struct AttentionSaved {
  std::vector<T> q;        // (B, T, Hq*hd) after RoPE
  std::vector<T> k;        // (B, T, Hkv*hd) after RoPE
  std::vector<T> v;        // (B, T, Hkv*hd)
  std::vector<T> att;      // (B, Hq, T, T) probabilities, 0 above the diagonal
  std::vector<T> context;  // (B, T, Hq*hd)
  // Backward's scratch, kept so that repeated steps do not allocate fresh pages.
  mutable std::vector<T> dcontext, dq, dk, dv;
};

// out (B, T, C).
template <class T>
void attention_forward(T* out, AttentionSaved<T>& saved, const T* x, const AttentionWeights<T>& w,
                       const AttentionShape& s);

// dx (B, T, C) (+=) and grads (+=), from dout (B, T, C).
template <class T>
void attention_backward(T* dx, const AttentionGrads<T>& grads, const T* dout, const T* x,
                        const AttentionSaved<T>& saved, const AttentionWeights<T>& w,
                        const AttentionShape& s);

// One query row against keys 0..keys-1 (causal: the caller passes the keys the row may see):
//   p[u] = softmax_u(q . k_u * scale),  ctx = sum_u p[u] v_u
// q (hd); k_u = k + u * stride, v_u = v + u * stride (hd each); p (keys) gets the probabilities,
// ctx (hd) is written. Shared by attention_forward and the KV-cached decoder, so both sum in
// the same order.
template <class T>
void attention_row(T* ctx, T* p, const T* q, const T* k, const T* v, int64_t keys,
                   int64_t stride, int64_t head_dim, T scale);

// RoPE in place on x (B, T, H, hd): rope_forward rotates by +angle, rope_backward by -angle
// (the transpose, which carries a gradient back through rope_forward).
template <class T>
void rope_forward(T* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, double theta);
template <class T>
void rope_backward(T* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, double theta);

}  // namespace engram::nn
