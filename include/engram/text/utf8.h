// UTF-8 helpers with the exact semantics the tokenizer needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace engram::text {

// Decodes the code point at s[i] of a *valid* UTF-8 string; advances i past it.
inline char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  if (b0 < 0xE0) {
    const char32_t c = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return c;
  }
  if (b0 < 0xF0) {
    const char32_t c = ((b0 & 0x0Fu) << 12) |
                       ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                       (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return c;
  }
  const char32_t c = ((b0 & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                     ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                     (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return c;
}

// Length in bytes of the UTF-8 sequence that starts with byte b0 (1 for stray bytes).
inline size_t sequence_length(unsigned char b0) {
  return b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
}

// Appends the UTF-8 encoding of c.
void append_utf8(std::string& out, char32_t c);

// Byte offset of the first invalid UTF-8 sequence in s, or npos if s is valid (strict: no
// overlongs, no surrogates, nothing above U+10FFFF).
size_t find_invalid_utf8(std::string_view s);
inline bool is_valid_utf8(std::string_view s) {
  return find_invalid_utf8(s) == std::string_view::npos;
}

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD (the Unicode
// "substitution of maximal subparts" practice, as Hugging Face tokenizers' decoders produce).
std::string from_utf8_lossy(std::string_view bytes);

}  // namespace engram::text
