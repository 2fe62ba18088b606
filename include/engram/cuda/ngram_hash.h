// Engram's n-gram hashing on the GPU, bit-identical to NgramHasher::hash_all_layers
// (ENGRAM_SPEC §2), dead-id rule included.
//
// One thread computes one (layer, token, order n) and writes that order's K head ids. Each head's
// floor modulo is the exact double-precision method of src/hash/fast_mod.h (t * (2^42 mod p) + b,
// quotient from a rounded product with 1/p, one correction), run on the GPU's fp64 units with
// the per-prime constants computed on the host: exact for every int64 mix value, so the ids
// equal the CPU's bit for bit whatever the rounding of the intermediate products.
//
//   GpuNgramHasher gpu(cpu_hasher);                  // uploads table, multipliers, primes
//   std::vector<int32_t> ids = gpu.hash_host(tokens, batch, seq);
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/hash/ngram_hasher.h"

namespace engram::cuda {

class GpuNgramHasher {
 public:
  // Copies everything hashing needs to the current device (the compression table: 4 bytes a
  // tokenizer id; the multipliers and per-prime constants: a few KiB). Throws engram::Error
  // without CUDA or on a CUDA failure.
  explicit GpuNgramHasher(const hash::NgramHasher& hasher);

  // Device API. d_ids: (batch, seq) tokenizer ids on the device; d_out: (num_layers, batch, seq,
  // ids_per_token) int32 on the device, the layout of NgramHasher::hash_all_layers. Launched on
  // `stream` (a cudaStream_t; nullptr = the default stream), asynchronously.
  // Precondition: every id lies in [0, tokenizer_vocab()) or is the dead_token_id (dead-id rule
  // on). The kernel does not check this for the caller, but it never reads out of bounds: an id
  // outside is read as no id at all, and every head id of every order whose window holds it is
  // written as -1 (so a following gather yields NaN rows rather than wrong data).
  // Throws InputError for a negative batch or seq, engram::Error on a launch failure.
  void hash(const int64_t* d_ids, int64_t batch, int64_t seq, int32_t* d_out,
            void* stream = nullptr) const;

  // Host convenience: validates ids (InputError naming ids[row][position] and the value, as the
  // CPU hasher does), uploads, hashes, downloads. Returns (num_layers, batch, seq, ids_per_token).
  std::vector<int32_t> hash_host(std::span<const int64_t> ids, int64_t batch, int64_t seq) const;

  int64_t num_layers() const { return num_layers_; }
  int ids_per_token() const { return (max_n_ - 1) * heads_; }

 private:
  int64_t num_layers_ = 0;
  int max_n_ = 0;      // N
  int heads_ = 0;      // K
  int64_t vocab_ = 0;  // tokenizer ids: the compression table's size
  int64_t pad_ = 0;    // pad' = P(pad_id)
  bool dead_rule_ = false;
  int64_t dead_id_ = 0;              // dead_token_id (outside [0, vocab_)) when dead_rule_
  DeviceBuffer<int32_t> lut_;        // (vocab_)
  DeviceBuffer<uint64_t> mult_;      // (num_layers, N)
  DeviceBuffer<double> mod_consts_;  // (num_layers, N-1, K, 3): p, 1/p, 2^42 mod p
};

}  // namespace engram::cuda
