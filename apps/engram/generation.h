// A checkpoint ready to continue prompts, shared by `engram generate` (one prompt) and
// `engram serve` (many, batched): the model, its tokenizer and hasher, the decoders kept between
// prompts and the Engram tables of .engt files (CPU: memory tier host, or file with prefetch;
// GPU: decoded into pinned host memory that the GPU reads over PCIe). Up to max_batch prompts are decoded together: on the GPU as the sequences of one
// infer::GpuDecoder (each step feeds every active prompt's next token, and prompt chunks, in one
// batch), on the CPU with one infer::Decoder per prompt, stepped in turn.
//
//   Generator g(ckpt, tokenizer, {.device = "cpu"});
//   Generation out = g.run({.prompt = "Once", .max_tokens = 20, .sampling = {...}});
//   std::cout << out.text << "\n";
//
//   int64_t id = g.start(request);                    // batched: while g.has_free_slot()
//   for (auto& [id, out] : g.step()) ...              // the prompts that finished this step
//
// A prompt is encoded with the tokenizer (after its BOS token, when it has one); the
// continuation is sampled (infer::Sampler, its seed per request) until max_tokens, the
// end-of-sentence token or model.max_seq_len. Special added tokens other than EOS are never
// sampled, nor ids the model has beyond the tokenizer's vocabulary. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engram/infer/sampler.h"
#include "engram/train/run.h"

namespace engram::cli {

struct GeneratorOptions {
  std::string device = "cpu";            // "cpu" or "cuda"
  std::vector<std::string> table_paths;  // .engt files, one per Engram layer
  // With table_paths: "host" or "file"; "" picks file on the CPU, host on the GPU (which reads
  // the tables from pinned host memory over PCIe; its file tier gathers each step's rows into
  // pinned staging before the step).
  std::string tier;
  int64_t cache_rows = 0;                // the file tier's DRAM cache
  int64_t max_batch = 1;                 // prompts decoded together (1 with table_paths on
                                         // the CPU)
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

  // One prompt to the end (the batch must be idle). InputError naming "prompt" when it is empty
  // without a BOS token or longer than model.max_seq_len; "max_tokens" when negative.
  Generation run(const GenerateRequest& request);

  // Batched use. start() takes a free slot for the request (the same InputErrors as run(); Error
  // when no slot is free) and returns its id; step() advances every started prompt by one step
  // (a prompt's first step prefills it, in chunks on the GPU) and returns the ones that finished.
  // A prompt's result does not depend on the others in the batch on the CPU; on the GPU it is the
  // same up to float rounding of the batched products. If step() throws, every started prompt is
  // dropped (abort()).
  int64_t max_batch() const;
  bool has_free_slot() const;
  bool busy() const;  // any prompt started and not finished
  int64_t start(const GenerateRequest& request);
  std::vector<std::pair<int64_t, Generation>> step();
  void abort();  // drops every started prompt

  const train::LoadedModel& loaded() const;
  const std::string& device() const;
  const std::string& tier() const;  // the tier in use with table_paths ("" without)
  // One line describing the Engram tables of .engt files (totals since start), "" without.
  std::string tables_summary() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::cli
