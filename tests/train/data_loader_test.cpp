// DataLoader: windows and targets from the shard, kRandom determinism and bounds, kSequential
// order and positions, hash ids against a direct NgramHasher call, and bad input.
#include "engram/train/data_loader.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "engram/util/error.h"

namespace engram::train {
namespace {

namespace fs = std::filesystem;

class DataLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/engram_data_loader_test.XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes the ids as a uint32 little-endian shard and opens it.
  TokenShard shard(const std::vector<uint32_t>& ids) {
    const std::string path = dir_ + "/shard" + std::to_string(files_++) + ".bin";
    std::ofstream f(path, std::ios::binary);
    for (uint32_t v : ids) {
      const unsigned char le[4] = {
          static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
          static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 24)};
      f.write(reinterpret_cast<const char*>(le), 4);
    }
    f.close();
    return TokenShard::open(path);
  }
  // Tokens 0, 1, 2, ... so a token's value is its offset.
  TokenShard iota_shard(uint32_t n) {
    std::vector<uint32_t> ids(n);
    for (uint32_t i = 0; i < n; ++i) ids[i] = i;
    return shard(ids);
  }

  std::string dir_;
  int files_ = 0;
};

hash::NgramHasher small_hasher() {
  hash::EngramHashConfig c;
  c.engram_vocab_size = {101, 103};
  c.max_ngram_size = 3;
  c.n_embed_per_ngram = 8;
  c.n_head_per_ngram = 2;
  c.layer_ids = {0, 2};
  c.pad_id = 2;
  c.seed = 3;
  std::vector<int32_t> lut(200);
  for (int32_t i = 0; i < 200; ++i) lut[static_cast<size_t>(i)] = i % 50;
  return hash::NgramHasher(c, lut, 50);
}

using Mode = DataLoader::Mode;

TEST_F(DataLoaderTest, RandomRowsAreWindowsWithShiftedTargets) {
  const DataLoader loader(iota_shard(1000), 4, 16, nullptr, 7, Mode::kRandom);
  const Batch b = loader.batch_at(0);
  EXPECT_EQ(b.batch, 4);
  EXPECT_EQ(b.seq, 16);
  ASSERT_EQ(b.inputs.size(), 64u);
  ASSERT_EQ(b.targets.size(), 64u);
  EXPECT_TRUE(b.hash_ids.empty());
  for (int r = 0; r < 4; ++r) {
    const int64_t start = b.inputs[r * 16];
    for (int t = 0; t < 16; ++t) {
      EXPECT_EQ(b.inputs[r * 16 + t], start + t);
      EXPECT_EQ(b.targets[r * 16 + t], start + t + 1);
    }
  }
}

TEST_F(DataLoaderTest, RandomIsAPureFunctionOfSeedAndStep) {
  const TokenShard s = iota_shard(5000);
  const DataLoader a(s, 8, 32, nullptr, 42, Mode::kRandom);
  const DataLoader same(s, 8, 32, nullptr, 42, Mode::kRandom);
  const DataLoader other_seed(s, 8, 32, nullptr, 43, Mode::kRandom);
  EXPECT_EQ(a.batch_at(5).inputs, same.batch_at(5).inputs);
  EXPECT_EQ(a.batch_at(5).targets, same.batch_at(5).targets);
  EXPECT_NE(a.batch_at(5).inputs, a.batch_at(6).inputs);
  EXPECT_NE(a.batch_at(5).inputs, other_seed.batch_at(5).inputs);

  // A run from step 0 and a run resumed at step 10 agree from step 10 on.
  std::vector<std::vector<int64_t>> run;
  for (int64_t k = 0; k < 20; ++k) run.push_back(a.batch_at(k).inputs);
  for (int64_t k = 10; k < 20; ++k) EXPECT_EQ(same.batch_at(k).inputs, run[k]) << k;
}

TEST_F(DataLoaderTest, RandomOffsetsStayInBoundsAndCoverTheRange) {
  // 40 tokens, T = 8: offsets in [0, 31], 32 choices.
  const DataLoader loader(iota_shard(40), 16, 8, nullptr, 1, Mode::kRandom);
  std::set<int64_t> seen;
  for (int64_t k = 0; k < 500; ++k) {
    const Batch b = loader.batch_at(k);
    for (int r = 0; r < 16; ++r) {
      const int64_t start = b.inputs[r * 8];
      ASSERT_GE(start, 0);
      ASSERT_LE(start, 31);
      ASSERT_EQ(b.targets[r * 8 + 7], start + 8);
      seen.insert(start);
    }
  }
  EXPECT_EQ(seen.size(), 32u);  // both ends included
}

TEST_F(DataLoaderTest, RandomShardOfExactlyOneWindow) {
  const DataLoader loader(iota_shard(9), 3, 8, nullptr, 0, Mode::kRandom);
  const Batch b = loader.batch_at(123);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(b.inputs[r * 8], 0);
    EXPECT_EQ(b.targets[r * 8 + 7], 8);
  }
}

TEST_F(DataLoaderTest, SequentialVisitsConsecutiveWindowsThenStops) {
  // 50 tokens, T = 8: windows (50 - 1) / 8 = 6, at 0, 8, ..., 40; B = 4 gives 4 rows then 2.
  DataLoader loader(iota_shard(50), 4, 8, nullptr, 0, Mode::kSequential);
  EXPECT_EQ(loader.windows(), 6);
  EXPECT_EQ(DataLoader::windows(50, 8), 6);
  EXPECT_EQ(DataLoader::windows(49, 8), 6);
  EXPECT_EQ(DataLoader::windows(48, 8), 5);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.batch, 4);
  for (int r = 0; r < 4; ++r) {
    for (int t = 0; t < 8; ++t) {
      EXPECT_EQ(b.inputs[r * 8 + t], r * 8 + t);
      EXPECT_EQ(b.targets[r * 8 + t], r * 8 + t + 1);
    }
  }
  EXPECT_EQ(loader.position(), 4);
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.batch, 2);
  ASSERT_EQ(b.inputs.size(), 16u);
  EXPECT_EQ(b.inputs[0], 32);
  EXPECT_EQ(b.inputs[8], 40);
  EXPECT_EQ(b.targets[15], 48);
  EXPECT_EQ(loader.position(), 6);
  EXPECT_FALSE(loader.next(b));
  EXPECT_EQ(b.batch, 2);  // untouched
  EXPECT_FALSE(loader.next(b));
}

TEST_F(DataLoaderTest, SequentialResetAndSetPosition) {
  DataLoader loader(iota_shard(100), 2, 10, nullptr, 0, Mode::kSequential);
  Batch first, b;
  ASSERT_TRUE(loader.next(first));
  ASSERT_TRUE(loader.next(b));
  const int64_t saved = loader.position();
  EXPECT_EQ(saved, 4);
  Batch third;
  ASSERT_TRUE(loader.next(third));
  EXPECT_EQ(third.inputs[0], 40);

  loader.reset();
  EXPECT_EQ(loader.position(), 0);
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.inputs, first.inputs);

  DataLoader restored(iota_shard(100), 2, 10, nullptr, 0, Mode::kSequential);
  restored.set_position(saved);
  ASSERT_TRUE(restored.next(b));
  EXPECT_EQ(b.inputs, third.inputs);
  EXPECT_EQ(b.targets, third.targets);

  restored.set_position(restored.windows());
  EXPECT_FALSE(restored.next(b));
  EXPECT_THROW(restored.set_position(-1), InputError);
  EXPECT_THROW(restored.set_position(restored.windows() + 1), InputError);
}

TEST_F(DataLoaderTest, HashIdsEqualADirectHasherCall) {
  const hash::NgramHasher hasher = small_hasher();
  std::vector<uint32_t> ids(600);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint32_t>((i * 37 + 11) % 200);
  const TokenShard s = shard(ids);
  const size_t per_batch =
      hasher.num_layers() * 3 * 12 * static_cast<size_t>(hasher.ids_per_token());

  const DataLoader random(s, 3, 12, &hasher, 9, Mode::kRandom);
  for (int64_t k = 0; k < 3; ++k) {
    const Batch b = random.batch_at(k);
    ASSERT_EQ(b.hash_ids.size(), per_batch);
    std::vector<int32_t> expect(per_batch);
    hasher.hash_all_layers(b.inputs, 3, 12, expect, 1);
    EXPECT_EQ(b.hash_ids, expect) << k;
  }

  DataLoader sequential(s, 3, 12, &hasher, 0, Mode::kSequential);
  Batch b;
  ASSERT_TRUE(sequential.next(b));
  ASSERT_TRUE(sequential.next(b));
  EXPECT_EQ(b.inputs[0], ids[36]);
  std::vector<int32_t> expect(per_batch);
  hasher.hash_all_layers(b.inputs, 3, 12, expect, 1);
  EXPECT_EQ(b.hash_ids, expect);
}

TEST_F(DataLoaderTest, RejectsBadShapesAndShortShards) {
  const TokenShard s = iota_shard(10);
  EXPECT_THROW(DataLoader(s, 0, 4, nullptr, 0, Mode::kRandom), InputError);
  EXPECT_THROW(DataLoader(s, 2, 0, nullptr, 0, Mode::kRandom), InputError);
  EXPECT_THROW(DataLoader(s, -1, 4, nullptr, 0, Mode::kSequential), InputError);
  try {
    DataLoader(s, 1, 10, nullptr, 0, Mode::kRandom);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("10 tokens"), std::string::npos) << what;
    EXPECT_NE(what.find("11"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(DataLoader(s, 1, 9, nullptr, 0, Mode::kRandom));
  EXPECT_THROW(DataLoader(iota_shard(0), 1, 1, nullptr, 0, Mode::kSequential), InputError);
}

TEST_F(DataLoaderTest, RejectsWrongModeAndNegativeStep) {
  DataLoader random(iota_shard(50), 2, 4, nullptr, 0, Mode::kRandom);
  DataLoader sequential(iota_shard(50), 2, 4, nullptr, 0, Mode::kSequential);
  Batch b;
  EXPECT_THROW(random.next(b), InputError);
  EXPECT_THROW(sequential.batch_at(0), InputError);
  EXPECT_THROW(random.batch_at(-1), InputError);
}

TEST_F(DataLoaderTest, IdsOutsideTheHasherVocabularyThrow) {
  const hash::NgramHasher hasher = small_hasher();
  std::vector<uint32_t> ids(40, 5);
  ids[3] = 200;  // vocabulary is 200
  const TokenShard s = shard(ids);
  DataLoader sequential(s, 1, 8, &hasher, 0, Mode::kSequential);
  Batch b;
  EXPECT_THROW(sequential.next(b), InputError);
  const DataLoader random(shard(std::vector<uint32_t>(9, 300)), 1, 8, &hasher, 0, Mode::kRandom);
  EXPECT_THROW(random.batch_at(0), InputError);
}

}  // namespace
}  // namespace engram::train
