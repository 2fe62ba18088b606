// Helpers shared by the memory-tier tests: damaging a file, and catching an error's message.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>

#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram::memory::test_util {

// Flips one bit (0x20) of the byte at `offset` of the file at `path`.
inline void flip_byte(const std::string& path, int64_t offset) {
  std::string bytes = read_file(path);
  ASSERT_LT(offset, static_cast<int64_t>(bytes.size()));
  bytes[static_cast<size_t>(offset)] = static_cast<char>(bytes[static_cast<size_t>(offset)] ^ 0x20);
  write_file_atomic(path, bytes);
}

// The message of the engram::Error that f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace engram::memory::test_util
