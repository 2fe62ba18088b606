// Incremental inference on the GPU, many sequences at once: the model::GpuTransformer's
// parameters run over the new tokens of a step, each position computed once, with what later
// positions need kept on the device per sequence (infer::Decoder's caches, batched):
//
//   attention   K (after RoPE) and V of every earlier position    (sequences, max_len, Hkv*hd)
//   Engram      the short conv's normalised inputs, in a ring      (sequences, ring, M*d)
//               of R + max_rows_per_sequence positions (R = max_ngram_size * (kernel_size - 1))
//   hashing     one hash::StreamingHasher per sequence, on the host (hashing needs only ids)
//
// A step takes rows (sequence, token): any mix of prompt chunks (prefill) and single decode
// tokens. A sequence's rows in one step take consecutive positions in the order given. Logits
// are computed for the last row of each sequence in the step only (the LM head is a decode
// step's largest GEMM). The logits are those of Transformer::forward over each whole sequence,
// up to float rounding (the same computation on other rows; attention sums in another order).
//
//   model::GpuTransformer gpu(cpu_model, {.gradients = false});
//   infer::GpuDecoder dec(gpu, hasher, {.max_sequences = 64});
//   dec.step(seqs, tokens);                      // appends tokens[i] to sequence seqs[i]
//   std::vector<int64_t> next = dec.greedy();    // per logits row (dec.logit_sequences())
//   std::vector<float> l = dec.logits();         // or all logits, (rows, V), on the host
//   dec.reset(s);                                // sequence s starts again, empty
//
// The Engram tables are the model's (in its parameter arena) unless set_tables gives others,
// e.g. a cuda::MappedHostBuffer's device pointer (the pinned host tier, read over PCIe), or
// set_table_stores has each step's rows gathered on the host (the file tier; a step then also
// reads files, and a damaged block fails it).
// Everything runs on the decoder's own CUDA stream (a blocking one: ordered with the default
// stream). A step uploads its inputs with synchronous copies, which wait for the previous step's
// device work; it then returns once its own work is enqueued (routed MoE layers wait for their
// routing counts); logits() and greedy() wait for it. Repeated step shapes replay CUDA graphs
// (GpuDecoderOptions::cuda_graphs), which hold the addresses of the model's parameters and of
// the MoE and Engram layers' step buffers; the decoder notices when those move (another decoder
// or the model's forward regrowing them, GpuTransformer::upload_params) and captures again.
// Still, do not train the model while a GpuDecoder over it is in use. Another thread's work on
// the default stream while a step is being captured breaks the capture: that shape then runs
// without a graph.
// Not thread-safe. A build without CUDA compiles this class; its constructor throws.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engram/cuda/gather.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/memory/row_cache.h"
#include "engram/memory/row_store.h"
#include "engram/model/gpu_transformer.h"

namespace engram::infer {

struct GpuDecoderOptions {
  int64_t max_sequences = 1;          // sequences 0 .. max_sequences - 1
  int64_t max_len = 0;                // positions per sequence; 0: model.max_seq_len
  int64_t max_step_rows = 256;        // tokens in one step, all sequences together
  int64_t max_rows_per_sequence = 64; // one sequence's tokens in one step (a prefill chunk)
  // MoE layers of steps with at most this many rows run every expert on every row
  // (cuda::moe_forward_dense: no host sync, E / top_k times the routed FLOPs); larger steps
  // route (cuda::moe_forward). 0: always route.
  int64_t dense_moe_rows = 256;
  // Steps of a shape seen before (the number of rows and of logits rows), whose MoE layers (if
  // any) run dense, replay a CUDA graph of their device work captured the second time the
  // shape runs: one launch instead of hundreds. Not while profiling.
  bool cuda_graphs = true;
  // Every Engram layer's rows are gathered at the start of the step on a second stream (the
  // hash ids are known before the first layer), overlapping the layers before it: what hides a
  // table in pinned host memory behind compute.
  bool prefetch_rows = true;
  // Hot rows: each Engram table given to set_tables outside GPU memory (pinned host memory, say)
  // gets a cache of this many rows (at most the table's) in GPU memory (0: none). Every step looks
  // its distinct rows up in a memory::RowCache of hot_policy (memory::plan_lookups): rows it
  // admits are copied from the table into their slots, then every lookup reads its slot, or the
  // table for a row refused a slot. The slots never move, so captured steps replay (the step's
  // plan is uploaded with its inputs). A step that fails after planning empties the caches (and
  // their counts). hot_row_stats() counts what the caches did.
  int64_t hot_rows = 0;
  memory::CachePolicy hot_policy = memory::CachePolicy::kFrequency;
};

class GpuDecoder {
 public:
  // hasher: the model's n-gram hasher, null when the config has no [engram] (ConfigError when it
  // is missing, given without [engram] or does not match the model). ConfigError for options out
  // of range (sizes < 1, max_len > model.max_seq_len, dense_moe_rows too large for int32
  // indexing). Allocates every cache and scratch buffer now (the dense MoE path's E x
  // min(max_step_rows, dense_moe_rows) x (3H + C) floats included): steps with dense MoE
  // layers allocate nothing; the first routed step (more rows than dense_moe_rows) grows the
  // routing's scratch.
  GpuDecoder(model::GpuTransformer& model, const hash::NgramHasher* hasher,
             GpuDecoderOptions options = {});
  ~GpuDecoder();
  GpuDecoder(const GpuDecoder&) = delete;
  GpuDecoder& operator=(const GpuDecoder&) = delete;

  const GpuDecoderOptions& options() const;
  int64_t vocab_size() const;

  // Sequence `sequence` starts again, empty. InputError for a sequence out of range.
  void reset(int64_t sequence);
  // Tokens in the sequence so far.
  int64_t position(int64_t sequence) const;

  // Appends tokens[i] to sequence seqs[i] for every i and computes the logits of each named
  // sequence's last token here. Any error leaves every sequence as it was (positions and
  // hashing; the logits are then empty). Throws InputError when the sizes differ or
  // are 0 or above max_step_rows, a sequence is out of range or has more than
  // max_rows_per_sequence rows, would exceed max_len, or a token is outside [0, V) (or the
  // hasher's tokenizer vocabulary); ConfigError when an Engram layer has no table.
  void step(std::span<const int64_t> seqs, std::span<const int64_t> tokens);

  // The sequences of the last step's logits rows, in the order of their last rows in the step.
  const std::vector<int64_t>& logit_sequences() const;
  // The last step's logits, (logit_sequences().size(), V), copied to the host.
  std::vector<float> logits() const;
  // Device pointer to the same (valid until the next step).
  const float* device_logits() const;
  // The argmax of each logits row (ties: the lowest id), computed on the device. NaN logits are
  // skipped (a row of NaNs gives 0), where infer::Sampler throws on a NaN.
  std::vector<int64_t> greedy();

  // One sequence: pushes `tokens` in steps of at most max_rows_per_sequence and returns the last
  // token's logits (V) on the host (valid until the next call). Every id is checked before the
  // first step.
  std::span<const float> push(int64_t sequence, std::span<const int64_t> tokens);

  // Reads Engram layer e's rows (layer_ids order) from tables[e] instead of the model's arena: a
  // device-accessible pointer (GPU memory, or mapped pinned host memory) to float32 or bf16 rows,
  // or to fp8 / int8 rows dequantized in the gather (cuda::DeviceTable), of the model's row count
  // and width (ConfigError otherwise). Empty: the model's tables. Waits
  // for the steps in flight first, so the old tables may be freed once it returns. With
  // options().hot_rows, each given table gets a new, empty hot-row cache in GPU memory.
  void set_tables(std::vector<cuda::DeviceTable> tables);
  // Reads Engram layer e's rows from stores[e] instead (a null entry keeps the layer's table):
  // at each step, once the previous step's device work is done, the step's rows are gathered on
  // the host through the store (e.g. a memory::TieredRowStore: the file tier with its DRAM cache)
  // into a pinned, mapped staging buffer of max_step_rows * heads rows, which the GPU reads
  // over PCIe (decoded float32 rows). When the step replays a captured CUDA graph the gather
  // runs while its first layers run on the GPU: the first staged layer's row gather waits
  // (cuda::HostGate) until the host is done. Eager steps (a shape's first two, profiling, the
  // routed MoE) gather the rows before they start. A store error (an unreadable block, a
  // checksum mismatch) fails the step: it throws, the sequences keep their lengths and hash
  // state from before it and its logits are not returned (an overlapped step has already run on
  // the device, over partly stale rows: what it wrote, the cache and ring slots past each
  // sequence's length and the logits buffer, is overwritten by the next step before anything
  // reads it). Each store must have the model's row count and width
  // (ConfigError otherwise) and outlive its use here. A null entry, or an empty list for all:
  // the layer's own table (set_tables' or the model's), without hot rows: set_table_stores drops
  // every hot-row cache, and set_tables drops the stores.
  void set_table_stores(std::vector<const memory::RowStore*> stores);

  // Per Engram layer, what its hot-row cache did since set_tables or the last reset (lookups:
  // the steps' distinct rows; all zero for a layer without one).
  std::vector<memory::CacheStats> hot_row_stats() const;
  void reset_hot_row_stats();

  // Profiling: when on, each step records CUDA events between its phases, and phase_times()
  // (which waits for the device) returns the last step's phases in order with their device
  // milliseconds: "upload" (the step's inputs), "embed", per layer "engram", "mhc + norm" (before
  // and after each sublayer), "attention", "ffn dense" or "ffn moe", then "head". Off by default.
  void set_profiling(bool on);
  std::vector<std::pair<std::string, float>> phase_times() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::infer
