// Decode throughput on the GPU (infer::GpuDecoder): B sequences decoded together, greedy.
//
//   build/bench/bench_decode --config configs/gpu_120m.toml [--batch 1,64] [--prompt 128]
//                            [--steps 128] [--math exact|tf32] [--table gpu|host] [--seed 1]
//                            [--profile] [--no-graphs]
//
// The model is the config's with a seeded random init (model::Transformer<float>'s), its n-gram
// hasher over a synthetic compression (id -> id mod 3V/4: real hashing work, not real text). Per
// batch size B: every sequence gets a prompt of P random tokens (pushed in steps of up to 128
// rows, not timed), then `steps` decode steps are timed, each appending one token to every
// sequence: the host hashing, the uploads, the forward of B rows with the KV caches, the LM head
// on B rows and the greedy argmax on the device, whose B ids are read back and fed to the next
// step. --table host: the Engram tables in mapped pinned host memory (the zero-copy tier, read
// over PCIe) instead of GPU memory.
// Prints one JSON line per batch size:
//   {"bench":"decode", "impl":"engram", "gpu", "config", "math", "table", "batch", "prompt",
//    "steps", "tokens_per_s" (batch * steps / the timed seconds), "ms_per_step" (median),
//    "ms_per_step_mean"}
// Decode steps replay CUDA graphs (GpuDecoderOptions::cuda_graphs) unless --no-graphs.
// --profile: each timed step also records CUDA events between its phases
// (GpuDecoder::set_profiling) and the line gets "phases_ms": the mean device milliseconds per
// step of each phase name (summed over layers), plus "device_ms" (their sum) and "host_ms" (the
// mean wall time per step minus device_ms: launch overhead, host work and waits).
// The PyTorch mirror's counterpart: tools/torch_ref/decode_ref.py (tools/bench/decode_gpu.sh runs
// both).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/infer/gpu_decoder.h"
#include "engram/model/config.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/transformer.h"
#include "engram/util/error.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
  return out;
}

int usage(const char* why) {
  std::fprintf(stderr,
               "bench_decode: %s\nusage: bench_decode --config FILE.toml [--batch 1,64] "
               "[--prompt 128] [--steps 128] [--math exact|tf32] [--table gpu|host] [--seed 1] "
               "[--profile] [--no-graphs]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path, math = "exact", table = "gpu", batches = "1,64";
  int64_t prompt = 128, steps = 128;
  uint64_t seed = 1;
  bool profile = false, graphs = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--profile") {
      profile = true;
      continue;
    }
    if (a == "--no-graphs") {
      graphs = false;
      continue;
    }
    if (i + 1 >= argc) return usage(("missing value after " + a).c_str());
    const std::string v = argv[++i];
    if (a == "--config") {
      config_path = v;
    } else if (a == "--batch") {
      batches = v;
    } else if (a == "--prompt") {
      prompt = std::stoll(v);
    } else if (a == "--steps") {
      steps = std::stoll(v);
    } else if (a == "--math") {
      math = v;
    } else if (a == "--table") {
      table = v;
    } else if (a == "--seed") {
      seed = std::stoull(v);
    } else {
      return usage(("unknown option " + a).c_str());
    }
  }
  if (config_path.empty()) return usage("--config is required");
  if (math != "exact" && math != "tf32") return usage("--math must be exact or tf32");
  if (table != "gpu" && table != "host") return usage("--table must be gpu or host");
  if (prompt < 1 || steps < 1) return usage("--prompt and --steps must be >= 1");
  try {
    if (engram::cuda::device_count() == 0) {
      std::fprintf(stderr, "bench_decode: no CUDA device\n");
      return 1;
    }
    const engram::model::ModelConfig config = engram::model::ModelConfig::from_file(config_path);
    const int64_t V = config.model.vocab_size;
    if (prompt + steps > config.model.max_seq_len) {
      std::fprintf(stderr, "bench_decode: prompt + steps = %lld exceeds max_seq_len %lld\n",
                   static_cast<long long>(prompt + steps),
                   static_cast<long long>(config.model.max_seq_len));
      return 2;
    }
    std::unique_ptr<engram::hash::NgramHasher> hasher;
    std::vector<std::vector<int64_t>> head_sizes;
    if (config.engram) {
      hasher = std::make_unique<engram::hash::NgramHasher>(
          engram::hash::NgramHasher::synthetic(config.engram_hash_config(), V));
      head_sizes = engram::model::engram_head_sizes(*hasher);
    }
    engram::model::Transformer<float> cpu(config, head_sizes, seed);
    engram::model::GpuTransformerOptions go;
    go.gradients = false;
    if (math == "tf32") go.math = engram::cuda::Math::kTf32;
    engram::model::GpuTransformer gpu(cpu, go);

    // --table host: every Engram table copied into mapped pinned host memory.
    std::vector<engram::cuda::MappedHostBuffer<float>> host_tables;
    std::vector<engram::cuda::DeviceTable> tables;
    if (table == "host" && config.engram) {
      for (const int layer : config.engram->hash.layer_ids) {
        const auto& L = cpu.params().layers[static_cast<size_t>(layer)];
        host_tables.emplace_back(L.engram_table.size());
        std::memcpy(host_tables.back().host().data(), L.engram_table.data(),
                    L.engram_table.size() * sizeof(float));
        tables.push_back({host_tables.back().device(), engram::DType::kF32,
                          L.engram->table_rows(), L.engram->config().row_width()});
      }
    }

    std::mt19937_64 rng(seed + 1);
    for (const int64_t B : parse_list(batches)) {
      if (B < 1) return usage("--batch sizes must be >= 1");
      engram::infer::GpuDecoderOptions o;
      o.max_sequences = B;
      o.max_len = prompt + steps;
      o.max_rows_per_sequence = std::min<int64_t>(prompt, 128);
      o.max_step_rows = std::max(B, o.max_rows_per_sequence);
      o.cuda_graphs = graphs;
      engram::infer::GpuDecoder dec(gpu, hasher.get(), o);
      if (!tables.empty()) dec.set_tables(tables);
      dec.set_profiling(profile);
      std::vector<std::pair<std::string, double>> phases;  // summed over the timed steps
      std::vector<int64_t> next(static_cast<size_t>(B));
      for (int64_t s = 0; s < B; ++s) {
        std::vector<int64_t> p(static_cast<size_t>(prompt));
        for (auto& id : p) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(V));
        dec.push(s, p);
        next[static_cast<size_t>(s)] = dec.greedy().front();
      }
      std::vector<int64_t> seqs(static_cast<size_t>(B));
      for (int64_t s = 0; s < B; ++s) seqs[static_cast<size_t>(s)] = s;
      std::vector<double> ms;
      engram::cuda::device_synchronize();
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < steps; ++i) {
        const auto a = Clock::now();
        dec.step(seqs, next);
        next = dec.greedy();
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
        for (const auto& [name, t] : dec.phase_times()) {
          auto it = std::find_if(phases.begin(), phases.end(),
                                 [&](const auto& p) { return p.first == name; });
          if (it == phases.end()) it = phases.insert(phases.end(), {name, 0.0});
          it->second += t;
        }
      }
      const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      std::vector<double> sorted = ms;
      std::sort(sorted.begin(), sorted.end());
      double mean = 0;
      for (double m : ms) mean += m;
      mean /= static_cast<double>(ms.size());
      std::string profile_json;
      if (profile) {
        double device = 0;
        profile_json = ",\"phases_ms\":{";
        for (size_t p = 0; p < phases.size(); ++p) {
          const double per_step = phases[p].second / static_cast<double>(steps);
          device += per_step;
          profile_json += (p ? "," : "") + json_string(phases[p].first) + ":" +
                          std::to_string(per_step);
        }
        profile_json += "},\"device_ms\":" + std::to_string(device) +
                        ",\"host_ms\":" + std::to_string(mean - device);
      }
      std::printf(
          "{\"bench\":\"decode\",\"impl\":\"engram\",\"gpu\":%s,\"config\":%s,\"math\":\"%s\","
          "\"table\":\"%s\",\"graphs\":%s,\"batch\":%lld,\"prompt\":%lld,\"steps\":%lld,\"tokens_per_s\":%.1f,"
          "\"ms_per_step\":%.4f,\"ms_per_step_mean\":%.4f%s}\n",
          json_string(engram::cuda::device_name(0)).c_str(), json_string(config_path).c_str(),
          math.c_str(), table.c_str(), graphs && !profile ? "true" : "false",
          static_cast<long long>(B), static_cast<long long>(prompt),
          static_cast<long long>(steps), static_cast<double>(B * steps) / seconds,
          sorted[sorted.size() / 2], mean, profile_json.c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: %s\n", e.what());
    return 1;
  }
  return 0;
}
