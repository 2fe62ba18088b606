// Fetches a step's Engram rows ahead of the layers that use them.
//
// Hashing needs only token ids, so at the start of a step every Engram layer's rows are known
// (a FetchPlan). begin_step(plan) hands them to a background thread, which fetches them at once,
// layer by layer in consumption order (FetchPlan::consumption_order(): ascending layer id), each
// layer's unique rows in file order and in pieces of chunk_rows rows, while the model runs the
// blocks before the first Engram layer. Before an Engram layer the model calls wait_layer(l),
// which returns when layer l's rows are resident (at once if the fetch is ahead) and says how
// long it stalled; gather(l, …) / gather_layer(l, …) then read them from memory, with no I/O.
//
// Where the rows live: a step-local staging area, one buffer per layer of unique_rows ·
// row_bytes encoded bytes, filled through TieredRowStore::gather_encoded, which also admits the
// rows to the store's DRAM cache (so later steps hit). The staging area exists because the cache
// cannot hold a step for its duration: RowCache pins rows only within one plan() call, so with a
// cache smaller than the step's rows (the usual case: a 1-5 % cache is a few steps' rows, and
// the frequency policy may refuse admission) the fetch of layer l+1 could evict layer l's rows
// before the model has read them. Staging costs unique_rows · row_bytes per layer (50 k rows of
// 128 bytes: 6.4 MB), is what a GPU step copies to the device anyway, and makes "resident" a
// guarantee instead of a likelihood. The staging of a step is freed at the next begin_step.
//
// Layers are numbered by their position in plan.layers() (as FetchItem::layer), in wait_layer,
// gather and the statistics. stores[i] holds the table of plan.layers()[i]; a single store serves
// every layer (one table shared by all layers). The stores are used from the worker thread while
// the model gathers from them too (TieredRowStore is safe for that) and must outlive the
// Prefetcher.
//
// Errors: a fetch that fails (a block failing its checksum: FormatError naming the file, block
// and rows; an IoError) fails that layer only; wait_layer(l) and gather(l) rethrow the same
// exception, and the following layers are still fetched. begin_step while a step is in flight
// cancels it (the worker stops after the chunk it is reading; unfetched layers of the old step
// are dropped); cancel() does the same; wait_layer on a layer that was cancelled throws
// InputError. The destructor cancels and joins the worker: no thread outlives the Prefetcher.
//
// Threads: begin_step and cancel are for one thread (the model's). wait_layer, gather,
// gather_layer and step_stats may be called from several threads at once between two
// begin_steps (an Engram layer gathers its rows from the thread pool's workers).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "engram/memory/fetch_plan.h"
#include "engram/memory/tiered_store.h"

namespace engram::memory {

struct PrefetcherOptions {
  int64_t chunk_rows = 8192;  // rows per gather_encoded call: the cancellation granularity
  // Test hook, called on the worker thread when a layer's fetch has finished (its rows are
  // resident, or it failed), before the next layer's first read is issued.
  std::function<void(size_t layer)> on_layer_done;
};

struct LayerPrefetchStats {
  int layer_id = 0;
  int64_t requested = 0;    // (token, head) reads of the layer
  int64_t unique = 0;       // rows fetched (distinct)
  int64_t hits = 0;         // of those, found in the DRAM cache
  int64_t blocks_read = 0;  // 4096-byte blocks read from the file
  int64_t bytes_read = 0;
  double io_seconds = 0;     // the worker's time blocked on reads
  double fetch_seconds = 0;  // from the layer's first read to resident
  double ready_seconds = 0;  // from begin_step to resident
  double stall_seconds = 0;  // time wait_layer (and gather) blocked waiting for it
  int64_t gathered = 0;      // rows handed out by gather and gather_layer
  bool done = false;         // fetched (or failed)
  bool failed = false;

  double hit_rate() const {
    return unique ? static_cast<double>(hits) / static_cast<double>(unique) : 0.0;
  }
};

struct StepPrefetchStats {
  std::vector<LayerPrefetchStats> layers;  // plan.layers() order
  int64_t requested = 0, unique = 0, hits = 0, blocks_read = 0, bytes_read = 0;
  double stall_seconds = 0;

  double hit_rate() const {
    return unique ? static_cast<double>(hits) / static_cast<double>(unique) : 0.0;
  }
};

class Prefetcher {
 public:
  // Throws ConfigError for no store, a null store or chunk_rows < 1.
  explicit Prefetcher(std::vector<const TieredRowStore*> stores, PrefetcherOptions options = {});
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Starts fetching the step's rows (cancelling a step still in flight). Throws ConfigError when
  // the plan's layer count does not match the stores (unless there is one store), InputError for
  // a row out of a layer's table (checked here, before the worker starts).
  void begin_step(FetchPlan plan);
  // Blocks until layer l's rows are resident; returns the seconds it blocked. Rethrows the
  // layer's fetch error; InputError for a layer out of range, or cancelled, or no step begun.
  double wait_layer(size_t layer);
  // out[i * stride + j] = value j of row rows[i] of layer l's table (waits for the layer first).
  // Rows the plan did not list for the layer are read through the layer's store.
  void gather(size_t layer, std::span<const int64_t> rows, float* out, int64_t stride);
  void gather(size_t layer, std::span<const int64_t> rows, double* out, int64_t stride);
  // The layer's (token, head) reads in plan order: out[(t · heads + h) · stride + j] is value j of
  // the row read by token t, head h (plan.layers()[l].index). Waits for the layer first.
  void gather_layer(size_t layer, float* out, int64_t stride);
  void gather_layer(size_t layer, double* out, int64_t stride);
  // Stops the step's fetching and waits until the worker is idle.
  void cancel();

  // Statistics of the current (or last) step; totals over its layers.
  StepPrefetchStats step_stats() const;
  // The step's plan (empty before the first begin_step).
  const FetchPlan& plan() const { return plan_; }

 private:
  enum class LayerState { kPending, kReady, kFailed, kCancelled };
  void run();  // the worker
  const TieredRowStore& store(size_t layer) const;
  void check_layer(size_t layer) const;
  template <class Out>
  void gather_as(size_t layer, std::span<const int64_t> rows, Out* out, int64_t stride);
  template <class Out>
  void gather_layer_as(size_t layer, Out* out, int64_t stride);

  std::vector<const TieredRowStore*> stores_;
  PrefetcherOptions options_;

  // The step: written by begin_step while the worker is idle, read by the worker while busy.
  FetchPlan plan_;
  std::vector<std::vector<uint8_t>> staging_;  // per layer: unique rows · row_bytes

  mutable std::mutex mu_;  // guards what follows
  std::condition_variable cv_;
  bool has_step_ = false;  // a step was begun
  bool work_ = false;      // a step is waiting for the worker
  bool busy_ = false;      // the worker is fetching a step
  bool cancel_ = false;
  bool shutdown_ = false;
  std::vector<LayerState> state_;
  std::vector<std::exception_ptr> error_;
  std::vector<LayerPrefetchStats> stats_;
  std::thread worker_;  // last: started when everything above exists
};

}  // namespace engram::memory
