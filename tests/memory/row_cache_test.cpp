// RowCache: exact LRU order, scan resistance of the frequency policy, edge capacities, batches
// larger than the cache, fixed slots, statistics, determinism and errors.
#include "engram/memory/row_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "engram/util/error.h"

namespace engram::memory {
namespace {

CachePlan step(RowCache& cache, std::vector<int64_t> rows) {
  return cache.plan(rows);
}

int64_t resident(const RowCache& cache, int64_t first, int64_t last) {
  int64_t n = 0;
  for (int64_t r = first; r < last; ++r) n += cache.lookup(r).has_value();
  return n;
}

TEST(RowCache, LruEvictsInExactLeastRecentlyUsedOrder) {
  RowCache cache(3, CachePolicy::kLru);
  for (int64_t r : {1, 2, 3}) {
    const CachePlan p = step(cache, {r});
    ASSERT_EQ(p.fills.size(), 1u);
    EXPECT_EQ(p.fills[0].slot, r - 1);  // free slots are handed out in order
    EXPECT_EQ(p.fills[0].evicted_row, -1);
  }
  EXPECT_EQ(step(cache, {1}).hits.size(), 1u);  // order now (LRU first) 2, 3, 1
  struct Expect {
    int64_t row, evicted, slot;
  };
  for (const Expect& e : {Expect{4, 2, 1}, Expect{5, 3, 2}, Expect{6, 1, 0}, Expect{7, 4, 1}}) {
    const CachePlan p = step(cache, {e.row});
    ASSERT_EQ(p.fills.size(), 1u) << e.row;
    EXPECT_EQ(p.fills[0].evicted_row, e.evicted) << e.row;
    EXPECT_EQ(p.fills[0].slot, e.slot) << e.row;
    EXPECT_FALSE(cache.lookup(e.evicted).has_value());
    EXPECT_EQ(cache.lookup(e.row), e.slot);
  }
  EXPECT_EQ(cache.stats().evictions, 4);
}

TEST(RowCache, NeverEvictsARowOfTheSameBatch) {
  RowCache cache(2, CachePolicy::kLru);
  step(cache, {1});
  step(cache, {2});
  // 1 is the least recently used row but is needed by this batch; 2 is evicted for one miss and
  // the other miss finds nothing evictable.
  const CachePlan p = step(cache, {3, 1, 4});
  ASSERT_EQ(p.hits.size(), 1u);
  EXPECT_EQ(p.hits[0].row, 1);
  EXPECT_EQ(p.hits[0].slot, 0);
  ASSERT_EQ(p.fills.size(), 1u);
  EXPECT_EQ(p.fills[0].evicted_row, 2);
  EXPECT_EQ(p.fills[0].slot, 1);
  ASSERT_EQ(p.bypass.size(), 1u);
  EXPECT_EQ(p.slots[1], 0);
  EXPECT_EQ(p.slots[p.fills[0].row == 3 ? 0 : 2], 1);
  EXPECT_EQ(p.slots[p.fills[0].row == 3 ? 2 : 0], -1);
  EXPECT_EQ(cache.lookup(1), 0);
}

TEST(RowCache, FrequencyPolicyKeepsTheHotSetThroughAScanThatFlushesLru) {
  // 60 hot rows used in each of 20 steps, then a one-time sweep over 500 cold rows, 10 a step
  // (five times the capacity: LRU keeps none of the hot rows).
  std::vector<int64_t> hot(60);
  std::iota(hot.begin(), hot.end(), 0);
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache cache(100, policy);
    for (int s = 0; s < 20; ++s) cache.plan(hot);
    EXPECT_EQ(resident(cache, 0, 60), 60);
    for (int64_t first = 1000; first < 1500; first += 10) {
      std::vector<int64_t> cold(10);
      std::iota(cold.begin(), cold.end(), first);
      cache.plan(cold);
    }
    const int64_t refused = cache.stats().admissions_refused;
    cache.reset_stats();
    cache.plan(hot);
    if (policy == CachePolicy::kLru) {
      EXPECT_EQ(cache.stats().hits, 0) << "LRU keeps only the last 100 cold rows";
    } else {
      EXPECT_EQ(cache.stats().hits, 60) << "the sweep must not flush the hot rows";
      EXPECT_GT(refused, 400) << "most cold rows are refused";
    }
  }
}

TEST(RowCache, FrequencyPolicyAdmitsANewlyHotRow) {
  // Rows that become popular later replace rows whose popularity has faded.
  RowCache cache(20, CachePolicy::kFrequency);
  std::vector<int64_t> old_set(20), new_set(20);
  std::iota(old_set.begin(), old_set.end(), 0);
  std::iota(new_set.begin(), new_set.end(), 100);
  for (int s = 0; s < 10; ++s) cache.plan(old_set);
  for (int s = 0; s < 60; ++s) cache.plan(new_set);
  EXPECT_GE(resident(cache, 100, 120), 19);
}

TEST(RowCache, SketchCountsStepsAndSaturates) {
  RowCache cache(1000, CachePolicy::kFrequency);
  for (int s = 1; s <= 20; ++s) {
    step(cache, {42});
    EXPECT_EQ(cache.frequency(42), std::min(s, 15));
  }
  EXPECT_EQ(cache.frequency(43), 0);
  EXPECT_EQ(RowCache(10, CachePolicy::kLru).frequency(1), 0);
}

TEST(RowCache, SketchAgesByHalving) {
  // Capacity 10: counters are halved after 100 additions.
  RowCache cache(10, CachePolicy::kFrequency);
  for (int s = 0; s < 12; ++s) step(cache, {7});
  EXPECT_EQ(cache.frequency(7), 12);
  for (int64_t first = 1000; first < 1088; first += 8) {
    std::vector<int64_t> rows(8);
    std::iota(rows.begin(), rows.end(), first);
    cache.plan(rows);
  }
  EXPECT_EQ(cache.frequency(7), 6);
}

TEST(RowCache, CapacityZeroBypassesEverything) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache cache(0, policy);
    const CachePlan p = step(cache, {5, 1, 9});
    EXPECT_TRUE(p.hits.empty());
    EXPECT_TRUE(p.fills.empty());
    EXPECT_EQ(p.bypass, (std::vector<int64_t>{5, 1, 9}));
    EXPECT_EQ(p.slots, (std::vector<int64_t>{-1, -1, -1}));
    EXPECT_FALSE(cache.lookup(5).has_value());
    EXPECT_EQ(cache.size(), 0);
    EXPECT_EQ(cache.stats().lookups, 3);
    EXPECT_EQ(cache.stats().bypassed, 3);
    EXPECT_EQ(cache.stats().evictions, 0);
    EXPECT_TRUE(step(cache, {}).slots.empty());
  }
}

TEST(RowCache, CapacityOneHoldsTheLastRow) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache cache(1, policy);
    EXPECT_EQ(step(cache, {5}).fills.at(0).slot, 0);
    EXPECT_EQ(step(cache, {5}).hits.at(0).slot, 0);
    const CachePlan p = step(cache, {6});
    ASSERT_EQ(p.fills.size(), 1u);
    EXPECT_EQ(p.fills[0].evicted_row, 5);
    EXPECT_EQ(p.fills[0].slot, 0);
    EXPECT_EQ(cache.row_in_slot(0), 6);
    const CachePlan two = step(cache, {7, 8});
    EXPECT_EQ(two.fills.size(), 1u);
    EXPECT_EQ(two.bypass.size(), 1u);
    EXPECT_EQ(cache.size(), 1);
  }
}

TEST(RowCache, BatchLargerThanTheCacheBypassesTheExcess) {
  std::vector<int64_t> rows(25);
  std::iota(rows.begin(), rows.end(), 100);
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache cache(10, policy);
    CachePlan p = cache.plan(rows);
    EXPECT_EQ(p.fills.size(), 10u);
    EXPECT_EQ(p.bypass.size(), 15u);
    EXPECT_TRUE(std::is_sorted(p.bypass.begin(), p.bypass.end()));  // input order
    EXPECT_EQ(std::count(p.slots.begin(), p.slots.end(), -1), 15);
    // The same batch again: the ten resident rows hit, and since they are pinned the other
    // fifteen find nothing to evict.
    p = cache.plan(rows);
    EXPECT_EQ(p.hits.size(), 10u);
    EXPECT_TRUE(p.fills.empty());
    EXPECT_EQ(p.bypass.size(), 15u);
    EXPECT_EQ(cache.stats().lookups, 50);
    EXPECT_EQ(cache.stats().hits, 10);
    EXPECT_EQ(cache.stats().bypassed, 30);
  }
}

// A deterministic random trace of batches with a Zipf-like skew.
std::vector<std::vector<int64_t>> random_trace(uint64_t seed, int steps, int64_t universe) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> trace;
  for (int s = 0; s < steps; ++s) {
    std::set<int64_t> rows;
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      rows.insert(static_cast<int64_t>(static_cast<double>(universe) * u * u * u));
    }
    std::vector<int64_t> v(rows.begin(), rows.end());
    std::shuffle(v.begin(), v.end(), rng);
    trace.push_back(std::move(v));
  }
  return trace;
}

TEST(RowCache, SlotsNeverMoveWhileTheirRowStaysResident) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    for (int64_t capacity : {1, 7, 50, 200}) {
      RowCache cache(capacity, policy);
      std::map<int64_t, int64_t> slot_of;  // our record of the cache
      std::map<int64_t, int64_t> row_of;
      for (const auto& rows : random_trace(3, 400, 1000)) {
        const CachePlan p = cache.plan(rows);
        ASSERT_EQ(p.slots.size(), rows.size());
        ASSERT_EQ(p.hits.size() + p.fills.size() + p.bypass.size(), rows.size());
        std::set<int64_t> used_slots;
        for (const CacheHit& h : p.hits) {
          ASSERT_EQ(slot_of.at(h.row), h.slot) << "a resident row moved";
          ASSERT_TRUE(used_slots.insert(h.slot).second);
        }
        for (const CacheFill& f : p.fills) {
          ASSERT_GE(f.slot, 0);
          ASSERT_LT(f.slot, capacity);
          ASSERT_TRUE(used_slots.insert(f.slot).second) << "slot given twice in one plan";
          ASSERT_FALSE(slot_of.count(f.row));
          const auto it = row_of.find(f.slot);
          ASSERT_EQ(it == row_of.end() ? -1 : it->second, f.evicted_row);
          // The evicted row is not needed by this batch.
          ASSERT_EQ(std::find(rows.begin(), rows.end(), f.evicted_row), rows.end());
          if (f.evicted_row >= 0) slot_of.erase(f.evicted_row);
          slot_of[f.row] = f.slot;
          row_of[f.slot] = f.row;
        }
        for (size_t i = 0; i < rows.size(); ++i) {
          const auto it = slot_of.find(rows[i]);
          ASSERT_EQ(p.slots[i], it == slot_of.end() ? -1 : it->second);
        }
        ASSERT_EQ(cache.size(), static_cast<int64_t>(slot_of.size()));
      }
      for (const auto& [row, slot] : slot_of) {
        ASSERT_EQ(cache.lookup(row), slot);
        ASSERT_EQ(cache.row_in_slot(slot), row);
      }
    }
  }
}

TEST(RowCache, StatsAddUp) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache cache(40, policy);
    int64_t lookups = 0, hits = 0, fills = 0, bypassed = 0;
    for (const auto& rows : random_trace(5, 500, 800)) {
      const CachePlan p = cache.plan(rows);
      lookups += static_cast<int64_t>(rows.size());
      hits += static_cast<int64_t>(p.hits.size());
      fills += static_cast<int64_t>(p.fills.size());
      bypassed += static_cast<int64_t>(p.bypass.size());
    }
    const CacheStats& s = cache.stats();
    EXPECT_EQ(s.lookups, lookups);
    EXPECT_EQ(s.hits, hits);
    EXPECT_EQ(s.fills, fills);
    EXPECT_EQ(s.bypassed, bypassed);
    EXPECT_EQ(s.lookups, s.hits + s.misses);
    EXPECT_EQ(s.misses, s.fills + s.bypassed);
    EXPECT_EQ(cache.size(), s.fills - s.evictions);
    EXPECT_EQ(cache.size(), 40);
    EXPECT_LE(s.admissions_refused, s.evictions + s.bypassed);
    if (policy == CachePolicy::kLru) {
      EXPECT_EQ(s.admissions_refused, 0);
    } else {
      EXPECT_GT(s.admissions_refused, 0);
    }
    EXPECT_DOUBLE_EQ(s.hit_rate(), static_cast<double>(hits) / static_cast<double>(lookups));
  }
}

TEST(RowCache, SameTraceGivesSameSlots) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache a(64, policy), b(64, policy);
    for (const auto& rows : random_trace(9, 300, 2000)) {
      const CachePlan pa = a.plan(rows), pb = b.plan(rows);
      ASSERT_EQ(pa.slots, pb.slots);
      ASSERT_EQ(pa.bypass, pb.bypass);
      ASSERT_EQ(pa.fills.size(), pb.fills.size());
      for (size_t i = 0; i < pa.fills.size(); ++i) {
        ASSERT_EQ(pa.fills[i].row, pb.fills[i].row);
        ASSERT_EQ(pa.fills[i].evicted_row, pb.fills[i].evicted_row);
      }
    }
  }
}

TEST(RowCache, RepeatedOrNegativeRowsThrowAndChangeNothing) {
  for (CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    RowCache cache(4, policy), twin(4, policy);
    step(cache, {1, 2});
    step(twin, {1, 2});
    EXPECT_THROW(step(cache, {3, 1, 1}), InputError);  // a repeated hit
    EXPECT_THROW(step(cache, {7, 3, 7}), InputError);  // a repeated miss
    EXPECT_THROW(step(cache, {3, -1}), InputError);
    try {
      step(cache, {5, 9, 5});
      FAIL();
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("unique_rows[2] = 5"), std::string::npos) << e.what();
    }
    EXPECT_EQ(cache.stats().lookups, twin.stats().lookups);
    EXPECT_EQ(cache.frequency(3), twin.frequency(3));
    EXPECT_EQ(step(cache, {3, 1, 4}).slots, step(twin, {3, 1, 4}).slots);
    EXPECT_EQ(step(cache, {2, 5, 6}).slots, step(twin, {2, 5, 6}).slots);
  }
}

TEST(RowCache, BadConfigurationThrows) {
  EXPECT_THROW(RowCache(-1, CachePolicy::kLru), ConfigError);
  EXPECT_THROW(RowCache(int64_t{1} << 31, CachePolicy::kLru), ConfigError);
  FrequencyOptions o;
  o.window_fraction = 1.5;
  EXPECT_THROW(RowCache(10, CachePolicy::kFrequency, o), ConfigError);
  o = {};
  o.sample_factor = 0;
  EXPECT_THROW(RowCache(10, CachePolicy::kFrequency, o), ConfigError);
  RowCache cache(3, CachePolicy::kLru);
  EXPECT_THROW(cache.row_in_slot(3), InputError);
  EXPECT_EQ(cache.row_in_slot(2), -1);
}

TEST(RowCache, BookkeepingStaysWithin32BytesARow) {  // at the default options
  constexpr int64_t kRows = 1 << 20;
  EXPECT_LE(RowCache(kRows, CachePolicy::kLru).memory_bytes(), 25 * kRows);
  EXPECT_LE(RowCache(kRows, CachePolicy::kFrequency).memory_bytes(), 32 * kRows);
}

}  // namespace
}  // namespace engram::memory
