// safetensors I/O: round trips of every dtype and shape, the exact bytes we write, the golden
// file from the reference implementation, every kind of malformed header (each a FormatError
// naming the file and the field), truncation at every length, a deterministic fuzz, and the
// atomic writer leaving the old file intact on failure.
#include "engram/model/safetensors.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_paths.h"
#include "temp_dir_test.h"

namespace engram {
namespace {

using Named = std::vector<std::pair<std::string, Tensor>>;

constexpr DType kAllDTypes[] = {DType::kF64, DType::kF32,  DType::kBF16,   DType::kF16,
                                DType::kI64, DType::kI32,  DType::kI16,    DType::kI8,
                                DType::kU8,  DType::kBool, DType::kF8E4M3, DType::kF8E5M2};

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

uint64_t read_u64_le(const std::string& s) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[static_cast<size_t>(i)]);
  return v;
}

// A file of `header` (unpadded, as given) followed by `data`.
std::string st_bytes(const std::string& header, const std::string& data = "") {
  return u64_le(header.size()) + header + data;
}

// A tensor whose bytes follow a pattern that differs per tensor (`seed`).
Tensor patterned(DType dtype, std::vector<int64_t> shape, unsigned seed) {
  Tensor t(dtype, std::move(shape));
  auto* p = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i)
    p[i] = static_cast<unsigned char>((i * 37 + seed * 101 + 7) & 0xff);
  return t;
}

std::string bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw()), c.nbytes());
}

class SafetensorsTest : public test::TempDirTest {
 protected:
  // Writes without fsync (test inputs, many of them).
  std::string put(const std::string& name, const std::string& bytes) const {
    const std::string path = dir_ + "/" + name;
    FILE* f = std::fopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr) << path;
    if (f == nullptr) return path;
    EXPECT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    std::fclose(f);
    return path;
  }

  // Opening `bytes` must throw FormatError whose message starts with the path and contains
  // every key word.
  void expect_format_error(const std::string& bytes, std::initializer_list<std::string> words,
                           const std::string& label) {
    const std::string path = put("bad.safetensors", bytes);
    try {
      SafetensorsFile::open(path);
      ADD_FAILURE() << label << ": expected FormatError";
    } catch (const FormatError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(path + ": ", 0), 0u) << label << ": " << what;
      for (const std::string& w : words) {
        EXPECT_NE(what.find(w), std::string::npos) << label << ": \"" << w << "\" not in: " << what;
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << label << ": expected FormatError, got " << e.what();
    }
  }

};

// ---- Round trips ------------------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripEveryDTypeAndShape) {
  const std::vector<std::vector<int64_t>> shapes = {{},        {1}, {5},         {2, 3},
                                                    {2, 0, 4}, {0}, {1, 1, 3, 1}};
  Named tensors;
  unsigned seed = 0;
  for (DType dtype : kAllDTypes) {
    for (const auto& shape : shapes) {
      const std::string name = std::string(dtype_name(dtype)) + "/" + std::to_string(seed);
      tensors.emplace_back(name, patterned(dtype, shape, seed++));
    }
  }
  const std::string path = dir_ + "/all.safetensors";
  write_safetensors(path, tensors);

  size_t data_bytes = 0;
  for (const auto& [name, t] : tensors) data_bytes += t.nbytes();
  const std::string file = read_file(path);
  const uint64_t header_size = read_u64_le(file);
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(file.size(), 8 + header_size + data_bytes);

  const SafetensorsFile st = SafetensorsFile::open(path);
  ASSERT_EQ(st.names().size(), tensors.size());
  EXPECT_TRUE(st.metadata().empty());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(st.contains(name));
    const Tensor got = st.get(name);
    EXPECT_EQ(got.dtype(), t.dtype());
    EXPECT_EQ(got.shape(), t.shape());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_EQ(got.numel(), t.numel());
    EXPECT_FALSE(got.empty());
    EXPECT_EQ(bytes_of(got), bytes_of(t));
  }
  // A scalar has one element; an empty tensor none.
  EXPECT_EQ(st.get("F64/0").numel(), 1);
  EXPECT_EQ(st.get("F64/0").nbytes(), 8u);
  EXPECT_EQ(st.get("F64/4").nbytes(), 0u);
}

TEST_F(SafetensorsTest, NamesAreInFileOrderAndValuesSurvive) {
  Tensor a(DType::kF32, {2, 2});
  for (int i = 0; i < 4; ++i) a.data<float>()[i] = 0.5f * static_cast<float>(i) - 1.0f;
  Tensor b(DType::kI64, {3});
  b.data<int64_t>()[0] = -1;
  b.data<int64_t>()[1] = INT64_MAX;
  b.data<int64_t>()[2] = INT64_MIN;
  Tensor c(DType::kF64, {});
  c.data<double>()[0] = 3.25;
  const std::string path = dir_ + "/ordered.safetensors";
  write_safetensors(path, {{"zeta", a}, {"alpha", b}, {"mid", c}});

  const SafetensorsFile st = SafetensorsFile::open(path);
  EXPECT_EQ(st.path(), path);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"zeta", "alpha", "mid"}));
  const Tensor ga = st.get("zeta");
  EXPECT_EQ(ga.describe(), "F32[2, 2]");
  EXPECT_EQ(ga.data<float>()[0], -1.0f);
  EXPECT_EQ(ga.data<float>()[3], 0.5f);
  const Tensor gb = st.get("alpha");
  EXPECT_EQ(gb.data<int64_t>()[0], -1);
  EXPECT_EQ(gb.data<int64_t>()[1], INT64_MAX);
  EXPECT_EQ(gb.data<int64_t>()[2], INT64_MIN);
  const Tensor gc = st.get("mid");
  EXPECT_EQ(gc.rank(), 0u);
  EXPECT_EQ(gc.data<double>()[0], 3.25);
  EXPECT_FALSE(st.contains("nope"));
}

TEST_F(SafetensorsTest, NonContiguousTensorsAreWrittenContiguous) {
  // base is (3, 4): 0..11; its transpose is a (4, 3) view with strides (1, 4).
  Tensor base(DType::kF32, {3, 4});
  for (int i = 0; i < 12; ++i) base.data<float>()[i] = static_cast<float>(i);
  const Tensor transposed =
      Tensor::view(DType::kF32, {4, 3}, base.raw(), nullptr, std::vector<int64_t>{1, 4});
  ASSERT_FALSE(transposed.is_contiguous());
  // Row 1 of base repeated twice: a (2, 4) broadcast with stride 0.
  const Tensor broadcast = Tensor::view(DType::kF32, {2, 4}, base.data<float>() + 4, nullptr,
                                        std::vector<int64_t>{0, 1});
  // Every second column: (3, 2), strides (4, 2).
  const Tensor strided =
      Tensor::view(DType::kF32, {3, 2}, base.raw(), nullptr, std::vector<int64_t>{4, 2});
  const std::string path = dir_ + "/views.safetensors";
  write_safetensors(path, {{"t", transposed}, {"b", broadcast}, {"s", strided}});

  const SafetensorsFile st = SafetensorsFile::open(path);
  const Tensor t = st.get("t");
  ASSERT_EQ(t.shape(), (std::vector<int64_t>{4, 3}));
  const float want_t[] = {0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(t.data<float>()[i], want_t[i]) << i;
  const float want_b[] = {4, 5, 6, 7, 4, 5, 6, 7};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(st.get("b").data<float>()[i], want_b[i]) << i;
  const float want_s[] = {0, 2, 4, 6, 8, 10};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(st.get("s").data<float>()[i], want_s[i]) << i;
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"step", "1200"},
      {"", "empty key"},
      {"quote\"and\\back", "line\nbreak \xc3\xa9"}};
  const std::string path = dir_ + "/meta.safetensors";
  write_safetensors(path, {{"w", patterned(DType::kBF16, {4}, 1)}}, metadata);
  const SafetensorsFile st = SafetensorsFile::open(path);
  EXPECT_EQ(st.metadata(), metadata);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"w"}));

  // No "__metadata__" at all when there is none.
  write_safetensors(path, {{"w", patterned(DType::kBF16, {4}, 1)}});
  EXPECT_EQ(read_file(path).find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafetensorsFile::open(path).metadata().empty());
}

TEST_F(SafetensorsTest, ByteExactLayout) {
  Tensor a(DType::kF32, {2});
  a.data<float>()[0] = 1.0f;   // 00 00 80 3f
  a.data<float>()[1] = -2.0f;  // 00 00 00 c0
  Tensor b(DType::kU8, {3});
  b.data<uint8_t>()[0] = 1;
  b.data<uint8_t>()[1] = 2;
  b.data<uint8_t>()[2] = 255;
  const std::string path = dir_ + "/exact.safetensors";
  write_safetensors(path, {{"a", a}, {"b", b}}, {{"format", "pt"}});

  const std::string json =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";
  ASSERT_EQ(json.size(), 138u);
  const std::string header = json + std::string(6, ' ');  // padded to 144
  const std::string data("\x00\x00\x80\x3f\x00\x00\x00\xc0\x01\x02\xff", 11);
  EXPECT_EQ(read_file(path), u64_le(144) + header + data);

  // An empty file is a header "{}" padded to 8 bytes and nothing else.
  const std::string empty_path = dir_ + "/empty.safetensors";
  write_safetensors(empty_path, {});
  EXPECT_EQ(read_file(empty_path), u64_le(8) + "{}      ");
  const SafetensorsFile st = SafetensorsFile::open(empty_path);
  EXPECT_TRUE(st.names().empty());
  EXPECT_TRUE(st.metadata().empty());
}

TEST_F(SafetensorsTest, ReadsUnpaddedHeadersAndEmptyDataAreas) {
  // Other writers need not pad: a 2-byte header "{}" is valid, and so is an empty tensor in an
  // empty data area.
  SafetensorsFile st = SafetensorsFile::open(put("a.safetensors", st_bytes("{}")));
  EXPECT_TRUE(st.names().empty());
  st = SafetensorsFile::open(put(
      "b.safetensors", st_bytes(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})")));
  EXPECT_EQ(st.names(), (std::vector<std::string>{"e"}));
  EXPECT_EQ(st.get("e").shape(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(st.get("e").numel(), 0);
  // Whitespace and key order are free.
  st = SafetensorsFile::open(
      put("c.safetensors", st_bytes(" {\n \"x\" : { \"data_offsets\" : [ 0 , 2 ] , \"shape\" : [ 2 "
                                    "] , \"dtype\" : \"I8\" } }\n",
                                    "\x05\xfb")));
  EXPECT_EQ(st.get("x").data<int8_t>()[0], 5);
  EXPECT_EQ(st.get("x").data<int8_t>()[1], -5);
}

TEST_F(SafetensorsTest, ViewsShareTheMappingAndOutliveTheFileObject) {
  Tensor w(DType::kF64, {16});
  for (int i = 0; i < 16; ++i) w.data<double>()[i] = 0.25 * i;
  const std::string path = dir_ + "/w.safetensors";
  write_safetensors(path, {{"w", w}});
  Tensor view;
  {
    const SafetensorsFile st = SafetensorsFile::open(path);
    const SafetensorsFile copy = st;  // NOLINT: copies share the mapping
    view = copy.get("w");
    EXPECT_EQ(view.raw(), st.get("w").raw());  // zero-copy: the same bytes each time
  }
  // The file may even be replaced on disk: the mapping keeps the old contents.
  write_safetensors(path, {{"w", Tensor(DType::kF64, {16})}});
  for (int i = 0; i < 16; ++i) EXPECT_EQ(view.data<double>()[i], 0.25 * i);
}

TEST_F(SafetensorsTest, MisalignedTensorsAreCopiedToAlignedMemory) {
  // F32 after U8[3] starts at data offset 3: viewing it in place would give misaligned floats.
  Tensor u(DType::kU8, {3});
  Tensor f(DType::kF32, {2});
  f.data<float>()[0] = 1.5f;
  f.data<float>()[1] = -7.0f;
  Tensor d(DType::kF64, {1});
  d.data<double>()[0] = 2.5;
  const std::string path = dir_ + "/misaligned.safetensors";
  write_safetensors(path, {{"u", u}, {"f", f}, {"d", d}});
  const SafetensorsFile st = SafetensorsFile::open(path);
  const Tensor gf = st.get("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(gf.raw()) % alignof(float), 0u);
  EXPECT_EQ(gf.data<float>()[0], 1.5f);
  EXPECT_EQ(gf.data<float>()[1], -7.0f);
  const Tensor gd = st.get("d");  // data offset 11
  EXPECT_EQ(reinterpret_cast<uintptr_t>(gd.raw()) % alignof(double), 0u);
  EXPECT_EQ(gd.data<double>()[0], 2.5);
}

// ---- The golden file from the reference implementation -----------------------------------------

// A deliberately separate, minimal reader: finds `"name":{...,"data_offsets":[b,e]}` in the
// header text and returns the raw bytes.
std::string tiny_parse_tensor_bytes(const std::string& file, const std::string& name) {
  const uint64_t n = read_u64_le(file);
  const std::string header = file.substr(8, n);
  const size_t at = header.find("\"" + name + "\"");
  if (at == std::string::npos) return {};
  const size_t offs = header.find("\"data_offsets\"", at);
  const size_t open = header.find('[', offs);
  char* end = nullptr;
  const uint64_t b = std::strtoull(header.c_str() + open + 1, &end, 10);
  while (*end == ',' || *end == ' ') ++end;
  const uint64_t e = std::strtoull(end, nullptr, 10);
  return file.substr(8 + n + b, e - b);
}

TEST_F(SafetensorsTest, ReadsTheGoldenModuleFile) {
  const std::string path = test::golden_dir() + "/engram_module_golden.safetensors";
  const SafetensorsFile st = SafetensorsFile::open(path);
  ASSERT_EQ(st.names().size(), 54u);
  EXPECT_EQ(st.names().front(), "hash_ids");  // lowest data offset first
  EXPECT_EQ(st.names().back(), "param.value_proj.weight");
  EXPECT_TRUE(st.metadata().empty());

  EXPECT_EQ(st.get("hidden_states").describe(), "F64[2, 12, 4, 64]");
  EXPECT_EQ(st.get("hash_ids").describe(), "I64[2, 12, 8]");
  EXPECT_EQ(st.get("param.multi_head_embedding.embedding.weight").describe(), "F64[36288, 8]");
  EXPECT_EQ(st.get("param.short_conv.conv.weight").describe(), "F64[256, 1, 4]");

  const Tensor ids = st.get("input_ids");
  ASSERT_EQ(ids.describe(), "I64[2, 12]");
  EXPECT_EQ(ids.data<int64_t>()[0], 22898);
  EXPECT_EQ(ids.data<int64_t>()[1], 19737);
  EXPECT_EQ(ids.data<int64_t>()[23], 81737);

  // The sum of param.value_proj.bias, left to right, against (a) the same sum over bytes found
  // by a separate tiny parser and (b) the value Python's struct module gives for the file.
  const Tensor bias = st.get("param.value_proj.bias");
  ASSERT_EQ(bias.describe(), "F64[64]");
  double sum = 0;
  for (int i = 0; i < 64; ++i) sum += bias.data<double>()[i];
  const std::string raw = tiny_parse_tensor_bytes(read_file(path), "param.value_proj.bias");
  ASSERT_EQ(raw.size(), 64u * 8u);
  double tiny_sum = 0;
  for (size_t i = 0; i < 64; ++i) {
    double v;
    std::memcpy(&v, raw.data() + 8 * i, 8);
    tiny_sum += v;
  }
  EXPECT_EQ(sum, tiny_sum);
  EXPECT_EQ(sum, 63.09019498650951);
  EXPECT_EQ(bias.data<double>()[0], 0.9743757853311281);
  EXPECT_EQ(bias.data<double>()[63], 0.7879525779659815);
  EXPECT_EQ(std::memcmp(bias.raw(), raw.data(), raw.size()), 0);

  // Our writer reproduces the golden tensors exactly.
  Named all;
  for (const std::string& name : st.names()) all.emplace_back(name, st.get(name));
  const std::string copy = dir_ + "/golden_copy.safetensors";
  write_safetensors(copy, all);
  const SafetensorsFile again = SafetensorsFile::open(copy);
  ASSERT_EQ(again.names(), st.names());
  for (const std::string& name : st.names()) {
    EXPECT_EQ(bytes_of(again.get(name)), bytes_of(st.get(name))) << name;
  }
}

// ---- Malformed files ---------------------------------------------------------------------------

const std::string kF32x4 = R"("dtype":"F32","shape":[2,2])";

TEST_F(SafetensorsTest, HeaderLengthErrors) {
  expect_format_error("", {"file has 0 bytes", "8-byte header length"}, "empty file");
  expect_format_error(std::string("\x08\x00\x00", 3), {"file has 3 bytes"}, "3 bytes");
  expect_format_error(u64_le(uint64_t{1} << 63) + "{}",
                      {"header length 9223372036854775808", "limit of 104857600 bytes"}, "huge");
  expect_format_error(u64_le(100ull << 20 | 1) + "{}", {"header length 104857601", "104857600"},
                      "just over the limit");
  expect_format_error(u64_le(1000) + "{}      ",
                      {"header length 1000", "needs 1008 bytes", "file has 16"}, "beyond file");
  expect_format_error(u64_le(0), {"invalid JSON"}, "zero-length header");
}

TEST_F(SafetensorsTest, HeaderJsonErrors) {
  expect_format_error(st_bytes(R"({"w":)"), {"header: invalid JSON"}, "cut JSON");
  expect_format_error(st_bytes(R"({"w":{}} x)"), {"invalid JSON"}, "trailing garbage");
  expect_format_error(st_bytes("{\"\xff\":{}}"), {"invalid JSON"}, "invalid UTF-8 in a key");
  expect_format_error(st_bytes("{\"w\xc3\":{}}"), {"invalid JSON"}, "truncated UTF-8 sequence");
  expect_format_error(st_bytes("{/*c*/}"), {"invalid JSON"}, "comment");
  expect_format_error(st_bytes("[1,2]"), {"header: expected a JSON object, found an array"},
                      "array header");
  expect_format_error(st_bytes("\"x\""), {"expected a JSON object, found a string"}, "string");
  expect_format_error(st_bytes(std::string(100000, '[')), {"nested deeper than 16 levels"},
                      "deep nesting");
  expect_format_error(st_bytes(R"({"w":"F32"})"),
                      {"tensor \"w\": expected an object", "a string \"F32\""}, "entry a string");
}

TEST_F(SafetensorsTest, EntryFieldErrors) {
  auto entry = [](const std::string& fields, const std::string& data = std::string(16, '\0')) {
    return st_bytes("{\"w\":{" + fields + "}}", data);
  };
  expect_format_error(entry(R"("dtype":"F33","shape":[2,2],"data_offsets":[0,16])"),
                      {"tensor \"w\": dtype: unknown dtype \"F33\""}, "unknown dtype");
  expect_format_error(entry(R"("dtype":"f32","shape":[2,2],"data_offsets":[0,16])"),
                      {"unknown dtype \"f32\""}, "lower-case dtype");
  expect_format_error(entry(R"("dtype":4,"shape":[2,2],"data_offsets":[0,16])"),
                      {"dtype: expected a string, found an integer 4"}, "dtype not a string");
  expect_format_error(entry(R"("dtype":"F32","shape":[2,-2],"data_offsets":[0,16])"),
                      {"tensor \"w\": shape[1]: expected a non-negative integer, found -2"},
                      "negative dim");
  expect_format_error(entry(R"("dtype":"F32","shape":[2.5,2],"data_offsets":[0,16])"),
                      {"shape[0]", "2.5"}, "fractional dim");
  expect_format_error(entry(R"("dtype":"F32","shape":[2.0,2],"data_offsets":[0,16])"),
                      {"shape[0]", "non-negative integer"}, "float dim");
  expect_format_error(entry(R"("dtype":"F32","shape":["2",2],"data_offsets":[0,16])"),
                      {"shape[0]", "\"2\""}, "string dim");
  expect_format_error(entry(R"("dtype":"F32","shape":[[2],2],"data_offsets":[0,16])"), {"shape[0]"},
                      "nested dim");
  expect_format_error(entry(R"("dtype":"F32","shape":4,"data_offsets":[0,16])"),
                      {"shape: expected a list"}, "shape not a list");
  expect_format_error(entry(R"("dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,16])"),
                      {"shape[0]", "9223372036854775808"}, "dim beyond int64");
  expect_format_error(
      entry(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16])"),
      {"shape [4294967296, 4294967296]", "overflows"}, "element overflow");
  expect_format_error(entry(R"("dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,16])"),
                      {"overflows"}, "byte-size overflow");
  // Even with no elements, the strides of [0, 2^62, 2^62] would overflow.
  expect_format_error(
      entry(
          R"("dtype":"U8","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0])"),
      {"overflows"}, "stride overflow of an empty tensor");

  expect_format_error(
      entry(kF32x4 + R"(,"data_offsets":[0,32])"),
      {"tensor \"w\": data_offsets [0, 32] reach past the end of the 16-byte data area"},
      "end beyond data");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[16,0])"),
                      {"data_offsets [16, 0]: begin is after end"}, "begin after end");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[0])"),
                      {"data_offsets: expected [begin, end]", "[0]"}, "one offset");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[0,16,16])"), {"data_offsets: expected"},
                      "three offsets");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[-16,0])"), {"data_offsets: expected"},
                      "negative offset");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[0,16.0])"), {"data_offsets: expected"},
                      "float offset");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":{"begin":0})"), {"data_offsets: expected"},
                      "offsets object");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[0,18446744073709551615])"),
                      {"reach past the end"}, "offset 2^64-1");
  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[0,18446744073709551616])"),
                      {"data_offsets: expected"}, "offset beyond 2^64");

  // The message the house style gives as its example, in full.
  const std::string path =
      put("size.safetensors", entry(kF32x4 + R"(,"data_offsets":[0,12])", std::string(12, '\0')));
  try {
    SafetensorsFile::open(path);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ": tensor \"w\": data_offsets [0, 12] hold 12 bytes, F32[2, 2] needs 16");
  }

  expect_format_error(entry(kF32x4 + R"(,"data_offsets":[0,16],"extra":1)"),
                      {"tensor \"w\": unknown key \"extra\""}, "unknown key");
  expect_format_error(entry(R"("shape":[2,2],"data_offsets":[0,16])"),
                      {"tensor \"w\": missing \"dtype\""}, "missing dtype");
  expect_format_error(entry(R"("dtype":"F32","data_offsets":[0,16])"), {"missing \"shape\""},
                      "missing shape");
  expect_format_error(entry(kF32x4), {"missing \"data_offsets\""}, "missing offsets");
  expect_format_error(entry(kF32x4 + R"(,"dtype":"F32","data_offsets":[0,16])"),
                      {"tensor \"w\": duplicate key \"dtype\""}, "duplicate key in entry");
}

TEST_F(SafetensorsTest, LayoutErrors) {
  const std::string u8x8 = R"("dtype":"U8","shape":[8],"data_offsets":)";
  auto two = [&](const std::string& a, const std::string& b, size_t data) {
    return st_bytes("{\"a\":{" + u8x8 + a + "},\"b\":{" + u8x8 + b + "}}", std::string(data, 'x'));
  };
  expect_format_error(two("[0,8]", "[4,12]", 12),
                      {"tensors \"a\" [0, 8] and \"b\" [4, 12] overlap"}, "overlap");
  expect_format_error(two("[0,8]", "[0,8]", 8), {"\"a\" [0, 8] and \"b\" [0, 8] overlap"},
                      "same bytes");
  expect_format_error(
      two("[0,8]", "[12,20]", 20),
      {"no tensor covers data bytes [8, 12) between tensors \"a\" [0, 8] and \"b\" [12, 20]"},
      "gap");
  expect_format_error(two("[4,12]", "[12,20]", 20),
                      {"no tensor covers data bytes [0, 4) before tensor \"a\" [4, 12]"},
                      "gap at start");
  expect_format_error(two("[0,8]", "[8,16]", 24),
                      {"no tensor covers data bytes [16, 24) after tensor \"b\" [8, 16]"},
                      "trailing bytes");
  expect_format_error(st_bytes("{}", "abc"), {"no tensor covers data bytes [0, 3)"},
                      "data, no tensors");
  // An empty tensor inside another tensor's bytes overlaps it too.
  expect_format_error(st_bytes("{\"a\":{" + u8x8 +
                                   "[0,8]},\"e\":{\"dtype\":\"U8\",\"shape\":[0],"
                                   "\"data_offsets\":[4,4]}}",
                               std::string(8, 'x')),
                      {"\"a\" [0, 8] and \"e\" [4, 4] overlap"}, "empty inside");
  expect_format_error(
      st_bytes("{\"w\":{" + u8x8 + "[0,8]},\"w\":{" + u8x8 + "[8,16]}}", std::string(16, 'x')),
      {"duplicate tensor name \"w\""}, "duplicate tensor");
}

TEST_F(SafetensorsTest, MetadataErrors) {
  expect_format_error(st_bytes(R"({"__metadata__":["a"]})"),
                      {"__metadata__: expected an object of strings, found an array"}, "array");
  expect_format_error(st_bytes(R"({"__metadata__":null})"), {"__metadata__: expected an object"},
                      "null");
  expect_format_error(st_bytes(R"({"__metadata__":{"step":12}})"),
                      {"__metadata__: \"step\": expected a string, found an integer 12"},
                      "int value");
  expect_format_error(st_bytes(R"({"__metadata__":{"a":{"b":"c"}}})"),
                      {"__metadata__: \"a\": expected a string, found an object"}, "nested");
  expect_format_error(st_bytes(R"({"__metadata__":{"k":"1","k":"2"}})"),
                      {"__metadata__: duplicate key \"k\""}, "duplicate key");
  expect_format_error(st_bytes(R"({"__metadata__":{},"__metadata__":{}})"),
                      {"duplicate \"__metadata__\""}, "duplicate metadata");
}

TEST_F(SafetensorsTest, MissingTensorAndUnreadablePaths) {
  const std::string path = dir_ + "/one.safetensors";
  write_safetensors(path, {{"w", Tensor(DType::kF32, {1})}});
  const SafetensorsFile st = SafetensorsFile::open(path);
  try {
    st.get("v");
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": no tensor \"v\"");
  }
  const std::string missing = dir_ + "/missing.safetensors";
  try {
    SafetensorsFile::open(missing);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(missing + ": cannot open: ", 0), 0u) << e.what();
  }
  EXPECT_THROW(SafetensorsFile::open(dir_), IoError);
  ASSERT_EQ(::mkfifo((dir_ + "/fifo").c_str(), 0600), 0);
  EXPECT_THROW(SafetensorsFile::open(dir_ + "/fifo"), IoError);  // refused, does not hang
}

// A small valid file with several dtypes, an empty tensor, a scalar and metadata.
Named small_tensors() {
  return {{"a", patterned(DType::kF32, {2, 3}, 1)},   {"empty", patterned(DType::kI64, {0, 4}, 2)},
          {"b16", patterned(DType::kBF16, {5}, 3)},   {"s", patterned(DType::kF64, {}, 4)},
          {"flags", patterned(DType::kBool, {3}, 5)}, {"i", patterned(DType::kI32, {2, 1}, 6)}};
}

TEST_F(SafetensorsTest, TruncationAtEveryLengthIsAFormatError) {
  const std::string path = dir_ + "/small.safetensors";
  write_safetensors(path, small_tensors(), {{"k", "v"}});
  const std::string whole = read_file(path);
  ASSERT_NO_THROW(SafetensorsFile::open(path));
  for (size_t len = 0; len < whole.size(); ++len) {
    const std::string cut = put("cut.safetensors", whole.substr(0, len));
    EXPECT_THROW(SafetensorsFile::open(cut), FormatError) << "length " << len;
  }
}

// Opens `path`; when it succeeds, checks that the tensors tile the data area of `bytes` exactly
// (in names() order, which is offset order) and that every byte is readable. Returns whether
// it opened; anything thrown other than engram::Error fails the test.
bool open_consistently(const std::string& path, const std::string& bytes) {
  try {
    const SafetensorsFile st = SafetensorsFile::open(path);
    const uint64_t n = read_u64_le(bytes);
    std::string tiled;
    for (const std::string& name : st.names()) {
      const Tensor t = st.get(name);
      EXPECT_TRUE(t.is_contiguous());
      EXPECT_TRUE(t.nbytes() == 0 || !t.empty());
      tiled.append(static_cast<const char*>(t.raw()), t.nbytes());
    }
    EXPECT_EQ(tiled, bytes.substr(8 + n)) << path;
    return true;
  } catch (const Error& e) {
    if (std::getenv("ENGRAM_FUZZ_VERBOSE")) std::printf("%s\n", e.what());
    return false;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "non-engram exception: " << e.what();
    return false;
  }
}

TEST_F(SafetensorsTest, FuzzedFilesOpenConsistentlyOrThrowEngramErrors) {
  const std::string path = dir_ + "/seed.safetensors";
  write_safetensors(path, small_tensors(), {{"k", "v"}});
  const std::string seed = read_file(path);
  const uint64_t header_size = read_u64_le(seed);
  const std::string header = seed.substr(8, header_size);
  const std::string data = seed.substr(8 + header_size);
  const std::string interesting = "{}[]\",:0123456789-.eE \\u";

  // ENGRAM_FUZZ_ITERATIONS runs longer by hand (the seed is fixed either way).
  const char* env = std::getenv("ENGRAM_FUZZ_ITERATIONS");
  const int iterations = env != nullptr ? std::atoi(env) : 6000;
  std::mt19937_64 rng(20240917);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  int opened = 0, refused = 0;
  for (int iter = 0; iter < iterations; ++iter) {
    std::string bytes;
    const int mode = iter % 4;
    if (mode == 0) {
      // Raw mutations anywhere, the length prefix included.
      bytes = seed;
      for (size_t k = 0, m = 1 + pick(4); k < m; ++k) {
        const size_t at = pick(bytes.size());
        if (rng() % 2 == 0) {
          bytes[at] = static_cast<char>(bytes[at] ^ (1 << pick(8)));
        } else {
          bytes[at] = static_cast<char>(rng() & 0xff);
        }
      }
    } else {
      // Header mutations with the length prefix kept right, so the JSON is what gets tested.
      std::string h = header;
      for (size_t k = 0, m = 1 + pick(3); k < m; ++k) {
        if (mode == 3 && rng() % 2 == 0) {
          // Move one tensor's bytes, size kept: reaches the overlap and gap checks.
          std::vector<size_t> at;
          for (size_t p = h.find("\"data_offsets\":["); p != std::string::npos;
               p = h.find("\"data_offsets\":[", p + 1)) {
            at.push_back(p + 16);
          }
          if (at.empty()) break;
          const size_t open = at[pick(at.size())];
          const size_t close = h.find(']', open);
          if (close == std::string::npos) break;
          char* end = nullptr;
          const uint64_t b = std::strtoull(h.c_str() + open, &end, 10);
          const uint64_t e = std::strtoull(end + 1, nullptr, 10);
          const uint64_t shift = pick(17);
          const bool down = rng() % 2 == 0 && b >= shift;
          h.replace(open, close - open,
                    std::to_string(down ? b - shift : b + shift) + "," +
                        std::to_string(down ? e - shift : e + shift));
          continue;
        }
        if (mode == 3) {
          // Rewrite one number (a dimension or an offset): reaches the layout checks.
          std::vector<std::pair<size_t, size_t>> numbers;  // (position, length)
          for (size_t i = 0; i < h.size(); ++i) {
            if (std::isdigit(static_cast<unsigned char>(h[i])) &&
                (i == 0 || !std::isdigit(static_cast<unsigned char>(h[i - 1])))) {
              size_t j = i;
              while (j < h.size() && std::isdigit(static_cast<unsigned char>(h[j]))) ++j;
              numbers.emplace_back(i, j - i);
            }
          }
          if (numbers.empty()) break;
          const auto [at, len] = numbers[pick(numbers.size())];
          const uint64_t old = std::strtoull(h.substr(at, len).c_str(), nullptr, 10);
          const uint64_t choices[] = {
              0,       1,        old + 1,           old - 1,           old + 8,
              old * 2, pick(80), uint64_t{1} << 32, uint64_t{1} << 62, ~uint64_t{0}};
          h.replace(at, len, std::to_string(choices[pick(std::size(choices))]));
          continue;
        }
        const size_t at = pick(h.size());
        switch (pick(5)) {
          case 0:
            h[at] = interesting[pick(interesting.size())];
            break;
          case 1:
            h.insert(at, 1, interesting[pick(interesting.size())]);
            break;
          case 2:
            h.erase(at, 1 + pick(4));
            break;
          case 3:
            h[at] = static_cast<char>('0' + pick(10));
            break;
          default: {  // copy a slice elsewhere: duplicates keys and entries
            const size_t len = 1 + pick(40);
            const std::string slice = h.substr(pick(h.size()), len);
            h.insert(pick(h.size()), slice);
          }
        }
      }
      bytes = u64_le(h.size()) + h + data.substr(0, data.size() - (iter % 7 == 0 ? pick(4) : 0));
    }
    const std::string file = put("fuzz.safetensors", bytes);
    if (open_consistently(file, bytes)) {
      ++opened;
    } else {
      ++refused;
    }
    if (HasFailure()) {
      ADD_FAILURE() << "iteration " << iter;
      break;
    }
  }
  // Both outcomes occur, so the fuzz reaches past the first checks.
  EXPECT_GT(opened, iterations / 60);
  EXPECT_GT(refused, iterations / 2);
  std::printf("fuzz: %d opened, %d refused\n", opened, refused);
}

// ---- Writing -----------------------------------------------------------------------------------

TEST_F(SafetensorsTest, BadNamesAreRejectedBeforeAnythingIsWritten) {
  const std::string path = dir_ + "/out.safetensors";
  write_safetensors(path, {{"old", Tensor(DType::kU8, {2})}});
  const std::string old_bytes = read_file(path);
  const Tensor t(DType::kF32, {2});
  struct Case {
    Named tensors;
    std::map<std::string, std::string> metadata;
    std::string words;
  };
  const std::vector<Case> cases = {
      {{{"", t}}, {}, "tensor #0 has an empty name"},
      {{{"a", t}, {"b", t}, {"a", t}}, {}, "duplicate tensor name \"a\""},
      {{{"__metadata__", t}}, {}, "\"__metadata__\" is reserved"},
      {{{"bad\xff", t}}, {}, "is not valid UTF-8"},
      {{{"w", t}}, {{"k", "\xc3"}}, "metadata value of \"k\" is not valid UTF-8"},
      {{{"w", t}}, {{"\xe2\x82", "v"}}, "is not valid UTF-8"},
      {{{"w", Tensor()}}, {}, "tensor \"w\" has no data"},
  };
  for (const Case& c : cases) {
    try {
      write_safetensors(path, c.tensors, c.metadata);
      ADD_FAILURE() << "expected an error: " << c.words;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(path + ": ", 0), 0u) << what;
      EXPECT_NE(what.find(c.words), std::string::npos) << what;
    }
    EXPECT_EQ(read_file(path), old_bytes);
    EXPECT_EQ(entries(), (std::vector<std::string>{"out.safetensors"}));
  }
}

TEST_F(SafetensorsTest, FailedWritesLeaveTheOldFileAndNoTemporaryFiles) {
  const Named tensors = {{"w", patterned(DType::kF32, {256, 1024}, 9)}};  // 1 MiB

  // The target directory is missing.
  const std::string nowhere = dir_ + "/missing/out.safetensors";
  try {
    write_safetensors(nowhere, tensors);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(nowhere + ": cannot create temporary file: ", 0), 0u)
        << e.what();
  }
  EXPECT_TRUE(entries().empty());

  // The target is a directory: the rename fails, the temporary file goes.
  const std::string as_dir = dir_ + "/taken";
  ASSERT_EQ(::mkdir(as_dir.c_str(), 0755), 0);
  try {
    write_safetensors(as_dir, tensors);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("rename failed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(entries(), (std::vector<std::string>{"taken"}));

  // The disk "fills" half-way through the tensor bytes (a file size limit makes write(2) fail
  // with EFBIG): the old file stays as it was.
  const std::string path = dir_ + "/model.safetensors";
  write_safetensors(path, {{"old", patterned(DType::kU8, {100}, 1)}});
  const std::string old_bytes = read_file(path);
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = saved;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  bool threw = false;
  std::string message;
  try {
    write_safetensors(path, tensors);
  } catch (const IoError& e) {
    threw = true;
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_NE(message.find("write failed"), std::string::npos) << message;
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(entries(), (std::vector<std::string>{"model.safetensors", "taken"}));

  // And then a write that succeeds leaves only the target.
  write_safetensors(path, tensors);
  EXPECT_EQ(SafetensorsFile::open(path).get("w").nbytes(), size_t{1} << 20);
  EXPECT_EQ(entries(), (std::vector<std::string>{"model.safetensors", "taken"}));
}

// ---- The streaming atomic writer underneath --------------------------------------------------

TEST_F(SafetensorsTest, AtomicFileWriterCommitsPiecesOrNothing) {
  const std::string path = dir_ + "/pieces.bin";
  std::string expected;
  {
    AtomicFileWriter out(path);
    EXPECT_EQ(out.temp_path().rfind(path + ".tmp.", 0), 0u);
    // Small pieces are buffered, large ones bypass the buffer; order must survive both.
    for (int i = 0; i < 3000; ++i) {
      const std::string piece(static_cast<size_t>(i % 17), static_cast<char>('a' + i % 26));
      out.write(piece);
      expected += piece;
      if (i % 1000 == 999) {
        const std::string big((size_t{3} << 20) + static_cast<size_t>(i), static_cast<char>(i));
        out.write(big);
        expected += big;
      }
    }
    out.write(nullptr, 0);
    EXPECT_EQ(out.size(), expected.size());
    EXPECT_EQ(entries().size(), 1u);  // only the temporary file so far
    out.commit();
    EXPECT_TRUE(out.temp_path().empty());
  }
  EXPECT_EQ(read_file(path), expected);
  EXPECT_EQ(entries(), (std::vector<std::string>{"pieces.bin"}));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);

  // Abandoned (e.g. by an exception) before commit: the temporary file goes, the target stays.
  try {
    AtomicFileWriter out(path);
    out.write(std::string(5 << 20, 'z'));
    throw std::runtime_error("producer failed");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_file(path), expected);
  EXPECT_EQ(entries(), (std::vector<std::string>{"pieces.bin"}));
}

}  // namespace
}  // namespace engram
