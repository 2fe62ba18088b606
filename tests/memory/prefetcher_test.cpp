// Prefetcher: layers fetched in consumption order (each layer's reads all issued, and the layer
// resident, before the next layer's first read: seen in the reader's request log), wait_layer
// returns only once the layer is resident, gathers after it do no I/O and give the right rows, a
// damaged block fails its layer only with the store's FormatError, cancellation and destruction
// mid-step join cleanly, gathers from several threads at once are right and counted, and the
// step statistics add up.
#include "engram/memory/prefetcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engram/memory/engt_file.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "temp_dir_test.h"

namespace engram::memory {
namespace {

constexpr int64_t kWidth = 64;  // f32: 256-byte rows, 16 rows a block
constexpr int64_t kRowsPerBlock = 16;
constexpr int64_t kRegion = 1024;  // layer position p reads rows [p·1024, (p+1)·1024)

class PrefetcherTest : public test::TempDirTest {
 protected:
  std::string write_table(int64_t rows = 4 * kRegion) {
    path_ = dir_ + "/t.engt";
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    values_.resize(static_cast<size_t>(rows * kWidth));
    for (float& v : values_) v = normal(rng);
    write_engt(path_, RowFormat::kF32, values_.data(), rows, kWidth, "t");
    return path_;
  }

  // layers × tokens × heads reads; layer position p draws from its own region.
  FetchPlan make_plan(const std::vector<int>& layer_ids, size_t tokens, size_t heads,
                      unsigned seed) const {
    std::mt19937_64 rng(seed);
    std::vector<int64_t> rows;
    for (size_t p = 0; p < layer_ids.size(); ++p) {
      for (size_t i = 0; i < tokens * heads; ++i) {
        rows.push_back(static_cast<int64_t>(p) * kRegion +
                       static_cast<int64_t>(rng() % static_cast<uint64_t>(kRegion)));
      }
    }
    return FetchPlan::build_from_rows(rows, tokens, heads, layer_ids);
  }

  void expect_layer_rows(Prefetcher& pf, size_t layer) {
    const LayerFetch& lf = pf.plan().layers()[layer];
    std::vector<float> out(lf.index.size() * kWidth);
    pf.gather_layer(layer, out.data(), kWidth);
    for (size_t i = 0; i < lf.index.size(); ++i) {
      const int64_t row = lf.rows[static_cast<size_t>(lf.index[i])];
      ASSERT_EQ(std::memcmp(out.data() + i * kWidth, values_.data() + row * kWidth, kWidth * 4), 0)
          << "layer " << layer << " read " << i;
    }
  }

  std::string path_;
  std::vector<float> values_;
};

TEST_F(PrefetcherTest, LayersAreFetchedInConsumptionOrder) {
  write_table();
  // The request log and the layer-done events, in the order the worker produced them.
  std::mutex mu;
  std::vector<std::pair<char, int64_t>> events;  // ('r', layer region of a read) / ('d', layer)
  TieredStoreOptions o;
  o.reader.on_request = [&](const ReadRequest& r) {
    const int64_t first_row = (r.offset - 4096) / 4096 * kRowsPerBlock;
    const int64_t last_row = (r.offset + r.length - 4096) / 4096 * kRowsPerBlock - 1;
    EXPECT_EQ(first_row / kRegion, last_row / kRegion);  // a read never spans two layers
    std::lock_guard<std::mutex> lock(mu);
    events.push_back({'r', first_row / kRegion});
  };
  const TieredRowStore store(path_, o);
  PrefetcherOptions po;
  po.chunk_rows = 50;  // several store calls a layer
  po.on_layer_done = [&](size_t layer) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back({'d', static_cast<int64_t>(layer)});
  };
  Prefetcher pf({&store}, po);
  // Layer ids 7, 3, 5 at positions 0, 1, 2: consumed (and fetched) as positions 1, 2, 0.
  pf.begin_step(make_plan({7, 3, 5}, 64, 4, 1));
  EXPECT_EQ(pf.plan().consumption_order(), (std::vector<int32_t>{1, 2, 0}));
  for (const size_t layer : {size_t{1}, size_t{2}, size_t{0}}) {
    EXPECT_GE(pf.wait_layer(layer), 0.0);
    expect_layer_rows(pf, layer);
  }
  pf.cancel();  // idle already: returns at once
  std::lock_guard<std::mutex> lock(mu);
  std::vector<int64_t> seq;  // the layer of each event, 'd' events marked by -1 - layer
  for (const auto& [kind, v] : events) seq.push_back(kind == 'd' ? -1 - v : v);
  ASSERT_FALSE(seq.empty());
  // Expected shape: reads of 1…, done 1, reads of 2…, done 2, reads of 0…, done 0.
  const int64_t order[] = {1, 2, 0};
  size_t at = 0;
  for (const int64_t layer : order) {
    size_t reads = 0;
    while (at < seq.size() && seq[at] == layer) ++at, ++reads;
    EXPECT_GT(reads, 1u) << "layer " << layer;
    ASSERT_LT(at, seq.size());
    EXPECT_EQ(seq[at], -1 - layer) << "event " << at;
    ++at;
  }
  EXPECT_EQ(at, seq.size());
}

TEST_F(PrefetcherTest, GathersFromSeveralThreadsAtOnceGiveTheRightRows) {
  // As an Engram layer gathers its rows: pieces of the layer's reads from the thread pool.
  write_table();
  const TieredRowStore store(path_);
  Prefetcher pf({&store});
  pf.begin_step(make_plan({1, 2}, 256, 4, 5));
  for (size_t layer = 0; layer < 2; ++layer) {
    const LayerFetch& lf = pf.plan().layers()[layer];
    std::vector<int64_t> reads;  // the layer's (token, head) rows, repeats included
    for (const int32_t i : lf.index) reads.push_back(lf.rows[static_cast<size_t>(i)]);
    reads.push_back(3 * kRegion + 5);  // a row the plan does not list: read through the store
    std::vector<float> out(reads.size() * kWidth, -1.0f);
    constexpr size_t kThreads = 4;
    const size_t piece = (reads.size() + kThreads - 1) / kThreads;
    std::vector<std::thread> threads;
    for (size_t t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const size_t b = t * piece, e = std::min(reads.size(), b + piece);
        pf.gather(layer, std::span<const int64_t>(reads).subspan(b, e - b), out.data() + b * kWidth,
                  kWidth);
      });
    }
    for (auto& th : threads) th.join();
    for (size_t i = 0; i < reads.size(); ++i) {
      ASSERT_EQ(
          std::memcmp(out.data() + i * kWidth, values_.data() + reads[i] * kWidth, kWidth * 4), 0)
          << "layer " << layer << " read " << i;
    }
    EXPECT_EQ(pf.step_stats().layers[layer].gathered, static_cast<int64_t>(reads.size()));
  }
  // gather_layer counts its reads too.
  std::vector<float> all(pf.plan().layers()[0].index.size() * kWidth);
  pf.gather_layer(0, all.data(), kWidth);
  EXPECT_EQ(pf.step_stats().layers[0].gathered,
            static_cast<int64_t>(2 * pf.plan().layers()[0].index.size() + 1));
}

TEST_F(PrefetcherTest, WaitLayerReturnsOnlyWhenTheLayerIsResident) {
  write_table();
  const TieredRowStore store(path_, TieredStoreOptions{});
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  PrefetcherOptions po;
  po.on_layer_done = [&](size_t layer) {
    if (layer == 0) released.wait();  // holds the worker before layer 1's first read
  };
  Prefetcher pf({&store}, po);
  pf.begin_step(make_plan({0, 1}, 32, 8, 2));
  pf.wait_layer(0);  // layer 0 is done before the hook runs
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    pf.wait_layer(1);
    returned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(returned.load());
  EXPECT_FALSE(pf.step_stats().layers[1].done);
  release.set_value();
  waiter.join();
  EXPECT_TRUE(returned.load());
  EXPECT_TRUE(pf.step_stats().layers[1].done);
  EXPECT_GE(pf.step_stats().layers[1].stall_seconds, 0.09);
  // Gathers after wait_layer read memory only.
  const int64_t reads_before = store.reader().stats().requests;
  expect_layer_rows(pf, 1);
  expect_layer_rows(pf, 0);
  const std::vector<int64_t>& planned = pf.plan().layers()[1].rows;
  std::vector<int64_t> some = {planned[3], planned[0], planned[3]};
  std::vector<double> d(some.size() * kWidth);
  pf.gather(1, some, d.data(), kWidth);
  EXPECT_EQ(store.reader().stats().requests, reads_before);
  for (size_t i = 0; i < some.size(); ++i)
    EXPECT_EQ(d[i * kWidth + 5], static_cast<double>(values_[some[i] * kWidth + 5]));
  // A row the plan did not list is read through the store.
  const std::vector<int64_t> unplanned = {3 * kRegion + 5};
  std::vector<float> f(kWidth);
  pf.gather(1, unplanned, f.data(), kWidth);
  EXPECT_EQ(f[9], values_[(3 * kRegion + 5) * kWidth + 9]);
  EXPECT_GT(store.reader().stats().requests, reads_before);
}

TEST_F(PrefetcherTest, CachedRowsAreFetchedFromTheCacheOnTheNextStep) {
  write_table();
  TieredStoreOptions o;
  o.cache_rows = 4 * kRegion;  // the whole table
  o.policy = CachePolicy::kLru;
  const TieredRowStore store(path_, o);
  Prefetcher pf({&store});
  const FetchPlan plan = make_plan({2, 4, 6}, 128, 4, 3);
  pf.begin_step(plan);
  for (size_t l = 0; l < 3; ++l) pf.wait_layer(l);
  StepPrefetchStats s = pf.step_stats();
  EXPECT_EQ(s.requested, 3 * 128 * 4);
  EXPECT_EQ(s.unique, plan.stats().unique);
  EXPECT_EQ(s.hits, 0);
  int64_t blocks = 0;
  for (size_t l = 0; l < 3; ++l) {
    const LayerPrefetchStats& ls = s.layers[l];
    EXPECT_EQ(ls.layer_id, plan.layers()[l].layer_id);
    EXPECT_EQ(ls.requested, 128 * 4);
    EXPECT_EQ(ls.unique, static_cast<int64_t>(plan.layers()[l].rows.size()));
    const int64_t layer_blocks = static_cast<int64_t>(
        group_by_block(plan.layers()[l].rows, BlockGeometry{kRowsPerBlock, 1}).size());
    EXPECT_EQ(ls.blocks_read, layer_blocks);
    EXPECT_EQ(ls.bytes_read, 4096 * layer_blocks);
    EXPECT_TRUE(ls.done);
    EXPECT_FALSE(ls.failed);
    EXPECT_GE(ls.ready_seconds, ls.fetch_seconds);
    blocks += layer_blocks;
  }
  EXPECT_EQ(s.blocks_read, blocks);
  EXPECT_EQ(s.bytes_read, 4096 * blocks);
  double stall = 0;
  for (const auto& ls : s.layers) stall += ls.stall_seconds;
  EXPECT_DOUBLE_EQ(s.stall_seconds, stall);
  EXPECT_EQ(store.cached_rows(), plan.stats().unique);

  // The same rows again: all from the cache, no I/O.
  pf.begin_step(plan);
  for (size_t l = 0; l < 3; ++l) pf.wait_layer(l);
  s = pf.step_stats();
  EXPECT_EQ(s.hits, s.unique);
  EXPECT_EQ(s.blocks_read, 0);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 1.0);
  expect_layer_rows(pf, 2);
}

TEST_F(PrefetcherTest, DamagedBlockFailsItsLayerWithTheStoreError) {
  write_table();
  // Damage a block that layer 1 reads (rows kRegion…2·kRegion).
  const FetchPlan plan = make_plan({0, 1, 2}, 64, 4, 4);
  const int64_t victim = plan.layers()[1].rows[7];
  const int64_t block = victim / kRowsPerBlock;
  std::string bytes = read_file(path_);
  bytes[static_cast<size_t>(4096 + block * 4096 + 33)] ^= 0x10;
  write_file_atomic(path_, bytes);
  TieredStoreOptions o;
  o.cache_rows = 4 * kRegion;
  const TieredRowStore store(path_, o);
  Prefetcher pf({&store});
  pf.begin_step(plan);
  pf.wait_layer(0);
  expect_layer_rows(pf, 0);
  std::string message;
  try {
    pf.wait_layer(1);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find(path_), std::string::npos) << message;
  EXPECT_NE(message.find("data block " + std::to_string(block) + " (rows "), std::string::npos)
      << message;
  // The same error as the store gives for the row, from every later call.
  const std::vector<int64_t> one = {victim};
  std::vector<float> out(kWidth);
  try {
    store.gather(one, out.data(), kWidth);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_EQ(message, e.what());
  }
  EXPECT_THROW(pf.wait_layer(1), FormatError);
  EXPECT_THROW(pf.gather_layer(1, out.data(), kWidth), FormatError);
  // Later layers are still fetched; the damaged rows were never cached.
  pf.wait_layer(2);
  expect_layer_rows(pf, 2);
  const StepPrefetchStats s = pf.step_stats();
  EXPECT_TRUE(s.layers[1].failed);
  EXPECT_FALSE(s.layers[2].failed);
  for (int64_t r = block * kRowsPerBlock; r < (block + 1) * kRowsPerBlock; ++r)
    EXPECT_FALSE(store.cached(r)) << r;
}

TEST_F(PrefetcherTest, CancelAndDestructionMidStepJoinCleanly) {
  write_table();
  const TieredRowStore store(path_, TieredStoreOptions{});
  std::atomic<int> done_layers{0};
  PrefetcherOptions po;
  po.chunk_rows = 16;
  po.on_layer_done = [&](size_t) {
    ++done_layers;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  };
  {
    Prefetcher pf({&store}, po);
    pf.begin_step(make_plan({0, 1, 2, 3}, 256, 8, 5));
    pf.wait_layer(0);
    pf.cancel();
    EXPECT_LT(done_layers.load(), 4);
    EXPECT_THROW(pf.wait_layer(3), InputError);  // cancelled before it was fetched
    // A new step after a cancelled one runs normally; begin_step cancels a running step.
    pf.begin_step(make_plan({0, 1, 2, 3}, 256, 8, 6));
    pf.begin_step(make_plan({0, 1, 2, 3}, 64, 8, 7));
    pf.wait_layer(3);
    expect_layer_rows(pf, 3);
    pf.begin_step(make_plan({0, 1, 2, 3}, 256, 8, 8));
    // Destroyed here with the step in flight.
  }
  {
    Prefetcher idle({&store});  // never given a step
    EXPECT_THROW(idle.wait_layer(0), InputError);
  }
  SUCCEED();
}

TEST_F(PrefetcherTest, BadPlansAndStores) {
  write_table();
  const TieredRowStore store(path_, TieredStoreOptions{});
  EXPECT_THROW(Prefetcher({}), ConfigError);
  EXPECT_THROW(Prefetcher({nullptr}), ConfigError);
  PrefetcherOptions no_chunk;
  no_chunk.chunk_rows = 0;
  EXPECT_THROW(Prefetcher({&store}, no_chunk), ConfigError);
  Prefetcher two({&store, &store});
  EXPECT_THROW(two.begin_step(make_plan({0, 1, 2}, 4, 2, 9)), ConfigError);
  two.begin_step(make_plan({0, 1}, 4, 2, 9));  // one store per layer
  two.wait_layer(1);
  EXPECT_THROW(two.wait_layer(2), InputError);
  Prefetcher pf({&store});
  const std::vector<int64_t> rows = {5, 4 * kRegion};  // the second is past the table
  EXPECT_THROW(pf.begin_step(FetchPlan::build_from_rows(rows, 2, 1, {0})), InputError);
}

}  // namespace
}  // namespace engram::memory
