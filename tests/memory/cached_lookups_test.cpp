// plan_lookups: a step's lookups through a RowCache with its slots in a separate buffer (as the
// GPU decoder's hot rows keep them): after the fills, every lookup reads its own row, over many
// steps of a small cache (evictions, bypasses) with both policies; repeats read one slot; a second
// identical step hits everything; the counts; a negative row is an error that changes nothing.
#include "engram/memory/cached_lookups.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "error_of.h"

namespace engram::memory {
namespace {

// A table whose row r holds the value 1000 r + 1 (so that an unfilled slot, 0, never matches).
double table_row(int64_t row) {
  return 1000.0 * static_cast<double>(row) + 1.0;
}

// Applies a step as the device does: fills first, then each lookup from its slot or the table.
std::vector<double> read_step(const CachedLookups& s, std::vector<double>& slots) {
  for (size_t i = 0; i < s.fill_rows.size(); ++i)
    slots[static_cast<size_t>(s.fill_slots[i])] = table_row(s.fill_rows[i]);
  std::vector<double> out;
  for (const int64_t src : s.source)
    out.push_back(src >= 0 ? slots[static_cast<size_t>(src)] : table_row(-src - 1));
  return out;
}

TEST(CachedLookups, EveryLookupReadsItsRowThroughFillsEvictionsAndBypasses) {
  for (const CachePolicy policy : {CachePolicy::kLru, CachePolicy::kFrequency}) {
    SCOPED_TRACE(policy == CachePolicy::kLru ? "lru" : "frequency");
    RowCache cache(48, policy);
    std::vector<double> slots(48, 0.0);
    std::mt19937_64 rng(3);
    CachedLookups s;
    int64_t bypassed = 0, hits = 0;
    for (int step = 0; step < 200; ++step) {
      // 64 lookups a step over 300 rows, skewed so that some rows come back often.
      std::vector<int64_t> rows(64);
      for (auto& r : rows) r = static_cast<int64_t>((rng() % 300) * (rng() % 300) / 300);
      plan_lookups(cache, rows, s);
      const std::vector<double> got = read_step(s, slots);
      ASSERT_EQ(got.size(), rows.size());
      for (size_t i = 0; i < rows.size(); ++i) ASSERT_EQ(got[i], table_row(rows[i])) << step;
      const std::set<int64_t> distinct(rows.begin(), rows.end());
      EXPECT_EQ(s.unique, static_cast<int64_t>(distinct.size()));
      EXPECT_EQ(s.unique, s.hits + static_cast<int64_t>(s.fill_rows.size()) + s.bypassed);
      // The fills are distinct rows into distinct slots.
      EXPECT_EQ(std::set<int64_t>(s.fill_slots.begin(), s.fill_slots.end()).size(),
                s.fill_slots.size());
      for (size_t i = 0; i < s.fill_rows.size(); ++i)
        EXPECT_EQ(cache.row_in_slot(s.fill_slots[i]), s.fill_rows[i]);
      for (const int64_t src : s.source) EXPECT_LT(src, 48);  // a slot of the 48, or the table
      for (const int64_t slot : s.fill_slots) {
        EXPECT_GE(slot, 0);
        EXPECT_LT(slot, 48);
      }
      bypassed += s.bypassed;
      hits += s.hits;
    }
    EXPECT_GT(hits, 0);
    EXPECT_GT(bypassed, 0);  // 48 slots for up to 64 distinct rows a step
  }
}

TEST(CachedLookups, RepeatsShareASlotAndASecondStepHitsEverything) {
  RowCache cache(8, CachePolicy::kLru);
  CachedLookups s;
  const std::vector<int64_t> rows = {5, 9, 5, 2, 9, 9};
  plan_lookups(cache, rows, s);
  EXPECT_EQ(s.unique, 3);
  EXPECT_EQ(s.hits, 0);
  EXPECT_EQ(s.fill_rows.size(), 3u);
  EXPECT_EQ(s.source[0], s.source[2]);
  EXPECT_EQ(s.source[1], s.source[4]);
  EXPECT_EQ(s.source[1], s.source[5]);
  const std::vector<int64_t> first = s.source;
  plan_lookups(cache, rows, s);
  EXPECT_EQ(s.hits, 3);
  EXPECT_TRUE(s.fill_rows.empty());
  EXPECT_EQ(s.source, first);  // fixed slots
  plan_lookups(cache, {}, s);
  EXPECT_EQ(s.unique, 0);
  EXPECT_TRUE(s.source.empty());
}

TEST(CachedLookups, ACacheOfNoRowsReadsEveryRowFromTheTable) {
  RowCache cache(0, CachePolicy::kFrequency);
  CachedLookups s;
  plan_lookups(cache, std::vector<int64_t>{4, 0, 4}, s);
  EXPECT_EQ(s.source, (std::vector<int64_t>{-5, -1, -5}));
  EXPECT_EQ(s.bypassed, 2);
  EXPECT_TRUE(s.fill_rows.empty());
}

TEST(CachedLookups, ANegativeRowIsAnErrorThatChangesNothing) {
  RowCache cache(4, CachePolicy::kLru);
  CachedLookups s;
  EXPECT_EQ(test::error_of<InputError>([&] { plan_lookups(cache, std::vector<int64_t>{1, -3}, s); }),
            "plan_lookups: row -3 is negative");
  EXPECT_THROW(plan_lookups(cache, std::vector<int64_t>{int64_t{1} << 62}, s), InputError);
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.stats().lookups, 0);
}

}  // namespace
}  // namespace engram::memory
