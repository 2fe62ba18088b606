// A RowStore over an .engt file with a DRAM cache of hot rows: the file tier.
//
//   gather(rows)  1. checks every row is in range (InputError naming the file and row, before
//                    anything is read) and deduplicates the rows (sort + unique);
//                 2. copies the distinct rows resident in the cache (hits) out of the slab;
//                 3. reads the blocks of the other rows (misses) once each through the
//                    BlockReader (io_uring, O_DIRECT, queue depth from the options), neighbouring
//                    blocks merged into one read of at most max_read_blocks blocks, in pieces of at
//                    most chunk_blocks blocks (the I/O buffer), and checks every block's CRC32C
//                    against the file's checksum section before any of its rows is used;
//                 4. admits the intact rows to the cache (RowCache::plan over the call's distinct
//                    rows, so the policy sees one "step" per call) and copies the fills into their
//                    slots;
//                 5. decodes every requested row into `out`.
//   A block whose checksum does not match is a FormatError naming the file, the block and its
//   rows (as EngtFile reports it), thrown after the rest of the call's rows have been read and
//   admitted: its rows never reach `out`, nor the cache (a cache slot is only ever written with
//   bytes from a verified block), and rows of other blocks still read, in this call's cache
//   fills and in later calls.
//
// The cache is `cache_rows` fixed slots of row_bytes encoded bytes each (a slab in host memory,
// rows · row_bytes bytes, no block padding), kept by a RowCache (kLru or kFrequency). Capacity 0
// is no cache: every row is read from the file on every call.
//
// Threads: every method may be called from several threads at once (the Prefetcher's worker
// and the model's thread). The cache bookkeeping and the slab are under one mutex, held only for
// the lookups (2) and the admission (4), never during I/O; reads of concurrent calls serialize on
// the BlockReader. Two calls missing the same row may both read it; the second admission finds it
// resident. The per-call statistics of a call are exact (gather_encoded can return them);
// last_call_stats() is the last call to finish, from whichever thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engram/memory/engt_file.h"
#include "engram/memory/io_uring_reader.h"
#include "engram/memory/row_cache.h"
#include "engram/memory/row_store.h"

namespace engram::memory {

struct TieredStoreOptions {
  int64_t cache_rows = 0;  // DRAM cache capacity in rows (0: no cache)
  CachePolicy policy = CachePolicy::kFrequency;
  FrequencyOptions frequency = {};
  BlockReaderOptions reader = {};  // queue depth, O_DIRECT, backend
  int64_t max_read_blocks = 32;    // neighbouring blocks merged into one read (1: one per group)
  int64_t chunk_blocks = 4096;     // blocks read per batch (the I/O buffer: 16 MiB by default)
};

// What gathers did. For one call, or summed over calls.
struct TierStats {
  int64_t calls = 0;
  int64_t requested = 0;    // rows asked for, repeats included
  int64_t unique = 0;       // distinct rows
  int64_t hits = 0;         // distinct rows served from the cache
  int64_t misses = 0;       // distinct rows read from the file (unique - hits)
  int64_t fills = 0;        // rows admitted to the cache
  int64_t blocks_read = 0;  // 4096-byte blocks read
  int64_t reads = 0;        // read requests (blocks_read when no blocks were merged)
  int64_t bytes_read = 0;   // 4096 · blocks_read
  int64_t bad_blocks = 0;   // blocks whose checksum did not match
  double io_seconds = 0;    // time spent blocked in BlockReader::read
  double seconds = 0;       // time of the whole call

  double hit_rate() const {
    return unique ? static_cast<double>(hits) / static_cast<double>(unique) : 0.0;
  }
  TierStats& operator+=(const TierStats& o);
};

class TieredRowStore final : public RowStore {
 public:
  // Opens and checks the file (EngtFile::open: header, size, checksum section; a truncated file
  // is a FormatError naming the expected and actual sizes), then opens it for the BlockReader.
  // Throws ConfigError for bad options (cache_rows < 0, max_read_blocks or chunk_blocks < 1,
  // chunk_blocks smaller than one row's blocks).
  explicit TieredRowStore(const std::string& path, const TieredStoreOptions& options = {});
  ~TieredRowStore() override;

  int64_t num_rows() const override { return file_.rows(); }
  int64_t width() const override { return file_.width(); }
  void gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const override;
  void gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const override;
  // The encoded rows (row_bytes() each, back to back, in the order asked) into `out`; the same
  // path as gather without decoding. `stats`, when given, receives this call's statistics.
  void gather_encoded(std::span<const int64_t> rows, uint8_t* out,
                      TierStats* stats = nullptr) const;

  const EngtFile& file() const { return file_; }
  RowFormat format() const { return file_.format(); }
  int64_t row_bytes() const { return file_.row_bytes(); }
  const BlockReader& reader() const { return *reader_; }
  int64_t cache_capacity() const { return cache_rows_; }
  // Whether `row` is in the cache now (a pure query).
  bool cached(int64_t row) const;
  int64_t cached_rows() const;
  // The slab plus the RowCache's bookkeeping.
  int64_t cache_memory_bytes() const;

  TierStats last_call_stats() const;
  TierStats total_stats() const;
  void reset_stats();

 private:
  template <class Out>
  void gather_as(std::span<const int64_t> rows, Out* out, int64_t out_stride) const;
  // Steps 1–4 above: fills `encoded` with the distinct rows (ascending in `unique`), and
  // `index[i]` with the position in `unique` of rows[i].
  void fetch(std::span<const int64_t> rows, std::vector<int64_t>& unique,
             std::vector<int64_t>& index, std::vector<uint8_t>& encoded, TierStats& stats) const;
  void record(const TierStats& call) const;

  EngtFile file_;
  TieredStoreOptions options_;
  int64_t cache_rows_ = 0;
  std::unique_ptr<BlockReader> reader_;
  mutable std::mutex mu_;                    // guards everything below
  mutable std::unique_ptr<RowCache> cache_;  // null when cache_rows_ == 0
  mutable std::vector<uint8_t> slab_;        // cache_rows_ · row_bytes
  mutable TierStats last_, total_;
};

}  // namespace engram::memory
