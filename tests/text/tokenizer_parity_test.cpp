// Whole documents against Hugging Face `tokenizers` (ids made by tools/hf/encode_reference.py):
// English books, classical Chinese, source code and a multi-script random text.
#include <gtest/gtest.h>

#include <cstring>

#include "engram/text/tokenizer.h"
#include "engram/util/file.h"
#include "test_paths.h"

namespace engram::text {
namespace {

struct Doc {
  const char* name;
  bool in_corpus;  // under data/corpora/gutenberg (fetched by setup.sh), else in the fixtures
};

constexpr Doc kDocs[] = {
    {"carroll-alice", true},
    {"shakespeare-hamlet", true},
    {"austen-persuasion", true},
    {"whitman-leaves", true},
    {"melville-moby_dick", true},
    {"chinese", false},
    {"code", false},
    {"fuzz", false},
};

std::string doc_text(const Doc& d) {
  const std::string path = d.in_corpus ? test::data_dir() + "/corpora/gutenberg/" + d.name + ".txt"
                                       : test::fixture_dir() + "/tokenize/" + d.name + ".txt";
  return read_file(test::require_path(path, "run scripts/setup.sh"));
}

std::vector<uint32_t> reference_ids(const Doc& d) {
  const std::string raw = read_file(test::fixture_dir() + "/tokenize/" + d.name + ".ids.u32");
  std::vector<uint32_t> ids(raw.size() / 4);
  std::memcpy(ids.data(), raw.data(), ids.size() * 4);
  return ids;
}

const Tokenizer& dsv3() {
  static const Tokenizer t = Tokenizer::from_file(test::tokenizer_dir());
  return t;
}

// Reports the first difference with some context instead of two huge vectors.
void expect_same_ids(const std::vector<uint32_t>& got, const std::vector<uint32_t>& want,
                     const std::string& what) {
  const size_t n = std::min(got.size(), want.size());
  size_t i = 0;
  while (i < n && got[i] == want[i]) ++i;
  if (i == n && got.size() == want.size()) return;
  std::string ctx;
  const size_t from = i >= 5 ? i - 5 : 0;
  for (size_t k = from; k < std::min(n, i + 5); ++k) ctx += std::to_string(want[k]) + " ";
  const uint32_t g = i < got.size() ? got[i] : 0, w = i < want.size() ? want[i] : 0;
  ADD_FAILURE() << what << ": first difference at token " << i << " of " << want.size() << " (got "
                << got.size() << " tokens): engram " << g << " \""
                << dsv3().id_to_token(g).value_or("?") << "\", reference " << w << " \""
                << dsv3().id_to_token(w).value_or("?") << "\"; reference around it: " << ctx;
}

class DocumentParity : public ::testing::TestWithParam<Doc> {};

TEST_P(DocumentParity, EncodesExactlyAsTokenizers) {
  const Doc& d = GetParam();
  const std::string text = doc_text(d);
  expect_same_ids(dsv3().encode(text), reference_ids(d), d.name);
}

TEST_P(DocumentParity, RegexPretokenizerAgrees) {
  const Doc& d = GetParam();
  Tokenizer t = Tokenizer::from_file(test::tokenizer_dir());
  t.set_reference_pretokenizer(true);
  expect_same_ids(t.encode(doc_text(d)), reference_ids(d),
                  std::string(d.name) + " (ICU regex path)");
}

TEST_P(DocumentParity, DecodeRoundTrips) {
  const Doc& d = GetParam();
  const std::string text = doc_text(d);
  EXPECT_TRUE(dsv3().decode(reference_ids(d)) == text) << d.name;
}

std::string doc_test_name(const ::testing::TestParamInfo<Doc>& p) {
  std::string n = p.param.name;
  for (char& c : n) c = (c == '-') ? '_' : c;
  return n;
}

INSTANTIATE_TEST_SUITE_P(Corpora, DocumentParity, ::testing::ValuesIn(kDocs), doc_test_name);

}  // namespace
}  // namespace engram::text
