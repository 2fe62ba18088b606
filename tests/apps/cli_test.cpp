// The engram CLI end to end: the DESIGN.md contract on golden data, and clear errors with the
// right exit status for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <tuple>

#include "engram/model/safetensors.h"
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

// run-layer on the reference module's golden inputs: every output within `tol` of the golden
// value, relative to the tensor's largest magnitude.
size_t expect_run_layer_matches(const std::string& config, int layer, const std::string& in_path,
                                const std::string& expected_path, double tol) {
  const std::string out_path = temp_dir() + "/layer_out.safetensors";
  const Result r = run("run-layer " + tok_arg() + " --config " + config + " --layer " +
                       std::to_string(layer) + " --in " + in_path + " --out " + out_path);
  EXPECT_EQ(r.status, 0) << r.err;
  if (r.status != 0) return 0;
  const auto out = SafetensorsFile::open(out_path);
  const auto golden = SafetensorsFile::open(expected_path);
  size_t compared = 0;
  for (const auto& name : golden.names()) {
    if (name != "output" && name != "grad_hidden_states" && name.rfind("grad.", 0) != 0) continue;
    EXPECT_TRUE(out.contains(name)) << name;
    if (!out.contains(name)) continue;
    const Tensor want = golden.get(name).to(DType::kF64), got = out.get(name).to(DType::kF64);
    EXPECT_EQ(got.shape(), want.shape()) << name;
    if (got.shape() != want.shape()) continue;
    double max_abs = 0, max_err = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      max_abs = std::max(max_abs, std::abs(want.data<double>()[i]));
      max_err = std::max(max_err, std::abs(got.data<double>()[i] - want.data<double>()[i]));
    }
    EXPECT_LE(max_err, tol * max_abs)
        << name << ": max error " << max_err << " of max |value| " << max_abs;
    ++compared;
  }
  return compared;
}

void expect_run_layer_matches_golden(const std::string& in_path, double tol) {
  const size_t compared =
      expect_run_layer_matches(config_path("engram_small.json"), 3, in_path,
                               test::golden_dir() + "/engram_module_golden.safetensors", tol);
  EXPECT_EQ(compared, 2u + 24u);  // output, grad_hidden_states and 24 parameter gradients
}

// Other layer shapes (hc_mult 1/2/4, orders 2-4, with and without biases and short conv) against
// the reference module in PyTorch (tools/torch_ref/engram_layer_ref.py parity).
TEST(Cli, RunLayerMatchesPyTorchOnOtherShapes) {
  const std::string dir = test::fixture_dir() + "/layer/";
  for (const auto& [name, layer, params] :
       {std::tuple{"m1_n2", 2, 9u}, {"m2_n4_nobias", 5, 11u}, {"m4_n3_noconv", 0, 19u}}) {
    SCOPED_TRACE(name);
    const size_t compared =
        expect_run_layer_matches(dir + name + ".config.json", layer, dir + name + ".in.safetensors",
                                 dir + name + ".expected.safetensors", 1e-9);
    EXPECT_EQ(compared, 2u + params);
  }
}

TEST(Cli, RunLayerReproducesGoldenInFloat64) {
  expect_run_layer_matches_golden(test::golden_dir() + "/engram_module_golden.safetensors", 1e-9);
}

TEST(Cli, RunLayerReproducesGoldenInFloat32) {
  // The golden inputs converted to float32 (ids stay int64).
  const auto golden =
      SafetensorsFile::open(test::golden_dir() + "/engram_module_golden.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& name : golden.names()) {
    const Tensor t = golden.get(name);
    tensors.emplace_back(name, t.dtype() == DType::kF64 ? t.to(DType::kF32) : t);
  }
  const std::string in32 = temp_dir() + "/golden_f32.safetensors";
  write_safetensors(in32, tensors);
  expect_run_layer_matches_golden(in32, 2e-5);
}

TEST(CliErrors, RunLayerInputProblems) {
  const auto golden =
      SafetensorsFile::open(test::golden_dir() + "/engram_module_golden.safetensors");
  auto write_variant = [&](const std::string& drop, const std::string& add,
                           const Tensor& add_value) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& name : golden.names()) {
      if (name != drop) tensors.emplace_back(name, golden.get(name));
    }
    if (!add.empty()) tensors.emplace_back(add, add_value);
    const std::string path = temp_dir() + "/variant.safetensors";
    write_safetensors(path, tensors);
    return path;
  };
  const std::string base = "run-layer " + tok_arg() + " --config " +
                           config_path("engram_small.json") + " --out " + temp_dir() +
                           "/o.safetensors";
  expect_error(run(base + " --layer 3 --in " + write_variant("param.norm1.2.weight", "", Tensor())),
               1, "missing tensor \"param.norm1.2.weight\"");
  expect_error(run(base + " --layer 3 --in " +
                   write_variant("param.value_proj.bias", "param.value_proj.bias",
                                 Tensor(DType::kF64, {63}))),
               1, "tensor \"param.value_proj.bias\" has shape [63], expected [64]");
  expect_error(run(base + " --layer 3 --in " +
                   write_variant("", "param.extra.weight", Tensor(DType::kF64, {2}))),
               1, "unexpected parameter \"param.extra.weight\"");
  expect_error(
      run(base + " --layer 4 --in " + test::golden_dir() + "/engram_module_golden.safetensors"), 1,
      "layer 4 has no Engram");
  expect_error(run(base + " --layer 3 --in " + write_variant("hidden_states", "", Tensor())), 1,
               "missing tensor \"hidden_states\"");
  write_temp("trunc.safetensors",
             read_file(test::golden_dir() + "/engram_module_golden.safetensors").substr(0, 5000));
  expect_error(run(base + " --layer 3 --in " + temp_dir() + "/trunc.safetensors"), 1,
               "trunc.safetensors");
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
