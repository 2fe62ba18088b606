// Text normalizers with Hugging Face `tokenizers` semantics, on UTF-8 strings.
//
// A Normalizer is a sequence of steps applied in order. The steps are those of tokenizer.json
// "normalizer" objects (NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip, Replace, Prepend,
// Sequence) and the Engram compression chain of ENGRAM_SPEC §1 is built from them.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace engram::text {

class Regex;

struct NormalizerStep {
  enum class Kind {
    kNfc,
    kNfd,
    kNfkc,
    kNfkd,
    kLowercase,
    kStripAccents,
    kStrip,
    kReplace,
    kPrepend
  };
  Kind kind;
  // kStrip: which ends to strip (Unicode White_Space, as Rust's str::trim).
  bool strip_left = true;
  bool strip_right = true;
  // kReplace: `pattern` is a literal string or (pattern_is_regex) an Oniguruma regex; every
  // match becomes `content`. kPrepend: `content` is prepended to non-empty strings.
  std::string pattern;
  bool pattern_is_regex = false;
  std::string content;
};

class Normalizer {
 public:
  // The identity.
  Normalizer();
  // Throws FormatError naming `where` for a regex that does not compile.
  explicit Normalizer(std::vector<NormalizerStep> steps, const std::string& where = "normalizer");
  ~Normalizer();
  Normalizer(Normalizer&&) noexcept;
  Normalizer& operator=(Normalizer&&) noexcept;

  // Normalizes valid UTF-8 text.
  std::string normalize(std::string_view text) const;
  bool is_identity() const { return steps_.empty(); }

  // Engram's tokenizer-compression normalizer, exactly the reference's chain:
  // NFKC, NFD, StripAccents, Lowercase, Replace(/[ \t\r\n]+/, " "), Replace(/^ $/, U+E000),
  // Strip, Replace("\u{E000}", " ").
  static Normalizer engram_compression();

 private:
  std::vector<NormalizerStep> steps_;
  std::vector<std::unique_ptr<Regex>> regexes_;  // one per step (null where unused)
};

}  // namespace engram::text
