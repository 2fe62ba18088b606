// The DeepSeek-V3 tokenizer against the reference's encodings, and encode/decode behaviour.
#include <gtest/gtest.h>

#include "engram/text/tokenizer.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_paths.h"
#include "util/json.h"

namespace engram::text {
namespace {

const Tokenizer& dsv3() {
  static const Tokenizer t = Tokenizer::from_file(test::tokenizer_dir());
  return t;
}

json::Json golden() {
  return json::parse(read_file(test::golden_dir() + "/engram_hash_golden.json"), "golden");
}

TEST(Tokenizer, LoadsDeepSeekV3) {
  EXPECT_EQ(dsv3().vocab_size(), 128815u);
  EXPECT_EQ(dsv3().added_tokens().size(), 818u);
  EXPECT_EQ(dsv3().id_to_token(0).value(), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(dsv3().token_to_id("Ġthe").value(), dsv3().encode(" the").at(0));
  EXPECT_FALSE(dsv3().id_to_token(200000).has_value());
  EXPECT_NE(dsv3().describe().find("fast:deepseek-v3-words"), std::string::npos)
      << dsv3().describe();
}

TEST(Tokenizer, MatchesGoldenEncodings) {
  const auto g = golden();
  const auto& texts = g.at("texts");
  const auto& ids = g.at("token_ids");
  ASSERT_EQ(texts.size(), 13u);
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto want = ids[i].get<std::vector<uint32_t>>();
    EXPECT_EQ(dsv3().encode(texts[i].get<std::string>()), want) << "text " << i << ": " << texts[i];
  }
}

TEST(Tokenizer, ReferencePretokenizerGivesTheSameIds) {
  Tokenizer t = Tokenizer::from_file(test::tokenizer_dir());
  t.set_reference_pretokenizer(true);
  const auto g = golden();
  for (const auto& text : g.at("texts")) {
    EXPECT_EQ(t.encode(text.get<std::string>()), dsv3().encode(text.get<std::string>())) << text;
  }
}

TEST(Tokenizer, DecodeInvertsEncode) {
  const auto g = golden();
  for (const auto& text : g.at("texts")) {
    const std::string s = text.get<std::string>();
    EXPECT_EQ(dsv3().decode(dsv3().encode(s)), s);
  }
}

TEST(Tokenizer, SpecialTokensAreMatchedBeforePretokenization) {
  const auto ids =
      dsv3().encode("<｜begin▁of▁sentence｜>hi<｜end▁of▁sentence｜><｜end▁of▁sentence｜>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 0u);
  EXPECT_EQ(ids[ids.size() - 1], 1u);
  EXPECT_EQ(ids[ids.size() - 2], 1u);
  // A prefix of a special token is ordinary text.
  const auto partial = dsv3().encode("<｜begin▁of");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 0u), 0);
}

TEST(Tokenizer, EmptyAndWhitespaceInputs) {
  EXPECT_TRUE(dsv3().encode("").empty());
  EXPECT_EQ(dsv3().decode(dsv3().encode("   \n\n\t ")), "   \n\n\t ");
}

TEST(Tokenizer, DecodeRepairsPartialUtf8LikeTokenizers) {
  // "é" is two bytes; a token holding only its first byte decodes to U+FFFD.
  const auto ids = dsv3().encode("é");
  const std::string bytes = dsv3().decode_bytes(ids);
  EXPECT_EQ(bytes, "é");
  const auto lead = dsv3().token_to_id("Ã");  // byte 0xC3 as a byte-level character
  ASSERT_TRUE(lead.has_value());
  const uint32_t one[1] = {*lead};
  EXPECT_EQ(dsv3().decode(one), "\xEF\xBF\xBD");
}

TEST(Tokenizer, InvalidUtf8IsAnInputError) {
  try {
    dsv3().encode(std::string("ok\xC3\x28", 4));
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 2"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, DecodeRejectsUnknownIds) {
  const uint32_t bad[2] = {5, 999999};
  EXPECT_THROW(dsv3().decode(bad), InputError);
}

TEST(Tokenizer, EncodeBatchEqualsSequential) {
  const auto g = golden();
  std::vector<std::string> docs;
  for (const auto& t : g.at("texts")) docs.push_back(t.get<std::string>());
  const auto batch = dsv3().encode_batch(docs, 2);
  ASSERT_EQ(batch.size(), docs.size());
  for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(batch[i], dsv3().encode(docs[i]));
}

}  // namespace
}  // namespace engram::text
