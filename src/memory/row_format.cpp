#include "engram/memory/row_format.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "engram/tensor/dtype.h"
#include "engram/util/error.h"

namespace engram::memory {
namespace {

static_assert(std::endian::native == std::endian::little,
              "row formats are little-endian and copied as such");

constexpr float kE4M3Max = 448.0f;
constexpr float kE4M3MinNormal = 0.015625f;  // 2^-6
constexpr int kInt8Max = 127;

uint32_t float_bits(float f) {
  return std::bit_cast<uint32_t>(f);
}
float bits_float(uint32_t u) {
  return std::bit_cast<float>(u);
}

// The value of a code, built from its fields. Normal codes map onto float32 fields directly
// (exponent e − 7 + 127, mantissa m << 20); subnormals are m · 2^-9.
std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (uint32_t c = 0; c < 256; ++c) {
    const uint32_t sign = (c & 0x80u) << 24, e = (c >> 3) & 15u, m = c & 7u;
    float v;
    if (e == 15 && m == 7) {
      v = std::numeric_limits<float>::quiet_NaN();
    } else if (e == 0) {
      v = static_cast<float>(m) * 0.001953125f;  // 2^-9
    } else {
      v = bits_float(((e + 120u) << 23) | (m << 20));
    }
    t[c] = bits_float(float_bits(v) | sign);
  }
  return t;
}

const std::array<float, 256> kE4M3 = make_e4m3_table();

// Round to nearest, ties to even, of a finite non-negative float below 2^23 (independent of the
// floating-point rounding mode).
float round_half_even_nonneg(float v) {
  const float fl = std::floor(v);
  const float r = v - fl;  // exact
  if (r > 0.5f || (r == 0.5f && std::fmod(fl, 2.0f) != 0.0f)) return fl + 1.0f;
  return fl;
}

float group_amax(const float* x) {
  float amax = 0.0f;
  for (int64_t i = 0; i < kQuantGroupSize; ++i) {
    const float a = std::fabs(x[i]);
    if (a <= std::numeric_limits<float>::max() && a > amax) amax = a;  // skips NaN and Inf
  }
  return amax;
}

void encode_fp8_row(const float* x, int64_t width, uint8_t* out) {
  uint8_t* scales = out + width;
  for (int64_t g = 0; g < width / kQuantGroupSize; ++g) {
    const float* xg = x + g * kQuantGroupSize;
    const uint8_t s = fp8_scale_byte(group_amax(xg));
    scales[g] = s;
    // 2^-(s − 127) is a float for every s the encoder picks (s ≤ 254 gives 2^-127, subnormal
    // but exact), and x · 2^-k is exact unless it underflows far below e4m3's smallest step.
    const float inv = std::ldexp(1.0f, 127 - static_cast<int>(s));
    for (int64_t i = 0; i < kQuantGroupSize; ++i)
      out[g * kQuantGroupSize + i] = float_to_e4m3(xg[i] * inv);
  }
}

void encode_int8_row(const float* x, int64_t width, uint8_t* out) {
  uint8_t* scales = out + width;
  for (int64_t g = 0; g < width / kQuantGroupSize; ++g) {
    const float* xg = x + g * kQuantGroupSize;
    const float scale = group_amax(xg) / static_cast<float>(kInt8Max);
    std::memcpy(scales + 4 * g, &scale, 4);
    for (int64_t i = 0; i < kQuantGroupSize; ++i) {
      const float v = xg[i];
      int q = 0;
      if (std::isnan(v) || scale == 0.0f) {
        q = 0;
      } else {
        const float r = round_half_even_nonneg(std::min(std::fabs(v) / scale, 128.0f));
        q = std::min(static_cast<int>(r), kInt8Max);
        if (v < 0) q = -q;
      }
      out[g * kQuantGroupSize + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  }
}

template <class Out>
void decode_row(RowFormat format, const uint8_t* in, int64_t width, Out* out) {
  switch (format) {
    case RowFormat::kF32:
      for (int64_t j = 0; j < width; ++j) {
        float v;
        std::memcpy(&v, in + 4 * j, 4);
        out[j] = static_cast<Out>(v);
      }
      return;
    case RowFormat::kBF16:
      for (int64_t j = 0; j < width; ++j) {
        bf16 v;
        std::memcpy(&v.bits, in + 2 * j, 2);
        out[j] = static_cast<Out>(bf16_to_float(v));
      }
      return;
    case RowFormat::kFP8: {
      const uint8_t* scales = in + width;
      for (int64_t g = 0; g < width / kQuantGroupSize; ++g) {
        // Both factors are powers of two times 4-bit integers: the product is exact in double,
        // and in float too (it stays above 2^-149), unless it passes FLT_MAX (only for values
        // that were within 2^-4 of it): then float gives ±Inf.
        const Out scale = static_cast<Out>(ue8m0_to_float(scales[g]));
        for (int64_t i = 0; i < kQuantGroupSize; ++i) {
          const int64_t j = g * kQuantGroupSize + i;
          out[j] = static_cast<Out>(kE4M3[in[j]]) * scale;
        }
      }
      return;
    }
    case RowFormat::kINT8: {
      const uint8_t* scales = in + width;
      for (int64_t g = 0; g < width / kQuantGroupSize; ++g) {
        float s;
        std::memcpy(&s, scales + 4 * g, 4);
        const Out scale = static_cast<Out>(s);
        for (int64_t i = 0; i < kQuantGroupSize; ++i) {
          const int64_t j = g * kQuantGroupSize + i;
          out[j] = static_cast<Out>(static_cast<int8_t>(in[j])) * scale;
        }
      }
      return;
    }
  }
}

template <class Out>
void decode_rows_as(RowFormat format, const uint8_t* in, int64_t rows, int64_t width, Out* out,
                    int64_t out_stride) {
  const int64_t bytes = row_bytes(format, width);
  if (rows < 0) throw InputError(error_message("decode_rows", "negative row count"));
  for (int64_t r = 0; r < rows; ++r)
    decode_row(format, in + r * bytes, width, out + r * out_stride);
}

}  // namespace

std::string_view format_name(RowFormat format) {
  switch (format) {
    case RowFormat::kF32:
      return "f32";
    case RowFormat::kBF16:
      return "bf16";
    case RowFormat::kFP8:
      return "fp8";
    case RowFormat::kINT8:
      return "int8";
  }
  return "unknown";
}

std::optional<RowFormat> format_from_name(std::string_view name) {
  for (RowFormat f : {RowFormat::kF32, RowFormat::kBF16, RowFormat::kFP8, RowFormat::kINT8})
    if (format_name(f) == name) return f;
  return std::nullopt;
}

bool is_known_format(uint32_t code) {
  return code <= static_cast<uint32_t>(RowFormat::kINT8);
}

void check_row_width(RowFormat format, int64_t width) {
  const std::string where = "row format " + std::string(format_name(format));
  if (width < 1 || width > kMaxRowWidth) {
    throw ConfigError(error_message(where, "width " + std::to_string(width) +
                                               " is out of range [1, " +
                                               std::to_string(kMaxRowWidth) + "]"));
  }
  if ((format == RowFormat::kFP8 || format == RowFormat::kINT8) && width % kQuantGroupSize != 0) {
    throw ConfigError(
        error_message(where, "width " + std::to_string(width) + " is not a multiple of " +
                                 std::to_string(kQuantGroupSize) + " (one scale per 32 values)"));
  }
}

int64_t row_bytes(RowFormat format, int64_t width) {
  check_row_width(format, width);
  switch (format) {
    case RowFormat::kF32:
      return 4 * width;
    case RowFormat::kBF16:
      return 2 * width;
    case RowFormat::kFP8:
      return width + width / kQuantGroupSize;
    case RowFormat::kINT8:
      return width + 4 * (width / kQuantGroupSize);
  }
  throw ConfigError(error_message(
      "row format", "unknown format code " + std::to_string(static_cast<uint32_t>(format))));
}

void encode_rows(RowFormat format, const float* in, int64_t rows, int64_t width, uint8_t* out) {
  const int64_t bytes = row_bytes(format, width);
  if (rows < 0) throw InputError(error_message("encode_rows", "negative row count"));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = in + r * width;
    uint8_t* o = out + r * bytes;
    switch (format) {
      case RowFormat::kF32:
        std::memcpy(o, x, static_cast<size_t>(4 * width));
        break;
      case RowFormat::kBF16:
        for (int64_t j = 0; j < width; ++j) {
          const bf16 v = float_to_bf16(x[j]);
          std::memcpy(o + 2 * j, &v.bits, 2);
        }
        break;
      case RowFormat::kFP8:
        encode_fp8_row(x, width, o);
        break;
      case RowFormat::kINT8:
        encode_int8_row(x, width, o);
        break;
    }
  }
}

void decode_rows(RowFormat format, const uint8_t* in, int64_t rows, int64_t width, float* out,
                 int64_t out_stride) {
  decode_rows_as(format, in, rows, width, out, out_stride);
}

void decode_rows(RowFormat format, const uint8_t* in, int64_t rows, int64_t width, double* out,
                 int64_t out_stride) {
  decode_rows_as(format, in, rows, width, out, out_stride);
}

uint8_t float_to_e4m3(float x) {
  const uint32_t u = float_bits(x);
  const auto sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);  // NaN
  const float af = bits_float(a);
  // 448 is the largest code; everything above rounds to it or past it (464, the midpoint to the
  // missing 480, rounds to even, i.e. 448), and Inf saturates as well.
  if (af >= kE4M3Max) return static_cast<uint8_t>(sign | 0x7eu);
  if (af < kE4M3MinNormal) {
    // Subnormal range: a multiple of 2^-9; a result of 8 is 2^-6, whose code is also 8.
    const float q = round_half_even_nonneg(af * 512.0f);
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(q));
  }
  // Keep 3 of float32's 23 mantissa bits, rounding to nearest even; a carry moves into the
  // exponent, which is what rounding up to the next binade means.
  a += 0x7ffffu + ((a >> 20) & 1u);
  const uint32_t e = (a >> 23) - 120u;  // float exponent − 127 + 7, in [1, 15]
  const uint32_t code = std::min((e << 3) | ((a >> 20) & 7u), 0x7eu);
  return static_cast<uint8_t>(sign | code);
}

float e4m3_to_float(uint8_t code) {
  return kE4M3[code];
}

uint8_t fp8_scale_byte(float amax) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 127;  // scale 1: any scale gives zeros
  int e = 0;
  std::frexp(amax, &e);  // amax = f · 2^e, f in [0.5, 1)
  // 448 · 2^(e−9) = 0.875 · 2^e, so k = e − 9 when f ≤ 0.875, else e − 8; exact in double.
  int k = e - 9;
  if (static_cast<double>(amax) > std::ldexp(448.0, k)) ++k;
  k = std::clamp(k, -127, 127);
  return static_cast<uint8_t>(k + 127);
}

float ue8m0_to_float(uint8_t byte) {
  if (byte == 255) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(byte) - 127);
}

}  // namespace engram::memory
