#include <gtest/gtest.h>

#include "engram/text/utf8.h"

namespace engram::text {
namespace {

TEST(Utf8, FindsFirstInvalidByte) {
  EXPECT_TRUE(is_valid_utf8("héllo 世界 🚀"));
  EXPECT_EQ(find_invalid_utf8(std::string("ab\xFF", 3)), 2u);
  EXPECT_EQ(find_invalid_utf8(std::string("\xC0\xAF", 2)), 0u);          // overlong
  EXPECT_EQ(find_invalid_utf8(std::string("x\xED\xA0\x80", 4)), 1u);     // surrogate
  EXPECT_EQ(find_invalid_utf8(std::string("\xF4\x90\x80\x80", 4)), 0u);  // > U+10FFFF
  EXPECT_EQ(find_invalid_utf8(std::string("\xE4\xB8", 2)), 0u);          // truncated
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  // Unicode's "U+FFFD substitution of maximal subparts", as Rust's from_utf8_lossy.
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(from_utf8_lossy("abc"), "abc");
  EXPECT_EQ(from_utf8_lossy(std::string("\xE4\xB8", 2)), fffd);  // one truncated sequence
  EXPECT_EQ(from_utf8_lossy(std::string("\xE4\xB8"
                                        "a",
                                        3)),
            fffd + "a");
  EXPECT_EQ(from_utf8_lossy(std::string("\xFF\xFE", 2)), fffd + fffd);  // two invalid bytes
  EXPECT_EQ(from_utf8_lossy(std::string("\xF0\x9F\x9A", 3)), fffd);     // truncated 4-byte
  EXPECT_EQ(from_utf8_lossy(std::string("\xED\xA0\x80", 3)),
            fffd + fffd + fffd);  // surrogate: 3 subparts
  EXPECT_EQ(from_utf8_lossy(std::string("\xC3\xA9\x80", 3)), "é" + fffd);
}

TEST(Utf8, EncodesAndDecodesEveryLength) {
  for (char32_t c : {U'A', U'é', U'世', U'🚀', U'\U0010FFFF'}) {
    std::string s;
    append_utf8(s, c);
    size_t i = 0;
    EXPECT_EQ(next_code_point(s, i), c);
    EXPECT_EQ(i, s.size());
  }
}

}  // namespace
}  // namespace engram::text
