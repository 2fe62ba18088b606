// cli::Generator (generation.h): prompt -> continuation with the CPU or GPU decoder.
#include "generation.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <span>
#include <utility>

#include "args.h"
#include "engram/infer/decoder.h"
#include "engram/infer/gpu_decoder.h"
#include "engram/infer/model_loader.h"
#include "engram/memory/engt_file.h"
#include "engram/memory/tiered_store.h"
#include "engram/model/gpu_transformer.h"
#include "engram/util/error.h"
#include "engt_tables.h"
#include "util/json.h"

namespace engram::cli {
namespace {

constexpr const char* kBosToken = "<｜begin▁of▁sentence｜>";
constexpr const char* kEosToken = "<｜end▁of▁sentence｜>";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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

}  // namespace

struct Generator::Impl {
  GeneratorOptions options;
  train::LoadedModel loaded;
  // The .engt tables (CPU): declared before the decoder, whose prefetcher reads them until it
  // is gone.
  std::vector<std::unique_ptr<memory::RowStore>> stores;
  std::vector<const memory::TieredRowStore*> tiered;
  std::optional<infer::Decoder> decoder;
  std::unique_ptr<model::GpuTransformer> gpu_model;
  std::unique_ptr<infer::GpuDecoder> gpu_decoder;
  std::vector<int64_t> banned;
  std::optional<uint32_t> bos, eos;
  size_t sample_vocab = 0;

  void open_tables();
  std::span<const float> push(std::span<const int64_t> t) {
    return gpu_decoder ? gpu_decoder->push(0, t) : decoder->push(t);
  }
  int64_t position() const { return gpu_decoder ? gpu_decoder->position(0) : decoder->position(); }
  void reset() {
    if (gpu_decoder) {
      gpu_decoder->reset(0);
    } else {
      decoder->reset();
    }
  }
};

// Opens the .engt files (checking each header against the model's Engram layer before a host
// tier loads it) and hands them to the decoder; the file tier is prefetched.
void Generator::Impl::open_tables() {
  const std::vector<std::string>& paths = options.table_paths;
  check_engt_tables(paths, *loaded.model);
  for (const std::string& path : paths) {
    if (options.tier == "host") {
      stores.push_back(std::make_unique<memory::EngtRowStore>(path, memory::EngtTier::kHost));
    } else {
      memory::TieredStoreOptions to;
      to.cache_rows = options.cache_rows;
      auto store = std::make_unique<memory::TieredRowStore>(path, to);
      tiered.push_back(store.get());
      stores.push_back(std::move(store));
    }
  }
  if (tiered.empty()) {
    std::vector<const memory::RowStore*> p;
    for (const auto& s : stores) p.push_back(s.get());
    decoder->set_table_stores(std::move(p));
  } else {
    decoder->set_prefetched_table_stores(tiered);
  }
}

Generator::Generator(const std::string& ckpt, const std::string& tokenizer,
                     const GeneratorOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.options = options;
  if (options.device != "cpu" && options.device != "cuda")
    throw UsageError("--device: \"" + options.device + "\" (expected cpu or cuda)");
  const bool tables = !options.table_paths.empty();
  if (options.device == "cuda" && tables) {
    throw UsageError("--engram-tables: not supported with --device cuda yet (the GPU decoder "
                     "reads the checkpoint's tables from GPU memory)");
  }
  if (options.tier != "host" && options.tier != "file")
    throw UsageError("--tier: \"" + options.tier + "\" (expected host or file)");
  // With .engt tables, the checkpoint's own tables stay on disk: memory holds the dense weights.
  infer::LoadOptions load_options;
  load_options.engram_tables = !tables;
  I.loaded = infer::load_model(ckpt, tokenizer, load_options);
  const text::Tokenizer& tok = *I.loaded.text.tokenizer;
  I.bos = tok.token_to_id(kBosToken);
  I.eos = tok.token_to_id(kEosToken);
  // Ids the model has but the tokenizer does not (vocab_size may be padded) are never sampled.
  I.sample_vocab = std::min(tok.vocab_size(), static_cast<size_t>(I.loaded.config.model.vocab_size));
  // Special added tokens (BOS, placeholders, tool markers...) other than EOS are never sampled:
  // they mark structure, not text.
  for (const auto& t : tok.added_tokens()) {
    if (t.special && !(I.eos && t.id == *I.eos)) I.banned.push_back(t.id);
  }
  if (options.device == "cuda") {
    model::GpuTransformerOptions go;
    go.gradients = false;
    I.gpu_model = std::make_unique<model::GpuTransformer>(*I.loaded.model, go);
    infer::GpuDecoderOptions dopt;
    dopt.max_rows_per_sequence = 128;
    dopt.max_step_rows = 128;
    I.gpu_decoder =
        std::make_unique<infer::GpuDecoder>(*I.gpu_model, I.loaded.text.hasher.get(), dopt);
  } else {
    I.decoder.emplace(*I.loaded.model, I.loaded.text.hasher.get());
    if (tables) I.open_tables();
  }
}

Generator::~Generator() = default;

const train::LoadedModel& Generator::loaded() const {
  return impl_->loaded;
}

const std::string& Generator::device() const {
  return impl_->options.device;
}

Generation Generator::run(const GenerateRequest& request) {
  Impl& I = *impl_;
  const text::Tokenizer& tok = *I.loaded.text.tokenizer;
  if (request.max_tokens < 0) {
    throw InputError(error_message("max_tokens", std::to_string(request.max_tokens) +
                                                     " must be >= 0"));
  }
  std::vector<int64_t> ids;
  if (I.bos) ids.push_back(*I.bos);
  const std::vector<uint32_t> prompt_ids = tok.encode(request.prompt);
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  if (ids.empty()) throw InputError(error_message("prompt", "empty, and the tokenizer has no BOS token"));
  const int64_t max_seq_len = I.loaded.config.model.max_seq_len;
  if (static_cast<int64_t>(ids.size()) > max_seq_len) {
    throw InputError(error_message(
        "prompt", std::to_string(ids.size()) +
                      " tokens do not fit model.max_seq_len = " + std::to_string(max_seq_len)));
  }
  infer::SamplingOptions o = request.sampling;
  o.banned = I.banned;
  infer::Sampler sampler(o);
  I.reset();

  Generation out;
  out.prompt_tokens = static_cast<int64_t>(ids.size());
  const memory::Prefetcher* prefetcher = I.decoder ? I.decoder->prefetcher() : nullptr;
  auto record_step = [&](int64_t step) {
    if (prefetcher == nullptr) return;
    const memory::StepPrefetchStats s = prefetcher->step_stats();
    out.rows_requested += s.requested;
    out.rows_unique += s.unique;
    out.rows_hit += s.hits;
    out.bytes_read += s.bytes_read;
    out.stall_seconds += s.stall_seconds;
    if (request.step_stats) out.step_lines += stats_json(s, step).dump() + "\n";
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::span<const float> logits = I.push(ids);
  out.prefill_seconds = seconds_since(t0);
  record_step(0);

  std::vector<uint32_t> generated;
  out.stop = "max-tokens";
  const auto t1 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < request.max_tokens; ++i) {
    const int64_t next = sampler.sample(logits.first(I.sample_vocab));
    if (I.eos && next == static_cast<int64_t>(*I.eos)) {
      out.stop = "end of sentence";
      break;
    }
    generated.push_back(static_cast<uint32_t>(next));
    if (i + 1 == request.max_tokens) break;
    if (I.position() == max_seq_len) {
      out.stop = "max_seq_len";
      break;
    }
    logits = I.push({&next, 1});
    ++out.decode_steps;
    record_step(out.decode_steps);
  }
  out.decode_seconds = seconds_since(t1);
  out.tokens = static_cast<int64_t>(generated.size());

  // Prompt and continuation are decoded together, so that a character whose bytes straddle the
  // boundary comes out whole; the prompt is given back as it was given.
  std::vector<uint32_t> all = prompt_ids;
  all.insert(all.end(), generated.begin(), generated.end());
  const std::string text = tok.decode(all), prompt_text = tok.decode(prompt_ids);
  const bool prefix = text.compare(0, prompt_text.size(), prompt_text) == 0;
  out.completion = prefix ? text.substr(prompt_text.size()) : tok.decode(generated);
  out.text = prefix ? request.prompt + out.completion : text;
  return out;
}

std::string Generator::tables_summary() const {
  const Impl& I = *impl_;
  if (I.stores.empty()) return "";
  char line[512];
  if (I.tiered.empty()) {
    std::snprintf(line, sizeof line, "engram tables: %zu .engt files, host tier", I.stores.size());
    return line;
  }
  memory::TierStats t;
  for (const auto* s : I.tiered) t += s->total_stats();
  std::snprintf(line, sizeof line,
                "engram tables: %zu .engt files, file tier (%s), prefetched | %lld rows "
                "requested, %lld unique, %.1f %% from the cache | %lld blocks, %.2f MiB read | "
                "waiting on reads %.1f ms",
                I.stores.size(), std::string(I.tiered.front()->reader().backend_name()).c_str(),
                static_cast<long long>(t.requested), static_cast<long long>(t.unique),
                100.0 * t.hit_rate(), static_cast<long long>(t.blocks_read),
                static_cast<double>(t.bytes_read) / (1 << 20), t.io_seconds * 1e3);
  return line;
}

}  // namespace engram::cli
