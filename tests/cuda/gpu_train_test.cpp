// `train --device cuda` against the CPU trainer on a tiny MoE + Engram + mHC model and a
// synthetic corpus: the same losses and parameters to float rounding, with and without gradient
// accumulation; bit-identical resume on the GPU; GPU evaluation equal to the CPU's. Skipped
// without a GPU (the device check itself is tested either way).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/cuda/device.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/safetensors.h"
#include "engram/train/run.h"
#include "engram/train/trainer.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_corpus.h"
#include "test_paths.h"
#include "cuda/cuda_test_util.h"

namespace engram::train {
namespace {

// head_dim 64: the GPU attention kernels take 64 or 128.
const char* kConfig = R"([model]
vocab_size = 2005
hidden_size = 128
num_layers = 2
num_heads = 2
num_kv_heads = 1
hc_mult = 2
max_seq_len = 32
dense_intermediate_size = 96
first_dense_layers = 1

[moe]
num_experts = 4
num_shared_experts = 1
top_k = 2
expert_intermediate_size = 32

[engram]
engram_vocab_size = [101, 103]
max_ngram_size = 3
n_embed_per_ngram = 16
n_head_per_ngram = 2
layer_ids = [1]

[train]
batch_size = 2
seq_len = 16
steps = 6
lr = 3e-3
warmup_steps = 2
eval_every = 3
eval_tokens = 64
)";

std::string temp_dir() {
  static const std::string dir = test::make_temp_dir("engram_gpu_train_test");
  return dir;
}

std::string data_dir() {
  static const std::string dir = test::prepare_synthetic_corpus(temp_dir());
  return dir;
}

model::ModelConfig config() {
  model::ModelConfig c = model::ModelConfig::from_toml(kConfig, "gpu_train_test");
  c.train.data = data_dir();
  return c;
}

std::vector<nlohmann::json> metrics(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
  return out;
}

TrainResult run(const model::ModelConfig& c, const std::string& out, const std::string& device,
                bool resume = false, std::optional<int64_t> stop_at = {}) {
  TrainOptions o;
  o.out_dir = out;
  o.device = device;
  o.resume = resume;
  o.stop_at = stop_at;
  return train(c, o);
}

// How far two checkpoints (same names) are apart over their float32 tensors (parameters and
// optimizer moments).
struct CheckpointDifference {
  double max_abs = 0;        // largest |a - b|
  std::string max_tensor;    // where it is
  int64_t over = 0;          // elements with |a - b| > 1e-4
  int64_t total = 0;         // elements compared
  double relative_rms = 0;   // sqrt(sum (a - b)^2 / sum a^2)
};

CheckpointDifference checkpoint_difference(const std::string& a, const std::string& b) {
  const SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  EXPECT_EQ(fa.names(), fb.names());
  CheckpointDifference d;
  double diff2 = 0, norm2 = 0;
  for (const auto& name : fa.names()) {
    const Tensor ta = fa.get(name).contiguous(), tb = fb.get(name).contiguous();
    if (ta.dtype() != DType::kF32) continue;  // step counters and such: compared by the losses
    EXPECT_EQ(ta.nbytes(), tb.nbytes()) << name;
    if (ta.nbytes() != tb.nbytes()) continue;
    const float* x = ta.data<float>();
    const float* y = tb.data<float>();
    for (size_t i = 0; i < ta.nbytes() / sizeof(float); ++i) {
      // A NaN on one side only is an infinite difference; NaN on both, none.
      const bool nx = std::isnan(x[i]), ny = std::isnan(y[i]);
      const double e = nx != ny ? INFINITY : nx ? 0.0 : std::abs(static_cast<double>(x[i]) - y[i]);
      if (e > d.max_abs) d.max_abs = e, d.max_tensor = name;
      d.over += e > 1e-4 ? 1 : 0;
      ++d.total;
      diff2 += e * e;
      norm2 += static_cast<double>(x[i]) * x[i];
    }
  }
  d.relative_rms = norm2 > 0 ? std::sqrt(diff2 / norm2) : std::sqrt(diff2);
  return d;
}

// The first tensor (of any dtype: parameters, moments, step counts, last_step) whose bytes
// differ between two checkpoints, or "" when every tensor is byte for byte the same.
std::string first_different_tensor(const std::string& a, const std::string& b) {
  const SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  if (fa.names() != fb.names()) return "(tensor names)";
  for (const auto& name : fa.names()) {
    const Tensor ta = fa.get(name).contiguous(), tb = fb.get(name).contiguous();
    if (ta.dtype() != tb.dtype() || ta.nbytes() != tb.nbytes() ||
        std::memcmp(ta.raw(), tb.raw(), ta.nbytes()) != 0) {
      return name;
    }
  }
  return "";
}

void check_against_cpu(int64_t accum) {
  SKIP_WITHOUT_GPU();
  model::ModelConfig c = config();
  c.train.grad_accum = accum;
  const std::string tag = "accum" + std::to_string(accum);
  const std::string cpu = temp_dir() + "/cpu_" + tag, gpu = temp_dir() + "/gpu_" + tag;
  const TrainResult a = run(c, cpu, "cpu");
  const TrainResult b = run(c, gpu, "cuda");
  ASSERT_EQ(a.steps_done, 6);
  ASSERT_EQ(b.steps_done, 6);
  const auto ma = metrics(cpu), mb = metrics(gpu);
  ASSERT_EQ(ma.size(), 6u);
  ASSERT_EQ(mb.size(), 6u);
  std::string report = "[ steps ] accum " + std::to_string(accum) + ", |gpu - cpu| / cpu:";
  for (size_t i = 0; i < ma.size(); ++i) {
    char buf[96];
    const double la0 = ma[i]["train_loss"], lb0 = mb[i]["train_loss"];
    const double ga0 = ma[i]["grad_norm"], gb0 = mb[i]["grad_norm"];
    std::snprintf(buf, sizeof(buf), " %zu: loss %.1e norm %.1e", i + 1,
                  std::abs(lb0 - la0) / std::abs(la0), std::abs(gb0 - ga0) / std::abs(ga0));
    report += buf;
  }
  std::printf("%s\n", report.c_str());
  for (size_t i = 0; i < ma.size(); ++i) {
    const double la = ma[i]["train_loss"], lb = mb[i]["train_loss"];
    EXPECT_NEAR(lb, la, 1e-4 * std::max(1.0, std::abs(la))) << "train_loss, step " << i + 1;
    const double ga = ma[i]["grad_norm"], gb = mb[i]["grad_norm"];
    EXPECT_NEAR(gb, ga, 1e-2 * std::max(1.0, std::abs(ga))) << "grad_norm, step " << i + 1;
    if (ma[i].contains("val_loss")) {
      ASSERT_TRUE(mb[i].contains("val_loss")) << "step " << i + 1;
      const double va = ma[i]["val_loss"], vb = mb[i]["val_loss"];
      EXPECT_NEAR(vb, va, 1e-4 * std::max(1.0, std::abs(va))) << "val_loss, step " << i + 1;
    }
  }
  // Parameters and Adam moments after 6 steps. The arithmetic of each batch is held to float
  // rounding by TrainingBatchesGiveTheCpuGradients (every gradient <= 1e-4 on the batches these
  // runs read); here what is checked is the loop around it (accumulation, clipping, the
  // optimizers, the MoE bias updates), whose mistakes move every parameter. Over a trajectory
  // rounding differences grow: Adam scales each element's step by its own gradient size, so an
  // element whose gradient is near rounding level takes a step of up to lr (the tables: 5 lr) of
  // either sign. With grad_accum 2 on this corpus, a few hundred of 2.2 M elements (Engram table
  // rows) end up to ~4e-3 apart while the losses agree to 2e-5 (with grad_accum 1: none beyond
  // 1e-4). Hence a bound on the relative RMS of the differences (1e-3; measured 1.7e-4) and a
  // looser one per element (1e-2, under one table step), and the grad norms to 1e-2: a wrong
  // loop (a micro-batch lost, a wrong scale or learning rate) moves the norms by a factor or
  // every touched element by steps of lr. The line printed says where the largest difference is
  // and how many elements are off.
  const CheckpointDifference d =
      checkpoint_difference(cpu + "/checkpoint.safetensors", gpu + "/checkpoint.safetensors");
  std::printf("[ params ] accum %lld: max |gpu - cpu| %.1e (%s), %lld of %lld elements beyond "
              "1e-4, relative RMS %.1e\n",
              static_cast<long long>(accum), d.max_abs, d.max_tensor.c_str(),
              static_cast<long long>(d.over), static_cast<long long>(d.total), d.relative_rms);
  EXPECT_LT(d.relative_rms, 1e-3);
  EXPECT_LT(d.max_abs, 1e-2) << d.max_tensor;
}

TEST(GpuTrain, MatchesCpuTraining) { check_against_cpu(1); }
TEST(GpuTrain, MatchesCpuTrainingWithAccumulation) { check_against_cpu(2); }

// The first 12 training batches (what 6 steps with grad_accum 2 read), each through the CPU and
// the GPU model from the same parameters (no update in between): the same loss and gradients to
// float rounding. This separates the per-batch arithmetic from the training trajectory that
// MatchesCpuTraining* compares.
TEST(GpuTrain, TrainingBatchesGiveTheCpuGradients) {
  SKIP_WITHOUT_GPU();
  const model::ModelConfig c = config();
  const TextContext text = make_text_context(c);
  const DataLoader loader =
      open_data_loader(c.train.data, "train.bin", c, text.hasher.get(), DataLoader::Mode::kRandom);
  model::Transformer<float> cpu(c, text.head_sizes, c.train.seed);
  model::GpuTransformer gpu(cpu);
  model::TransformerParams<float> grads;
  nn::SparseRowGrad<float> embed;
  std::vector<nn::SparseRowGrad<float>> tables;
  double worst = 0;
  std::string worst_at;
  auto compare = [&](const std::vector<float>& got, const std::vector<float>& want,
                     const std::string& what) {
    const double e = cuda::test_util::normalised_error(got, want);
    if (e > worst) worst = e, worst_at = what;
    EXPECT_LE(e, 1e-4) << what;
  };
  for (int64_t k = 0; k < 12; ++k) {
    const Batch b = loader.batch_at(k);
    const double lc = cpu.forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, b.hash_ids);
    cpu.backward();
    const double lg = gpu.forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, b.hash_ids);
    gpu.backward();
    EXPECT_NEAR(lg, lc, 1e-5 * std::max(1.0, std::abs(lc))) << "loss, batch " << k;
    gpu.download_grads(grads, embed, tables);
    const std::string at = "batch " + std::to_string(k) + ": ";
    auto got = grads.named();
    auto want = cpu.grads().named();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      compare(std::vector<float>(got[i].data, got[i].data + got[i].size),
              std::vector<float>(want[i].data, want[i].data + want[i].size), at + want[i].name);
    }
    EXPECT_EQ(embed.rows, cpu.embed_grad().rows) << at << "embedding rows";
    compare(embed.values, cpu.embed_grad().values, at + "embedding");
    ASSERT_EQ(tables.size(), cpu.engram_table_grads().size());
    for (size_t t = 0; t < tables.size(); ++t) {
      EXPECT_EQ(tables[t].rows, cpu.engram_table_grads()[t].rows) << at << "table rows";
      compare(tables[t].values, cpu.engram_table_grads()[t].values, at + "table");
    }
  }
  std::printf("[ batches ] 12 training batches: worst normalised gradient error %.1e (%s)\n",
              worst, worst_at.c_str());
}

TEST(GpuTrain, ResumeIsBitIdenticalOnTheGpu) {
  SKIP_WITHOUT_GPU();
  const model::ModelConfig c = config();
  const std::string whole = temp_dir() + "/gpu_whole", parts = temp_dir() + "/gpu_parts";
  run(c, whole, "cuda");
  EXPECT_EQ(run(c, parts, "cuda", false, 4).steps_done, 4);
  EXPECT_EQ(run(c, parts, "cuda", true).steps_done, 6);
  auto la = metrics(whole), lb = metrics(parts);
  ASSERT_EQ(la.size(), 6u);
  ASSERT_EQ(lb.size(), 6u);
  for (size_t i = 0; i < la.size(); ++i) {
    for (auto* j : {&la[i], &lb[i]}) {
      j->erase("elapsed_s");
      j->erase("tokens_per_s");
    }
    EXPECT_EQ(la[i], lb[i]) << "step " << i + 1;
  }
  EXPECT_EQ(first_different_tensor(whole + "/checkpoint.safetensors",
                                   parts + "/checkpoint.safetensors"),
            "");
}

TEST(GpuTrain, EvaluateOnTheGpuMatchesTheCpu) {
  SKIP_WITHOUT_GPU();
  const model::ModelConfig c = config();
  const std::string dir = temp_dir() + "/gpu_eval";
  run(c, dir, "cuda");
  LoadedModel m = load_model(dir);
  const std::vector<int32_t> bytes = token_byte_lengths(*m.text.tokenizer);
  DataLoader loader = open_data_loader(c.train.data, "val.bin", m.config, m.text.hasher.get(),
                                       DataLoader::Mode::kSequential);
  std::vector<double> wc, wg;
  const EvalResult rc = evaluate(*m.model, loader, 0, bytes, &wc);
  model::GpuTransformer gpu(*m.model);
  const EvalResult rg = evaluate(gpu, loader, 0, bytes, &wg);
  EXPECT_EQ(rg.tokens, rc.tokens);
  EXPECT_EQ(rg.bytes, rc.bytes);
  EXPECT_NEAR(rg.loss, rc.loss, 1e-5 * std::max(1.0, rc.loss));
  ASSERT_EQ(wg.size(), wc.size());
  for (size_t i = 0; i < wc.size(); ++i) EXPECT_NEAR(wg[i], wc[i], 1e-5 * std::max(1.0, wc[i]));
}

TEST(GpuTrain, DeviceNamesAreChecked) {
  EXPECT_NO_THROW(check_device("cpu"));
  EXPECT_THROW(check_device("gpu"), ConfigError);
  if (!cuda::compiled_with_cuda() || cuda::device_count() == 0) {
    EXPECT_THROW(check_device("cuda"), Error);
  } else {
    EXPECT_NO_THROW(check_device("cuda"));
  }
}

}  // namespace
}  // namespace engram::train
