#include "engram/memory/tiered_store.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <utility>

#include "engram/util/crc32c.h"
#include "engram/util/error.h"

namespace engram::memory {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// A run of missing rows sharing one block group: unique[first, first + count) lie in group
// `group` (blocks group · blocks_per_row …).
struct GroupRun {
  int64_t group;
  size_t first;  // position in the miss list
  size_t count;
};

// One read: groups runs[first_run, first_run + num_runs), consecutive on disk.
struct MergedRead {
  size_t first_run;
  size_t num_runs;
  int64_t first_block;
  int64_t num_blocks;
};

}  // namespace

TierStats& TierStats::operator+=(const TierStats& o) {
  calls += o.calls;
  requested += o.requested;
  unique += o.unique;
  hits += o.hits;
  misses += o.misses;
  fills += o.fills;
  blocks_read += o.blocks_read;
  reads += o.reads;
  bytes_read += o.bytes_read;
  bad_blocks += o.bad_blocks;
  io_seconds += o.io_seconds;
  seconds += o.seconds;
  return *this;
}

TieredRowStore::TieredRowStore(const std::string& path, const TieredStoreOptions& options)
    : file_(EngtFile::open(path)), options_(options), cache_rows_(options.cache_rows) {
  auto bad = [&](const std::string& what) {
    return ConfigError(error_message("TieredStoreOptions", what));
  };
  if (cache_rows_ < 0) throw bad("cache_rows " + std::to_string(cache_rows_) + " < 0");
  if (options_.max_read_blocks < 1)
    throw bad("max_read_blocks " + std::to_string(options_.max_read_blocks) + " < 1");
  if (options_.chunk_blocks < file_.layout().blocks_per_row) {
    throw bad("chunk_blocks " + std::to_string(options_.chunk_blocks) + " is below the " +
              std::to_string(file_.layout().blocks_per_row) + " blocks of one row");
  }
  reader_ = std::make_unique<BlockReader>(path, options_.reader);
  if (cache_rows_ > 0) {
    cache_ = std::make_unique<RowCache>(cache_rows_, options_.policy, options_.frequency);
    slab_.resize(static_cast<size_t>(cache_rows_ * file_.row_bytes()));
  }
}

TieredRowStore::~TieredRowStore() = default;

bool TieredRowStore::cached(int64_t row) const {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_ && cache_->lookup(row).has_value();
}

int64_t TieredRowStore::cached_rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_ ? cache_->size() : 0;
}

int64_t TieredRowStore::cache_memory_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(slab_.size()) + (cache_ ? cache_->memory_bytes() : 0);
}

TierStats TieredRowStore::last_call_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_;
}

TierStats TieredRowStore::total_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_;
}

void TieredRowStore::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  last_ = total_ = TierStats{};
}

void TieredRowStore::record(const TierStats& call) const {
  std::lock_guard<std::mutex> lock(mu_);
  last_ = call;
  total_ += call;
}

void TieredRowStore::fetch(std::span<const int64_t> rows, std::vector<int64_t>& unique,
                           std::vector<int64_t>& index, std::vector<uint8_t>& encoded,
                           TierStats& stats) const {
  const auto t0 = Clock::now();
  const EngtLayout& l = file_.layout();
  const int64_t rb = l.row_bytes;
  for (const int64_t r : rows) {
    if (r < 0 || r >= l.rows) {
      throw InputError(error_message(
          file_.path(),
          "row " + std::to_string(r) + " is out of range [0, " + std::to_string(l.rows) + ")"));
    }
  }

  // 1. Deduplicate: unique ascending (file order), index maps each request to its row.
  std::vector<std::pair<int64_t, int64_t>> sorted(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) sorted[i] = {rows[i], static_cast<int64_t>(i)};
  std::sort(sorted.begin(), sorted.end());
  unique.clear();
  index.assign(rows.size(), 0);
  for (const auto& [row, pos] : sorted) {
    if (unique.empty() || unique.back() != row) unique.push_back(row);
    index[static_cast<size_t>(pos)] = static_cast<int64_t>(unique.size() - 1);
  }
  encoded.resize(unique.size() * static_cast<size_t>(rb));
  stats = TierStats{};
  stats.calls = 1;
  stats.requested = static_cast<int64_t>(rows.size());
  stats.unique = static_cast<int64_t>(unique.size());

  // 2. Hits: copied out under the lock, so an eviction by another thread cannot race the copy.
  std::vector<size_t> misses;  // positions in unique
  if (cache_) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t u = 0; u < unique.size(); ++u) {
      if (const auto slot = cache_->lookup(unique[u])) {
        std::memcpy(encoded.data() + u * static_cast<size_t>(rb), slab_.data() + *slot * rb,
                    static_cast<size_t>(rb));
        ++stats.hits;
      } else {
        misses.push_back(u);
      }
    }
  } else {
    misses.resize(unique.size());
    for (size_t u = 0; u < unique.size(); ++u) misses[u] = u;
  }
  stats.misses = static_cast<int64_t>(misses.size());

  // 3. Reads: misses grouped by block group, neighbouring groups merged into one read.
  std::vector<GroupRun> runs;
  for (size_t m = 0; m < misses.size(); ++m) {
    const int64_t g = l.group_of(unique[misses[m]]);
    if (!runs.empty() && runs.back().group == g) {
      ++runs.back().count;
    } else {
      runs.push_back({g, m, 1});
    }
  }
  std::vector<MergedRead> merged;
  const int64_t max_blocks = std::max(options_.max_read_blocks, l.blocks_per_row);
  for (size_t k = 0; k < runs.size(); ++k) {
    const int64_t first_block = runs[k].group * l.blocks_per_row;
    if (!merged.empty()) {
      MergedRead& last = merged.back();
      if (last.first_block + last.num_blocks == first_block &&
          last.num_blocks + l.blocks_per_row <= max_blocks) {
        ++last.num_runs;
        last.num_blocks += l.blocks_per_row;
        continue;
      }
    }
    merged.push_back({k, 1, first_block, l.blocks_per_row});
  }
  int64_t total_blocks = 0;
  for (const MergedRead& m : merged) total_blocks += m.num_blocks;
  std::vector<uint8_t> bad(unique.size(), 0);
  std::exception_ptr error;
  if (!merged.empty()) {
    const int64_t buf_blocks = std::min(total_blocks, std::max(options_.chunk_blocks, max_blocks));
    std::unique_ptr<uint8_t, FreeDeleter> buf(static_cast<uint8_t*>(std::aligned_alloc(
        static_cast<size_t>(kEngtBlockBytes), static_cast<size_t>(buf_blocks * kEngtBlockBytes))));
    if (!buf) throw std::bad_alloc();
    std::vector<ReadRequest> requests;
    std::vector<int64_t> at_block;  // block offset in buf of each merged read of the chunk
    for (size_t first = 0; first < merged.size();) {
      // One chunk: as many merged reads as fit in the buffer.
      requests.clear();
      at_block.clear();
      int64_t used = 0;
      size_t end = first;
      while (end < merged.size() && used + merged[end].num_blocks <= buf_blocks) {
        const MergedRead& m = merged[end];
        requests.push_back({l.data_offset + m.first_block * kEngtBlockBytes,
                            m.num_blocks * kEngtBlockBytes, buf.get() + used * kEngtBlockBytes});
        at_block.push_back(used);
        used += m.num_blocks;
        ++end;
      }
      const auto io0 = Clock::now();
      reader_->read(requests);
      stats.io_seconds += seconds_since(io0);
      stats.reads += static_cast<int64_t>(requests.size());
      stats.blocks_read += used;
      // Check every block before any of its rows is used.
      for (size_t k = first; k < end; ++k) {
        const MergedRead& m = merged[k];
        for (size_t j = 0; j < m.num_runs; ++j) {
          const GroupRun& run = runs[m.first_run + j];
          const int64_t group_block = run.group * l.blocks_per_row;
          const uint8_t* group_bytes =
              buf.get() + (at_block[k - first] + (group_block - m.first_block)) * kEngtBlockBytes;
          bool ok = true;
          for (int64_t b = 0; b < l.blocks_per_row && ok; ++b) {
            const uint32_t computed =
                crc32c(group_bytes + b * kEngtBlockBytes, static_cast<size_t>(kEngtBlockBytes));
            const uint32_t stored = file_.block_checksum(group_block + b);
            if (computed == stored) continue;
            ok = false;
            ++stats.bad_blocks;
            if (!error) {
              const int64_t r0 = run.group * l.rows_per_block;
              const int64_t r1 = std::min(l.rows, r0 + l.rows_per_block) - 1;
              const std::string which =
                  r0 == r1 ? "row " + std::to_string(r0)
                           : "rows " + std::to_string(r0) + ".." + std::to_string(r1);
              error = std::make_exception_ptr(FormatError(error_message(
                  file_.path(), "data block " + std::to_string(group_block + b) + " (" + which +
                                    "): checksum mismatch (stored " + hex32(stored) +
                                    ", computed " + hex32(computed) + ")")));
            }
          }
          for (size_t q = run.first; q < run.first + run.count; ++q) {
            const size_t u = misses[q];
            if (!ok) {
              bad[u] = 1;
              continue;
            }
            const int64_t row = unique[u];
            std::memcpy(encoded.data() + u * static_cast<size_t>(rb),
                        group_bytes + (row % l.rows_per_block) * rb, static_cast<size_t>(rb));
          }
        }
      }
      first = end;
    }
  }
  stats.bytes_read = stats.blocks_read * kEngtBlockBytes;

  // 4. Admission of the intact rows: every slot written holds bytes of a verified block.
  if (cache_) {
    std::vector<int64_t> good;
    good.reserve(unique.size());
    for (size_t u = 0; u < unique.size(); ++u)
      if (!bad[u]) good.push_back(unique[u]);
    std::lock_guard<std::mutex> lock(mu_);
    const CachePlan plan = cache_->plan(good);
    for (const CacheFill& f : plan.fills) {
      const auto u = static_cast<size_t>(std::lower_bound(unique.begin(), unique.end(), f.row) -
                                         unique.begin());
      std::memcpy(slab_.data() + f.slot * rb, encoded.data() + u * static_cast<size_t>(rb),
                  static_cast<size_t>(rb));
    }
    stats.fills = static_cast<int64_t>(plan.fills.size());
  }
  stats.seconds = seconds_since(t0);
  record(stats);
  if (error) std::rethrow_exception(error);
}

template <class Out>
void TieredRowStore::gather_as(std::span<const int64_t> rows, Out* out, int64_t out_stride) const {
  std::vector<int64_t> unique, index;
  std::vector<uint8_t> encoded;
  TierStats stats;
  fetch(rows, unique, index, encoded, stats);
  const int64_t rb = file_.row_bytes();
  for (size_t i = 0; i < rows.size(); ++i) {
    decode_rows(file_.format(), encoded.data() + index[i] * rb, 1, file_.width(),
                out + static_cast<int64_t>(i) * out_stride, 0);
  }
}

void TieredRowStore::gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const {
  gather_as(rows, out, out_stride);
}

void TieredRowStore::gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const {
  gather_as(rows, out, out_stride);
}

void TieredRowStore::gather_encoded(std::span<const int64_t> rows, uint8_t* out,
                                    TierStats* stats) const {
  std::vector<int64_t> unique, index;
  std::vector<uint8_t> encoded;
  TierStats call;
  try {
    fetch(rows, unique, index, encoded, call);
  } catch (...) {
    if (stats) *stats = call;
    throw;
  }
  if (stats) *stats = call;
  const auto rb = static_cast<size_t>(file_.row_bytes());
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(out + i * rb, encoded.data() + static_cast<size_t>(index[i]) * rb, rb);
}

}  // namespace engram::memory
