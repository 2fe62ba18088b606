// Helpers shared by the memory-tier tests: damaging a file, and catching an error's message.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

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

// rows x width values ~ N(0, 0.5) from mt19937(seed).
inline std::vector<float> random_table(int64_t rows, int64_t width, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<float> v(static_cast<size_t>(rows * width));
  for (float& x : v) x = normal(rng);
  return v;
}

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace engram::memory::test_util
