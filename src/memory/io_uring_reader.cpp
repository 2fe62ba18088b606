#include "engram/memory/io_uring_reader.h"

#include <fcntl.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "engram/util/error.h"

namespace engram::memory {
namespace {

int sys_io_uring_setup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(::syscall(__NR_io_uring_setup, entries, p));
}

int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return static_cast<int>(
      ::syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, size_t{0}));
}

std::string describe(const ReadRequest& r) {
  return std::to_string(r.length) + " bytes at offset " + std::to_string(r.offset);
}

IoError read_error(const std::string& path, const ReadRequest& r, int err) {
  return IoError(error_message(path, "cannot read " + describe(r) + ": " + std::strerror(err)));
}

IoError short_read_error(const std::string& path, const ReadRequest& r, int64_t done) {
  return IoError(error_message(path, "short read of " + describe(r) + ": the file ends after " +
                                         std::to_string(done) + " bytes of it (" +
                                         std::strerror(ENODATA) + ")"));
}

}  // namespace

struct BlockReader::Locked {
  std::mutex mu;
  ReadStats stats;
};

// The mapped rings of one io_uring instance. Only the fields the reader uses are kept.
struct BlockReader::Ring {
  int fd = -1;
  void* sq_map = MAP_FAILED;
  size_t sq_map_bytes = 0;
  void* cq_map = MAP_FAILED;  // == sq_map with IORING_FEAT_SINGLE_MMAP
  size_t cq_map_bytes = 0;
  io_uring_sqe* sqes = nullptr;
  size_t sqes_bytes = 0;
  unsigned* sq_head = nullptr;
  unsigned* sq_tail = nullptr;
  unsigned* sq_array = nullptr;
  unsigned sq_mask = 0, sq_entries = 0;
  unsigned* cq_head = nullptr;
  unsigned* cq_tail = nullptr;
  io_uring_cqe* cqes = nullptr;
  unsigned cq_mask = 0;

  ~Ring() {
    if (sqes != nullptr) ::munmap(sqes, sqes_bytes);
    if (cq_map != MAP_FAILED && cq_map != sq_map) ::munmap(cq_map, cq_map_bytes);
    if (sq_map != MAP_FAILED) ::munmap(sq_map, sq_map_bytes);
    if (fd >= 0) ::close(fd);
  }

  // Sets up a ring of `entries` submission slots. Returns an empty string on success, else the
  // reason io_uring cannot be used.
  std::string setup(unsigned entries) {
    io_uring_params p{};
    fd = sys_io_uring_setup(entries, &p);
    if (fd < 0) return std::string("io_uring_setup: ") + std::strerror(errno);
    // IORING_FEAT_RW_CUR_POS came with IORING_OP_READ (Linux 5.6).
    if ((p.features & IORING_FEAT_RW_CUR_POS) == 0)
      return "io_uring without IORING_OP_READ (Linux before 5.6)";
    sq_map_bytes = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_map_bytes = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) sq_map_bytes = cq_map_bytes = std::max(sq_map_bytes, cq_map_bytes);
    sq_map = ::mmap(nullptr, sq_map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                    IORING_OFF_SQ_RING);
    if (sq_map == MAP_FAILED) return std::string("mmap of the SQ ring: ") + std::strerror(errno);
    if (single) {
      cq_map = sq_map;
    } else {
      cq_map = ::mmap(nullptr, cq_map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                      IORING_OFF_CQ_RING);
      if (cq_map == MAP_FAILED) return std::string("mmap of the CQ ring: ") + std::strerror(errno);
    }
    sqes_bytes = p.sq_entries * sizeof(io_uring_sqe);
    void* s = ::mmap(nullptr, sqes_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQES);
    if (s == MAP_FAILED) return std::string("mmap of the SQEs: ") + std::strerror(errno);
    sqes = static_cast<io_uring_sqe*>(s);
    auto* sq = static_cast<uint8_t*>(sq_map);
    auto* cq = static_cast<uint8_t*>(cq_map);
    sq_head = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sq_tail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    sq_mask = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_entries = p.sq_entries;
    cq_head = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    return "";
  }
};

BlockReader::BlockReader(const std::string& path, BlockReaderOptions options)
    : path_(path), options_(std::move(options)), locked_(std::make_unique<Locked>()) {
  if (options_.queue_depth < 1 || options_.queue_depth > 4096) {
    throw ConfigError(error_message(
        "BlockReader",
        "queue_depth " + std::to_string(options_.queue_depth) + " is out of range [1, 4096]"));
  }
  if (options_.fallback_threads < 1) {
    throw ConfigError(error_message(
        "BlockReader", "fallback_threads " + std::to_string(options_.fallback_threads) + " < 1"));
  }
  if (options_.direct_io) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    direct_io_ = fd_ >= 0;
  }
  if (fd_ < 0) fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0)
    throw IoError(error_message(path, std::string("cannot open: ") + std::strerror(errno)));
  if (options_.force_fallback) {
    fallback_reason_ = "forced";
    return;
  }
  auto ring = std::make_unique<Ring>();
  fallback_reason_ = ring->setup(static_cast<unsigned>(options_.queue_depth));
  if (fallback_reason_.empty()) {
    ring_ = std::move(ring);
    backend_ = ReadBackend::kIoUring;
  }
}

BlockReader::~BlockReader() {
  ring_.reset();
  if (fd_ >= 0) ::close(fd_);
}

std::string_view BlockReader::backend_name() const {
  return backend_ == ReadBackend::kIoUring ? "io_uring" : "pread-threads";
}

ReadStats BlockReader::stats() const {
  std::lock_guard<std::mutex> lock(locked_->mu);
  return locked_->stats;
}

void BlockReader::read(std::span<const ReadRequest> requests) {
  for (size_t i = 0; i < requests.size(); ++i) {
    const ReadRequest& r = requests[i];
    if (r.offset < 0 || r.length <= 0 || r.offset % kReadAlignment != 0 ||
        r.length % kReadAlignment != 0 ||
        reinterpret_cast<uintptr_t>(r.dest) % static_cast<uintptr_t>(kReadAlignment) != 0) {
      throw InputError(error_message(
          path_, "read request " + std::to_string(i) + " (" + describe(r) +
                     ") is not 4096-aligned (offset, length > 0 and destination address)"));
    }
  }
  std::lock_guard<std::mutex> lock(locked_->mu);
  if (options_.on_request)
    for (const ReadRequest& r : requests) options_.on_request(r);
  if (requests.empty()) return;
  if (backend_ == ReadBackend::kIoUring) {
    read_io_uring(requests);
  } else {
    read_pread(requests);
  }
  ++locked_->stats.batches;
  locked_->stats.requests += static_cast<int64_t>(requests.size());
  for (const ReadRequest& r : requests) locked_->stats.bytes += r.length;
}

void BlockReader::read_io_uring(std::span<const ReadRequest> requests) {
  Ring& ring = *ring_;
  const size_t n = requests.size();
  std::vector<int64_t> done(n, 0);  // bytes of request i read so far
  std::vector<uint32_t> retry;      // requests to (re)submit before new ones
  size_t next = 0;                  // the next request never submitted
  unsigned in_flight = 0, unsubmitted = 0;
  size_t finished = 0;
  const unsigned depth =
      std::min<unsigned>(static_cast<unsigned>(options_.queue_depth), ring.sq_entries);
  std::exception_ptr error;
  int64_t resubmits = 0;

  auto push = [&](uint32_t i) {
    const unsigned tail = *ring.sq_tail;  // only this thread writes the tail
    const unsigned idx = tail & ring.sq_mask;
    io_uring_sqe& sqe = ring.sqes[idx];
    std::memset(&sqe, 0, sizeof sqe);
    sqe.opcode = IORING_OP_READ;
    sqe.fd = fd_;
    sqe.off = static_cast<uint64_t>(requests[i].offset + done[i]);
    sqe.addr = reinterpret_cast<uint64_t>(static_cast<uint8_t*>(requests[i].dest) + done[i]);
    sqe.len = static_cast<uint32_t>(requests[i].length - done[i]);
    sqe.user_data = i;
    ring.sq_array[idx] = idx;
    __atomic_store_n(ring.sq_tail, tail + 1, __ATOMIC_RELEASE);
    ++in_flight;
    ++unsubmitted;
  };

  while (finished < n) {
    // Fill the submission ring up to the queue depth (nothing new once a read has failed).
    while (!error && in_flight < depth && (!retry.empty() || next < n)) {
      if (!retry.empty()) {
        push(retry.back());
        retry.pop_back();
      } else {
        push(static_cast<uint32_t>(next++));
      }
    }
    if (in_flight == 0) break;  // only after an error: everything submitted has completed
    const int ret = sys_io_uring_enter(ring.fd, unsubmitted, 1, IORING_ENTER_GETEVENTS);
    if (ret < 0) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN || err == EBUSY) continue;
      // The ring itself is broken (never seen with a valid ring and fd): nothing can be reaped,
      // so the batch cannot be drained; the ring is closed with the reader.
      throw IoError(error_message(path_, std::string("io_uring_enter: ") + std::strerror(err)));
    }
    unsubmitted -= std::min(unsubmitted, static_cast<unsigned>(ret));
    unsigned head = *ring.cq_head;
    const unsigned tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; ++head) {
      const io_uring_cqe& cqe = ring.cqes[head & ring.cq_mask];
      const auto i = static_cast<uint32_t>(cqe.user_data);
      const int res = cqe.res;
      --in_flight;
      const ReadRequest& r = requests[i];
      if (res == -EAGAIN || res == -EINTR) {
        ++resubmits;
        retry.push_back(i);
        continue;
      }
      if (res < 0) {
        if (!error) error = std::make_exception_ptr(read_error(path_, r, -res));
        ++finished;
        continue;
      }
      if (res == 0) {
        if (!error) error = std::make_exception_ptr(short_read_error(path_, r, done[i]));
        ++finished;
        continue;
      }
      done[i] += res;
      if (done[i] < r.length && direct_io_ && done[i] % kReadAlignment != 0) {
        // An O_DIRECT read stops short of a block boundary only at the end of the file.
        if (!error) error = std::make_exception_ptr(short_read_error(path_, r, done[i]));
        ++finished;
      } else if (done[i] < r.length) {
        ++resubmits;
        retry.push_back(i);
      } else {
        ++finished;
      }
    }
    __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
  }
  locked_->stats.resubmits += resubmits;
  if (error) std::rethrow_exception(error);
}

void BlockReader::read_pread(std::span<const ReadRequest> requests) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<int64_t> resubmits{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&] {
    for (size_t i = next++; i < requests.size() && !failed; i = next++) {
      const ReadRequest& r = requests[i];
      auto* dst = static_cast<uint8_t*>(r.dest);
      int64_t done = 0;
      std::exception_ptr e;
      while (done < r.length) {
        const ssize_t got = ::pread(fd_, dst + done, static_cast<size_t>(r.length - done),
                                    static_cast<off_t>(r.offset + done));
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) {
          ++resubmits;
          continue;
        }
        if (got < 0) {
          e = std::make_exception_ptr(read_error(path_, r, errno));
          break;
        }
        if (got == 0) {
          e = std::make_exception_ptr(short_read_error(path_, r, done));
          break;
        }
        done += got;
        if (done < r.length && direct_io_ && done % kReadAlignment != 0) {
          e = std::make_exception_ptr(short_read_error(path_, r, done));
          break;
        }
        if (done < r.length) ++resubmits;
      }
      if (e) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = e;
        failed = true;
      }
    }
  };
  const size_t threads =
      std::min<size_t>({static_cast<size_t>(options_.queue_depth),
                        static_cast<size_t>(options_.fallback_threads), requests.size()});
  if (threads <= 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (size_t t = 0; t + 1 < threads; ++t) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
  }
  locked_->stats.resubmits += resubmits.load();
  if (error) std::rethrow_exception(error);
}

}  // namespace engram::memory
