// .engt: one Engram table (rows × width values in one RowFormat) in a file laid out for random
// single-row reads, O_DIRECT included, with every 4096-byte block checksummed (CRC32C).
//
//   [0, 4096)                      header (fields below, CRC32C of its first 4092 bytes at 4092)
//   [4096, checksum_offset)        data_blocks blocks of 4096 bytes holding the rows
//   [checksum_offset, file_bytes)  one CRC32C per data block, the CRC32C of those, zero padding
//                                  to a multiple of 4096
//
// Rows never straddle a block: with row_bytes ≤ 4096 a block holds rows_per_block =
// floor(4096 / row_bytes) rows and zero padding; a longer row starts on a block boundary and
// takes blocks_per_row = ceil(row_bytes / 4096) blocks (zero-padded at the end). Either way the
// rows of one "block group" (rows_per_block rows in blocks_per_row blocks, one of the two being 1)
// can be read and verified alone. All integers are little-endian. docs/memory_tier.md has the
// byte-by-byte table.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram/memory/row_format.h"
#include "engram/memory/row_store.h"

namespace engram::memory {

inline constexpr int64_t kEngtBlockBytes = 4096;
inline constexpr uint32_t kEngtVersion = 1;
inline constexpr size_t kEngtMaxNameBytes = 255;
// The most rows a table may have (2^40), which keeps every offset far from overflowing.
inline constexpr int64_t kEngtMaxRows = int64_t{1} << 40;

// Where everything is in a table of `rows` rows of `width` values in `format`.
struct EngtLayout {
  RowFormat format = RowFormat::kF32;
  int64_t rows = 0, width = 0, row_bytes = 0;
  int64_t rows_per_block = 0;  // rows in one block group
  int64_t blocks_per_row = 0;  // blocks in one block group
  int64_t data_blocks = 0;
  int64_t data_offset = kEngtBlockBytes;
  int64_t checksum_offset = 0;
  int64_t file_bytes = 0;

  // Throws ConfigError for a width the format does not accept (check_row_width) or rows outside
  // [0, kEngtMaxRows].
  static EngtLayout make(RowFormat format, int64_t rows, int64_t width);

  int64_t group_of(int64_t row) const { return row / rows_per_block; }
  int64_t num_groups() const { return data_blocks / blocks_per_row; }
  // The first data block (0-based) holding `row`; the row spans blocks_per_row blocks.
  int64_t block_of(int64_t row) const { return group_of(row) * blocks_per_row; }
  // Byte offset of `row` in the file.
  int64_t row_offset(int64_t row) const {
    return data_offset + block_of(row) * kEngtBlockBytes + (row % rows_per_block) * row_bytes;
  }
};

// Fills out (count, width), float32, contiguous, with rows [first_row, first_row + count).
// The writer asks for the rows in order, in batches of about 1 MiB of encoded rows.
using RowBatchSource = std::function<void(int64_t first_row, int64_t count, float* out)>;

// Writes a table streaming: memory stays at about 1 MiB plus 4 bytes per data block (the block
// checksums, written last). The file appears atomically (temporary file beside `path`, fsynced,
// renamed, directory fsynced); if anything fails, `source` throwing included, no file and no
// temporary file are left and an old file at `path` is untouched. `name` (≤ 255 bytes, no NUL)
// records where the table came from, e.g. the tensor name. Throws ConfigError for a bad width or
// row count, InputError for a bad name (both before anything is created), IoError.
void write_engt(const std::string& path, RowFormat format, int64_t rows, int64_t width,
                const RowBatchSource& source, std::string_view name = "");
// The same for a table already in memory: values is (rows, width), contiguous.
void write_engt(const std::string& path, RowFormat format, const float* values, int64_t rows,
                int64_t width, std::string_view name = "");

struct EngtOpenOptions {
  // Open with O_DIRECT (reads bypass the page cache). Falls back to buffered reads where the
  // file system refuses O_DIRECT (tmpfs); EngtFile::direct_io() says which one is in use.
  bool direct_io = false;
};

// A validated, open .engt file. Reads are pread calls on one descriptor, so a const EngtFile
// can be read from several threads at once.
class EngtFile {
 public:
  // Reads and checks the header (magic, version, CRC, every field against the others), the file
  // size (a truncated file names the expected and actual sizes) and the checksum section (its
  // CRC; the padding must be zero). Throws IoError or FormatError naming the file and field.
  static EngtFile open(const std::string& path, const EngtOpenOptions& options = {});

  EngtFile(EngtFile&& other) noexcept;
  EngtFile& operator=(EngtFile&& other) noexcept;
  EngtFile(const EngtFile&) = delete;
  EngtFile& operator=(const EngtFile&) = delete;
  ~EngtFile();

  const std::string& path() const { return path_; }
  const std::string& name() const { return name_; }  // as given to write_engt
  const EngtLayout& layout() const { return layout_; }
  RowFormat format() const { return layout_.format; }
  int64_t rows() const { return layout_.rows; }
  int64_t width() const { return layout_.width; }
  int64_t row_bytes() const { return layout_.row_bytes; }
  int64_t row_offset(int64_t row) const { return layout_.row_offset(row); }
  int64_t block_of(int64_t row) const { return layout_.block_of(row); }
  bool direct_io() const { return direct_io_; }
  // The stored CRC32C of data block `block`.
  uint32_t block_checksum(int64_t block) const {
    return block_crcs_.at(static_cast<size_t>(block));
  }

  // out[i * stride + j] = value j of row rows[i], dequantized. Reads each distinct block group
  // once per call (adjacent groups in one pread) and checks its blocks' CRCs before decoding any
  // of its rows. Throws InputError naming a row out of range (before reading anything),
  // FormatError naming the file, block and rows of a block whose checksum does not match (no row
  // of that block is returned; rows of other blocks may already be in `out`), IoError.
  void read_rows(std::span<const int64_t> rows, float* out, int64_t stride) const;
  void read_rows(std::span<const int64_t> rows, double* out, int64_t stride) const;
  // The encoded rows, row_bytes() each, back to back in `out`; checked as read_rows checks.
  void read_encoded_rows(std::span<const int64_t> rows, uint8_t* out) const;

  // Reads and checks every data block; throws FormatError at the first mismatch.
  void verify_all() const;
  // Reads every block group in order, checked, and hands its encoded rows (count rows of
  // row_bytes() back to back) to `visit`; what verify_all and the host tier use.
  void for_each_group(const std::function<void(int64_t first_row, int64_t count,
                                               const uint8_t* rows)>& visit) const;

 private:
  EngtFile() = default;
  // Reads groups [first, first + count) into buf (count · blocks_per_row blocks) and checks them.
  void read_groups(int64_t first, int64_t count, uint8_t* buf) const;
  void check_rows(std::span<const int64_t> rows) const;
  // Calls sink(i, encoded row) for every i, one group read at a time.
  void visit_rows(std::span<const int64_t> rows,
                  const std::function<void(size_t i, const uint8_t* row)>& sink) const;
  void pread_all(void* buf, int64_t size, int64_t offset, const char* what) const;

  std::string path_, name_;
  EngtLayout layout_;
  std::vector<uint32_t> block_crcs_;
  int fd_ = -1;
  bool direct_io_ = false;
};

// Where an EngtRowStore keeps the table.
enum class EngtTier {
  kHost,  // the encoded rows in memory, loaded and checked once when the store is made
  kFile,  // nothing in memory but the block checksums: each gather preads and checks blocks
};
std::string_view tier_name(EngtTier tier);  // "host", "file"
std::optional<EngtTier> tier_from_name(std::string_view name);

// A RowStore over a .engt file, for the Engram layer: gathers dequantize rows to float or
// double. Rows out of range throw InputError naming the file and the row.
class EngtRowStore final : public RowStore {
 public:
  EngtRowStore(const std::string& path, EngtTier tier, const EngtOpenOptions& options = {});

  int64_t num_rows() const override { return file_.rows(); }
  int64_t width() const override { return file_.width(); }
  void gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const override;
  void gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const override;

  EngtTier tier() const { return tier_; }
  const EngtFile& file() const { return file_; }

 private:
  template <class Out>
  void gather_as(std::span<const int64_t> rows, Out* out, int64_t out_stride) const;

  EngtFile file_;
  EngtTier tier_;
  std::vector<uint8_t> host_rows_;  // kHost: rows · row_bytes encoded bytes
};

}  // namespace engram::memory
