#include "text/bpe.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <queue>
#include <string>

namespace engram::text {
namespace {

std::atomic<uint64_t> next_uid{1};

// A fast hash for short byte strings (pre-tokens are mostly under 16 bytes); reads each byte
// at most twice with whole-word loads.
uint64_t hash_bytes(std::string_view s) {
  const char* p = s.data();
  const size_t n = s.size();
  auto load64 = [](const char* q) {
    uint64_t w;
    std::memcpy(&w, q, 8);
    return w;
  };
  auto load32 = [](const char* q) {
    uint32_t w;
    std::memcpy(&w, q, 4);
    return static_cast<uint64_t>(w);
  };
  auto mix = [](uint64_t h, uint64_t w) {
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 31);
  };
  uint64_t h = n * 0x9E3779B97F4A7C15ull;
  if (n >= 8) {
    size_t i = 0;
    for (; i + 8 < n; i += 8) h = mix(h, load64(p + i));
    h = mix(h, load64(p + n - 8));  // the last 8 bytes, overlapping
  } else if (n >= 4) {
    h = mix(h, load32(p) | (load32(p + n - 4) << 32));
  } else if (n > 0) {
    h = mix(h, static_cast<uint8_t>(p[0]) |
                   (static_cast<uint64_t>(static_cast<uint8_t>(p[n / 2])) << 8) |
                   (static_cast<uint64_t>(static_cast<uint8_t>(p[n - 1])) << 16));
  }
  h *= 0x94D049BB133111EBull;
  return h ^ (h >> 32);
}

class WordCache {
 public:
  static constexpr size_t kSlots = 1 << 16;     // 1 MiB of slots: stays in L2
  static constexpr size_t kMaxWordBytes = 256;  // longer pieces are not worth caching

  static WordCache& for_model(uint64_t uid) {
    thread_local WordCache cache;
    if (cache.model_uid_ != uid || cache.count_ >= kSlots / 2) cache.reset(uid);
    return cache;
  }

  // Appends the cached ids of `word` to out and returns true, or returns false.
  bool lookup(std::string_view word, uint64_t h, std::vector<uint32_t>& out) const {
    const uint32_t tag = tag_of(h);
    for (size_t slot = h & (kSlots - 1);; slot = (slot + 1) & (kSlots - 1)) {
      const Entry& e = slots_[slot];
      if (e.tag == 0) return false;
      if (e.tag == tag && e.key_len == word.size() &&
          std::memcmp(keys_.data() + e.key_off, word.data(), word.size()) == 0) {
        out.insert(out.end(), ids_.begin() + e.ids_off, ids_.begin() + e.ids_off + e.ids_len);
        return true;
      }
    }
  }

  void insert(std::string_view word, uint64_t h, const uint32_t* ids, size_t n) {
    size_t slot = h & (kSlots - 1);
    while (slots_[slot].tag != 0) slot = (slot + 1) & (kSlots - 1);
    slots_[slot] = {tag_of(h), static_cast<uint32_t>(keys_.size()),
                    static_cast<uint16_t>(word.size()), static_cast<uint16_t>(n),
                    static_cast<uint32_t>(ids_.size())};
    keys_.append(word);
    ids_.insert(ids_.end(), ids, ids + n);
    ++count_;
  }

 private:
  struct Entry {   // 16 bytes
    uint32_t tag;  // high hash bits, never 0 (0 = empty slot)
    uint32_t key_off;
    uint16_t key_len, ids_len;
    uint32_t ids_off;
  };
  static uint32_t tag_of(uint64_t h) { return static_cast<uint32_t>(h >> 32) | 1u; }
  void reset(uint64_t uid) {
    model_uid_ = uid;
    slots_.assign(kSlots, Entry{0, 0, 0, 0, 0});
    keys_.reserve(kSlots * 8);
    ids_.reserve(kSlots * 2);
    keys_.clear();
    ids_.clear();
    count_ = 0;
  }
  uint64_t model_uid_ = 0;
  std::vector<Entry> slots_;
  std::string keys_;
  std::vector<uint32_t> ids_;
  size_t count_ = 0;
};

}  // namespace

BpeModel::BpeModel(std::vector<int64_t> byte_ids, const std::vector<Merge>& merges, Options options,
                   std::vector<std::pair<std::string, uint32_t>> whole_tokens)
    : byte_ids_(std::move(byte_ids)), options_(options), uid_(next_uid.fetch_add(1)) {
  size_t cap = 16;
  while (cap < merges.size() * 2) cap <<= 1;
  table_.assign(cap, Slot{kEmptyKey, kNoMerge});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    const uint64_t key = (static_cast<uint64_t>(m.left) << 32) | m.right;
    size_t slot = static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
    while (table_[slot].key != kEmptyKey && table_[slot].key != key) slot = (slot + 1) & mask_;
    if (table_[slot].key == key) continue;  // a repeated merge keeps its first (lowest) rank
    table_[slot] = {key, (static_cast<uint64_t>(rank) << 32) | m.result};
    ++merge_count_;
  }
  if (options_.ignore_merges) {
    whole_tokens_sorted_ = std::move(whole_tokens);
    std::sort(whole_tokens_sorted_.begin(), whole_tokens_sorted_.end());
  }
}

void BpeModel::encode_word(std::string_view bytes, std::vector<uint32_t>& out) const {
  if (options_.ignore_merges) {
    auto it = std::lower_bound(
        whole_tokens_sorted_.begin(), whole_tokens_sorted_.end(), bytes,
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
  WordCache& cache = WordCache::for_model(uid_);
  const uint64_t h = hash_bytes(bytes);
  if (cache.lookup(bytes, h, out)) return;
  const size_t before = out.size();
  merge_symbols(bytes, out);
  cache.insert(bytes, h, out.data() + before, out.size() - before);
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
  if (n <= 64) {
    // Short words: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties). `pair`
    // caches the merge of each adjacent pair, so a merge costs two table look-ups.
    thread_local std::vector<uint64_t> pair;
    pair.resize(n);
    size_t m = n;
    for (size_t i = 0; i + 1 < m; ++i) pair[i] = find_merge(ids[i], ids[i + 1]);
    for (;;) {
      uint64_t best = kNoMerge;
      size_t at = 0;
      for (size_t i = 0; i + 1 < m; ++i) {
        if (pair[i] < best) {  // ranks are unique, so (rank << 32 | result) orders by rank
          best = pair[i];
          at = i;
        }
      }
      if (best == kNoMerge) break;
      ids[at] = static_cast<uint32_t>(best & 0xffffffffu);
      for (size_t i = at + 1; i + 1 < m; ++i) {
        ids[i] = ids[i + 1];
        pair[i] = pair[i + 1];
      }
      --m;
      if (at > 0) pair[at - 1] = find_merge(ids[at - 1], ids[at]);
      if (at + 1 < m) pair[at] = find_merge(ids[at], ids[at + 1]);
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
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> sym;
  sym.resize(n);
  for (size_t i = 0; i < n; ++i) {
    sym[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1,
              true};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = sym[static_cast<size_t>(pos)].next;
    if (next < 0) return;
    const uint64_t v =
        find_merge(sym[static_cast<size_t>(pos)].id, sym[static_cast<size_t>(next)].id);
    if (v != kNoMerge)
      heap.push(
          {static_cast<uint32_t>(v >> 32), static_cast<uint32_t>(pos), static_cast<uint32_t>(v)});
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
  for (size_t i = 0; i < n; i = sym[i].next < 0 ? n : static_cast<size_t>(sym[i].next))
    out.push_back(sym[i].id);
}

}  // namespace engram::text
