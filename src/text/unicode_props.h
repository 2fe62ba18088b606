// Per-code-point Unicode properties used by the fast pre-tokenizers and the normalizers,
// looked up in one flat table built once from ICU.
#pragma once

#include <cstdint>
#include <string>

namespace engram::text::unicode {

enum Flag : uint8_t {
  kLetter = 1 << 0,      // General_Category L*
  kMark = 1 << 1,        // M* (Mn, Mc, Me): Hugging Face's is_combining_mark
  kNumber = 1 << 2,      // N*
  kPunct = 1 << 3,       // P*
  kSymbol = 1 << 4,      // S*
  kWhiteSpace = 1 << 5,  // White_Space (Rust char::is_whitespace, Oniguruma \s)
  kAlnum = 1 << 6,       // Rust char::is_alphanumeric (Alphabetic or N*)
};

// Flags of code point c (0 for c > U+10FFFF).
uint8_t flags(char32_t c);

inline bool has(char32_t c, uint8_t f) {
  return (flags(c) & f) != 0;
}

// Rust's char::to_lowercase: the simple lowercase mapping plus the one unconditional
// multi-character mapping (U+0130 -> "i\u0307"); no context or language rules.
void append_lowercase(std::string& out, char32_t c);

}  // namespace engram::text::unicode
