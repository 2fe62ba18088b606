// Byte-level BPE tokenizers other than DeepSeek-V3, trained with Hugging Face `tokenizers`
// (tools/hf/make_synthetic_tokenizers.py): GPT-2 style (NFC, ByteLevel with prefix space and
// regex), Llama-3 style (Split regex with (?i:...), ignore_merges) and a "mixed" one with a
// normalizer chain (NFKC, Lowercase, Replace, Strip, Prepend), Digits, every split behaviour,
// invert=false String/Regex patterns, and added tokens with lstrip/rstrip/single_word/normalized.
// Ids must equal those `tokenizers` produced.
#include <gtest/gtest.h>

#include <cstring>

#include "engram/text/tokenizer.h"
#include "engram/util/file.h"
#include "test_paths.h"

namespace engram::text {
namespace {

struct Case {
  const char* tokenizer;
  const char* doc;
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* t : {"gpt2", "llama3", "mixed"}) {
    for (const char* d : {"code", "fuzz", "chinese", "added_tokens", "carroll-alice"})
      cases.push_back({t, d});
  }
  return cases;
}

std::string synthetic_dir() {
  return test::fixture_dir() + "/tokenize/synthetic";
}

std::string doc_text(const std::string& doc) {
  if (doc == "carroll-alice")
    return read_file(test::data_dir() + "/corpora/gutenberg/carroll-alice.txt");
  return read_file(test::fixture_dir() + "/tokenize/" + doc + ".txt");
}

std::vector<uint32_t> reference_ids(const Case& c) {
  const std::string raw = read_file(synthetic_dir() + "/" + c.tokenizer + "." + c.doc + ".ids.u32");
  std::vector<uint32_t> ids(raw.size() / 4);
  if (!ids.empty()) std::memcpy(ids.data(), raw.data(), raw.size());
  return ids;
}

size_t first_difference(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

class SyntheticTokenizer : public ::testing::TestWithParam<Case> {};

TEST_P(SyntheticTokenizer, EncodesExactlyAsTokenizers) {
  const Case& c = GetParam();
  Tokenizer t = Tokenizer::from_file(synthetic_dir() + "/" + c.tokenizer + ".tokenizer.json");
  const std::string text = doc_text(c.doc);
  const auto want = reference_ids(c);
  for (bool reference_pretokenizer : {false, true}) {
    t.set_reference_pretokenizer(reference_pretokenizer);
    const auto got = t.encode(text);
    const size_t at = first_difference(got, want);
    EXPECT_TRUE(got == want) << c.tokenizer << " on " << c.doc
                             << (reference_pretokenizer ? " (regex path)" : "")
                             << ": first difference at token " << at << " of " << want.size()
                             << " (got " << got.size() << ")";
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& p) {
  std::string n = std::string(p.param.tokenizer) + "_" + p.param.doc;
  for (char& ch : n) ch = (ch == '-') ? '_' : ch;
  return n;
}

INSTANTIATE_TEST_SUITE_P(Trained, SyntheticTokenizer, ::testing::ValuesIn(all_cases()), case_name);

}  // namespace
}  // namespace engram::text
