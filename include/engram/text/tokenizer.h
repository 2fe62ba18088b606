// A Hugging Face tokenizer.json with a byte-level BPE model, encoded and decoded exactly as the
// `tokenizers` library does.
//
// Supported tokenizer.json parts:
//   added_tokens   all flags (special, normalized, single_word, lstrip, rstrip); matched
//                  leftmost-longest before pre-tokenization (non-normalized ones on the raw
//                  text, normalized ones after the normalizer)
//   normalizer     null, Sequence, NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip,
//                  Replace (String or Regex), Prepend
//   pre_tokenizer  Sequence, Split (String or Regex; Removed, Isolated, MergedWithPrevious,
//                  MergedWithNext, Contiguous; invert), Digits, ByteLevel (add_prefix_space,
//                  use_regex) — ByteLevel last
//   model          BPE over byte-level symbols: vocab, merges ("a b" or ["a", "b"]), unk_token,
//                  fuse_unk, ignore_merges (dropout, continuing_subword_prefix and
//                  end_of_word_suffix must be unset)
//   decoder        ByteLevel (or a Sequence holding only ByteLevel)
// post_processor, truncation and padding do not change ids of encode without special tokens and
// are ignored. Anything else is rejected with a FormatError naming the file and field.
//
// Regexes use ICU with Oniguruma semantics; the pre-tokenizers of well-known tokenizers
// (DeepSeek-V3, GPT-2) run on hand-written matchers that give the same splits.
//
// A Tokenizer is immutable after loading; encode/decode may be called from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace engram::text {

struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

class Tokenizer {
 public:
  // Loads `path`: a tokenizer.json file, or a directory that holds one.
  static Tokenizer from_file(const std::string& path);
  // Parses tokenizer.json text; `source` names it in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Ids of `text` (UTF-8), no special tokens added; added tokens in the text are recognised.
  // Throws InputError naming the byte offset of invalid UTF-8.
  std::vector<uint32_t> encode(std::string_view text) const;
  // Appends the ids of `text` to `out`.
  void encode(std::string_view text, std::vector<uint32_t>& out) const;
  // Encodes many documents on up to `threads` threads (0 = all cores); order is kept.
  std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string>& texts,
                                                  int threads = 0) const;

  // Text of `ids` (special tokens kept, no clean-up), invalid UTF-8 replaced by U+FFFD exactly
  // as `tokenizers` does. Throws InputError for an id with no token.
  std::string decode(std::span<const uint32_t> ids) const;
  // The raw bytes `ids` decode to, before the UTF-8 repair.
  std::string decode_bytes(std::span<const uint32_t> ids) const;

  // len(tokenizer): one more than the largest id of the vocabulary and the added tokens.
  size_t vocab_size() const;
  // The vocabulary string of an id (byte-level form, e.g. "Ġthe"; an added token's content).
  std::optional<std::string> id_to_token(uint32_t id) const;
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  const std::vector<AddedToken>& added_tokens() const;

  // Short description: vocabulary size, merges, added tokens, pre-tokenizer matchers.
  std::string describe() const;

  // Run every Split on its ICU regex instead of a hand-written matcher (for tests/benchmarks).
  void set_reference_pretokenizer(bool on);

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::text
