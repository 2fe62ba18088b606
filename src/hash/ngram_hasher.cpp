#include "engram/hash/ngram_hasher.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <unordered_set>

#include "engram/hash/numpy_random.h"
#include "engram/hash/primes.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "hash/fast_mod.h"

namespace engram::hash {
namespace {

using fastmod::kLanes;
using fastmod::ModLanes;

// The reference's layer seed: seed + 10007 * layer_id.
constexpr uint64_t kLayerSeedFactor = 10007;
// Tokens compressed and hashed per step of a batch: the window (8 bytes a token) and its
// output (ids_per_token * 4 bytes a token, 16 KiB in the default shape) stay in L1.
constexpr size_t kBlockTokens = 256;
// Smallest share of a batch given to one thread, in tokens x layers: ~0.2 ms of work, well above
// what handing a piece to a pool thread costs (20-80 us measured on a 2-vCPU VM).
constexpr size_t kGrainLayerTokens = size_t{1} << 15;

// Everything the kernel reads, for one layer and one run of tokens of one row.
struct KernelArgs {
  // window[0 .. N-1) holds the compressed ids before the run, window[N-1 .. N-1+count) the run:
  // token i has s_k = window[N-1+i-k].
  const int64_t* window;
  size_t count;
  int max_n;              // N
  int heads;              // K
  int groups;             // ceil(K / kLanes)
  const uint64_t* mult;   // (N) multipliers
  const ModLanes* lanes;  // (N-1, groups): heads [g*kLanes, g*kLanes+kLanes) of each order
  int32_t* out;           // (count, (N-1)*K)
  // Dead-id rule (DeepSeek-V4.1): a window entry equal to NgramHasher::kDeadMarker is a dead
  // position; its own s_0 is dead_value, and look-backs that reach or cross it read pad.
  bool dead_rule;
  int64_t pad;
  int64_t dead_value;
};

// mix_n = XOR_{k<n} s_k * m_k (wrapping), reduced mod every head's prime of every order.
// Common shapes are fixed at compile time so that the loops over orders and head groups unroll
// and every store is a full kLanes-wide one: kMaxN > 0 fixes N, kGroups > 0 fixes
// K = kGroups * kLanes; 0 reads them from the args. The args are copied into locals so that the
// compiler need not reload them after each store.
template <bool kDeadRule, int kMaxN, int kGroups>
[[gnu::always_inline]] inline void hash_run(const KernelArgs& a) {
  const int max_n = kMaxN > 0 ? kMaxN : a.max_n;
  const int heads = kGroups > 0 ? kGroups * kLanes : a.heads;
  const int groups = kGroups > 0 ? kGroups : a.groups;
  const uint64_t* const mult = a.mult;
  const ModLanes* const lanes = a.lanes;
  const int64_t pad = a.pad;
  const int64_t dead_value = a.dead_value;
  const size_t count = a.count;
  const int64_t* s = a.window + (max_n - 1);
  int32_t* o = a.out;
  // Offset (relative to token i = 0) of the most recent dead position before the current token.
  ptrdiff_t last_dead = -max_n;
  if constexpr (kDeadRule) {
    for (int j = 1; j < max_n; ++j) {
      if (s[-j] == NgramHasher::kDeadMarker) {
        last_dead = -j;
        break;
      }
    }
  }
  for (size_t i = 0; i < count; ++i, ++s) {
    uint64_t mix;
    ptrdiff_t reach = max_n;  // look-backs k >= reach read pad
    if constexpr (kDeadRule) {
      reach = static_cast<ptrdiff_t>(i) - last_dead;
      const bool dead = s[0] == NgramHasher::kDeadMarker;
      mix = static_cast<uint64_t>(dead ? dead_value : s[0]) * mult[0];
      if (dead) last_dead = static_cast<ptrdiff_t>(i);
    } else {
      mix = static_cast<uint64_t>(s[0]) * mult[0];
    }
    const ModLanes* c = lanes;
    for (int k = 1; k < max_n; ++k) {
      int64_t sk = s[-k];
      if constexpr (kDeadRule) sk = k >= reach ? pad : sk;
      mix ^= static_cast<uint64_t>(sk) * mult[k];
      for (int g = 0; g < groups; ++g, ++c) {
        const int n = std::min(kLanes, heads - g * kLanes);
        fastmod::floor_mod_lanes(static_cast<int64_t>(mix), *c, n, o);
        o += n;
      }
    }
  }
}

// Picks the compile-time shape for the run's N and K (other shapes take the generic loop).
template <bool kDeadRule>
[[gnu::always_inline]] inline void hash_any_shape(const KernelArgs& a) {
  const int full_groups = a.heads % kLanes == 0 ? a.groups : 0;
  if (full_groups == 1) {  // K = 8, the reference's and DeepSeek-V4.1's head count
    switch (a.max_n) {
      case 2:
        hash_run<kDeadRule, 2, 1>(a);
        break;
      case 3:
        hash_run<kDeadRule, 3, 1>(a);
        break;
      case 4:
        hash_run<kDeadRule, 4, 1>(a);
        break;
      default:
        hash_run<kDeadRule, 0, 1>(a);
    }
  } else if (full_groups == 2) {  // K = 16
    switch (a.max_n) {
      case 2:
        hash_run<kDeadRule, 2, 2>(a);
        break;
      case 3:
        hash_run<kDeadRule, 3, 2>(a);
        break;
      default:
        hash_run<kDeadRule, 0, 2>(a);
    }
  } else {
    hash_run<kDeadRule, 0, 0>(a);
  }
}

// One function, compiled for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3) and baseline x86-64;
// the loader picks the best the CPU supports.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void hash_kernel(
    const KernelArgs& a) {
  if (a.dead_rule) {
    hash_any_shape<true>(a);
  } else {
    hash_any_shape<false>(a);
  }
}

// The little-endian 32-bit words of a non-negative integer below 2^128 (numpy's entropy).
std::vector<uint32_t> entropy_words(Uint128 value) {
  std::vector<uint32_t> words;
  do {
    words.push_back(static_cast<uint32_t>(value));
    value >>= 32;
  } while (value != 0);
  return words;
}

std::string id_error(const std::string& where, const std::string& index, int64_t id, size_t vocab) {
  return error_message(where, index + " = " + std::to_string(id) +
                                  " is outside the tokenizer vocabulary [0, " +
                                  std::to_string(vocab) + ")");
}

}  // namespace

struct NgramHasher::Layer {
  std::vector<int64_t> multipliers;          // (N)
  std::vector<uint64_t> multipliers_u64;     // (N), the same bits for wrapping products
  std::vector<std::vector<int64_t>> primes;  // (N-1, K)
  std::vector<ModLanes> lanes;               // (N-1, groups)
};

NgramHasher NgramHasher::synthetic(EngramHashConfig config, int64_t vocab) {
  const int64_t compressed = std::max<int64_t>(1, vocab * 3 / 4);
  std::vector<int32_t> lut(static_cast<size_t>(std::max<int64_t>(vocab, 0)));
  for (size_t id = 0; id < lut.size(); ++id)
    lut[id] = static_cast<int32_t>(static_cast<int64_t>(id) % compressed);
  return NgramHasher(std::move(config), std::move(lut), compressed);
}

NgramHasher::NgramHasher(EngramHashConfig config, std::vector<int32_t> compress_lut,
                         int64_t compressed_vocab)
    : config_(std::move(config)),
      lut_(std::move(compress_lut)),
      compressed_vocab_(compressed_vocab) {
  config_.validate("config");
  const int64_t vocab = tokenizer_vocab();
  if (vocab == 0) throw ConfigError(error_message("compress_lut", "is empty"));
  if (compressed_vocab_ < 1) {
    throw ConfigError(
        error_message("compressed_vocab", std::to_string(compressed_vocab_) + " is less than 1"));
  }
  for (size_t i = 0; i < lut_.size(); ++i) {
    if (lut_[i] < 0 || lut_[i] >= compressed_vocab_) {
      throw ConfigError(error_message(
          "compress_lut[" + std::to_string(i) + "]",
          std::to_string(lut_[i]) + " is outside [0, " + std::to_string(compressed_vocab_) + ")"));
    }
  }
  if (config_.pad_id >= vocab) {
    throw ConfigError(
        error_message("config: pad_id", std::to_string(config_.pad_id) +
                                            " is outside the tokenizer vocabulary [0, " +
                                            std::to_string(vocab) + ")"));
  }
  pad_compressed_ = lut_[static_cast<size_t>(config_.pad_id)];
  if (config_.dead_token_id) {
    const int64_t dead = *config_.dead_token_id;
    if (dead >= 0 && dead < vocab) {
      throw ConfigError(error_message("config: dead_token_id",
                                      std::to_string(dead) +
                                          " is a tokenizer id; the dead id must lie outside [0, " +
                                          std::to_string(vocab) + "), e.g. -1"));
    }
    dead_compressed_ = dead;
  }

  // Multipliers: m = 2 * default_rng(seed + 10007 * layer).integers(0, half, N) + 1.
  const int64_t half = std::max<int64_t>(1, (INT64_MAX / compressed_vocab_) / 2);
  const int max_n = config_.max_ngram_size;
  const int heads = config_.n_head_per_ngram;
  const int groups = (heads + kLanes - 1) / kLanes;
  std::unordered_set<uint64_t> used_primes;
  for (int layer_id : config_.layer_ids) {
    Layer layer;
    const Uint128 entropy =
        static_cast<Uint128>(config_.seed) +
        static_cast<Uint128>(kLayerSeedFactor) * static_cast<uint64_t>(layer_id);
    const std::vector<uint32_t> words = entropy_words(entropy);
    NumpyGenerator rng{SeedSequence(words)};
    for (int64_t r : rng.integers(0, half, static_cast<size_t>(max_n))) {
      layer.multipliers.push_back(2 * r + 1);
      layer.multipliers_u64.push_back(static_cast<uint64_t>(2 * r + 1));
    }
    // Primes: one global set, walked in layer, order, head order.
    for (int n = 2; n <= max_n; ++n) {
      std::vector<int64_t>& order_primes = layer.primes.emplace_back();
      uint64_t start =
          static_cast<uint64_t>(config_.engram_vocab_size[static_cast<size_t>(n - 2)]) - 1;
      for (int j = 0; j < heads; ++j) {
        start = next_unused_prime(start, used_primes);
        used_primes.insert(start);
        order_primes.push_back(static_cast<int64_t>(start));
      }
      for (int g = 0; g < groups; ++g) {
        layer.lanes.push_back(fastmod::make_mod_lanes(order_primes.data() + g * kLanes,
                                                      std::min(kLanes, heads - g * kLanes)));
      }
    }
    layers_.push_back(std::move(layer));
  }
}

NgramHasher::~NgramHasher() = default;
NgramHasher::NgramHasher(NgramHasher&&) noexcept = default;
NgramHasher& NgramHasher::operator=(NgramHasher&&) noexcept = default;

const NgramHasher::Layer& NgramHasher::layer(size_t layer_index) const {
  if (layer_index >= layers_.size()) {
    throw InputError(error_message("NgramHasher", "layer index " + std::to_string(layer_index) +
                                                      " is out of range (" +
                                                      std::to_string(layers_.size()) + " layers)"));
  }
  return layers_[layer_index];
}

size_t NgramHasher::layer_index(int layer_id) const {
  const auto& ids = config_.layer_ids;
  const auto it = std::find(ids.begin(), ids.end(), layer_id);
  if (it == ids.end()) {
    std::string list;
    for (int id : ids) list += (list.empty() ? "" : ", ") + std::to_string(id);
    throw InputError(error_message(
        "NgramHasher",
        "layer " + std::to_string(layer_id) + " has no Engram (Engram layers: " + list + ")"));
  }
  return static_cast<size_t>(it - ids.begin());
}

const std::vector<int64_t>& NgramHasher::multipliers(size_t layer_index) const {
  return layer(layer_index).multipliers;
}

const std::vector<std::vector<int64_t>>& NgramHasher::primes(size_t layer_index) const {
  return layer(layer_index).primes;
}

std::vector<int64_t> NgramHasher::head_offsets(size_t layer_index) const {
  std::vector<int64_t> offsets;
  int64_t offset = 0;
  for (const auto& order_primes : layer(layer_index).primes) {
    for (int64_t p : order_primes) {
      offsets.push_back(offset);
      offset += p;
    }
  }
  return offsets;
}

int64_t NgramHasher::table_rows(size_t layer_index) const {
  int64_t rows = 0;
  for (const auto& order_primes : layer(layer_index).primes) {
    for (int64_t p : order_primes) rows += p;
  }
  return rows;
}

size_t NgramHasher::compress_run(const int64_t* ids, size_t n, int64_t* out) const {
  // Locals, so that the stores to `out` do not force reloads of the table or the dead id.
  const int32_t* const lut = lut_.data();
  const uint64_t vocab = lut_.size();
  if (!config_.dead_token_id) {
    for (size_t i = 0; i < n; ++i) {
      const uint64_t id = static_cast<uint64_t>(ids[i]);  // negative ids wrap to >= vocab
      if (id >= vocab) return i;
      out[i] = lut[id];
    }
    return n;
  }
  const int64_t dead = *config_.dead_token_id;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t id = static_cast<uint64_t>(ids[i]);
    if (ids[i] == dead) {
      out[i] = kDeadMarker;
    } else if (id >= vocab) {
      return i;
    } else {
      out[i] = lut[id];
    }
  }
  return n;
}

void NgramHasher::compress(std::span<const int64_t> ids, std::span<int64_t> out) const {
  if (out.size() != ids.size()) {
    throw InputError(error_message("compress", "out has " + std::to_string(out.size()) +
                                                   " elements, ids " + std::to_string(ids.size())));
  }
  const size_t bad = compress_run(ids.data(), ids.size(), out.data());
  if (bad < ids.size()) {
    throw InputError(
        id_error("compress", "ids[" + std::to_string(bad) + "]", ids[bad], lut_.size()));
  }
  for (int64_t& c : out) c = c == kDeadMarker ? dead_compressed_ : c;
}

void NgramHasher::run_kernel(const int64_t* window, size_t count, size_t layer_index,
                             int32_t* out) const {
  const Layer& l = layers_[layer_index];
  const KernelArgs args{window,
                        count,
                        config_.max_ngram_size,
                        config_.n_head_per_ngram,
                        (config_.n_head_per_ngram + kLanes - 1) / kLanes,
                        l.multipliers_u64.data(),
                        l.lanes.data(),
                        out,
                        config_.dead_token_id.has_value(),
                        pad_compressed_,
                        dead_compressed_};
  hash_kernel(args);
}

void NgramHasher::hash_compressed(const int64_t* history, const int64_t* x, size_t count,
                                  size_t layer_index, int32_t* out) const {
  layer(layer_index);  // validates the index
  const size_t h = static_cast<size_t>(config_.max_ngram_size - 1);
  if (history + h == x) {  // already one contiguous window
    run_kernel(history, count, layer_index, out);
    return;
  }
  // The first h tokens look back into `history`: hash them from a copied window; the rest
  // look back only into x itself.
  const size_t head = std::min(count, h);
  std::vector<int64_t> window(history, history + h);
  window.insert(window.end(), x, x + head);
  run_kernel(window.data(), head, layer_index, out);
  if (count > head) {
    run_kernel(x, count - head, layer_index, out + head * static_cast<size_t>(ids_per_token()));
  }
}

void NgramHasher::hash_batch(std::span<const int64_t> ids, size_t batch, size_t seq_len,
                             size_t first_layer, size_t num, std::span<int32_t> out, int threads,
                             const char* where) const {
  const size_t tokens = batch * seq_len;
  const size_t ipt = static_cast<size_t>(ids_per_token());
  if (ids.size() != tokens) {
    throw InputError(
        error_message(where, "ids has " + std::to_string(ids.size()) +
                                 " elements, batch x seq_len = " + std::to_string(tokens)));
  }
  if (out.size() != num * tokens * ipt) {
    throw InputError(error_message(where, "out has " + std::to_string(out.size()) +
                                              " elements, expected " +
                                              std::to_string(num * tokens * ipt)));
  }
  const size_t h = static_cast<size_t>(config_.max_ngram_size - 1);
  // Index of the first id that is not a tokenizer id (tokens = none): pieces stop at their
  // first bad id, so the smallest one reported is the first of the whole batch.
  std::atomic<size_t> first_bad{tokens};
  auto report_bad = [&](size_t index) {
    size_t seen = first_bad.load();
    while (index < seen && !first_bad.compare_exchange_weak(seen, index)) {
    }
  };
  // Each piece is a range of (row, position) tokens; a piece starting mid-row takes its history
  // from the row itself.
  const size_t grain = kGrainLayerTokens / num;  // num >= 1: a valid config has layers
  parallel_for(tokens, threads, grain, [&](size_t begin, size_t end) {
    std::vector<int64_t> window(h + kBlockTokens);  // (h history, then up to kBlockTokens ids)
    size_t pos = begin;
    while (pos < end) {
      const size_t row_start = pos - pos % seq_len;
      const size_t row_end = std::min(end, row_start + seq_len);
      // History: the h ids before pos in this row, pad' where the row has none.
      const size_t from_row = std::min(h, pos - row_start);
      std::fill(window.begin(), window.begin() + static_cast<ptrdiff_t>(h - from_row),
                pad_compressed_);
      if (const size_t bad =
              compress_run(ids.data() + pos - from_row, from_row, window.data() + (h - from_row));
          bad < from_row) {
        report_bad(pos - from_row + bad);
        return;
      }
      while (pos < row_end) {
        const size_t n = std::min(kBlockTokens, row_end - pos);
        if (const size_t bad = compress_run(ids.data() + pos, n, window.data() + h); bad < n) {
          report_bad(pos + bad);
          return;
        }
        for (size_t l = 0; l < num; ++l) {
          run_kernel(window.data(), n, first_layer + l, out.data() + (l * tokens + pos) * ipt);
        }
        std::copy(window.begin() + static_cast<ptrdiff_t>(n),
                  window.begin() + static_cast<ptrdiff_t>(n + h), window.begin());
        pos += n;
      }
    }
  });
  if (const size_t bad = first_bad.load(); bad < tokens) {
    throw InputError(id_error(
        where, "ids[" + std::to_string(bad / seq_len) + "][" + std::to_string(bad % seq_len) + "]",
        ids[bad], lut_.size()));
  }
}

void NgramHasher::hash(std::span<const int64_t> ids, size_t batch, size_t seq_len,
                       size_t layer_index, std::span<int32_t> out, int threads) const {
  layer(layer_index);  // validates the index
  hash_batch(ids, batch, seq_len, layer_index, 1, out, threads, "hash");
}

void NgramHasher::hash_all_layers(std::span<const int64_t> ids, size_t batch, size_t seq_len,
                                  std::span<int32_t> out, int threads) const {
  hash_batch(ids, batch, seq_len, 0, layers_.size(), out, threads, "hash_all_layers");
}

StreamingHasher::StreamingHasher(const NgramHasher& hasher) : hasher_(&hasher) {
  reset();
}

void StreamingHasher::reset() {
  history_.assign(static_cast<size_t>(hasher_->max_ngram_size() - 1), hasher_->pad_compressed());
  position_ = 0;
}

void StreamingHasher::push(std::span<const int64_t> ids, std::span<int32_t> out) {
  const size_t n = ids.size();
  const size_t h = history_.size();
  const size_t ipt = static_cast<size_t>(hasher_->ids_per_token());
  if (out.size() != hasher_->num_layers() * n * ipt) {
    throw InputError(error_message("push", "out has " + std::to_string(out.size()) +
                                               " elements, expected " +
                                               std::to_string(hasher_->num_layers() * n * ipt)));
  }
  // scratch_ = (history, compressed ids): one contiguous window.
  scratch_.resize(h + n);
  std::copy(history_.begin(), history_.end(), scratch_.begin());
  if (const size_t bad = hasher_->compress_run(ids.data(), n, scratch_.data() + h); bad < n) {
    throw InputError(id_error(
        "push",
        "ids[" + std::to_string(bad) + "] (position " + std::to_string(position_ + bad) + ")",
        ids[bad], static_cast<size_t>(hasher_->tokenizer_vocab())));
  }
  for (size_t l = 0; l < hasher_->num_layers(); ++l) {
    hasher_->hash_compressed(scratch_.data(), scratch_.data() + h, n, l, out.data() + l * n * ipt);
  }
  std::copy(scratch_.end() - static_cast<ptrdiff_t>(h), scratch_.end(), history_.begin());
  position_ += n;
}

}  // namespace engram::hash
