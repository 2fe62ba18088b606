#include "text/unicode_props.h"

#include <unicode/uchar.h>

#include <memory>

#include "engram/text/utf8.h"

namespace engram::text::unicode {
namespace {

constexpr char32_t kCodePoints = 0x110000;

std::unique_ptr<uint8_t[]> build_table() {
  auto t = std::make_unique<uint8_t[]>(kCodePoints);
  for (char32_t c = 0; c < kCodePoints; ++c) {
    const auto cp = static_cast<UChar32>(c);
    const uint32_t mask = U_GET_GC_MASK(cp);
    uint8_t f = 0;
    if (mask & U_GC_L_MASK) f |= kLetter;
    if (mask & U_GC_M_MASK) f |= kMark;
    if (mask & U_GC_N_MASK) f |= kNumber;
    if (mask & U_GC_P_MASK) f |= kPunct;
    if (mask & U_GC_S_MASK) f |= kSymbol;
    if (u_isUWhiteSpace(cp)) f |= kWhiteSpace;
    if (u_isUAlphabetic(cp) || (mask & U_GC_N_MASK)) f |= kAlnum;
    t[c] = f;
  }
  return t;
}

const uint8_t* table() {
  static const std::unique_ptr<uint8_t[]> t = build_table();
  return t.get();
}

}  // namespace

uint8_t flags(char32_t c) {
  return c < kCodePoints ? table()[c] : 0;
}

void append_lowercase(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
    return;
  }
  if (c == 0x130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE: SpecialCasing, unconditional
    out.append("i\xCC\x87");
    return;
  }
  append_utf8(out, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
}

}  // namespace engram::text::unicode
