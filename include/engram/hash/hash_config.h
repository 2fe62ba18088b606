// Engram hashing configuration, in the reference implementation's names.
//
// JSON form (the CLI's --config), e.g. the reference defaults:
//   {"engram_vocab_size": [646400, 646400], "max_ngram_size": 3, "n_embed_per_ngram": 512,
//    "n_head_per_ngram": 8, "layer_ids": [1, 15], "pad_id": 2, "seed": 0, "kernel_size": 4,
//    "hidden_size": 1024, "hc_mult": 4}
// `hidden_size`, `hc_mult` and `kernel_size` describe the Engram layer and are optional here.
// `dead_token_id` (optional, e.g. -1) switches on the dead-id rule: see NgramHasher.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace engram::hash {

struct EngramHashConfig {
  // One base table size per n-gram order n = 2 ... max_ngram_size.
  std::vector<int64_t> engram_vocab_size = {646400, 646400};
  int max_ngram_size = 3;
  int n_embed_per_ngram = 512;
  int n_head_per_ngram = 8;
  std::vector<int> layer_ids = {1, 15};
  int64_t pad_id = 2;  // a tokenizer id; hashing uses its compressed id
  uint64_t seed = 0;
  int kernel_size = 4;
  int hidden_size = 0;  // 0 = not given
  int hc_mult = 1;
  std::optional<int64_t> dead_token_id;  // unset = reference behaviour (no dead-id rule)

  // Number of ids per token per layer: (max_ngram_size - 1) * n_head_per_ngram.
  int ids_per_token() const { return (max_ngram_size - 1) * n_head_per_ngram; }

  // Throws ConfigError naming `source` and the field when a value makes no sense:
  // max_ngram_size < 2, engram_vocab_size of the wrong length or with a size < 2 (or so large
  // that a head's prime would not fit in int32), heads < 1, n_embed_per_ngram < 1 or not
  // divisible by heads, no or duplicate layer ids, negative layer ids, pad_id < 0,
  // kernel_size < 1, hidden_size < 0, hc_mult < 1. (Whether pad_id and dead_token_id fit the
  // tokenizer is checked by NgramHasher, which knows the vocabulary.)
  void validate(const std::string& source = "config") const;

  // Parses and validates. Malformed JSON, a missing required field (all but hidden_size,
  // hc_mult, kernel_size and dead_token_id), a mistyped value or an unknown key (usually a
  // typo) throws FormatError; a nonsense value throws ConfigError (see validate).
  static EngramHashConfig from_json(const std::string& json_text, const std::string& source);
  static EngramHashConfig from_file(const std::string& path);
  std::string to_json() const;
};

}  // namespace engram::hash
