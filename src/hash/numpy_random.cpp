// numpy's SeedSequence, PCG64 and Generator.integers, transcribed from numpy/random
// (bit_generator.pyx, pcg64.h, distributions.c: random_bounded_uint64_fill and the Lemire
// helpers). Constants and the order of operations are numpy's; do not "simplify" them.
#include "engram/hash/numpy_random.h"

#include <string>

#include "engram/util/error.h"

namespace engram::hash {
namespace {

constexpr uint32_t kInitA = 0x43b0d7e5;
constexpr uint32_t kMultA = 0x931e8875;
constexpr uint32_t kInitB = 0x8b51f9dd;
constexpr uint32_t kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd;
constexpr uint32_t kMixMultR = 0x4973f715;
constexpr int kXShift = 16;
constexpr size_t kPoolSize = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

// numpy's _int_to_uint32_array: little-endian 32-bit words, [0] for zero.
std::vector<uint32_t> entropy_words(uint64_t entropy) {
  std::vector<uint32_t> words;
  do {
    words.push_back(static_cast<uint32_t>(entropy));
    entropy >>= 32;
  } while (entropy != 0);
  return words;
}

constexpr Uint128 kPcgMultiplier =
    (static_cast<Uint128>(0x2360ED051FC65DA4ULL) << 64) | 0x4385DF649FCCF645ULL;

}  // namespace

SeedSequence::SeedSequence(uint64_t entropy) : SeedSequence(entropy_words(entropy)) {}

SeedSequence::SeedSequence(std::span<const uint32_t> entropy_words) {
  // mix_entropy: hash the first pool_size words in, mix every pool word into every other one,
  // then fold any remaining entropy words into each pool word.
  uint32_t hash_const = kInitA;
  for (size_t i = 0; i < kPoolSize; ++i) {
    pool_[i] = hashmix(i < entropy_words.size() ? entropy_words[i] : 0u, hash_const);
  }
  for (size_t src = 0; src < kPoolSize; ++src) {
    for (size_t dst = 0; dst < kPoolSize; ++dst) {
      if (src != dst) pool_[dst] = mix(pool_[dst], hashmix(pool_[src], hash_const));
    }
  }
  for (size_t src = kPoolSize; src < entropy_words.size(); ++src) {
    for (size_t dst = 0; dst < kPoolSize; ++dst) {
      pool_[dst] = mix(pool_[dst], hashmix(entropy_words[src], hash_const));
    }
  }
}

std::vector<uint32_t> SeedSequence::generate_state_u32(size_t n_words) const {
  std::vector<uint32_t> state(n_words);
  uint32_t hash_const = kInitB;
  for (size_t i = 0; i < n_words; ++i) {
    uint32_t value = pool_[i % kPoolSize];
    value ^= hash_const;
    hash_const *= kMultB;
    value *= hash_const;
    value ^= value >> kXShift;
    state[i] = value;
  }
  return state;
}

std::vector<uint64_t> SeedSequence::generate_state_u64(size_t n_words) const {
  // numpy draws 2n uint32 words and views them as uint64 (little endian: low word first).
  const std::vector<uint32_t> words = generate_state_u32(2 * n_words);
  std::vector<uint64_t> state(n_words);
  for (size_t i = 0; i < n_words; ++i) {
    state[i] =
        static_cast<uint64_t>(words[2 * i]) | (static_cast<uint64_t>(words[2 * i + 1]) << 32);
  }
  return state;
}

Pcg64::Pcg64(const SeedSequence& seed) {
  // PCG64 seeding: val = generate_state(4, uint64); pcg64_set_seed(seed = val[0:2], inc =
  // val[2:4]) with the high 64 bits first; then pcg_setseq_128_srandom_r.
  const std::vector<uint64_t> val = seed.generate_state_u64(4);
  const Uint128 initstate = (static_cast<Uint128>(val[0]) << 64) | val[1];
  const Uint128 initseq = (static_cast<Uint128>(val[2]) << 64) | val[3];
  state_ = 0;
  inc_ = (initseq << 1) | 1;
  state_ = state_ * kPcgMultiplier + inc_;
  state_ += initstate;
  state_ = state_ * kPcgMultiplier + inc_;
}

uint64_t Pcg64::next_u64() {
  // Step, then output XSL-RR of the new state.
  state_ = state_ * kPcgMultiplier + inc_;
  const uint64_t xored = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (xored >> rot) | (xored << ((64 - rot) & 63));
}

uint32_t Pcg64::next_u32() {
  if (has_u32_) {
    has_u32_ = false;
    return u32_;
  }
  const uint64_t next = next_u64();
  has_u32_ = true;
  u32_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next);
}

NumpyGenerator::NumpyGenerator(uint64_t seed) : bitgen_(SeedSequence(seed)) {}

NumpyGenerator::NumpyGenerator(const SeedSequence& seed_sequence) : bitgen_(seed_sequence) {}

std::vector<int64_t> NumpyGenerator::integers(int64_t low, int64_t high, size_t n) {
  if (low >= high) {
    throw InputError(
        error_message("NumpyGenerator::integers",
                      "low " + std::to_string(low) + " >= high " + std::to_string(high)));
  }
  // random_bounded_uint64_fill(off = low, rng = high - 1 - low), unmasked (Lemire) variant.
  const uint64_t off = static_cast<uint64_t>(low);
  const uint64_t rng = static_cast<uint64_t>(high - 1) - off;
  std::vector<int64_t> out(n);
  auto emit = [&](size_t i, uint64_t value) { out[i] = static_cast<int64_t>(off + value); };
  if (rng == 0) {
    for (size_t i = 0; i < n; ++i) emit(i, 0);
  } else if (rng <= 0xFFFFFFFFULL) {
    if (rng == 0xFFFFFFFFULL) {
      for (size_t i = 0; i < n; ++i) emit(i, bitgen_.next_u32());
    } else {
      // buffered_bounded_lemire_uint32 (its buffer is next_uint32's own).
      const uint32_t rng_excl = static_cast<uint32_t>(rng) + 1;
      for (size_t i = 0; i < n; ++i) {
        uint64_t m = static_cast<uint64_t>(bitgen_.next_u32()) * rng_excl;
        uint32_t leftover = static_cast<uint32_t>(m);
        if (leftover < rng_excl) {
          const uint32_t threshold = (UINT32_MAX - static_cast<uint32_t>(rng)) % rng_excl;
          while (leftover < threshold) {
            m = static_cast<uint64_t>(bitgen_.next_u32()) * rng_excl;
            leftover = static_cast<uint32_t>(m);
          }
        }
        emit(i, m >> 32);
      }
    }
  } else if (rng == UINT64_MAX) {
    for (size_t i = 0; i < n; ++i) emit(i, bitgen_.next_u64());
  } else {
    // bounded_lemire_uint64.
    const uint64_t rng_excl = rng + 1;
    for (size_t i = 0; i < n; ++i) {
      Uint128 m = static_cast<Uint128>(bitgen_.next_u64()) * rng_excl;
      uint64_t leftover = static_cast<uint64_t>(m);
      if (leftover < rng_excl) {
        const uint64_t threshold = (UINT64_MAX - rng) % rng_excl;
        while (leftover < threshold) {
          m = static_cast<Uint128>(bitgen_.next_u64()) * rng_excl;
          leftover = static_cast<uint64_t>(m);
        }
      }
      emit(i, static_cast<uint64_t>(m >> 64));
    }
  }
  return out;
}

}  // namespace engram::hash
