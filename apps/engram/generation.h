// A checkpoint ready to continue prompts, shared by `engram generate` (one prompt) and
// `engram serve` (one prompt per request): the model, its tokenizer and hasher, a decoder kept
// between prompts (infer::Decoder on the CPU, infer::GpuDecoder with device "cuda") and, on the
// CPU, the Engram tables of .engt files (memory tier: host, or file with prefetch).
//
//   Generator g(ckpt, tokenizer, {.device = "cpu"});
//   Generation out = g.run({.prompt = "Once", .max_tokens = 20, .sampling = {...}});
//   std::cout << out.text << "\n";
//
// A prompt is encoded with the tokenizer (after its BOS token, when it has one); the
// continuation is sampled (infer::Sampler, its seed per request) until max_tokens, the
// end-of-sentence token or model.max_seq_len. Special added tokens other than EOS are never
// sampled, nor ids the model has beyond the tokenizer's vocabulary. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engram/infer/sampler.h"
#include "engram/train/run.h"

namespace engram::cli {

struct GeneratorOptions {
  std::string device = "cpu";            // "cpu" or "cuda"
  std::vector<std::string> table_paths;  // .engt files, one per Engram layer (CPU only)
  std::string tier = "file";             // "host" or "file" (with table_paths)
  int64_t cache_rows = 0;                // the file tier's DRAM cache
};

struct GenerateRequest {
  std::string prompt;
  int64_t max_tokens = 0;
  infer::SamplingOptions sampling;  // `banned` is filled in by the generator
  bool step_stats = false;          // file tier: one JSON line per step in Generation
};

struct Generation {
  std::string text;        // the prompt as given, then the continuation
  std::string completion;  // the continuation alone
  int64_t prompt_tokens = 0;
  int64_t tokens = 0;      // generated
  std::string stop;        // "max-tokens", "end of sentence" or "max_seq_len"
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t decode_steps = 0;
  // The file tier's rows for this prompt, summed over its steps (zero otherwise).
  int64_t rows_requested = 0, rows_unique = 0, rows_hit = 0, bytes_read = 0;
  double stall_seconds = 0;   // time the Engram layers waited for their rows
  std::string step_lines;     // with step_stats: one JSON line per step (0 = the prefill)
};

class Generator {
 public:
  // Loads the checkpoint (without its Engram tables when table_paths are given) and builds the
  // decoder. UsageError for options that do not go together; engram::Error from loading.
  Generator(const std::string& ckpt, const std::string& tokenizer, const GeneratorOptions& options);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // InputError naming "prompt" when it is empty without a BOS token or longer than
  // model.max_seq_len; "max_tokens" when negative.
  Generation run(const GenerateRequest& request);

  const train::LoadedModel& loaded() const;
  const std::string& device() const;
  // One line describing the Engram tables of .engt files (totals since start), "" without.
  std::string tables_summary() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::cli
