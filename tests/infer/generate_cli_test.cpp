// engram generate end to end on a tiny untrained checkpoint (mHC, MoE, Engram) and the synthetic
// GPT-2-style tokenizer: output, reproducibility, agreement with an in-process greedy decode,
// the max_seq_len stop, and errors with their exit status.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "engram/infer/decoder.h"
#include "engram/model/config.h"
#include "engram/model/transformer.h"
#include "engram/train/checkpoint.h"
#include "engram/train/run.h"
#include "engram/util/file.h"
#include "test_paths.h"

namespace engram {
namespace {

const char* kConfig = R"([model]
vocab_size = 2005
hidden_size = 32
num_layers = 2
num_heads = 4
num_kv_heads = 2
hc_mult = 2
max_seq_len = 40
dense_intermediate_size = 48
first_dense_layers = 1

[moe]
num_experts = 4
num_shared_experts = 1
top_k = 2
expert_intermediate_size = 16

[engram]
engram_vocab_size = [101, 103]
max_ngram_size = 3
n_embed_per_ngram = 8
n_head_per_ngram = 2
layer_ids = [1]

[train]
seq_len = 16
)";

const char* kPrompt = "Hello world, once upon a time";

struct Result {
  int status;
  std::string out, err;
};

std::string temp_dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/engram_generate_test.XXXXXX";
    return std::string(::mkdtemp(tmpl));
  }();
  return dir;
}

std::string tokenizer_path() {
  return test::fixture_dir() + "/tokenize/synthetic/gpt2.tokenizer.json";
}

// A checkpoint of the seeded, untrained model (written once).
std::string checkpoint() {
  static const std::string path = [] {
    const model::ModelConfig config = model::ModelConfig::from_toml(kConfig, "generate_test");
    const train::TextContext text = train::make_text_context(config, tokenizer_path());
    model::Transformer<float> model(config, text.head_sizes, 5);
    train::CheckpointState state;
    state.config_toml = config.to_toml();
    const std::string file = temp_dir() + "/checkpoint.safetensors";
    train::save_checkpoint(file, model.params(), {}, state);
    return file;
  }();
  return path;
}

Result run(const std::string& args) {
  const std::string out = temp_dir() + "/stdout", err = temp_dir() + "/stderr";
  const std::string cmd = test::cli_path() + " generate " + args + " >" + out + " 2>" + err;
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_file(out), read_file(err)};
}

std::string base_args() {
  return "--ckpt " + checkpoint() + " --tokenizer " + tokenizer_path() + " --prompt '" + kPrompt +
         "'";
}

TEST(GenerateCli, PrintsThePromptAndAContinuation) {
  const Result r = run(base_args() + " --max-tokens 12 --seed 3");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind(kPrompt, 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string(kPrompt).size() + 1);
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_NE(r.err.find("12 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
}

TEST(GenerateCli, SameSeedSameTextOtherSeedOtherText) {
  const std::string args = base_args() + " --max-tokens 12 --temperature 1 --top-k 50 --top-p 0.9";
  const Result a = run(args + " --seed 7"), b = run(args + " --seed 7"),
               c = run(args + " --seed 8");
  ASSERT_EQ(a.status, 0) << a.err;
  ASSERT_EQ(c.status, 0) << c.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(GenerateCli, GreedyIsDeterministicAndMatchesTheDecoder) {
  const std::string args = base_args() + " --max-tokens 10 --temperature 0 --threads 2";
  const Result a = run(args + " --seed 1"), b = run(args + " --seed 2");
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);

  // The same greedy continuation in process (the synthetic tokenizer has no BOS).
  const train::LoadedModel m = train::load_model(checkpoint(), tokenizer_path());
  const std::vector<uint32_t> prompt = m.text.tokenizer->encode(kPrompt);
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  infer::Decoder dec(*m.model, m.text.hasher.get());
  std::span<const float> logits = dec.push(ids);
  std::vector<uint32_t> all = prompt;
  for (int i = 0; i < 10; ++i) {
    int64_t best = 0;
    for (size_t v = 0; v < 2005; ++v)
      if (logits[v] > logits[static_cast<size_t>(best)]) best = static_cast<int64_t>(v);
    all.push_back(static_cast<uint32_t>(best));
    logits = dec.push({&best, 1});
  }
  // The prompt is printed as given; the tokenizer's decode of it has a prefix space.
  const std::string text = m.text.tokenizer->decode(all);
  const std::string prompt_text = m.text.tokenizer->decode(prompt);
  ASSERT_EQ(text.rfind(prompt_text, 0), 0u);
  EXPECT_EQ(a.out, kPrompt + text.substr(prompt_text.size()) + "\n");
}

TEST(GenerateCli, StopsAtMaxSeqLenWithANote) {
  const Result r = run(base_args() + " --max-tokens 100");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("max_seq_len = 40"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.rfind(kPrompt, 0), 0u);
}

TEST(GenerateCli, ErrorsNameTheProblem) {
  Result r = run("--prompt hi --max-tokens 3");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--ckpt"), std::string::npos) << r.err;

  const std::string missing = temp_dir() + "/no_such_run";
  r = run("--ckpt " + missing + " --prompt hi --max-tokens 3 --tokenizer " + tokenizer_path());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;

  r = run(base_args() + " --max-tokens 3 --top-p 1.5");
  EXPECT_TRUE(r.status == 1 || r.status == 2) << r.status;
  EXPECT_NE(r.err.find("top-p"), std::string::npos) << r.err;

  r = run(base_args() + " --max-tokens 3 --temperature -1");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--temperature"), std::string::npos) << r.err;

  r = run(base_args() + " --max-tokens lots");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--max-tokens"), std::string::npos) << r.err;

  r = run(base_args());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--max-tokens"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace engram
