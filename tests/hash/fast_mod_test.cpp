// floor_mod_lanes against a plain __int128 floor modulo, for divisors from 2 to 2^31 - 1 and
// x over the whole int64 range (extremes, multiples of p and their neighbours, random), compiled
// for each instruction set the hash kernel is built for (AVX-512, AVX2 + FMA, baseline x86-64).
#include "hash/fast_mod.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "engram/hash/primes.h"

namespace engram::hash::fastmod {
namespace {

__extension__ typedef __int128 Int128;

int64_t floor_mod_reference(int64_t x, int64_t p) {
  const Int128 r = static_cast<Int128>(x) % p;
  return static_cast<int64_t>(r < 0 ? r + p : r);
}

// kLanes divisors per group: small, around the powers of two that bound the intermediates,
// the reference's table sizes, and the largest allowed.
std::vector<int64_t> test_divisors() {
  std::vector<int64_t> d = {2,     3,     5,      7,      11,      13,      31,       97,
                            65521, 65537, 646403, 646619, 2262401, 7239707, 16000057, kMaxDivisor};
  for (int bits = 20; bits <= 31; ++bits) {
    const uint64_t top = (uint64_t{1} << bits) - 1;
    uint64_t p = top;
    while (!is_prime(p)) --p;
    d.push_back(static_cast<int64_t>(p));  // largest prime below 2^bits
    p = (uint64_t{1} << (bits - 1)) + 1;
    while (!is_prime(p)) ++p;
    d.push_back(static_cast<int64_t>(p));  // smallest prime above 2^(bits-1)
  }
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<int64_t> any(2, kMaxDivisor);
  while (d.size() % kLanes != 0 || d.size() < 96) {
    int64_t p = any(rng);
    while (!is_prime(static_cast<uint64_t>(p))) --p;
    d.push_back(p < 2 ? 2 : p);
  }
  return d;
}

// The same inline function compiled for each target of the kernel's target_clones.
using FloorModFn = void (*)(int64_t, const ModLanes&, int, int32_t*);
__attribute__((target("arch=x86-64-v4"))) void floor_mod_v4(int64_t x, const ModLanes& c, int n,
                                                            int32_t* out) {
  floor_mod_lanes(x, c, n, out);
}
__attribute__((target("arch=x86-64-v3"))) void floor_mod_v3(int64_t x, const ModLanes& c, int n,
                                                            int32_t* out) {
  floor_mod_lanes(x, c, n, out);
}
void floor_mod_baseline(int64_t x, const ModLanes& c, int n, int32_t* out) {
  floor_mod_lanes(x, c, n, out);
}

struct Target {
  const char* name;
  FloorModFn fn;
  bool supported;
};

void PrintTo(const Target& target, std::ostream* os) {
  *os << target.name;
}

class FastModTest : public testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    if (!GetParam().supported) GTEST_SKIP() << "this CPU does not run " << GetParam().name;
  }
  void floor_mod(int64_t x, const ModLanes& c, int n, int32_t* out) const {
    GetParam().fn(x, c, n, out);
  }
};

std::vector<int64_t> test_values(const std::vector<int64_t>& divisors) {
  std::vector<int64_t> x = {0,
                            1,
                            -1,
                            2,
                            -2,
                            INT64_MAX,
                            INT64_MIN,
                            INT64_MAX - 1,
                            INT64_MIN + 1,
                            INT32_MAX,
                            INT32_MIN,
                            UINT32_MAX,
                            -static_cast<int64_t>(UINT32_MAX),
                            int64_t{1} << 42,
                            -(int64_t{1} << 42),
                            (int64_t{1} << 42) - 1,
                            -(int64_t{1} << 42) - 1,
                            int64_t{1} << 53,
                            (int64_t{1} << 53) + 1};
  for (int64_t p : divisors) {
    // Multiples of p and their neighbours, where an estimated quotient is most fragile.
    for (int64_t k : {int64_t{1}, int64_t{3}, int64_t{1} << 21, INT64_MAX / p, -(INT64_MAX / p),
                      (int64_t{1} << 42) / p}) {
      for (int64_t delta : {-1, 0, 1}) {  // wraps at the int64 ends: just another value
        x.push_back(static_cast<int64_t>(static_cast<uint64_t>(k) * static_cast<uint64_t>(p) +
                                         static_cast<uint64_t>(delta)));
      }
    }
  }
  std::mt19937_64 rng(7);
  for (int i = 0; i < 4000; ++i) x.push_back(static_cast<int64_t>(rng()));
  for (int i = 0; i < 1000; ++i) x.push_back(static_cast<int64_t>(rng()) >> (rng() % 64));
  return x;
}

TEST_P(FastModTest, MatchesInt128FloorModForAllDivisorSizes) {
  const std::vector<int64_t> divisors = test_divisors();
  const std::vector<int64_t> values = test_values(divisors);
  size_t checked = 0;
  for (size_t g = 0; g < divisors.size(); g += kLanes) {
    const ModLanes lanes = make_mod_lanes(divisors.data() + g, kLanes);
    for (int64_t x : values) {
      int32_t out[kLanes];
      floor_mod(x, lanes, kLanes, out);
      for (int j = 0; j < kLanes; ++j) {
        const int64_t p = divisors[g + static_cast<size_t>(j)];
        ASSERT_EQ(out[j], floor_mod_reference(x, p)) << "x = " << x << ", p = " << p;
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 96u * 5000u);
}

TEST_P(FastModTest, EveryResidueOfSmallDivisors) {
  // All x in a window around 0 and around both int64 extremes, for p = 2 .. 64.
  for (int64_t p0 = 2; p0 <= 64; p0 += kLanes) {
    int64_t ps[kLanes];
    for (int j = 0; j < kLanes; ++j) ps[j] = p0 + j;
    const ModLanes lanes = make_mod_lanes(ps, kLanes);
    for (int64_t base : {int64_t{0}, INT64_MIN, INT64_MAX - 4096}) {
      for (int64_t i = 0; i < 4096; ++i) {
        const int64_t x = base == 0 ? i - 2048 : base + i;
        int32_t out[kLanes];
        floor_mod(x, lanes, kLanes, out);
        for (int j = 0; j < kLanes; ++j) ASSERT_EQ(out[j], floor_mod_reference(x, ps[j])) << x;
      }
    }
  }
}

TEST_P(FastModTest, PartialGroupWritesOnlyItsLanes) {
  const int64_t ps[3] = {646403, 646411, 646421};
  const ModLanes lanes = make_mod_lanes(ps, 3);
  int32_t out[kLanes];
  std::fill(out, out + kLanes, -7);
  const int64_t x = -1234567890123456789;
  floor_mod(x, lanes, 3, out);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(out[j], floor_mod_reference(x, ps[j]));
  for (int j = 3; j < kLanes; ++j) EXPECT_EQ(out[j], -7);
}

INSTANTIATE_TEST_SUITE_P(
    Targets, FastModTest,
    testing::Values(Target{"X86_64_v4", floor_mod_v4, __builtin_cpu_supports("x86-64-v4") != 0},
                    Target{"X86_64_v3", floor_mod_v3, __builtin_cpu_supports("x86-64-v3") != 0},
                    Target{"Baseline", floor_mod_baseline, true}),
    [](const testing::TestParamInfo<Target>& param) { return std::string(param.param.name); });

}  // namespace
}  // namespace engram::hash::fastmod
