// Path checks, whole-file reads and crash-safe writes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace engram {

// What is at a path (links followed); false when nothing is there or it cannot be looked at.
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);

// Creates `path` and any missing parents (mkdir -p). Throws IoError naming the path.
void make_directories(const std::string& path);

// Reads the whole file into a string. Throws IoError naming the path on failure.
std::string read_file(const std::string& path);

// Writes `bytes` to `path` atomically: a temporary file beside it is written, fsynced and
// renamed over `path`, then the directory is fsynced. Readers see the old or the new file,
// never a partial one. Throws IoError (and removes the temporary file) on failure.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Writes a file atomically in pieces, so large outputs (checkpoints) need not be assembled in
// memory first. The constructor creates a temporary file beside `path` ("<path>.tmp.XXXXXX");
// commit() flushes, fsyncs, renames it over `path` (mode 0644) and fsyncs the directory.
// Destroying the writer without a successful commit() removes the temporary file and leaves
// `path` as it was, so an exception anywhere between the two writes nothing half-way.
// Every failure throws IoError naming `path`.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Appends bytes (small writes are buffered).
  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  void commit();

  const std::string& path() const { return path_; }
  // The temporary file, until commit() or destruction.
  const std::string& temp_path() const { return temp_path_; }
  // Bytes written so far.
  size_t size() const { return size_; }

 private:
  void flush();
  [[noreturn]] void fail(const char* action);

  std::string path_, temp_path_;
  std::string buffer_;
  size_t size_ = 0;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace engram
