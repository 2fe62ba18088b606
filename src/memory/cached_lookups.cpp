// memory::plan_lookups (include/engram/memory/cached_lookups.h).
#include "engram/memory/cached_lookups.h"

#include <algorithm>
#include <string>

#include "engram/util/error.h"

namespace engram::memory {

void plan_lookups(RowCache& cache, std::span<const int64_t> rows, CachedLookups& out) {
  for (const int64_t r : rows) {
    if (r < 0) {
      throw InputError(error_message("plan_lookups", "row " + std::to_string(r) + " is negative"));
    }
  }
  std::vector<int64_t>& u = out.unique_rows;
  u.assign(rows.begin(), rows.end());
  std::sort(u.begin(), u.end());
  u.erase(std::unique(u.begin(), u.end()), u.end());
  cache.plan(u, out.plan);  // slots[i]: unique row i's slot, -1 bypassed
  out.unique = static_cast<int64_t>(u.size());
  out.hits = static_cast<int64_t>(out.plan.hits.size());
  out.bypassed = static_cast<int64_t>(out.plan.bypass.size());
  out.fill_rows.clear();
  out.fill_slots.clear();
  for (const CacheFill& f : out.plan.fills) {
    out.fill_rows.push_back(f.row);
    out.fill_slots.push_back(f.slot);
  }
  out.source.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto at = static_cast<size_t>(std::lower_bound(u.begin(), u.end(), rows[i]) - u.begin());
    const int64_t slot = out.plan.slots[at];
    out.source[i] = slot >= 0 ? slot : -(rows[i] + 1);
  }
}

}  // namespace engram::memory
