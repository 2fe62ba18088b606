// engram generate: continues a prompt with a checkpoint (KV-cached decoding, infer::Decoder) and
// prints the prompt and its continuation; one line of figures on stderr. With --engram-tables,
// the Engram tables are read from .engt files (memory tier: host or file) instead of the
// checkpoint, whose tables are then left on disk (infer::load_model without tables); the file
// tier prefetches every step's rows (Decoder::set_prefetched_table_stores), with per-step table
// statistics (--table-stats FILE, JSON lines) and a summary line. --device cuda decodes on the
// GPU (infer::GpuDecoder over an inference-only model::GpuTransformer, float32, the checkpoint's
// tables in GPU memory); sampling stays on the host, with the same sampler and seed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "args.h"
#include "commands.h"
#include "engram/infer/decoder.h"
#include "engram/infer/gpu_decoder.h"
#include "engram/model/gpu_transformer.h"
#include "engram/infer/model_loader.h"
#include "engram/infer/sampler.h"
#include "engram/memory/engt_file.h"
#include "engt_tables.h"
#include "engram/memory/tiered_store.h"
#include "engram/train/run.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "engram/util/parallel.h"
#include "util/json.h"

namespace engram::cli {
namespace {

constexpr const char* kBosToken = "<｜begin▁of▁sentence｜>";
constexpr const char* kEosToken = "<｜end▁of▁sentence｜>";

double number(const Args& args, const std::string& name, double fallback) {
  const auto v = args.optional(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    const double d = std::stod(*v, &used);
    if (used != v->size()) throw std::invalid_argument(*v);
    return d;
  } catch (const std::exception&) {
    throw UsageError("--" + name + ": expected a number, got \"" + *v + "\"");
  }
}

// The Engram tables from .engt files, one per Engram layer (layer_ids order).
struct ExternalTables {
  std::string tier;  // "host" or "file"
  std::vector<std::unique_ptr<memory::RowStore>> stores;
  std::vector<const memory::TieredRowStore*> tiered;  // the file tier's stores (prefetched)

  std::vector<const memory::RowStore*> pointers() const {
    std::vector<const memory::RowStore*> p;
    for (const auto& s : stores) p.push_back(s.get());
    return p;
  }
  memory::TierStats total() const {
    memory::TierStats t;
    for (const auto* s : tiered) t += s->total_stats();
    return t;
  }
};

// Opens the .engt files (checking each header against the model's Engram layer before a host
// tier loads it) and hands them to the decoder; the file tier is prefetched.
ExternalTables open_tables(const std::vector<std::string>& paths, const std::string& tier,
                           int64_t cache_rows, const model::Transformer<float>& model,
                           infer::Decoder& decoder) {
  check_engt_tables(paths, model);
  ExternalTables tables;
  tables.tier = tier;
  for (size_t e = 0; e < paths.size(); ++e) {
    if (tier == "host") {
      tables.stores.push_back(
          std::make_unique<memory::EngtRowStore>(paths[e], memory::EngtTier::kHost));
    } else {
      memory::TieredStoreOptions to;
      to.cache_rows = cache_rows;
      auto store = std::make_unique<memory::TieredRowStore>(paths[e], to);
      tables.tiered.push_back(store.get());
      tables.stores.push_back(std::move(store));
    }
  }
  if (tables.tiered.empty()) {
    decoder.set_table_stores(tables.pointers());
  } else {
    decoder.set_prefetched_table_stores(tables.tiered);
  }
  return tables;
}

json::Json stats_json(const memory::StepPrefetchStats& s, int64_t step) {
  double io = 0, fetch = 0;
  for (const auto& l : s.layers) {
    io += l.io_seconds;
    fetch += l.fetch_seconds;
  }
  return {{"step", step},
          {"requested", s.requested},
          {"unique", s.unique},
          {"hits", s.hits},
          {"hit_rate", s.hit_rate()},
          {"blocks_read", s.blocks_read},
          {"bytes_read", s.bytes_read},
          {"io_ms", io * 1e3},
          {"ms", fetch * 1e3},
          {"stall_ms", s.stall_seconds * 1e3}};
}

// The process's peak resident set so far, in MiB.
double peak_rss_mib() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int run_generate(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"ckpt", "prompt", "max-tokens", "seed", "temperature", "top-k", "top-p",
                   "tokenizer", "threads", "engram-tables", "tier", "cache-rows", "table-stats",
                   "device"},
                  {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional().front() + "\"");
  const std::string ckpt = args.required("ckpt");
  const std::string prompt = args.required("prompt");
  if (!args.has("max-tokens")) throw UsageError("missing required option --max-tokens");
  const int64_t max_tokens = args.integer("max-tokens", 0, 0, INT32_MAX);
  infer::SamplingOptions o;
  o.temperature = number(args, "temperature", 0.8);
  o.top_k = args.integer("top-k", 0, 0, INT64_MAX);
  o.top_p = number(args, "top-p", 0.95);
  o.seed = static_cast<uint64_t>(args.integer("seed", 0, 0, INT64_MAX));
  if (!std::isfinite(o.temperature) || o.temperature < 0)
    throw UsageError("--temperature: " + *args.optional("temperature") + " must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1))
    throw UsageError("--top-p: " + *args.optional("top-p") + " must lie in (0, 1]");
  set_default_threads(static_cast<int>(args.integer("threads", 0, 0, 4096)));

  const std::optional<std::string> table_paths = args.optional("engram-tables");
  const std::string tier = args.optional("tier").value_or("file");
  if (!table_paths && (args.has("tier") || args.has("cache-rows") || args.has("table-stats")))
    throw UsageError("--tier, --cache-rows and --table-stats need --engram-tables");
  if (tier != "host" && tier != "file")
    throw UsageError("--tier: \"" + tier + "\" (expected host or file)");
  if (tier == "host" && args.has("table-stats"))
    throw UsageError("--table-stats: the host tier reads no files; use --tier file");
  const int64_t cache_rows = args.integer("cache-rows", 0, 0, INT64_MAX);
  const std::string device = args.optional("device").value_or("cpu");
  if (device != "cpu" && device != "cuda")
    throw UsageError("--device: \"" + device + "\" (expected cpu or cuda)");
  const bool gpu = device == "cuda";
  if (gpu && table_paths)
    throw UsageError("--engram-tables: not supported with --device cuda yet (the GPU decoder "
                     "reads the checkpoint's tables from GPU memory)");

  // With .engt tables, the checkpoint's own tables stay on disk: memory holds the dense weights.
  infer::LoadOptions load_options;
  load_options.engram_tables = !table_paths;
  const train::LoadedModel loaded =
      infer::load_model(ckpt, args.optional("tokenizer").value_or(""), load_options);
  const text::Tokenizer& tok = *loaded.text.tokenizer;
  std::vector<int64_t> ids;
  if (const auto bos = tok.token_to_id(kBosToken)) ids.push_back(*bos);
  const std::vector<uint32_t> prompt_ids = tok.encode(prompt);
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  if (ids.empty()) throw UsageError("--prompt: empty, and the tokenizer has no BOS token");
  const int64_t max_seq_len = loaded.config.model.max_seq_len;
  if (static_cast<int64_t>(ids.size()) > max_seq_len) {
    throw InputError(error_message(
        "--prompt", std::to_string(ids.size()) +
                        " tokens do not fit model.max_seq_len = " + std::to_string(max_seq_len)));
  }
  const std::optional<uint32_t> eos = tok.token_to_id(kEosToken);
  // Ids the model has but the tokenizer does not (vocab_size may be padded) are never sampled.
  const size_t sample_vocab =
      std::min(tok.vocab_size(), static_cast<size_t>(loaded.config.model.vocab_size));

  // Special added tokens (BOS, placeholders, tool markers...) other than EOS are never sampled:
  // they mark structure, not text.
  for (const auto& t : tok.added_tokens()) {
    if (t.special && !(eos && t.id == *eos)) o.banned.push_back(t.id);
  }

  ExternalTables tables;  // before the decoder: its prefetcher reads the stores until it is gone
  std::optional<infer::Decoder> decoder;
  std::unique_ptr<model::GpuTransformer> gpu_model;
  std::unique_ptr<infer::GpuDecoder> gpu_decoder;
  if (gpu) {
    model::GpuTransformerOptions go;
    go.gradients = false;
    gpu_model = std::make_unique<model::GpuTransformer>(*loaded.model, go);
    infer::GpuDecoderOptions dopt;
    dopt.max_rows_per_sequence = 128;
    dopt.max_step_rows = 128;
    gpu_decoder =
        std::make_unique<infer::GpuDecoder>(*gpu_model, loaded.text.hasher.get(), dopt);
  } else {
    decoder.emplace(*loaded.model, loaded.text.hasher.get());
    if (table_paths)
      tables = open_tables(split_commas(*table_paths), tier, cache_rows, *loaded.model, *decoder);
  }
  auto push = [&](std::span<const int64_t> t) {
    return gpu ? gpu_decoder->push(0, t) : decoder->push(t);
  };
  auto position = [&] { return gpu ? gpu_decoder->position(0) : decoder->position(); };
  std::string stats_lines;  // --table-stats: one JSON line per push (0 = the prefill)
  const bool want_stats = args.has("table-stats");
  double stall_s = 0;  // the model's time waiting for prefetched rows, all steps
  auto record_step = [&](int64_t step) {
    if (!decoder || decoder->prefetcher() == nullptr) return;
    const memory::StepPrefetchStats s = decoder->prefetcher()->step_stats();
    stall_s += s.stall_seconds;
    if (want_stats) stats_lines += stats_json(s, step).dump() + "\n";
  };
  infer::Sampler sampler(o);
  const auto t0 = std::chrono::steady_clock::now();
  std::span<const float> logits = push(ids);
  const double prefill_s = seconds_since(t0);
  record_step(0);

  std::vector<uint32_t> generated;
  const char* stop = "max-tokens";
  int64_t steps = 0;
  const auto t1 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < max_tokens; ++i) {
    const int64_t next = sampler.sample(logits.first(sample_vocab));
    if (eos && next == static_cast<int64_t>(*eos)) {
      stop = "end of sentence";
      break;
    }
    generated.push_back(static_cast<uint32_t>(next));
    if (i + 1 == max_tokens) break;
    if (position() == max_seq_len) {
      stop = "max_seq_len";
      std::fprintf(stderr, "[generate] note: stopped at model.max_seq_len = %lld tokens\n",
                   static_cast<long long>(max_seq_len));
      break;
    }
    logits = push({&next, 1});
    ++steps;
    record_step(steps);
  }
  const double decode_s = seconds_since(t1);

  // Prompt and continuation are decoded together, so that a character whose bytes straddle the
  // boundary comes out whole; the prompt is printed as given.
  std::vector<uint32_t> all = prompt_ids;
  all.insert(all.end(), generated.begin(), generated.end());
  const std::string text = tok.decode(all), prompt_text = tok.decode(prompt_ids);
  const bool prefix = text.compare(0, prompt_text.size(), prompt_text) == 0;
  write_stdout((prefix ? prompt + text.substr(prompt_text.size()) : text) + "\n");
  std::fprintf(stderr,
               "[generate] %zu tokens (stop: %s) | %s | prefill %zu tokens in %.1f ms | decode "
               "%.1f tokens/s | peak RSS %.1f MiB\n",
               generated.size(), stop, gpu ? "cuda" : "cpu", ids.size(), prefill_s * 1e3,
               steps > 0 ? static_cast<double>(steps) / decode_s : 0.0, peak_rss_mib());
  if (!tables.stores.empty()) {
    if (tables.tiered.empty()) {
      std::fprintf(stderr, "[generate] engram tables: %zu .engt files, host tier\n",
                   tables.stores.size());
    } else {
      const memory::TierStats t = tables.total();
      std::fprintf(
          stderr,
          "[generate] engram tables: %zu .engt files, file tier (%s), prefetched | "
          "%lld rows requested, %lld unique, %.1f %% from the cache | %lld blocks, "
          "%.2f MiB read | waiting on reads %.1f ms | layers stalled %.1f ms\n",
          tables.stores.size(), std::string(tables.tiered.front()->reader().backend_name()).c_str(),
          static_cast<long long>(t.requested), static_cast<long long>(t.unique),
          100.0 * t.hit_rate(), static_cast<long long>(t.blocks_read),
          static_cast<double>(t.bytes_read) / (1 << 20), t.io_seconds * 1e3, stall_s * 1e3);
    }
    if (want_stats) write_file_atomic(*args.optional("table-stats"), stats_lines);
  }
  return 0;
}

}  // namespace engram::cli
