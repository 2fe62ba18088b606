// NumPy .npy files (format version 1.0/2.0/3.0), 1-D and N-D, little-endian, C order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace engram {

struct NpyArray {
  std::string descr;           // numpy dtype string, e.g. "<i4", "<i8", "<f4"
  std::vector<int64_t> shape;  // empty for a scalar
  std::string data;            // raw little-endian bytes, C order

  int64_t num_elements() const;
};

// Reads and validates an .npy file (magic, header dict, C order, data length). Throws
// FormatError naming the file and the problem.
NpyArray read_npy(const std::string& path);

// Typed views: throw FormatError unless the file holds that dtype (i4, i8; 1-D for vectors).
std::vector<int32_t> read_npy_int32_vector(const std::string& path);

// Writes an int32 vector as an .npy file (atomically).
void write_npy_int32_vector(const std::string& path, const std::vector<int32_t>& values);

}  // namespace engram
