// Engram's multi-head n-gram hashing (ENGRAM_SPEC §2), bit-identical to the reference.
//
// For every token position t of a row and every Engram layer l:
//   x'      = P(x)                       compressed ids (P: the tokenizer compression table)
//   s_k[t]  = x'[t-k] for t >= k, else pad' = P(pad_id)          k = 0 .. N-1
//   mix_n   = XOR_{k<n} (s_k[t] * m_l[k])   wrapping 64-bit         n = 2 .. N
//   z[n][j] = mix_n floor-mod p_l[n][j]                             j = 0 .. K-1
// Output per token and layer: (N-1)*K ids, order n = 2 heads 0..K-1, then n = 3, ...
// Ids are per head, in [0, p); the row in the layer's table is z + head_offsets()[n][j].
//
// Multipliers m_l = 2 * default_rng(seed + 10007*l).integers(0, half, N) + 1 with
// half = max(1, ((2^63-1) // V') // 2). Primes: one global set of used primes, walked in
// layer_ids order, then order n, then head; each head takes the smallest prime > start not yet
// used (start = engram_vocab_size[n-2] - 1, then the previous head's prime).
//
// Dead-id rule (optional, config.dead_token_id set; DeepSeek-V4.1 style): positions whose id
// equals dead_token_id are "dead"; a look-back s_k[t] (k >= 1) that reaches or crosses a dead
// position (x[t-j] dead for some 1 <= j <= k) reads pad' instead. s_0 is the token itself:
// at a dead position it is dead_token_id, which is no tokenizer id (e.g. -1) and passes
// through compression unchanged, as negative ids do in the reference.
//
// The modulo is exact floor division without a per-element `%` by a run-time divisor: each prime
// carries precomputed reciprocals (see fast_mod.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engram/hash/hash_config.h"

namespace engram::hash {

class NgramHasher {
 public:
  // Marks a dead position in the compressed ids given to hash_compressed (dead-id rule only).
  static constexpr int64_t kDeadMarker = INT64_MIN;

  // compress_lut[id] is the compressed id of tokenizer id `id` (size = tokenizer vocabulary);
  // compressed_vocab is V' (the number of distinct compressed ids). Throws ConfigError when
  // the config is invalid, a table entry is outside [0, V'), pad_id is not a tokenizer id, or
  // dead_token_id is one (the dead id must lie outside [0, tokenizer vocabulary)).
  NgramHasher(EngramHashConfig config, std::vector<int32_t> compress_lut, int64_t compressed_vocab);
  // A hasher without a tokenizer, for benchmarks, parity dumps and tests: `vocab` token ids
  // compressed by id -> id mod max(1, 3 vocab / 4).
  static NgramHasher synthetic(EngramHashConfig config, int64_t vocab);

  const EngramHashConfig& config() const { return config_; }
  int64_t tokenizer_vocab() const { return static_cast<int64_t>(lut_.size()); }
  // The compression table P: compress_lut()[id] for every tokenizer id (tokenizer_vocab() values).
  std::span<const int32_t> compress_lut() const { return lut_; }
  int64_t compressed_vocab() const { return compressed_vocab_; }
  int64_t pad_compressed() const { return pad_compressed_; }
  int max_ngram_size() const { return config_.max_ngram_size; }
  int ids_per_token() const { return config_.ids_per_token(); }

  size_t num_layers() const { return config_.layer_ids.size(); }
  int layer_id(size_t layer_index) const { return config_.layer_ids.at(layer_index); }
  // Index of a configured layer id; throws InputError if the layer has no Engram.
  size_t layer_index(int layer_id) const;

  // max_ngram_size multipliers (odd, positive) of a layer.
  const std::vector<int64_t>& multipliers(size_t layer_index) const;
  // primes(l)[n-2][j]: the table size of head j of order n.
  const std::vector<std::vector<int64_t>>& primes(size_t layer_index) const;
  // Row offset of every head in the layer's single table, in output order (ids_per_token values).
  std::vector<int64_t> head_offsets(size_t layer_index) const;
  // Rows in the layer's table (sum of its primes).
  int64_t table_rows(size_t layer_index) const;

  // Compresses ids: out[i] = P(ids[i]). Every id must lie in [0, tokenizer_vocab()), except the
  // dead_token_id when the dead-id rule is on (it maps to itself). Throws InputError naming the
  // index and value of the first bad id.
  void compress(std::span<const int64_t> ids, std::span<int64_t> out) const;

  // Batch hashing of tokenizer ids (batch, seq_len), row-major, rows independent.
  // out: (batch, seq_len, ids_per_token) for one layer. `threads` 0 = all cores; a thread only
  // gets a share of at least 32 Ki tokens x layers (less is not worth handing over).
  // Throws InputError naming the first bad id as ids[row][position].
  void hash(std::span<const int64_t> ids, size_t batch, size_t seq_len, size_t layer_index,
            std::span<int32_t> out, int threads = 1) const;
  // All layers at once: out is (num_layers, batch, seq_len, ids_per_token).
  void hash_all_layers(std::span<const int64_t> ids, size_t batch, size_t seq_len,
                       std::span<int32_t> out, int threads = 1) const;

  // The kernel: hashes `count` compressed ids x[0..count) of one row for one layer, given the
  // max_ngram_size-1 compressed ids that precede x[0] in `history` (oldest first; pad' where the
  // row has none; with the dead-id rule a dead position holds kDeadMarker instead of its id).
  // out: (count, ids_per_token).
  void hash_compressed(const int64_t* history, const int64_t* x, size_t count, size_t layer_index,
                       int32_t* out) const;

 private:
  friend class StreamingHasher;
  struct Layer;
  const Layer& layer(size_t layer_index) const;  // throws InputError for a bad index
  // out[i] = P(ids[i]) for i < n, kDeadMarker for the dead id (dead-id rule). Returns the index
  // of the first id that is neither a tokenizer id nor the dead id (out is then partial), or n.
  size_t compress_run(const int64_t* ids, size_t n, int64_t* out) const;
  // hash_compressed over one contiguous window: window[0 .. N-1) history, then count ids.
  void run_kernel(const int64_t* window, size_t count, size_t layer_index, int32_t* out) const;
  // hash / hash_all_layers for layers [first_layer, first_layer + num); out is
  // (num, batch, seq_len, ids_per_token). `where` names the caller in errors.
  void hash_batch(std::span<const int64_t> ids, size_t batch, size_t seq_len, size_t first_layer,
                  size_t num, std::span<int32_t> out, int threads, const char* where) const;

  EngramHashConfig config_;
  std::vector<int32_t> lut_;
  int64_t compressed_vocab_ = 0;
  int64_t pad_compressed_ = 0;
  int64_t dead_compressed_ = 0;  // = dead_token_id when it is set
  std::vector<Layer> layers_;

 public:
  ~NgramHasher();
  NgramHasher(NgramHasher&&) noexcept;
  NgramHasher& operator=(NgramHasher&&) noexcept;
};

// Hashes one sequence that arrives in pieces (prefill in chunks, then one token per decode
// step). It carries the last max_ngram_size-1 compressed ids between calls, so the ids of every
// push equal those of hashing the whole sequence at once.
class StreamingHasher {
 public:
  explicit StreamingHasher(const NgramHasher& hasher);

  // Starts a new sequence.
  void reset();
  // Hashes the next ids.size() tokens for every layer: out is (num_layers, ids.size(),
  // ids_per_token).
  void push(std::span<const int64_t> ids, std::span<int32_t> out);
  // Tokens pushed since the last reset.
  size_t position() const { return position_; }

 private:
  const NgramHasher* hasher_;
  std::vector<int64_t> history_;  // max_ngram_size - 1 compressed ids, oldest first
  std::vector<int64_t> scratch_;  // (history_, compressed ids of the current push)
  size_t position_ = 0;
};

}  // namespace engram::hash
