// engram prepare: token shards, the document-level split, the manifest and bad corpora.
#include "engram/train/dataset.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_paths.h"
#include "util/json.h"

namespace engram::train {
namespace {

namespace fs = std::filesystem;

const text::Tokenizer& dsv3() {
  static const text::Tokenizer t = text::Tokenizer::from_file(test::tokenizer_dir());
  return t;
}
std::string tok_path() {
  return test::tokenizer_dir() + "/tokenizer.json";
}

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/engram_dataset_test.XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string put(const std::string& rel, const std::string& content) {
    const fs::path p = fs::path(dir_) / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  PrepareOptions options(std::vector<std::string> inputs, const std::string& out = "out") {
    PrepareOptions o;
    o.inputs = std::move(inputs);
    o.out_dir = dir_ + "/" + out;
    o.threads = 2;
    return o;
  }
  std::vector<uint32_t> read_u32(const std::string& path) {
    const std::string raw = read_file(path);
    std::vector<uint32_t> v(raw.size() / 4);
    if (!v.empty()) std::memcpy(v.data(), raw.data(), raw.size());
    return v;
  }
  std::vector<uint64_t> read_u64(const std::string& path) {
    const std::string raw = read_file(path);
    std::vector<uint64_t> v(raw.size() / 8);
    if (!v.empty()) std::memcpy(v.data(), raw.data(), raw.size());
    return v;
  }
  std::string dir_;
};

TEST_F(DatasetTest, WritesEveryDocumentWithBosAndAManifest) {
  const std::vector<std::string> docs = {"Alice was beginning to get very tired.",
                                         "# Title\n\nSome *markdown*.", "first json doc",
                                         "second — with ünïcode"};
  put("corpus/a.txt", docs[0]);
  put("corpus/b.md", docs[1]);
  put("corpus/sub/c.jsonl",
      "{\"text\": \"" + docs[2] + "\"}\n\n{\"text\": \"" + docs[3] + "\", \"id\": 7}\n");
  put("corpus/ignored.bin", "\x01\x02");
  PrepareOptions o = options({dir_ + "/corpus"});
  o.val_fraction = 0.5;
  const PrepareResult r = prepare_dataset(dsv3(), tok_path(), o);
  EXPECT_EQ(r.train.documents + r.val.documents, 4);
  ASSERT_EQ(r.sources.size(), 3u);
  // Every document appears exactly once, as BOS + its ids, in one of the two splits.
  std::vector<std::vector<uint32_t>> found;
  for (const char* split : {"train", "val"}) {
    const auto tokens = read_u32(o.out_dir + "/" + split + ".bin");
    const auto starts = read_u64(o.out_dir + "/" + split + ".docs");
    for (size_t i = 0; i < starts.size(); ++i) {
      const size_t end = i + 1 < starts.size() ? starts[i + 1] : tokens.size();
      found.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(starts[i]),
                         tokens.begin() + static_cast<std::ptrdiff_t>(end));
    }
    EXPECT_EQ(static_cast<int64_t>(tokens.size()),
              std::string(split) == "train" ? r.train.tokens : r.val.tokens);
    EXPECT_EQ(TokenShard::open(o.out_dir + "/" + split + ".bin").size(), tokens.size());
  }
  ASSERT_EQ(found.size(), 4u);
  for (const auto& doc : docs) {
    std::vector<uint32_t> want = {0};  // <｜begin▁of▁sentence｜>
    const auto ids = dsv3().encode(doc);
    want.insert(want.end(), ids.begin(), ids.end());
    EXPECT_EQ(std::count(found.begin(), found.end(), want), 1) << doc;
  }
  const auto m = json::parse(read_file(r.manifest_path), "manifest");
  EXPECT_EQ(m["format"], "engram-token-shards-v1");
  EXPECT_EQ(m["tokenizer"]["vocab_size"], 128815);
  EXPECT_EQ(m["tokenizer"]["fnv1a64"], fnv1a64_hex(read_file(tok_path())));
  EXPECT_EQ(m["train"]["tokens"].get<int64_t>() + m["val"]["tokens"].get<int64_t>(),
            r.train.tokens + r.val.tokens);
  EXPECT_EQ(m["sources"].size(), 3u);
}

TEST_F(DatasetTest, SplitIsDeterministicAndStableWhenTheCorpusGrows) {
  for (int i = 0; i < 40; ++i)
    put("c/doc" + std::to_string(i) + ".txt", "document number " + std::to_string(i));
  PrepareOptions o = options({dir_ + "/c"}, "out1");
  o.val_fraction = 0.25;
  const auto r1 = prepare_dataset(dsv3(), tok_path(), o);
  EXPECT_GT(r1.val.documents, 3);  // about 10 of 40
  EXPECT_LT(r1.val.documents, 20);
  o.out_dir = dir_ + "/out2";
  prepare_dataset(dsv3(), tok_path(), o);
  EXPECT_EQ(read_file(dir_ + "/out1/val.bin"), read_file(dir_ + "/out2/val.bin"));
  EXPECT_EQ(read_file(dir_ + "/out1/train.bin"), read_file(dir_ + "/out2/train.bin"));
  // More documents: every earlier one keeps its split.
  for (int i = 40; i < 60; ++i)
    put("c/doc" + std::to_string(i) + ".txt", "document number " + std::to_string(i));
  o.out_dir = dir_ + "/out3";
  const auto r3 = prepare_dataset(dsv3(), tok_path(), o);
  for (size_t s = 0; s < r1.sources.size(); ++s) {
    const auto it = std::find_if(r3.sources.begin(), r3.sources.end(), [&](const SourceStats& x) {
      return x.path == r1.sources[s].path;
    });
    ASSERT_NE(it, r3.sources.end());
    EXPECT_EQ(it->val.documents, r1.sources[s].val.documents) << it->path;
  }
  // Another seed gives another split.
  o.seed = 99;
  o.out_dir = dir_ + "/out4";
  prepare_dataset(dsv3(), tok_path(), o);
  EXPECT_NE(read_file(dir_ + "/out3/val.bin"), read_file(dir_ + "/out4/val.bin"));
}

TEST_F(DatasetTest, SmallCorpusStillGetsAValidationDocument) {
  put("c/a.txt", "one");
  put("c/b.txt", "two");
  put("c/c.txt", "three");
  PrepareOptions o = options({dir_ + "/c"});
  o.val_fraction = 1e-9;
  const auto r = prepare_dataset(dsv3(), tok_path(), o);
  EXPECT_EQ(r.val.documents, 1);
  EXPECT_EQ(r.train.documents, 2);
  o.val_fraction = 0;
  o.out_dir = dir_ + "/none";
  EXPECT_EQ(prepare_dataset(dsv3(), tok_path(), o).val.documents, 0);
}

TEST_F(DatasetTest, InvalidUtf8PolicyAndErrors) {
  const std::string latin = put("c/latin.txt", std::string("caf\xE9 cr\xE8me", 10));
  PrepareOptions o = options({latin});
  try {
    prepare_dataset(dsv3(), tok_path(), o);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("latin.txt: invalid UTF-8 at byte offset 3"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(o.out_dir + "/manifest.json"));
  o.invalid_utf8 = PrepareOptions::InvalidUtf8::kLatin1;
  o.val_fraction = 0;
  const auto r = prepare_dataset(dsv3(), tok_path(), o);
  EXPECT_EQ(r.sources[0].encoding, "latin-1");
  auto ids = read_u32(o.out_dir + "/train.bin");
  ids.erase(ids.begin());
  EXPECT_EQ(dsv3().decode(ids), "café crème");
  o.invalid_utf8 = PrepareOptions::InvalidUtf8::kReplace;
  EXPECT_EQ(prepare_dataset(dsv3(), tok_path(), o).sources[0].encoding, "utf-8-replaced");
}

TEST_F(DatasetTest, BadCorporaAreClearErrors) {
  put("empty/a.txt", "");
  auto expect_error = [&](PrepareOptions o, const std::string& needle) {
    try {
      prepare_dataset(dsv3(), tok_path(), o);
      ADD_FAILURE() << "expected an error containing " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(options({dir_ + "/empty"}), "the corpus is empty");
  put("nothing/x.bin", "x");
  expect_error(options({dir_ + "/nothing"}), "hold no .txt");
  expect_error(options({dir_ + "/missing"}), "missing: no such file or folder");
  put("j/bad.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n");
  expect_error(options({dir_ + "/j"}), "bad.jsonl:2: missing field \"text\"");
  put("j2/bad.jsonl", "{\"text\": \"ok\"}\nnot json\n");
  expect_error(options({dir_ + "/j2"}), "bad.jsonl:2: invalid JSON");
  PrepareOptions o = options({dir_ + "/j"});
  o.val_fraction = 1.0;
  expect_error(o, "val_fraction");
  expect_error(options({}), "no inputs");
}

TEST_F(DatasetTest, TokenShardRejectsPartialTokens) {
  put("odd.bin", "12345");
  EXPECT_THROW(TokenShard::open(dir_ + "/odd.bin"), FormatError);
  EXPECT_THROW(TokenShard::open(dir_ + "/absent.bin"), IoError);
  put("empty.bin", "");
  EXPECT_EQ(TokenShard::open(dir_ + "/empty.bin").size(), 0u);
}

}  // namespace
}  // namespace engram::train
