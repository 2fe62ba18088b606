#include "engram/util/npy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram {
namespace {

// A fresh file path in a per-test temporary directory.
class NpyTest : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/engram_npy_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& f : written_) ::unlink(f.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string path(const std::string& name) {
    written_.push_back(dir_ + "/" + name);
    return written_.back();
  }
  // An .npy file with a v1.0 header dict `dict` (padded as numpy does) and raw `data`.
  std::string npy_bytes(const std::string& dict, const std::string& data) {
    std::string header = dict;
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header.push_back('\n');
    std::string out = "\x93NUMPY";
    out.push_back('\x01');
    out.push_back('\x00');
    out.push_back(static_cast<char>(header.size() & 0xff));
    out.push_back(static_cast<char>(header.size() >> 8));
    return out + header + data;
  }
  std::string error_of(const std::string& file) {
    try {
      read_npy_int32_vector(file);
    } catch (const FormatError& e) {
      return e.what();
    }
    return "";
  }

  std::string dir_;
  std::vector<std::string> written_;
};

TEST_F(NpyTest, Int32RoundTrip) {
  const std::vector<int32_t> values = {0, 1, -1, INT32_MAX, INT32_MIN, 98626, 42};
  const std::string file = path("v.npy");
  write_npy_int32_vector(file, values);
  EXPECT_EQ(read_npy_int32_vector(file), values);
  const NpyArray arr = read_npy(file);
  EXPECT_EQ(arr.descr, "<i4");
  EXPECT_EQ(arr.shape, (std::vector<int64_t>{7}));
  EXPECT_EQ(arr.num_elements(), 7);
  EXPECT_EQ(arr.data.size(), 28u);
  // numpy's layout: the data starts at a multiple of 64 bytes.
  EXPECT_EQ((read_file(file).size() - 28) % 64, 0u);
}

TEST_F(NpyTest, EmptyVectorRoundTrip) {
  const std::string file = path("empty.npy");
  write_npy_int32_vector(file, {});
  EXPECT_TRUE(read_npy_int32_vector(file).empty());
}

TEST_F(NpyTest, ReadsInt64AndMultiDimensional) {
  std::string data(3 * 8, '\0');
  const int64_t v[3] = {5, -6, 7};
  std::memcpy(data.data(), v, sizeof v);
  const std::string file = path("i8.npy");
  write_file_atomic(file,
                    npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", data));
  EXPECT_EQ(read_npy_int32_vector(file), (std::vector<int32_t>{5, -6, 7}));

  const std::string matrix = path("m.npy");
  write_file_atomic(matrix, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                      std::string(24, '\0')));
  const NpyArray arr = read_npy(matrix);
  EXPECT_EQ(arr.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(arr.descr, "<f4");
}

TEST_F(NpyTest, CorruptFilesAreFormatErrors) {
  const std::string dict_i4 = "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }";
  struct Case {
    std::string name, bytes, message;
  };
  std::string big(3 * 8, '\0');
  const int64_t too_big = int64_t{1} << 40;
  std::memcpy(big.data() + 8, &too_big, 8);
  const std::vector<Case> cases = {
      {"magic.npy", "NUMPY\x01\x00", "not an .npy file (bad magic)"},
      {"version.npy", std::string("\x93NUMPY\x07\x00\x10\x00", 10) + std::string(16, ' '),
       "unsupported .npy format version 7"},
      {"header.npy", npy_bytes(dict_i4, std::string(16, '\0')).substr(0, 40),
       "truncated .npy header"},
      {"short.npy", npy_bytes(dict_i4, std::string(12, '\0')),
       "npy: data holds 12 bytes, shape and dtype need 16"},
      {"long.npy", npy_bytes(dict_i4, std::string(20, '\0')),
       "npy: data holds 20 bytes, shape and dtype need 16"},
      {"fortran.npy",
       npy_bytes("{'descr': '<i4', 'fortran_order': True, 'shape': (4,), }", std::string(16, '\0')),
       "npy: Fortran order is not supported"},
      {"nodescr.npy", npy_bytes("{'fortran_order': False, 'shape': (4,), }", std::string(16, '\0')),
       "npy header: missing 'descr'"},
      {"float.npy",
       npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
                 std::string(16, '\0')),
       "npy: expected dtype int32 or int64, found '<f4'"},
      {"bigendian.npy",
       npy_bytes("{'descr': '>i4', 'fortran_order': False, 'shape': (4,), }",
                 std::string(16, '\0')),
       "npy: unsupported dtype '>i4'"},
      {"matrix.npy",
       npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }",
                 std::string(16, '\0')),
       "npy: expected a 1-D array"},
      {"range.npy", npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", big),
       "npy: value 1099511627776 at index 1 does not fit int32"},
  };
  for (const Case& c : cases) {
    const std::string file = path(c.name);
    write_file_atomic(file, c.bytes);
    EXPECT_EQ(error_of(file), file + ": " + c.message) << c.name;
  }
}

TEST_F(NpyTest, MissingFileIsAnIoError) {
  EXPECT_THROW(read_npy(dir_ + "/missing.npy"), IoError);
}

}  // namespace
}  // namespace engram
