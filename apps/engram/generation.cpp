// cli::Generator (generation.h): prompt -> continuation with the CPU or GPU decoder.
#include "generation.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <span>
#include <utility>

#include "args.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/gather.h"
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
  // One prompt in flight.
  struct Slot {
    bool active = false;
    GenerateRequest request;
    std::optional<infer::Sampler> sampler;
    std::vector<uint32_t> prompt_ids;
    std::vector<int64_t> ids;  // BOS + prompt ids: what the prefill pushes
    size_t prefilled = 0;      // ids pushed so far
    std::vector<uint32_t> generated;
    int64_t next = -1;         // the token the next step pushes (after the prefill)
    Generation out;
    std::chrono::steady_clock::time_point started, first_logits;
  };

  GeneratorOptions options;
  train::LoadedModel loaded;
  // The .engt tables (CPU): declared before the decoders, whose prefetcher reads them until it
  // is gone.
  std::vector<std::unique_ptr<memory::RowStore>> stores;
  std::vector<const memory::TieredRowStore*> tiered;
  std::vector<std::unique_ptr<infer::Decoder>> decoders;  // CPU: one per slot
  // GPU: the .engt tables in pinned, mapped host memory (declared before the decoder).
  std::vector<cuda::MappedHostBuffer<uint8_t>> host_rows;  // each table's rows as encoded
  std::unique_ptr<model::GpuTransformer> gpu_model;
  std::unique_ptr<infer::GpuDecoder> gpu_decoder;
  std::vector<Slot> slots;
  std::vector<int64_t> banned;
  std::optional<uint32_t> bos, eos;
  size_t sample_vocab = 0;

  void open_tables();
  std::vector<cuda::DeviceTable> pin_tables();
  // Sampling on slot s's newest logits; finishes the slot (out filled) when it is done.
  void take_logits(size_t s, std::span<const float> logits);
  void finish(size_t s, const char* stop);
  // The file tier's statistics of slot s's last push (CPU, one slot).
  void record_step(size_t s, int64_t step);
  std::vector<std::pair<int64_t, Generation>> step_cpu();
  std::vector<std::pair<int64_t, Generation>> step_gpu();
};

// Opens the .engt files (checking each header against the model's Engram layer before a host
// tier loads it) and hands them to the decoder; on the CPU the file tier is prefetched, on the
// GPU each step's rows are gathered through it before the step runs.
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
  if (gpu_decoder) {
    // The GPU gathers each step's rows through the file tier into pinned staging.
    std::vector<const memory::RowStore*> p;
    for (const auto& s : stores) p.push_back(s.get());
    gpu_decoder->set_table_stores(std::move(p));
  } else if (tiered.empty()) {
    std::vector<const memory::RowStore*> p;
    for (const auto& s : stores) p.push_back(s.get());
    decoders.front()->set_table_stores(std::move(p));
  } else {
    decoders.front()->set_prefetched_table_stores(tiered);
  }
}

// The GPU's tables: each .engt file's rows in pinned, mapped host memory in the file's own
// format (f32 and bf16 values; fp8 and int8 rows as encoded, dequantized by the GPU's gather), so
// that an fp8 table takes about 1 byte a value there.
std::vector<cuda::DeviceTable> Generator::Impl::pin_tables() {
  const std::vector<std::string>& paths = options.table_paths;
  check_engt_tables(paths, *loaded.model);
  std::vector<cuda::DeviceTable> tables;
  for (const std::string& path : paths) {
    const memory::EngtFile file = memory::EngtFile::open(path);
    DType dtype = DType::kF32;  // the row format's DType (f32 and bf16 rows are plain values)
    switch (file.format()) {
      case memory::RowFormat::kF32:
        dtype = DType::kF32;
        break;
      case memory::RowFormat::kBF16:
        dtype = DType::kBF16;
        break;
      case memory::RowFormat::kFP8:
        dtype = DType::kF8E4M3;
        break;
      case memory::RowFormat::kINT8:
        dtype = DType::kI8;
        break;
    }
    host_rows.emplace_back(static_cast<size_t>(file.rows() * file.row_bytes()));
    read_engt_encoded_rows(path, host_rows.back().host().data());
    tables.push_back({host_rows.back().device(), dtype, file.rows(), file.width()});
  }
  return tables;
}

Generator::Generator(const std::string& ckpt, const std::string& tokenizer,
                     const GeneratorOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.options = options;
  if (options.device != "cpu" && options.device != "cuda")
    throw UsageError("--device: \"" + options.device + "\" (expected cpu or cuda)");
  const bool tables = !options.table_paths.empty();
  const bool gpu = options.device == "cuda";
  if (I.options.tier.empty()) I.options.tier = tables ? (gpu ? "host" : "file") : "";
  if (tables && I.options.tier != "host" && I.options.tier != "file")
    throw UsageError("--tier: \"" + I.options.tier + "\" (expected host or file)");

  if (options.max_batch < 1) throw UsageError("--max-batch: must be >= 1");
  if (tables && !gpu && options.max_batch > 1) {
    throw UsageError("--max-batch: 1 with --engram-tables on the CPU (one decoder reads the "
                     "tables)");
  }
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
  I.slots.resize(static_cast<size_t>(options.max_batch));
  if (options.device == "cuda") {
    model::GpuTransformerOptions go;
    go.gradients = false;
    I.gpu_model = std::make_unique<model::GpuTransformer>(*I.loaded.model, go);
    infer::GpuDecoderOptions dopt;
    dopt.max_sequences = options.max_batch;
    dopt.max_rows_per_sequence = 128;
    dopt.max_step_rows = std::max<int64_t>(128, options.max_batch);
    I.gpu_decoder =
        std::make_unique<infer::GpuDecoder>(*I.gpu_model, I.loaded.text.hasher.get(), dopt);
    if (tables && I.options.tier == "host") I.gpu_decoder->set_tables(I.pin_tables());
    if (tables && I.options.tier == "file") I.open_tables();
  } else {
    for (int64_t s = 0; s < options.max_batch; ++s) {
      I.decoders.push_back(
          std::make_unique<infer::Decoder>(*I.loaded.model, I.loaded.text.hasher.get()));
    }
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

int64_t Generator::max_batch() const {
  return impl_->options.max_batch;
}

bool Generator::has_free_slot() const {
  for (const auto& s : impl_->slots)
    if (!s.active) return true;
  return false;
}

bool Generator::busy() const {
  for (const auto& s : impl_->slots)
    if (s.active) return true;
  return false;
}

int64_t Generator::start(const GenerateRequest& request) {
  Impl& I = *impl_;
  const text::Tokenizer& tok = *I.loaded.text.tokenizer;
  if (request.max_tokens < 0) {
    throw InputError(error_message("max_tokens", std::to_string(request.max_tokens) +
                                                     " must be >= 0"));
  }
  size_t free = I.slots.size();
  for (size_t s = 0; s < I.slots.size() && free == I.slots.size(); ++s)
    if (!I.slots[s].active) free = s;
  if (free == I.slots.size()) throw Error("Generator::start: no free slot");
  Impl::Slot slot;
  if (I.bos) slot.ids.push_back(*I.bos);
  slot.prompt_ids = tok.encode(request.prompt);
  slot.ids.insert(slot.ids.end(), slot.prompt_ids.begin(), slot.prompt_ids.end());
  if (slot.ids.empty())
    throw InputError(error_message("prompt", "empty, and the tokenizer has no BOS token"));
  const int64_t max_seq_len = I.loaded.config.model.max_seq_len;
  if (static_cast<int64_t>(slot.ids.size()) > max_seq_len) {
    throw InputError(error_message(
        "prompt", std::to_string(slot.ids.size()) +
                      " tokens do not fit model.max_seq_len = " + std::to_string(max_seq_len)));
  }
  slot.request = request;
  slot.request.sampling.banned = I.banned;
  slot.sampler.emplace(slot.request.sampling);
  slot.out.prompt_tokens = static_cast<int64_t>(slot.ids.size());
  slot.out.stop = "max-tokens";
  slot.started = std::chrono::steady_clock::now();
  slot.active = true;
  if (I.gpu_decoder) {
    I.gpu_decoder->reset(static_cast<int64_t>(free));
  } else {
    I.decoders[free]->reset();
  }
  I.slots[free] = std::move(slot);
  return static_cast<int64_t>(free);
}

void Generator::Impl::record_step(size_t s, int64_t step) {
  if (gpu_decoder || decoders[s]->prefetcher() == nullptr) return;
  const memory::StepPrefetchStats st = decoders[s]->prefetcher()->step_stats();
  Generation& out = slots[s].out;
  out.rows_requested += st.requested;
  out.rows_unique += st.unique;
  out.rows_hit += st.hits;
  out.bytes_read += st.bytes_read;
  out.stall_seconds += st.stall_seconds;
  if (slots[s].request.step_stats) out.step_lines += stats_json(st, step).dump() + "\n";
}

void Generator::Impl::take_logits(size_t s, std::span<const float> logits) {
  Slot& slot = slots[s];
  const auto now = std::chrono::steady_clock::now();
  if (slot.prefilled == slot.ids.size() && slot.next < 0 && slot.generated.empty()) {
    slot.first_logits = now;
    slot.out.prefill_seconds = std::chrono::duration<double>(now - slot.started).count();
  }
  if (static_cast<int64_t>(slot.generated.size()) == slot.request.max_tokens) {
    finish(s, "max-tokens");
    return;
  }
  const int64_t next = slot.sampler->sample(logits.first(sample_vocab));
  if (eos && next == static_cast<int64_t>(*eos)) {
    finish(s, "end of sentence");
    return;
  }
  slot.generated.push_back(static_cast<uint32_t>(next));
  const int64_t position = gpu_decoder ? gpu_decoder->position(static_cast<int64_t>(s))
                                       : decoders[s]->position();
  if (static_cast<int64_t>(slot.generated.size()) == slot.request.max_tokens) {
    finish(s, "max-tokens");
  } else if (position == loaded.config.model.max_seq_len) {
    finish(s, "max_seq_len");
  } else {
    slot.next = next;
  }
}

void Generator::Impl::finish(size_t s, const char* stop) {
  Slot& slot = slots[s];
  const text::Tokenizer& tok = *loaded.text.tokenizer;
  Generation& out = slot.out;
  out.stop = stop;
  out.tokens = static_cast<int64_t>(slot.generated.size());
  out.decode_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - slot.first_logits).count();
  // Prompt and continuation are decoded together, so that a character whose bytes straddle the
  // boundary comes out whole; the prompt is given back as it was given.
  std::vector<uint32_t> all = slot.prompt_ids;
  all.insert(all.end(), slot.generated.begin(), slot.generated.end());
  const std::string text = tok.decode(all), prompt_text = tok.decode(slot.prompt_ids);
  const bool prefix = text.compare(0, prompt_text.size(), prompt_text) == 0;
  out.completion = prefix ? text.substr(prompt_text.size()) : tok.decode(slot.generated);
  out.text = prefix ? slot.request.prompt + out.completion : text;
  slot.active = false;
}

// CPU: every active slot's decoder in turn: the prompt in one push, then a token a step.
std::vector<std::pair<int64_t, Generation>> Generator::Impl::step_cpu() {
  std::vector<std::pair<int64_t, Generation>> done;
  for (size_t s = 0; s < slots.size(); ++s) {
    Slot& slot = slots[s];
    if (!slot.active) continue;
    std::span<const float> logits;
    if (slot.prefilled < slot.ids.size()) {
      logits = decoders[s]->push(slot.ids);
      slot.prefilled = slot.ids.size();
      record_step(s, 0);
    } else {
      logits = decoders[s]->push({&slot.next, 1});
      ++slot.out.decode_steps;
      record_step(s, slot.out.decode_steps);
    }
    take_logits(s, logits);
    if (!slot.active) done.emplace_back(static_cast<int64_t>(s), std::move(slot.out));
  }
  return done;
}

// GPU: one GpuDecoder step over every active slot: a token for each decoding one, then prompt
// chunks (at most max_rows_per_sequence a slot) while the step has rows left.
std::vector<std::pair<int64_t, Generation>> Generator::Impl::step_gpu() {
  const infer::GpuDecoderOptions& o = gpu_decoder->options();
  std::vector<int64_t> seqs, toks;
  std::vector<size_t> decoding;
  for (size_t s = 0; s < slots.size(); ++s) {
    if (slots[s].active && slots[s].prefilled == slots[s].ids.size()) {
      seqs.push_back(static_cast<int64_t>(s));
      toks.push_back(slots[s].next);
      decoding.push_back(s);
    }
  }
  std::vector<size_t> prefilling;
  for (size_t s = 0; s < slots.size(); ++s) {
    Slot& slot = slots[s];
    if (!slot.active || slot.prefilled == slot.ids.size()) continue;
    const int64_t room = o.max_step_rows - static_cast<int64_t>(seqs.size());
    const auto take = static_cast<size_t>(std::min<int64_t>(
        {room, o.max_rows_per_sequence, static_cast<int64_t>(slot.ids.size() - slot.prefilled)}));
    if (take == 0) break;
    for (size_t i = 0; i < take; ++i) {
      seqs.push_back(static_cast<int64_t>(s));
      toks.push_back(slot.ids[slot.prefilled + i]);
    }
    slot.prefilled += take;
    prefilling.push_back(s);
  }
  std::vector<std::pair<int64_t, Generation>> done;
  if (seqs.empty()) return done;
  gpu_decoder->step(seqs, toks);
  for (const size_t s : decoding) ++slots[s].out.decode_steps;
  const std::vector<float> logits = gpu_decoder->logits();
  const std::vector<int64_t>& who = gpu_decoder->logit_sequences();
  const auto V = static_cast<size_t>(gpu_decoder->vocab_size());
  for (size_t i = 0; i < who.size(); ++i) {
    const auto s = static_cast<size_t>(who[i]);
    if (slots[s].prefilled < slots[s].ids.size()) continue;  // a prompt chunk, not its last
    take_logits(s, {logits.data() + i * V, V});
    if (!slots[s].active) done.emplace_back(static_cast<int64_t>(s), std::move(slots[s].out));
  }
  return done;
}

std::vector<std::pair<int64_t, Generation>> Generator::step() {
  Impl& I = *impl_;
  try {
    return I.gpu_decoder ? I.step_gpu() : I.step_cpu();
  } catch (...) {
    abort();
    throw;
  }
}

void Generator::abort() {
  for (auto& s : impl_->slots) s.active = false;
}

Generation Generator::run(const GenerateRequest& request) {
  if (busy()) throw Error("Generator::run: prompts are in flight (batched use)");
  const int64_t id = start(request);
  while (true) {
    for (auto& [done_id, out] : step()) {
      if (done_id == id) return std::move(out);
    }
  }
}

const std::string& Generator::tier() const {
  return impl_->options.tier;
}

std::string Generator::tables_summary() const {
  const Impl& I = *impl_;
  if (I.gpu_decoder && !I.options.table_paths.empty() && I.options.tier == "host") {
    return "engram tables: " + std::to_string(I.options.table_paths.size()) +
           " .engt files in pinned host memory, read by the GPU";
  }
  if (I.stores.empty()) return "";
  char line[512];
  if (I.tiered.empty()) {
    std::snprintf(line, sizeof line, "engram tables: %zu .engt files, host tier", I.stores.size());
    return line;
  }
  memory::TierStats t;
  for (const auto* s : I.tiered) t += s->total_stats();
  std::snprintf(line, sizeof line,
                "engram tables: %zu .engt files, file tier (%s), %s | %lld rows "
                "requested, %lld unique, %.1f %% from the cache | %lld blocks, %.2f MiB read | "
                "waiting on reads %.1f ms",
                I.stores.size(), std::string(I.tiered.front()->reader().backend_name()).c_str(),
                I.gpu_decoder ? "gathered into pinned staging for the GPU" : "prefetched",
                static_cast<long long>(t.requested), static_cast<long long>(t.unique),
                100.0 * t.hit_rate(), static_cast<long long>(t.blocks_read),
                static_cast<double>(t.bytes_read) / (1 << 20), t.io_seconds * 1e3);
  return line;
}

}  // namespace engram::cli
