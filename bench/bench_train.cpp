// CPU training throughput and model FLOP utilisation (MFU) of a config, against the GEMM and
// arithmetic peaks measured in the same run on the same threads.
//
//   build/bench/bench_train [--config configs/small_engram.toml] [--data data/prepared/gutenberg]
//                           [--steps 8] [--threads N]
//
// Runs the real trainer (engram::train::train: data loader with hashing, forward, backward,
// clipping, AdamW + sparse Adam) for 2 + steps steps into a temporary run directory and takes
// the median tokens/s of the steps after the first two (page faults, cold caches). Prints one
// JSON line:
//   {"bench":"train", "config", "threads", "tokens_per_s", "flops_per_token", "gflops",
//    "gemm_gflops" (the LM head's forward product, the model's largest, timed alone),
//    "peak_gflops" (register-only FMA loop), "mfu" (gflops / peak_gflops),
//    "pct_of_gemm" (gflops / gemm_gflops)}
// flops_per_token = 6 (P_act + C V) + 6 L T Hq hd: multiply-adds of every weight used by a
// token (P_act from count_params, without the embedding lookup) and the LM head, times 3 for
// forward + backward, plus causal attention (QK^T and AV over T/2 keys on average, x3).
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

#include "engram/model/config.h"
#include "engram/model/param_count.h"
#include "engram/tensor/gemm.h"
#include "engram/train/trainer.h"
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

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "configs/small_engram.toml", data = "data/prepared/gutenberg";
  int64_t steps = 8;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--data") data = v;
    else if (k == "--steps") steps = std::atoll(v.c_str());
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "bench_train: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    engram::set_default_threads(threads);
    const int nthreads = engram::default_threads();
    engram::model::ModelConfig config = engram::model::ModelConfig::from_file(config_path);
    config.train.data = data;
    config.train.eval_every = 0;
    config.train.eval_tokens = config.train.batch_size * config.train.seq_len;

    char tmpl[] = "/tmp/engram_bench_train.XXXXXX";
    const std::string dir = ::mkdtemp(tmpl);
    engram::train::TrainOptions o;
    o.out_dir = dir + "/run";
    o.steps = steps + 2;
    engram::train::train(config, o);
    std::vector<double> tps;
    std::ifstream in(o.out_dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j["step"].get<int64_t>() > 2) tps.push_back(j["tokens_per_s"].get<double>());
    }
    std::system(("rm -rf '" + dir + "'").c_str());
    std::sort(tps.begin(), tps.end());
    const double tokens_per_s = tps[tps.size() / 2];

    const auto& m = config.model;
    const engram::model::ParamCount pc = engram::model::count_params(config);
    const double flops_per_token =
        6.0 * static_cast<double>(pc.active + m.hidden_size * m.vocab_size) +
        6.0 * static_cast<double>(m.num_layers * config.train.seq_len * m.num_heads * m.head_dim);
    const double gflops = tokens_per_s * flops_per_token / 1e9;
    const double gemm = gemm_gflops(config.train.batch_size * config.train.seq_len, m.vocab_size,
                                    m.hidden_size);
    const std::string isa = engram::gemm_detail::blocked_isas().front();
    const double peak = engram_bench::measure_peak<float>(isa, nthreads);
    std::printf(
        "{\"bench\":\"train\",\"config\":\"%s\",\"threads\":%d,\"steps\":%lld,"
        "\"tokens_per_s\":%.1f,\"flops_per_token\":%.4g,\"gflops\":%.2f,\"gemm_gflops\":%.2f,"
        "\"peak_gflops\":%.2f,\"isa\":\"%s\",\"mfu\":%.4f,\"pct_of_gemm\":%.1f}\n",
        config_path.c_str(), nthreads, static_cast<long long>(steps), tokens_per_s,
        flops_per_token, gflops, gemm, peak, isa.c_str(), gflops / peak, 100.0 * gflops / gemm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
