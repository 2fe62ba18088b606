// TieredRowStore: bit for bit equal to the host tier for every format (narrow and wide rows) on
// random gathers with repeated rows, with and without a cache, on both reader backends; exact
// statistics of hits, misses, blocks and reads; a damaged data block (its rows throw FormatError
// naming the file and block, never reach the output or the cache, other rows still read); a
// truncated file; rows out of range; concurrent gathers.
#include "engram/memory/tiered_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "engram/memory/engt_file.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "temp_dir_test.h"
#include "memory/memory_test_util.h"

namespace engram::memory {
namespace {

using test_util::contains;
using test_util::error_of;
using test_util::flip_byte;
using test_util::random_table;

// Rows drawn from [0, range) with many repeats.
std::vector<int64_t> random_rows(std::mt19937_64& rng, size_t n, int64_t range) {
  std::vector<int64_t> rows(n);
  for (int64_t& r : rows) r = static_cast<int64_t>(rng() % static_cast<uint64_t>(range));
  return rows;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// (format, width, cache rows, policy, force the pread fallback)
using Case = std::tuple<RowFormat, int64_t, int64_t, CachePolicy, bool>;

class TieredEqualsHost : public test::TempDirTest, public ::testing::WithParamInterface<Case> {};

TEST_P(TieredEqualsHost, RandomGathersWithRepeatsBitForBit) {
  const auto [format, width, cache_rows, policy, fallback] = GetParam();
  const int64_t rows = width > 1024 ? 97 : 1000;
  const std::string path = dir_ + "/t.engt";
  const std::vector<float> values = random_table(rows, width, static_cast<unsigned>(width));
  write_engt(path, format, values.data(), rows, width, "t");
  const EngtRowStore host(path, EngtTier::kHost);
  TieredStoreOptions o;
  o.cache_rows = cache_rows;
  o.policy = policy;
  o.reader.force_fallback = fallback;
  o.reader.queue_depth = 8;
  o.max_read_blocks = 3;
  o.chunk_blocks = 16;  // several I/O batches per gather
  const TieredRowStore tiered(path, o);
  EXPECT_EQ(tiered.num_rows(), rows);
  EXPECT_EQ(tiered.width(), width);
  std::mt19937_64 rng(7);
  TierStats sum;
  for (int round = 0; round < 12; ++round) {
    // Half the rounds draw from a small hot range, so later rounds hit the cache.
    const std::vector<int64_t> want =
        random_rows(rng, 300, round % 2 ? rows : std::max<int64_t>(rows / 10, 1));
    const auto n = static_cast<int64_t>(want.size());
    std::vector<float> f_host(static_cast<size_t>(n * width)), f_tier(f_host.size());
    host.gather(want, f_host.data(), width);
    tiered.gather(want, f_tier.data(), width);
    ASSERT_TRUE(bitwise_equal(f_host, f_tier)) << "round " << round;
    sum += tiered.last_call_stats();
    // Double, with a stride wider than the row.
    std::vector<double> d_host(static_cast<size_t>(n * (width + 3)), -1.0), d_tier(d_host);
    host.gather(want, d_host.data(), width + 3);
    tiered.gather(want, d_tier.data(), width + 3);
    ASSERT_TRUE(bitwise_equal(d_host, d_tier)) << "round " << round;
    sum += tiered.last_call_stats();
  }
  const TierStats total = tiered.total_stats();
  EXPECT_EQ(total.calls, 24);
  EXPECT_EQ(total.requested, 24 * 300);
  EXPECT_EQ(total.unique, sum.unique);
  EXPECT_EQ(total.hits + total.misses, total.unique);
  EXPECT_EQ(total.bytes_read, 4096 * total.blocks_read);
  EXPECT_EQ(total.bad_blocks, 0);
  if (cache_rows == 0) {
    EXPECT_EQ(total.hits, 0);
    EXPECT_EQ(tiered.cached_rows(), 0);
  } else {
    EXPECT_GT(total.hits, 0);
    EXPECT_LE(tiered.cached_rows(), cache_rows);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, TieredEqualsHost,
    ::testing::Values(Case{RowFormat::kF32, 64, 0, CachePolicy::kLru, false},
                      Case{RowFormat::kF32, 64, 50, CachePolicy::kLru, true},
                      Case{RowFormat::kBF16, 64, 200, CachePolicy::kFrequency, false},
                      Case{RowFormat::kBF16, 256, 0, CachePolicy::kFrequency, true},
                      Case{RowFormat::kFP8, 256, 100, CachePolicy::kFrequency, false},
                      Case{RowFormat::kFP8, 64, 2000, CachePolicy::kLru, false},
                      Case{RowFormat::kINT8, 256, 30, CachePolicy::kLru, false},
                      Case{RowFormat::kINT8, 32, 0, CachePolicy::kLru, true},
                      Case{RowFormat::kF32, 2048, 10, CachePolicy::kLru, false},  // 2 blocks/row
                      Case{RowFormat::kF32, 2048, 0, CachePolicy::kFrequency, true}));

class TieredStoreTest : public test::TempDirTest {
 protected:
  // f32, width 64: 256-byte rows, 16 rows a block.
  std::string write_table(int64_t rows = 1000) {
    const std::string path = dir_ + "/t.engt";
    values_ = random_table(rows, 64, 3);
    write_engt(path, RowFormat::kF32, values_.data(), rows, 64, "t");
    return path;
  }
  std::vector<float> values_;
};

TEST_F(TieredStoreTest, CacheHitsOnRepeatedGathersWithExactStatistics) {
  TieredStoreOptions o;
  o.cache_rows = 100;
  o.policy = CachePolicy::kLru;
  const TieredRowStore store(write_table(), o);
  std::vector<float> out(5 * 64);
  // Rows 1, 2, 3 share block 0, row 20 is in block 1, row 100 in block 6.
  const std::vector<int64_t> first = {3, 1, 2, 3, 20, 100, 1};
  out.resize(first.size() * 64);
  store.gather(first, out.data(), 64);
  TierStats s = store.last_call_stats();
  EXPECT_EQ(s.calls, 1);
  EXPECT_EQ(s.requested, 7);
  EXPECT_EQ(s.unique, 5);
  EXPECT_EQ(s.hits, 0);
  EXPECT_EQ(s.misses, 5);
  EXPECT_EQ(s.fills, 5);
  EXPECT_EQ(s.blocks_read, 3);
  EXPECT_EQ(s.reads, 2);  // blocks 0 and 1 merged into one read
  EXPECT_EQ(s.bytes_read, 3 * 4096);
  for (size_t i = 0; i < first.size(); ++i) {
    for (int64_t j = 0; j < 64; ++j) {
      ASSERT_EQ(out[i * 64 + static_cast<size_t>(j)],
                values_[static_cast<size_t>(first[i] * 64 + j)]);
    }
  }
  EXPECT_EQ(store.cached_rows(), 5);
  for (int64_t r : {1, 2, 3, 20, 100}) EXPECT_TRUE(store.cached(r)) << r;
  EXPECT_FALSE(store.cached(4));  // same block as 1, 2, 3, not asked for

  store.gather(first, out.data(), 64);
  s = store.last_call_stats();
  EXPECT_EQ(s.unique, 5);
  EXPECT_EQ(s.hits, 5);
  EXPECT_EQ(s.misses, 0);
  EXPECT_EQ(s.fills, 0);
  EXPECT_EQ(s.blocks_read, 0);
  EXPECT_EQ(s.reads, 0);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 1.0);

  const std::vector<int64_t> third = {1, 4, 999};
  store.gather(third, out.data(), 64);
  s = store.last_call_stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 2);
  EXPECT_EQ(s.blocks_read, 2);  // block 0 again (row 4) and block 62
  EXPECT_EQ(s.reads, 2);

  const TierStats t = store.total_stats();
  EXPECT_EQ(t.calls, 3);
  EXPECT_EQ(t.requested, 17);
  EXPECT_EQ(t.unique, 13);
  EXPECT_EQ(t.hits, 6);
  EXPECT_EQ(t.misses, 7);
  EXPECT_EQ(t.blocks_read, 5);
  EXPECT_EQ(t.bytes_read, 5 * 4096);
  store.gather(std::span<const int64_t>(), out.data(), 64);
  EXPECT_EQ(store.last_call_stats().requested, 0);
  EXPECT_EQ(store.last_call_stats().blocks_read, 0);
}

TEST_F(TieredStoreTest, NoMergingWithMaxReadBlocksOne) {
  TieredStoreOptions o;
  o.max_read_blocks = 1;
  const TieredRowStore store(write_table(), o);
  std::vector<float> out(4 * 64);
  const std::vector<int64_t> rows = {0, 16, 32, 48};  // blocks 0-3
  store.gather(rows, out.data(), 64);
  EXPECT_EQ(store.last_call_stats().blocks_read, 4);
  EXPECT_EQ(store.last_call_stats().reads, 4);
  TieredStoreOptions merged;
  const TieredRowStore store2(dir_ + "/t.engt", merged);
  store2.gather(rows, out.data(), 64);
  EXPECT_EQ(store2.last_call_stats().blocks_read, 4);
  EXPECT_EQ(store2.last_call_stats().reads, 1);
}

TEST_F(TieredStoreTest, CapacityZeroReadsEveryTime) {
  const TieredRowStore store(write_table(), TieredStoreOptions{});
  EXPECT_EQ(store.cache_capacity(), 0);
  std::vector<float> out(3 * 64);
  const std::vector<int64_t> rows = {5, 5, 900};
  for (int i = 0; i < 3; ++i) {
    store.gather(rows, out.data(), 64);
    const TierStats s = store.last_call_stats();
    EXPECT_EQ(s.unique, 2);
    EXPECT_EQ(s.hits, 0);
    EXPECT_EQ(s.fills, 0);
    EXPECT_EQ(s.blocks_read, 2);
  }
  EXPECT_EQ(store.cached_rows(), 0);
  EXPECT_FALSE(store.cached(5));
  EXPECT_EQ(store.cache_memory_bytes(), 0);
  EXPECT_EQ(out[2 * 64 + 7], values_[900 * 64 + 7]);
}

TEST_F(TieredStoreTest, DamagedBlockNeverReachesOutputOrCache) {
  const std::string path = write_table();
  const EngtLayout l = EngtLayout::make(RowFormat::kF32, 1000, 64);
  flip_byte(path, l.data_offset + 3 * 4096 + 100);  // block 3: rows 48..63
  for (const bool fallback : {false, true}) {
    TieredStoreOptions o;
    o.cache_rows = 2000;  // room for the whole table
    o.policy = CachePolicy::kLru;
    o.reader.force_fallback = fallback;
    const TieredRowStore store(path, o);  // opening reads no data block
    const std::vector<int64_t> rows = {5, 50, 70, 63, 999};
    std::vector<float> out(rows.size() * 64, -7.0f);
    const std::string what = error_of([&] { store.gather(rows, out.data(), 64); });
    EXPECT_TRUE(contains(what, path)) << what;
    EXPECT_TRUE(contains(what, "data block 3 (rows 48..63): checksum mismatch")) << what;
    for (const float v : out) ASSERT_EQ(v, -7.0f);  // nothing written
    EXPECT_EQ(store.last_call_stats().bad_blocks, 1);
    // The intact rows of that call were admitted, the damaged block's were not.
    EXPECT_TRUE(store.cached(5));
    EXPECT_TRUE(store.cached(70));
    EXPECT_TRUE(store.cached(999));
    for (int64_t r = 48; r < 64; ++r) EXPECT_FALSE(store.cached(r)) << r;
    // Rows elsewhere read correctly, from the cache and from the file.
    const std::vector<int64_t> good = {5, 70, 999, 64, 47};
    std::vector<double> d(good.size() * 64);
    store.gather(good, d.data(), 64);
    EXPECT_EQ(store.last_call_stats().hits, 3);
    for (size_t i = 0; i < good.size(); ++i) {
      for (int64_t j = 0; j < 64; ++j) {
        ASSERT_EQ(d[i * 64 + static_cast<size_t>(j)],
                  static_cast<double>(values_[static_cast<size_t>(good[i] * 64 + j)]));
      }
    }
    // Asking again fails again (the bad rows were not cached), alone or in company.
    const std::vector<int64_t> alone = {49};
    EXPECT_TRUE(contains(error_of([&] { store.gather(alone, out.data(), 64); }),
                         "data block 3 (rows 48..63)"));
    std::vector<uint8_t> enc(64 * 4);
    TierStats call;
    EXPECT_THROW(store.gather_encoded(alone, enc.data(), &call), FormatError);
    EXPECT_EQ(call.bad_blocks, 1);
    for (int64_t r = 48; r < 64; ++r) EXPECT_FALSE(store.cached(r)) << r;
  }
}

TEST_F(TieredStoreTest, DamagedWideRowNamesItsBlock) {
  const std::string path = dir_ + "/wide.engt";
  const std::vector<float> v = random_table(10, 2048, 5);  // 8192 bytes: 2 blocks a row
  write_engt(path, RowFormat::kF32, v.data(), 10, 2048, "w");
  flip_byte(path, 4096 + 7 * 4096 + 9);  // block 7: the second block of row 3
  TieredStoreOptions o;
  o.cache_rows = 10;
  const TieredRowStore store(path, o);
  std::vector<float> out(2048 * 2);
  const std::vector<int64_t> rows = {3, 4};
  EXPECT_TRUE(contains(error_of([&] { store.gather(rows, out.data(), 2048); }),
                       "data block 7 (row 3): checksum mismatch"));
  EXPECT_FALSE(store.cached(3));
  EXPECT_TRUE(store.cached(4));
}

TEST_F(TieredStoreTest, TruncatedFileFailsAtOpenWithTheSizes) {
  const std::string path = write_table();
  const EngtLayout l = EngtLayout::make(RowFormat::kF32, 1000, 64);
  ASSERT_EQ(::truncate(path.c_str(), l.file_bytes - 4096), 0);
  const std::string what = error_of([&] { TieredRowStore store(path); });
  EXPECT_TRUE(contains(what, path)) << what;
  EXPECT_TRUE(contains(what, "truncated: expected " + std::to_string(l.file_bytes))) << what;
  EXPECT_TRUE(contains(what, "got " + std::to_string(l.file_bytes - 4096))) << what;
  EXPECT_THROW(TieredRowStore(dir_ + "/missing.engt"), IoError);
}

TEST_F(TieredStoreTest, RowsOutOfRangeAndBadOptions) {
  const std::string path = write_table();
  TieredStoreOptions o;
  o.cache_rows = 10;
  const TieredRowStore store(path, o);
  std::vector<float> out(2 * 64);
  const std::vector<int64_t> rows = {1, 1000};
  EXPECT_TRUE(contains(error_of([&] { store.gather(rows, out.data(), 64); }),
                       "row 1000 is out of range [0, 1000)"));
  EXPECT_EQ(store.cached_rows(), 0);  // nothing read, nothing admitted
  const std::vector<int64_t> negative = {-1};
  EXPECT_THROW(store.gather(negative, out.data(), 64), InputError);
  o.cache_rows = -1;
  EXPECT_THROW(TieredRowStore(path, o), ConfigError);
  o.cache_rows = 0;
  o.max_read_blocks = 0;
  EXPECT_THROW(TieredRowStore(path, o), ConfigError);
  o.max_read_blocks = 1;
  o.chunk_blocks = 0;
  EXPECT_THROW(TieredRowStore(path, o), ConfigError);
}

TEST_F(TieredStoreTest, ConcurrentGathersAreCorrect) {
  const std::string path = write_table(4000);
  TieredStoreOptions o;
  o.cache_rows = 300;
  o.chunk_blocks = 8;
  const TieredRowStore store(path, o);
  auto work = [&](unsigned seed, bool* ok) {
    std::mt19937_64 rng(seed);
    for (int round = 0; round < 40 && *ok; ++round) {
      const std::vector<int64_t> rows = random_rows(rng, 200, round % 2 ? 4000 : 400);
      std::vector<float> out(rows.size() * 64);
      store.gather(rows, out.data(), 64);
      for (size_t i = 0; i < rows.size() && *ok; ++i) {
        *ok = std::memcmp(out.data() + i * 64, values_.data() + rows[i] * 64, 64 * 4) == 0;
      }
    }
  };
  bool ok1 = true, ok2 = true;
  std::thread t1(work, 1u, &ok1);
  work(2u, &ok2);
  t1.join();
  EXPECT_TRUE(ok1);
  EXPECT_TRUE(ok2);
  const TierStats t = store.total_stats();
  EXPECT_EQ(t.calls, 80);
  EXPECT_GT(t.hits, 0);
}

}  // namespace
}  // namespace engram::memory
