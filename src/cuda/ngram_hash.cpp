// GpuNgramHasher (include/engram/cuda/ngram_hash.h): uploads the hasher's tables and validates
// input; the kernel is in src/cuda/ngram_hash.cu. src/cuda/ngram_hash_stub.cpp stands in for
// both in builds without CUDA.
#include "engram/cuda/ngram_hash.h"

#include <string>

#include "cuda/ngram_hash_kernel.h"

namespace engram::cuda {
namespace {

std::string id_error(int64_t row, int64_t pos, int64_t id, int64_t vocab) {
  return error_message(
      "GpuNgramHasher::hash_host",
      "ids[" + std::to_string(row) + "][" + std::to_string(pos) + "] = " + std::to_string(id) +
          " is outside the tokenizer vocabulary [0, " + std::to_string(vocab) + ")");
}

}  // namespace

GpuNgramHasher::GpuNgramHasher(const hash::NgramHasher& hasher)
    : num_layers_(static_cast<int64_t>(hasher.num_layers())),
      max_n_(hasher.max_ngram_size()),
      heads_(hasher.config().n_head_per_ngram),
      vocab_(hasher.tokenizer_vocab()),
      pad_(hasher.pad_compressed()),
      dead_rule_(hasher.config().dead_token_id.has_value()),
      dead_id_(hasher.config().dead_token_id.value_or(0)) {
  lut_ = DeviceBuffer<int32_t>(hasher.compress_lut());
  std::vector<uint64_t> mult;
  std::vector<double> consts;
  for (size_t l = 0; l < hasher.num_layers(); ++l) {
    for (int64_t m : hasher.multipliers(l)) mult.push_back(static_cast<uint64_t>(m));
    for (const auto& order_primes : hasher.primes(l)) {
      for (int64_t p : order_primes) {
        consts.push_back(static_cast<double>(p));
        consts.push_back(1.0 / static_cast<double>(p));
        consts.push_back(static_cast<double>((int64_t{1} << kModSplit) % p));
      }
    }
  }
  mult_ = DeviceBuffer<uint64_t>(std::span<const uint64_t>(mult));
  mod_consts_ = DeviceBuffer<double>(std::span<const double>(consts));
}

void GpuNgramHasher::hash(const int64_t* d_ids, int64_t batch, int64_t seq, int32_t* d_out,
                          void* stream) const {
  if (batch < 0 || seq < 0) {
    throw InputError(error_message(
        "GpuNgramHasher::hash",
        "batch " + std::to_string(batch) + " and seq " + std::to_string(seq) + " must be >= 0"));
  }
  const int64_t tokens = batch * seq;
  if (tokens == 0) return;
  const NgramHashArgs args{
      d_ids, lut_.data(), mult_.data(), mod_consts_.data(), d_out,  num_layers_, tokens,
      seq,   vocab_,      pad_,         dead_id_,           max_n_, heads_,      dead_rule_};
  launch_ngram_hash(args, stream);
}

std::vector<int32_t> GpuNgramHasher::hash_host(std::span<const int64_t> ids, int64_t batch,
                                               int64_t seq) const {
  if (batch < 0 || seq < 0 || static_cast<int64_t>(ids.size()) != batch * seq) {
    throw InputError(error_message("GpuNgramHasher::hash_host",
                                   "ids has " + std::to_string(ids.size()) +
                                       " elements, batch x seq = " + std::to_string(batch) + " x " +
                                       std::to_string(seq)));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if ((id < 0 || id >= vocab_) && !(dead_rule_ && id == dead_id_)) {
      const auto t = static_cast<int64_t>(i);
      throw InputError(id_error(t / seq, t % seq, id, vocab_));
    }
  }
  std::vector<int32_t> out(static_cast<size_t>(num_layers_) * ids.size() *
                           static_cast<size_t>(ids_per_token()));
  if (ids.empty()) return out;
  const DeviceBuffer<int64_t> d_ids(ids);
  DeviceBuffer<int32_t> d_out(out.size());
  hash(d_ids.data(), batch, seq, d_out.data());
  d_out.download(out);  // cudaMemcpy waits for the kernel on the default stream
  return out;
}

}  // namespace engram::cuda
