#include "text/bpe.h"

#include <algorithm>
#include <atomic>
#include <queue>
#include <string>
#include <unordered_map>

namespace engram::text {
namespace {

std::atomic<uint64_t> next_uid{1};

// Per-thread cache of encoded pre-tokens: raw bytes -> ids (a span of `pool`).
struct WordCache {
  static constexpr size_t kMaxEntries = 1 << 17;
  static constexpr size_t kMaxWordBytes = 256;  // longer pieces are not worth caching
  uint64_t model_uid = 0;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> map;
  std::vector<uint32_t> pool;

  void reset(uint64_t uid) {
    model_uid = uid;
    map.clear();
    pool.clear();
  }
};

WordCache& cache_for(uint64_t uid) {
  thread_local WordCache cache;
  if (cache.model_uid != uid || cache.map.size() >= WordCache::kMaxEntries) cache.reset(uid);
  return cache;
}

}  // namespace

BpeModel::BpeModel(std::vector<int64_t> byte_ids, const std::vector<Merge>& merges, Options options,
                   std::vector<std::pair<std::string, uint32_t>> whole_tokens)
    : byte_ids_(std::move(byte_ids)), options_(options), uid_(next_uid.fetch_add(1)) {
  size_t cap = 16;
  while (cap < merges.size() * 2) cap <<= 1;
  keys_.assign(cap, kEmptyKey);
  values_.assign(cap, kNoMerge);
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    const uint64_t key = (static_cast<uint64_t>(m.left) << 32) | m.right;
    size_t slot = static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
    while (keys_[slot] != kEmptyKey && keys_[slot] != key) slot = (slot + 1) & mask_;
    if (keys_[slot] == key) continue;  // a repeated merge keeps its first (lowest) rank
    keys_[slot] = key;
    values_[slot] = (static_cast<uint64_t>(rank) << 32) | m.result;
    ++merge_count_;
  }
  if (options_.ignore_merges) {
    whole_tokens_sorted_ = std::move(whole_tokens);
    std::sort(whole_tokens_sorted_.begin(), whole_tokens_sorted_.end());
  }
}

void BpeModel::encode_word(std::string_view bytes, std::vector<uint32_t>& out) const {
  if (options_.ignore_merges) {
    auto it = std::lower_bound(whole_tokens_sorted_.begin(), whole_tokens_sorted_.end(), bytes,
                               [](const auto& e, std::string_view b) { return std::string_view(e.first) < b; });
    if (it != whole_tokens_sorted_.end() && it->first == bytes) {
      out.push_back(it->second);
      return;
    }
  }
  if (bytes.size() > WordCache::kMaxWordBytes) {
    merge_symbols(bytes, out);
    return;
  }
  WordCache& cache = cache_for(uid_);
  thread_local std::string key;
  key.assign(bytes);
  if (auto it = cache.map.find(key); it != cache.map.end()) {
    out.insert(out.end(), cache.pool.begin() + it->second.first,
               cache.pool.begin() + it->second.first + it->second.second);
    return;
  }
  const size_t before = out.size();
  merge_symbols(bytes, out);
  const auto offset = static_cast<uint32_t>(cache.pool.size());
  cache.pool.insert(cache.pool.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
  cache.map.emplace(key, std::make_pair(offset, static_cast<uint32_t>(out.size() - before)));
}

void BpeModel::merge_symbols(std::string_view bytes, std::vector<uint32_t>& out) const {
  // Initial symbols: one per byte (unknown bytes become unk, fused if asked, or are dropped).
  thread_local std::vector<uint32_t> ids;
  ids.clear();
  bool last_unk = false;
  for (char ch : bytes) {
    const int64_t id = byte_ids_[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      ids.push_back(static_cast<uint32_t>(id));
      last_unk = false;
    } else if (options_.unk_id) {
      if (!(options_.fuse_unk && last_unk)) ids.push_back(*options_.unk_id);
      last_unk = true;
    }
  }
  const size_t n = ids.size();
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  if (n <= 48) {
    // Short words: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties).
    size_t m = n;
    for (;;) {
      uint64_t best = kNoMerge;
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < m; ++i) {
        const uint64_t v = find_merge(ids[i], ids[i + 1]);
        if (v < best) {  // ranks are unique, so (rank << 32 | result) orders by rank
          best = v;
          best_at = i;
        }
      }
      if (best == kNoMerge) break;
      ids[best_at] = static_cast<uint32_t>(best & 0xffffffffu);
      std::copy(ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 2, ids.begin() + static_cast<std::ptrdiff_t>(m),
                ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
      --m;
    }
    out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(m));
    return;
  }
  // Long words: a min-heap of candidate merges ordered by (rank, position) over a linked list of
  // symbols; stale candidates are skipped when popped (tokenizers' merge_word).
  struct Symbol {
    uint32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    uint32_t rank, pos, result;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> sym;
  sym.resize(n);
  for (size_t i = 0; i < n; ++i) {
    sym[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = sym[static_cast<size_t>(pos)].next;
    if (next < 0) return;
    const uint64_t v = find_merge(sym[static_cast<size_t>(pos)].id, sym[static_cast<size_t>(next)].id);
    if (v != kNoMerge) heap.push({static_cast<uint32_t>(v >> 32), static_cast<uint32_t>(pos), static_cast<uint32_t>(v)});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& s = sym[top.pos];
    if (!s.alive || s.next < 0) continue;
    Symbol& nx = sym[static_cast<size_t>(s.next)];
    const uint64_t v = find_merge(s.id, nx.id);
    if (v == kNoMerge || static_cast<uint32_t>(v) != top.result) continue;
    s.id = top.result;
    nx.alive = false;
    s.next = nx.next;
    if (s.next >= 0) sym[static_cast<size_t>(s.next)].prev = static_cast<int32_t>(top.pos);
    push(s.prev);
    push(static_cast<int32_t>(top.pos));
  }
  for (size_t i = 0; i < n; i = sym[i].next < 0 ? n : static_cast<size_t>(sym[i].next)) out.push_back(sym[i].id);
}

}  // namespace engram::text
