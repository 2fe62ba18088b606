// GPU row gather against the CPU's RowStore gather (the `e` of the Engram layer), value for
// value, for f32 and bf16 tables; raw row copies; rows through a cache in GPU memory
// (cached_rows) for every copy unit (skipped without a GPU).
#include "engram/cuda/gather.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/memory/row_format.h"
#include "engram/memory/row_store.h"
#include "engram/tensor/tensor.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

// A table of H heads with random sizes, random values, and random per-head ids.
struct Case {
  int64_t heads, width, tokens;
  std::vector<int64_t> head_sizes, offsets;
  int64_t rows = 0;
  std::vector<int32_t> ids;  // (tokens, heads)
};

Case make_case(int64_t heads, int64_t width, int64_t tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Case c{heads, width, tokens, {}, {}, 0, {}};
  for (int64_t h = 0; h < heads; ++h) {
    c.offsets.push_back(c.rows);
    c.head_sizes.push_back(static_cast<int64_t>(50 + rng() % 300));
    c.rows += c.head_sizes.back();
  }
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      c.ids.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(c.head_sizes[h])));
    }
  }
  return c;
}

// The table as the CPU layer sees it: a Tensor of `dtype` in a TensorRowStore.
Tensor random_table(DType dtype, int64_t rows, int64_t width, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor t(dtype, {rows, width});
  for (int64_t i = 0; i < rows * width; ++i) {
    const float v = normal(rng);
    if (dtype == DType::kBF16) {
      t.data<bf16>()[i] = float_to_bf16(v);
    } else {
      t.data<float>()[i] = v;
    }
  }
  return t;
}

// e on the CPU: rows offsets[h] + ids[t, h], concatenated per token (src/nn/engram_layer.cpp).
std::vector<float> cpu_gather(const Case& c, const Tensor& table) {
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int64_t h = 0; h < c.heads; ++h) rows.push_back(c.offsets[h] + c.ids[t * c.heads + h]);
  }
  std::vector<float> e(rows.size() * static_cast<size_t>(c.width));
  memory::TensorRowStore(table).gather(rows, e.data(), c.width);
  return e;
}

std::vector<float> gpu_gather(const Case& c, const Tensor& table, size_t out_shift = 0) {
  DeviceBuffer<uint8_t> d_table{
      std::span<const uint8_t>(static_cast<const uint8_t*>(table.raw()), table.nbytes())};
  const DeviceBuffer<int32_t> d_ids{std::span<const int32_t>(c.ids)};
  const DeviceBuffer<int64_t> d_offsets{std::span<const int64_t>(c.offsets)};
  const size_t n = static_cast<size_t>(c.tokens * c.heads * c.width);
  DeviceBuffer<float> d_out(n + out_shift);
  gather_rows(d_out.data() + out_shift, DeviceTable{d_table.data(), table.dtype(), c.rows, c.width},
              d_ids.data(), d_offsets.data(), c.tokens, c.heads);
  std::vector<float> out(n + out_shift);
  d_out.download(out);
  return std::vector<float>(out.begin() + static_cast<ptrdiff_t>(out_shift), out.end());
}

// Bit for bit (bf16 widening is exact).
void expect_bitwise_equal(const std::vector<float>& got, const std::vector<float>& want,
                          const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << what;
}

TEST(GpuGather, MatchesCpuRowStoreForF32AndBf16) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t width : {8, 12, 16, 24, 32, 40, 48, 64}) {
      for (int64_t heads : {8, 16}) {
        const Case c = make_case(heads, width, 777, seed++);
        const Tensor table = random_table(dtype, c.rows, width, seed++);
        const std::string what = std::string(dtype_name(dtype)) + " width " + std::to_string(width);
        expect_bitwise_equal(gpu_gather(c, table), cpu_gather(c, table), what.c_str());
      }
    }
  }
}

TEST(GpuGather, WidthsAndPointersOffTheVectorPath) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t width : {1, 7, 10, 13}) {
      const Case c = make_case(3, width, 100, static_cast<uint64_t>(width));
      const Tensor table = random_table(dtype, c.rows, width, 9);
      expect_bitwise_equal(gpu_gather(c, table), cpu_gather(c, table), "odd width");
    }
    // Width 16, but the output one float past a 16-byte boundary.
    const Case c = make_case(8, 16, 100, 3);
    const Tensor table = random_table(dtype, c.rows, 16, 4);
    expect_bitwise_equal(gpu_gather(c, table, 1), cpu_gather(c, table), "unaligned out");
  }
}

// bf16 output: the CPU's rows rounded to bf16 (bf16 tables: their bits exactly), aligned and not.
TEST(GpuGather, Bf16OutputIsTheRoundedRows) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t width : {7, 16, 64}) {
      for (size_t shift : {size_t{0}, size_t{1}}) {
        const Case c = make_case(4, width, 300, static_cast<uint64_t>(width) + shift);
        const Tensor table = random_table(dtype, c.rows, width, 11);
        DeviceBuffer<uint8_t> d_table{
            std::span<const uint8_t>(static_cast<const uint8_t*>(table.raw()), table.nbytes())};
        const DeviceBuffer<int32_t> d_ids{std::span<const int32_t>(c.ids)};
        const DeviceBuffer<int64_t> d_offsets{std::span<const int64_t>(c.offsets)};
        const size_t n = static_cast<size_t>(c.tokens * c.heads * c.width);
        DeviceBuffer<bf16> d_out(n + shift);
        gather_rows(d_out.data() + shift,
                    DeviceTable{d_table.data(), table.dtype(), c.rows, c.width}, d_ids.data(),
                    d_offsets.data(), c.tokens, c.heads);
        std::vector<bf16> out(n + shift);
        d_out.download(out);
        const std::vector<float> want = cpu_gather(c, table);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) bad += out[i + shift].bits != float_to_bf16(want[i]).bits;
        EXPECT_EQ(bad, 0u) << dtype_name(dtype) << " width " << width << " shift " << shift;
      }
    }
  }
}

TEST(GpuGather, ManyTokens) {
  SKIP_WITHOUT_GPU();
  const Case c = make_case(16, 32, 50000, 8);
  const Tensor table = random_table(DType::kBF16, c.rows, 32, 8);
  expect_bitwise_equal(gpu_gather(c, table), cpu_gather(c, table), "50,000 tokens");
}

TEST(GpuGather, OutOfTableIdsGiveNanRowsAndBadArgumentsThrow) {
  SKIP_WITHOUT_GPU();
  Case c = make_case(2, 8, 3, 5);
  c.ids[1] = -1;                            // token 0, head 1
  c.ids[4] = static_cast<int32_t>(c.rows);  // token 2, head 0: past the table
  const Tensor table = random_table(DType::kF32, c.rows, 8, 6);
  const std::vector<float> got = gpu_gather(c, table);
  for (size_t i = 0; i < got.size(); ++i) {
    const size_t token_head = i / 8;
    EXPECT_EQ(std::isnan(got[i]), token_head == 1 || token_head == 4) << i;
  }
  EXPECT_THROW(
      gather_rows(static_cast<float*>(nullptr), DeviceTable{nullptr, DType::kF64, 1, 1}, nullptr, nullptr, 1, 1),
      InputError);
  EXPECT_THROW(gather_rows(static_cast<float*>(nullptr), DeviceTable{}, nullptr, nullptr, -1, 1), InputError);
}

// fp8 and int8 rows (memory/row_format.h) dequantized in the gather: bit for bit the CPU's
// decode_rows of the same encoded rows, into f32 (and into bf16: that value rounded), from a
// table in device memory and in mapped pinned host memory. Groups are scaled from 1e-38 (the
// smallest UE8M0 scale, 2^-127, subnormal products) to 1e30, plus a group of zeros, and ids out
// of the table give rows of NaN. (NaN codes and the NaN scale byte decode to NaN on both sides,
// not necessarily with the same payload bits.)
TEST(GpuGather, DequantizesFp8AndInt8RowsAsTheCpuDecodes) {
  SKIP_WITHOUT_GPU();
  for (const memory::RowFormat format : {memory::RowFormat::kFP8, memory::RowFormat::kINT8}) {
    for (const bool mapped : {false, true}) {
      const int64_t width = 64;
      Case c = make_case(3, width, 200, mapped ? 31 : 32);
      c.ids[7] = -1;
      std::mt19937_64 rng(9);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      const float scales[] = {1e-38f, 1e-30f, 1e-6f, 1.0f, 3e4f, 1e30f, 0.0f};
      std::vector<float> values(static_cast<size_t>(c.rows * width));
      for (size_t g = 0; g < values.size() / 32; ++g) {
        const float s = scales[g % 7];
        for (size_t j = 0; j < 32; ++j) values[g * 32 + j] = normal(rng) * s;
      }
      const int64_t row_bytes = memory::row_bytes(format, width);
      std::vector<uint8_t> encoded(static_cast<size_t>(c.rows * row_bytes));
      memory::encode_rows(format, values.data(), c.rows, width, encoded.data());
      // The CPU's values of the gathered rows (NaN for the bad id).
      std::vector<float> want;
      for (int64_t t = 0; t < c.tokens; ++t) {
        for (int64_t h = 0; h < c.heads; ++h) {
          const int32_t id = c.ids[static_cast<size_t>(t * c.heads + h)];
          std::vector<float> row(static_cast<size_t>(width), std::nanf(""));
          if (id >= 0) {
            memory::decode_rows(format, encoded.data() + (c.offsets[h] + id) * row_bytes, 1,
                                width, row.data(), width);
          }
          want.insert(want.end(), row.begin(), row.end());
        }
      }
      DeviceBuffer<uint8_t> d_table;
      MappedHostBuffer<uint8_t> h_table;
      const void* data = nullptr;
      if (mapped) {
        h_table = MappedHostBuffer<uint8_t>(encoded.size());
        std::memcpy(h_table.host().data(), encoded.data(), encoded.size());
        data = h_table.device();
      } else {
        d_table = DeviceBuffer<uint8_t>(std::span<const uint8_t>(encoded));
        data = d_table.data();
      }
      const DType dt = format == memory::RowFormat::kFP8 ? DType::kF8E4M3 : DType::kI8;
      const DeviceTable table{data, dt, c.rows, width};
      const DeviceBuffer<int32_t> d_ids{std::span<const int32_t>(c.ids)};
      const DeviceBuffer<int64_t> d_offsets{std::span<const int64_t>(c.offsets)};
      const size_t n = want.size();
      DeviceBuffer<float> d_f32(n);
      DeviceBuffer<bf16> d_bf16(n + 1);
      gather_rows(d_f32.data(), table, d_ids.data(), d_offsets.data(), c.tokens, c.heads);
      gather_rows(d_bf16.data() + 1, table, d_ids.data(), d_offsets.data(), c.tokens, c.heads);
      std::vector<float> got(n);
      d_f32.download(got);
      std::vector<bf16> got16(n + 1);
      d_bf16.download(got16);
      size_t bad = 0, bad16 = 0, nans = 0;
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(want[i])) {
          ++nans;
          bad += !std::isnan(got[i]);
          bad16 += !std::isnan(bf16_to_float(got16[i + 1]));
          continue;
        }
        bad += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
        bad16 += got16[i + 1].bits != float_to_bf16(want[i]).bits;
      }
      const std::string what = std::string(memory::format_name(format)) +
                               (mapped ? ", mapped host" : ", device");
      EXPECT_EQ(nans, static_cast<size_t>(width)) << what;
      EXPECT_EQ(bad, 0u) << what;
      EXPECT_EQ(bad16, 0u) << what;
    }
  }
  // Quantized rows hold whole groups of 32.
  EXPECT_THROW(gather_rows(static_cast<float*>(nullptr), DeviceTable{nullptr, DType::kF8E4M3, 4, 48},
                           nullptr, nullptr, 1, 1),
               InputError);
}

// copy_rows: the table's raw rows, bit for bit (the output has the table's dtype), from a table in
// device memory or in pinned host memory mapped for the GPU.
std::vector<uint8_t> gpu_copy(const Case& c, const Tensor& table, bool mapped_host) {
  const auto* raw = static_cast<const uint8_t*>(table.raw());
  DeviceBuffer<uint8_t> d_table;
  MappedHostBuffer<uint8_t> h_table;
  const void* data = nullptr;
  if (mapped_host) {
    h_table = MappedHostBuffer<uint8_t>(table.nbytes());
    std::memcpy(h_table.host().data(), raw, table.nbytes());
    data = h_table.device();
  } else {
    d_table = DeviceBuffer<uint8_t>(std::span<const uint8_t>(raw, table.nbytes()));
    data = d_table.data();
  }
  const DeviceBuffer<int32_t> d_ids{std::span<const int32_t>(c.ids)};
  const DeviceBuffer<int64_t> d_offsets{std::span<const int64_t>(c.offsets)};
  const size_t bytes = static_cast<size_t>(c.tokens * c.heads * c.width) * dtype_size(table.dtype());
  DeviceBuffer<uint8_t> d_out(bytes);
  copy_rows(d_out.data(), DeviceTable{data, table.dtype(), c.rows, c.width}, d_ids.data(),
            d_offsets.data(), c.tokens, c.heads);
  std::vector<uint8_t> out(bytes);
  d_out.download(out);
  return out;
}

// The expected bytes: the rows offsets[h] + ids[t, h] of the table, concatenated per token.
std::vector<uint8_t> cpu_copy(const Case& c, const Tensor& table) {
  const size_t row_bytes = static_cast<size_t>(c.width) * dtype_size(table.dtype());
  const auto* raw = static_cast<const uint8_t*>(table.raw());
  std::vector<uint8_t> out;
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t id = c.ids[static_cast<size_t>(t * c.heads + h)];
      const int64_t row = c.offsets[static_cast<size_t>(h)] + id;
      if (id < 0 || row >= c.rows) {  // a row of quiet NaNs
        for (int64_t j = 0; j < c.width; ++j) {
          if (table.dtype() == DType::kBF16) {
            out.insert(out.end(), {0xc0, 0x7f});
          } else {
            out.insert(out.end(), {0x00, 0x00, 0xc0, 0x7f});
          }
        }
        continue;
      }
      out.insert(out.end(), raw + row * row_bytes, raw + (row + 1) * row_bytes);
    }
  }
  return out;
}

TEST(GpuCopyRows, RawRowsFromDeviceAndMappedHostTables) {
  SKIP_WITHOUT_GPU();
  for (const DType dt : {DType::kF32, DType::kBF16}) {
    for (const int64_t width : {8, 64}) {  // f32 8: 2 pieces a row; bf16 8: 1 piece
      Case c = make_case(5, width, 777, 21 + static_cast<uint64_t>(width));
      c.ids[3] = -1;                            // invalid ids: rows of NaN
      c.ids[11] = static_cast<int32_t>(c.rows);
      const Tensor table = random_table(dt, c.rows, width, 22);
      const std::vector<uint8_t> want = cpu_copy(c, table);
      for (const bool mapped : {false, true}) {
        EXPECT_EQ(gpu_copy(c, table, mapped), want)
            << dtype_name(dt) << " width " << width << (mapped ? " mapped host" : " device");
      }
    }
  }
}

TEST(GpuCopyRows, RejectsRowsOffTheSixteenByteGrid) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<float> buf(64);
  // 12 bf16 values = 24 bytes a row.
  EXPECT_THROW(copy_rows(buf.data(), DeviceTable{buf.data(), DType::kBF16, 4, 12}, nullptr,
                         nullptr, 1, 1),
               InputError);
  EXPECT_THROW(copy_rows(buf.data() + 1, DeviceTable{buf.data(), DType::kF32, 4, 8}, nullptr,
                         nullptr, 1, 1),
               InputError);
  EXPECT_THROW(copy_rows(buf.data(), DeviceTable{buf.data(), DType::kF64, 4, 8}, nullptr,
                         nullptr, 1, 1),
               InputError);
}

// cached_rows: random row bytes (any dtype is bytes to it) for row sizes that take each copy
// unit (f32 x 4: 16-byte pieces; int8 x 32: 36 bytes, 4; bf16 x 3: 6 bytes, 2; fp8 x 32: 33
// bytes, 1), tables in device and mapped host memory: the fills land in their slots, then every
// lookup reads its slot or (bypassed) the table; slots the plan leaves alone keep their bytes.
TEST(GpuCachedRows, FillsThenLookupsForEveryCopyUnit) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    DType dtype;
    int64_t width, row_bytes;
  };
  for (const Shape sh : {Shape{DType::kF32, 4, 16}, Shape{DType::kI8, 32, 36},
                         Shape{DType::kBF16, 3, 6}, Shape{DType::kF8E4M3, 32, 33}}) {
    SCOPED_TRACE(std::string(dtype_name(sh.dtype)) + " x " + std::to_string(sh.width));
    const int64_t rows = 40, capacity = 8, rb = sh.row_bytes;
    ASSERT_EQ(table_row_bytes(DeviceTable{nullptr, sh.dtype, rows, sh.width}), rb);
    std::mt19937_64 rng(5);
    std::vector<uint8_t> table(static_cast<size_t>(rows * rb)), slab(static_cast<size_t>(capacity * rb));
    for (auto& b : table) b = static_cast<uint8_t>(rng());
    for (auto& b : slab) b = static_cast<uint8_t>(rng());
    // Lookups: 2 hits in slots 1 and 6 (their bytes: rows 7 and 9 put there earlier), 2 fills
    // (rows 3 -> slot 2, 30 -> slot 5), a bypassed row (12) and repeats.
    std::memcpy(slab.data() + 1 * rb, table.data() + 7 * rb, static_cast<size_t>(rb));
    std::memcpy(slab.data() + 6 * rb, table.data() + 9 * rb, static_cast<size_t>(rb));
    const std::vector<int64_t> lookup_rows = {7, 3, 12, 9, 30, 3, 12, 7};
    const std::vector<int64_t> source = {1, 2, -13, 6, 5, 2, -13, 1};
    const auto n = static_cast<int64_t>(source.size());
    std::vector<int64_t> plan = {2};
    plan.insert(plan.end(), source.begin(), source.end());
    plan.insert(plan.end(), {3, 30, 2, 5});  // fill rows, then their slots
    std::vector<uint8_t> want_slab = slab;
    std::memcpy(want_slab.data() + 2 * rb, table.data() + 3 * rb, static_cast<size_t>(rb));
    std::memcpy(want_slab.data() + 5 * rb, table.data() + 30 * rb, static_cast<size_t>(rb));
    std::vector<uint8_t> want_out;
    for (const int64_t r : lookup_rows)
      want_out.insert(want_out.end(), table.begin() + r * rb, table.begin() + (r + 1) * rb);
    for (const bool mapped : {false, true}) {
      DeviceBuffer<uint8_t> d_table{std::span<const uint8_t>(table)};
      MappedHostBuffer<uint8_t> h_table(table.size());
      std::copy(table.begin(), table.end(), h_table.host().begin());
      DeviceBuffer<uint8_t> d_slab{std::span<const uint8_t>(slab)};
      DeviceBuffer<uint8_t> d_out(want_out.size());
      DeviceBuffer<int64_t> d_plan{std::span<const int64_t>(plan)};
      const DeviceTable t{mapped ? static_cast<const void*>(h_table.device()) : d_table.data(),
                          sh.dtype, rows, sh.width};
      cached_rows(d_out.data(), d_slab.data(), t, d_plan.data(), n);
      device_synchronize();
      std::vector<uint8_t> got_out(want_out.size()), got_slab(slab.size());
      d_out.download(got_out);
      d_slab.download(got_slab);
      EXPECT_EQ(got_out, want_out) << (mapped ? "mapped host" : "device");
      EXPECT_EQ(got_slab, want_slab) << (mapped ? "mapped host" : "device");
    }
  }
  DeviceBuffer<uint8_t> buf(64);
  const std::vector<int64_t> zeros(4, 0);
  DeviceBuffer<int64_t> plan{std::span<const int64_t>(zeros)};
  EXPECT_THROW(cached_rows(buf.data(), buf.data(), DeviceTable{buf.data(), DType::kF64, 1, 1},
                           plan.data(), 1),
               InputError);
  EXPECT_THROW(cached_rows(buf.data(), buf.data(), DeviceTable{buf.data(), DType::kF8E4M3, 1, 16},
                           plan.data(), 1),
               InputError);
  EXPECT_THROW(cached_rows(buf.data(), buf.data(), DeviceTable{buf.data(), DType::kF32, 1, 1},
                           plan.data(), -1),
               InputError);
}

}  // namespace
}  // namespace engram::cuda
