// numpy's SeedSequence -> PCG64 -> Generator.integers, checked against numbers numpy printed
// (tests/fixtures/hash/numpy_random_vectors.json, made by tools/reference/numpy_random_vectors.py).
#include "engram/hash/numpy_random.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_paths.h"

namespace engram::hash {
namespace {

using nlohmann::json;

const json& vectors() {
  static const json doc = json::parse(
      read_file(test::require_path(test::fixture_dir() + "/hash/numpy_random_vectors.json",
                                   "tools/reference/numpy_random_vectors.py writes it")));
  return doc;
}

Uint128 parse_decimal(const std::string& s) {
  Uint128 v = 0;
  for (char c : s) v = v * 10 + static_cast<unsigned>(c - '0');
  return v;
}

TEST(NumpyRandom, FixtureCoversEveryPath) {
  ASSERT_EQ(vectors()["cases"].size(), 14u);
  EXPECT_EQ(vectors()["cases"][0]["integers"].size(), 14u);
}

TEST(NumpyRandom, SeedSequencePoolAndState) {
  for (const json& c : vectors()["cases"]) {
    SCOPED_TRACE("seed " + c["seed"].get<std::string>());
    const std::vector<uint32_t> words = c["entropy_words"].get<std::vector<uint32_t>>();
    const SeedSequence ss(words);
    const std::vector<uint32_t> pool(ss.pool(), ss.pool() + 4);
    EXPECT_EQ(pool, c["pool"].get<std::vector<uint32_t>>());
    EXPECT_EQ(ss.generate_state_u32(9), c["state_u32"].get<std::vector<uint32_t>>());
    EXPECT_EQ(ss.generate_state_u64(5), c["state_u64"].get<std::vector<uint64_t>>());
    // The integer constructor splits the seed into the same words.
    const Uint128 seed = parse_decimal(c["seed"].get<std::string>());
    if (seed <= UINT64_MAX) {
      const SeedSequence from_int(static_cast<uint64_t>(seed));
      EXPECT_EQ(std::vector<uint32_t>(from_int.pool(), from_int.pool() + 4), pool);
    }
  }
}

TEST(NumpyRandom, Pcg64RawOutput) {
  for (const json& c : vectors()["cases"]) {
    SCOPED_TRACE("seed " + c["seed"].get<std::string>());
    Pcg64 bitgen(SeedSequence(c["entropy_words"].get<std::vector<uint32_t>>()));
    for (uint64_t want : c["raw_u64"].get<std::vector<uint64_t>>())
      EXPECT_EQ(bitgen.next_u64(), want);
  }
}

TEST(NumpyRandom, Pcg64Next32TakesLowHalfThenHighHalf) {
  Pcg64 a(SeedSequence(uint64_t{7}));
  Pcg64 b(SeedSequence(uint64_t{7}));
  for (int i = 0; i < 4; ++i) {
    const uint64_t x = a.next_u64();
    EXPECT_EQ(b.next_u32(), static_cast<uint32_t>(x));
    EXPECT_EQ(b.next_u32(), static_cast<uint32_t>(x >> 32));
  }
}

TEST(NumpyRandom, IntegersMatchNumpyOnEveryPath) {
  size_t checked = 0;
  for (const json& c : vectors()["cases"]) {
    SCOPED_TRACE("seed " + c["seed"].get<std::string>());
    NumpyGenerator gen{SeedSequence(c["entropy_words"].get<std::vector<uint32_t>>())};
    for (const json& d : c["integers"]) {
      const int64_t low = d["low"].get<int64_t>(), high = d["high"].get<int64_t>();
      SCOPED_TRACE("integers(" + std::to_string(low) + ", " + std::to_string(high) + ")");
      const auto want = d["values"].get<std::vector<int64_t>>();
      EXPECT_EQ(gen.integers(low, high, want.size()), want);
      checked += want.size();
    }
  }
  EXPECT_EQ(checked, 14u * 151u);
}

TEST(NumpyRandom, EngramMultiplierGolden) {
  // ENGRAM_SPEC §2: V' = 98,627, seed 0, layer 1 -> seed + 10007 * 1.
  const int64_t half = (INT64_MAX / 98627) / 2;
  NumpyGenerator gen(10007);
  std::vector<int64_t> m;
  for (int64_t r : gen.integers(0, half, 3)) m.push_back(2 * r + 1);
  EXPECT_EQ(m, (std::vector<int64_t>{76993395940407, 4862694818241, 36129212583461}));
}

TEST(NumpyRandom, IntegersRejectsEmptyRange) {
  NumpyGenerator gen(0);
  EXPECT_THROW(gen.integers(5, 5, 1), InputError);
  try {
    gen.integers(3, -1, 1);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "NumpyGenerator::integers: low 3 >= high -1");
  }
}

}  // namespace
}  // namespace engram::hash
