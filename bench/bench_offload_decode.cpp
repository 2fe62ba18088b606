// The paper's offload experiment at our scale: a dense backbone with one Engram layer whose table
// lives in GPU memory, in pinned host memory (read by the GPU over PCIe, zero-copy) or in an
// .engt file on disk (the file tier), decoding many sequences of random lengths; tokens/s per
// tier.
//
//   build/bench/bench_offload_decode --config configs/offload_4b.toml [--sequences 512]
//       [--min-len 100] [--max-len 1024] [--batch 64] [--tiers gpu,host,host-sync] [--math tf32]
//       [--seed 1] [--threads N] [--engt FILE.engt [--keep-engt]] [--cache-gib 4]
//       [--policy frequency|lru] [--hot-rows N]
//
// The model's parameters are random (uniform, std 0.02; norms 1), filled on the host in
// parallel, uploaded once (model::GpuTransformer, inference only) and dropped from the host.
// The Engram table (every layer's, bf16 rows) is filled with random values in pinned, mapped
// host memory; the gpu tier copies it to GPU memory. The rows of a step are prefetched
// (GpuDecoderOptions::prefetch_rows: gathered on a second stream from the step's start, while the
// layers before the Engram layer run), except in tier host-sync (host memory, gathered inside the
// Engram layer). Tiers file and file-warm (they need --engt): the table is first written to FILE
// (bf16 rows; removed at the end unless --keep-engt) and read through a memory::TieredRowStore
// (O_DIRECT reads with io_uring, a DRAM cache of --cache-gib GiB of rows, --policy) into the
// decoder's pinned staging at each step (infer::GpuDecoder::set_table_stores: gathered on the
// host while the layers before the Engram layer run on the GPU); file starts with an empty
// cache (cold), file-warm runs the same workload again through the same store (its cache as the
// file run left it). Tier host-hot: the host tier with a cache of --hot-rows rows in GPU memory in
// front of it (GpuDecoderOptions::hot_rows, --policy), empty at the start. Hashing: the model's
// n-gram hasher over a
// synthetic compression (id -> id mod 3V/4), on the host, timed. Per tier the same workload:
// `sequences` sequences with lengths uniform in [min-len, max-len] (seeded), decoded by an
// infer::GpuDecoder with `batch` slots: every step feeds one token to every active sequence
// (its first token random, then its greedy continuation), a finished sequence's slot takes the
// next one (continuous batching); CUDA graphs replay the steps. tokens/s = the tokens of all
// sequences / the wall time of the whole decode.
// Prints one JSON line per tier:
//   {"bench":"offload_decode", "tier", "gpu", "config", "backbone_params", "table_params",
//    "table_gib", "sequences", "tokens", "steps", "seconds", "tokens_per_s", "ms_per_step",
//    "vs_gpu" (tokens_per_s / the gpu tier's - 1, when both ran); the file tiers add
//    "cache_rows", "hit_rate", "unique_rows" and "rows_read" (each step's distinct rows and
//    those of them read from the file, summed over the steps), "bytes_read", "io_s" and
//    "gather_s" (the store's, over the run); host-hot adds "hot_rows", "hot_hit_rate" (distinct
//    rows a step found in the cache, over all steps), "hot_bypassed" (the Engram layer's: the
//    config has one)}
// and progress lines on stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/infer/gpu_decoder.h"
#include "engram/memory/engt_file.h"
#include "engram/memory/tiered_store.h"
#include "engram/model/config.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/transformer.h"
#include "engram/tensor/dtype.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// splitmix64: a fast, seedable generator for filling billions of values in parallel.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [-a, a) from the hash of (seed, i).
float uniform(uint64_t seed, uint64_t i, float a) {
  const uint64_t r = mix(seed ^ mix(i));
  return (static_cast<float>(r >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * a;
}

template <class F>
void fill_parallel(size_t n, F&& f) {
  engram::parallel_for(n, 0, size_t{1} << 20, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) f(i);
  });
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(item);
  return out;
}

int usage(const char* why) {
  std::fprintf(stderr,
               "bench_offload_decode: %s\nusage: bench_offload_decode --config FILE.toml "
               "[--sequences 512] [--min-len 100] [--max-len 1024] [--batch 64] "
               "[--tiers gpu,host,host-sync,file,file-warm] [--math exact|tf32] [--seed 1] "
               "[--threads N] [--engt FILE.engt [--keep-engt]] [--cache-gib 4] "
               "[--policy frequency|lru] [--hot-rows N]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path, tiers = "gpu,host,host-sync", math = "tf32", engt_path,
      policy = "frequency";
  int64_t sequences = 512, min_len = 100, max_len = 1024, batch = 64, threads = 0;
  double cache_gib = 4.0;
  int64_t hot_rows = 1 << 20;
  bool keep_engt = false;
  uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--keep-engt") {
      keep_engt = true;
      continue;
    }
    if (i + 1 >= argc) return usage(("missing value after " + a).c_str());
    const std::string v = argv[++i];
    if (a == "--config") {
      config_path = v;
    } else if (a == "--sequences") {
      sequences = std::stoll(v);
    } else if (a == "--min-len") {
      min_len = std::stoll(v);
    } else if (a == "--max-len") {
      max_len = std::stoll(v);
    } else if (a == "--batch") {
      batch = std::stoll(v);
    } else if (a == "--tiers") {
      tiers = v;
    } else if (a == "--math") {
      math = v;
    } else if (a == "--seed") {
      seed = std::stoull(v);
    } else if (a == "--threads") {
      threads = std::stoll(v);
    } else if (a == "--engt") {
      engt_path = v;
    } else if (a == "--cache-gib") {
      cache_gib = std::stod(v);
    } else if (a == "--policy") {
      policy = v;
    } else if (a == "--hot-rows") {
      hot_rows = std::stoll(v);
    } else {
      return usage(("unknown option " + a).c_str());
    }
  }
  if (config_path.empty()) return usage("--config is required");
  if (sequences < 1 || batch < 1 || min_len < 1 || max_len < min_len)
    return usage("--sequences, --batch >= 1 and 1 <= --min-len <= --max-len");
  if (math != "exact" && math != "tf32") return usage("--math must be exact or tf32");
  if (policy != "frequency" && policy != "lru") return usage("--policy must be frequency or lru");
  if (!(cache_gib >= 0)) return usage("--cache-gib must be >= 0");
  if (hot_rows < 1 && tiers.find("host-hot") != std::string::npos)
    return usage("--hot-rows must be >= 1");
  bool file_tiers = false, file_seen = false;
  for (const std::string& t : split(tiers)) {
    if (t != "gpu" && t != "host" && t != "host-sync" && t != "host-hot" && t != "file" &&
        t != "file-warm")
      return usage("--tiers: gpu, host, host-sync, host-hot, file and/or file-warm");
    if (t == "file-warm" && !file_seen) return usage("--tiers: file-warm needs a file run before it");
    file_seen = file_seen || t == "file";
    file_tiers = file_tiers || t == "file";
  }
  if (file_tiers && engt_path.empty()) return usage("the file tiers need --engt FILE.engt");
  try {
    engram::set_default_threads(static_cast<int>(threads));
    if (engram::cuda::device_count() == 0) {
      std::fprintf(stderr, "bench_offload_decode: no CUDA device\n");
      return 1;
    }
    const engram::model::ModelConfig config = engram::model::ModelConfig::from_file(config_path);
    if (!config.engram || config.engram->hash.layer_ids.size() != 1)
      return usage("the config needs an [engram] section with one layer");
    if (max_len > config.model.max_seq_len) return usage("--max-len exceeds model.max_seq_len");
    const int64_t V = config.model.vocab_size;
    const auto hasher = engram::hash::NgramHasher::synthetic(config.engram_hash_config(), V);
    const auto head_sizes = engram::model::engram_head_sizes(hasher);

    // The backbone: random values, uploaded, then dropped from the host.
    auto t0 = Clock::now();
    auto cpu = std::make_unique<engram::model::Transformer<float>>(
        config, head_sizes, engram::model::Transformer<float>::Uninitialized{}, false);
    int64_t backbone = 0, embed_head = 0;
    uint64_t tensor_seed = seed;
    for (auto& p : cpu->params().named()) {
      const bool norm = p.shape.size() == 1 && p.name.find("norm") != std::string::npos;
      ++tensor_seed;
      float* d = p.data;
      const uint64_t ts = tensor_seed;
      fill_parallel(static_cast<size_t>(p.size), [&](size_t i) {
        d[i] = norm ? 1.0f : uniform(ts, i, 0.0346f);  // std 0.02
      });
      (p.name == "embed" || p.name == "head" ? embed_head : backbone) += p.size;
    }
    std::fprintf(stderr, "[offload] backbone %.3f B parameters (+ %.3f B embedding and head), "
                 "filled in %.1f s\n", static_cast<double>(backbone) / 1e9,
                 static_cast<double>(embed_head) / 1e9, since(t0));
    t0 = Clock::now();
    engram::model::GpuTransformerOptions go;
    go.gradients = false;
    go.math = math == "tf32" ? engram::cuda::Math::kTf32 : engram::cuda::Math::kExact;
    engram::model::GpuTransformer gpu(*cpu, go);
    const int layer = config.engram->hash.layer_ids[0];
    const int64_t rows = cpu->params().layers[static_cast<size_t>(layer)].engram->table_rows();
    const int64_t width =
        cpu->params().layers[static_cast<size_t>(layer)].engram->config().row_width();
    // The file tier's DRAM cache: --cache-gib of bf16 rows.
    const auto cache_rows = static_cast<int64_t>(cache_gib * 1024.0 * 1024.0 * 1024.0 /
                                                 static_cast<double>(width * 2));
    cpu.reset();
    std::fprintf(stderr, "[offload] uploaded in %.1f s\n", since(t0));

    // The table: bf16 rows in pinned, mapped host memory.
    t0 = Clock::now();
    const size_t values = static_cast<size_t>(rows) * static_cast<size_t>(width);
    engram::cuda::MappedHostBuffer<engram::bf16> host_table(values);
    engram::bf16* ht = host_table.host().data();
    const uint64_t table_seed = seed * 7919 + 17;
    fill_parallel(values, [&](size_t i) {
      ht[i] = engram::float_to_bf16(uniform(table_seed, i, 0.0346f));
    });
    const double table_gib = static_cast<double>(values) * 2.0 / (1024.0 * 1024.0 * 1024.0);
    std::fprintf(stderr, "[offload] table %lld rows x %lld (%.2f B parameters, %.1f GiB bf16) "
                 "pinned and filled in %.1f s\n", static_cast<long long>(rows),
                 static_cast<long long>(width), static_cast<double>(values) / 1e9, table_gib,
                 since(t0));

    // The file tier's table: the same rows written to an .engt file.
    std::unique_ptr<engram::memory::TieredRowStore> store;
    if (file_tiers) {
      t0 = Clock::now();
      engram::memory::write_engt(
          engt_path, engram::memory::RowFormat::kBF16, rows, width,
          [&](int64_t first_row, int64_t count, float* out) {
            const engram::bf16* src = ht + first_row * width;
            fill_parallel(static_cast<size_t>(count * width),
                          [&](size_t i) { out[i] = engram::bf16_to_float(src[i]); });
          },
          "bench_offload_decode");
      std::fprintf(stderr, "[offload] table written to %s in %.1f s\n", engt_path.c_str(),
                   since(t0));
    }
    struct RemoveFile {
      const std::string& path;
      bool on;
      ~RemoveFile() {
        if (on) std::remove(path.c_str());
      }
    } remove_engt{engt_path, file_tiers && !keep_engt};

    // The workload, the same for every tier.
    std::mt19937_64 rng(seed + 5);
    std::vector<int64_t> lengths(static_cast<size_t>(sequences)), first(lengths.size());
    int64_t total_tokens = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      lengths[s] = min_len + static_cast<int64_t>(rng() % static_cast<uint64_t>(max_len - min_len + 1));
      first[s] = static_cast<int64_t>(rng() % static_cast<uint64_t>(V));
      total_tokens += lengths[s];
    }

    double gpu_tps = 0;
    for (const std::string& tier : split(tiers)) {
      std::unique_ptr<engram::cuda::DeviceBuffer<engram::bf16>> device_table;
      engram::cuda::DeviceTable table{host_table.device(), engram::DType::kBF16, rows, width};
      if (tier == "gpu") {
        t0 = Clock::now();
        device_table = std::make_unique<engram::cuda::DeviceBuffer<engram::bf16>>(values);
        engram::cuda::copy_to_device(device_table->data(), ht, values * sizeof(engram::bf16));
        table.data = device_table->data();
        std::fprintf(stderr, "[offload] gpu tier: table copied to GPU memory in %.1f s\n",
                     since(t0));
      }
      engram::infer::GpuDecoderOptions o;
      o.max_sequences = batch;
      o.max_len = max_len;
      o.max_step_rows = batch;
      o.max_rows_per_sequence = 1;
      o.prefetch_rows = tier != "host-sync";
      if (tier == "host-hot") {
        o.hot_rows = hot_rows;
        o.hot_policy = policy == "lru" ? engram::memory::CachePolicy::kLru
                                       : engram::memory::CachePolicy::kFrequency;
      }
      engram::infer::GpuDecoder dec(gpu, &hasher, o);
      const bool file = tier == "file" || tier == "file-warm";
      if (tier == "file") {
        engram::memory::TieredStoreOptions so;
        so.cache_rows = cache_rows;
        so.policy = policy == "lru" ? engram::memory::CachePolicy::kLru
                                    : engram::memory::CachePolicy::kFrequency;
        store.reset();  // (a second file run starts cold again)
        store = std::make_unique<engram::memory::TieredRowStore>(engt_path, so);
      }
      if (file) {
        store->reset_stats();
        dec.set_table_stores({store.get()});
      } else {
        dec.set_tables({table});
      }

      // Slots: the sequence each decodes (-1: idle), its next token.
      std::vector<int64_t> slot_seq(static_cast<size_t>(batch), -1), next(static_cast<size_t>(batch));
      size_t queued = 0;
      auto refill = [&](size_t slot) {
        if (queued < lengths.size()) {
          dec.reset(static_cast<int64_t>(slot));
          slot_seq[slot] = static_cast<int64_t>(queued);
          next[slot] = first[queued];
          ++queued;
        } else {
          slot_seq[slot] = -1;
        }
      };
      for (size_t slot = 0; slot < slot_seq.size(); ++slot) refill(slot);
      std::vector<int64_t> seqs, toks;
      int64_t steps = 0, done_tokens = 0;
      t0 = Clock::now();
      double last_report = 0;
      while (true) {
        seqs.clear();
        toks.clear();
        for (size_t slot = 0; slot < slot_seq.size(); ++slot) {
          if (slot_seq[slot] < 0) continue;
          seqs.push_back(static_cast<int64_t>(slot));
          toks.push_back(next[slot]);
        }
        if (seqs.empty()) break;
        dec.step(seqs, toks);
        const std::vector<int64_t> out = dec.greedy();
        ++steps;
        done_tokens += static_cast<int64_t>(seqs.size());
        for (size_t i = 0; i < seqs.size(); ++i) {
          const auto slot = static_cast<size_t>(seqs[i]);
          next[slot] = out[i];
          if (dec.position(seqs[i]) == lengths[static_cast<size_t>(slot_seq[slot])]) refill(slot);
        }
        const double t = since(t0);
        if (t - last_report > 10) {
          last_report = t;
          std::fprintf(stderr, "[offload] %s: %lld of %lld tokens, %.0f tokens/s\n", tier.c_str(),
                       static_cast<long long>(done_tokens), static_cast<long long>(total_tokens),
                       static_cast<double>(done_tokens) / t);
        }
      }
      const double seconds = since(t0);
      const double tps = static_cast<double>(done_tokens) / seconds;
      if (tier == "gpu") gpu_tps = tps;
      std::printf(
          "{\"bench\":\"offload_decode\",\"tier\":\"%s\",\"gpu\":\"%s\",\"config\":\"%s\","
          "\"math\":\"%s\",\"backbone_params\":%lld,\"embed_head_params\":%lld,"
          "\"table_params\":%lld,\"table_gib\":%.2f,\"batch\":%lld,\"sequences\":%lld,"
          "\"min_len\":%lld,\"max_len\":%lld,\"tokens\":%lld,\"steps\":%lld,\"seconds\":%.3f,"
          "\"tokens_per_s\":%.1f,\"ms_per_step\":%.4f",
          tier.c_str(), engram::cuda::device_name(0).c_str(), config_path.c_str(), math.c_str(),
          static_cast<long long>(backbone), static_cast<long long>(embed_head),
          static_cast<long long>(values), table_gib, static_cast<long long>(batch),
          static_cast<long long>(sequences), static_cast<long long>(min_len),
          static_cast<long long>(max_len), static_cast<long long>(done_tokens),
          static_cast<long long>(steps), seconds, tps, 1e3 * seconds / static_cast<double>(steps));
      if (tier != "gpu" && gpu_tps > 0) std::printf(",\"vs_gpu\":%.5f", tps / gpu_tps - 1.0);
      if (tier == "host-hot") {
        const engram::memory::CacheStats hs = dec.hot_row_stats().at(0);
        std::printf(",\"policy\":\"%s\",\"hot_rows\":%lld,\"hot_hit_rate\":%.4f,"
                    "\"hot_bypassed\":%lld",
                    policy.c_str(), static_cast<long long>(hot_rows),
                    hs.lookups ? static_cast<double>(hs.hits) / static_cast<double>(hs.lookups) : 0.0,
                    static_cast<long long>(hs.bypassed));
      }
      if (file) {
        const engram::memory::TierStats st = store->total_stats();
        std::printf(",\"policy\":\"%s\",\"cache_gib\":%.2f,\"cache_rows\":%lld,"
                    "\"hit_rate\":%.4f,\"unique_rows\":%lld,\"rows_read\":%lld,"
                    "\"bytes_read\":%lld,\"io_s\":%.3f,\"gather_s\":%.3f",
                    policy.c_str(), cache_gib,
                    static_cast<long long>(cache_rows),
                    st.hit_rate(), static_cast<long long>(st.unique),
                    static_cast<long long>(st.misses), static_cast<long long>(st.bytes_read),
                    st.io_seconds, st.seconds);
      }
      std::printf("}\n");
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_offload_decode: %s\n", e.what());
    return 1;
  }
  return 0;
}
