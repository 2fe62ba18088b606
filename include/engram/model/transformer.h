// The CPU language model: token embedding, num_layers blocks (BACKBONE_SPEC §1), final RMSNorm,
// untied LM head and mean cross-entropy, composed from the raw-pointer layers of engram::nn.
//
// Activations are tokens x streams x channels, X (N, n, C) with N = B*T and n = hc_mult. A block:
//   X <- X + Engram(X, hash ids)                        only at Engram layers (out per stream)
//   for F in (attention, FFN or MoE):
//     n = 1: X <- X + F(RMSNorm(X))                      the plain pre-norm residual path
//     n > 1: pre, post, comb = coefficients(X); y = sum_i pre_i X_i
//            X_k <- post_k F(RMSNorm(y)) + sum_j comb[j,k] X_j
// Head: the single stream (n = 1) or the head read-out (n > 1), RMSNorm, logits = h W_head^T.
//
// Parameter layout (row-major, names as in named()):
//   embed (V, C); layers.{l}.attn_norm (C); layers.{l}.attn.{wq (Hq*hd, C), wk, wv (Hkv*hd, C),
//   wo (C, Hq*hd)}; layers.{l}.ffn_norm (C); dense layers: layers.{l}.mlp.{w1, w3 (F, C),
//   w2 (C, F)}; MoE layers: layers.{l}.moe.{gate (E, C), w1, w3 (E, H, C), w2 (E, C, H),
//   shared_w1, shared_w3 (S*H, C), shared_w2 (C, S*H)}; hc_mult > 1: layers.{l}.hc_attn.{phi
//   (n*n+2n, n*C), b (n*n+2n), alpha (3)} and layers.{l}.hc_ffn.*, hc_head.{phi (n, n*C), b (n),
//   alpha (1)}; Engram layers: layers.{l}.engram.<EngramParams names> and layers.{l}.engram.table
//   (rows, row_width); final_norm (C); head (V, C).
// The MoE selection biases (layers.{l}.moe.bias, (E)) are buffers, not trained: named_buffers().
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/model/config.h"
#include "engram/nn/attention.h"
#include "engram/nn/engram_layer.h"
#include "engram/nn/hyper_connection.h"
#include "engram/nn/mlp.h"
#include "engram/nn/moe.h"

namespace engram::model {

// Table sizes of every head of every Engram layer (layer_ids order), as the hasher chose them.
std::vector<std::vector<int64_t>> engram_head_sizes(const hash::NgramHasher& hasher);

template <class T>
struct HcParams {
  std::vector<T> phi, b, alpha;
};

template <class T>
struct LayerParams {
  std::vector<T> attn_norm, wq, wk, wv, wo, ffn_norm;
  std::vector<T> w1, w3, w2;                          // dense SwiGLU (empty in MoE layers)
  std::vector<T> gate, ew1, ew3, ew2, sw1, sw3, sw2;  // MoE (empty in dense layers)
  std::vector<T> moe_bias;                            // (E) selection bias, a buffer
  HcParams<T> hc_attn, hc_ffn;                        // hc_mult > 1 only
  std::optional<nn::EngramLayer<T>> engram;           // Engram layers only
  std::vector<T> engram_table;                        // (rows, row_width); empty in grads
};

template <class T>
struct TransformerParams {
  std::vector<T> embed;  // (V, C); empty in gradients (the embedding gradient is sparse)
  std::vector<LayerParams<T>> layers;
  HcParams<T> hc_head;
  std::vector<T> final_norm, head;

  // Every buffer allocated and zero (tables included when with_tables). head_sizes: one list per
  // Engram layer (layer_ids order); required when the config has [engram].
  void zeros(const ModelConfig& config, const std::vector<std::vector<int64_t>>& head_sizes,
             bool with_tables = true);
  // Small normal init (std 0.02), norms 1, Engram via EngramParams::init (conv zero), tables
  // N(0, 0.02), mHC via hc_init / hc_head_init, MoE biases 0. Deterministic in seed.
  // with_tables = false leaves the tables empty (for loading weights into: the other values then
  // differ from a with-tables init, which draws the tables from the same generator).
  void init(const ModelConfig& config, const std::vector<std::vector<int64_t>>& head_sizes,
            uint64_t seed, bool with_tables = true);
  // Trained parameters (stable names, see the file comment). Empty buffers are left out.
  std::vector<nn::NamedParam<T>> named();
  // Non-trained buffers (the MoE selection biases).
  std::vector<nn::NamedParam<T>> named_buffers();
};

template <class T>
class Transformer {
 public:
  // Validates the config. head_sizes as for TransformerParams::init. with_engram_tables = false
  // leaves every params().layers[l].engram_table empty (never allocated): for inference that
  // reads the tables from memory::RowStores (infer::Decoder::set_table_stores); forward()
  // then throws InputError at the first Engram layer.
  Transformer(ModelConfig config, std::vector<std::vector<int64_t>> head_sizes = {},
              uint64_t seed = 0, bool with_engram_tables = true);
  // For inference of large models whose values do not matter or come from elsewhere (benchmarks,
  // loading): every parameter allocated and zero (the caller fills them), no gradient buffers;
  // backward() then throws engram::Error.
  struct Uninitialized {};
  Transformer(ModelConfig config, std::vector<std::vector<int64_t>> head_sizes, Uninitialized,
              bool with_engram_tables);

  const ModelConfig& config() const { return config_; }
  TransformerParams<T>& params() { return params_; }
  const TransformerParams<T>& params() const { return params_; }
  // Gradients of the last backward(): same layout as params() (no embed, no tables). The
  // buffers are allocated once, so pointers into them stay valid across backward() calls.
  TransformerParams<T>& grads() { return grads_; }
  const nn::SparseRowGrad<T>& embed_grad() const { return embed_grad_; }
  // One per Engram layer (layer_ids order).
  const std::vector<nn::SparseRowGrad<T>>& engram_table_grads() const { return table_grads_; }

  // inputs, targets (B, T) (targets < 0 not counted); hash_ids (L_engram, B, T, H) or empty
  // when there is no Engram. Returns the mean cross-entropy and saves activations.
  double forward(const int64_t* inputs, const int64_t* targets, int64_t batch, int64_t seq,
                 std::span<const int32_t> hash_ids = {});
  // Logits of the last forward, (B*T, V) row-major.
  const std::vector<T>& logits() const { return logits_; }
  // Gradients of the last forward's loss: overwrites grads(), embed_grad(), engram_table_grads().
  void backward();

  // Expert loads of the last forward, one (E) vector per layer (empty for dense layers).
  std::vector<std::vector<int64_t>> moe_expert_counts() const;
  // nn::aux_free_bias_update on every MoE layer with the last forward's loads and moe.gamma.
  void update_moe_bias();

 private:
  // Validates the config and maps layers to Engram indices (both constructors).
  void index_layers();
  struct SubSaved {
    std::vector<T> x, y, rstd, h, f, pre, post, comb;
    nn::HcCoefficientsSaved<T> coeff;
  };
  struct LayerSaved {
    std::vector<T> x_engram;
    nn::EngramSaved<T> engram;
    SubSaved attn, ffn;
    nn::AttentionSaved<T> att;
    nn::SwiGluSaved<T> mlp;
    nn::MoeSaved<T> moe;
  };

  void sub_forward(std::vector<T>& x, SubSaved& s, const HcParams<T>& hc, const T* norm_w,
                   int64_t layer, bool is_attn);
  void sub_backward(std::vector<T>& dx, SubSaved& s, const HcParams<T>& hc, HcParams<T>& dhc,
                    const T* norm_w, T* dnorm_w, int64_t layer, bool is_attn);
  nn::AttentionShape attn_shape() const;
  nn::MoeShape moe_shape() const;

  ModelConfig config_;
  std::vector<std::vector<int64_t>> head_sizes_;
  std::vector<int> engram_index_;  // per layer: index into layer_ids, or -1
  TransformerParams<T> params_, grads_;
  nn::SparseRowGrad<T> embed_grad_;
  std::vector<nn::SparseRowGrad<T>> table_grads_;

  int64_t batch_ = 0, seq_ = 0;
  std::vector<int64_t> inputs_, targets_;
  std::vector<int32_t> hash_ids_;
  std::vector<LayerSaved> saved_;
  std::vector<T> x_final_, z_, head_pre_, final_rstd_, hn_, logits_, dlogits_;
  nn::HcCoefficientsSaved<T> head_coeff_;
  bool have_forward_ = false;
  bool inference_only_ = false;  // the Uninitialized constructor: no gradient buffers
};

}  // namespace engram::model
