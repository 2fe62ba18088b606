#include "engram/tensor/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

namespace engram {
namespace {

float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(DType, SizesAndNamesOfEveryType) {
  struct Case {
    DType t;
    size_t size;
    const char* name;
  };
  const Case cases[] = {
      {DType::kF64, 8, "F64"},   {DType::kF32, 4, "F32"},        {DType::kBF16, 2, "BF16"},
      {DType::kF16, 2, "F16"},   {DType::kI64, 8, "I64"},        {DType::kI32, 4, "I32"},
      {DType::kI16, 2, "I16"},   {DType::kI8, 1, "I8"},          {DType::kU8, 1, "U8"},
      {DType::kBool, 1, "BOOL"}, {DType::kF8E4M3, 1, "F8_E4M3"}, {DType::kF8E5M2, 1, "F8_E5M2"}};
  for (const auto& c : cases) {
    EXPECT_EQ(dtype_size(c.t), c.size) << c.name;
    EXPECT_EQ(dtype_name(c.t), c.name);
    DType parsed = DType::kU8;
    ASSERT_TRUE(dtype_from_name(c.name, parsed)) << c.name;
    EXPECT_EQ(parsed, c.t);
  }
  DType unchanged = DType::kI16;
  EXPECT_FALSE(dtype_from_name("f32", unchanged));  // names are case-sensitive
  EXPECT_FALSE(dtype_from_name("FLOAT", unchanged));
  EXPECT_FALSE(dtype_from_name("", unchanged));
  EXPECT_EQ(unchanged, DType::kI16);
}

TEST(BF16, ExactValuesRoundTrip) {
  for (const float f : {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 3.0e38f, 1.0e-38f}) {
    const float back = bf16_to_float(float_to_bf16(f));
    if (bits_of(f) & 0xffffu) continue;  // not representable
    EXPECT_EQ(bits_of(back), bits_of(f)) << f;
  }
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.0f).bits, 0xc000);
  EXPECT_EQ(float_to_bf16(-0.0f).bits, 0x8000);
}

TEST(BF16, RoundsToNearestTiesToEven) {
  // Near 1 bf16 steps by 2^-7. 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7 (odd).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  // Just above and below a tie go to the nearer value.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f + 0x1p-23f)), 1.0f + 0x1p-7f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * 0x1p-8f - 0x1p-23f)), 1.0f + 0x1p-7f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-(1.0f + 0x1p-8f))), -1.0f);
  // The largest float rounds up past the largest bf16: infinity.
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()).bits, 0x7f80);
  // Carry into the exponent: just below 2 rounds to 2.
  EXPECT_EQ(bf16_to_float(float_to_bf16(2.0f - 0x1p-20f)), 2.0f);
}

TEST(BF16, InfinityAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(float_to_bf16(inf).bits, 0x7f80);
  EXPECT_EQ(float_to_bf16(-inf).bits, 0xff80);
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(inf))));
  // Quiet NaN, and a signalling NaN whose payload lies only in the low bits (truncation alone
  // would turn it into infinity).
  for (const uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const bf16 b = float_to_bf16(float_from_bits(nan_bits));
    EXPECT_TRUE(std::isnan(bf16_to_float(b))) << std::hex << nan_bits;
    EXPECT_EQ(b.bits & 0x8000u, (nan_bits >> 16) & 0x8000u);
  }
}

TEST(BF16, FromDoubleRoundsOnce) {
  // 1 + 2^-8 + 2^-30 lies just above a tie; rounding through float32 first would land exactly on
  // the tie and then go to even (1.0). One rounding gives 1 + 2^-7.
  EXPECT_EQ(bf16_to_float(double_to_bf16(1.0 + 0x1p-8 + 0x1p-30)), 1.0f + 0x1p-7f);
  EXPECT_EQ(bf16_to_float(double_to_bf16(1.0 + 0x1p-8)), 1.0f);
  EXPECT_EQ(bf16_to_float(double_to_bf16(-3.140625)), -3.140625f);
  EXPECT_EQ(double_to_bf16(1e300).bits, 0x7f80);
  EXPECT_EQ(double_to_bf16(-1e300).bits, 0xff80);
  EXPECT_EQ(double_to_bf16(1e-300).bits, 0x0000);
  EXPECT_EQ(double_to_bf16(-0.0).bits, 0x8000);
  EXPECT_TRUE(std::isnan(bf16_to_float(double_to_bf16(std::nan("")))));
  // Agrees with float_to_bf16 wherever the double is a float.
  std::mt19937 rng(7);
  for (int i = 0; i < 100000; ++i) {
    const float f = float_from_bits(static_cast<uint32_t>(rng()));
    if (std::isnan(f)) continue;
    ASSERT_EQ(double_to_bf16(f).bits, float_to_bf16(f).bits) << f;
  }
}

TEST(F16, SpecificValues) {
  EXPECT_EQ(float_to_f16(0.0f), 0x0000);
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);   // largest finite
  EXPECT_EQ(float_to_f16(65519.99f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);   // the tie rounds to even: infinity
  EXPECT_EQ(float_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(float_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_f16(0x1p-14f), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_f16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);  // half of it: tie to even (zero)
  EXPECT_EQ(float_to_f16(0x1p-25f * 1.0001f), 0x0001);
  EXPECT_EQ(float_to_f16(3 * 0x1p-25f), 0x0002);  // 1.5 subnormal steps: tie to even (2)
  EXPECT_EQ(float_to_f16(-0x1p-26f), 0x8000);
  EXPECT_EQ(float_to_f16(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up into the normal range
  EXPECT_EQ(f16_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_float(0x03ff), 1023 * 0x1p-24f);
  EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_float(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isinf(f16_to_float(0x7c00)));
  EXPECT_TRUE(std::isnan(f16_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_float(0x7c01)));
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::quiet_NaN()) & 0x7e00u, 0x7e00u);
  EXPECT_EQ(float_to_f16(float_from_bits(0x7f800001u)) & 0x7e00u, 0x7e00u);  // stays a NaN
}

// Every half: decoding is exact and encoding the decoded value gives the same bits.
TEST(F16, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float f = f16_to_float(bits);
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    ASSERT_EQ(std::isnan(f), nan) << std::hex << h;
    if (nan) continue;
    ASSERT_EQ(float_to_f16(f), bits) << std::hex << h;
    ASSERT_EQ(double_to_f16(static_cast<double>(f)), bits) << std::hex << h;
#ifdef __FLT16_MAX__
    _Float16 x;
    std::memcpy(&x, &bits, 2);
    ASSERT_EQ(bits_of(static_cast<float>(x)), bits_of(f)) << std::hex << h;
#endif
  }
}

// Between every two adjacent positive halves: the midpoint goes to the even one, anything
// nearer either side goes to that side.
TEST(F16, MidpointsRoundToEven) {
  for (uint16_t h = 0; h < 0x7bff; ++h) {
    const float lo = f16_to_float(h), hi = f16_to_float(static_cast<uint16_t>(h + 1));
    const float mid = (lo + hi) / 2;  // exact: halves have at most 11 significant bits
    const uint16_t even = (h & 1u) ? static_cast<uint16_t>(h + 1) : h;
    ASSERT_EQ(float_to_f16(mid), even) << std::hex << h;
    ASSERT_EQ(float_to_f16(-mid), even | 0x8000u) << std::hex << h;
    ASSERT_EQ(float_to_f16(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(float_to_f16(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
    // A double just above or below the tie, closer than any float: still one rounding.
    const double dmid = static_cast<double>(mid);
    ASSERT_EQ(double_to_f16(dmid + dmid * 0x1p-40), h + 1) << std::hex << h;
    ASSERT_EQ(double_to_f16(dmid - dmid * 0x1p-40), h) << std::hex << h;
  }
}

#ifdef __FLT16_MAX__
// The compiler's own conversions (libgcc soft-float, IEEE round-to-nearest-even) as an oracle.
TEST(F16, AgreesWithCompilerFloat16OnRandomInputs) {
  std::mt19937_64 rng(11);
  for (int i = 0; i < 1000000; ++i) {
    const uint64_t r = rng();
    // Bias exponents into and around the half range so most inputs are interesting.
    uint32_t u = static_cast<uint32_t>(r);
    if (r >> 63) u = (u & 0x807fffffu) | (static_cast<uint32_t>(96 + (r >> 40) % 48) << 23);
    const float f = float_from_bits(u);
    if (std::isnan(f)) continue;
    const _Float16 x = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &x, 2);
    ASSERT_EQ(float_to_f16(f), want) << std::hexfloat << f;
    const double d = static_cast<double>(f) * (1.0 + static_cast<double>(r & 0xffff) * 0x1p-45);
    const _Float16 y = static_cast<_Float16>(d);
    std::memcpy(&want, &y, 2);
    ASSERT_EQ(double_to_f16(d), want) << std::hexfloat << d;
  }
}
#endif

}  // namespace
}  // namespace engram
