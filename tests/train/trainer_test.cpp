// The training loop end to end on a tiny MoE + Engram + mHC model and a synthetic corpus:
// bit-identical resume (with and without gradient accumulation), learning, interruption,
// evaluation, metrics and plots, the CLI (train, eval, generate on the result) and bad input.
#include "engram/train/trainer.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/model/safetensors.h"
#include "engram/text/tokenizer.h"
#include "engram/train/dataset.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_corpus.h"
#include "test_paths.h"

namespace engram::train {
namespace {

const char* kConfig = R"([model]
vocab_size = 2005
hidden_size = 32
num_layers = 2
num_heads = 4
num_kv_heads = 2
hc_mult = 2
max_seq_len = 32
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
batch_size = 2
seq_len = 16
steps = 12
lr = 3e-3
warmup_steps = 2
eval_every = 4
eval_tokens = 64
)";

std::string temp_dir() {
  static const std::string dir = test::make_temp_dir("engram_trainer_test");
  return dir;
}

std::string tokenizer_path() { return test::synthetic_tokenizer_path(); }

std::string data_dir() {
  static const std::string dir = test::prepare_synthetic_corpus(temp_dir());
  return dir;
}

model::ModelConfig config() {
  model::ModelConfig c = model::ModelConfig::from_toml(kConfig, "trainer_test");
  c.train.data = data_dir();
  return c;
}

std::vector<std::string> lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// Every tensor of two checkpoints byte-equal.
void expect_same_checkpoint(const std::string& a, const std::string& b) {
  const SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  ASSERT_EQ(fa.names(), fb.names());
  for (const auto& name : fa.names()) {
    const Tensor ta = fa.get(name).contiguous(), tb = fb.get(name).contiguous();
    ASSERT_EQ(ta.nbytes(), tb.nbytes()) << name;
    EXPECT_EQ(std::memcmp(ta.raw(), tb.raw(), ta.nbytes()), 0) << name;
  }
}

TrainResult run(const model::ModelConfig& c, const std::string& out, bool resume = false,
                std::optional<int64_t> stop_at = {}) {
  TrainOptions o;
  o.out_dir = out;
  o.resume = resume;
  o.stop_at = stop_at;
  return train(c, o);
}

void check_resume(int64_t accum) {
  model::ModelConfig c = config();
  c.train.grad_accum = accum;
  const std::string tag = "accum" + std::to_string(accum);
  const std::string whole = temp_dir() + "/whole_" + tag, parts = temp_dir() + "/parts_" + tag;
  const TrainResult a = run(c, whole);
  EXPECT_EQ(a.steps_done, 12);
  const TrainResult b1 = run(c, parts, false, 5);
  EXPECT_EQ(b1.steps_done, 5);
  EXPECT_EQ(lines(parts + "/metrics.jsonl").size(), 5u);
  const TrainResult b2 = run(c, parts, true);
  EXPECT_EQ(b2.steps_done, 12);
  // The same log line for line (elapsed time and speed aside) and the same final state.
  const auto la = lines(whole + "/metrics.jsonl"), lb = lines(parts + "/metrics.jsonl");
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  for (size_t i = 0; i < la.size(); ++i) {
    auto ja = nlohmann::json::parse(la[i]), jb = nlohmann::json::parse(lb[i]);
    for (auto* j : {&ja, &jb}) {
      j->erase("elapsed_s");
      j->erase("tokens_per_s");
    }
    EXPECT_EQ(ja, jb) << "step " << i + 1;
  }
  EXPECT_EQ(a.last_val_loss, b2.last_val_loss);
  expect_same_checkpoint(whole + "/checkpoint.safetensors", parts + "/checkpoint.safetensors");
}

TEST(TrainerTest, ResumeIsBitIdentical) { check_resume(1); }
TEST(TrainerTest, ResumeIsBitIdenticalWithAccumulation) { check_resume(2); }

TEST(TrainerTest, LearnsAndWritesMetricsAndPlot) {
  model::ModelConfig c = config();
  c.train.steps = 60;
  c.train.eval_every = 20;
  c.train.lr = 1e-2;
  const std::string out = temp_dir() + "/learn";
  const TrainResult r = run(c, out);
  const auto log = lines(out + "/metrics.jsonl");
  ASSERT_EQ(log.size(), 60u);
  std::vector<double> val;
  for (const auto& l : log) {
    const auto j = nlohmann::json::parse(l);
    for (const char* k : {"step", "train_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"})
      EXPECT_TRUE(j.contains(k)) << k;
    if (j.contains("val_loss")) {
      val.push_back(j["val_loss"].get<double>());
      EXPECT_GT(j["val_bits_per_byte"].get<double>(), 0.0);
      EXPECT_NEAR(j["val_ppl"].get<double>(), std::exp(val.back()), 1e-6 * std::exp(val.back()));
    }
  }
  ASSERT_EQ(val.size(), 3u);
  // From ~ln(2005) = 7.6 at init to well below on this very regular text.
  EXPECT_LT(val.back(), 5.0);
  EXPECT_LT(val.back(), val.front());
  const std::string svg = read_file(out + "/loss.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("validation"), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(config().to_toml().empty(), false);
  EXPECT_EQ(model::ModelConfig::from_file(out + "/config.toml").train.steps, 60);
}

TEST(TrainerTest, InterruptStopsWithACheckpoint) {
  std::atomic<bool> stop{true};
  TrainOptions o;
  o.out_dir = temp_dir() + "/interrupt";
  o.interrupt = &stop;
  const TrainResult r = train(config(), o);
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps_done, 1);
  EXPECT_EQ(read_checkpoint_metadata(o.out_dir + "/checkpoint.safetensors").step, 1);
}

TEST(TrainerTest, EvaluateIsTheMeanOverWindows) {
  const model::ModelConfig c = config();
  const TextContext text = make_text_context(c);
  model::Transformer<float> m(c, text.head_sizes, 3);
  DataLoader loader(TokenShard::open(data_dir() + "/val.bin"), 2, 16, text.hasher.get(), 0,
                    DataLoader::Mode::kSequential);
  const auto bytes = token_byte_lengths(*text.tokenizer);
  std::vector<double> windows;
  const EvalResult r = evaluate(m, loader, 0, bytes, &windows);
  // By hand: every window, one at a time.
  DataLoader one(TokenShard::open(data_dir() + "/val.bin"), 1, 16, text.hasher.get(), 0,
                 DataLoader::Mode::kSequential);
  double sum = 0;
  int64_t n = 0, nbytes = 0;
  Batch b;
  while (one.next(b)) {
    const double l = m.forward(b.inputs.data(), b.targets.data(), 1, 16, b.hash_ids);
    ASSERT_LT(static_cast<size_t>(n / 16), windows.size());
    EXPECT_NEAR(windows[static_cast<size_t>(n / 16)], l, 1e-5);
    sum += l * 16;
    n += 16;
    for (int64_t t : b.targets) nbytes += bytes[static_cast<size_t>(t)];
  }
  EXPECT_EQ(r.tokens, n);
  EXPECT_EQ(static_cast<int64_t>(windows.size()) * 16, n);
  EXPECT_EQ(r.bytes, nbytes);
  EXPECT_NEAR(r.loss, sum / static_cast<double>(n), 1e-5);
  EXPECT_NEAR(r.bits_per_byte, sum / std::log(2.0) / static_cast<double>(nbytes), 1e-5);
  EXPECT_NEAR(r.ppl, std::exp(r.loss), 1e-9 * r.ppl);
  // A token limit stops after the batch that reaches it.
  EXPECT_EQ(evaluate(m, loader, 20, bytes).tokens, 32);
}

TEST(TrainerTest, TokenByteLengths) {
  const text::Tokenizer tok = text::Tokenizer::from_file(tokenizer_path());
  const auto len = token_byte_lengths(tok);
  ASSERT_EQ(len.size(), tok.vocab_size());
  for (uint32_t id : tok.encode("the cat")) {
    const uint32_t one[1] = {id};
    EXPECT_EQ(len[id], static_cast<int32_t>(tok.decode_bytes(one).size()));
  }
  int64_t total = 0;
  const auto ids = tok.encode("the old man saw it.");
  for (uint32_t id : ids) total += len[id];
  // Byte-level BPE: the pieces add up to the bytes of the whole (with the tokenizer's prefix space).
  EXPECT_EQ(total, static_cast<int64_t>(tok.decode_bytes(ids).size()));
  EXPECT_GE(total, 19);
}

TEST(MetricsTest, ResumeKeepsEarlierStepsAndDropsAPartialLine) {
  const std::string path = temp_dir() + "/m.jsonl";
  write_file_atomic(path,
                    "{\"step\":1,\"train_loss\":3.0}\n{\"step\":2,\"train_loss\":2.5,\"val_loss\":2.7}\n"
                    "{\"step\":3,\"train_loss\":2.0}\n{\"step\":4,\"tra");
  {
    MetricsLog log(path, 2);
    ASSERT_EQ(log.points().size(), 2u);
    EXPECT_EQ(log.points()[1].val_loss, 2.7);
    StepReport r;
    r.step = 3;
    r.train_loss = 1.5;
    log.append(r);
  }
  const auto l = lines(path);
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(nlohmann::json::parse(l[2])["train_loss"].get<double>(), 1.5);
  // A corrupt line that is not the last is an error naming the file and line.
  write_file_atomic(path, "{\"step\":1}\nnot json\n{\"step\":3}\n");
  try {
    MetricsLog log(path, 5);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  // keep_until < 0 starts a new log.
  MetricsLog fresh(path, -1);
  EXPECT_TRUE(fresh.points().empty());
  EXPECT_TRUE(read_file(path).empty());
}

TEST(MetricsTest, SvgOfTwoRuns) {
  std::vector<MetricPoint> a, b;
  for (int i = 1; i <= 50; ++i) {
    a.push_back({i, 5.0 - 0.02 * i, i % 10 == 0 ? std::optional<double>(5.1 - 0.02 * i) : std::nullopt});
    b.push_back({i, 5.0 - 0.01 * i, std::nullopt});
  }
  const std::string svg = loss_curve_svg({{"engram <&>", a}, {"moe", b}}, "pair");
  EXPECT_NE(svg.find("engram &lt;&amp;&gt;: train"), std::string::npos);
  EXPECT_NE(svg.find("moe: train"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  size_t polylines = 0;
  for (size_t p = svg.find("<polyline"); p != std::string::npos; p = svg.find("<polyline", p + 1)) ++polylines;
  EXPECT_EQ(polylines, 3u);  // two smoothed train curves, one validation curve
}

TEST(TrainerErrors, ExistingCheckpointNeedsResume) {
  const std::string out = temp_dir() + "/twice";
  run(config(), out, false, 1);
  try {
    run(config(), out);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_checkpoint_metadata(out + "/checkpoint.safetensors").step, 1);
}

TEST(TrainerErrors, ResumeWithAnotherArchitecture) {
  const std::string out = temp_dir() + "/arch";
  run(config(), out, false, 1);
  model::ModelConfig c = config();
  c.model.hidden_size = 48;
  try {
    run(c, out, true);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("[model]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(run(config(), temp_dir() + "/nothing_here", true), IoError);
}

TEST(TrainerErrors, MissingOrUnusableData) {
  model::ModelConfig c = config();
  c.train.data = temp_dir() + "/no_such_data";
  try {
    run(c, temp_dir() + "/nodata");
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.json"), std::string::npos) << e.what();
  }
  // A validation shard shorter than one window.
  const std::string d = temp_dir() + "/short_val";
  ::mkdir(d.c_str(), 0755);
  write_file_atomic(d + "/manifest.json", read_file(data_dir() + "/manifest.json"));
  write_file_atomic(d + "/train.bin", read_file(data_dir() + "/train.bin"));
  write_file_atomic(d + "/val.bin", std::string(12, '\0'));
  c.train.data = d;
  try {
    run(c, temp_dir() + "/shortval");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("val.bin"), std::string::npos) << e.what();
  }
  // A model vocabulary smaller than the tokenizer's.
  c = config();
  c.model.vocab_size = 1000;
  EXPECT_THROW(run(c, temp_dir() + "/smallvocab"), ConfigError);
}

struct Cli {
  int status;
  std::string out, err;
};

// Runs the CLI through bash; `prefix` is shell code run first (e.g. a ulimit).
Cli cli(const std::string& args, const std::string& prefix = "") {
  const std::string out = temp_dir() + "/cli_out", err = temp_dir() + "/cli_err";
  const std::string script = prefix + "exec " + test::cli_path() + " " + args + " >" + out + " 2>" + err;
  std::string quoted = "'";
  for (char c : script) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  const std::string cmd = "bash -c " + quoted + "'";
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_file(out), read_file(err)};
}

TEST(TrainCli, TrainEvalGenerate) {
  const std::string cfg = temp_dir() + "/cli.toml";
  write_file_atomic(cfg, std::string(kConfig) + "data = \"" + data_dir() + "\"\n");
  const std::string out = temp_dir() + "/cli_run";
  Cli r = cli("train --config " + cfg + " --out " + out + " --steps 8 --threads 1");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["steps"], 8);
  EXPECT_NE(r.err.find("step 8/8"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("checkpoint"), std::string::npos) << r.err;

  r = cli("eval --ckpt " + out + " --tokens 64");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto e = nlohmann::json::parse(r.out);
  for (const char* k : {"val_loss", "ppl", "bits_per_byte", "tokens"}) EXPECT_TRUE(e.contains(k)) << k;
  EXPECT_NEAR(e["ppl"].get<double>(), std::exp(e["val_loss"].get<double>()), 1e-6 * e["ppl"].get<double>());
  EXPECT_EQ(e["tokens"], 64);

  r = cli("generate --ckpt " + out + " --prompt 'the cat' --max-tokens 5 --seed 1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("the cat", 0), 0u) << r.out;

  // Continuing past the end is a no-op; a longer --steps continues.
  r = cli("train --config " + cfg + " --out " + out + " --steps 10 --resume --threads 1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["steps"], 10);
  EXPECT_EQ(lines(out + "/metrics.jsonl").size(), 10u);

  // A disk that fills while the checkpoint is written (a file-size limit: writes past it fail
  // with EFBIG): the run fails naming the checkpoint, and the previous checkpoint survives.
  const std::string before = read_file(out + "/checkpoint.safetensors");
  r = cli("train --config " + cfg + " --out " + out + " --steps 12 --resume --threads 1",
          "trap '' XFSZ; ulimit -f 64; ");
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("checkpoint.safetensors"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(out + "/checkpoint.safetensors"), before);
  EXPECT_EQ(read_checkpoint_metadata(out + "/checkpoint.safetensors").step, 10);

  // Bad input: unknown config key, missing checkpoint.
  write_file_atomic(cfg + ".bad", std::string(kConfig) + "learning_rate = 1\n");
  r = cli("train --config " + cfg + ".bad --out " + temp_dir() + "/bad");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("learning_rate"), std::string::npos) << r.err;
  r = cli("eval --ckpt " + temp_dir() + "/missing_run");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("missing_run"), std::string::npos) << r.err;
  r = cli("train --out x");
  EXPECT_EQ(r.status, 2);
}

}  // namespace
}  // namespace engram::train
