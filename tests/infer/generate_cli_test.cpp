// engram generate end to end on a tiny untrained checkpoint (mHC, MoE, Engram) and the synthetic
// GPT-2-style tokenizer: output, reproducibility, agreement with an in-process greedy decode,
// the max_seq_len stop, and errors with their exit status; engram eval --engram-tables; engram
// serve over HTTP.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/cuda/device.h"
#include "engram/infer/decoder.h"
#include "engram/memory/engt_file.h"
#include "engram/memory/row_format.h"
#include "engram/model/config.h"
#include "engram/model/safetensors.h"
#include "engram/model/transformer.h"
#include "engram/tensor/tensor.h"
#include "engram/train/checkpoint.h"
#include "engram/train/run.h"
#include "engram/util/file.h"
#include "test_corpus.h"
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

// Writes a checkpoint of the seeded, untrained model of `toml` as temp_dir()/name.
std::string write_checkpoint(const std::string& toml, const std::string& name, uint64_t seed) {
  const model::ModelConfig config = model::ModelConfig::from_toml(toml, name);
  const train::TextContext text = train::make_text_context(config, tokenizer_path());
  model::Transformer<float> model(config, text.head_sizes, seed);
  train::CheckpointState state;
  state.config_toml = config.to_toml();
  const std::string file = temp_dir() + "/" + name;
  train::save_checkpoint(file, model.params(), {}, state);
  return file;
}

// A checkpoint of the seeded, untrained model (written once).
std::string checkpoint() {
  static const std::string path = write_checkpoint(kConfig, "checkpoint.safetensors", 5);
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

  r = run(base_args() + " --max-tokens 3 --device tpu");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--device: \"tpu\""), std::string::npos) << r.err;

  r = run(base_args() + " --max-tokens 3 --device cuda --engram-tables a.engt --table-stats s");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--table-stats"), std::string::npos) << r.err;
}

// --device cuda: the same greedy text and the same sampled text (same seed) as the CPU, from a
// checkpoint with head_dim 64 (the GPU attention's size). Skipped without a GPU.
std::string hd64_toml() {
  std::string toml = kConfig;
  toml.replace(toml.find("num_kv_heads"), 0, "head_dim = 64\n");
  return toml;
}

std::string hd64_checkpoint() {
  static const std::string path = write_checkpoint(hd64_toml(), "checkpoint_hd64.safetensors", 6);
  return path;
}

TEST(GenerateCli, CudaDeviceGivesTheCpusText) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  const std::string path = hd64_checkpoint();
  const std::string args = "--ckpt " + path + " --tokenizer " + tokenizer_path() + " --prompt '" +
                           kPrompt + "' --max-tokens 10 ";
  for (const std::string sampling : {"--temperature 0", "--temperature 1 --seed 4"}) {
    const Result cpu = run(args + sampling), gpu = run(args + sampling + " --device cuda");
    ASSERT_EQ(cpu.status, 0) << cpu.err;
    ASSERT_EQ(gpu.status, 0) << gpu.err;
    EXPECT_EQ(gpu.out, cpu.out) << sampling;
    EXPECT_NE(gpu.err.find("| cuda |"), std::string::npos) << gpu.err;
  }
}

}  // namespace
}  // namespace engram

namespace engram {
namespace {

// `engram table convert` of one tensor of a checkpoint (the default one unless given); returns
// the .engt path.
std::string convert(const std::string& tensor, const std::string& format, const std::string& name,
                    const std::string& ckpt = checkpoint()) {
  const std::string out = temp_dir() + "/" + name;
  const std::string cmd = test::cli_path() + " table convert --in " + ckpt + " --tensor " +
                          tensor + " --format " + format + " --out " + out + " >/dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return out;
}

TEST(GenerateCli, ReadsEngramTablesFromEngtFiles) {
  const std::string f32 = convert("param.layers.1.engram.table", "f32", "table_f32.engt");
  const std::string greedy = base_args() + " --max-tokens 10 --temperature 0";
  const Result own = run(greedy);
  ASSERT_EQ(own.status, 0) << own.err;

  // The same values through the file tier (with a cache) and the host tier: the same text.
  const std::string stats = temp_dir() + "/table_stats.jsonl";
  const Result file = run(greedy + " --engram-tables " + f32 +
                          " --tier file --cache-rows 64 --table-stats " + stats);
  ASSERT_EQ(file.status, 0) << file.err;
  EXPECT_EQ(file.out, own.out);
  EXPECT_NE(file.err.find("file tier"), std::string::npos) << file.err;
  EXPECT_NE(file.err.find("prefetched"), std::string::npos) << file.err;
  EXPECT_NE(file.err.find("layers stalled"), std::string::npos) << file.err;
  const Result host = run(greedy + " --engram-tables " + f32 + " --tier host");
  ASSERT_EQ(host.status, 0) << host.err;
  EXPECT_EQ(host.out, own.out);
  EXPECT_NE(host.err.find("host tier"), std::string::npos) << host.err;

  // One statistics line per push: the prefill, then 9 decode steps of one token each, 4 rows a
  // token (2 orders x 2 heads). The prefill finds the cache cold; the untrained model's greedy
  // text repeats itself, so later steps find their rows cached and read nothing.
  std::ifstream in(stats);
  std::vector<nlohmann::json> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(nlohmann::json::parse(l));
  ASSERT_EQ(lines.size(), 10u);
  EXPECT_EQ(lines[0]["step"], 0);
  EXPECT_GT(lines[0]["requested"].get<int64_t>(), 4);
  EXPECT_EQ(lines[0]["hits"], 0);
  int64_t hits = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& l = lines[i];
    if (i > 0) {
      EXPECT_EQ(l["requested"], 4) << "step " << i;
    }
    EXPECT_LE(l["unique"].get<int64_t>(), l["requested"].get<int64_t>()) << "step " << i;
    // The layers' time waiting for their prefetched rows.
    ASSERT_TRUE(l.contains("stall_ms")) << l.dump();
    EXPECT_GE(l["stall_ms"].get<double>(), 0.0) << "step " << i;
    EXPECT_EQ(l["bytes_read"].get<int64_t>(), 4096 * l["blocks_read"].get<int64_t>());
    if (l["hits"] == l["unique"]) {
      EXPECT_EQ(l["blocks_read"], 0) << "step " << i;
    } else {
      EXPECT_GT(l["blocks_read"].get<int64_t>(), 0) << "step " << i;
    }
    hits += l["hits"].get<int64_t>();
  }
  EXPECT_GT(hits, 0);

  // bf16 rows: the text may differ, the run must work.
  const std::string bf16 = convert("param.layers.1.engram.table", "bf16", "table_bf16.engt");
  EXPECT_EQ(run(greedy + " --engram-tables " + bf16).status, 0);
}

TEST(GenerateCli, EngramTableErrorsNameTheProblem) {
  // A table of the wrong shape (the LM head: vocab_size rows of hidden_size).
  const std::string wrong = convert("param.head", "f32", "head.engt");
  Result r = run(base_args() + " --max-tokens 3 --engram-tables " + wrong);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(wrong + ": rows: 2005, but Engram layer 1's table "
                               "(param.layers.1.engram.table) has "),
            std::string::npos)
      << r.err;

  r = run(base_args() + " --max-tokens 3 --engram-tables " + temp_dir() + "/missing.engt");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("missing.engt"), std::string::npos) << r.err;

  const std::string f32 = convert("param.layers.1.engram.table", "f32", "table_f32b.engt");
  r = run(base_args() + " --max-tokens 3 --engram-tables " + f32 + " --tier disk");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--tier"), std::string::npos) << r.err;

  r = run(base_args() + " --max-tokens 3 --cache-rows 8");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--engram-tables"), std::string::npos) << r.err;

  // One file per Engram layer: this model has one.
  r = run(base_args() + " --max-tokens 3 --engram-tables " + f32 + "," + f32);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--engram-tables: 2 file(s) given, the model has 1 Engram layer(s) "
                       "(layer_ids [1])"),
            std::string::npos)
      << r.err;

  // The host tier reads no files: there are no table statistics to write.
  r = run(base_args() + " --max-tokens 3 --engram-tables " + f32 + " --tier host --table-stats " +
          temp_dir() + "/host_stats.jsonl");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--table-stats"), std::string::npos) << r.err;
}

// The figure "peak RSS X MiB" of a run's stderr.
double peak_rss_mib(const std::string& err) {
  const std::string key = "peak RSS ";
  const size_t at = err.find(key);
  EXPECT_NE(at, std::string::npos) << err;
  return at == std::string::npos ? 0.0 : std::stod(err.substr(at + key.size()));
}

TEST(GenerateCli, EngramTablesFromFilesLeaveTheCheckpointsTablesOutOfMemory) {
  // A table of 64 MiB (4 heads of about 1 M rows of 4 floats): with .engt files (file tier, a
  // small cache), the checkpoint's copy is never read, so the peak resident memory drops by at
  // least the table (a full load holds it twice: the model's copy and the mapped file's pages).
  std::string config = kConfig;
  const std::string small = "engram_vocab_size = [101, 103]";
  config.replace(config.find(small), small.size(), "engram_vocab_size = [1000003, 1000033]");
  const std::string ckpt = temp_dir() + "/big_table.safetensors";
  int64_t table_bytes = 0;
  {
    const model::ModelConfig c = model::ModelConfig::from_toml(config, "generate_test");
    const train::TextContext text = train::make_text_context(c, tokenizer_path());
    model::Transformer<float> m(c, text.head_sizes, 5);
    table_bytes = static_cast<int64_t>(m.params().layers[1].engram_table.size() * sizeof(float));
    train::CheckpointState state;
    state.config_toml = c.to_toml();
    train::save_checkpoint(ckpt, m.params(), {}, state);
  }
  ASSERT_GT(table_bytes, 60 << 20);
  const std::string table = temp_dir() + "/big_table.engt";
  const std::string cmd = test::cli_path() + " table convert --in " + ckpt +
                          " --tensor param.layers.1.engram.table --format f32 --out " + table +
                          " >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);

  const std::string args = "--ckpt " + ckpt + " --tokenizer " + tokenizer_path() + " --prompt '" +
                           kPrompt + "' --max-tokens 4 --temperature 0";
  const Result full = run(args),
               lean = run(args + " --engram-tables " + table + " --tier file --cache-rows 1024");
  ASSERT_EQ(full.status, 0) << full.err;
  ASSERT_EQ(lean.status, 0) << lean.err;
  EXPECT_EQ(lean.out, full.out);
  const double saved = peak_rss_mib(full.err) - peak_rss_mib(lean.err);
  std::printf("peak RSS: checkpoint tables %.1f MiB, .engt file tier %.1f MiB (table %.1f MiB)\n",
              peak_rss_mib(full.err), peak_rss_mib(lean.err),
              static_cast<double>(table_bytes) / (1 << 20));
  EXPECT_GE(saved, static_cast<double>(table_bytes) / (1 << 20)) << full.err << lean.err;
  std::remove(ckpt.c_str());
  std::remove(table.c_str());
}

}  // namespace
}  // namespace engram

namespace engram {
namespace {

// `engram eval` of the same checkpoint on the synthetic corpus; returns (status, stdout JSON).
std::pair<int, nlohmann::json> run_eval(const std::string& extra) {
  static const std::string data = test::prepare_synthetic_corpus(temp_dir());
  const std::string out = temp_dir() + "/eval_stdout", err = temp_dir() + "/eval_stderr";
  const std::string cmd = test::cli_path() + " eval --ckpt " + checkpoint() + " --tokenizer " +
                          tokenizer_path() + " --data " + data + " --tokens 64" + extra + " >" +
                          out + " 2>" + err;
  const int rc = std::system(cmd.c_str());
  const int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  const std::string text = read_file(out);
  return {status, status == 0 ? nlohmann::json::parse(text) : nlohmann::json(read_file(err))};
}

TEST(EvalCli, EngramTablesFromEngtFiles) {
  const auto [s_own, own] = run_eval("");
  ASSERT_EQ(s_own, 0) << own;
  EXPECT_FALSE(own.contains("engram_tables"));
  // f32 rows are the checkpoint's values: the same loss to the last bit.
  const std::string f32 = convert("param.layers.1.engram.table", "f32", "eval_f32.engt");
  const auto [s_f32, with_f32] = run_eval(" --engram-tables " + f32);
  ASSERT_EQ(s_f32, 0) << with_f32;
  EXPECT_EQ(with_f32["val_loss"].get<double>(), own["val_loss"].get<double>());
  EXPECT_EQ(with_f32["engram_tables"], nlohmann::json::array({f32}));
  // bf16 rows: another table, so (almost surely) another loss, but close.
  const std::string bf16 = convert("param.layers.1.engram.table", "bf16", "eval_bf16.engt");
  const auto [s_bf16, with_bf16] = run_eval(" --engram-tables " + bf16);
  ASSERT_EQ(s_bf16, 0) << with_bf16;
  const double a = own["val_loss"].get<double>(), b = with_bf16["val_loss"].get<double>();
  EXPECT_NE(a, b);
  EXPECT_NEAR(b, a, 1e-2 * a);
  // A table of the wrong shape: exit 1, the file and field named.
  const std::string wrong = convert("param.head", "f32", "eval_head.engt");
  const auto [s_wrong, err] = run_eval(" --engram-tables " + wrong);
  EXPECT_EQ(s_wrong, 1);
  EXPECT_NE(err.get<std::string>().find(wrong + ": rows: 2005"), std::string::npos) << err;
  // The right shape, but the table of another layer (as its tensor name says): refused.
  const SafetensorsFile ckpt = SafetensorsFile::open(checkpoint());
  const Tensor table = ckpt.get("param.layers.1.engram.table").contiguous();
  const std::string other = temp_dir() + "/eval_layer2.engt";
  memory::write_engt(other, memory::RowFormat::kF32, table.data<float>(), table.shape()[0],
                     table.shape()[1], "param.layers.2.engram.table");
  const auto [s_other, err_other] = run_eval(" --engram-tables " + other);
  EXPECT_EQ(s_other, 1);
  EXPECT_NE(err_other.get<std::string>().find(other + ": name: \"param.layers.2.engram.table\" "
                                              "is the table of layer 2, but this file is given "
                                              "for Engram layer 1"),
            std::string::npos)
      << err_other;
}

}  // namespace
}  // namespace engram

// engram serve: the generate decoder behind HTTP. A server on a free port answers health, greedy
// and sampled generations (the text of engram generate with the same options, the file tier's
// per-request table statistics), and its errors by status and message; it stops by itself
// after --max-requests.
namespace engram {
namespace {

// --device cuda --engram-tables: .engt tables of every format in pinned host memory (fp8 and
// int8 rows dequantized by the GPU's gather), and through the file tier (each step's rows
// gathered into pinned staging), give the CPU's text with the same files. The rows are 32 values
// wide (the fp8 and int8 formats hold one scale per 32 values). Skipped without a GPU.
TEST(GenerateCli, CudaDeviceReadsEngtTablesFromHostMemory) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  static const std::string ckpt = [] {
    std::string toml = hd64_toml();
    toml.replace(toml.find("n_embed_per_ngram = 8"), 21, "n_embed_per_ngram = 64");
    return write_checkpoint(toml, "checkpoint_hd64_w32.safetensors", 7);
  }();
  for (const std::string format : {"f32", "bf16", "fp8", "int8"}) {
    const std::string out =
        convert("param.layers.1.engram.table", format, "hd64_table_" + format + ".engt", ckpt);
    const std::string args = "--ckpt " + ckpt + " --tokenizer " + tokenizer_path() +
                             " --prompt '" + kPrompt + "' --max-tokens 10 --temperature 0" +
                             " --engram-tables " + out;
    const Result cpu = run(args), gpu = run(args + " --device cuda");
    ASSERT_EQ(cpu.status, 0) << cpu.err;
    ASSERT_EQ(gpu.status, 0) << gpu.err;
    EXPECT_EQ(gpu.out, cpu.out) << format;
    EXPECT_NE(gpu.err.find("pinned host memory"), std::string::npos) << gpu.err;
    const Result file = run(args + " --device cuda --tier file --cache-rows 64");
    ASSERT_EQ(file.status, 0) << file.err;
    EXPECT_EQ(file.out, cpu.out) << format << " through the file tier";
    EXPECT_NE(file.err.find("gathered into pinned staging"), std::string::npos) << file.err;
  }
}

struct Server {
  pid_t pid = -1;
  int port = 0;
  std::string err_file;
};

// Starts `engram serve ARGS --port 0` and waits (10 s at most) for its "listening on" line.
Server start_server(const std::vector<std::string>& args, const std::string& name) {
  Server s;
  s.err_file = temp_dir() + "/" + name + ".err";
  s.pid = ::fork();
  if (s.pid == 0) {
    const int fd = ::open(s.err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    std::vector<std::string> all = {test::cli_path(), "serve", "--port", "0"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  for (int i = 0; i < 200 && s.port == 0; ++i) {
    ::usleep(50000);
    const std::string err = read_file(s.err_file);
    const size_t at = err.find("listening on http://127.0.0.1:");
    if (at != std::string::npos) s.port = std::stoi(err.substr(at + 30));
  }
  return s;
}

int wait_exit(const Server& s) {
  int rc = 0;
  for (int i = 0; i < 200; ++i) {
    if (::waitpid(s.pid, &rc, WNOHANG) == s.pid) return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    ::usleep(50000);
  }
  ::kill(s.pid, SIGKILL);
  ::waitpid(s.pid, &rc, 0);
  return -2;
}

struct Reply {
  int status = 0;
  nlohmann::json body;
};

// One request on a new connection; the reply's status and JSON body.
Reply request(int port, const std::string& method, const std::string& path,
              const std::string& body = "") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: test\r\n";
  if (method == "POST") req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  EXPECT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string all;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) all.append(buf, static_cast<size_t>(n));
  ::close(fd);
  Reply r;
  if (all.rfind("HTTP/1.1 ", 0) == 0) r.status = std::stoi(all.substr(9, 3));
  const size_t head = all.find("\r\n\r\n");
  if (head != std::string::npos) r.body = nlohmann::json::parse(all.substr(head + 4), nullptr, false);
  return r;
}

TEST(ServeCli, AnswersLikeGenerateAndNamesErrors) {
  const Server s = start_server({"--ckpt", checkpoint(), "--tokenizer", tokenizer_path(),
                                 "--threads", "2", "--max-requests", "8"},
                                "serve");
  ASSERT_GT(s.port, 0) << read_file(s.err_file);

  Reply r = request(s.port, "GET", "/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body["status"], "ok");
  EXPECT_EQ(r.body["model"]["vocab_size"], 2005);

  // Greedy and sampled: the text engram generate prints for the same options.
  const nlohmann::json greedy = {{"prompt", kPrompt}, {"max_tokens", 10}, {"temperature", 0}};
  r = request(s.port, "POST", "/generate", greedy.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const Result g = run(base_args() + " --max-tokens 10 --temperature 0");
  ASSERT_EQ(g.status, 0) << g.err;
  EXPECT_EQ(r.body["text"].get<std::string>() + "\n", g.out);
  EXPECT_EQ(r.body["tokens"], 10);
  EXPECT_EQ(r.body["stop"], "max-tokens");
  EXPECT_EQ(r.body["text"].get<std::string>(), kPrompt + r.body["completion"].get<std::string>());
  const nlohmann::json sampled = {
      {"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 1}, {"top_k", 50}, {"seed", 7}};
  r = request(s.port, "POST", "/generate", sampled.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const Result sg = run(base_args() + " --max-tokens 12 --temperature 1 --top-k 50 --seed 7");
  EXPECT_EQ(r.body["text"].get<std::string>() + "\n", sg.out);

  // Errors: status and a message naming the problem.
  r = request(s.port, "POST", "/generate", "{\"prompt\": \"hi\"}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"], "body: max_tokens: missing");
  r = request(s.port, "POST", "/generate", "{\"prompt\": \"hi\", \"max_tokens\": 2, \"tempo\": 1}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"], "body: tempo: unknown field");
  std::string long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt += "word ";
  r = request(s.port, "POST", "/generate",
              nlohmann::json{{"prompt", long_prompt}, {"max_tokens", 1}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["error"].get<std::string>().find("max_seq_len = 40"), std::string::npos)
      << r.body.dump();
  r = request(s.port, "GET", "/generate");
  EXPECT_EQ(r.status, 405);
  r = request(s.port, "GET", "/metrics");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(wait_exit(s), 0) << read_file(s.err_file);
  const std::string err = read_file(s.err_file);
  EXPECT_NE(err.find("POST /generate 200"), std::string::npos) << err;
  EXPECT_NE(err.find("stopped after 8 requests"), std::string::npos) << err;
}

// Six prompts at once through batches of 4 (two wait in the queue): each answer is what engram
// generate prints for its options alone. Then, with one slot and no queue, a prompt arriving
// while another decodes is refused with 503.
TEST(ServeCli, ConcurrentRequestsAreBatchedAndAnswerAlone) {
  const Server s = start_server({"--ckpt", checkpoint(), "--tokenizer", tokenizer_path(),
                                 "--threads", "1", "--max-batch", "4", "--max-requests", "7"},
                                "serve_batch");
  ASSERT_GT(s.port, 0) << read_file(s.err_file);
  const std::vector<std::string> prompts = {"Once upon", "The king", "Hello world", "A cat",
                                            "In the beginning", "Deep in the forest"};
  std::vector<Reply> replies(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] {
      const nlohmann::json body = {{"prompt", prompts[i]},
                                   {"max_tokens", 6 + static_cast<int>(i)},
                                   {"temperature", i % 2 == 0 ? 0.0 : 1.0},
                                   {"seed", 10 + static_cast<int>(i)}};
      replies[i] = request(s.port, "POST", "/generate", body.dump());
    });
  }
  for (auto& t : clients) t.join();
  const Reply health = request(s.port, "GET", "/health");
  EXPECT_EQ(health.body["max_batch"], 4);
  EXPECT_EQ(wait_exit(s), 0) << read_file(s.err_file);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(replies[i].status, 200) << replies[i].body.dump();
    const std::string args = "--ckpt " + checkpoint() + " --tokenizer " + tokenizer_path() +
                             " --prompt '" + prompts[i] + "' --max-tokens " +
                             std::to_string(6 + i) + " --temperature " +
                             (i % 2 == 0 ? "0" : "1") + " --seed " + std::to_string(10 + i);
    const Result g = run(args);
    ASSERT_EQ(g.status, 0) << g.err;
    EXPECT_EQ(replies[i].body["text"].get<std::string>() + "\n", g.out) << prompts[i];
  }

  // Two long prompts at once (a model of max_seq_len 512, 400 tokens each): whichever arrives
  // second finds the one slot taken and no queue.
  static const std::string long_ckpt = [] {
    std::string toml = kConfig;
    toml.replace(toml.find("max_seq_len = 40"), 16, "max_seq_len = 512");
    return write_checkpoint(toml, "checkpoint_512.safetensors", 7);
  }();
  const Server one = start_server({"--ckpt", long_ckpt, "--tokenizer", tokenizer_path(),
                                   "--max-batch", "1", "--max-queue", "0", "--max-requests", "2"},
                                  "serve_busy");
  ASSERT_GT(one.port, 0) << read_file(one.err_file);
  Reply both[2];
  std::thread a([&] {
    both[0] = request(one.port, "POST", "/generate",
                      nlohmann::json{{"prompt", kPrompt}, {"max_tokens", 400}}.dump());
  });
  both[1] = request(one.port, "POST", "/generate",
                    nlohmann::json{{"prompt", kPrompt}, {"max_tokens", 400}}.dump());
  a.join();
  EXPECT_EQ(std::min(both[0].status, both[1].status), 200);
  EXPECT_EQ(std::max(both[0].status, both[1].status), 503);
  const Reply& busy = both[0].status == 503 ? both[0] : both[1];
  EXPECT_NE(busy.body["error"].get<std::string>().find("--max-queue"), std::string::npos);
  EXPECT_EQ(wait_exit(one), 0) << read_file(one.err_file);
}

// --device cuda: four greedy prompts at once, batched in one GPU decoder (prompt chunks and
// decode rows mixed), each answered with the CPU's engram generate text. Skipped without a GPU.
TEST(ServeCli, CudaBatchesGiveTheCpusText) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  const Server s = start_server({"--ckpt", hd64_checkpoint(), "--tokenizer", tokenizer_path(),
                                 "--device", "cuda", "--max-batch", "4", "--max-requests", "4"},
                                "serve_cuda");
  ASSERT_GT(s.port, 0) << read_file(s.err_file);
  const std::vector<std::string> prompts = {"Once upon", "The king said", "Hello", "A"};
  std::vector<Reply> replies(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] {
      replies[i] = request(s.port, "POST", "/generate",
                           nlohmann::json{{"prompt", prompts[i]},
                                          {"max_tokens", 8 + static_cast<int>(i)},
                                          {"temperature", 0}}
                               .dump());
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(wait_exit(s), 0) << read_file(s.err_file);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(replies[i].status, 200) << replies[i].body.dump();
    const Result g = run("--ckpt " + hd64_checkpoint() + " --tokenizer " + tokenizer_path() +
                         " --prompt '" + prompts[i] + "' --max-tokens " + std::to_string(8 + i) +
                         " --temperature 0");
    ASSERT_EQ(g.status, 0) << g.err;
    EXPECT_EQ(replies[i].body["text"].get<std::string>() + "\n", g.out) << prompts[i];
  }
}

TEST(ServeCli, FileTierTablesReportTheirRowsPerRequest) {
  const std::string f32 = convert("param.layers.1.engram.table", "f32", "serve_table.engt");
  const Server s = start_server({"--ckpt", checkpoint(), "--tokenizer", tokenizer_path(),
                                 "--engram-tables", f32, "--cache-rows", "64", "--max-requests",
                                 "1"},
                                "serve_tables");
  ASSERT_GT(s.port, 0) << read_file(s.err_file);
  const Reply r = request(
      s.port, "POST", "/generate",
      nlohmann::json{{"prompt", kPrompt}, {"max_tokens", 6}, {"temperature", 0}}.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const Result g = run(base_args() + " --max-tokens 6 --temperature 0");
  EXPECT_EQ(r.body["text"].get<std::string>() + "\n", g.out);
  ASSERT_TRUE(r.body.contains("tables")) << r.body.dump();
  // The prefill's rows (4 a token: 2 orders x 2 heads) and one token's per decode step.
  EXPECT_GT(r.body["tables"]["requested"].get<int64_t>(), 4 * 6);
  EXPECT_GE(r.body["tables"]["stall_ms"].get<double>(), 0.0);
  EXPECT_EQ(wait_exit(s), 0) << read_file(s.err_file);
}

}  // namespace
}  // namespace engram
