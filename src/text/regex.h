// Regular expressions in Oniguruma (Ruby) syntax, as tokenizer.json files carry them, run with
// ICU on UTF-8 text.
//
// Hugging Face `tokenizers` compiles tokenizer.json patterns with Oniguruma; ICU's syntax is
// nearly the same. Where the two differ the pattern is rewritten before ICU compiles it:
//   \s, \S  -> \p{White_Space}, \P{White_Space}  (ICU's \s lacks U+000B and U+0085)
//   \h, \H  -> hex digit classes                 (in ICU \h is horizontal space)
//   .       -> [^\n]                             (Oniguruma's dot excludes only \n)
//   ^, $    -> line anchors on \n only           (Ruby syntax: always multi-line)
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace engram::text {

// A half-open byte range [begin, end) of a match.
using Span = std::pair<size_t, size_t>;

class Regex {
 public:
  // Compiles `pattern` (Oniguruma syntax). Throws FormatError naming `where` on a bad pattern.
  Regex(std::string_view pattern, const std::string& where);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // All non-overlapping matches in `text` (valid UTF-8), left to right, as byte ranges.
  void find_all(std::string_view text, std::vector<Span>& out) const;

  // Replaces every match with `replacement` (literal text).
  std::string replace_all(std::string_view text, std::string_view replacement) const;

  const std::string& pattern() const { return pattern_; }

  // The ICU form of an Oniguruma pattern (exposed for tests).
  static std::string to_icu_syntax(std::string_view onig_pattern);

 private:
  struct Impl;
  std::string pattern_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::text
