#include "engram/text/normalizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include "engram/text/utf8.h"
#include "engram/util/error.h"
#include "text/regex.h"
#include "text/unicode_props.h"

namespace engram::text {
namespace {

using Kind = NormalizerStep::Kind;

const icu::Normalizer2* icu_normalizer(Kind kind) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (kind) {
    case Kind::kNfc:
      n = icu::Normalizer2::getNFCInstance(status);
      break;
    case Kind::kNfd:
      n = icu::Normalizer2::getNFDInstance(status);
      break;
    case Kind::kNfkc:
      n = icu::Normalizer2::getNFKCInstance(status);
      break;
    case Kind::kNfkd:
      n = icu::Normalizer2::getNFKDInstance(status);
      break;
    default:
      break;
  }
  if (U_FAILURE(status) || n == nullptr)
    throw Error(std::string("ICU normalizer unavailable: ") + u_errorName(status));
  return n;
}

std::string unicode_normalize(std::string_view s, Kind kind) {
  const icu::Normalizer2* n = icu_normalizer(kind);
  const icu::UnicodeString in =
      icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  UErrorCode status = U_ZERO_ERROR;
  if (n->isNormalized(in, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  const icu::UnicodeString out = n->normalize(in, status);
  if (U_FAILURE(status))
    throw Error(std::string("ICU normalization failed: ") + u_errorName(status));
  std::string result;
  out.toUTF8String(result);
  return result;
}

std::string strip_accents(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const char32_t c = next_code_point(s, i);
    if (!unicode::has(c, unicode::kMark)) out.append(s.substr(start, i - start));
  }
  return out;
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) unicode::append_lowercase(out, next_code_point(s, i));
  return out;
}

std::string strip(std::string_view s, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e) {
      size_t j = b;
      if (!unicode::has(next_code_point(s, j), unicode::kWhiteSpace)) break;
      b = j;
    }
  }
  if (right) {
    while (e > b) {
      size_t start = e - 1;
      while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
      size_t j = start;
      if (!unicode::has(next_code_point(s, j), unicode::kWhiteSpace)) break;
      e = start;
    }
  }
  return std::string(s.substr(b, e - b));
}

std::string replace_literal(std::string_view s, std::string_view pattern,
                            std::string_view content) {
  if (pattern.empty()) return std::string(s);
  std::string out;
  size_t prev = 0;
  for (size_t at = s.find(pattern); at != std::string_view::npos; at = s.find(pattern, prev)) {
    out.append(s.substr(prev, at - prev));
    out.append(content);
    prev = at + pattern.size();
  }
  out.append(s.substr(prev));
  return out;
}

}  // namespace

Normalizer::Normalizer() = default;
Normalizer::~Normalizer() = default;
Normalizer::Normalizer(Normalizer&&) noexcept = default;
Normalizer& Normalizer::operator=(Normalizer&&) noexcept = default;

Normalizer::Normalizer(std::vector<NormalizerStep> steps, const std::string& where)
    : steps_(std::move(steps)) {
  regexes_.resize(steps_.size());
  for (size_t i = 0; i < steps_.size(); ++i) {
    if (steps_[i].kind == Kind::kReplace && steps_[i].pattern_is_regex) {
      regexes_[i] = std::make_unique<Regex>(steps_[i].pattern, where);
    }
  }
}

std::string Normalizer::normalize(std::string_view text) const {
  std::string s(text);
  for (size_t i = 0; i < steps_.size(); ++i) {
    const NormalizerStep& step = steps_[i];
    switch (step.kind) {
      case Kind::kNfc:
      case Kind::kNfd:
      case Kind::kNfkc:
      case Kind::kNfkd:
        s = unicode_normalize(s, step.kind);
        break;
      case Kind::kLowercase:
        s = lowercase(s);
        break;
      case Kind::kStripAccents:
        s = strip_accents(s);
        break;
      case Kind::kStrip:
        s = strip(s, step.strip_left, step.strip_right);
        break;
      case Kind::kReplace:
        s = regexes_[i] ? regexes_[i]->replace_all(s, step.content)
                        : replace_literal(s, step.pattern, step.content);
        break;
      case Kind::kPrepend:
        if (!s.empty()) s = step.content + s;
        break;
    }
  }
  return s;
}

Normalizer Normalizer::engram_compression() {
  const std::string sentinel = "\xEE\x80\x80";  // U+E000
  std::vector<NormalizerStep> steps;
  steps.push_back({Kind::kNfkc, true, true, "", false, ""});
  steps.push_back({Kind::kNfd, true, true, "", false, ""});
  steps.push_back({Kind::kStripAccents, true, true, "", false, ""});
  steps.push_back({Kind::kLowercase, true, true, "", false, ""});
  steps.push_back({Kind::kReplace, true, true, "[ \\t\\r\\n]+", true, " "});
  steps.push_back({Kind::kReplace, true, true, "^ $", true, sentinel});
  steps.push_back({Kind::kStrip, true, true, "", false, ""});
  steps.push_back({Kind::kReplace, true, true, sentinel, false, " "});
  return Normalizer(std::move(steps), "engram compression normalizer");
}

}  // namespace engram::text
