// Engram table tiers on one GPU (issue 6): the cost of gathering one step's rows into a device
// buffer when the table lives in GPU memory, in pinned host memory read over PCIe by the GPU, or
// in host memory gathered by CPU threads and then copied.
//
// A step: N rows of 64 values (tokens x 16 heads, row = offsets[h] + id[t, h], the Engram
// layer's `e`), gathered into out (N, 64) on the device, out's dtype = the table's (bf16 rows of
// 128 B; f32 rows of 256 B: the same bytes read as f32, half as many rows). Tiers:
//   gpu_resident          cuda::gather_rows on a table in device memory (the baseline)
//   zero_copy_mapped      the same kernel on the table in pinned, mapped host memory
//                         (cudaHostAlloc Mapped|Portable, cudaHostGetDevicePointer): every row
//                         is read by the GPU across PCIe
//   gpu_resident_copy_rows, zero_copy_copy_rows
//                         cuda::copy_rows (16-byte pieces, 4 in flight a thread) on each
//   host_gather_pinned    --threads CPU threads memcpy the rows from the pinned host table into
//   host_gather_pageable  a pinned staging buffer, then one cudaMemcpyAsync to the device
//                         (the pageable table is an ordinary heap copy of the same bytes);
//                         gather_ms (CPU, steady clock) + copy_ms (cudaEvents) ~ ms (total)
//   host_gather_pipelined the pinned host gather in 8 pieces, each copied while the next is
//                         gathered (prefill-sized steps)
//   pcie_h2d              reference: a pinned-to-device cudaMemcpyAsync of the step's bytes,
//                         and of 256 MiB (what PCIe gives a large copy)
// Ids (int64 rows, given to the kernel as per-head int32 ids + head offsets): uniform over each
// head's rows (worst case), or Zipf-like (s = 1 over ranks, ranks mapped to rows by a per-head
// random bijection) so that hot rows show cache effects. N = 1,024 (decode: 64 tokens x 16
// heads) and 262,144 (prefill: 16,384 tokens x 16 heads). Every rep gathers a different batch
// of ids (a new step), so the GPU's L2 and the CPU's caches keep only what the distribution
// repeats. Times: median (and min) of --reps reps after 3 warm-ups; GPU tiers by cudaEvents.
// gb_per_s = N x row bytes / ms (row bytes only; the ids and the write of out are not counted).
// Peaks: H200 HBM3e 4.8 TB/s (datasheet; ~4.3 TB/s measured device-to-device copy), PCIe Gen5
// x16 ~64 GB/s per direction theoretical (~50-55 GB/s achievable host-to-device).
// Correctness: each tier's output for the last batch must equal gpu_resident's byte for byte,
// or the program exits with status 3 naming the tier.
//
//   bench_gpu_tiers [--table-gib 8] [--reps 20] [--threads 8]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/cuda/gather.h"
#include "engram/tensor/dtype.h"

namespace {

using Clock = std::chrono::steady_clock;
using engram::DType;
using engram::cuda::DeviceBuffer;
using engram::cuda::DeviceTable;

constexpr int64_t kHeads = 16, kWidth = 64;
constexpr int kWarmups = 3;
constexpr double kPeakPcieGBs = 64.0, kPeakHbmGBs = 4800.0;
constexpr size_t kBigCopyBytes = size_t{256} << 20;

void check(cudaError_t code, const char* what) {
  if (code != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(code));
  }
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}


// Pieces of a pipelined host gather (host_gather_pipelined).
constexpr int kPipelineChunks = 8;

struct Event {
  cudaEvent_t e{};
  Event() { check(cudaEventCreate(&e), "cudaEventCreate"); }
  ~Event() { cudaEventDestroy(e); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

struct Stream {
  cudaStream_t s{};
  Stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

float event_ms(const Event& start, const Event& stop) {
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, start.e, stop.e), "cudaEventElapsedTime");
  return ms;
}

// Persistent workers, so that a decode step (1,024 rows) does not pay thread creation.
class WorkerPool {
 public:
  explicit WorkerPool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~WorkerPool() {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    start_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()); }
  // Runs fn(worker) on every worker, returns when all are done.
  void run(const std::function<void(int)>& fn) {
    std::unique_lock lock(m_);
    job_ = &fn;
    pending_ = size();
    ++generation_;
    start_cv_.notify_all();
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock lock(m_);
        start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      (*job)(index);
      std::lock_guard lock(m_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

// [begin, end) of `n` items for worker `i` of `parts`.
std::pair<size_t, size_t> share(size_t n, int i, int parts) {
  const auto p = static_cast<size_t>(parts), k = static_cast<size_t>(i);
  return {n * k / p, n * (k + 1) / p};
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Rng {
  uint64_t s;
  uint64_t next() { return s = splitmix64(s); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// One batch per rep: rows (int64, what a host gather reads) and the kernel's per-head ids.
struct IdBatches {
  int64_t n = 0;              // rows per batch
  std::vector<int64_t> rows;  // (batches, n): row of item i is offsets[i % heads] + ids[i]
  std::vector<int32_t> ids;   // (batches, n) = (batches, tokens, heads)
  double unique_frac = 0.0;   // distinct rows / n in the first batch
};

IdBatches make_ids(bool zipf, int64_t n, int batches, int64_t rows_per_head, uint64_t seed) {
  IdBatches b;
  b.n = n;
  const size_t total = static_cast<size_t>(n) * static_cast<size_t>(batches);
  b.rows.resize(total);
  b.ids.resize(total);
  Rng rng{seed};
  // Zipf ranks become rows by rank * a + c mod rows_per_head, a bijection (gcd(a, rows) = 1).
  const auto m = static_cast<uint64_t>(rows_per_head);
  uint64_t a = 2654435761ull % m;
  while (a == 0 || std::gcd(a, m) != 1) a = (a + 1) % m;
  std::vector<uint64_t> c(kHeads);
  for (uint64_t& x : c) x = rng.next() % m;
  const double log_range = std::log(static_cast<double>(m) + 1.0);
  for (size_t i = 0; i < total; ++i) {
    const auto h = static_cast<size_t>(i % kHeads);
    uint64_t local;
    if (zipf) {
      // Continuous s = 1: x = (m + 1)^u on [1, m + 1), rank = floor(x) - 1, P(rank) ~ 1/(rank+1).
      const auto rank =
          std::min(m - 1, static_cast<uint64_t>(std::exp(rng.uniform() * log_range)) - 1);
      local = (rank * a + c[h]) % m;
    } else {
      local = rng.next() % m;
    }
    b.ids[i] = static_cast<int32_t>(local);
    b.rows[i] = static_cast<int64_t>(h) * rows_per_head + static_cast<int64_t>(local);
  }
  std::vector<int64_t> first(b.rows.begin(), b.rows.begin() + n);
  std::sort(first.begin(), first.end());
  b.unique_frac = static_cast<double>(std::unique(first.begin(), first.end()) - first.begin()) /
                  static_cast<double>(n);
  return b;
}

struct Stats {
  double median_ms, min_ms;
};

Stats stats(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t k = ms.size();
  const double median = k % 2 ? ms[k / 2] : 0.5 * (ms[k / 2 - 1] + ms[k / 2]);
  return {median, ms.front()};
}

void usage(FILE* f) {
  std::fprintf(f,
               "usage: bench_gpu_tiers [--table-gib G=8] [--reps R=20] [--threads T=8]\n"
               "  gathers Engram rows (bf16 and f32, 64 values) from a G GiB table held in GPU\n"
               "  memory, pinned mapped host memory (zero-copy) and host memory (CPU gather +\n"
               "  copy); one JSON line per (tier, dtype, ids, N) on stdout, progress on stderr\n");
}

struct Options {
  double table_gib = 8.0;
  int reps = 20;
  int threads = 8;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      usage(stderr);
      std::exit(2);
    }
    const char* value = argv[++i];
    if (arg == "--table-gib") {
      o.table_gib = std::atof(value);
    } else if (arg == "--reps") {
      o.reps = std::atoi(value);
    } else if (arg == "--threads") {
      o.threads = std::atoi(value);
    } else {
      usage(stderr);
      std::exit(2);
    }
  }
  if (!(o.table_gib > 0.0) || o.reps < 1 || o.threads < 1) {
    std::fprintf(stderr, "bench_gpu_tiers: --table-gib must be > 0, --reps and --threads >= 1\n");
    usage(stderr);
    std::exit(2);
  }
  return o;
}

int run(const Options& opt) {
  const auto t_start = Clock::now();
  // Mapped pinned memory needs the flag on old drivers (implicit with unified addressing);
  // set before the context exists.
  const cudaError_t flags = cudaSetDeviceFlags(cudaDeviceMapHost);
  if (flags != cudaSuccess && flags != cudaErrorSetOnActiveProcess)
    check(flags, "cudaSetDeviceFlags");
  (void)cudaGetLastError();
  int can_map = 0;
  check(cudaDeviceGetAttribute(&can_map, cudaDevAttrCanMapHostMemory, 0), "cudaDeviceGetAttribute");
  if (!can_map) throw std::runtime_error("device 0 cannot map host memory");

  // Both views' rows are a multiple of the heads (f32 rows are 256 B).
  const size_t unit = static_cast<size_t>(kHeads * kWidth * 4);
  const size_t table_bytes = static_cast<size_t>(opt.table_gib * 1073741824.0) / unit * unit;
  if (table_bytes == 0) throw std::runtime_error("--table-gib too small");
  if (table_bytes / static_cast<size_t>(kHeads * kWidth * 2) > size_t{INT32_MAX}) {
    throw std::runtime_error("--table-gib too large: a head's row ids must fit in int32");
  }
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf(
      "{\"bench\": \"gpu_tiers\", \"device\": \"%s\", \"host_cores\": %u, "
      "\"table_bytes\": %zu, \"heads\": %lld, \"row_width\": %lld, \"reps\": %d, "
      "\"warmups\": %d, \"threads\": %d, \"peak_pcie_gb_per_s\": %.0f, "
      "\"peak_hbm_gb_per_s\": %.0f}\n",
      engram::cuda::device_name(0).c_str(), cores, table_bytes, static_cast<long long>(kHeads),
      static_cast<long long>(kWidth), opt.reps, kWarmups, opt.threads, kPeakPcieGBs, kPeakHbmGBs);
  std::fflush(stdout);

  WorkerPool pool(opt.threads);
  // One table of bytes; bf16 values with the exponent's top bit clear (|v| < 2, finite), so the
  // f32 view (pairs of them) is finite too.
  std::fprintf(stderr, "[%6.1fs] cudaHostAlloc %.2f GiB pinned, mapped...\n",
               seconds_since(t_start), static_cast<double>(table_bytes) / 1073741824.0);
  engram::cuda::MappedHostBuffer<uint8_t> pinned(table_bytes);
  std::fprintf(stderr, "[%6.1fs] filling the pinned table (%d threads)...\n",
               seconds_since(t_start), pool.size());
  {
    auto* words = reinterpret_cast<uint64_t*>(pinned.host().data());
    const size_t n_words = table_bytes / 8;
    pool.run([&](int w) {
      const auto [begin, end] = share(n_words, w, pool.size());
      for (size_t i = begin; i < end; ++i) words[i] = splitmix64(i) & 0xBFFFBFFFBFFFBFFFull;
    });
  }
  std::fprintf(stderr, "[%6.1fs] uploading to the device...\n", seconds_since(t_start));
  DeviceBuffer<uint8_t> d_table(table_bytes);
  const auto t_upload = Clock::now();
  engram::cuda::copy_to_device(d_table.data(), pinned.host().data(), table_bytes);
  const double upload_s = seconds_since(t_upload);
  std::fprintf(stderr, "[%6.1fs] pageable copy of the table...\n", seconds_since(t_start));
  std::unique_ptr<uint8_t[]> pageable(new uint8_t[table_bytes]);  // not zeroed: first touch below
  pool.run([&](int w) {
    const auto [begin, end] = share(table_bytes, w, pool.size());
    std::memcpy(pageable.get() + begin, pinned.host().data() + begin, end - begin);
  });
  std::fprintf(stderr, "[%6.1fs] tables ready; measuring\n", seconds_since(t_start));

  Stream stream;
  Event ev_start, ev_stop;
  const int batches = kWarmups + opt.reps;
  const size_t max_rows = 262144;
  const size_t max_out_bytes = max_rows * static_cast<size_t>(kWidth) * 4;
  engram::cuda::MappedHostBuffer<uint8_t> staging(std::max(max_out_bytes, kBigCopyBytes));
  DeviceBuffer<uint8_t> d_ref(max_out_bytes), d_out(max_out_bytes), d_big(kBigCopyBytes);
  std::vector<uint8_t> h_ref(max_out_bytes), h_out(max_out_bytes);

  // A pinned-to-device copy of `bytes` from the staging buffer, timed over the reps.
  auto time_copy = [&](void* dst, size_t bytes) {
    std::vector<double> ms;
    for (int r = 0; r < batches; ++r) {
      check(cudaEventRecord(ev_start.e, stream.s), "cudaEventRecord");
      check(cudaMemcpyAsync(dst, staging.host().data(), bytes, cudaMemcpyHostToDevice, stream.s),
            "cudaMemcpyAsync");
      check(cudaEventRecord(ev_stop.e, stream.s), "cudaEventRecord");
      check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");
      if (r >= kWarmups) ms.push_back(event_ms(ev_start, ev_stop));
    }
    return stats(ms);
  };

  // The upload of the whole table and a 256 MiB copy: what PCIe gives a large transfer.
  {
    const Stats s = time_copy(d_big.data(), kBigCopyBytes);
    const double gbs = static_cast<double>(kBigCopyBytes) / s.median_ms / 1e6;
    std::printf(
        "{\"bench\": \"gpu_tiers\", \"tier\": \"pcie_h2d\", \"bytes\": %zu, \"ms\": %.4f, "
        "\"min_ms\": %.4f, \"gb_per_s\": %.2f, \"frac_of_peak\": %.3f, "
        "\"table_upload_gb_per_s\": %.2f}\n",
        kBigCopyBytes, s.median_ms, s.min_ms, gbs, gbs / kPeakPcieGBs,
        static_cast<double>(table_bytes) / upload_s / 1e9);
    std::fflush(stdout);
  }

  for (const DType dtype : {DType::kBF16, DType::kF32}) {
    const char* dt_name = dtype == DType::kBF16 ? "bf16" : "f32";
    const size_t row_bytes = static_cast<size_t>(kWidth) * (dtype == DType::kBF16 ? 2 : 4);
    const auto table_rows = static_cast<int64_t>(table_bytes / row_bytes);
    const int64_t rows_per_head = table_rows / kHeads;
    std::vector<int64_t> offsets(kHeads);
    for (int64_t h = 0; h < kHeads; ++h) offsets[static_cast<size_t>(h)] = h * rows_per_head;
    const DeviceBuffer<int64_t> d_offsets{std::span<const int64_t>(offsets)};
    const DeviceTable resident{d_table.data(), dtype, table_rows, kWidth};
    const DeviceTable mapped{pinned.device(), dtype, table_rows, kWidth};

    for (const int64_t n : {int64_t{1024}, int64_t{262144}}) {
      const int64_t tokens = n / kHeads;
      const size_t out_bytes = static_cast<size_t>(n) * row_bytes;
      // The PCIe reference at this step's size.
      {
        const Stats s = time_copy(d_out.data(), out_bytes);
        const double gbs = static_cast<double>(out_bytes) / s.median_ms / 1e6;
        std::printf(
            "{\"bench\": \"gpu_tiers\", \"tier\": \"pcie_h2d\", \"dtype\": \"%s\", "
            "\"rows\": %lld, \"bytes\": %zu, \"ms\": %.4f, \"min_ms\": %.4f, "
            "\"gb_per_s\": %.2f, \"frac_of_peak\": %.3f}\n",
            dt_name, static_cast<long long>(n), out_bytes, s.median_ms, s.min_ms, gbs,
            gbs / kPeakPcieGBs);
        std::fflush(stdout);
      }

      for (const bool zipf : {false, true}) {
        const char* ids_name = zipf ? "zipf1" : "uniform";
        const IdBatches ids =
            make_ids(zipf, n, batches, rows_per_head, 1000 + static_cast<uint64_t>(n) + zipf);
        const DeviceBuffer<int32_t> d_ids{std::span<const int32_t>(ids.ids)};

        auto gather = [&](void* out, const DeviceTable& table, const int32_t* batch_ids) {
          if (dtype == DType::kBF16) {
            engram::cuda::gather_rows(static_cast<engram::bf16*>(out), table, batch_ids,
                                      d_offsets.data(), tokens, kHeads, stream.s);
          } else {
            engram::cuda::gather_rows(static_cast<float*>(out), table, batch_ids, d_offsets.data(),
                                      tokens, kHeads, stream.s);
          }
        };
        auto report = [&](const char* tier, const Stats& s, const std::string& extra, double peak) {
          const double gbs = static_cast<double>(out_bytes) / s.median_ms / 1e6;
          std::printf(
              "{\"bench\": \"gpu_tiers\", \"tier\": \"%s\", \"dtype\": \"%s\", "
              "\"ids\": \"%s\", \"rows\": %lld, \"tokens\": %lld, \"row_bytes\": %zu, "
              "\"unique_frac\": %.4f, \"ms\": %.4f, \"min_ms\": %.4f, "
              "\"rows_per_s\": %.4g, \"gb_per_s\": %.2f, \"frac_of_peak\": %.4f%s}\n",
              tier, dt_name, ids_name, static_cast<long long>(n), static_cast<long long>(tokens),
              row_bytes, ids.unique_frac, s.median_ms, s.min_ms,
              static_cast<double>(n) / (s.median_ms * 1e-3), gbs, gbs / peak, extra.c_str());
          std::fflush(stdout);
        };
        // The last batch's output of a tier against gpu_resident's.
        auto verify = [&](const char* tier) {
          engram::cuda::copy_to_host(h_out.data(), d_out.data(), out_bytes);
          if (std::memcmp(h_out.data(), h_ref.data(), out_bytes) != 0) {
            size_t at = 0;
            while (h_out[at] == h_ref[at]) ++at;
            std::fprintf(stderr,
                         "bench_gpu_tiers: tier %s (%s, %s, N=%lld) differs from gpu_resident "
                         "at byte %zu\n",
                         tier, dt_name, ids_name, static_cast<long long>(n), at);
            std::exit(3);
          }
        };
        auto time_kernel = [&](const DeviceTable& table, void* out, bool copy = false) {
          std::vector<double> ms;
          for (int r = 0; r < batches; ++r) {
            check(cudaEventRecord(ev_start.e, stream.s), "cudaEventRecord");
            const int32_t* batch_ids = d_ids.data() + static_cast<size_t>(n) * r;
            if (copy) {
              engram::cuda::copy_rows(out, table, batch_ids, d_offsets.data(), tokens, kHeads,
                                      stream.s);
            } else {
              gather(out, table, batch_ids);
            }
            check(cudaEventRecord(ev_stop.e, stream.s), "cudaEventRecord");
            check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");
            if (r >= kWarmups) ms.push_back(event_ms(ev_start, ev_stop));
          }
          return stats(ms);
        };

        const Stats resident_stats = time_kernel(resident, d_ref.data());
        engram::cuda::copy_to_host(h_ref.data(), d_ref.data(), out_bytes);
        report("gpu_resident", resident_stats, "", kPeakHbmGBs);

        check(cudaMemset(d_out.data(), 0xff, out_bytes), "cudaMemset");
        report("zero_copy_mapped", time_kernel(mapped, d_out.data()), "", kPeakPcieGBs);
        verify("zero_copy_mapped");
        // cuda::copy_rows: 16-byte pieces, several in flight a thread.
        check(cudaMemset(d_out.data(), 0xff, out_bytes), "cudaMemset");
        report("gpu_resident_copy_rows", time_kernel(resident, d_out.data(), true), "",
               kPeakHbmGBs);
        verify("gpu_resident_copy_rows");
        check(cudaMemset(d_out.data(), 0xff, out_bytes), "cudaMemset");
        report("zero_copy_copy_rows", time_kernel(mapped, d_out.data(), true), "", kPeakPcieGBs);
        verify("zero_copy_copy_rows");

        // Rows [first, last) of a batch from the host table src into the staging buffer at the
        // same positions, shared among the pool's threads.
        auto host_gather = [&](const uint8_t* src, const int64_t* rows, size_t first, size_t last) {
          uint8_t* dst = staging.host().data();
          pool.run([&](int w) {
            const auto [begin, end] = share(last - first, w, pool.size());
            for (size_t i = first + begin; i < first + end; ++i) {
              std::memcpy(dst + i * row_bytes, src + static_cast<size_t>(rows[i]) * row_bytes,
                          row_bytes);
            }
          });
        };

        for (const bool from_pinned : {true, false}) {
          const char* tier = from_pinned ? "host_gather_pinned" : "host_gather_pageable";
          const uint8_t* src = from_pinned ? pinned.host().data() : pageable.get();
          check(cudaMemset(d_out.data(), 0xff, out_bytes), "cudaMemset");
          std::vector<double> gather_ms, copy_ms, total_ms;
          for (int r = 0; r < batches; ++r) {
            const int64_t* rows = ids.rows.data() + static_cast<size_t>(n) * r;
            uint8_t* dst = staging.host().data();
            const auto t0 = Clock::now();
            host_gather(src, rows, 0, static_cast<size_t>(n));
            const auto t1 = Clock::now();
            check(cudaEventRecord(ev_start.e, stream.s), "cudaEventRecord");
            check(cudaMemcpyAsync(d_out.data(), dst, out_bytes, cudaMemcpyHostToDevice, stream.s),
                  "cudaMemcpyAsync");
            check(cudaEventRecord(ev_stop.e, stream.s), "cudaEventRecord");
            check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");
            const auto t2 = Clock::now();
            if (r < kWarmups) continue;
            gather_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            copy_ms.push_back(event_ms(ev_start, ev_stop));
            total_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t0).count());
          }
          const Stats g = stats(gather_ms), c = stats(copy_ms);
          char extra[160];
          std::snprintf(extra, sizeof(extra),
                        ", \"gather_ms\": %.4f, \"copy_ms\": %.4f, \"threads\": %d", g.median_ms,
                        c.median_ms, pool.size());
          report(tier, stats(total_ms), extra, kPeakPcieGBs);
          verify(tier);
        }

        // The same from the pinned table in kPipelineChunks pieces: the copy of piece k runs
        // while the threads gather piece k + 1 (prefill-sized steps only).
        if (n >= kPipelineChunks * 1024) {
          const char* tier = "host_gather_pipelined";
          check(cudaMemset(d_out.data(), 0xff, out_bytes), "cudaMemset");
          std::vector<double> total_ms;
          for (int r = 0; r < batches; ++r) {
            const int64_t* rows = ids.rows.data() + static_cast<size_t>(n) * r;
            uint8_t* dst = staging.host().data();
            const auto t0 = Clock::now();
            for (int k = 0; k < kPipelineChunks; ++k) {
              const auto [first, last] = share(static_cast<size_t>(n), k, kPipelineChunks);
              host_gather(pinned.host().data(), rows, first, last);
              check(cudaMemcpyAsync(d_out.data() + first * row_bytes, dst + first * row_bytes,
                                    (last - first) * row_bytes, cudaMemcpyHostToDevice, stream.s),
                    "cudaMemcpyAsync");
            }
            check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");
            const auto t1 = Clock::now();
            if (r >= kWarmups) {
              total_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            }
          }
          char extra[96];
          std::snprintf(extra, sizeof(extra), ", \"chunks\": %d, \"threads\": %d",
                        kPipelineChunks, pool.size());
          report(tier, stats(total_ms), extra, kPeakPcieGBs);
          verify(tier);
        }
      }
    }
  }
  std::fprintf(stderr, "[%6.1fs] done; freeing\n", seconds_since(t_start));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  if (engram::cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_gpu_tiers: no CUDA device\n");
    return 1;
  }
  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_tiers: %s\n", e.what());
    return 1;
  }
}
