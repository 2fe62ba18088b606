// Incremental inference: runs a model::Transformer<float> over one sequence that arrives in
// pieces (a prompt prefill, then one token per decode step), each position computed once.
//
// The logits are those of Transformer::forward on the whole sequence so far (up to float
// rounding: the same primitives run on fewer rows). What a new position needs from earlier ones
// is kept per layer:
//   attention    K (after RoPE) and V of every earlier position      (pos, Hkv*hd) each
//   Engram       the last R = dilation*(kernel_size-1) gated values  (<= R, M*d); R = 9 for
//                Vt, the input of its causal short conv             max_ngram_size 3, kernel 4
//                (dilation = max_ngram_size); none without the conv
//   hashing      the last max_ngram_size-1 compressed ids            (hash::StreamingHasher)
// Everything else (embedding, mHC coefficients, read-outs and write-backs, norms, SwiGLU, MoE
// routing with the selection biases, the head) is per token. Logits are computed for the last
// pushed position only: the LM head, (V, C), is the dominant cost of a decode step.
//
// Usage:
//   infer::Decoder dec(model, loaded.text.hasher.get());
//   std::span<const float> logits = dec.push(prompt_ids);   // (V) for the last prompt token
//   while (...) logits = dec.push({&next, 1});              // (V) for `next`
//   dec.reset();                                            // a new sequence
//
// The model (its parameters and buffers) and the hasher are read in place, never copied: both
// must outlive the Decoder and stay unchanged while a sequence is decoded. Not thread-safe; the
// primitives it calls use the process-wide thread pool (engram::set_default_threads).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/memory/row_store.h"
#include "engram/model/transformer.h"
#include "engram/nn/engram_layer.h"
#include "engram/nn/hyper_connection.h"
#include "engram/nn/mlp.h"
#include "engram/nn/moe.h"

namespace engram::infer {

class Decoder {
 public:
  // hasher: the model's n-gram hasher (train::TextContext::hasher), null when the config has no
  // [engram]. Throws ConfigError when it is missing, given without [engram], or does not match
  // the model (Engram layer count, ids per token, table rows per layer).
  Decoder(const model::Transformer<float>& model, const hash::NgramHasher* hasher);

  // Starts a new, empty sequence (keeps the caches' memory).
  void reset();

  // Appends tokens (ids in [0, vocab_size())) to the sequence and returns the logits (V) of the
  // last one, valid until the next push or reset. Throws InputError, leaving the sequence as it
  // was, when tokens is empty, an id is out of range (also of the hasher's tokenizer
  // vocabulary), or the sequence would exceed max_seq_len().
  std::span<const float> push(std::span<const int64_t> tokens);

  // Reads the Engram tables from these stores instead of the model's own (e.g. .engt files
  // through memory::TieredRowStore): one per Engram layer in layer_ids order, null for "the
  // model's table". Each store must have the model's table rows and row width (ConfigError
  // naming the layer otherwise); stores must outlive the Decoder. Empty: the model's tables.
  void set_table_stores(std::vector<const memory::RowStore*> stores);

  // Tokens in the sequence so far.
  int64_t position() const { return position_; }
  int64_t max_seq_len() const { return config_->model.max_seq_len; }
  int64_t vocab_size() const { return config_->model.vocab_size; }

 private:
  // Per layer: the attention cache and the Engram short conv's look-back.
  struct LayerCache {
    std::vector<float> k, v;       // (position, Hkv*hd) each; k after RoPE
    std::vector<float> conv_hist;  // (rows, M*d) the last <= R gated values Vt, oldest first
  };

  // x_ (N, n, C) <- the sublayer (attention or FFN) applied, with its pre-norm and mHC.
  void sublayer(int64_t layer, bool is_attn, int64_t count);
  // out (N, C) = attention of h (N, C) over the cache and the new positions, which it appends.
  void attention(int64_t layer, const float* h, float* out, int64_t count);
  // x_ (N, n, C) += Engram(x_), hash ids (N, H) of this layer.
  void engram(int64_t layer, const int32_t* hash_ids, int64_t count);
  // RoPE in place on x (N, heads, hd) for positions position_ .. position_ + N - 1.
  void rope(float* x, int64_t count, int64_t heads) const;

  const model::Transformer<float>* model_;
  const model::ModelConfig* config_;
  const hash::NgramHasher* hasher_;
  std::optional<hash::StreamingHasher> stream_;
  std::vector<int> engram_index_;           // per layer: index into layer_ids, or -1
  std::vector<const memory::RowStore*> table_stores_;  // per Engram layer, or empty
  int64_t token_limit_ = 0;                 // ids must be < this: vocab_size, or less (hasher)
  int64_t conv_lookback_ = 0;               // R = max_ngram_size * (kernel_size - 1)
  std::vector<float> rope_cos_, rope_sin_;  // (max_seq_len, hd/2)

  int64_t position_ = 0;
  std::vector<LayerCache> cache_;

  // Scratch for the new positions, kept between pushes so decode steps do not allocate.
  std::vector<int32_t> hash_ids_;                // (L_engram, N, H)
  std::vector<float> x_, x_next_;                // (N, n, C) the residual streams
  std::vector<float> e_, y_, h_, f_;             // (N, C) embedding, read-out, norm, sublayer
  std::vector<float> pre_, post_, comb_, rstd_;  // (N, n), (N, n), (N, n, n), (N)
  std::vector<float> q_, ctx_, scores_;          // (N, Hq*hd), (N, Hq*hd), (Hq, pos+N)
  std::vector<float> engram_out_;                // (N, M*d)
  std::vector<float> conv_in_, conv_out_;        // (history + N, M*d)
  nn::HcCoefficientsSaved<float> coeff_;
  nn::SwiGluSaved<float> mlp_;
  nn::MoeSaved<float> moe_;
  nn::EngramSaved<float> engram_saved_;
  nn::ShortConvSaved<float> conv_saved_;
  std::vector<float> z_, hn_, logits_;  // (C), (C), (V) for the last position
};

}  // namespace engram::infer
