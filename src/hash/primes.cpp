#include "engram/hash/primes.h"

#include <string>

#include "engram/util/error.h"

namespace engram::hash {
namespace {

__extension__ typedef unsigned __int128 Uint128;

uint64_t mul_mod(uint64_t a, uint64_t b, uint64_t m) {
  return static_cast<uint64_t>(static_cast<Uint128>(a) * b % m);
}

uint64_t pow_mod(uint64_t base, uint64_t exp, uint64_t m) {
  uint64_t result = 1;
  base %= m;
  while (exp != 0) {
    if (exp & 1) result = mul_mod(result, base, m);
    base = mul_mod(base, base, m);
    exp >>= 1;
  }
  return result;
}

}  // namespace

bool is_prime(uint64_t n) {
  // The first 12 primes as Miller-Rabin bases decide primality for every n < 3.3e24 > 2^64.
  constexpr uint64_t kBases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
  if (n < 2) return false;
  for (uint64_t p : kBases) {
    if (n % p == 0) return n == p;
  }
  // n - 1 = d * 2^s with d odd.
  uint64_t d = n - 1;
  int s = 0;
  while ((d & 1) == 0) {
    d >>= 1;
    ++s;
  }
  for (uint64_t a : kBases) {
    uint64_t x = pow_mod(a, d, n);
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int r = 1; r < s; ++r) {
      x = mul_mod(x, x, n);
      if (x == n - 1) {
        composite = false;
        break;
      }
    }
    if (composite) return false;
  }
  return true;
}

uint64_t next_unused_prime(uint64_t start, const std::unordered_set<uint64_t>& used) {
  // 2^64 - 59 is the largest 64-bit prime.
  constexpr uint64_t kLargestPrime = UINT64_MAX - 58;
  for (uint64_t candidate = start + 1; start < kLargestPrime && candidate <= kLargestPrime;
       ++candidate) {
    if (is_prime(candidate) && used.count(candidate) == 0) return candidate;
  }
  throw InputError(
      error_message("next_unused_prime", "no unused 64-bit prime above " + std::to_string(start)));
}

}  // namespace engram::hash
