// Training throughput and model FLOP utilisation (MFU) of a config: on the CPU against the GEMM
// and arithmetic peaks measured in the same run on the same threads, on the GPU against a
// datasheet peak.
//
//   build/bench/bench_train [--config configs/small_engram.toml] [--data data/prepared/gutenberg]
//                           [--steps 8] [--threads N] [--device cpu|cuda] [--math exact|tf32]
//                           [--peak-tflops P]
//
// Runs the real trainer (engram::train::train: data loader with hashing, forward, backward,
// clipping, AdamW + sparse Adam; with --device cuda forward and backward on the GPU
// (model::GpuTransformer) and whatever the trainer does there for the rest) for 2 + steps steps
// into a temporary run directory and takes the median tokens/s of the steps after the first two
// (page faults, cold caches, cuBLAS start-up). The data folder must be a prepared corpus
// (`engram prepare`; its manifest names the tokenizer, found relative to the working directory).
// Prints one JSON line:
//   cpu:  {"bench":"train", "device":"cpu", "config", "threads", "tokens_per_s",
//          "flops_per_token", "gflops", "gemm_gflops" (the LM head's forward product, the
//          model's largest, timed alone), "peak_gflops" (register-only FMA loop),
//          "mfu" (gflops / peak_gflops), "pct_of_gemm" (gflops / gemm_gflops), ...}
//   cuda: {"bench":"train", "device":"cuda", "gpu", "math" ("exact": FP32 GEMMs, "tf32": dense
//          GEMMs on TF32 tensor cores), "config", "tokens_per_s", "seconds_per_step",
//          "flops_per_token", "tflops", "peak_tflops", "mfu" (tflops / peak_tflops), ...}
// flops_per_token: model::train_flops_per_token (engram/model/param_count.h), the formula the
// PyTorch mirror's bench uses too (tools/torch_ref/model_ref.py). GPU peaks (--peak-tflops
// overrides): NVIDIA H200 SXM datasheet dense figures, 67 TFLOP/s FP32 (math exact) and 494
// TFLOP/s TF32 tensor core (989 with 2:4 sparsity, halved).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/cuda/device.h"
#include "engram/model/config.h"
#include "engram/model/param_count.h"
#include "engram/tensor/gemm.h"
#include "engram/train/trainer.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "peak.h"
#include "tensor/gemm_problem.h"

namespace {

using Clock = std::chrono::steady_clock;

double gemm_gflops(int64_t m, int64_t n, int64_t k) {
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k)),
      c(static_cast<size_t>(m * n));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  for (auto& x : a) x = d(rng);
  for (auto& x : b) x = d(rng);
  double best = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = Clock::now();
    engram::gemm<float>(engram::Trans::kNo, engram::Trans::kYes, m, n, k, 1.0f, a.data(), k,
                        b.data(), k, 0.0f, c.data(), n);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / best / 1e9;
}

std::string json_string(const std::string& s) { return nlohmann::json(s).dump(); }

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "configs/small_engram.toml", data = "data/prepared/gutenberg";
  std::string device = "cpu", math = "exact";
  int64_t steps = 8;
  int threads = 0;
  double peak_tflops = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--data") data = v;
    else if (k == "--steps") steps = std::atoll(v.c_str());
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--device") device = v;
    else if (k == "--math") math = v;
    else if (k == "--peak-tflops") peak_tflops = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "bench_train: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0) {
    std::fprintf(stderr, "bench_train: option %s has no value\n", argv[argc - 1]);
    return 2;
  }
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "bench_train: --device %s (expected cpu or cuda)\n", device.c_str());
    return 2;
  }
  if (math != "exact" && math != "tf32") {
    std::fprintf(stderr, "bench_train: --math %s (expected exact or tf32)\n", math.c_str());
    return 2;
  }
  if (device == "cpu" && math != "exact") {
    std::fprintf(stderr, "bench_train: --math %s needs --device cuda\n", math.c_str());
    return 2;
  }
  if (steps < 1) {
    std::fprintf(stderr, "bench_train: --steps must be >= 1\n");
    return 2;
  }
  const bool gpu = device == "cuda";
  try {
    engram::set_default_threads(threads);
    const int nthreads = engram::default_threads();
    engram::model::ModelConfig config = engram::model::ModelConfig::from_file(config_path);
    config.train.data = data;
    config.train.eval_every = 0;
    config.train.eval_tokens = config.train.batch_size * config.train.seq_len;

    char tmpl[] = "/tmp/engram_bench_train.XXXXXX";
    const char* made = ::mkdtemp(tmpl);
    if (made == nullptr) throw engram::Error("bench_train: mkdtemp failed under /tmp");
    const std::string dir = made;
    engram::train::TrainOptions o;
    o.out_dir = dir + "/run";
    o.steps = steps + 2;
    o.device = device;
    if (math == "tf32") o.gpu.math = engram::cuda::Math::kTf32;
    std::vector<double> tps;
    try {
      engram::train::train(config, o);
      std::ifstream in(o.out_dir + "/metrics.jsonl");
      for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line);
        if (j["step"].get<int64_t>() > 2) tps.push_back(j["tokens_per_s"].get<double>());
      }
    } catch (...) {
      std::system(("rm -rf '" + dir + "'").c_str());
      throw;
    }
    std::system(("rm -rf '" + dir + "'").c_str());
    if (tps.empty()) throw engram::Error("bench_train: no timed step in the metrics log");
    std::sort(tps.begin(), tps.end());
    const double tokens_per_s = tps[tps.size() / 2];

    const auto& m = config.model;
    const engram::model::ParamCount pc = engram::model::count_params(config);
    const engram::model::TrainFlops fl =
        engram::model::train_flops_per_token(config, config.train.seq_len);
    const double flops_per_token = fl.per_token;
    const int64_t tokens_per_step = config.train.batch_size * config.train.seq_len;
    const int64_t params = pc.total + pc.embedding + pc.lm_head;
    if (gpu) {
      const bool default_peak = peak_tflops <= 0;
      if (default_peak) peak_tflops = math == "tf32" ? 494.0 : 67.0;
      const double tflops = tokens_per_s * flops_per_token / 1e12;
      std::printf(
          "{\"bench\":\"train\",\"device\":\"cuda\",\"gpu\":%s,\"math\":\"%s\","
          "\"config\":\"%s\",\"threads\":%d,\"steps\":%lld,\"tokens_per_step\":%lld,"
          "\"tokens_per_s\":%.1f,\"seconds_per_step\":%.4f,\"params\":%lld,"
          "\"params_total\":%lld,\"params_active\":%lld,\"flops_weights\":%lld,"
          "\"flops_per_token\":%.0f,\"flops_formula\":%s,\"tflops\":%.2f,"
          "\"peak_tflops\":%.1f,\"peak_source\":%s,\"mfu\":%.4f,"
          "\"step\":\"engram::train::train (data loader + hashing, GPU forward/backward, "
          "clip, AdamW + sparse Adam)\"}\n",
          json_string(engram::cuda::device_name(0)).c_str(), math.c_str(), config_path.c_str(),
          nthreads, static_cast<long long>(steps), static_cast<long long>(tokens_per_step),
          tokens_per_s, static_cast<double>(tokens_per_step) / tokens_per_s,
          static_cast<long long>(params), static_cast<long long>(pc.total),
          static_cast<long long>(pc.active), static_cast<long long>(fl.weights_active),
          flops_per_token, json_string(engram::model::kTrainFlopsFormula).c_str(), tflops,
          peak_tflops,
          json_string(default_peak ? (math == "tf32" ? "H200 SXM datasheet TF32 dense"
                                                     : "H200 SXM datasheet FP32")
                                   : "--peak-tflops")
              .c_str(),
          tflops / peak_tflops);
      return 0;
    }
    const double gflops = tokens_per_s * flops_per_token / 1e9;
    const double gemm = gemm_gflops(tokens_per_step, m.vocab_size, m.hidden_size);
    const std::string isa = engram::gemm_detail::blocked_isas().front();
    const double peak = engram_bench::measure_peak<float>(isa, nthreads);
    std::printf(
        "{\"bench\":\"train\",\"device\":\"cpu\",\"config\":\"%s\",\"threads\":%d,"
        "\"steps\":%lld,\"tokens_per_step\":%lld,\"tokens_per_s\":%.1f,"
        "\"seconds_per_step\":%.4f,\"params\":%lld,\"params_total\":%lld,"
        "\"params_active\":%lld,\"flops_weights\":%lld,\"flops_per_token\":%.0f,"
        "\"flops_formula\":%s,\"gflops\":%.2f,\"gemm_gflops\":%.2f,\"peak_gflops\":%.2f,"
        "\"isa\":\"%s\",\"mfu\":%.4f,\"pct_of_gemm\":%.1f}\n",
        config_path.c_str(), nthreads, static_cast<long long>(steps),
        static_cast<long long>(tokens_per_step), tokens_per_s,
        static_cast<double>(tokens_per_step) / tokens_per_s, static_cast<long long>(params), static_cast<long long>(pc.total),
        static_cast<long long>(pc.active), static_cast<long long>(fl.weights_active),
        flops_per_token, json_string(engram::model::kTrainFlopsFormula).c_str(), gflops, gemm,
        peak, isa.c_str(), gflops / peak, 100.0 * gflops / gemm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
