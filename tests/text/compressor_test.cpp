// Tokenizer compression against the reference's table and keys.
#include <gtest/gtest.h>

#include "engram/text/compressor.h"
#include "engram/text/normalizer.h"
#include "engram/util/file.h"
#include "engram/util/npy.h"
#include "test_paths.h"
#include "util/json.h"

namespace engram::text {
namespace {

const Tokenizer& dsv3() {
  static const Tokenizer t = Tokenizer::from_file(test::tokenizer_dir());
  return t;
}

const CompressionTable& dsv3_table() {
  static const CompressionTable t = CompressionTable::build(dsv3());
  return t;
}

TEST(Compression, MatchesGoldenLookupTableForEveryId) {
  const auto golden = read_npy_int32_vector(test::golden_dir() + "/dsv3_compress_lut.npy");
  const auto& table = dsv3_table();
  ASSERT_EQ(golden.size(), 128815u);
  ASSERT_EQ(table.lut.size(), golden.size());
  size_t mismatches = 0;
  for (size_t id = 0; id < golden.size(); ++id) {
    if (table.lut[id] != golden[id] && mismatches++ < 10) {
      ADD_FAILURE() << "id " << id << " token "
                    << dsv3().id_to_token(static_cast<uint32_t>(id)).value_or("?")
                    << ": compressed " << table.lut[id] << ", reference " << golden[id]
                    << ", key \"" << table.keys[static_cast<size_t>(table.lut[id])] << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(table.compressed_size(), 98627);
  EXPECT_NEAR(table.reduction(), 0.2344, 5e-5);
}

TEST(Compression, KeysMatchGoldenSample) {
  const auto doc =
      json::parse(read_file(test::golden_dir() + "/engram_hash_golden.json"), "golden");
  const auto& sample = doc.at("keys_sample");
  ASSERT_GT(sample.size(), 1000u);
  const auto& table = dsv3_table();
  for (const auto& row : sample) {
    const auto id = row[0].get<uint32_t>();
    const uint32_t one[1] = {id};
    EXPECT_EQ(dsv3().decode(one), row[1].get<std::string>()) << "decode of id " << id;
    EXPECT_EQ(table.keys[static_cast<size_t>(table.lut[id])], row[2].get<std::string>())
        << "key of id " << id;
    EXPECT_EQ(table.fallback[id] != 0, row[3].get<std::string>() == "fallback")
        << "kind of id " << id;
  }
}

TEST(Compression, ApplyPassesNegativeIdsAndRejectsTooLarge) {
  const auto& table = dsv3_table();
  const std::vector<int64_t> ids = {-1, 0, 2, 128814};
  const auto out = table.apply(ids);
  EXPECT_EQ(out[0], -1);
  EXPECT_EQ(out[1], table.lut[0]);
  EXPECT_EQ(out[3], table.lut[128814]);
  const std::vector<int64_t> bad = {5, 128815};
  try {
    table.apply(bad);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("id 128815 at position 1"), std::string::npos) << e.what();
  }
}

TEST(CompressionNormalizer, FollowsTheReferenceChain) {
  const Normalizer n = Normalizer::engram_compression();
  EXPECT_EQ(n.normalize("  Hello\t\nWorld  "), "hello world");
  EXPECT_EQ(n.normalize(" "), " ");     // a lone space stays a space
  EXPECT_EQ(n.normalize("\t\n"), " ");  // whitespace runs become one space first
  EXPECT_EQ(n.normalize("  "), " ");
  EXPECT_EQ(n.normalize("Café"), "cafe");   // accents stripped after NFD
  EXPECT_EQ(n.normalize("ﬁ"), "fi");        // NFKC ligature
  EXPECT_EQ(n.normalize("ＡＢＣ"), "abc");  // full width
  EXPECT_EQ(n.normalize("ΣΑΣ"), "σασ");     // no final-sigma context rule
  EXPECT_EQ(n.normalize("İ"), "i");         // NFD gives I + U+0307; the mark is stripped
  EXPECT_EQ(n.normalize("\xC2\xA0x\xE3\x80\x80"),
            "x");                          // NBSP/ideographic space: NFKC -> space, stripped
  EXPECT_EQ(n.normalize("\xC2\x85"), "");  // NEL is White_Space: stripped
}

}  // namespace
}  // namespace engram::text

namespace engram::text {
namespace {

// Compression of other byte-level BPE tokenizers (tests/fixtures/tokenize/synthetic), against
// tables made by the reference algorithm with Hugging Face `tokenizers`
// (tools/hf/compress_reference.py).
class SyntheticCompression : public ::testing::TestWithParam<const char*> {};

TEST_P(SyntheticCompression, MatchesTheReferenceTable) {
  const std::string dir = test::fixture_dir() + "/tokenize/synthetic/";
  const Tokenizer tok = Tokenizer::from_file(dir + GetParam() + ".tokenizer.json");
  const auto want = read_npy_int32_vector(dir + GetParam() + ".compress_lut.npy");
  const auto table = CompressionTable::build(tok, 2);
  EXPECT_EQ(table.lut, want);
  EXPECT_LT(table.compressed_size(), table.vocab_size());
}

INSTANTIATE_TEST_SUITE_P(Trained, SyntheticCompression,
                         ::testing::Values("gpt2", "llama3", "mixed"));

}  // namespace
}  // namespace engram::text
