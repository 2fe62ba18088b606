#include "engram/memory/row_cache.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <string>

#include "engram/util/error.h"

namespace engram::memory {
namespace {

constexpr int64_t kMaxCapacity = (int64_t{1} << 31) - 2;
constexpr int64_t kMaxRow = int64_t{1} << 62;
constexpr int32_t kNone = -1;

// Segments of kFrequency; kLru keeps every row in kWindow (one plain LRU list).
enum Segment : uint8_t { kWindow = 0, kProbation = 1, kProtected = 2 };
constexpr uint8_t kSegmentMask = 3;
constexpr uint8_t kPinned = 4;

constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Maps the top 32 bits of a hash onto [0, n) for n ≤ 2^32 (Lemire's multiply-shift).
inline uint64_t reduce(uint64_t hash, uint64_t n) {
  return ((hash >> 32) * n) >> 32;
}

// Count-min sketch of 4-bit counters, depth 4, conservative update, halved every
// `sample` additions.
class FrequencySketch {
 public:
  void init(int64_t counters, int64_t sample) {
    counters = std::min<int64_t>(std::max<int64_t>(counters, 1024), int64_t{1} << 32);
    counters = (counters + 15) / 16 * 16;
    words_.assign(static_cast<size_t>(counters / 16), 0);
    counters_ = static_cast<uint64_t>(counters);
    sample_ = sample;
    additions_ = 0;
  }
  bool empty() const { return words_.empty(); }

  int estimate(int64_t row) const {
    std::array<uint64_t, 4> pos;
    positions(row, pos);
    int m = 15;
    for (uint64_t p : pos) m = std::min(m, get(p));
    return m;
  }

  void increment(int64_t row) {
    std::array<uint64_t, 4> pos;
    positions(row, pos);
    int m = 15;
    for (uint64_t p : pos) m = std::min(m, get(p));
    if (m == 15) return;
    for (uint64_t p : pos) {
      if (get(p) == m) words_[p >> 4] += uint64_t{1} << ((p & 15) * 4);
    }
    if (++additions_ >= sample_) {
      for (uint64_t& w : words_) w = (w >> 1) & 0x7777777777777777ull;
      additions_ /= 2;
    }
  }

  int64_t bytes() const { return static_cast<int64_t>(words_.capacity() * sizeof(uint64_t)); }

 private:
  int get(uint64_t p) const { return static_cast<int>((words_[p >> 4] >> ((p & 15) * 4)) & 15); }
  void positions(int64_t row, std::array<uint64_t, 4>& pos) const {
    const uint64_t h = splitmix64(static_cast<uint64_t>(row) ^ 0x5bd1e9955bd1e995ull);
    for (uint64_t i = 0; i < 4; ++i) pos[i] = reduce(splitmix64(h + i), counters_);
  }

  std::vector<uint64_t> words_;
  uint64_t counters_ = 0;
  int64_t sample_ = 1, additions_ = 0;
};

// One LRU list over slots: head = most recently used, tail = least.
struct List {
  int32_t head = kNone, tail = kNone;
  int64_t size = 0, pinned = 0;
};

struct Miss {
  uint64_t key;  // admission order: ascending
  int64_t row;
  int64_t index;  // into unique_rows
};

}  // namespace

struct RowCache::Impl {
  int64_t capacity = 0;
  CachePolicy policy = CachePolicy::kLru;
  int64_t window_cap = 0, protected_cap = 0;
  int64_t used = 0;  // slots [0, used) hold rows; a slot, once filled, is never empty again
  CacheStats stats;

  std::vector<int64_t> row;         // per slot
  std::vector<int32_t> prev, next;  // per slot: LRU links (prev toward head)
  std::vector<uint8_t> flags;       // per slot: Segment | kPinned
  std::vector<int32_t> index;       // open addressing (linear probing) row -> slot, kNone empty
  std::array<List, 3> lists;
  FrequencySketch sketch;

  std::vector<int32_t> pinned_slots;  // slots pinned by the plan in progress
  std::vector<Miss> misses;
  std::vector<int64_t> hit_index;

  // ---- row -> slot index -------------------------------------------------------------------
  uint64_t home(int64_t r) const {
    return reduce(splitmix64(static_cast<uint64_t>(r)), static_cast<uint64_t>(index.size()));
  }
  uint64_t step(uint64_t b) const { return b + 1 == index.size() ? 0 : b + 1; }

  int32_t find(int64_t r) const {
    if (index.empty()) return kNone;
    for (uint64_t b = home(r);; b = step(b)) {
      const int32_t s = index[b];
      if (s == kNone || row[static_cast<size_t>(s)] == r) return s;
    }
  }
  void index_insert(int64_t r, int32_t s) {
    uint64_t b = home(r);
    while (index[b] != kNone) b = step(b);
    index[b] = s;
  }
  // Removes r (present) with backward-shift deletion, so no tombstones accumulate.
  void index_erase(int64_t r) {
    uint64_t i = home(r);
    while (row[static_cast<size_t>(index[i])] != r) i = step(i);
    for (uint64_t j = step(i);; j = step(j)) {
      const int32_t s = index[j];
      if (s == kNone) break;
      const uint64_t k = home(row[static_cast<size_t>(s)]);
      // The entry at j may move back to i unless its home lies cyclically in (i, j].
      const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (!stays) {
        index[i] = s;
        i = j;
      }
    }
    index[i] = kNone;
  }

  // ---- lists -------------------------------------------------------------------------------
  Segment segment(int32_t s) const {
    return static_cast<Segment>(flags[static_cast<size_t>(s)] & kSegmentMask);
  }
  bool pinned(int32_t s) const { return flags[static_cast<size_t>(s)] & kPinned; }

  void unlink(int32_t s) {
    const size_t u = static_cast<size_t>(s);
    List& l = lists[segment(s)];
    if (prev[u] != kNone)
      next[static_cast<size_t>(prev[u])] = next[u];
    else
      l.head = next[u];
    if (next[u] != kNone)
      prev[static_cast<size_t>(next[u])] = prev[u];
    else
      l.tail = prev[u];
    --l.size;
    if (pinned(s)) --l.pinned;
  }
  void push_mru(int32_t s, Segment seg) {
    const size_t u = static_cast<size_t>(s);
    flags[u] = static_cast<uint8_t>((flags[u] & kPinned) | seg);
    List& l = lists[seg];
    prev[u] = kNone;
    next[u] = l.head;
    if (l.head != kNone)
      prev[static_cast<size_t>(l.head)] = s;
    else
      l.tail = s;
    l.head = s;
    ++l.size;
    if (pinned(s)) ++l.pinned;
  }
  void move_mru(int32_t s, Segment seg) {
    unlink(s);
    push_mru(s, seg);
  }
  void pin(int32_t s) {
    flags[static_cast<size_t>(s)] |= kPinned;
    ++lists[segment(s)].pinned;
    pinned_slots.push_back(s);
  }
  void unpin_all() {
    for (int32_t s : pinned_slots) {
      flags[static_cast<size_t>(s)] &= static_cast<uint8_t>(~kPinned);
      --lists[segment(s)].pinned;
    }
    pinned_slots.clear();
  }
  // The least recently used unpinned slot of a segment, or kNone. Pinned rows found at the LRU
  // end were used by this batch, so they move to the MRU end on the way (amortized O(1)).
  int32_t lru_unpinned(Segment seg) {
    List& l = lists[seg];
    if (l.size == l.pinned) return kNone;
    while (pinned(l.tail)) move_mru(l.tail, seg);
    return l.tail;
  }

  int freq(int64_t r) const { return sketch.empty() ? 0 : sketch.estimate(r); }

  // A hit: recency update (and promotion from probation under kFrequency).
  void touch(int32_t s) {
    const Segment seg = segment(s);
    if (seg != kProbation) {
      move_mru(s, seg);
      return;
    }
    move_mru(s, kProtected);
    if (lists[kProtected].size > protected_cap) move_mru(lists[kProtected].tail, kProbation);
  }

  // Puts row r into slot s (evicting its row, if any) at the window's MRU end, pinned.
  void place(int32_t s, int64_t r, CachePlan& out) {
    const size_t u = static_cast<size_t>(s);
    int64_t evicted = -1;
    if (static_cast<int64_t>(s) < used) {
      evicted = row[u];
      index_erase(evicted);
      unlink(s);
      ++stats.evictions;
    } else {
      ++used;
    }
    row[u] = r;
    flags[u] = 0;
    index_insert(r, s);
    push_mru(s, kWindow);
    pin(s);
    out.fills.push_back({r, s, evicted});
    ++stats.fills;
  }

  // The slot for a miss of row r once the cache is full, or kNone (bypass). May move rows
  // between segments; the slot returned still holds its old row (place() evicts it).
  int32_t make_room(int64_t r) {
    const int32_t candidate = lru_unpinned(kWindow);
    if (policy == CachePolicy::kLru) return candidate;
    int32_t victim = lru_unpinned(kProbation);
    if (victim == kNone) victim = lru_unpinned(kProtected);
    if (candidate != kNone) {
      if (victim == kNone) return candidate;
      if (freq(row[static_cast<size_t>(candidate)]) > freq(row[static_cast<size_t>(victim)])) {
        move_mru(candidate, kProbation);
        return victim;
      }
      ++stats.admissions_refused;
      return candidate;
    }
    // The window holds only rows of this batch: the new row itself must beat the victim.
    if (victim == kNone) return kNone;
    if (freq(r) > freq(row[static_cast<size_t>(victim)])) {
      move_mru(lists[kWindow].tail, kProbation);  // keeps the window at its size
      return victim;
    }
    ++stats.admissions_refused;
    return kNone;
  }

  [[noreturn]] void fail_repeated(std::span<const int64_t> rows, int64_t i) {
    unpin_all();
    throw InputError(error_message("RowCache::plan",
                                   "unique_rows[" + std::to_string(i) +
                                       "] = " + std::to_string(rows[static_cast<size_t>(i)]) +
                                       " appears more than once (rows of a step must be unique)"));
  }

  void plan(std::span<const int64_t> rows, CachePlan& out) {
    const int64_t n = static_cast<int64_t>(rows.size());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = rows[static_cast<size_t>(i)];
      if (r < 0 || r >= kMaxRow) {
        throw InputError(error_message("RowCache::plan", "unique_rows[" + std::to_string(i) +
                                                             "] = " + std::to_string(r) +
                                                             " is outside [0, 2^62)"));
      }
    }
    out.slots.assign(rows.size(), -1);
    out.hits.clear();
    out.fills.clear();
    out.bypass.clear();

    // Classify (and check uniqueness) before changing anything.
    misses.clear();
    hit_index.clear();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = rows[static_cast<size_t>(i)];
      const int32_t s = find(r);
      if (s == kNone) {
        uint64_t key = splitmix64(static_cast<uint64_t>(r) ^ 0x2545f4914f6cdd1dull) >> 4;
        if (policy == CachePolicy::kFrequency) key |= static_cast<uint64_t>(15 - freq(r)) << 60;
        misses.push_back({key, r, i});
        continue;
      }
      if (pinned(s)) fail_repeated(rows, i);  // pinned by an earlier copy in this batch
      pin(s);
      out.slots[static_cast<size_t>(i)] = s;
      hit_index.push_back(i);
    }
    std::sort(misses.begin(), misses.end(), [](const Miss& a, const Miss& b) {
      return a.key != b.key ? a.key < b.key : a.row < b.row;
    });
    for (size_t k = 1; k < misses.size(); ++k) {
      if (misses[k].row == misses[k - 1].row) {
        fail_repeated(rows, std::max(misses[k].index, misses[k - 1].index));
      }
    }

    if (!sketch.empty()) {
      for (int64_t r : rows) sketch.increment(r);
    }
    for (int64_t i : hit_index) {
      const int32_t s = static_cast<int32_t>(out.slots[static_cast<size_t>(i)]);
      touch(s);
      out.hits.push_back({rows[static_cast<size_t>(i)], s});
    }
    for (const Miss& m : misses) {
      int32_t s = kNone;
      if (used < capacity) {
        s = static_cast<int32_t>(used);
      } else if (capacity > 0) {
        s = make_room(m.row);
      }
      if (s == kNone) {
        out.bypass.push_back(m.index);  // rows, once sorted back into input order below
        continue;
      }
      place(s, m.row, out);
      out.slots[static_cast<size_t>(m.index)] = s;
      // While the cache fills, the window's overflow goes to probation without a duel.
      if (policy == CachePolicy::kFrequency && lists[kWindow].size > window_cap) {
        move_mru(lists[kWindow].tail, kProbation);
      }
    }
    std::sort(out.bypass.begin(), out.bypass.end());
    for (int64_t& b : out.bypass) b = rows[static_cast<size_t>(b)];
    unpin_all();

    stats.lookups += n;
    stats.hits += static_cast<int64_t>(out.hits.size());
    stats.misses += static_cast<int64_t>(misses.size());
    stats.bypassed += static_cast<int64_t>(out.bypass.size());
  }
};

RowCache::RowCache(int64_t capacity_rows, CachePolicy policy, FrequencyOptions options)
    : impl_(std::make_unique<Impl>()) {
  const auto bad = [](const std::string& what) {
    throw ConfigError(error_message("RowCache", what));
  };
  if (capacity_rows < 0 || capacity_rows > kMaxCapacity) {
    bad("capacity_rows = " + std::to_string(capacity_rows) + " is outside [0, " +
        std::to_string(kMaxCapacity) + "]");
  }
  if (!(options.window_fraction >= 0 && options.window_fraction <= 1)) {
    bad("window_fraction = " + std::to_string(options.window_fraction) + " is outside [0, 1]");
  }
  if (!(options.protected_fraction >= 0 && options.protected_fraction <= 1)) {
    bad("protected_fraction = " + std::to_string(options.protected_fraction) +
        " is outside [0, 1]");
  }
  if (options.sample_factor < 1) {
    bad("sample_factor = " + std::to_string(options.sample_factor) + " must be at least 1");
  }
  if (options.sketch_counters_per_row < 1) {
    bad("sketch_counters_per_row = " + std::to_string(options.sketch_counters_per_row) +
        " must be at least 1");
  }
  Impl& m = *impl_;
  m.capacity = capacity_rows;
  m.policy = policy;
  const size_t c = static_cast<size_t>(capacity_rows);
  m.row.assign(c, -1);
  m.prev.assign(c, kNone);
  m.next.assign(c, kNone);
  m.flags.assign(c, 0);
  m.index.assign(2 * c, kNone);
  if (policy == CachePolicy::kLru) {
    m.window_cap = capacity_rows;
  } else {
    const auto window =
        static_cast<int64_t>(options.window_fraction * static_cast<double>(capacity_rows));
    m.window_cap = std::min(capacity_rows, std::max<int64_t>(1, window));
    m.protected_cap = static_cast<int64_t>(options.protected_fraction *
                                           static_cast<double>(capacity_rows - m.window_cap));
    if (capacity_rows > 0) {
      m.sketch.init(capacity_rows * options.sketch_counters_per_row,
                    capacity_rows * options.sample_factor);
    }
  }
}

RowCache::~RowCache() = default;
RowCache::RowCache(RowCache&&) noexcept = default;
RowCache& RowCache::operator=(RowCache&&) noexcept = default;

int64_t RowCache::capacity() const {
  return impl_->capacity;
}
CachePolicy RowCache::policy() const {
  return impl_->policy;
}
int64_t RowCache::size() const {
  return impl_->used;
}
const CacheStats& RowCache::stats() const {
  return impl_->stats;
}
void RowCache::reset_stats() {
  impl_->stats = {};
}
int RowCache::frequency(int64_t row) const {
  return impl_->freq(row);
}

std::optional<int64_t> RowCache::lookup(int64_t row) const {
  const int32_t s = impl_->find(row);
  if (s == kNone) return std::nullopt;
  return s;
}

int64_t RowCache::row_in_slot(int64_t slot) const {
  if (slot < 0 || slot >= impl_->capacity) {
    throw InputError(
        error_message("RowCache::row_in_slot", "slot " + std::to_string(slot) + " is outside [0, " +
                                                   std::to_string(impl_->capacity) + ")"));
  }
  return impl_->row[static_cast<size_t>(slot)];
}

CachePlan RowCache::plan(std::span<const int64_t> unique_rows) {
  CachePlan out;
  impl_->plan(unique_rows, out);
  return out;
}

void RowCache::plan(std::span<const int64_t> unique_rows, CachePlan& out) {
  impl_->plan(unique_rows, out);
}

int64_t RowCache::memory_bytes() const {
  const Impl& m = *impl_;
  return static_cast<int64_t>(m.row.capacity() * sizeof(int64_t) +
                              (m.prev.capacity() + m.next.capacity()) * sizeof(int32_t) +
                              m.flags.capacity() + m.index.capacity() * sizeof(int32_t)) +
         m.sketch.bytes();
}

}  // namespace engram::memory
