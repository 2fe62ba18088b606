// Exact floor modulo of signed 64-bit values by run-time divisors without a division
// instruction. The n-gram hash reduces every mix value modulo every head's prime, so a `%` per
// element would dominate the kernel.
//
// The K heads of one n-gram order share their mix value, so the divisors are processed kLanes
// at a time: the same x against kLanes divisors, in double arithmetic that the compiler maps to
// SIMD registers (AVX-512: one zmm per operation; AVX2: two ymm; SSE2: four xmm).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace engram::hash::fastmod {

inline constexpr int kLanes = 8;
// Every divisor p must satisfy 2 <= p <= kMaxDivisor.
inline constexpr int64_t kMaxDivisor = INT32_MAX;

// GCC/Clang vector extensions: element-wise operators, scalars broadcast.
using F64xL = double __attribute__((vector_size(kLanes * sizeof(double))));
using I32xL = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));

// x = t * 2^kSplit + b with t = x >> kSplit in [-2^21, 2^21) and b in [0, 2^42).
inline constexpr int kSplit = 42;

// Per-lane constants of up to kLanes divisors.
struct ModLanes {
  F64xL p;      // the divisors (unused lanes repeat the first one)
  F64xL inv;    // 1.0 / p, rounded to nearest
  F64xL split;  // 2^kSplit mod p
};

// primes[0 .. count), 1 <= count <= kLanes, each in [2, kMaxDivisor].
inline ModLanes make_mod_lanes(const int64_t* primes, int count) {
  ModLanes c{};
  for (int i = 0; i < kLanes; ++i) {
    const int64_t p = primes[i < count ? i : 0];
    c.p[i] = static_cast<double>(p);
    c.inv[i] = 1.0 / static_cast<double>(p);
    c.split[i] = static_cast<double>((int64_t{1} << kSplit) % p);
  }
  return c;
}

// x floor-mod p in every lane, exact for every int64 x. Every intermediate is an integer of
// magnitude below 2^53, held exactly in a double; only the quotient is estimated:
//   v = t * (2^42 mod p) + b       v = x (mod p), |t * (2^42 mod p)| < 2^21 * p < 2^52,
//                                  so |v| < 2^52 + 2^42 and |v / p| < 2^21 + 2^41
//   q = round(v * inv)             the estimate of v / p is off by < 2^42 * 2^-52 << 1/2, so
//                                  q is floor(v / p) or floor(v / p) + 1
//   r = v - q * p                  |q * p| <= |v| + p < 2^53; r in [-p, p), then + p if < 0.
// round(y) adds and subtracts 1.5 * 2^52 (round to nearest for |y| < 2^51). t and b become
// doubles the same way, from bit patterns: the double with the bits of 1.5 * 2^52 plus an
// integer i is 1.5 * 2^52 + i for |i| < 2^51 (cheaper than an int-to-double conversion).
// Whether the compiler fuses a * b + c into an FMA or not, the results are the same integers.
//
// Writes the first `count` lanes (1 <= count <= kLanes) to out[0 .. count).
[[gnu::always_inline]] inline void floor_mod_lanes(int64_t x, const ModLanes& c, int count,
                                                   int32_t* out) {
  using I64xL = int64_t __attribute__((vector_size(kLanes * sizeof(int64_t))));
  constexpr double kRound = 0x1.8p52;
  constexpr int64_t kRoundBits = 0x4338000000000000;  // std::bit_cast<int64_t>(kRound)
  const I64xL t_bits = I64xL{} + ((x >> kSplit) + kRoundBits);
  const I64xL b_bits = I64xL{} + ((x & ((int64_t{1} << kSplit) - 1)) + kRoundBits);
  const F64xL t = __builtin_bit_cast(F64xL, t_bits) - kRound;
  const F64xL b = __builtin_bit_cast(F64xL, b_bits) - kRound;
  const F64xL v = t * c.split + b;
  const F64xL q = (v * c.inv + kRound) - kRound;
  const F64xL r = v - q * c.p;
  const I32xL z = __builtin_convertvector(r < 0 ? r + c.p : r, I32xL);
  if (count == kLanes) {
    std::memcpy(out, &z, sizeof z);
  } else {
    std::memcpy(out, &z, static_cast<size_t>(count) * sizeof(int32_t));
  }
}

}  // namespace engram::hash::fastmod
