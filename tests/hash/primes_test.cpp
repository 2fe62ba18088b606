#include "engram/hash/primes.h"

#include <gtest/gtest.h>

#include <vector>

#include "engram/util/error.h"

namespace engram::hash {
namespace {

TEST(Primes, MatchesSieveBelow200000) {
  constexpr size_t kN = 200000;
  std::vector<bool> composite(kN, false);
  composite[0] = composite[1] = true;
  for (size_t i = 2; i * i < kN; ++i) {
    if (!composite[i]) {
      for (size_t j = i * i; j < kN; j += i) composite[j] = true;
    }
  }
  size_t primes = 0;
  for (size_t n = 0; n < kN; ++n) {
    ASSERT_EQ(is_prime(n), !composite[n]) << n;
    primes += composite[n] ? 0 : 1;
  }
  EXPECT_EQ(primes, 17984u);  // pi(200000)
}

TEST(Primes, LargeKnownPrimes) {
  EXPECT_TRUE(is_prime(2147483647ULL));             // 2^31 - 1
  EXPECT_TRUE(is_prime(4294967291ULL));             // largest prime < 2^32
  EXPECT_TRUE(is_prime(2305843009213693951ULL));    // 2^61 - 1
  EXPECT_TRUE(is_prime(18446744073709551557ULL));   // 2^64 - 59, largest 64-bit prime
  EXPECT_FALSE(is_prime(18446744073709551615ULL));  // 2^64 - 1
}

TEST(Primes, StrongPseudoprimesAreComposite) {
  EXPECT_FALSE(is_prime(2047));                           // strong pseudoprime to base 2
  EXPECT_FALSE(is_prime(3215031751ULL));                  // to bases 2, 3, 5, 7
  EXPECT_FALSE(is_prime(3825123056546413051ULL));         // to bases 2 .. 23
  EXPECT_FALSE(is_prime(561));                            // Carmichael
  EXPECT_FALSE(is_prime(4294967291ULL * 4294967279ULL));  // product of two 32-bit primes
  EXPECT_FALSE(is_prime(4294967291ULL * 4294967291ULL));  // square of a prime
}

TEST(Primes, NextUnusedPrimeWalk) {
  // ENGRAM_SPEC §2: base 646,400 -> start 646,399 -> 646403, 646411, 646421, ...
  std::unordered_set<uint64_t> used;
  std::vector<uint64_t> walk;
  uint64_t start = 646399;
  for (int i = 0; i < 4; ++i) {
    start = next_unused_prime(start, used);
    used.insert(start);
    walk.push_back(start);
  }
  EXPECT_EQ(walk, (std::vector<uint64_t>{646403, 646411, 646421, 646423}));
  // A second walk from the same base skips the primes taken.
  EXPECT_EQ(next_unused_prime(646399, used), 646433u);
  EXPECT_EQ(next_unused_prime(5002, {}), 5003u);  // a prime base is its own first table size
  EXPECT_EQ(next_unused_prime(0, {}), 2u);
  EXPECT_EQ(next_unused_prime(2, {3}), 5u);
}

TEST(Primes, NextUnusedPrimeThrowsPastTheLargest64BitPrime) {
  EXPECT_EQ(next_unused_prime(18446744073709551556ULL, {}), 18446744073709551557ULL);
  EXPECT_THROW(next_unused_prime(18446744073709551557ULL, {}), InputError);
  EXPECT_THROW(next_unused_prime(18446744073709551556ULL, {18446744073709551557ULL}), InputError);
  EXPECT_THROW(next_unused_prime(UINT64_MAX, {}), InputError);
}

}  // namespace
}  // namespace engram::hash
