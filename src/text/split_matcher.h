// Finders of split points for the Split pre-tokenizer: an ICU regex for any pattern, a literal
// string, and hand-written matchers for the patterns of well-known tokenizers (chosen by exact
// pattern text) that give the same matches as the regex, much faster. Tests check each
// hand-written matcher against the regex on large random inputs.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/regex.h"

namespace engram::text {

class SplitMatcher {
 public:
  virtual ~SplitMatcher() = default;
  // All non-overlapping matches in `text` (valid UTF-8), left to right, as byte ranges.
  virtual void find_all(std::string_view text, std::vector<Span>& out) const = 0;
  virtual const char* name() const = 0;
};

// The ICU-backed matcher for an Oniguruma-syntax pattern (throws FormatError naming `where`).
std::unique_ptr<SplitMatcher> make_regex_matcher(std::string_view pattern,
                                                 const std::string& where);
// Occurrences of a literal string.
std::unique_ptr<SplitMatcher> make_literal_matcher(std::string literal);
// A hand-written matcher equivalent to `pattern`, or nullptr if there is none.
std::unique_ptr<SplitMatcher> make_fast_matcher(std::string_view pattern);

// The GPT-2 pattern that ByteLevel(use_regex = true) splits with.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace engram::text
