// The file tier against the disk it reads: (a) the disk's random-read limit, 4096-byte random
// reads with O_DIRECT through BlockReader (io_uring) at several queue depths, over a scratch file
// much larger than any cache in the way; (b) the prefill row-gather rate of TieredRowStore over
// an .engt table with realistic per-step traffic, with no cache and with DRAM caches of a few per
// cent of the table, as a fraction of (a) measured in the same run.
//
// Traffic of one step (b): --heads heads × --step-tokens tokens reads of one Engram layer's
// table, head h reading its own slice of rows [h·rows/heads, (h+1)·rows/heads) as
// NgramHasher's head_offsets lay the table out. Within a slice the row ranks follow a Zipf-like
// law p(r) ∝ 1 / (r + q) (drawn as r = q·((n + q)/q)^u − q, u uniform; q = --zipf-offset), and a
// rank goes to a fixed pseudo-random row of the slice (hashing scatters the popular rows over the
// table). Every step draws new reads from the same law. One gather() of the step's reads = one
// prefill step of one layer: deduplicated, cache looked up, missing blocks read (merged when
// neighbours), checked and decoded to float.
//
// Page cache: every read is O_DIRECT when the file system allows it (the output says so); the
// figures are then disk figures, not page-cache figures, except for what the device or, on a VM,
// the host caches below the file system.
//
//   build/bench/bench_file_tier [--dir DIR] [--scratch-gib G] [--seconds S] [--qds 1,8,32,64,128]
//       [--rows N] [--width W] [--format bf16|fp8|f32|int8] [--heads H] [--step-tokens T]
//       [--steps S] [--zipf-offset Q] [--cache-fractions 0,0.01,0.05] [--queue-depth D] [--keep]
// Output: JSON lines, one per measurement, then a summary line.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engram/memory/engt_file.h"
#include "engram/memory/io_uring_reader.h"
#include "engram/memory/tiered_store.h"
#include "engram/util/error.h"

namespace {

using namespace engram;
using namespace engram::memory;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string dir = "/tmp";
  double scratch_gib = 2.0;
  double seconds = 3.0;
  std::vector<int> qds = {1, 8, 32, 64, 128};
  int64_t rows = int64_t{1} << 22;
  int64_t width = 64;
  RowFormat format = RowFormat::kBF16;
  int64_t heads = 16;
  int64_t step_tokens = 4096;
  int64_t steps = 16;
  double zipf_offset = 64;
  std::vector<double> cache_fractions = {0.0, 0.01, 0.05};
  int queue_depth = 64;
  bool keep = false;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_file_tier: %s\nusage: bench_file_tier [--dir DIR] [--scratch-gib G] "
               "[--seconds S] [--qds 1,8,...] [--rows N] [--width W] [--format F] [--heads H] "
               "[--step-tokens T] [--steps S] [--zipf-offset Q] [--cache-fractions F,F,...] "
               "[--queue-depth D] [--keep]\n",
               why.c_str());
  std::exit(2);
}

template <class T>
std::vector<T> parse_list(const std::string& v) {
  std::vector<T> out;
  size_t at = 0;
  while (at <= v.size()) {
    const size_t comma = std::min(v.find(',', at), v.size());
    out.push_back(static_cast<T>(std::stod(v.substr(at, comma - at))));
    at = comma + 1;
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--keep") {
      o.keep = true;
      continue;
    }
    if (i + 1 >= argc) usage(a + " needs a value");
    const std::string v = argv[++i];
    try {
      if (a == "--dir")
        o.dir = v;
      else if (a == "--scratch-gib")
        o.scratch_gib = std::stod(v);
      else if (a == "--seconds")
        o.seconds = std::stod(v);
      else if (a == "--qds")
        o.qds = parse_list<int>(v);
      else if (a == "--rows")
        o.rows = std::stoll(v);
      else if (a == "--width")
        o.width = std::stoll(v);
      else if (a == "--format") {
        const auto f = format_from_name(v);
        if (!f) usage("unknown format " + v);
        o.format = *f;
      } else if (a == "--heads")
        o.heads = std::stoll(v);
      else if (a == "--step-tokens")
        o.step_tokens = std::stoll(v);
      else if (a == "--steps")
        o.steps = std::stoll(v);
      else if (a == "--zipf-offset")
        o.zipf_offset = std::stod(v);
      else if (a == "--cache-fractions")
        o.cache_fractions = parse_list<double>(v);
      else if (a == "--queue-depth")
        o.queue_depth = std::stoi(v);
      else
        usage("unknown option " + a);
    } catch (const std::logic_error&) {
      usage("bad value " + v + " for " + a);
    }
  }
  if (o.rows < o.heads || o.heads < 1 || o.steps < 1 || o.scratch_gib <= 0) usage("bad sizes");
  return o;
}

std::string filesystem_of(const std::string& dir) {
  struct statfs s {};
  if (::statfs(dir.c_str(), &s) != 0) return "unknown";
  switch (static_cast<uint64_t>(s.f_type)) {
    case 0xEF53:
      return "ext4";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(s.f_type));
      return buf;
    }
  }
}

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A scratch file of `bytes` bytes of incompressible, non-zero data (so no layer below can skip
// the reads of unwritten or zero blocks), fsynced.
void write_scratch(const std::string& path, int64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw IoError(error_message(path, std::string("cannot create: ") + std::strerror(errno)));
  std::vector<uint64_t> chunk((8 << 20) / 8);
  std::mt19937_64 rng(12345);
  for (int64_t done = 0; done < bytes;) {
    for (uint64_t& w : chunk) w = rng();
    const auto n = static_cast<size_t>(std::min<int64_t>(bytes - done, 8 << 20));
    if (::write(fd, chunk.data(), n) != static_cast<ssize_t>(n)) {
      ::close(fd);
      throw IoError(error_message(path, std::string("cannot write: ") + std::strerror(errno)));
    }
    done += static_cast<int64_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
}

struct DiskResult {
  int qd;
  double iops, mb_per_s, mean_latency_us;
};

// 4096-byte reads at random block offsets of the scratch file for about `seconds` seconds.
DiskResult measure_disk(const std::string& path, int64_t bytes, int qd, double seconds,
                        bool fallback, bool* direct, std::string* backend) {
  BlockReaderOptions ro;
  ro.queue_depth = qd;
  ro.force_fallback = fallback;
  BlockReader reader(path, ro);
  *direct = reader.direct_io();
  *backend = std::string(reader.backend_name());
  const int64_t blocks = bytes / 4096;
  const int64_t batch = std::max<int64_t>(256, 64 * qd);
  // Reads land in a ring of 256 buffers (their content is not looked at).
  auto* buf = static_cast<uint8_t*>(std::aligned_alloc(4096, 256 * 4096));
  std::vector<ReadRequest> reqs(static_cast<size_t>(batch));
  std::mt19937_64 rng(static_cast<uint64_t>(qd) * 7 + (fallback ? 1 : 0));
  int64_t done = 0;
  const auto t0 = Clock::now();
  double t = 0;
  do {
    for (int64_t i = 0; i < batch; ++i) {
      reqs[static_cast<size_t>(i)] = {
          static_cast<int64_t>(rng() % static_cast<uint64_t>(blocks)) * 4096, 4096,
          buf + (i % 256) * 4096};
    }
    reader.read(reqs);
    done += batch;
    t = since(t0);
  } while (t < seconds);
  std::free(buf);
  const double iops = static_cast<double>(done) / t;
  return {qd, iops, iops * 4096 / 1e6, 1e6 * qd / iops};
}

// One step's reads: heads × tokens rows (token-major: read t·heads + h).
class Traffic {
 public:
  Traffic(const Options& o) : o_(o), slice_(o.rows / o.heads), rng_(2024) {
    // A fixed odd multiplier scrambles ranks over the slice (a bijection mod a power of two;
    // otherwise close enough: collisions only merge a few ranks).
    mult_ = 0x9E3779B97F4A7C15ull | 1;
  }
  std::vector<int64_t> step() {
    std::vector<int64_t> rows(static_cast<size_t>(o_.heads * o_.step_tokens));
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    const double q = o_.zipf_offset, n = static_cast<double>(slice_);
    for (int64_t t = 0; t < o_.step_tokens; ++t) {
      for (int64_t h = 0; h < o_.heads; ++h) {
        const double u = uni(rng_);
        auto rank = static_cast<uint64_t>(q * std::pow((n + q) / q, u) - q);
        rank = std::min<uint64_t>(rank, static_cast<uint64_t>(slice_ - 1));
        const uint64_t scrambled =
            (rank * mult_ + static_cast<uint64_t>(h)) % static_cast<uint64_t>(slice_);
        rows[static_cast<size_t>(t * o_.heads + h)] = h * slice_ + static_cast<int64_t>(scrambled);
      }
    }
    return rows;
  }

 private:
  const Options& o_;
  int64_t slice_;
  std::mt19937_64 rng_;
  uint64_t mult_;
};

int run(const Options& o) {
  const std::string fs = filesystem_of(o.dir);
  std::printf("{\"kind\":\"setup\",\"dir\":\"%s\",\"filesystem\":\"%s\"}\n", o.dir.c_str(),
              fs.c_str());
  std::fflush(stdout);

  // (a) The disk's random-read limit.
  const std::string scratch = o.dir + "/bench_file_tier.scratch";
  const auto scratch_bytes = static_cast<int64_t>(o.scratch_gib * (1 << 30)) / 4096 * 4096;
  auto t0 = Clock::now();
  write_scratch(scratch, scratch_bytes);
  std::printf("{\"kind\":\"scratch\",\"bytes\":%lld,\"write_s\":%.2f}\n",
              static_cast<long long>(scratch_bytes), since(t0));
  std::fflush(stdout);
  double limit_iops = 0;  // at --queue-depth
  for (const int qd : o.qds) {
    bool direct = false;
    std::string backend;
    const DiskResult r =
        measure_disk(scratch, scratch_bytes, qd, o.seconds, false, &direct, &backend);
    if (qd == o.queue_depth) limit_iops = r.iops;
    std::printf(
        "{\"kind\":\"disk\",\"backend\":\"%s\",\"o_direct\":%s,\"qd\":%d,\"iops\":%.0f,"
        "\"mb_per_s\":%.1f,\"mean_latency_us\":%.1f}\n",
        backend.c_str(), direct ? "true" : "false", qd, r.iops, r.mb_per_s, r.mean_latency_us);
    std::fflush(stdout);
  }
  {
    bool direct = false;
    std::string backend;
    const DiskResult r =
        measure_disk(scratch, scratch_bytes, o.queue_depth, o.seconds, true, &direct, &backend);
    std::printf(
        "{\"kind\":\"disk\",\"backend\":\"%s\",\"o_direct\":%s,\"qd\":%d,\"iops\":%.0f,"
        "\"mb_per_s\":%.1f,\"mean_latency_us\":%.1f}\n",
        backend.c_str(), direct ? "true" : "false", o.queue_depth, r.iops, r.mb_per_s,
        r.mean_latency_us);
    std::fflush(stdout);
  }
  if (!o.keep) ::unlink(scratch.c_str());
  if (limit_iops == 0) {
    bool direct = false;
    std::string backend;
    limit_iops =
        measure_disk(scratch, scratch_bytes, o.queue_depth, o.seconds, false, &direct, &backend)
            .iops;
  }

  // (b) The prefill gather rate of the file tier.
  const std::string table = o.dir + "/bench_file_tier.engt";
  t0 = Clock::now();
  write_engt(
      table, o.format, o.rows, o.width,
      [&](int64_t first, int64_t count, float* out) {
        for (int64_t i = 0; i < count * o.width; ++i) {
          const uint64_t x = static_cast<uint64_t>(first * o.width + i) * 0x9E3779B97F4A7C15ull;
          out[i] = static_cast<float>(static_cast<int64_t>(x >> 40) - (int64_t{1} << 23)) * 1e-7f;
        }
      },
      "bench");
  const EngtLayout layout = EngtLayout::make(o.format, o.rows, o.width);
  std::printf(
      "{\"kind\":\"table\",\"format\":\"%s\",\"rows\":%lld,\"width\":%lld,\"row_bytes\":"
      "%lld,\"rows_per_block\":%lld,\"bytes\":%lld,\"write_s\":%.2f}\n",
      std::string(format_name(o.format)).c_str(), static_cast<long long>(o.rows),
      static_cast<long long>(o.width), static_cast<long long>(layout.row_bytes),
      static_cast<long long>(layout.rows_per_block), static_cast<long long>(layout.file_bytes),
      since(t0));
  std::fflush(stdout);

  for (const double fraction : o.cache_fractions) {
    TieredStoreOptions so;
    so.cache_rows = static_cast<int64_t>(fraction * static_cast<double>(o.rows));
    so.policy = CachePolicy::kFrequency;
    so.reader.queue_depth = o.queue_depth;
    const TieredRowStore store(table, so);
    Traffic traffic(o);
    std::vector<float> out(static_cast<size_t>(o.heads * o.step_tokens * o.width));
    TierStats all, warm;  // all steps; the second half
    double wall_all = 0, wall_warm = 0;
    for (int64_t s = 0; s < o.steps; ++s) {
      const std::vector<int64_t> rows = traffic.step();
      const auto ts = Clock::now();
      store.gather(rows, out.data(), o.width);
      const double wall = since(ts);
      const TierStats st = store.last_call_stats();
      all += st;
      wall_all += wall;
      if (s >= o.steps / 2) {
        warm += st;
        wall_warm += wall;
      }
    }
    auto line = [&](const char* which, const TierStats& st, double wall, int64_t steps) {
      const double blocks_per_s = static_cast<double>(st.blocks_read) / wall;
      const double reads_per_s = static_cast<double>(st.reads) / wall;
      std::printf(
          "{\"kind\":\"gather\",\"steps\":\"%s\",\"backend\":\"%s\",\"o_direct\":%s,\"qd\":%d,"
          "\"cache_fraction\":%g,\"cache_rows\":%lld,\"step_reads\":%lld,\"step_unique\":%.0f,"
          "\"hit_rate\":%.4f,\"step_blocks\":%.0f,\"step_read_requests\":%.0f,\"step_ms\":%.1f,"
          "\"io_share\":%.3f,\"reads_per_s\":%.0f,\"unique_rows_per_s\":%.0f,"
          "\"blocks_per_s\":%.0f,\"read_requests_per_s\":%.0f,\"mb_per_s\":%.1f,"
          "\"disk_iops_at_qd\":%.0f,\"fraction_of_disk_iops\":%.3f}\n",
          which, std::string(store.reader().backend_name()).c_str(),
          store.reader().direct_io() ? "true" : "false", o.queue_depth, fraction,
          static_cast<long long>(so.cache_rows), static_cast<long long>(st.requested / steps),
          static_cast<double>(st.unique) / static_cast<double>(steps), st.hit_rate(),
          static_cast<double>(st.blocks_read) / static_cast<double>(steps),
          static_cast<double>(st.reads) / static_cast<double>(steps),
          1e3 * wall / static_cast<double>(steps), st.io_seconds / wall,
          static_cast<double>(st.requested) / wall, static_cast<double>(st.unique) / wall,
          blocks_per_s, reads_per_s, static_cast<double>(st.bytes_read) / wall / 1e6, limit_iops,
          reads_per_s / limit_iops);
      std::fflush(stdout);
    };
    line("all", all, wall_all, o.steps);
    line("second_half", warm, wall_warm, o.steps - o.steps / 2);
  }
  if (!o.keep) ::unlink(table.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_file_tier: %s\n", e.what());
    return 1;
  }
}
