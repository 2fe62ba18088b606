// A fixed-capacity cache of table rows held in caller-owned slots (e.g. a device buffer of
// capacity × row_bytes). The cache only does the bookkeeping: which row sits in which slot, which
// slots to fill for a step, which rows to evict. Slot addresses are FIXED: a slot, once given to a
// row, keeps that row until the row is evicted; rows never move between slots, so the GPU side may
// bake slot addresses into a CUDA graph and only rewrite what a plan says to fill.
//
// One step = one call of plan(unique_rows): the rows every Engram lookup of the step needs, each
// once (FetchPlan gives them). Every row of the batch comes back as a hit (row, slot), a miss with
// the slot to fill (and the row evicted from it, if any), or a bypass: a miss that gets no slot
// and must be served uncached (fetched into a staging buffer). No row of the batch is evicted by
// the same batch: while plan() runs, the batch's rows are pinned. A batch can therefore be
// larger than the cache (or find it full of pinned rows): the misses that find no evictable row
// are bypassed. The slots of a plan stay valid until the next plan() call.
//
// Policies
//   kLru        plain LRU over all slots. Misses that compete for too few evictable slots are
//               admitted in a fixed hash order of their row ids (a stand-in for the arbitrary
//               order in which a step's simultaneous reads arrive), so that no id range (e.g. the
//               order-2 heads, which come first in a layer's table) is favoured.
//   kFrequency  W-TinyLFU (Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient Cache
//               Admission Policy", 2017; the policy of Caffeine). Chosen over LFU with aging
//               because n-gram traffic is Zipfian (a stable hot head that a frequency filter
//               should protect from one-off rows) but also bursty (names and phrases of the
//               current document, which a recency window catches), and because it needs
//               only a count-min sketch of 4-bit counters instead of a per-row counter kept in a
//               priority queue: every access is O(1).
//     - Slots are split into a window LRU (window_fraction of capacity, ≥ 1 row) and a main
//       segmented LRU: probation and protected (protected_fraction of main). The window takes
//       every new row, so recently popular rows get a chance to build up frequency.
//     - Every plan() adds each of its rows once to the sketch (so a row's frequency counts the
//       steps that used it). Depth 4, conservative update (only the smallest counters grow),
//       counters saturate at 15; after sample_factor × capacity additions every counter is
//       halved (aging), so old popularity decays.
//     - A hit in probation moves the row to protected (protected overflow moves its LRU row back
//       to probation); a hit elsewhere moves it to the MRU end of its segment.
//     - A miss enters the window. When the cache is full, the window's LRU row (the candidate)
//       duels the main segment's LRU row (the victim, probation first): the candidate enters
//       probation and the victim is evicted only if the sketch says the candidate is more
//       frequent; otherwise the candidate is evicted (an "admission refused"). If the window
//       holds only rows of the current batch, the new row itself duels the victim and is bypassed
//       if it loses (refused as well).
//     - Misses are admitted in descending estimated frequency (ties in the kLru hash order), so
//       when the batch overflows the cache the most frequent misses get the slots.
//     No randomness: the same sequence of plans gives the same slots.
//
// Cost: plan() is O(n log n) in the batch (one sort of the misses) and O(1) amortized per row
// otherwise. Bookkeeping per slot: 8 (row) + 8 (LRU links) + 1 (segment, pin) + 8 (hash index
// at load ≤ 1/2) = 25 bytes; kFrequency adds the sketch, sketch_counters_per_row 4-bit
// counters per slot (7 bytes at the default 14): 32 bytes. memory_bytes() reports the total.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace engram::memory {

enum class CachePolicy { kLru, kFrequency };

// Tuning of kFrequency (ignored by kLru). Caffeine starts with a 1 % window and 16 counters a
// row; on Gutenberg n-gram traffic (docs/benchmarks.md, issue 6) a 25 % window and 14 counters
// (which keep the bookkeeping at 32 bytes a row) did better at each of the sizes tried.
struct FrequencyOptions {
  double window_fraction = 0.25;    // of capacity, at least one row
  double protected_fraction = 0.8;  // of the main segment
  int64_t sample_factor = 10;       // counters are halved after sample_factor × capacity additions
  int64_t sketch_counters_per_row = 14;  // sketch size: 4-bit counters per slot (at least 1024)
};

struct CacheStats {
  int64_t lookups = 0;    // rows given to plan()
  int64_t hits = 0;       // rows found resident
  int64_t misses = 0;     // lookups - hits = fills + bypassed
  int64_t fills = 0;      // misses given a slot to fill
  int64_t bypassed = 0;   // misses served uncached (no evictable slot, or refused admission)
  int64_t evictions = 0;  // resident rows removed to free a slot; resident rows = fills - evictions
  // Admission-filter decisions that kept the resident row (kFrequency): a window candidate
  // evicted instead of the victim (also an eviction) or a new row bypassed (also a bypass).
  int64_t admissions_refused = 0;

  double hit_rate() const {
    return lookups ? static_cast<double>(hits) / static_cast<double>(lookups) : 0.0;
  }
};

struct CacheHit {
  int64_t row;
  int64_t slot;
};

struct CacheFill {
  int64_t row;
  int64_t slot;
  int64_t evicted_row;  // the row that held the slot before, or -1 for a slot never used
};

// The outcome of one plan(). slots[i] is the slot of unique_rows[i] (-1: bypassed); hits, fills
// and bypass list the same rows by kind: hits and bypass in input order, fills in the order the
// slots were assigned (a slot evicted for one fill is never reused by a later fill of the plan).
struct CachePlan {
  std::vector<int64_t> slots;
  std::vector<CacheHit> hits;
  std::vector<CacheFill> fills;
  std::vector<int64_t> bypass;
};

class RowCache {
 public:
  // Throws ConfigError for a negative capacity, one of 2^31 - 1 rows or more, or options out of
  // range (fractions outside [0, 1], sample_factor or sketch_counters_per_row < 1).
  RowCache(int64_t capacity_rows, CachePolicy policy, FrequencyOptions options = {});
  ~RowCache();
  RowCache(RowCache&&) noexcept;
  RowCache& operator=(RowCache&&) noexcept;

  int64_t capacity() const;
  CachePolicy policy() const;
  // Rows resident now.
  int64_t size() const;
  // The slot holding `row`, if resident. A pure query: no statistics, no recency update.
  std::optional<int64_t> lookup(int64_t row) const;
  // The row in `slot` (-1 when the slot was never filled). Throws InputError for a bad slot.
  int64_t row_in_slot(int64_t slot) const;

  // Plans one step. unique_rows: the step's rows, each once, in any order, each in [0, 2^62).
  // Throws InputError naming the first negative or repeated row; the cache is then unchanged.
  CachePlan plan(std::span<const int64_t> unique_rows);
  // Same, reusing `out`'s buffers.
  void plan(std::span<const int64_t> unique_rows, CachePlan& out);

  const CacheStats& stats() const;
  void reset_stats();
  // Bytes of bookkeeping held (all arrays, sized at construction).
  int64_t memory_bytes() const;
  // kFrequency: the sketch's estimate of `row`'s frequency (0..15); 0 for kLru.
  int frequency(int64_t row) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::memory
