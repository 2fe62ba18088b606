// Split behaviours, and every hand-written split matcher against its ICU regex on random text.
#include <gtest/gtest.h>

#include <random>

#include "engram/text/utf8.h"
#include "text/pretokenizer.h"
#include "text/regex.h"
#include "text/split_matcher.h"

namespace engram::text {
namespace {

std::vector<std::string> split_with(std::string_view text, std::string_view pattern,
                                    SplitBehavior b, bool invert = false) {
  auto m = make_regex_matcher(pattern, "test");
  std::vector<std::string_view> parts;
  split_piece(text, *m, b, invert, parts);
  return {parts.begin(), parts.end()};
}

using V = std::vector<std::string>;

TEST(SplitBehavior, MatchesTokenizersSemantics) {
  // Examples from the `tokenizers` documentation of SplitDelimiterBehavior, on
  // "the-final--countdown".
  const std::string s = "the-final--countdown";
  EXPECT_EQ(split_with(s, "-", SplitBehavior::kRemoved), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split_with(s, "-", SplitBehavior::kIsolated),
            (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split_with(s, "-", SplitBehavior::kMergedWithPrevious),
            (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split_with(s, "-", SplitBehavior::kMergedWithNext),
            (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split_with(s, "-", SplitBehavior::kContiguous),
            (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split_with("Hello World", "o", SplitBehavior::kRemoved, true), (V{"o", "o"}));
}

TEST(SplitMatchers, LiteralFindsNonOverlappingOccurrences) {
  auto m = make_literal_matcher("aa");
  std::vector<Span> spans;
  m->find_all("aaaaa", spans);
  EXPECT_EQ(spans, (std::vector<Span>{{0, 2}, {2, 4}}));
}

TEST(OnigToIcu, RewritesTheDifferingConstructs) {
  EXPECT_EQ(Regex::to_icu_syntax(R"(\s+(?!\S))"), R"(\p{White_Space}+(?!\P{White_Space}))");
  EXPECT_EQ(Regex::to_icu_syntax(R"([^\s\p{L}])"), R"([^\p{White_Space}\p{L}])");
  EXPECT_EQ(Regex::to_icu_syntax("^ $"), "(?:\\A|(?<=\\n)) (?=\\n|\\z)");
  EXPECT_EQ(Regex::to_icu_syntax("a.b"), "a[^\\n]b");
  EXPECT_EQ(Regex::to_icu_syntax("[.^$]"), "[.^$]");  // literal inside a class
  EXPECT_EQ(Regex::to_icu_syntax(R"(\.)"), R"(\.)");
}

TEST(OnigToIcu, WhitespaceClassIncludesVerticalTabAndNextLine) {
  Regex re(R"(\s+)", "test");
  std::vector<Span> spans;
  re.find_all(
      "a\x0b\xC2\x85"
      "b",
      spans);
  EXPECT_EQ(spans, (std::vector<Span>{{1, 4}}));
}

// Random valid UTF-8 drawn from code points of every category, weighted towards the characters
// the patterns care about (ASCII, whitespace, CR/LF, digits, marks, CJK).
std::string random_text(std::mt19937_64& rng, size_t code_points) {
  static const char32_t kInteresting[] = {
      ' ',     ' ',    ' ',    '\t',   '\n',   '\r',   0x0B,   0x0C,   0x85,   0xA0,   0x2028,
      0x3000,  '\'',   's',    't',    'r',    'e',    'v',    'm',    'l',    'd',    '0',
      '9',     0x0301, 0x0903, 0x20DD, 0x4E00, 0x9FA5, 0x9FA6, 0x3042, 0x30A2, 0x30FF, 0x3400,
      0x00B2,  0x2163, 0xFF11, '!',    '-',    '[',    '\\',   '`',    '~',    0x2014, 0x00A9,
      0x1F600, 0x200D, 0xFE0F, 0x00AD, 0xE000, 0x0001, 0x007F};
  std::string s;
  for (size_t i = 0; i < code_points; ++i) {
    const uint64_t r = rng() % 100;
    char32_t c;
    if (r < 35) {
      c = static_cast<char32_t>(0x20 + rng() % 0x5F);  // printable ASCII
    } else if (r < 75) {
      c = kInteresting[rng() % std::size(kInteresting)];
    } else if (r < 92) {
      c = static_cast<char32_t>(rng() % 0x3000);  // Latin, Greek, Cyrillic, scripts with marks...
    } else {
      c = static_cast<char32_t>(rng() % 0x110000);
    }
    if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
    append_utf8(s, c);
  }
  return s;
}

class FastMatcher : public ::testing::TestWithParam<std::string> {};

TEST_P(FastMatcher, AgreesWithTheRegexOnRandomText) {
  const std::string& pattern = GetParam();
  auto fast = make_fast_matcher(pattern);
  ASSERT_NE(fast, nullptr) << pattern;
  auto regex = make_regex_matcher(pattern, "test");
  std::mt19937_64 rng(12345);
  std::vector<Span> a, b;
  size_t total_matches = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    const std::string text = random_text(rng, 1 + rng() % 80);
    fast->find_all(text, a);
    regex->find_all(text, b);
    total_matches += b.size();
    ASSERT_EQ(a, b) << "pattern " << pattern << " on text of " << text.size()
                    << " bytes (iteration " << iter << ")";
  }
  EXPECT_GT(total_matches, 10000u);
}

INSTANTIATE_TEST_SUITE_P(
    KnownPatterns, FastMatcher,
    ::testing::Values(
        std::string(R"(\p{N}{1,3})"), std::string("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
        std::string(
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
            "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
        std::string(kGpt2Pattern)));

TEST(PreTokenizer, SequenceAppliesStepsToEveryPiece) {
  std::vector<PreTokenizerStep> steps(2);
  steps[0].matcher = make_regex_matcher(R"(\p{N}{1,3})", "t");
  steps[1].kind = PreTokenizerStep::Kind::kPrefixSpace;
  PreTokenizer pt(std::move(steps));
  Pieces pieces;
  pt.split("ab12345", pieces);
  const V got(pieces.items.begin(), pieces.items.end());
  EXPECT_EQ(got, (V{" ab", " 123", " 45"}));
}

}  // namespace
}  // namespace engram::text
