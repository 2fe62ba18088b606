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
// The Engram tables come from the model's params (engram_table) or from table stores
// (set_table_stores; a model loaded without its tables, infer::load_model with
// LoadOptions::engram_tables = false, needs a store for every Engram layer). File-tier stores can
// be prefetched (set_prefetched_table_stores): hashing needs only token ids, so at the start of
// every push (the prompt's prefill and each decode step) all Engram layers' rows are known; a
// memory::Prefetcher fetches them on a background thread, layer by layer in layer order, while
// the embedding and the blocks before each Engram layer run, and each Engram layer waits only for
// its own rows (Prefetcher::wait_layer). The logits are the same as without prefetching.
//
// The model (its parameters and buffers) and the hasher are read in place, never copied: both
// must outlive the Decoder and stay unchanged while a sequence is decoded. Not thread-safe; the
// primitives it calls use the process-wide thread pool (engram::set_default_threads).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/memory/prefetcher.h"
#include "engram/memory/row_store.h"
#include "engram/memory/tiered_store.h"
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
  // vocabulary), or the sequence would exceed max_seq_len(); ConfigError, the same way, when an
  // Engram layer has neither a table store nor its table in the model. An error reading a table
  // store (FormatError for a damaged block, IoError) comes out of the middle of the push and
  // leaves the sequence unusable: reset() before pushing again.
  std::span<const float> push(std::span<const int64_t> tokens);

  // Reads the Engram tables from these stores instead of the model's own (e.g. .engt files
  // through memory::TieredRowStore): one per Engram layer in layer_ids order, null for "the
  // model's table". Each store must have the model's table rows and row width, and a null one
  // needs the model's table loaded (ConfigError naming the layer otherwise); stores must outlive
  // the Decoder. Empty: the model's tables. Drops any prefetching.
  void set_table_stores(std::vector<const memory::RowStore*> stores);

  // As set_table_stores (none null), with every push's rows prefetched (see the file comment)
  // by a memory::Prefetcher that the Decoder owns (options: its chunk size and test hook).
  void set_prefetched_table_stores(std::vector<const memory::TieredRowStore*> stores,
                                   memory::PrefetcherOptions options = {});
  // The prefetcher, null without set_prefetched_table_stores. Its step_stats() are those of the
  // last push: per Engram layer the rows, cache hits, blocks and bytes read, fetch and ready
  // times, and the seconds the layer stalled in wait_layer.
  const memory::Prefetcher* prefetcher() const { return prefetcher_.get(); }

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
  size_t hash_layers() const;  // Engram layers (0 without [engram])
  // Throws ConfigError when Engram layer `e` (layer_ids order) would have no table to read.
  void check_table(size_t e, const memory::RowStore* store) const;

  const model::Transformer<float>* model_;
  const model::ModelConfig* config_;
  const hash::NgramHasher* hasher_;
  std::optional<hash::StreamingHasher> stream_;
  std::vector<int> engram_index_;                      // per layer: index into layer_ids, or -1
  std::vector<const memory::RowStore*> table_stores_;  // per Engram layer, or empty
  std::unique_ptr<memory::Prefetcher> prefetcher_;     // over table_stores_, or null
  std::vector<std::vector<int64_t>> head_offsets_;     // per Engram layer (the fetch plans')
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
