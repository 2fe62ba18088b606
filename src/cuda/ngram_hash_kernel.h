// The n-gram hashing kernel's launcher (src/cuda/ngram_hash.cu), in plain types: the .cu files
// are C++17 and cannot include the std::span headers that GpuNgramHasher's file uses.
#pragma once

#include <cstdint>

namespace engram::cuda {

// x = t * 2^kModSplit + b in the exact floor modulo (src/hash/fast_mod.h).
inline constexpr int kModSplit = 42;
// Per prime, in this order: p, 1/p (rounded to nearest), 2^kModSplit mod p.
inline constexpr int kModConstsPerPrime = 3;

struct NgramHashArgs {
  const int64_t* ids;    // (tokens) = (batch, seq) tokenizer ids
  const int32_t* lut;    // (vocab) compression table
  const uint64_t* mult;  // (layers, N) multipliers
  const double* consts;  // (layers, N-1, K, kModConstsPerPrime)
  int32_t* out;          // (layers, tokens, N-1, K) = (layers, batch, seq, ids_per_token)
  int64_t layers, tokens, seq, vocab;
  int64_t pad;       // pad' = P(pad_id)
  int64_t dead_id;   // the dead id, when dead_rule
  int max_n, heads;  // N, K
  bool dead_rule;
};

// Launches the hashing of every (layer, token) on `stream` (a cudaStream_t; nullptr = the
// default stream). Throws engram::Error on a launch failure. tokens >= 1.
void launch_ngram_hash(const NgramHashArgs& args, void* stream);

}  // namespace engram::cuda
