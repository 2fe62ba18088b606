#include <gtest/gtest.h>

#include "engram/text/normalizer.h"

namespace engram::text {
namespace {

using Kind = NormalizerStep::Kind;

std::string run(Kind kind, std::string_view s) {
  NormalizerStep step{};
  step.kind = kind;
  return Normalizer({step}).normalize(s);
}

TEST(Normalizer, UnicodeForms) {
  EXPECT_EQ(run(Kind::kNfd, "é"), "e\xCC\x81");
  EXPECT_EQ(run(Kind::kNfc, "e\xCC\x81"), "é");
  EXPECT_EQ(run(Kind::kNfkc, "ﬁ①"), "fi1");
  EXPECT_EQ(run(Kind::kNfkd, "é"), "e\xCC\x81");
}

TEST(Normalizer, LowercaseIsRustCharToLowercase) {
  EXPECT_EQ(run(Kind::kLowercase, "ÀÉÎ ΣΑΣ"), "àéî σασ");  // no final-sigma rule
  EXPECT_EQ(run(Kind::kLowercase, "İ"), "i\xCC\x87");      // the one multi-char mapping
  EXPECT_EQ(run(Kind::kLowercase, "ǅ"), "ǆ");              // titlecase digraph
}

TEST(Normalizer, StripAccentsDropsEveryMark) {
  EXPECT_EQ(run(Kind::kStripAccents,
                "e\xCC\x81"
                "a\xE0\xA4\x83"
                "b\xE2\x83\x9D"),
            "eab");  // Mn, Mc, Me
}

TEST(Normalizer, StripUsesUnicodeWhiteSpace) {
  NormalizerStep left{};
  left.kind = Kind::kStrip;
  left.strip_right = false;
  EXPECT_EQ(Normalizer({left}).normalize("\xE3\x80\x80 a \xC2\x85"), "a \xC2\x85");
  EXPECT_EQ(run(Kind::kStrip, "\xE2\x80\x83 a\t\n"), "a");
}

TEST(Normalizer, ReplaceLiteralAndRegex) {
  NormalizerStep lit{};
  lit.kind = Kind::kReplace;
  lit.pattern = "ab";
  lit.content = "X";
  EXPECT_EQ(Normalizer({lit}).normalize("abcab"), "XcX");
  NormalizerStep re = lit;
  re.pattern = "[0-9]+";
  re.pattern_is_regex = true;
  EXPECT_EQ(Normalizer({re}).normalize("a12b3"), "aXbX");
}

TEST(Normalizer, PrependOnlyNonEmpty) {
  NormalizerStep p{};
  p.kind = Kind::kPrepend;
  p.content = "▁";
  EXPECT_EQ(Normalizer({p}).normalize("hi"), "▁hi");
  EXPECT_EQ(Normalizer({p}).normalize(""), "");
}

}  // namespace
}  // namespace engram::text
