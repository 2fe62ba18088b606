// numpy-compatible random numbers: SeedSequence -> PCG64 -> Generator.integers.
//
// Engram's hash multipliers are drawn by the reference with
//   numpy.random.default_rng(seed).integers(0, high, size=n, dtype=np.int64)
// so reproducing its tables means reproducing numpy bit for bit:
//   - SeedSequence(entropy): the entropy pool (4 x uint32) mixed with hashmix/mix,
//     generate_state() for uint32 and uint64 words;
//   - PCG64 (XSL-RR 128/64) seeded from generate_state(4, uint64);
//   - Generator.integers on int64: Lemire's bounded method on 64-bit draws
//     (32-bit draws, buffered, when the range fits in 32 bits), `high` exclusive.
// All arithmetic is integer; nothing passes through a double.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace engram::hash {

// 128-bit unsigned integer (a GCC/Clang extension; __extension__ keeps -Wpedantic quiet).
__extension__ typedef unsigned __int128 Uint128;

// numpy.random.SeedSequence with no spawn key and pool_size 4.
class SeedSequence {
 public:
  // SeedSequence(entropy) for a non-negative integer entropy (any size up to 64 bits here).
  explicit SeedSequence(uint64_t entropy);
  // SeedSequence from entropy already split into little-endian 32-bit words.
  explicit SeedSequence(std::span<const uint32_t> entropy_words);

  // generate_state(n, dtype=uint32) and generate_state(n, dtype=uint64).
  std::vector<uint32_t> generate_state_u32(size_t n_words) const;
  std::vector<uint64_t> generate_state_u64(size_t n_words) const;

  const uint32_t* pool() const { return pool_; }

 private:
  uint32_t pool_[4];
};

// numpy.random.PCG64 (the default bit generator of numpy.random.default_rng).
class Pcg64 {
 public:
  explicit Pcg64(const SeedSequence& seed);
  uint64_t next_u64();
  // numpy's next_uint32: the low half of a 64-bit draw, then its high half.
  uint32_t next_u32();

 private:
  Uint128 state_;
  Uint128 inc_;
  bool has_u32_ = false;
  uint32_t u32_ = 0;
};

// numpy.random.Generator(PCG64(SeedSequence(seed))) == numpy.random.default_rng(seed).
class NumpyGenerator {
 public:
  explicit NumpyGenerator(uint64_t seed);
  // Generator(PCG64(seed_sequence)): for seeds wider than 64 bits (e.g. seed + 10007 * layer).
  explicit NumpyGenerator(const SeedSequence& seed_sequence);

  // integers(low, high, size=n, dtype=np.int64), high exclusive. Throws InputError unless
  // low < high.
  std::vector<int64_t> integers(int64_t low, int64_t high, size_t n);

  Pcg64& bit_generator() { return bitgen_; }

 private:
  Pcg64 bitgen_;
};

}  // namespace engram::hash
