// Batches of token windows from a TokenShard for training and validation, with the Engram hash
// ids of the inputs computed here, ahead of the model.
//
// A window is T+1 consecutive tokens: inputs are its first T, targets its last T (the next
// token of every input).
//   kRandom      (training) row r of batch k starts at a uniformly random offset in
//                [0, size - T - 1], drawn from a counter-based generator of (seed, k, r): batch k
//                is a pure function of (seed, k), so resuming at step k reproduces the run.
//   kSequential  (validation) window w has inputs at tokens [w*T, w*T + T); windows are visited
//                in order, B per batch, and the last batch may hold fewer rows. position() is the
//                next window, so a checkpoint can save it and set_position() restore it.
#pragma once

#include <cstdint>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/train/dataset.h"

namespace engram::train {

struct Batch {
  int64_t batch = 0, seq = 0;     // B (rows actually filled), T
  std::vector<int64_t> inputs;    // (B, T)
  std::vector<int64_t> targets;   // (B, T): targets[b][t] = the token after inputs[b][t]
  std::vector<int32_t> hash_ids;  // (L, B, T, H) per-head ids; empty when there is no hasher
};

class DataLoader {
 public:
  enum class Mode { kRandom, kSequential };

  // `hasher` may be null (no hash ids) and must outlive the loader. Throws InputError when
  // batch or seq_len < 1, or the shard holds fewer than seq_len + 1 tokens.
  DataLoader(TokenShard shard, int64_t batch, int64_t seq_len, const hash::NgramHasher* hasher,
             uint64_t seed, Mode mode);

  // Number of non-overlapping windows (kSequential) in a shard of `size` tokens:
  // (size - 1) / seq_len.
  static int64_t windows(int64_t size, int64_t seq_len);

  // kRandom: batch number `step` (>= 0). Throws InputError in kSequential mode or for step < 0;
  // ids outside the hasher's vocabulary propagate its InputError.
  Batch batch_at(int64_t step) const;

  // kSequential: fills `out` with the next min(B, remaining) windows; false (out untouched) when
  // no full window remains. Throws InputError in kRandom mode.
  bool next(Batch& out);
  void reset() { position_ = 0; }
  // The next window to visit, in [0, windows()].
  int64_t position() const { return position_; }
  // Throws InputError when `window` is outside [0, windows()].
  void set_position(int64_t window);

  int64_t batch_size() const { return batch_; }
  int64_t seq_len() const { return seq_; }
  Mode mode() const { return mode_; }
  int64_t windows() const { return windows(static_cast<int64_t>(shard_.size()), seq_); }

 private:
  // Builds a batch of starts.size() windows starting at the given token offsets.
  Batch make_batch(const std::vector<int64_t>& starts) const;

  TokenShard shard_;
  int64_t batch_ = 0, seq_ = 0;
  const hash::NgramHasher* hasher_ = nullptr;
  uint64_t seed_ = 0;
  Mode mode_ = Mode::kRandom;
  int64_t position_ = 0;
};

}  // namespace engram::train
