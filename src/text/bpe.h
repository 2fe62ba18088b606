// The BPE model of a byte-level tokenizer: merges pairs of symbols by rank, lowest first (ties:
// leftmost), exactly as Hugging Face `tokenizers` BPE does, over the bytes of a pre-token.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram::text {

class BpeModel {
 public:
  struct Merge {
    uint32_t left, right, result;  // token ids
  };
  struct Options {
    std::optional<uint32_t> unk_id;  // id for bytes missing from the vocabulary (else dropped)
    bool fuse_unk = false;
    bool ignore_merges = false;  // a pre-token that is itself in the vocabulary is one token
  };

  // byte_ids[b]: id of the token for the single byte b (-1 if absent); merges in rank order;
  // whole_tokens: raw bytes -> id for every vocabulary token (used with ignore_merges).
  BpeModel(std::vector<int64_t> byte_ids, const std::vector<Merge>& merges, Options options,
           std::vector<std::pair<std::string, uint32_t>> whole_tokens);

  // Appends the ids of one pre-token (raw bytes, non-empty) to `out`. Thread-safe; results are
  // cached per thread.
  void encode_word(std::string_view bytes, std::vector<uint32_t>& out) const;

  size_t num_merges() const { return merge_count_; }

 private:
  // (rank << 32 | result) for the pair (left, right), or kNoMerge.
  static constexpr uint64_t kNoMerge = ~0ull;
  uint64_t find_merge(uint32_t left, uint32_t right) const {
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
    size_t slot = static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
    for (;;) {
      const Slot& s = table_[slot];
      if (s.key == key) return s.value;
      if (s.key == kEmptyKey) return kNoMerge;
      slot = (slot + 1) & mask_;
    }
  }
  void merge_symbols(std::string_view bytes, std::vector<uint32_t>& out) const;

  static constexpr uint64_t kEmptyKey = ~0ull;
  std::vector<int64_t> byte_ids_;
  struct Slot {  // key and value side by side: one cache line visit per probe
    uint64_t key, value;
  };
  std::vector<Slot> table_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t merge_count_ = 0;
  Options options_;
  std::vector<std::pair<std::string, uint32_t>> whole_tokens_sorted_;  // for ignore_merges
  uint64_t uid_;  // identifies this model in the per-thread caches
};

}  // namespace engram::text
