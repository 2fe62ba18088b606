// CRC32C (test vectors, hardware == portable), the .engt layout and header bytes, round trips
// of every format and several widths through both tiers (bit for bit equal to
// decode(encode(x))), every kind of damage (truncation, a flipped byte in the header, a data
// block, its padding, the checksum section), rows out of range, the writer's atomicity, and
// `engram table convert|gather` end to end.
#include "engram/memory/engt_file.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "engram/model/safetensors.h"
#include "engram/util/crc32c.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "test_paths.h"
#include "util/json.h"
#include "temp_dir_test.h"
#include "memory/memory_test_util.h"

namespace engram {
namespace {

using memory::EngtFile;
using memory::EngtLayout;
using memory::EngtRowStore;
using memory::EngtTier;
using memory::RowFormat;

constexpr RowFormat kAllFormats[] = {RowFormat::kF32, RowFormat::kBF16, RowFormat::kFP8,
                                     RowFormat::kINT8};

// ---- CRC32C -------------------------------------------------------------------------------

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  EXPECT_EQ(crc32c("a", 1), 0xC1D04330u);
  // RFC 3720 (iSCSI) appendix B.4.
  std::vector<uint8_t> b(32, 0);
  EXPECT_EQ(crc32c(b.data(), 32), 0x8A9136AAu);
  std::fill(b.begin(), b.end(), 0xff);
  EXPECT_EQ(crc32c(b.data(), 32), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) b[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(b.data(), 32), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) b[static_cast<size_t>(i)] = static_cast<uint8_t>(31 - i);
  EXPECT_EQ(crc32c(b.data(), 32), 0x113FDB5Cu);
  EXPECT_EQ(crc32c_extend_portable(0, "123456789", 9), 0xE3069283u);
}

TEST(Crc32c, ExtendIsConcatenation) {
  std::mt19937 rng(1);
  std::vector<uint8_t> buf(5000);
  for (auto& c : buf) c = static_cast<uint8_t>(rng());
  const uint32_t whole = crc32c(buf.data(), buf.size());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{4095}, size_t{5000}}) {
    EXPECT_EQ(crc32c_extend(crc32c(buf.data(), cut), buf.data() + cut, buf.size() - cut), whole);
    EXPECT_EQ(crc32c_extend_portable(crc32c_extend_portable(0, buf.data(), cut), buf.data() + cut,
                                     buf.size() - cut),
              whole);
  }
}

TEST(Crc32c, HardwareMatchesPortableOnRandomBuffers) {
  if (!crc32c_hardware_available()) {
    EXPECT_THROW(crc32c_extend_hardware(0, "x", 1), std::logic_error);
    GTEST_SKIP() << "no SSE4.2 on this CPU: the portable code is the only one";
  }
  std::mt19937 rng(2);
  std::vector<uint8_t> buf(70000);
  for (auto& c : buf) c = static_cast<uint8_t>(rng());
  std::uniform_int_distribution<size_t> start(0, 64), len(0, 65536);
  for (int i = 0; i < 300; ++i) {
    // Misaligned starts and odd lengths exercise the byte-wise head and tail.
    const size_t s = start(rng), n = i < 100 ? static_cast<size_t>(i) : len(rng);
    const uint32_t seed = static_cast<uint32_t>(rng());
    ASSERT_EQ(crc32c_extend_hardware(seed, buf.data() + s, n),
              crc32c_extend_portable(seed, buf.data() + s, n))
        << "start " << s << " length " << n;
  }
}

// ---- Helpers ------------------------------------------------------------------------------

class EngtTest : public test::TempDirTest {};

// decode(encode(values)), the rows every reader must give back bit for bit.
template <class Out>
std::vector<Out> expected_rows(RowFormat f, const std::vector<float>& values, int64_t rows,
                               int64_t width) {
  std::vector<uint8_t> enc(static_cast<size_t>(rows * memory::row_bytes(f, width)));
  memory::encode_rows(f, values.data(), rows, width, enc.data());
  std::vector<Out> out(static_cast<size_t>(rows * width));
  memory::decode_rows(f, enc.data(), rows, width, out.data(), width);
  return out;
}

using memory::test_util::contains;
using memory::test_util::error_of;
using memory::test_util::flip_byte;
using memory::test_util::random_table;

// ---- Layout -------------------------------------------------------------------------------

TEST(EngtLayout, RowsPerBlockAndBlocksPerRow) {
  const EngtLayout fp8 = EngtLayout::make(RowFormat::kFP8, 100, 256);  // 264-byte rows
  EXPECT_EQ(fp8.row_bytes, 264);
  EXPECT_EQ(fp8.rows_per_block, 15);  // 15 · 264 = 3960, 136 bytes of padding
  EXPECT_EQ(fp8.blocks_per_row, 1);
  EXPECT_EQ(fp8.data_blocks, 7);
  EXPECT_EQ(fp8.row_offset(0), 4096);
  EXPECT_EQ(fp8.row_offset(14), 4096 + 14 * 264);
  EXPECT_EQ(fp8.row_offset(15), 2 * 4096);
  EXPECT_EQ(fp8.block_of(31), 2);
  EXPECT_EQ(fp8.checksum_offset, 4096 + 7 * 4096);
  EXPECT_EQ(fp8.file_bytes, fp8.checksum_offset + 4096);

  const EngtLayout exact = EngtLayout::make(RowFormat::kF32, 5, 1024);  // 4096-byte rows
  EXPECT_EQ(exact.rows_per_block, 1);
  EXPECT_EQ(exact.blocks_per_row, 1);
  EXPECT_EQ(exact.data_blocks, 5);

  const EngtLayout wide = EngtLayout::make(RowFormat::kF32, 3, 2048);  // 8192-byte rows
  EXPECT_EQ(wide.rows_per_block, 1);
  EXPECT_EQ(wide.blocks_per_row, 2);
  EXPECT_EQ(wide.data_blocks, 6);
  EXPECT_EQ(wide.block_of(2), 4);
  EXPECT_EQ(wide.row_offset(2), 4096 + 4 * 4096);

  const EngtLayout odd = EngtLayout::make(RowFormat::kF32, 2, 1056);  // 4224 bytes: 2 blocks
  EXPECT_EQ(odd.blocks_per_row, 2);
  EXPECT_EQ(odd.data_blocks, 4);

  const EngtLayout empty = EngtLayout::make(RowFormat::kBF16, 0, 8);
  EXPECT_EQ(empty.data_blocks, 0);
  EXPECT_EQ(empty.file_bytes, 2 * 4096);

  // 1025 blocks: the checksum section (4104 bytes) takes two blocks.
  const EngtLayout many = EngtLayout::make(RowFormat::kF32, 1025, 1024);
  EXPECT_EQ(many.file_bytes, 4096 + 1025 * 4096 + 2 * 4096);

  EXPECT_THROW(EngtLayout::make(RowFormat::kFP8, 10, 48), ConfigError);
  EXPECT_THROW(EngtLayout::make(RowFormat::kF32, -1, 4), ConfigError);
  EXPECT_THROW(EngtLayout::make(RowFormat::kF32, memory::kEngtMaxRows + 1, 4), ConfigError);
}

// ---- Round trips --------------------------------------------------------------------------

TEST_F(EngtTest, RoundTripEveryFormatAndWidthThroughBothTiers) {
  struct Case {
    int64_t rows, width;
  };
  // 32: many rows a block; 96 and 256 leave padding; 1024 · f32 fills a block exactly; 2048 ·
  // f32 takes two blocks a row; 1056 · f32 takes two, mostly padding.
  const Case cases[] = {{37, 32}, {50, 96}, {31, 256}, {9, 1024}, {5, 2048}, {4, 1056}, {1, 32}};
  for (RowFormat f : kAllFormats) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(memory::format_name(f)) + " width " + std::to_string(c.width));
      const std::vector<float> values =
          random_table(c.rows, c.width, static_cast<unsigned>(c.width + 7 * c.rows));
      const std::string path = dir_ + "/t.engt";
      memory::write_engt(path, f, values.data(), c.rows, c.width, "engram.table");
      const std::vector<float> want = expected_rows<float>(f, values, c.rows, c.width);
      const std::vector<double> want_d = expected_rows<double>(f, values, c.rows, c.width);

      const EngtFile file = EngtFile::open(path);
      EXPECT_EQ(file.format(), f);
      EXPECT_EQ(file.rows(), c.rows);
      EXPECT_EQ(file.width(), c.width);
      EXPECT_EQ(file.name(), "engram.table");
      EXPECT_EQ(static_cast<int64_t>(read_file(path).size()), file.layout().file_bytes);
      EXPECT_EQ(file.layout().file_bytes % 4096, 0);
      file.verify_all();

      // Every row, in reverse order with a repeat, through the file and both stores.
      std::vector<int64_t> ids;
      for (int64_t r = c.rows - 1; r >= 0; --r) ids.push_back(r);
      ids.push_back(0);
      const int64_t stride = c.width + 3;
      for (EngtTier tier : {EngtTier::kFile, EngtTier::kHost}) {
        const EngtRowStore store(path, tier);
        const memory::RowStore& rs = store;
        EXPECT_EQ(rs.num_rows(), c.rows);
        EXPECT_EQ(rs.width(), c.width);
        std::vector<float> got(ids.size() * static_cast<size_t>(stride), -1.0f);
        std::vector<double> got_d(ids.size() * static_cast<size_t>(stride), -1.0);
        rs.gather(ids, got.data(), stride);
        rs.gather(ids, got_d.data(), stride);
        for (size_t i = 0; i < ids.size(); ++i) {
          const size_t src = static_cast<size_t>(ids[i] * c.width);
          const size_t dst = i * static_cast<size_t>(stride);
          ASSERT_EQ(
              std::memcmp(got.data() + dst, want.data() + src, static_cast<size_t>(c.width) * 4), 0)
              << memory::tier_name(tier) << " row " << ids[i];
          ASSERT_EQ(std::memcmp(got_d.data() + dst, want_d.data() + src,
                                static_cast<size_t>(c.width) * 8),
                    0)
              << memory::tier_name(tier) << " row " << ids[i];
          EXPECT_EQ(got[dst + static_cast<size_t>(c.width)], -1.0f);  // the stride gap
        }
      }
      // The encoded rows are exactly encode_rows' bytes.
      const int64_t rb = file.row_bytes();
      std::vector<uint8_t> enc(static_cast<size_t>(c.rows * rb)), raw(enc.size());
      memory::encode_rows(f, values.data(), c.rows, c.width, enc.data());
      std::vector<int64_t> all(static_cast<size_t>(c.rows));
      for (int64_t r = 0; r < c.rows; ++r) all[static_cast<size_t>(r)] = r;
      file.read_encoded_rows(all, raw.data());
      EXPECT_EQ(raw, enc);
      // ...at the offsets row_offset gives.
      const std::string bytes = read_file(path);
      for (int64_t r = 0; r < c.rows; ++r) {
        ASSERT_EQ(std::memcmp(bytes.data() + file.row_offset(r), enc.data() + r * rb,
                              static_cast<size_t>(rb)),
                  0)
            << "row " << r;
      }
    }
  }
}

TEST_F(EngtTest, HeaderBytesFollowTheDocumentedLayout) {
  const std::vector<float> values = random_table(40, 256, 3);
  const std::string path = dir_ + "/h.engt";
  memory::write_engt(path, RowFormat::kFP8, values.data(), 40, 256, "layers.1.engram.table");
  const std::string b = read_file(path);
  auto u32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, b.data() + at, 4);
    return v;
  };
  auto u64 = [&](size_t at) {
    uint64_t v;
    std::memcpy(&v, b.data() + at, 8);
    return v;
  };
  EXPECT_EQ(b.substr(0, 4), "ENGT");
  EXPECT_EQ(u32(4), 1u);      // version
  EXPECT_EQ(u32(8), 2u);      // format: fp8
  EXPECT_EQ(u32(12), 4096u);  // block bytes
  EXPECT_EQ(u64(16), 40u);    // rows
  EXPECT_EQ(u64(24), 256u);   // width
  EXPECT_EQ(u64(32), 264u);   // row bytes
  EXPECT_EQ(u64(40), 15u);    // rows per block
  EXPECT_EQ(u64(48), 1u);     // blocks per row
  EXPECT_EQ(u64(56), 4096u);  // data offset
  EXPECT_EQ(u64(64), 3u);     // data blocks
  EXPECT_EQ(u64(72), 4096u + 3 * 4096);
  EXPECT_EQ(u64(80), b.size());
  EXPECT_EQ(u32(88), 21u);
  EXPECT_EQ(b.substr(92, 21), "layers.1.engram.table");
  EXPECT_EQ(u32(4092), crc32c(b.data(), 4092));
  for (size_t i = 92 + 21; i < 4092; ++i) ASSERT_EQ(b[i], '\0') << i;
  // The checksum section: one CRC per block, then their CRC, then zeros.
  const size_t cs = u64(72);
  for (size_t blk = 0; blk < 3; ++blk)
    EXPECT_EQ(u32(cs + 4 * blk), crc32c(b.data() + 4096 + 4096 * blk, 4096)) << blk;
  EXPECT_EQ(u32(cs + 12), crc32c(b.data() + cs, 12));
  for (size_t i = cs + 16; i < b.size(); ++i) ASSERT_EQ(b[i], '\0') << i;
  // The padding after the 15 rows of a block is zero.
  for (size_t i = 4096 + 15 * 264; i < 2 * 4096; ++i) ASSERT_EQ(b[i], '\0') << i;
}

TEST_F(EngtTest, EmptyTableAndDirectIo) {
  const std::string empty = dir_ + "/empty.engt";
  memory::write_engt(empty, RowFormat::kBF16, nullptr, 0, 64);
  const EngtFile f = EngtFile::open(empty);
  EXPECT_EQ(f.rows(), 0);
  f.verify_all();
  EXPECT_EQ(EngtRowStore(empty, EngtTier::kHost).num_rows(), 0);
  std::vector<float> none;
  f.read_rows({}, none.data(), 64);

  // O_DIRECT where the file system allows it (not on tmpfs): the same rows either way.
  const std::vector<float> values = random_table(100, 256, 8);
  const std::string path = dir_ + "/d.engt";
  memory::write_engt(path, RowFormat::kINT8, values.data(), 100, 256);
  const EngtRowStore direct(path, EngtTier::kFile, {.direct_io = true});
  std::vector<float> got(3 * 256);
  const int64_t ids[] = {99, 0, 50};
  direct.gather(ids, got.data(), 256);
  const std::vector<float> want = expected_rows<float>(RowFormat::kINT8, values, 100, 256);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(std::memcmp(got.data() + 256 * i, want.data() + ids[i] * 256, 1024), 0);
  }
}

TEST_F(EngtTest, StreamingWriterAsksForRowsInOrderInBoundedBatches) {
  const int64_t rows = 5000, width = 256;  // f32: 5 MB of rows, several batches
  const std::vector<float> values = random_table(rows, width, 4);
  int64_t next = 0, largest = 0, calls = 0;
  const std::string path = dir_ + "/s.engt";
  memory::write_engt(
      path, RowFormat::kF32, rows, width, [&](int64_t first, int64_t count, float* out) {
        EXPECT_EQ(first, next);
        next += count;
        largest = std::max(largest, count);
        ++calls;
        std::memcpy(out, values.data() + first * width, static_cast<size_t>(count * width) * 4);
      });
  EXPECT_EQ(next, rows);
  EXPECT_GT(calls, 3);
  EXPECT_LE(largest * width * 4, int64_t{1} << 20);
  // A read spanning more than one pread's worth of blocks.
  std::vector<int64_t> ids(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) ids[static_cast<size_t>(r)] = (r * 7919) % rows;
  std::vector<float> got(values.size());
  EngtFile::open(path).read_rows(ids, got.data(), width);
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_EQ(std::memcmp(got.data() + i * width, values.data() + ids[i] * width, width * 4), 0)
        << ids[i];
  }
}

// ---- Damage -------------------------------------------------------------------------------

TEST_F(EngtTest, TruncatedFileNamesExpectedAndActualSize) {
  const std::vector<float> values = random_table(40, 96, 5);
  const std::string path = dir_ + "/t.engt";
  memory::write_engt(path, RowFormat::kBF16, values.data(), 40, 96);
  const std::string whole = read_file(path);
  for (size_t keep : {size_t{0}, size_t{100}, size_t{4095}, size_t{4096}, size_t{8000},
                      whole.size() - 4096, whole.size() - 1}) {
    write_file_atomic(path, whole.substr(0, keep));
    const std::string msg = error_of([&] { EngtFile::open(path); });
    EXPECT_TRUE(contains(msg, path)) << msg;
    EXPECT_TRUE(contains(msg, "truncated")) << msg;
    EXPECT_TRUE(contains(msg, std::to_string(keep))) << msg;
    if (keep >= 4096) {
      EXPECT_TRUE(contains(msg, std::to_string(whole.size()))) << msg;
    }
    EXPECT_THROW(EngtFile::open(path), FormatError);
  }
  write_file_atomic(path, whole + std::string(4096, '\0'));
  EXPECT_TRUE(contains(error_of([&] { EngtFile::open(path); }), "size mismatch"));
}

TEST_F(EngtTest, CorruptDataBlockFailsItsRowsOnly) {
  const int64_t rows = 60, width = 256;  // fp8: 15 rows a block, blocks 0..3
  const std::vector<float> values = random_table(rows, width, 6);
  const std::string path = dir_ + "/c.engt";
  memory::write_engt(path, RowFormat::kFP8, values.data(), rows, width);
  const std::vector<float> want = expected_rows<float>(RowFormat::kFP8, values, rows, width);
  flip_byte(path, EngtLayout::make(RowFormat::kFP8, rows, width).row_offset(20) + 7);

  const EngtFile file = EngtFile::open(path);  // open does not read the data
  EngtRowStore file_tier(path, EngtTier::kFile);
  std::vector<float> got(2 * width);
  for (int64_t r : {15, 20, 29}) {
    const int64_t ids[] = {0, r};
    const std::string msg = error_of([&] { file_tier.gather(ids, got.data(), width); });
    EXPECT_TRUE(contains(msg, path)) << msg;
    EXPECT_TRUE(contains(msg, "data block 1 (rows 15..29)")) << msg;
    EXPECT_TRUE(contains(msg, "checksum mismatch")) << msg;
    EXPECT_THROW(file.read_rows(ids, got.data(), width), FormatError);
  }
  // Rows of the other blocks still read, correctly.
  const int64_t good[] = {0, 14, 30, 59};
  std::vector<float> four(4 * width);
  file_tier.gather(good, four.data(), width);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(std::memcmp(four.data() + i * width, want.data() + good[i] * width, width * 4), 0);
  for (int64_t r : good) {
    const int64_t one[] = {r};
    file_tier.gather(one, got.data(), width);
    EXPECT_EQ(std::memcmp(got.data(), want.data() + r * width, width * 4), 0) << r;
  }
  EXPECT_THROW(file.verify_all(), FormatError);
  const std::string msg = error_of([&] { EngtRowStore(path, EngtTier::kHost); });
  EXPECT_TRUE(contains(msg, "data block 1")) << msg;
}

TEST_F(EngtTest, CorruptPaddingOrWideRowBlockIsCaught) {
  // The zero padding after a block's rows is covered by the block's checksum too.
  const std::vector<float> values = random_table(20, 256, 7);
  const std::string path = dir_ + "/p.engt";
  memory::write_engt(path, RowFormat::kFP8, values.data(), 20, 256);
  flip_byte(path, 4096 + 4000);
  std::vector<float> got(256);
  const int64_t row3[] = {3}, row17[] = {17};
  EXPECT_THROW(EngtFile::open(path).read_rows(row3, got.data(), 256), FormatError);
  EngtFile::open(path).read_rows(row17, got.data(), 256);

  // A row of two blocks: damage in its second block fails that row.
  const std::vector<float> wide = random_table(3, 2048, 8);
  memory::write_engt(path, RowFormat::kF32, wide.data(), 3, 2048);
  flip_byte(path, 4096 + 3 * 4096 + 10);  // row 1, second block (block 3)
  std::vector<float> w(2048);
  const int64_t r1[] = {1}, r0[] = {0}, r2[] = {2};
  const std::string msg = error_of([&] { EngtFile::open(path).read_rows(r1, w.data(), 2048); });
  EXPECT_TRUE(contains(msg, "data block 3 (row 1)")) << msg;
  EngtFile::open(path).read_rows(r0, w.data(), 2048);
  EngtFile::open(path).read_rows(r2, w.data(), 2048);
}

TEST_F(EngtTest, CorruptHeaderOrChecksumSectionFailsOpen) {
  const std::vector<float> values = random_table(40, 64, 9);
  const std::string path = dir_ + "/h.engt";
  const auto layout = EngtLayout::make(RowFormat::kINT8, 40, 64);
  auto fresh = [&] { memory::write_engt(path, RowFormat::kINT8, values.data(), 40, 64, "t"); };
  struct Damage {
    int64_t offset;
    const char* says;
  };
  const Damage cases[] = {
      {0, "magic"},
      {3, "not an .engt table file"},
      {4, "version"},
      {17, "header: checksum mismatch"},    // rows
      {92, "header: checksum mismatch"},    // name
      {2000, "header: checksum mismatch"},  // reserved
      {4093, "header: checksum mismatch"},  // the CRC itself
      {layout.checksum_offset + 1, "checksum section: checksum mismatch"},
      {layout.checksum_offset + 4 * layout.data_blocks, "checksum section: checksum mismatch"},
      {layout.checksum_offset + 4 * layout.data_blocks + 4, "checksum section: padding"},
      {layout.file_bytes - 1, "checksum section: padding"},
  };
  for (const Damage& d : cases) {
    fresh();
    flip_byte(path, d.offset);
    const std::string msg = error_of([&] { EngtFile::open(path); });
    EXPECT_TRUE(contains(msg, path)) << msg;
    EXPECT_TRUE(contains(msg, d.says)) << "offset " << d.offset << ": " << msg;
    EXPECT_THROW(EngtFile::open(path), FormatError);
    EXPECT_THROW(EngtRowStore(path, EngtTier::kFile), FormatError);
  }
  // Not an .engt file at all.
  write_file_atomic(path, std::string(8192, 'x'));
  EXPECT_TRUE(contains(error_of([&] { EngtFile::open(path); }), "\"xxxx\""));
  EXPECT_THROW(EngtFile::open(dir_ + "/missing.engt"), IoError);
  EXPECT_THROW(EngtFile::open(dir_), IoError);
}

TEST_F(EngtTest, RowsOutOfRangeAreInputErrorsNamingTheRow) {
  const std::vector<float> values = random_table(10, 32, 10);
  const std::string path = dir_ + "/r.engt";
  memory::write_engt(path, RowFormat::kF32, values.data(), 10, 32);
  std::vector<float> got(2 * 32);
  for (EngtTier tier : {EngtTier::kFile, EngtTier::kHost}) {
    const EngtRowStore store(path, tier);
    for (int64_t bad : {int64_t{10}, int64_t{-1}, int64_t{1} << 50}) {
      const int64_t ids[] = {3, bad};
      EXPECT_THROW(store.gather(ids, got.data(), 32), InputError);
      const std::string msg = error_of([&] { store.gather(ids, got.data(), 32); });
      EXPECT_TRUE(contains(msg, "row " + std::to_string(bad) + " is out of range [0, 10)")) << msg;
      EXPECT_TRUE(contains(msg, path)) << msg;
    }
  }
}

// ---- Writer atomicity ---------------------------------------------------------------------

TEST_F(EngtTest, BadInputLeavesNoFile) {
  const std::vector<float> values = random_table(10, 64, 11);
  const std::string path = dir_ + "/w.engt";
  EXPECT_THROW(memory::write_engt(path, RowFormat::kFP8, values.data(), 20, 20), ConfigError);
  EXPECT_THROW(memory::write_engt(path, RowFormat::kF32, values.data(), -1, 64), ConfigError);
  EXPECT_THROW(
      memory::write_engt(path, RowFormat::kF32, values.data(), 10, 64, std::string(256, 'n')),
      InputError);
  EXPECT_THROW(
      memory::write_engt(path, RowFormat::kF32, values.data(), 10, 64, std::string("a\0b", 3)),
      InputError);
  EXPECT_EQ(entries(), std::vector<std::string>{});

  // A source that fails half-way: no file, no temporary file.
  auto failing = [&](int64_t first, int64_t count, float* out) {
    if (first + count > 3000) throw InputError("source: row 3000 is bad");
    std::fill(out, out + count * 256, 1.0f);
  };
  EXPECT_THROW(memory::write_engt(path, RowFormat::kF32, 5000, 256, failing), InputError);
  EXPECT_EQ(entries(), std::vector<std::string>{});

  // ...and an existing file is left as it was.
  memory::write_engt(path, RowFormat::kF32, values.data(), 10, 64, "old");
  const std::string old = read_file(path);
  EXPECT_THROW(memory::write_engt(path, RowFormat::kF32, 5000, 256, failing), InputError);
  EXPECT_EQ(read_file(path), old);
  EXPECT_EQ(entries(), std::vector<std::string>{"w.engt"});
  // A directory that does not exist is an IoError naming the path.
  const std::string nowhere = dir_ + "/no/such/dir/t.engt";
  EXPECT_TRUE(contains(
      error_of([&] { memory::write_engt(nowhere, RowFormat::kF32, values.data(), 10, 64); }),
      nowhere));
}

TEST_F(EngtTest, WriteReplacesAnExistingFileAtomically) {
  const std::string path = dir_ + "/a.engt";
  const std::vector<float> a = random_table(10, 64, 12), b = random_table(70, 32, 13);
  memory::write_engt(path, RowFormat::kF32, a.data(), 10, 64, "a");
  const EngtFile before = EngtFile::open(path);  // an open reader keeps the old file
  memory::write_engt(path, RowFormat::kINT8, b.data(), 70, 32, "b");
  const EngtFile after = EngtFile::open(path);
  EXPECT_EQ(after.name(), "b");
  EXPECT_EQ(after.rows(), 70);
  EXPECT_EQ(after.format(), RowFormat::kINT8);
  after.verify_all();
  before.verify_all();
  std::vector<float> row(64);
  const int64_t nine[] = {9};
  before.read_rows(nine, row.data(), 64);
  EXPECT_EQ(std::memcmp(row.data(), a.data() + 9 * 64, 256), 0);
  EXPECT_EQ(entries(), std::vector<std::string>{"a.engt"});
}

// ---- engram table convert | gather --------------------------------------------------------

struct CliResult {
  int status;
  std::string out, err;
};

class EngtCliTest : public EngtTest {
 protected:
  CliResult run(const std::string& args) {
    const std::string cli =
        test::require_path(test::cli_path(), "build the engram_cli target first");
    const std::string out = dir_ + "/stdout.txt", err = dir_ + "/stderr.txt";
    const std::string cmd = cli + " table " + args + " >" + out + " 2>" + err;
    const int rc = std::system(cmd.c_str());
    CliResult r{WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_file(out), read_file(err)};
    ::unlink(out.c_str());
    ::unlink(err.c_str());
    return r;
  }
  // A safetensors file with a (rows, width) F32 table, a BF16 and an F64 copy, a 1-D bias and
  // an I32 table.
  std::string write_input(int64_t rows, int64_t width) {
    values_ = random_table(rows, width, 21);
    Tensor t(DType::kF32, {rows, width});
    std::memcpy(t.data<float>(), values_.data(), values_.size() * 4);
    const std::string path = dir_ + "/in.safetensors";
    write_safetensors(path, {{"engram.table", t},
                             {"engram.table_bf16", t.to(DType::kBF16)},
                             {"engram.table_f64", t.to(DType::kF64)},
                             {"bias", Tensor(DType::kF32, {width})},
                             {"ids", Tensor(DType::kI32, {2, 3})}});
    return path;
  }
  std::vector<float> values_;
};

// The gather output, parsed with strtof so each value reads back exactly.
std::vector<std::vector<float>> parse_rows(const std::string& text) {
  std::vector<std::vector<float>> rows;
  size_t i = 0;
  EXPECT_EQ(text.substr(0, 2), text.size() > 2 && text[1] == ']' ? "[]" : "[[");
  while (i < text.size()) {
    if (text[i] == '[' && i > 0) rows.emplace_back();
    if (text[i] == '-' || std::isdigit(static_cast<unsigned char>(text[i]))) {
      char* end = nullptr;
      rows.back().push_back(std::strtof(text.c_str() + i, &end));
      i = static_cast<size_t>(end - text.c_str());
      continue;
    }
    ++i;
  }
  return rows;
}

TEST_F(EngtCliTest, ConvertAndGatherEveryFormatInBothTiers) {
  const int64_t rows = 40, width = 64;
  const std::string in = write_input(rows, width);
  for (RowFormat f : kAllFormats) {
    const std::string name(memory::format_name(f));
    const std::string out = dir_ + "/" + name + ".engt";
    const CliResult c =
        run("convert --in " + in + " --tensor engram.table --format " + name + " --out " + out);
    ASSERT_EQ(c.status, 0) << c.err;
    const json::Json j = json::parse(c.out, "convert output");
    EXPECT_EQ(j["out"], out);
    EXPECT_EQ(j["format"], name);
    EXPECT_EQ(j["rows"], rows);
    EXPECT_EQ(j["width"], width);
    EXPECT_EQ(j["row_bytes"], memory::row_bytes(f, width));
    EXPECT_EQ(j["bytes"], static_cast<int64_t>(read_file(out).size()));
    // The reported errors are those of decode(encode(x)).
    const std::vector<float> want = expected_rows<float>(f, values_, rows, width);
    double max_err = 0, sq = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const double e = std::fabs(static_cast<double>(want[i]) - values_[i]);
      max_err = std::max(max_err, e);
      sq += e * e;
    }
    EXPECT_DOUBLE_EQ(j["max_abs_error"].get<double>(), max_err) << name;
    EXPECT_NEAR(j["rms_error"].get<double>(), std::sqrt(sq / static_cast<double>(want.size())),
                1e-12)
        << name;
    if (f == RowFormat::kF32) {
      EXPECT_EQ(j["max_abs_error"].get<double>(), 0.0);
    }
    EXPECT_EQ(EngtFile::open(out).name(), "engram.table");

    for (const char* tier : {"host", "file"}) {
      const CliResult g = run("gather --table " + out + " --rows 3,17,39,3 --tier " + tier);
      ASSERT_EQ(g.status, 0) << g.err;
      EXPECT_EQ(g.out.back(), '\n');
      const auto got = parse_rows(g.out);
      const int64_t ids[] = {3, 17, 39, 3};
      ASSERT_EQ(got.size(), 4u) << g.out;
      for (size_t i = 0; i < 4; ++i) {
        ASSERT_EQ(got[i].size(), static_cast<size_t>(width));
        for (int64_t k = 0; k < width; ++k) {
          ASSERT_EQ(got[i][static_cast<size_t>(k)], want[static_cast<size_t>(ids[i] * width + k)])
              << name << " " << tier << " row " << ids[i] << " value " << k;
        }
      }
    }
  }
  // The default tier is the file; other dtypes give the same table.
  const CliResult d = run("gather --table " + dir_ + "/fp8.engt --rows 5");
  ASSERT_EQ(d.status, 0) << d.err;
  for (const char* tensor : {"engram.table_f64", "engram.table_bf16"}) {
    const std::string out = dir_ + "/other.engt";
    const CliResult c =
        run("convert --in " + in + " --tensor " + tensor + " --format bf16 --out " + out);
    ASSERT_EQ(c.status, 0) << c.err;
    const CliResult g = run("gather --table " + out + " --rows 5");
    EXPECT_EQ(g.out, run("gather --table " + dir_ + "/bf16.engt --rows 5").out) << tensor;
  }
}

TEST_F(EngtCliTest, BadArgumentsNameTheValue) {
  const std::string in = write_input(8, 48);
  const std::string out = dir_ + "/x.engt";
  const std::string base = "convert --in " + in + " --out " + out;
  struct Case {
    std::string args;
    int status;
    std::string says;
  };
  const Case cases[] = {
      {base + " --tensor engram.table --format fp16", 2, "\"fp16\""},
      {base + " --tensor nope --format f32", 1, "no tensor \"nope\""},
      {base + " --tensor nope --format f32", 1, "engram.table_bf16 BF16[8, 48]"},
      {base + " --tensor bias --format f32", 1, "got shape [48]"},
      {base + " --tensor ids --format f32", 1, "dtype I32"},
      {base + " --tensor engram.table --format fp8", 1, "width 48 is not a multiple of 32"},
      {base + " --tensor engram.table --format int8", 1, "\"engram.table\""},
      {"convert --in " + dir_ + "/missing.safetensors --tensor t --format f32 --out " + out, 1,
       "missing.safetensors"},
      {"convert --in " + in + " --tensor engram.table --format f32", 2, "--out"},
      {"shuffle --table " + out, 2, "\"shuffle\""},
      {"", 2, "convert or gather"},
  };
  for (const Case& c : cases) {
    const CliResult r = run(c.args);
    EXPECT_EQ(r.status, c.status) << c.args << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, c.says)) << c.args << "\n" << r.err;
  }
  EXPECT_EQ(entries(), std::vector<std::string>{"in.safetensors"});  // nothing written

  ASSERT_EQ(run(base + " --tensor engram.table --format bf16").status, 0);
  const Case gathers[] = {
      {"gather --table " + out + " --rows 3,x", 2, "\"x\""},
      {"gather --table " + out + " --rows 3,,4", 2, "\"\""},
      {"gather --table " + out + " --rows -1", 2, "\"-1\""},
      {"gather --table " + out + " --rows 8", 1, "row 8 is out of range [0, 8)"},
      {"gather --table " + out + " --rows 1 --tier gpu", 2, "\"gpu\""},
      {"gather --table " + dir_ + "/missing.engt --rows 1", 1, "missing.engt"},
      {"gather --table " + in + " --rows 1", 1, "not an .engt table file"},
  };
  for (const Case& c : gathers) {
    const CliResult r = run(c.args);
    EXPECT_EQ(r.status, c.status) << c.args << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, c.says)) << c.args << "\n" << r.err;
  }
}

TEST_F(EngtCliTest, NonFiniteValuesAreRefusedAndNothingIsWritten) {
  Tensor t(DType::kF32, {4, 32});
  t.data<float>()[2 * 32 + 5] = std::numeric_limits<float>::quiet_NaN();
  const std::string in = dir_ + "/nan.safetensors";
  write_safetensors(in, {{"table", t}});
  const CliResult r =
      run("convert --in " + in + " --tensor table --format fp8 --out " + dir_ + "/nan.engt");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "row 2, column 5")) << r.err;
  EXPECT_EQ(entries(), std::vector<std::string>{"nan.safetensors"});
  // F64 values beyond float32's range as well.
  Tensor big(DType::kF64, {2, 32});
  big.data<double>()[40] = 1e300;
  write_safetensors(in, {{"table", big}});
  const CliResult r2 =
      run("convert --in " + in + " --tensor table --format f32 --out " + dir_ + "/big.engt");
  EXPECT_EQ(r2.status, 1);
  EXPECT_TRUE(contains(r2.err, "row 1, column 8")) << r2.err;
  EXPECT_TRUE(contains(r2.err, "does not fit float32")) << r2.err;
  EXPECT_EQ(entries(), std::vector<std::string>{"nan.safetensors"});
}

}  // namespace
}  // namespace engram
