#include "text/regex.h"

#include <unicode/regex.h>
#include <unicode/utext.h>

#include "engram/util/error.h"

namespace engram::text {

struct Regex::Impl {
  std::unique_ptr<icu::RegexPattern> compiled;
};

std::string Regex::to_icu_syntax(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      switch (e) {
        case 's':
          out += "\\p{White_Space}";
          break;
        case 'S':
          out += "\\P{White_Space}";
          break;
        case 'h':
          out += class_depth ? "0-9A-Fa-f" : "[0-9A-Fa-f]";
          break;
        case 'H':
          out += class_depth ? "\\P{ASCII_Hex_Digit}" : "[^0-9A-Fa-f]";
          break;
        default:
          out += '\\';
          out += e;
      }
      continue;
    }
    if (class_depth > 0) {
      if (c == '[') ++class_depth;
      if (c == ']') --class_depth;
      out += c;
      continue;
    }
    switch (c) {
      case '[':
        ++class_depth;
        out += c;
        // A ']' right after '[' or '[^' is a literal in both dialects.
        if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
        if (i + 1 < p.size() && p[i + 1] == ']') out += "\\]", ++i;
        break;
      case '.':
        out += "[^\\n]";
        break;
      case '^':
        out += "(?:\\A|(?<=\\n))";
        break;
      case '$':
        out += "(?=\\n|\\z)";
        break;
      default:
        out += c;
    }
  }
  return out;
}

Regex::Regex(std::string_view pattern, const std::string& where)
    : pattern_(pattern), impl_(std::make_unique<Impl>()) {
  const std::string icu_pattern = to_icu_syntax(pattern);
  UErrorCode status = U_ZERO_ERROR;
  UParseError perr;
  impl_->compiled.reset(
      icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(icu_pattern), 0, perr, status));
  if (U_FAILURE(status)) {
    throw FormatError(error_message(where, "cannot compile regex /" + std::string(pattern) +
                                               "/: " + u_errorName(status) + " at offset " +
                                               std::to_string(perr.offset)));
  }
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

void Regex::find_all(std::string_view text, std::vector<Span>& out) const {
  out.clear();
  if (text.empty()) return;
  UErrorCode status = U_ZERO_ERROR;
  UText* ut = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
  std::unique_ptr<icu::RegexMatcher> m(impl_->compiled->matcher(status));
  if (U_FAILURE(status)) {
    utext_close(ut);
    throw Error("regex /" + pattern_ + "/: cannot create matcher: " + u_errorName(status));
  }
  m->reset(ut);
  while (m->find(status) && U_SUCCESS(status)) {
    out.emplace_back(static_cast<size_t>(m->start64(status)),
                     static_cast<size_t>(m->end64(status)));
  }
  m.reset();
  utext_close(ut);
  if (U_FAILURE(status))
    throw Error("regex /" + pattern_ + "/: match failed: " + u_errorName(status));
}

std::string Regex::replace_all(std::string_view text, std::string_view replacement) const {
  std::vector<Span> spans;
  find_all(text, spans);
  if (spans.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t prev = 0;
  for (const auto& [b, e] : spans) {
    out.append(text.substr(prev, b - prev));
    out.append(replacement);
    prev = e;
  }
  out.append(text.substr(prev));
  return out;
}

}  // namespace engram::text
