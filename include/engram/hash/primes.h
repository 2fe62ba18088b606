// Primes for Engram's per-head table sizes.
#pragma once

#include <cstdint>
#include <unordered_set>

namespace engram::hash {

// Deterministic Miller-Rabin, exact for every 64-bit n.
bool is_prime(uint64_t n);

// The smallest prime p > start with p not in `used` (the reference's find_next_prime).
// Throws InputError when no such 64-bit prime exists.
uint64_t next_unused_prime(uint64_t start, const std::unordered_set<uint64_t>& used);

}  // namespace engram::hash
