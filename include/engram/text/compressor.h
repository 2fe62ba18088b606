// Engram tokenizer compression (ENGRAM_SPEC §1): a surjective map from tokenizer ids to
// canonical ids, so that tokens that differ only in case, accents, Unicode form or surrounding
// whitespace share their n-gram table rows.
//
// For every id in ascending order: text = decode([id]); if text holds U+FFFD (a partial UTF-8
// sequence) the key is the raw vocabulary string, else key = N(text) (or text if N(text) is
// empty), N = Normalizer::engram_compression(). Compressed ids are handed out in order of first
// appearance of each key. Works for any byte-level BPE tokenizer.json.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/text/tokenizer.h"

namespace engram::text {

struct CompressionTable {
  std::vector<int32_t> lut;       // lut[id]: compressed id of tokenizer id `id`
  std::vector<std::string> keys;  // keys[c]: the key of compressed id c
  std::vector<uint8_t> fallback;  // fallback[id]: 1 if the key was the raw token (U+FFFD case)

  // Builds the table for every id of the tokenizer (0 .. vocab_size-1) on `threads` threads.
  static CompressionTable build(const Tokenizer& tokenizer, int threads = 0);

  int64_t vocab_size() const { return static_cast<int64_t>(lut.size()); }
  int64_t compressed_size() const { return static_cast<int64_t>(keys.size()); }
  // 1 - V'/V.
  double reduction() const;

  // Compressed ids; negative ids pass through unchanged (as in the reference). Throws
  // InputError naming the position of an id >= vocab_size().
  std::vector<int64_t> apply(std::span<const int64_t> ids) const;
};

}  // namespace engram::text
