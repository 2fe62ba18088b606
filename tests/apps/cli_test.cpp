// The engram CLI end to end: the DESIGN.md contract on golden data, and clear errors with the
// right exit status for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "engram/util/file.h"
#include "engram/util/npy.h"
#include "test_paths.h"
#include "util/json.h"

namespace engram {
namespace {

struct Result {
  int status;
  std::string out, err;
};

std::string temp_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/engram_cli_test.XXXXXX";
    return std::string(::mkdtemp(tmpl));
  }();
  return dir;
}

std::string write_temp(const std::string& name, const std::string& content) {
  const std::string path = temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// Runs `engram ARGS` with `input` on stdin.
Result run(const std::string& args, const std::string& input = "") {
  const std::string in = write_temp("stdin", input), out = temp_dir() + "/stdout",
                    err = temp_dir() + "/stderr";
  const std::string cmd = test::cli_path() + " " + args + " <" + in + " >" + out + " 2>" + err;
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_file(out), read_file(err)};
}

std::string config_path(const char* name) {
  return std::string(ENGRAM_SOURCE_DIR) + "/configs/" + name;
}
std::string tok_arg() {
  return "--tokenizer " + test::tokenizer_dir();
}

json::Json golden() {
  return json::parse(read_file(test::golden_dir() + "/engram_hash_golden.json"), "golden");
}

TEST(Cli, TokenizeMatchesGoldenAndDecodeInverts) {
  const auto g = golden();
  for (size_t i = 0; i < g["texts"].size(); i += 4) {
    const std::string text = g["texts"][i].get<std::string>();
    const Result r = run("tokenize " + tok_arg(), text);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(json::parse(r.out, "stdout"), g["token_ids"][i]);
    const Result d = run("tokenize --decode " + tok_arg(), r.out);
    ASSERT_EQ(d.status, 0) << d.err;
    EXPECT_EQ(d.out, text);
  }
}

TEST(Cli, CompressPrintsSizesAndWritesTheGoldenTable) {
  const std::string npy = temp_dir() + "/lut.npy";
  const Result r = run("compress " + tok_arg() + " --out " + npy);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = json::parse(r.out, "stdout");
  EXPECT_EQ(j["vocab"], 128815);
  EXPECT_EQ(j["compressed"], 98627);
  EXPECT_NEAR(j["reduction"].get<double>(), 1.0 - 98627.0 / 128815.0, 1e-6);
  EXPECT_EQ(read_npy_int32_vector(npy),
            read_npy_int32_vector(test::golden_dir() + "/dsv3_compress_lut.npy"));
}

TEST(Cli, HashMatchesGoldenBatchForBothConfigs) {
  const auto g = golden();
  for (const auto& [cfg_name, file] :
       {std::pair{"cfg_default", "engram_default.json"}, {"cfg_small", "engram_small.json"}}) {
    const auto& cfg = g[cfg_name];
    const json::Json input = {{"input_ids", cfg["batch_input"]}};
    const Result r = run("hash " + tok_arg() + " --config " + config_path(file), input.dump());
    ASSERT_EQ(r.status, 0) << r.err;
    const auto out = json::parse(r.out, "stdout");
    EXPECT_EQ(out["layers"], cfg["batch_hashes"]) << cfg_name;
    const Result d = run("hash --describe " + tok_arg() + " --config " + config_path(file));
    ASSERT_EQ(d.status, 0) << d.err;
    const auto desc = json::parse(d.out, "stdout");
    EXPECT_EQ(desc["compressed_vocab"], 98627);
    EXPECT_EQ(desc["pad_id"], cfg["pad_id_compressed"]);
    EXPECT_EQ(desc["multipliers"], cfg["multipliers"]);
    EXPECT_EQ(desc["primes"], cfg["primes"]);
  }
}

void expect_error(const Result& r, int status, const std::string& needle) {
  EXPECT_EQ(r.status, status) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr was: " << r.err;
  EXPECT_TRUE(r.out.empty()) << "nothing should be printed on stdout, got: "
                             << r.out.substr(0, 200);
}

TEST(CliErrors, MissingOrMalformedTokenizer) {
  expect_error(run("tokenize --tokenizer /nonexistent", "hi"), 1, "/nonexistent: cannot open");
  const std::string dir = temp_dir() + "/badtok";
  ::mkdir(dir.c_str(), 0755);
  expect_error(run("tokenize --tokenizer " + dir, "hi"), 1, "directory holds no tokenizer.json");
  write_temp("badtok/tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}}");
  expect_error(run("tokenize --tokenizer " + dir, "hi"), 1,
               "model.type: unsupported model \"Unigram\"");
  write_temp("badtok/tokenizer.json", "{\"model\": ");
  expect_error(run("tokenize --tokenizer " + dir, "hi"), 1, "tokenizer.json: invalid JSON");
}

TEST(CliErrors, InvalidUtf8OnStdin) {
  expect_error(run("tokenize " + tok_arg(), std::string("abc\xFF", 4)), 1,
               "<stdin>: invalid UTF-8 at byte offset 3");
}

TEST(CliErrors, DecodeOfBadIds) {
  expect_error(run("tokenize --decode " + tok_arg(), "[1, 200000]"), 1,
               "<stdin>: [1]: id 200000 is outside the vocabulary");
  expect_error(run("tokenize --decode " + tok_arg(), "[1, \"a\"]"), 1, "[1]: expected an integer");
}

TEST(CliErrors, HashInputProblems) {
  const std::string cfg = " --config " + config_path("engram_small.json");
  expect_error(run("hash " + tok_arg() + cfg, "{\"input_ids\": [[1, 2], [3]]}"), 1,
               "input_ids[1]: ragged rows: this row has 1 ids, row 0 has 2");
  expect_error(run("hash " + tok_arg() + cfg, "{\"input_ids\": [[1, 128815]]}"), 1,
               "input_ids[0][1]: id 128815 is outside the vocabulary [0, 128815)");
  expect_error(run("hash " + tok_arg() + cfg, "{\"input_ids\": [[1, -1]]}"), 1,
               "id -1 is outside the vocabulary");
  expect_error(run("hash " + tok_arg() + cfg, "{\"input_ids\": [1, 2]}"), 1,
               "input_ids[0]: expected an array of ids");
  expect_error(run("hash " + tok_arg() + cfg, "{\"ids\": [[1]]}"), 1,
               "missing field \"input_ids\"");
  expect_error(run("hash " + tok_arg() + cfg, "not json"), 1, "<stdin>: invalid JSON");
}

TEST(CliErrors, HashConfigValuesThatMakeNoSense) {
  const std::string base = read_file(config_path("engram_small.json"));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = base;
    const auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    return " --config " + write_temp("cfg.json", s);
  };
  expect_error(
      run("hash " + tok_arg() + with("\"max_ngram_size\": 3", "\"max_ngram_size\": 1"), "{}"), 1,
      "max_ngram_size");
  expect_error(
      run("hash " + tok_arg() + with("\"n_head_per_ngram\": 4", "\"n_head_per_ngram\": 0"), "{}"),
      1, "n_head_per_ngram");
  expect_error(run("hash " + tok_arg() + with("[5003, 4001]", "[5003, 1]"), "{}"), 1,
               "engram_vocab_size");
  expect_error(
      run("hash " + tok_arg() + with("\"n_embed_per_ngram\": 32", "\"n_embed_per_ngram\": 30"),
          "{}"),
      1, "n_embed_per_ngram");
  expect_error(run("hash " + tok_arg() + with("\"seed\": 7", "\"sed\": 7"), "{}"), 1, "sed");
  expect_error(run("hash " + tok_arg() + " --config /nonexistent.json", "{}"), 1,
               "/nonexistent.json");
}

TEST(CliErrors, UsageErrorsExitTwo) {
  EXPECT_EQ(run("frobnicate").status, 2);
  expect_error(run("tokenize --tokenizr x"), 2, "unknown option --tokenizr");
  expect_error(run("tokenize"), 2, "missing required option --tokenizer");
  expect_error(run("bench hash --tokenizer x --config y --tokens abc"), 2,
               "--tokens: expected an integer");
}

}  // namespace
}  // namespace engram
