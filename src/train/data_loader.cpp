#include "engram/train/data_loader.h"

#include <algorithm>
#include <string>
#include <utility>

#include "engram/util/error.h"

namespace engram::train {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

DataLoader::DataLoader(TokenShard shard, int64_t batch, int64_t seq_len,
                       const hash::NgramHasher* hasher, uint64_t seed, Mode mode)
    : shard_(std::move(shard)),
      batch_(batch),
      seq_(seq_len),
      hasher_(hasher),
      seed_(seed),
      mode_(mode) {
  if (batch_ < 1) {
    throw InputError(error_message("DataLoader", "batch size " + std::to_string(batch_) + " < 1"));
  }
  if (seq_ < 1) {
    throw InputError(
        error_message("DataLoader", "sequence length " + std::to_string(seq_) + " < 1"));
  }
  const auto size = static_cast<int64_t>(shard_.size());
  if (size < seq_ + 1) {
    throw InputError(
        error_message("DataLoader", "token shard of " + std::to_string(size) +
                                        " tokens is shorter than " + std::to_string(seq_ + 1) +
                                        " (sequence length " + std::to_string(seq_) + " + 1)"));
  }
}

int64_t DataLoader::windows(int64_t size, int64_t seq_len) {
  if (seq_len < 1 || size < seq_len + 1) return 0;
  return (size - 1) / seq_len;
}

Batch DataLoader::make_batch(const std::vector<int64_t>& starts) const {
  const auto rows = static_cast<int64_t>(starts.size());
  const auto tokens = shard_.tokens();
  Batch b;
  b.batch = rows;
  b.seq = seq_;
  b.inputs.resize(static_cast<size_t>(rows * seq_));
  b.targets.resize(b.inputs.size());
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* w = tokens.data() + starts[r];
    int64_t* in = b.inputs.data() + r * seq_;
    int64_t* tg = b.targets.data() + r * seq_;
    for (int64_t t = 0; t < seq_; ++t) {
      in[t] = w[t];
      tg[t] = w[t + 1];
    }
  }
  if (hasher_ != nullptr) {
    b.hash_ids.resize(hasher_->num_layers() * b.inputs.size() *
                      static_cast<size_t>(hasher_->ids_per_token()));
    hasher_->hash_all_layers(b.inputs, static_cast<size_t>(rows), static_cast<size_t>(seq_),
                             b.hash_ids, 0);
  }
  return b;
}

Batch DataLoader::batch_at(int64_t step) const {
  if (mode_ != Mode::kRandom) {
    throw InputError(error_message("DataLoader::batch_at", "loader is not in random mode"));
  }
  if (step < 0) {
    throw InputError(
        error_message("DataLoader::batch_at", "step " + std::to_string(step) + " < 0"));
  }
  // Offsets in [0, size - T - 1]: size - T choices. The modulo bias is below count / 2^64.
  const auto count = static_cast<uint64_t>(shard_.size()) - static_cast<uint64_t>(seq_);
  const uint64_t step_key = splitmix64(splitmix64(seed_) ^ static_cast<uint64_t>(step));
  std::vector<int64_t> starts(static_cast<size_t>(batch_));
  for (size_t r = 0; r < starts.size(); ++r) {
    starts[r] = static_cast<int64_t>(splitmix64(step_key ^ splitmix64(r)) % count);
  }
  return make_batch(starts);
}

bool DataLoader::next(Batch& out) {
  if (mode_ != Mode::kSequential) {
    throw InputError(error_message("DataLoader::next", "loader is not in sequential mode"));
  }
  const int64_t rows = std::min(batch_, windows() - position_);
  if (rows <= 0) return false;
  std::vector<int64_t> starts(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) starts[r] = (position_ + r) * seq_;
  out = make_batch(starts);
  position_ += rows;
  return true;
}

void DataLoader::set_position(int64_t window) {
  if (window < 0 || window > windows()) {
    throw InputError(error_message(
        "DataLoader::set_position",
        "window " + std::to_string(window) + " outside [0, " + std::to_string(windows()) + "]"));
  }
  position_ = window;
}

}  // namespace engram::train
