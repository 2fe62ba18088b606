// BlockReader: random aligned reads compared byte for byte with a known file, on both backends
// (io_uring where the kernel allows it, and the pread threads forced), at queue depth 1, 4 and
// 64, with more requests than the queue depth, O_DIRECT and buffered; reads past the end of the
// file, misaligned requests and missing files are errors naming the file and offset.
#include "engram/memory/io_uring_reader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "engram/util/error.h"
#include "temp_dir_test.h"

namespace engram::memory {
namespace {

constexpr int64_t kBlock = 4096;

// The byte at file position p.
uint8_t pattern(int64_t p) {
  uint64_t x = static_cast<uint64_t>(p) * 0x9E3779B97F4A7C15ull;
  return static_cast<uint8_t>(x >> 56);
}

void write_pattern_file(const std::string& path, int64_t bytes) {
  std::vector<uint8_t> data(static_cast<size_t>(bytes));
  for (int64_t p = 0; p < bytes; ++p) data[static_cast<size_t>(p)] = pattern(p);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ::close(fd);
}

struct AlignedBytes {
  explicit AlignedBytes(int64_t bytes)
      : p(static_cast<uint8_t*>(std::aligned_alloc(kBlock, static_cast<size_t>(bytes)))) {}
  ~AlignedBytes() { std::free(p); }
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
  uint8_t* p;
};

// (force_fallback, queue_depth, direct_io)
class BlockReaderTest : public test::TempDirTest,
                        public ::testing::WithParamInterface<std::tuple<bool, int, bool>> {
 protected:
  BlockReaderOptions options() const {
    BlockReaderOptions o;
    o.force_fallback = std::get<0>(GetParam());
    o.queue_depth = std::get<1>(GetParam());
    o.direct_io = std::get<2>(GetParam());
    return o;
  }
};

TEST_P(BlockReaderTest, RandomReadsMatchTheFile) {
  const std::string path = dir_ + "/data.bin";
  const int64_t blocks = 512;
  write_pattern_file(path, blocks * kBlock);
  BlockReader reader(path, options());
  if (std::get<0>(GetParam())) {
    EXPECT_EQ(reader.backend_name(), "pread-threads");
    EXPECT_EQ(reader.fallback_reason(), "forced");
  }
  // 300 reads of 1-4 blocks (more than the queue depth), into one buffer.
  std::mt19937_64 rng(42);
  std::vector<ReadRequest> requests;
  int64_t total_blocks = 0;
  std::vector<int64_t> lengths;
  for (int i = 0; i < 300; ++i) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 4);
    lengths.push_back(n);
    total_blocks += n;
  }
  AlignedBytes buf(total_blocks * kBlock);
  std::memset(buf.p, 0xAB, static_cast<size_t>(total_blocks * kBlock));
  int64_t at = 0;
  for (const int64_t n : lengths) {
    const int64_t block = static_cast<int64_t>(rng() % static_cast<uint64_t>(blocks - n + 1));
    requests.push_back({block * kBlock, n * kBlock, buf.p + at * kBlock});
    at += n;
  }
  reader.read(requests);
  for (const ReadRequest& r : requests) {
    const auto* got = static_cast<const uint8_t*>(r.dest);
    for (int64_t k = 0; k < r.length; ++k) {
      ASSERT_EQ(got[k], pattern(r.offset + k)) << "offset " << r.offset + k;
    }
  }
  const ReadStats s = reader.stats();
  EXPECT_EQ(s.batches, 1);
  EXPECT_EQ(s.requests, 300);
  EXPECT_EQ(s.bytes, total_blocks * kBlock);

  // A second batch on the same ring, and an empty one.
  AlignedBytes one(kBlock);
  const ReadRequest last{(blocks - 1) * kBlock, kBlock, one.p};
  reader.read(std::span<const ReadRequest>(&last, 1));
  EXPECT_EQ(one.p[17], pattern(last.offset + 17));
  reader.read({});
  EXPECT_EQ(reader.stats().requests, 301);
}

TEST_P(BlockReaderTest, ReadPastTheEndIsAnErrorNamingFileAndOffset) {
  const std::string path = dir_ + "/short.bin";
  write_pattern_file(path, 3 * kBlock + 100);  // the last block is partial
  BlockReader reader(path, options());
  AlignedBytes buf(8 * kBlock);
  // Wholly past the end.
  const ReadRequest past{5 * kBlock, kBlock, buf.p};
  try {
    reader.read(std::span<const ReadRequest>(&past, 1));
    FAIL() << "no error";
  } catch (const IoError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find("offset 20480"), std::string::npos) << what;
    EXPECT_NE(what.find("short read"), std::string::npos) << what;
  }
  // Straddling the end, among good reads: the good ones complete, the batch throws.
  std::vector<ReadRequest> batch;
  for (int i = 0; i < 3; ++i) batch.push_back({i * kBlock, kBlock, buf.p + i * kBlock});
  batch.push_back({3 * kBlock, kBlock, buf.p + 3 * kBlock});
  try {
    reader.read(batch);
    FAIL() << "no error";
  } catch (const IoError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("offset 12288"), std::string::npos) << what;
    EXPECT_NE(what.find("after 100 bytes"), std::string::npos) << what;
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(buf.p[i * kBlock + 5], pattern(i * kBlock + 5));
  // The reader is still usable.
  reader.read(std::span<const ReadRequest>(batch.data(), 1));
}

INSTANTIATE_TEST_SUITE_P(Backends, BlockReaderTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1, 4, 64),
                                            ::testing::Bool()),
                         [](const auto& p) {
                           return std::string(std::get<0>(p.param) ? "pread" : "uring") + "_qd" +
                                  std::to_string(std::get<1>(p.param)) +
                                  (std::get<2>(p.param) ? "_direct" : "_buffered");
                         });

class BlockReaderErrors : public test::TempDirTest {};

TEST_F(BlockReaderErrors, ReportsTheBackendInUse) {
  const std::string path = dir_ + "/f.bin";
  write_pattern_file(path, kBlock);
  BlockReader reader(path);
  EXPECT_EQ(reader.queue_depth(), 64);
  if (reader.backend() == ReadBackend::kIoUring) {
    EXPECT_EQ(reader.backend_name(), "io_uring");
    EXPECT_TRUE(reader.fallback_reason().empty());
  } else {
    EXPECT_EQ(reader.backend_name(), "pread-threads");
    EXPECT_FALSE(reader.fallback_reason().empty());
    std::printf("io_uring unavailable here: %s\n", reader.fallback_reason().c_str());
  }
  // /tmp is a disk file system on the machines we test on; tmpfs refuses O_DIRECT.
  std::printf("backend %s, O_DIRECT %s\n", std::string(reader.backend_name()).c_str(),
              reader.direct_io() ? "on" : "refused");
}

TEST_F(BlockReaderErrors, MisalignedRequestsAreRefusedBeforeReading) {
  const std::string path = dir_ + "/f.bin";
  write_pattern_file(path, 4 * kBlock);
  for (const bool fallback : {false, true}) {
    BlockReaderOptions o;
    o.force_fallback = fallback;
    int logged = 0;
    o.on_request = [&](const ReadRequest&) { ++logged; };
    BlockReader reader(path, o);
    AlignedBytes buf(2 * kBlock);
    const ReadRequest bad[] = {
        {100, kBlock, buf.p}, {0, 100, buf.p}, {0, kBlock, buf.p + 8}, {0, 0, buf.p}};
    for (const ReadRequest& r : bad) {
      const ReadRequest pair[] = {{0, kBlock, buf.p}, r};
      EXPECT_THROW(reader.read(pair), InputError);
    }
    EXPECT_EQ(logged, 0);
    EXPECT_EQ(reader.stats().requests, 0);
  }
}

TEST_F(BlockReaderErrors, RequestLogIsInOrder) {
  const std::string path = dir_ + "/f.bin";
  write_pattern_file(path, 8 * kBlock);
  std::vector<int64_t> log;
  BlockReaderOptions o;
  o.on_request = [&](const ReadRequest& r) { log.push_back(r.offset); };
  BlockReader reader(path, o);
  AlignedBytes buf(3 * kBlock);
  const ReadRequest batch[] = {{5 * kBlock, kBlock, buf.p},
                               {kBlock, kBlock, buf.p + kBlock},
                               {0, kBlock, buf.p + 2 * kBlock}};
  reader.read(batch);
  EXPECT_EQ(log, (std::vector<int64_t>{5 * kBlock, kBlock, 0}));
}

TEST_F(BlockReaderErrors, MissingFileAndBadOptions) {
  try {
    BlockReader reader(dir_ + "/missing.bin");
    FAIL() << "opened a missing file";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.bin"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos);
  }
  const std::string path = dir_ + "/f.bin";
  write_pattern_file(path, kBlock);
  BlockReaderOptions o;
  o.queue_depth = 0;
  EXPECT_THROW(BlockReader(path, o), ConfigError);
  o.queue_depth = 5000;
  EXPECT_THROW(BlockReader(path, o), ConfigError);
  o.queue_depth = 8;
  o.fallback_threads = 0;
  EXPECT_THROW(BlockReader(path, o), ConfigError);
}

}  // namespace
}  // namespace engram::memory
