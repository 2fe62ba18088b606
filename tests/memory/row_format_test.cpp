// Row formats: the FP8 E4M3FN code table (all 256 codes against a formula of their own), its
// rounding (ties to even, subnormals, saturation, NaN and Inf) against a brute-force nearest-code
// search, the UE8M0 scale rule, the int8 rule, the byte layouts (264 bytes for fp8 width 256),
// and each format's round-trip error bound on random rows.
#include "engram/memory/row_format.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engram/tensor/dtype.h"
#include "engram/util/error.h"

namespace engram::memory {
namespace {

constexpr RowFormat kAllFormats[] = {RowFormat::kF32, RowFormat::kBF16, RowFormat::kFP8,
                                     RowFormat::kINT8};

// E4M3FN by its definition: (−1)^s · 2^(e−7) · (1 + m/8), or 2^-6 · m/8 when e = 0;
// S.1111.111 is NaN.
double e4m3_reference(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

bool is_nan_code(int code) {
  return (code & 0x7f) == 0x7f;
}

// The nearest finite code to x by exhaustive search, ties to the even code; |x| beyond 448
// saturates. (-0 and +0 are told apart by the sign of x.)
uint8_t nearest_code_reference(float x) {
  const double ax = std::fabs(static_cast<double>(x));
  int best = 0;
  double best_err = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7e; ++c) {
    const double err = std::fabs(e4m3_reference(c) - ax);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

uint32_t bits(float f) {
  return std::bit_cast<uint32_t>(f);
}

std::vector<float> random_values(size_t n, unsigned seed, float spread = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(E4M3, DecodeTableMatchesTheDefinitionForAll256Codes) {
  for (int c = 0; c < 256; ++c) {
    const double want = e4m3_reference(c);
    const float got = e4m3_to_float(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << "code " << c;
      EXPECT_EQ(std::signbit(got), c >= 0x80) << "code " << c;
    }
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_float(0xfe), -448.0f);
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_float(0x01), 0.001953125f);  // 2^-9, the smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x07), 0.013671875f);  // 7 · 2^-9, the largest subnormal
  EXPECT_EQ(e4m3_to_float(0x08), 0.015625f);     // 2^-6, the smallest normal
  EXPECT_EQ(bits(e4m3_to_float(0x80)), bits(-0.0f));
  int nans = 0;
  for (int c = 0; c < 256; ++c) nans += std::isnan(e4m3_to_float(static_cast<uint8_t>(c)));
  EXPECT_EQ(nans, 2);  // 0x7f and 0xff only: no infinities
}

TEST(E4M3, EncodeOfEveryFiniteCodeGivesItBack) {
  for (int c = 0; c < 256; ++c) {
    if (is_nan_code(c)) continue;
    EXPECT_EQ(float_to_e4m3(e4m3_to_float(static_cast<uint8_t>(c))), c) << "code " << c;
  }
}

TEST(E4M3, MidpointsRoundToTheEvenCode) {
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = e4m3_to_float(static_cast<uint8_t>(c));
    const float hi = e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;  // exact in float
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(lo) + hi) / 2);
    const int even = (c % 2 == 0) ? c : c + 1;
    EXPECT_EQ(float_to_e4m3(mid), even) << "between codes " << c << " and " << c + 1;
    EXPECT_EQ(float_to_e4m3(-mid), even | 0x80) << "between codes " << c << " and " << c + 1;
    EXPECT_EQ(float_to_e4m3(std::nextafter(mid, 0.0f)), c);
    EXPECT_EQ(float_to_e4m3(std::nextafter(mid, 1000.0f)), c + 1);
  }
  // Examples: 1.0625 lies halfway between 1 (0x38) and 1.125 (0x39); 17 between 16 (0x58) and
  // 18 (0x59).
  EXPECT_EQ(float_to_e4m3(1.0625f), 0x38);
  EXPECT_EQ(float_to_e4m3(1.1875f), 0x3a);  // between 1.125 (odd) and 1.25 (even)
  EXPECT_EQ(float_to_e4m3(17.0f), 0x58);
  EXPECT_EQ(float_to_e4m3(19.0f), 0x5a);
}

TEST(E4M3, SubnormalsAndZero) {
  EXPECT_EQ(float_to_e4m3(0.0f), 0x00);
  EXPECT_EQ(float_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.0f, -10)), 0x00);  // halfway to 2^-9: even is 0
  EXPECT_EQ(float_to_e4m3(std::ldexp(3.0f, -10)), 0x02);  // halfway between 1 and 2 steps
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.1f, -10)), 0x01);
  EXPECT_EQ(float_to_e4m3(std::ldexp(15.0f, -10)), 0x08);  // 7.5 steps → 8 = 2^-6 (normal)
  EXPECT_EQ(float_to_e4m3(1e-30f), 0x00);
  EXPECT_EQ(float_to_e4m3(-1e-30f), 0x80);
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(float_to_e4m3(std::ldexp(5.0f, -9)), 0x05);
}

TEST(E4M3, SaturatesAndKeepsNaN) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (float x : {448.0f, 449.0f, 463.9f, 464.0f, 465.0f, 480.0f, 1e6f, 3.4e38f, kInf}) {
    EXPECT_EQ(float_to_e4m3(x), 0x7e) << x;
    EXPECT_EQ(float_to_e4m3(-x), 0xfe) << x;
  }
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7f);
  EXPECT_EQ(float_to_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0xff);
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::signaling_NaN()), 0x7f);
}

TEST(E4M3, EncodeMatchesTheNearestCodeSearch) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> wide(-500.0f, 500.0f);
  std::uniform_int_distribution<int> exponent(-14, 9);
  std::uniform_real_distribution<float> unit(1.0f, 2.0f);
  for (int i = 0; i < 200000; ++i) {
    float x = (i % 2) ? wide(rng) : std::ldexp(unit(rng), exponent(rng));
    if (i % 3 == 0) x = -x;
    ASSERT_EQ(float_to_e4m3(x), nearest_code_reference(x)) << x;
  }
  // Random bit patterns: every finite float, tiny and huge.
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 100000; ++i) {
    const float x = std::bit_cast<float>(any(rng));
    if (!std::isfinite(x)) continue;
    ASSERT_EQ(float_to_e4m3(x), nearest_code_reference(x)) << x;
  }
}

// The smallest k with 448 · 2^k ≥ amax, by search.
int scale_exponent_reference(float amax) {
  int k = -200;
  while (std::ldexp(448.0, k) < amax) ++k;
  return std::max(k, -127);
}

TEST(UE8M0, ScaleIsTheSmallestPowerOfTwoThatFitsTheGroup) {
  EXPECT_EQ(fp8_scale_byte(448.0f), 127);  // 2^0
  EXPECT_EQ(fp8_scale_byte(448.001f), 128);
  EXPECT_EQ(fp8_scale_byte(224.0f), 126);
  EXPECT_EQ(fp8_scale_byte(1.0f), 127 - 8);  // 1 / 2^-8 = 256 ≤ 448, 1 / 2^-9 = 512 > 448
  EXPECT_EQ(fp8_scale_byte(0.0f), 127);      // an all-zero group: scale 1
  EXPECT_EQ(fp8_scale_byte(std::numeric_limits<float>::denorm_min()), 0);  // clamped to 2^-127
  EXPECT_EQ(fp8_scale_byte(std::numeric_limits<float>::max()), 127 + 120);
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> exponent(-140, 127);
  std::uniform_real_distribution<float> unit(1.0f, 2.0f);
  for (int i = 0; i < 20000; ++i) {
    const float amax = std::ldexp(unit(rng), exponent(rng));
    if (!std::isfinite(amax) || amax == 0) continue;
    ASSERT_EQ(fp8_scale_byte(amax), scale_exponent_reference(amax) + 127) << amax;
    // The same as DeepSeek's 2^ceil(log2(amax / 448)) away from the clamp.
    if (amax > 1e-30f) {
      ASSERT_EQ(fp8_scale_byte(amax) - 127,
                static_cast<int>(std::ceil(std::log2(static_cast<double>(amax) / 448.0))))
          << amax;
    }
  }
  EXPECT_EQ(ue8m0_to_float(127), 1.0f);
  EXPECT_EQ(ue8m0_to_float(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(ue8m0_to_float(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(ue8m0_to_float(255)));
}

TEST(RowFormat, NamesAndRowBytes) {
  for (RowFormat f : kAllFormats) EXPECT_EQ(format_from_name(format_name(f)), f);
  EXPECT_EQ(format_name(RowFormat::kFP8), "fp8");
  EXPECT_FALSE(format_from_name("fp16").has_value());
  EXPECT_FALSE(format_from_name("FP8").has_value());
  EXPECT_EQ(row_bytes(RowFormat::kF32, 256), 1024);
  EXPECT_EQ(row_bytes(RowFormat::kBF16, 256), 512);
  EXPECT_EQ(row_bytes(RowFormat::kFP8, 256), 264);  // DeepSeek-V4.1's row
  EXPECT_EQ(row_bytes(RowFormat::kINT8, 256), 288);
  EXPECT_EQ(row_bytes(RowFormat::kF32, 3), 12);
  EXPECT_EQ(row_bytes(RowFormat::kBF16, 5), 10);
  EXPECT_TRUE(is_known_format(3));
  EXPECT_FALSE(is_known_format(4));
}

TEST(RowFormat, WidthsTheFormatCannotHoldAreConfigErrors) {
  for (RowFormat f : {RowFormat::kFP8, RowFormat::kINT8}) {
    for (int64_t w : {1, 16, 33, 100, 255}) {
      try {
        row_bytes(f, w);
        ADD_FAILURE() << format_name(f) << " accepted width " << w;
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("width " + std::to_string(w)), std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find(format_name(f)), std::string::npos) << e.what();
      }
    }
  }
  for (RowFormat f : kAllFormats) {
    EXPECT_THROW(row_bytes(f, 0), ConfigError);
    EXPECT_THROW(row_bytes(f, -32), ConfigError);
    EXPECT_THROW(row_bytes(f, kMaxRowWidth + 32), ConfigError);
  }
  std::vector<float> x(33, 1.0f);
  std::vector<uint8_t> out(64);
  EXPECT_THROW(encode_rows(RowFormat::kFP8, x.data(), 1, 33, out.data()), ConfigError);
  std::vector<float> y(33);
  EXPECT_THROW(decode_rows(RowFormat::kINT8, out.data(), 1, 33, y.data(), 33), ConfigError);
}

TEST(RowFormat, Fp8LayoutIsCodesThenOneScaleBytePerGroup) {
  // Width 256: 8 groups whose amax is 448 · 2^(g − 4): scale bytes 123..130.
  std::vector<float> x(256);
  for (int g = 0; g < 8; ++g) {
    for (int i = 0; i < 32; ++i)
      x[g * 32 + i] = std::ldexp(448.0f * static_cast<float>(i + 1) / 32, g - 4);
  }
  std::vector<uint8_t> row(264, 0xaa);
  encode_rows(RowFormat::kFP8, x.data(), 1, 256, row.data());
  for (int g = 0; g < 8; ++g) {
    EXPECT_EQ(row[256 + g], 123 + g) << "group " << g;
    EXPECT_EQ(row[g * 32 + 31], 0x7e) << "group " << g;  // its amax maps to 448
    for (int i = 0; i < 32; ++i) {
      const float q = std::ldexp(x[g * 32 + i], 4 - g);
      EXPECT_EQ(row[g * 32 + i], float_to_e4m3(q));
    }
  }
  std::vector<float> back(256);
  decode_rows(RowFormat::kFP8, row.data(), 1, 256, back.data(), 256);
  for (int j = 0; j < 256; ++j) {
    EXPECT_EQ(back[j], std::ldexp(e4m3_to_float(row[j]), row[256 + j / 32] - 127)) << j;
  }
}

TEST(RowFormat, Int8LayoutIsCodesThenOneFloatScalePerGroup) {
  std::vector<float> x(64);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i) - 15.5f;  // amax 15.5 (the first)
  x[0] = -127.0f;                                                     // amax 127: scale 1
  for (int i = 32; i < 64; ++i) x[i] = 0.25f * static_cast<float>(i - 32);
  x[40] = 2.5f;  // with scale 1 below: halfway, to even
  std::vector<uint8_t> row(72);
  encode_rows(RowFormat::kINT8, x.data(), 1, 64, row.data());
  float s0, s1;
  std::memcpy(&s0, row.data() + 64, 4);
  std::memcpy(&s1, row.data() + 68, 4);
  EXPECT_EQ(s0, 1.0f);
  EXPECT_EQ(s1, 7.75f / 127.0f);
  EXPECT_EQ(static_cast<int8_t>(row[0]), -127);
  for (int i = 1; i < 32; ++i) {
    // x − 15.5 with scale 1: halves round to even.
    EXPECT_EQ(static_cast<int8_t>(row[i]), static_cast<int>(std::nearbyint(x[i]))) << i;
  }
  EXPECT_EQ(static_cast<int8_t>(row[63]), 127);
  // Ties to even when x / s is exactly k + 1/2: scale 1, values ±2.5, ±3.5.
  std::vector<float> t(32, 0.0f);
  t[0] = 127.0f;
  t[1] = 2.5f;
  t[2] = 3.5f;
  t[3] = -2.5f;
  t[4] = -3.5f;
  t[5] = 0.5f;
  encode_rows(RowFormat::kINT8, t.data(), 1, 32, row.data());
  EXPECT_EQ(static_cast<int8_t>(row[1]), 2);
  EXPECT_EQ(static_cast<int8_t>(row[2]), 4);
  EXPECT_EQ(static_cast<int8_t>(row[3]), -2);
  EXPECT_EQ(static_cast<int8_t>(row[4]), -4);
  EXPECT_EQ(static_cast<int8_t>(row[5]), 0);
}

TEST(RowFormat, ZeroGroups) {
  const std::vector<float> zeros(64, 0.0f);
  std::vector<uint8_t> fp8(66), int8(72);
  encode_rows(RowFormat::kFP8, zeros.data(), 1, 64, fp8.data());
  encode_rows(RowFormat::kINT8, zeros.data(), 1, 64, int8.data());
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(fp8[i], 0);
    EXPECT_EQ(int8[i], 0);
  }
  EXPECT_EQ(fp8[64], 127);
  float s;
  std::memcpy(&s, int8.data() + 64, 4);
  EXPECT_EQ(s, 0.0f);
  std::vector<float> back(64, 1.0f);
  decode_rows(RowFormat::kINT8, int8.data(), 1, 64, back.data(), 64);
  for (float v : back) EXPECT_EQ(v, 0.0f);
}

TEST(RowFormat, NaNAndInfinityInput) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x(32, 0.0f);
  x[0] = 3.0f;  // the finite amax
  x[1] = kNaN;
  x[2] = kInf;
  x[3] = -kInf;
  x[4] = 1.5f;
  std::vector<float> back(32);
  // fp8: NaN keeps its code, ±Inf saturates to ±448 · scale, and neither sets the scale.
  std::vector<uint8_t> fp8(33);
  encode_rows(RowFormat::kFP8, x.data(), 1, 32, fp8.data());
  EXPECT_EQ(fp8[32], fp8_scale_byte(3.0f));
  EXPECT_EQ(fp8[1], 0x7f);
  EXPECT_EQ(fp8[2], 0x7e);
  EXPECT_EQ(fp8[3], 0xfe);
  decode_rows(RowFormat::kFP8, fp8.data(), 1, 32, back.data(), 32);
  EXPECT_EQ(back[0], 3.0f);
  EXPECT_TRUE(std::isnan(back[1]));
  EXPECT_EQ(back[2], 448.0f * ue8m0_to_float(fp8[32]));
  EXPECT_EQ(back[3], -448.0f * ue8m0_to_float(fp8[32]));
  EXPECT_EQ(back[4], 1.5f);
  // int8: NaN becomes 0, ±Inf saturates to ±127 · scale; the scale comes from the finite values.
  std::vector<uint8_t> int8(36);
  encode_rows(RowFormat::kINT8, x.data(), 1, 32, int8.data());
  decode_rows(RowFormat::kINT8, int8.data(), 1, 32, back.data(), 32);
  EXPECT_EQ(back[0], 3.0f);
  EXPECT_EQ(back[1], 0.0f);
  EXPECT_EQ(back[2], 3.0f);
  EXPECT_EQ(back[3], -3.0f);
  // bf16 and f32 keep both.
  for (RowFormat f : {RowFormat::kF32, RowFormat::kBF16}) {
    std::vector<uint8_t> enc(static_cast<size_t>(row_bytes(f, 32)));
    encode_rows(f, x.data(), 1, 32, enc.data());
    decode_rows(f, enc.data(), 1, 32, back.data(), 32);
    EXPECT_TRUE(std::isnan(back[1])) << format_name(f);
    EXPECT_EQ(back[2], kInf) << format_name(f);
    EXPECT_EQ(back[3], -kInf) << format_name(f);
  }
  // An all-NaN/Inf group: scale 1 (fp8) or 0 (int8).
  std::vector<float> bad(32, kInf);
  bad[5] = kNaN;
  encode_rows(RowFormat::kFP8, bad.data(), 1, 32, fp8.data());
  EXPECT_EQ(fp8[32], 127);
  EXPECT_EQ(fp8[0], 0x7e);
  EXPECT_EQ(fp8[5], 0x7f);
}

// Bounds: fp8 |x − x'| ≤ max(2^-4 |x|, 2^-10 · scale); int8 ≤ scale / 2 (plus float rounding);
// bf16 ≤ 2^-8 |x| (8 significant bits: half a unit in the last place is at most 2^-8 of the
// value); f32 exact.
TEST(RowFormat, RoundTripErrorBounds) {
  const int64_t rows = 64, width = 256;
  for (float spread : {1e-30f, 1e-6f, 0.02f, 1.0f, 300.0f, 1e30f}) {
    std::vector<float> x = random_values(static_cast<size_t>(rows * width), 11, spread);
    // Some groups with mixed magnitudes, exact zeros and a lone large value.
    for (int64_t j = 0; j < width; j += 7) x[static_cast<size_t>(j)] *= 1e-3f;
    for (int64_t j = 0; j < width; j += 13) x[static_cast<size_t>(width + j)] = 0.0f;
    x[static_cast<size_t>(2 * width + 5)] = 1000.0f * spread;
    for (RowFormat f : kAllFormats) {
      const int64_t rb = row_bytes(f, width);
      std::vector<uint8_t> enc(static_cast<size_t>(rows * rb));
      encode_rows(f, x.data(), rows, width, enc.data());
      std::vector<float> y(static_cast<size_t>(rows * width));
      decode_rows(f, enc.data(), rows, width, y.data(), width);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < width; ++j) {
          const size_t i = static_cast<size_t>(r * width + j);
          const double err = std::fabs(static_cast<double>(x[i]) - y[i]);
          const double ax = std::fabs(static_cast<double>(x[i]));
          double bound = 0;
          const uint8_t* scales = enc.data() + r * rb + width;
          switch (f) {
            case RowFormat::kF32:
              bound = 0;
              break;
            case RowFormat::kBF16:
              bound = std::ldexp(ax, -8);
              break;
            case RowFormat::kFP8:
              bound =
                  std::max(std::ldexp(ax, -4),
                           std::ldexp(static_cast<double>(ue8m0_to_float(scales[j / 32])), -10));
              break;
            case RowFormat::kINT8: {
              float s;
              std::memcpy(&s, scales + 4 * (j / 32), 4);
              bound = s * (0.5 + std::ldexp(1.0, -20)) + std::ldexp(ax, -23);
              break;
            }
          }
          ASSERT_LE(err, bound) << format_name(f) << " spread " << spread << " row " << r << " col "
                                << j << " x " << x[i] << " got " << y[i];
        }
      }
    }
  }
}

TEST(RowFormat, DoubleDecodeIsExactAndRoundsToTheFloatDecode) {
  const int64_t rows = 8, width = 96;
  const std::vector<float> x = random_values(static_cast<size_t>(rows * width), 5, 3.0f);
  for (RowFormat f : kAllFormats) {
    std::vector<uint8_t> enc(static_cast<size_t>(rows * row_bytes(f, width)));
    encode_rows(f, x.data(), rows, width, enc.data());
    const int64_t stride = width + 5;  // out_stride > width: the gaps stay untouched
    std::vector<float> yf(static_cast<size_t>(rows * stride), -7.0f);
    std::vector<double> yd(static_cast<size_t>(rows * stride), -7.0);
    decode_rows(f, enc.data(), rows, width, yf.data(), stride);
    decode_rows(f, enc.data(), rows, width, yd.data(), stride);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < stride; ++j) {
        const size_t i = static_cast<size_t>(r * stride + j);
        if (j >= width) {
          EXPECT_EQ(yf[i], -7.0f);
          EXPECT_EQ(yd[i], -7.0);
          continue;
        }
        EXPECT_EQ(static_cast<float>(yd[i]), yf[i]) << format_name(f) << " " << r << "," << j;
        if (f == RowFormat::kINT8) {
          const int64_t rb = row_bytes(f, width);
          float s;
          std::memcpy(&s, enc.data() + r * rb + width + 4 * (j / 32), 4);
          EXPECT_EQ(yd[i], static_cast<int8_t>(enc[static_cast<size_t>(r * rb + j)]) *
                               static_cast<double>(s));
        }
      }
    }
  }
}

TEST(RowFormat, Bf16IsRoundToNearestEven) {
  const std::vector<float> x = random_values(64, 9);
  std::vector<uint8_t> enc(128);
  encode_rows(RowFormat::kBF16, x.data(), 1, 64, enc.data());
  for (size_t j = 0; j < 64; ++j) {
    uint16_t b;
    std::memcpy(&b, enc.data() + 2 * j, 2);
    EXPECT_EQ(b, float_to_bf16(x[j]).bits);
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1).
  const float tie[1] = {1.00390625f};
  encode_rows(RowFormat::kBF16, tie, 1, 1, enc.data());
  EXPECT_EQ(enc[0] | (enc[1] << 8), 0x3f80);
}

}  // namespace
}  // namespace engram::memory
