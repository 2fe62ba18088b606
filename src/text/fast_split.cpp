// Hand-written equivalents of the split regexes of well-known byte-level BPE tokenizers.
//
// Each matcher reproduces leftmost-first alternation with greedy quantifiers and backtracking
// exactly as a backtracking regex engine (Oniguruma) does for that one pattern; the comments
// derive each alternative's match. Code point classes come from unicode_props (ICU).
#include <array>

#include "engram/text/utf8.h"
#include "text/split_matcher.h"
#include "text/unicode_props.h"

namespace engram::text {
namespace {

using unicode::flags;
namespace u = unicode;

// Code points of a piece with their byte offsets; pos[n] = text.size().
struct CodePoints {
  std::vector<char32_t> cp;
  std::vector<uint32_t> pos;

  void load(std::string_view text) {
    cp.clear();
    pos.clear();
    for (size_t i = 0; i < text.size();) {
      pos.push_back(static_cast<uint32_t>(i));
      cp.push_back(next_code_point(text, i));
    }
    pos.push_back(static_cast<uint32_t>(text.size()));
  }
  size_t size() const { return cp.size(); }
};

CodePoints& scratch() {
  thread_local CodePoints cps;
  return cps;
}

// \p{N}{1,3}: every run of N* code points, cut into groups of three from the left.
class NumberGroupsMatcher final : public SplitMatcher {
 public:
  const char* name() const override { return "fast:\\p{N}{1,3}"; }
  void find_all(std::string_view text, std::vector<Span>& out) const override {
    out.clear();
    size_t i = 0;
    while (i < text.size()) {
      const auto b = static_cast<unsigned char>(text[i]);
      if (b < 0x80) {  // ASCII: only 0-9 are N
        if (b < '0' || b > '9') {
          ++i;
          continue;
        }
      } else {
        size_t j = i;
        if (!u::has(next_code_point(text, j), u::kNumber)) {
          i = j;
          continue;
        }
      }
      const size_t start = i;
      int count = 0;
      while (i < text.size() && count < 3) {
        size_t j = i;
        if (!u::has(next_code_point(text, j), u::kNumber)) break;
        i = j;
        ++count;
      }
      out.emplace_back(start, i);
    }
  }
};

// [一-龥぀-ゟ゠-ヿ]+: runs of U+4E00..U+9FA5, U+3040..U+309F, U+30A0..U+30FF.
class CjkRunMatcher final : public SplitMatcher {
 public:
  const char* name() const override { return "fast:cjk-runs"; }
  static bool in_class(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF);
  }
  void find_all(std::string_view text, std::vector<Span>& out) const override {
    out.clear();
    size_t i = 0;
    while (i < text.size()) {
      // Every code point of the class is 3 bytes long and starts with 0xE3..0xE9.
      const auto b = static_cast<unsigned char>(text[i]);
      if (b < 0xE3 || b > 0xE9) {
        i += sequence_length(b);
        continue;
      }
      size_t j = i;
      if (!in_class(next_code_point(text, j))) {
        i = j;
        continue;
      }
      const size_t start = i;
      i = j;
      while (i < text.size()) {
        j = i;
        if (!in_class(next_code_point(text, j))) break;
        i = j;
      }
      out.emplace_back(start, i);
    }
  }
};

bool is_ascii_punct(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}
bool is_ascii_alpha(char32_t c) {
  return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
bool is_crlf(char32_t c) {
  return c == '\r' || c == '\n';
}

// The DeepSeek-V3 word pattern:
//   A1 [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
//   A2 [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
//   A3  ?[\p{P}\p{S}]+[\r\n]*
//   A4 \s*[\r\n]+
//   A5 \s+(?!\S)
//   A6 \s+
class DeepSeekV3WordMatcher final : public SplitMatcher {
 public:
  const char* name() const override { return "fast:deepseek-v3-words"; }

  void find_all(std::string_view text, std::vector<Span>& out) const override {
    out.clear();
    CodePoints& c = scratch();
    c.load(text);
    const size_t n = c.size();
    std::vector<uint8_t>& f = flag_scratch();
    f.resize(n + 1);
    for (size_t k = 0; k < n; ++k) f[k] = flags(c.cp[k]);
    f[n] = 0;
    auto run = [&](size_t k, uint8_t mask) {  // end of the run of `mask` code points from k
      while (k < n && (f[k] & mask)) ++k;
      return k;
    };
    size_t i = 0;
    while (i < n) {
      const size_t end = match_at(c, f, i, n, run);
      if (end == 0) {
        ++i;
        continue;
      }
      out.emplace_back(c.pos[i], c.pos[end]);
      i = end;
    }
  }

 private:
  static std::vector<uint8_t>& flag_scratch() {
    thread_local std::vector<uint8_t> f;
    return f;
  }

  // End (exclusive, in code points) of the match starting at i, or 0 if none starts there.
  template <class Run>
  static size_t match_at(const CodePoints& c, const std::vector<uint8_t>& f, size_t i, size_t n,
                         Run&& run) {
    const char32_t c0 = c.cp[i];
    const bool has1 = i + 1 < n;
    const char32_t c1 = has1 ? c.cp[i + 1] : 0;
    // A1: one ASCII punctuation character, then ASCII letters (greedy, no backtracking needed).
    if (is_ascii_punct(c0) && has1 && is_ascii_alpha(c1)) {
      size_t k = i + 2;
      while (k < n && is_ascii_alpha(c.cp[k])) ++k;
      return k;
    }
    constexpr uint8_t kLM = u::kLetter | u::kMark;
    constexpr uint8_t kPS = u::kPunct | u::kSymbol;
    // A2: the optional prefix is tried first; if the letter run cannot follow it, the regex
    // backtracks to matching the run from i itself.
    if (!is_crlf(c0) && !(f[i] & (u::kLetter | kPS)) && has1 && (f[i + 1] & kLM))
      return run(i + 1, kLM);
    if (f[i] & kLM) return run(i, kLM);
    // A3: optional space, punctuation/symbol run, then any CR/LF.
    size_t k = i;
    if (c0 == ' ' && has1 && (f[i + 1] & kPS)) k = i + 1;
    if (f[k] & kPS) {
      k = run(k, kPS);
      while (k < n && is_crlf(c.cp[k])) ++k;
      return k;
    }
    if (!(f[i] & u::kWhiteSpace)) return 0;
    const size_t ws_end = run(i, u::kWhiteSpace);
    // A4: \s* backtracks from the whole whitespace run to its last CR/LF, which [\r\n]+ takes.
    for (size_t j = ws_end; j > i; --j) {
      if (is_crlf(c.cp[j - 1])) return j;
    }
    // A5: the whole run if it ends the text, else all but its last code point (if non-empty).
    if (ws_end == n) return ws_end;
    if (ws_end - i >= 2) return ws_end - 1;
    // A6.
    return ws_end;
  }
};

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
class Gpt2Matcher final : public SplitMatcher {
 public:
  const char* name() const override { return "fast:gpt2"; }

  void find_all(std::string_view text, std::vector<Span>& out) const override {
    out.clear();
    CodePoints& c = scratch();
    c.load(text);
    const size_t n = c.size();
    size_t i = 0;
    while (i < n) {
      const size_t end = match_at(c, i, n);
      out.emplace_back(c.pos[i], c.pos[end]);
      i = end;
    }
  }

 private:
  static size_t run(const CodePoints& c, size_t k, size_t n, bool (*pred)(char32_t)) {
    while (k < n && pred(c.cp[k])) ++k;
    return k;
  }
  static bool letter(char32_t x) { return u::has(x, u::kLetter); }
  static bool number(char32_t x) { return u::has(x, u::kNumber); }
  static bool space(char32_t x) { return u::has(x, u::kWhiteSpace); }
  static bool other(char32_t x) { return !u::has(x, u::kWhiteSpace | u::kLetter | u::kNumber); }

  // Every position matches some alternative (\s+ or [^\s\p{L}\p{N}]+ or \p{L}+ or \p{N}+), so
  // the result is always > i.
  static size_t match_at(const CodePoints& c, size_t i, size_t n) {
    const char32_t c0 = c.cp[i];
    if (c0 == '\'' && i + 1 < n) {
      const char32_t a = c.cp[i + 1];
      if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
      if (i + 2 < n) {
        const char32_t b = c.cp[i + 2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
          return i + 3;
      }
    }
    const size_t k = (c0 == ' ' && i + 1 < n) ? i + 1 : i;  // optional leading space
    for (auto pred : {letter, number, other}) {
      if (k > i && pred(c.cp[k])) return run(c, k, n, pred);
      if (pred(c0)) return run(c, i, n, pred);
    }
    const size_t ws_end = run(c, i, n, space);
    if (ws_end == n) return ws_end;
    if (ws_end - i >= 2) return ws_end - 1;
    return ws_end;
  }
};

class RegexMatcher final : public SplitMatcher {
 public:
  RegexMatcher(std::string_view pattern, const std::string& where) : re_(pattern, where) {}
  const char* name() const override { return "icu-regex"; }
  void find_all(std::string_view text, std::vector<Span>& out) const override {
    re_.find_all(text, out);
  }

 private:
  Regex re_;
};

class LiteralMatcher final : public SplitMatcher {
 public:
  explicit LiteralMatcher(std::string literal) : literal_(std::move(literal)) {}
  const char* name() const override { return "literal"; }
  void find_all(std::string_view text, std::vector<Span>& out) const override {
    out.clear();
    if (literal_.empty()) return;
    for (size_t at = text.find(literal_); at != std::string_view::npos;
         at = text.find(literal_, at + literal_.size())) {
      out.emplace_back(at, at + literal_.size());
    }
  }

 private:
  std::string literal_;
};

}  // namespace

std::unique_ptr<SplitMatcher> make_regex_matcher(std::string_view pattern,
                                                 const std::string& where) {
  return std::make_unique<RegexMatcher>(pattern, where);
}

std::unique_ptr<SplitMatcher> make_literal_matcher(std::string literal) {
  return std::make_unique<LiteralMatcher>(std::move(literal));
}

std::unique_ptr<SplitMatcher> make_fast_matcher(std::string_view pattern) {
  if (pattern == R"(\p{N}{1,3})") return std::make_unique<NumberGroupsMatcher>();
  if (pattern == "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+")
    return std::make_unique<CjkRunMatcher>();
  if (pattern ==
      "[!\"#$%&'()*+,\\-./"
      ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
      "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+") {
    return std::make_unique<DeepSeekV3WordMatcher>();
  }
  if (pattern == kGpt2Pattern) return std::make_unique<Gpt2Matcher>();
  return nullptr;
}

}  // namespace engram::text
