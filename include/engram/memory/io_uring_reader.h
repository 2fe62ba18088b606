// Reads many 4096-aligned pieces of one file at a high queue depth: the file tier's I/O engine.
//
// A batch of ReadRequests (file offset, length, destination, each a multiple of 4096 and the
// destination 4096-aligned, so the file can be opened with O_DIRECT) is read with io_uring,
// keeping up to queue_depth reads in flight: one io_uring_enter submits what fits in the
// submission ring and waits for at least one completion, and every completion frees a slot for
// the next request. The ring is set up with raw syscalls (io_uring_setup, io_uring_enter, mmap
// of the SQ/CQ rings and the SQE array): liburing is not needed.
//
// Where io_uring cannot be used (ENOSYS on old kernels, EPERM/EACCES under seccomp or with
// kernel.io_uring_disabled, a kernel without IORING_OP_READ, i.e. before 5.6) the reader falls
// back to pread from min(queue_depth, fallback_threads) threads pulling requests from a shared
// counter (queue depth 1: plain pread in the calling thread). backend_name() says which is used;
// BlockReaderOptions::force_fallback picks the fallback on purpose (tests run both everywhere).
//
// Both backends finish short reads (a read that returns fewer bytes is continued from where it
// stopped) and report a read that reaches the end of the file, or fails, as an IoError naming the
// file, the request's offset and length, and the errno text. A batch that fails is drained first
// (no read is left in flight into the caller's buffers) and the first error is thrown.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace engram::memory {

inline constexpr int64_t kReadAlignment = 4096;

// One read: `length` bytes at file offset `offset` into `dest`. offset and length are multiples
// of 4096 and length > 0; dest is 4096-aligned.
struct ReadRequest {
  int64_t offset = 0;
  int64_t length = 0;
  void* dest = nullptr;
};

enum class ReadBackend { kIoUring, kPreadThreads };

struct BlockReaderOptions {
  int queue_depth = 64;         // reads in flight (io_uring ring entries; 1 … 4096)
  bool direct_io = true;        // open with O_DIRECT; buffered where the file system refuses it
  bool force_fallback = false;  // use the pread threads even where io_uring works
  int fallback_threads = 16;    // at most this many pread threads (and at most queue_depth)
  // Called for every request of a read() batch, in order, before any of them is submitted (on
  // the calling thread, under the reader's lock): a request log for tests.
  std::function<void(const ReadRequest&)> on_request;
};

struct ReadStats {
  int64_t batches = 0;    // read() calls
  int64_t requests = 0;   // ReadRequests completed
  int64_t bytes = 0;      // bytes read
  int64_t resubmits = 0;  // short reads continued, EAGAIN/EINTR retried
};

// One open file. read() may be called from several threads; the calls are serialized (one ring).
class BlockReader {
 public:
  // Opens `path` read-only. Throws IoError naming the file when it cannot be opened, ConfigError
  // for a queue depth outside [1, 4096] or fallback_threads < 1.
  explicit BlockReader(const std::string& path, BlockReaderOptions options = {});
  ~BlockReader();
  BlockReader(const BlockReader&) = delete;
  BlockReader& operator=(const BlockReader&) = delete;

  // Reads every request into its destination, up to queue_depth at a time, in any order.
  // Throws InputError for a misaligned request (before reading anything), IoError for a failed
  // or short read (see above).
  void read(std::span<const ReadRequest> requests);

  ReadBackend backend() const { return backend_; }
  std::string_view backend_name() const;  // "io_uring", "pread-threads"
  // Why io_uring is not used (empty when it is): "forced", or the failing call and errno text.
  const std::string& fallback_reason() const { return fallback_reason_; }
  bool direct_io() const { return direct_io_; }
  int queue_depth() const { return options_.queue_depth; }
  const std::string& path() const { return path_; }
  ReadStats stats() const;

 private:
  struct Ring;
  void read_io_uring(std::span<const ReadRequest> requests);
  void read_pread(std::span<const ReadRequest> requests);

  std::string path_;
  BlockReaderOptions options_;
  int fd_ = -1;
  bool direct_io_ = false;
  ReadBackend backend_ = ReadBackend::kPreadThreads;
  std::string fallback_reason_;
  std::unique_ptr<Ring> ring_;
  struct Locked;
  std::unique_ptr<Locked> locked_;  // the lock serializing read() and the statistics
};

}  // namespace engram::memory
