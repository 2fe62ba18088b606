#include "engram/util/npy.h"

#include <cstring>
#include <string>

#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram {
namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw FormatError(error_message(path, what));
}

// Value of key 'k' in the header dict: the text after "'k':" up to the next top-level comma.
std::string header_value(const std::string& header, const std::string& key,
                         const std::string& path) {
  const std::string needle = "'" + key + "':";
  const auto at = header.find(needle);
  if (at == std::string::npos) bad(path, "npy header: missing '" + key + "'");
  size_t i = at + needle.size();
  while (i < header.size() && header[i] == ' ') ++i;
  size_t depth = 0, j = i;
  for (; j < header.size(); ++j) {
    const char c = header[j];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  return header.substr(i, j - i);
}

int element_size(const std::string& descr) {
  if (descr.size() < 3) return 0;
  if (descr[0] != '<' && descr[0] != '|') return 0;
  try {
    return std::stoi(descr.substr(2));
  } catch (...) {
    return 0;
  }
}

}  // namespace

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

NpyArray read_npy(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    bad(path, "not an .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad(path, "truncated .npy header");
    header_len = 0;
    for (int b = 0; b < 4; ++b)
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + b])) << (8 * b);
    header_start = 12;
  } else {
    bad(path, "unsupported .npy format version " + std::to_string(major));
  }
  if (header_start + header_len > bytes.size()) bad(path, "truncated .npy header");
  const std::string header = bytes.substr(header_start, header_len);
  NpyArray arr;
  std::string descr = header_value(header, "descr", path);
  if (descr.size() < 2 || descr.front() != '\'' || descr.back() != '\'')
    bad(path, "npy header: bad descr " + descr);
  arr.descr = descr.substr(1, descr.size() - 2);
  if (header_value(header, "fortran_order", path) != "False")
    bad(path, "npy: Fortran order is not supported");
  std::string shape = header_value(header, "shape", path);
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
    bad(path, "npy header: bad shape " + shape);
  shape = shape.substr(1, shape.size() - 2);
  size_t i = 0;
  while (i < shape.size()) {
    while (i < shape.size() && (shape[i] == ' ' || shape[i] == ',')) ++i;
    if (i >= shape.size()) break;
    size_t j = i;
    while (j < shape.size() && shape[j] >= '0' && shape[j] <= '9') ++j;
    if (j == i) bad(path, "npy header: bad shape (" + shape + ")");
    arr.shape.push_back(std::stoll(shape.substr(i, j - i)));
    i = j;
  }
  const int esize = element_size(arr.descr);
  if (esize <= 0) bad(path, "npy: unsupported dtype '" + arr.descr + "'");
  const size_t want = static_cast<size_t>(arr.num_elements()) * static_cast<size_t>(esize);
  const size_t data_start = header_start + header_len;
  if (bytes.size() - data_start != want) {
    bad(path, "npy: data holds " + std::to_string(bytes.size() - data_start) +
                  " bytes, shape and dtype need " + std::to_string(want));
  }
  arr.data = bytes.substr(data_start);
  return arr;
}

std::vector<int32_t> read_npy_int32_vector(const std::string& path) {
  const NpyArray arr = read_npy(path);
  if (arr.shape.size() != 1) bad(path, "npy: expected a 1-D array");
  std::vector<int32_t> out(static_cast<size_t>(arr.shape[0]));
  if (arr.descr == "<i4") {
    if (!out.empty()) std::memcpy(out.data(), arr.data.data(), out.size() * 4);
  } else if (arr.descr == "<i8") {
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      std::memcpy(&v, arr.data.data() + 8 * i, 8);
      if (v < INT32_MIN || v > INT32_MAX)
        bad(path, "npy: value " + std::to_string(v) + " at index " + std::to_string(i) +
                      " does not fit int32");
      out[i] = static_cast<int32_t>(v);
    }
  } else {
    bad(path, "npy: expected dtype int32 or int64, found '" + arr.descr + "'");
  }
  return out;
}

void write_npy_int32_vector(const std::string& path, const std::vector<int32_t>& values) {
  std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (" +
                       std::to_string(values.size()) + ",), }";
  // Pad so that magic + len + header + '\n' is a multiple of 64 bytes.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int32_t));
  write_file_atomic(path, out);
}

}  // namespace engram
