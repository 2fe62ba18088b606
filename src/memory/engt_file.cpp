#include "engram/memory/engt_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "engram/util/crc32c.h"
#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram::memory {
namespace {

static_assert(std::endian::native == std::endian::little, ".engt files are little-endian");

// Header byte offsets (docs/memory_tier.md).
constexpr size_t kMagicAt = 0, kVersionAt = 4, kFormatAt = 8, kBlockBytesAt = 12, kRowsAt = 16,
                 kWidthAt = 24, kRowBytesAt = 32, kRowsPerBlockAt = 40, kBlocksPerRowAt = 48,
                 kDataOffsetAt = 56, kDataBlocksAt = 64, kChecksumOffsetAt = 72, kFileBytesAt = 80,
                 kNameBytesAt = 88, kNameAt = 92, kReservedAt = 348, kHeaderCrcAt = 4092;
constexpr char kMagic[4] = {'E', 'N', 'G', 'T'};
constexpr size_t kBlock = static_cast<size_t>(kEngtBlockBytes);
// Reads and writes of data go in pieces of about this size.
constexpr int64_t kChunkBytes = int64_t{1} << 20;

template <class T>
void put(uint8_t* header, size_t at, T v) {
  std::memcpy(header + at, &v, sizeof v);
}
template <class T>
T get(const uint8_t* header, size_t at) {
  T v;
  std::memcpy(&v, header + at, sizeof v);
  return v;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw ConfigError(error_message(".engt layout", std::string(what) + " overflows"));
  return r;
}

// A buffer aligned for O_DIRECT, a whole number of blocks long.
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t bytes)
      : data(static_cast<uint8_t*>(std::aligned_alloc(kBlock, static_cast<size_t>(bytes)))) {
    if (data == nullptr) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data;
};

std::string rows_of_group(const EngtLayout& l, int64_t group) {
  const int64_t first = group * l.rows_per_block;
  const int64_t last = std::min(l.rows, first + l.rows_per_block) - 1;
  return first == last ? "row " + std::to_string(first)
                       : "rows " + std::to_string(first) + ".." + std::to_string(last);
}

}  // namespace

// ---- Layout -------------------------------------------------------------------------------

EngtLayout EngtLayout::make(RowFormat format, int64_t rows, int64_t width) {
  EngtLayout l;
  l.format = format;
  l.width = width;
  l.row_bytes = memory::row_bytes(format, width);  // checks the width
  if (rows < 0 || rows > kEngtMaxRows) {
    throw ConfigError(error_message(".engt layout",
                                    "rows " + std::to_string(rows) + " is out of range [0, 2^40]"));
  }
  l.rows = rows;
  if (l.row_bytes <= kEngtBlockBytes) {
    l.rows_per_block = kEngtBlockBytes / l.row_bytes;
    l.blocks_per_row = 1;
    l.data_blocks = (rows + l.rows_per_block - 1) / l.rows_per_block;
  } else {
    l.rows_per_block = 1;
    l.blocks_per_row = (l.row_bytes + kEngtBlockBytes - 1) / kEngtBlockBytes;
    l.data_blocks = checked_mul(rows, l.blocks_per_row, "data blocks");
  }
  l.data_offset = kEngtBlockBytes;
  l.checksum_offset =
      l.data_offset + checked_mul(l.data_blocks, kEngtBlockBytes, "data section size");
  const int64_t checksum_bytes = 4 * l.data_blocks + 4;
  l.file_bytes = l.checksum_offset +
                 (checksum_bytes + kEngtBlockBytes - 1) / kEngtBlockBytes * kEngtBlockBytes;
  return l;
}

// ---- Writer -------------------------------------------------------------------------------

void write_engt(const std::string& path, RowFormat format, int64_t rows, int64_t width,
                const RowBatchSource& source, std::string_view name) {
  const EngtLayout l = EngtLayout::make(format, rows, width);
  if (name.size() > kEngtMaxNameBytes) {
    throw InputError(error_message(
        path, "table name of " + std::to_string(name.size()) + " bytes is longer than 255 bytes"));
  }
  if (name.find('\0') != std::string_view::npos)
    throw InputError(error_message(path, "table name contains a NUL byte"));

  std::vector<uint8_t> header(kBlock, 0);
  std::memcpy(header.data() + kMagicAt, kMagic, 4);
  put<uint32_t>(header.data(), kVersionAt, kEngtVersion);
  put<uint32_t>(header.data(), kFormatAt, static_cast<uint32_t>(format));
  put<uint32_t>(header.data(), kBlockBytesAt, static_cast<uint32_t>(kEngtBlockBytes));
  put<uint64_t>(header.data(), kRowsAt, static_cast<uint64_t>(l.rows));
  put<uint64_t>(header.data(), kWidthAt, static_cast<uint64_t>(l.width));
  put<uint64_t>(header.data(), kRowBytesAt, static_cast<uint64_t>(l.row_bytes));
  put<uint64_t>(header.data(), kRowsPerBlockAt, static_cast<uint64_t>(l.rows_per_block));
  put<uint64_t>(header.data(), kBlocksPerRowAt, static_cast<uint64_t>(l.blocks_per_row));
  put<uint64_t>(header.data(), kDataOffsetAt, static_cast<uint64_t>(l.data_offset));
  put<uint64_t>(header.data(), kDataBlocksAt, static_cast<uint64_t>(l.data_blocks));
  put<uint64_t>(header.data(), kChecksumOffsetAt, static_cast<uint64_t>(l.checksum_offset));
  put<uint64_t>(header.data(), kFileBytesAt, static_cast<uint64_t>(l.file_bytes));
  put<uint32_t>(header.data(), kNameBytesAt, static_cast<uint32_t>(name.size()));
  std::memcpy(header.data() + kNameAt, name.data(), name.size());
  put<uint32_t>(header.data(), kHeaderCrcAt, crc32c(header.data(), kHeaderCrcAt));

  AtomicFileWriter out(path);
  out.write(header.data(), header.size());

  // One chunk = a whole number of block groups, about kChunkBytes of blocks.
  const int64_t group_bytes = l.blocks_per_row * kEngtBlockBytes;
  const int64_t groups_per_chunk = std::max<int64_t>(1, kChunkBytes / group_bytes);
  const int64_t chunk_rows = groups_per_chunk * l.rows_per_block;
  std::vector<float> values(static_cast<size_t>(chunk_rows * width));
  std::vector<uint8_t> encoded(static_cast<size_t>(chunk_rows * l.row_bytes));
  std::vector<uint8_t> blocks(static_cast<size_t>(groups_per_chunk * group_bytes));
  std::vector<uint32_t> crcs;
  crcs.reserve(static_cast<size_t>(l.data_blocks));
  for (int64_t first = 0; first < rows; first += chunk_rows) {
    const int64_t count = std::min(chunk_rows, rows - first);
    source(first, count, values.data());
    encode_rows(format, values.data(), count, width, encoded.data());
    const int64_t groups = (count + l.rows_per_block - 1) / l.rows_per_block;
    std::fill(blocks.begin(), blocks.begin() + groups * group_bytes, uint8_t{0});
    for (int64_t r = 0; r < count; ++r) {
      std::memcpy(blocks.data() + (r / l.rows_per_block) * group_bytes +
                      (r % l.rows_per_block) * l.row_bytes,
                  encoded.data() + r * l.row_bytes, static_cast<size_t>(l.row_bytes));
    }
    const int64_t nblocks = groups * l.blocks_per_row;
    for (int64_t b = 0; b < nblocks; ++b)
      crcs.push_back(crc32c(blocks.data() + b * kEngtBlockBytes, kBlock));
    out.write(blocks.data(), static_cast<size_t>(nblocks * kEngtBlockBytes));
  }
  if (static_cast<int64_t>(crcs.size()) != l.data_blocks)
    throw std::logic_error("write_engt: block count does not match the layout");

  const size_t crc_bytes = 4 * crcs.size();
  out.write(crcs.data(), crc_bytes);
  const uint32_t section_crc = crc32c(crcs.data(), crc_bytes);
  out.write(&section_crc, 4);
  const std::vector<uint8_t> padding(
      static_cast<size_t>(l.file_bytes - l.checksum_offset) - crc_bytes - 4, 0);
  out.write(padding.data(), padding.size());
  if (static_cast<int64_t>(out.size()) != l.file_bytes)
    throw std::logic_error("write_engt: file size does not match the layout");
  out.commit();
}

void write_engt(const std::string& path, RowFormat format, const float* values, int64_t rows,
                int64_t width, std::string_view name) {
  write_engt(
      path, format, rows, width,
      [&](int64_t first, int64_t count, float* out) {
        std::memcpy(out, values + first * width, static_cast<size_t>(count * width) * 4);
      },
      name);
}

// ---- Reader -------------------------------------------------------------------------------

EngtFile::EngtFile(EngtFile&& other) noexcept
    : path_(std::move(other.path_)),
      name_(std::move(other.name_)),
      layout_(other.layout_),
      block_crcs_(std::move(other.block_crcs_)),
      fd_(std::exchange(other.fd_, -1)),
      direct_io_(other.direct_io_) {}

EngtFile& EngtFile::operator=(EngtFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    name_ = std::move(other.name_);
    layout_ = other.layout_;
    block_crcs_ = std::move(other.block_crcs_);
    fd_ = std::exchange(other.fd_, -1);
    direct_io_ = other.direct_io_;
  }
  return *this;
}

EngtFile::~EngtFile() {
  if (fd_ >= 0) ::close(fd_);
}

void EngtFile::pread_all(void* buf, int64_t size, int64_t offset, const char* what) const {
  auto* p = static_cast<uint8_t*>(buf);
  int64_t done = 0;
  while (done < size) {
    const ssize_t n =
        ::pread(fd_, p + done, static_cast<size_t>(size - done), static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(error_message(path_, std::string("cannot read ") + what + " at offset " +
                                             std::to_string(offset + done) + ": " +
                                             std::strerror(errno)));
    }
    if (n == 0) {
      throw FormatError(error_message(path_, std::string("truncated while reading ") + what +
                                                 ": expected " + std::to_string(offset + size) +
                                                 " bytes, the file ends at " +
                                                 std::to_string(offset + done)));
    }
    done += n;
  }
}

EngtFile EngtFile::open(const std::string& path, const EngtOpenOptions& options) {
  EngtFile f;
  f.path_ = path;
  if (options.direct_io) {
    f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    f.direct_io_ = f.fd_ >= 0;
  }
  if (f.fd_ < 0) f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd_ < 0)
    throw IoError(error_message(path, std::string("cannot open: ") + std::strerror(errno)));
  struct stat st {};
  if (::fstat(f.fd_, &st) != 0)
    throw IoError(error_message(path, std::string("cannot stat: ") + std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw IoError(error_message(path, "not a regular file"));
  const int64_t size = st.st_size;
  if (size < kEngtBlockBytes) {
    throw FormatError(error_message(path,
                                    "truncated: expected at least 4096 bytes (the header), "
                                    "got " +
                                        std::to_string(size)));
  }

  AlignedBuffer hbuf(kEngtBlockBytes);
  const uint8_t* h = hbuf.data;
  f.pread_all(hbuf.data, kEngtBlockBytes, 0, "the header");
  auto field_error = [&](const char* field, const std::string& what) {
    return FormatError(error_message(path, std::string("header: ") + field + ": " + what));
  };
  if (std::memcmp(h + kMagicAt, kMagic, 4) != 0) {
    std::string got;
    for (size_t i = 0; i < 4; ++i) {
      const auto c = static_cast<unsigned char>(h[kMagicAt + i]);
      char buf[8];
      std::snprintf(buf, sizeof buf, (c >= 0x20 && c < 0x7f) ? "%c" : "\\x%02x", c);
      got += buf;
    }
    throw field_error("magic", "expected \"ENGT\", got \"" + got + "\" (not an .engt table file)");
  }
  const auto version = get<uint32_t>(h, kVersionAt);
  if (version != kEngtVersion) {
    throw field_error("version", "unsupported version " + std::to_string(version) +
                                     " (this build reads version 1)");
  }
  const uint32_t header_crc = crc32c(h, kHeaderCrcAt);
  if (get<uint32_t>(h, kHeaderCrcAt) != header_crc) {
    throw FormatError(error_message(path, "header: checksum mismatch (stored " +
                                              hex32(get<uint32_t>(h, kHeaderCrcAt)) +
                                              ", computed " + hex32(header_crc) + ")"));
  }
  const auto code = get<uint32_t>(h, kFormatAt);
  if (!is_known_format(code))
    throw field_error("format", "unknown format code " + std::to_string(code));
  const auto format = static_cast<RowFormat>(code);
  const auto rows = get<uint64_t>(h, kRowsAt), width = get<uint64_t>(h, kWidthAt);
  if (rows > static_cast<uint64_t>(kEngtMaxRows))
    throw field_error("rows", std::to_string(rows) + " is more than 2^40");
  if (width < 1 || width > static_cast<uint64_t>(kMaxRowWidth)) {
    throw field_error("width", std::to_string(width) + " is out of range [1, " +
                                   std::to_string(kMaxRowWidth) + "]");
  }
  try {
    f.layout_ = EngtLayout::make(format, static_cast<int64_t>(rows), static_cast<int64_t>(width));
  } catch (const ConfigError& e) {
    throw field_error("width", e.what());
  }
  const EngtLayout& l = f.layout_;
  auto expect_u64 = [&](const char* field, size_t at, int64_t expected) {
    const auto v = get<uint64_t>(h, at);
    if (v != static_cast<uint64_t>(expected)) {
      throw field_error(field, std::to_string(v) + ", expected " + std::to_string(expected) +
                                   " for " + std::to_string(rows) + " rows of " +
                                   std::to_string(width) + " " + std::string(format_name(format)) +
                                   " values");
    }
  };
  if (get<uint32_t>(h, kBlockBytesAt) != kEngtBlockBytes) {
    throw field_error("block_bytes",
                      std::to_string(get<uint32_t>(h, kBlockBytesAt)) + ", expected 4096");
  }
  expect_u64("row_bytes", kRowBytesAt, l.row_bytes);
  expect_u64("rows_per_block", kRowsPerBlockAt, l.rows_per_block);
  expect_u64("blocks_per_row", kBlocksPerRowAt, l.blocks_per_row);
  expect_u64("data_offset", kDataOffsetAt, l.data_offset);
  expect_u64("data_blocks", kDataBlocksAt, l.data_blocks);
  expect_u64("checksum_offset", kChecksumOffsetAt, l.checksum_offset);
  expect_u64("file_bytes", kFileBytesAt, l.file_bytes);
  const auto name_bytes = get<uint32_t>(h, kNameBytesAt);
  if (name_bytes > kEngtMaxNameBytes)
    throw field_error("name_bytes", std::to_string(name_bytes) + " is more than 255");
  f.name_.assign(reinterpret_cast<const char*>(h + kNameAt), name_bytes);
  for (size_t i = kNameAt + name_bytes; i < kHeaderCrcAt; ++i) {
    if (h[i] != 0) {
      throw field_error(
          i < kReservedAt ? "name" : "reserved",
          "byte " + std::to_string(i) + " is " + std::to_string(h[i]) + ", expected 0");
    }
  }
  if (size != l.file_bytes) {
    throw FormatError(
        error_message(path, std::string(size < l.file_bytes ? "truncated" : "size mismatch") +
                                ": expected " + std::to_string(l.file_bytes) +
                                " bytes (header file_bytes), got " + std::to_string(size)));
  }

  const int64_t section = l.file_bytes - l.checksum_offset;
  AlignedBuffer cbuf(section);
  f.pread_all(cbuf.data, section, l.checksum_offset, "the checksum section");
  const size_t crc_bytes = static_cast<size_t>(4 * l.data_blocks);
  const uint32_t section_crc = crc32c(cbuf.data, crc_bytes);
  const auto stored = get<uint32_t>(cbuf.data, crc_bytes);
  if (stored != section_crc) {
    throw FormatError(error_message(path, "checksum section: checksum mismatch (stored " +
                                              hex32(stored) + ", computed " + hex32(section_crc) +
                                              ")"));
  }
  for (int64_t i = static_cast<int64_t>(crc_bytes) + 4; i < section; ++i) {
    if (cbuf.data[i] != 0) {
      throw FormatError(error_message(path, "checksum section: padding byte at offset " +
                                                std::to_string(l.checksum_offset + i) +
                                                " is not 0"));
    }
  }
  f.block_crcs_.resize(static_cast<size_t>(l.data_blocks));
  std::memcpy(f.block_crcs_.data(), cbuf.data, crc_bytes);
  return f;
}

void EngtFile::read_groups(int64_t first, int64_t count, uint8_t* buf) const {
  const EngtLayout& l = layout_;
  const int64_t first_block = first * l.blocks_per_row, nblocks = count * l.blocks_per_row;
  pread_all(buf, nblocks * kEngtBlockBytes, l.data_offset + first_block * kEngtBlockBytes,
            "data blocks");
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t block = first_block + b;
    const uint32_t crc = crc32c(buf + b * kEngtBlockBytes, kBlock);
    const uint32_t want = block_crcs_[static_cast<size_t>(block)];
    if (crc != want) {
      throw FormatError(error_message(
          path_, "data block " + std::to_string(block) + " (" +
                     rows_of_group(l, block / l.blocks_per_row) + "): checksum mismatch (stored " +
                     hex32(want) + ", computed " + hex32(crc) + "); the table file is corrupt"));
    }
  }
}

void EngtFile::check_rows(std::span<const int64_t> rows) const {
  for (const int64_t r : rows) {
    if (r < 0 || r >= layout_.rows) {
      throw InputError(error_message(path_, "row " + std::to_string(r) + " is out of range [0, " +
                                                std::to_string(layout_.rows) + ")"));
    }
  }
}

void EngtFile::visit_rows(std::span<const int64_t> rows,
                          const std::function<void(size_t i, const uint8_t* row)>& sink) const {
  check_rows(rows);
  if (rows.empty()) return;
  const EngtLayout& l = layout_;
  // (group, request index), sorted by group: each group is read once.
  std::vector<std::pair<int64_t, size_t>> order(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) order[i] = {l.group_of(rows[i]), i};
  std::sort(order.begin(), order.end());
  const int64_t group_bytes = l.blocks_per_row * kEngtBlockBytes;
  const int64_t max_groups = std::max<int64_t>(1, kChunkBytes / group_bytes);
  // Runs of consecutive groups, at most max_groups long, go in one pread: (first group, groups,
  // end of the run in `order`).
  struct Run {
    int64_t first, groups;
    size_t end;
  };
  std::vector<Run> runs;
  int64_t longest = 1;
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t g = order[k].first;
    if (!runs.empty()) {
      Run& run = runs.back();
      const int64_t last = run.first + run.groups - 1;
      if (g == last || (g == last + 1 && run.groups < max_groups)) {
        run.groups = g - run.first + 1;
        run.end = k + 1;
        longest = std::max(longest, run.groups);
        continue;
      }
    }
    runs.push_back({g, 1, k + 1});
  }
  AlignedBuffer buf(longest * group_bytes);
  size_t k = 0;
  for (const Run& run : runs) {
    read_groups(run.first, run.groups, buf.data);
    for (; k < run.end; ++k) {
      const int64_t r = rows[order[k].second];
      sink(order[k].second, buf.data + (l.group_of(r) - run.first) * group_bytes +
                                (r % l.rows_per_block) * l.row_bytes);
    }
  }
}

void EngtFile::read_rows(std::span<const int64_t> rows, float* out, int64_t stride) const {
  visit_rows(rows, [&](size_t i, const uint8_t* row) {
    decode_rows(layout_.format, row, 1, layout_.width, out + static_cast<int64_t>(i) * stride, 0);
  });
}

void EngtFile::read_rows(std::span<const int64_t> rows, double* out, int64_t stride) const {
  visit_rows(rows, [&](size_t i, const uint8_t* row) {
    decode_rows(layout_.format, row, 1, layout_.width, out + static_cast<int64_t>(i) * stride, 0);
  });
}

void EngtFile::read_encoded_rows(std::span<const int64_t> rows, uint8_t* out) const {
  visit_rows(rows, [&](size_t i, const uint8_t* row) {
    std::memcpy(out + static_cast<int64_t>(i) * layout_.row_bytes, row,
                static_cast<size_t>(layout_.row_bytes));
  });
}

void EngtFile::for_each_group(
    const std::function<void(int64_t first_row, int64_t count, const uint8_t* rows)>& visit) const {
  const EngtLayout& l = layout_;
  const int64_t group_bytes = l.blocks_per_row * kEngtBlockBytes;
  const int64_t chunk_groups = std::max<int64_t>(1, kChunkBytes / group_bytes);
  const int64_t groups = l.num_groups();
  AlignedBuffer buf(std::min(chunk_groups, std::max<int64_t>(groups, 1)) * group_bytes);
  for (int64_t g0 = 0; g0 < groups; g0 += chunk_groups) {
    const int64_t n = std::min(chunk_groups, groups - g0);
    read_groups(g0, n, buf.data);
    for (int64_t g = g0; g < g0 + n; ++g) {
      const int64_t first_row = g * l.rows_per_block;
      const int64_t count = std::min(l.rows_per_block, l.rows - first_row);
      // The rows of one group are back to back already (padding only follows the last).
      visit(first_row, count, buf.data + (g - g0) * group_bytes);
    }
  }
}

void EngtFile::verify_all() const {
  for_each_group([](int64_t, int64_t, const uint8_t*) {});
}

// ---- Row store ----------------------------------------------------------------------------

std::string_view tier_name(EngtTier tier) {
  return tier == EngtTier::kHost ? "host" : "file";
}

std::optional<EngtTier> tier_from_name(std::string_view name) {
  if (name == "host") return EngtTier::kHost;
  if (name == "file") return EngtTier::kFile;
  return std::nullopt;
}

EngtRowStore::EngtRowStore(const std::string& path, EngtTier tier, const EngtOpenOptions& options)
    : file_(EngtFile::open(path, options)), tier_(tier) {
  if (tier_ != EngtTier::kHost) return;
  const int64_t rb = file_.row_bytes();
  host_rows_.resize(static_cast<size_t>(file_.rows() * rb));
  file_.for_each_group([&](int64_t first_row, int64_t count, const uint8_t* rows) {
    std::memcpy(host_rows_.data() + first_row * rb, rows, static_cast<size_t>(count * rb));
  });
}

template <class Out>
void EngtRowStore::gather_as(std::span<const int64_t> rows, Out* out, int64_t out_stride) const {
  if (tier_ == EngtTier::kFile) {
    file_.read_rows(rows, out, out_stride);
    return;
  }
  const int64_t n = file_.rows(), rb = file_.row_bytes();
  for (const int64_t r : rows) {
    if (r < 0 || r >= n) {
      throw InputError(error_message(
          file_.path(),
          "row " + std::to_string(r) + " is out of range [0, " + std::to_string(n) + ")"));
    }
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    decode_rows(file_.format(), host_rows_.data() + rows[i] * rb, 1, file_.width(),
                out + static_cast<int64_t>(i) * out_stride, 0);
  }
}

void EngtRowStore::gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const {
  gather_as(rows, out, out_stride);
}

void EngtRowStore::gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const {
  gather_as(rows, out, out_stride);
}

}  // namespace engram::memory
