// engram generate: continues a prompt with a checkpoint (KV-cached decoding, infer::Decoder) and
// prints the prompt and its continuation; one line of figures on stderr.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "engram/infer/decoder.h"
#include "engram/infer/sampler.h"
#include "engram/train/run.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"

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

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int run_generate(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"ckpt", "prompt", "max-tokens", "seed", "temperature", "top-k", "top-p",
                   "tokenizer", "threads"},
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

  const train::LoadedModel loaded =
      train::load_model(ckpt, args.optional("tokenizer").value_or(""));
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

  infer::Decoder decoder(*loaded.model, loaded.text.hasher.get());
  infer::Sampler sampler(o);
  const auto t0 = std::chrono::steady_clock::now();
  std::span<const float> logits = decoder.push(ids);
  const double prefill_s = seconds_since(t0);

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
    if (decoder.position() == max_seq_len) {
      stop = "max_seq_len";
      std::fprintf(stderr, "[generate] note: stopped at model.max_seq_len = %lld tokens\n",
                   static_cast<long long>(max_seq_len));
      break;
    }
    logits = decoder.push({&next, 1});
    ++steps;
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
               "[generate] %zu tokens (stop: %s) | prefill %zu tokens in %.1f ms | decode %.1f "
               "tokens/s\n",
               generated.size(), stop, ids.size(), prefill_s * 1e3,
               steps > 0 ? static_cast<double>(steps) / decode_s : 0.0);
  return 0;
}

}  // namespace engram::cli
