// FetchPlan: per-layer deduplication on hand-made inputs and on real hasher output, the
// consumption order, statistics, empty inputs, errors, and grouping rows by file block.
#include "engram/memory/fetch_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/util/error.h"

namespace engram::memory {
namespace {

using V64 = std::vector<int64_t>;
using V32 = std::vector<int32_t>;

TEST(FetchPlan, DeduplicatesOneLayer) {
  // 3 tokens × 2 heads, head 1's rows start at 10.
  const V32 ids = {1, 2, 1, 3, 0, 2};  // rows 1 12 | 1 13 | 0 12
  const FetchPlan plan = FetchPlan::build(ids, 3, {1}, {{0, 10}});
  ASSERT_EQ(plan.layers().size(), 1u);
  const LayerFetch& l = plan.layers()[0];
  EXPECT_EQ(l.layer_id, 1);
  EXPECT_EQ(l.rows, (V64{0, 1, 12, 13}));
  EXPECT_EQ(l.requests, (V32{1, 2, 2, 1}));
  EXPECT_EQ(l.index, (V32{1, 2, 1, 3, 0, 2}));
  const FetchStats s = plan.stats();
  EXPECT_EQ(s.requested, 6);
  EXPECT_EQ(s.unique, 4);
  EXPECT_EQ(s.duplicates_removed(), 2);
  EXPECT_EQ(s.unique_bytes(264), 4 * 264);
  EXPECT_EQ(s.requested_bytes(264), 6 * 264);
}

TEST(FetchPlan, LayersAreDeduplicatedSeparatelyAndCombinedInConsumptionOrder) {
  // layer_ids {15, 1}: the hasher's order; the model consumes layer 1 first.
  const V64 rows = {/* layer 15 */ 5, 5, 9, 2,
                    /* layer 1 */ 9,  3, 3, 3};
  const FetchPlan plan = FetchPlan::build_from_rows(rows, 2, 2, {15, 1});
  EXPECT_EQ(plan.layers()[0].rows, (V64{2, 5, 9}));
  EXPECT_EQ(plan.layers()[1].rows, (V64{3, 9}));
  EXPECT_EQ(plan.layers()[1].requests, (V32{3, 1}));
  EXPECT_EQ(plan.consumption_order(), (V32{1, 0}));
  const std::vector<FetchItem> c = plan.combined();
  ASSERT_EQ(c.size(), 5u);
  const std::vector<std::pair<int32_t, int64_t>> expect = {{1, 3}, {1, 9}, {0, 2}, {0, 5}, {0, 9}};
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_EQ(c[i].layer, expect[i].first);
    EXPECT_EQ(c[i].row, expect[i].second);
  }
  EXPECT_EQ(plan.stats().requested, 8);
  EXPECT_EQ(plan.stats().unique, 5);
}

TEST(FetchPlan, EmptyInputs) {
  const FetchPlan none = FetchPlan::build({}, 0, {}, {});
  EXPECT_TRUE(none.layers().empty());
  EXPECT_TRUE(none.combined().empty());
  EXPECT_EQ(none.stats().requested, 0);
  const FetchPlan no_tokens = FetchPlan::build({}, 0, {1, 15}, {{0, 7}, {0, 7}});
  ASSERT_EQ(no_tokens.layers().size(), 2u);
  EXPECT_TRUE(no_tokens.layers()[1].rows.empty());
  EXPECT_TRUE(no_tokens.layers()[1].index.empty());
  EXPECT_TRUE(no_tokens.combined().empty());
  EXPECT_EQ(no_tokens.stats().unique, 0);
}

TEST(FetchPlan, BadInputThrows) {
  EXPECT_THROW(FetchPlan::build(V32{1, 2, 3}, 1, {1}, {{0, 10}}), InputError);  // shape
  EXPECT_THROW(FetchPlan::build(V32{1, -2}, 1, {1}, {{0, 10}}), InputError);    // negative id
  EXPECT_THROW(FetchPlan::build(V32{1, 2}, 1, {1}, {{0, 10}, {0, 10}}), InputError);
  EXPECT_THROW(FetchPlan::build(V32{1, 2}, 1, {1}, {{0, -10}}), InputError);
  EXPECT_THROW(FetchPlan::build_from_rows(V64{1, 2}, 1, 1, {3, 3}), ConfigError);
  EXPECT_THROW(FetchPlan::build_from_rows(V64{1, -2}, 2, 1, {3}), InputError);
  try {
    FetchPlan::build(V32{4, 5, 6, -1}, 2, {1}, {{0, 10}});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("ids[3] = -1"), std::string::npos) << e.what();
  }
}

TEST(FetchPlan, MatchesTheHasherOutput) {
  // The reference configuration on a small synthetic vocabulary (identity compression).
  hash::EngramHashConfig config;
  std::vector<int32_t> lut(5000);
  std::iota(lut.begin(), lut.end(), 0);
  const hash::NgramHasher hasher(config, lut, 5000);
  const size_t tokens = 2048, heads = static_cast<size_t>(hasher.ids_per_token());
  std::mt19937_64 rng(4);
  std::vector<int64_t> ids(tokens);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % 8);  // few distinct n-grams: many repeats
  std::vector<int32_t> out(hasher.num_layers() * tokens * heads);
  hasher.hash_all_layers(ids, 1, tokens, out);
  std::vector<std::vector<int64_t>> offsets;
  for (size_t l = 0; l < hasher.num_layers(); ++l) offsets.push_back(hasher.head_offsets(l));

  const FetchPlan plan = FetchPlan::build(out, tokens, config.layer_ids, offsets);
  const FetchPlan again = FetchPlan::build(out, tokens, config.layer_ids, offsets);
  int64_t unique = 0;
  for (size_t l = 0; l < hasher.num_layers(); ++l) {
    const LayerFetch& f = plan.layers()[l];
    EXPECT_EQ(f.layer_id, config.layer_ids[l]);
    EXPECT_TRUE(std::adjacent_find(f.rows.begin(), f.rows.end(), std::greater_equal<>()) ==
                f.rows.end())
        << "rows must be strictly ascending";
    EXPECT_EQ(std::accumulate(f.requests.begin(), f.requests.end(), int64_t{0}),
              static_cast<int64_t>(tokens * heads));
    std::vector<int32_t> seen(f.rows.size(), 0);
    for (size_t t = 0; t < tokens; ++t) {
      for (size_t h = 0; h < heads; ++h) {
        const int32_t k = f.index[t * heads + h];
        ASSERT_EQ(f.rows[static_cast<size_t>(k)],
                  offsets[l][h] + out[(l * tokens + t) * heads + h]);
        ++seen[static_cast<size_t>(k)];
      }
    }
    EXPECT_EQ(seen, f.requests);
    EXPECT_LT(f.rows.back(), hasher.table_rows(l));
    EXPECT_LT(f.rows.size(), tokens * heads / 2) << "the test input should repeat n-grams";
    EXPECT_EQ(f.rows, again.layers()[l].rows);
    EXPECT_EQ(f.index, again.layers()[l].index);
    unique += static_cast<int64_t>(f.rows.size());
  }
  EXPECT_EQ(plan.stats().unique, unique);
  EXPECT_EQ(static_cast<int64_t>(plan.combined().size()), unique);
}

void expect_reads(const std::vector<BlockRead>& got, const std::vector<BlockRead>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first_block, want[i].first_block) << i;
    EXPECT_EQ(got[i].num_blocks, want[i].num_blocks) << i;
    EXPECT_EQ(got[i].first, want[i].first) << i;
    EXPECT_EQ(got[i].count, want[i].count) << i;
  }
}

TEST(GroupByBlock, OneRowPerBlock) {
  expect_reads(group_by_block(V64{0, 1, 5}, {1, 1}), {{0, 1, 0, 1}, {1, 1, 1, 1}, {5, 1, 2, 1}});
}

TEST(GroupByBlock, FifteenRowsPerBlock) {
  // 264-byte rows (FP8 E4M3 + UE8M0 scales, width 256): 15 to a block.
  const V64 rows = {0, 3, 14, 15, 29, 30, 100};
  expect_reads(group_by_block(rows, {15, 1}),
               {{0, 1, 0, 3}, {1, 1, 3, 2}, {2, 1, 5, 1}, {6, 1, 6, 1}});
}

TEST(GroupByBlock, RowsSpanningSeveralBlocks) {
  // 10 KiB rows: 3 blocks each.
  expect_reads(group_by_block(V64{0, 1, 4}, {1, 3}), {{0, 3, 0, 1}, {3, 3, 1, 1}, {12, 3, 2, 1}});
}

TEST(GroupByBlock, EveryRowIsCoveredOnce) {
  std::mt19937_64 rng(8);
  std::vector<int64_t> rows;
  for (int64_t r = 0; r < 20000; ++r) {
    if (rng() % 7 == 0) rows.push_back(r);
  }
  for (const BlockGeometry g : {BlockGeometry{1, 1}, BlockGeometry{15, 1}, BlockGeometry{1, 2}}) {
    const std::vector<BlockRead> reads = group_by_block(rows, g);
    int64_t next = 0, last_block = -1;
    for (const BlockRead& r : reads) {
      EXPECT_EQ(r.first, next);
      EXPECT_GT(r.first_block, last_block);
      last_block = r.first_block + r.num_blocks - 1;
      for (int64_t i = r.first; i < r.first + r.count; ++i) {
        EXPECT_EQ(rows[static_cast<size_t>(i)] / g.rows_per_block * g.blocks_per_row,
                  r.first_block);
      }
      next += r.count;
    }
    EXPECT_EQ(next, static_cast<int64_t>(rows.size()));
  }
  EXPECT_TRUE(group_by_block({}, {15, 1}).empty());
}

TEST(GroupByBlock, BadInputThrows) {
  EXPECT_THROW(group_by_block(V64{3, 3}, {1, 1}), InputError);
  EXPECT_THROW(group_by_block(V64{4, 3}, {1, 1}), InputError);
  EXPECT_THROW(group_by_block(V64{-1}, {1, 1}), InputError);
  EXPECT_THROW(group_by_block(V64{1}, {0, 1}), ConfigError);
  EXPECT_THROW(group_by_block(V64{1}, {2, 2}), ConfigError);
}

}  // namespace
}  // namespace engram::memory
