// One step's row lookups through a RowCache whose slots live elsewhere (a buffer in GPU memory:
// infer::GpuDecoder's hot rows): which rows to copy into which slots first, and then where each
// lookup reads its row.
//
//   memory::RowCache cache(1 << 20, memory::CachePolicy::kFrequency);
//   memory::CachedLookups step;
//   memory::plan_lookups(cache, rows, step);   // rows: the step's lookups, repeats included
//   // 1. for i < step.fill_rows.size(): slots[step.fill_slots[i]] = table[step.fill_rows[i]]
//   // 2. for each lookup i: step.source[i] >= 0 ? slots[step.source[i]]
//   //                                           : table[-step.source[i] - 1]   (bypassed)
//
// The cache sees the step's distinct rows once (RowCache::plan), so its statistics count
// distinct rows a step. A row filled in this step is read from its slot (after the fills); a
// bypassed row (no slot free of this step's rows, or refused admission) from the table. The
// slots of this step's rows are not reused before the next plan_lookups.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engram/memory/row_cache.h"

namespace engram::memory {

struct CachedLookups {
  std::vector<int64_t> source;      // per lookup: its slot, or -(row + 1) (read from the table)
  std::vector<int64_t> fill_rows;   // the rows to copy into the cache first ...
  std::vector<int64_t> fill_slots;  // ... and their slots
  int64_t unique = 0;               // the step's distinct rows
  int64_t hits = 0;                 // of them resident before the step
  int64_t bypassed = 0;             // of them read from the table
  // Scratch reused across calls.
  std::vector<int64_t> unique_rows;
  CachePlan plan;
};

// rows: the step's lookups (each in [0, 2^62); repeats allowed). InputError for a negative row
// (naming it) or one of 2^62 or more (RowCache::plan's); the cache is then unchanged.
void plan_lookups(RowCache& cache, std::span<const int64_t> rows, CachedLookups& out);

}  // namespace engram::memory
