// How one table row of `width` values is stored: the unit of memory traffic of the memory tier.
//
//   format  bytes per row          layout (little-endian)
//   f32     4·width                width float32
//   bf16    2·width                width bfloat16 (round to nearest even, NaN stays NaN)
//   fp8     width + width/32       width FP8 E4M3FN codes, then width/32 UE8M0 scale bytes
//   int8    width + 4·width/32     width int8 codes, then width/32 float32 scales
//
// fp8 is DeepSeek-V4.1's layout (ENGRAM_SPEC §5; width 256 → 264 bytes). Values are quantized in
// groups of 32 consecutive values, each with its own scale, so fp8 and int8 need a width that is
// a multiple of 32. docs/memory_tier.md gives the rules and error bounds in full:
//
// fp8 (OCP FP8 E4M3 "FN": sign, 4 exponent bits with bias 7, 3 mantissa bits, subnormals, no
// infinities, largest finite ±448, NaN = S.1111.111). A group with largest finite |x| = amax
// gets the scale 2^k with k = ceil(log2(amax / 448)) (the smallest power of two that brings the
// group into ±448; k = 0 when amax is 0), clamped to [-127, 127] and stored as the UE8M0 byte
// k + 127. Each value becomes e4m3(x / 2^k), rounded to nearest even. NaN gives the NaN code
// (sign kept), ±Inf saturates to ±448 (and does not count towards amax). Decoding gives
// e4m3_value · 2^k exactly (a scale byte of 255, NaN in the OCP MX spec, decodes to NaN).
// Error: |x − x'| ≤ max(2^-4·|x|, 2^-10·2^k) for every finite x.
//
// int8 (symmetric). A group gets the float32 scale s = amax / 127 (0 when amax is 0) and each
// value the code round_half_even(x / s) clamped to [−127, 127]; ±Inf saturates to ±127 and NaN
// becomes 0 (int8 has no NaN). Decoding gives q · s (exact in double, rounded once in float).
// Error: |x − x'| ≤ s/2, up to float rounding.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace engram::memory {

// The numbering is the format code in .engt files: never renumber.
enum class RowFormat : uint32_t { kF32 = 0, kBF16 = 1, kFP8 = 2, kINT8 = 3 };

// Values per scale in fp8 and int8 rows.
inline constexpr int64_t kQuantGroupSize = 32;
// The widest row accepted (2^24 values).
inline constexpr int64_t kMaxRowWidth = int64_t{1} << 24;

// "f32", "bf16", "fp8", "int8".
std::string_view format_name(RowFormat format);
// The inverse of format_name; nullopt for any other string.
std::optional<RowFormat> format_from_name(std::string_view name);
// True for the four formats above (e.g. to check a code read from a file).
bool is_known_format(uint32_t code);

// Throws ConfigError naming the format and width unless 1 ≤ width ≤ kMaxRowWidth and, for fp8
// and int8, width is a multiple of kQuantGroupSize.
void check_row_width(RowFormat format, int64_t width);

// Bytes of one encoded row. Checks the width (check_row_width).
int64_t row_bytes(RowFormat format, int64_t width);

// in is (rows, width) float32, contiguous; out receives rows · row_bytes(format, width) bytes.
void encode_rows(RowFormat format, const float* in, int64_t rows, int64_t width, uint8_t* out);

// in holds `rows` encoded rows back to back; out[i * out_stride + j] = value j of row i. The
// float and double versions agree: each double is exact and the float is that value rounded
// once (they are equal except for int8, where q · s may not be a float).
void decode_rows(RowFormat format, const uint8_t* in, int64_t rows, int64_t width, float* out,
                 int64_t out_stride);
void decode_rows(RowFormat format, const uint8_t* in, int64_t rows, int64_t width, double* out,
                 int64_t out_stride);

// FP8 E4M3FN, one value: round to nearest even, saturating to ±448; NaN → 0x7F/0xFF.
uint8_t float_to_e4m3(float x);
// Exact.
float e4m3_to_float(uint8_t code);

// The UE8M0 scale byte the fp8 encoder picks for a group whose largest finite |x| is amax ≥ 0.
uint8_t fp8_scale_byte(float amax);
// 2^(byte − 127); NaN for 255.
float ue8m0_to_float(uint8_t byte);

}  // namespace engram::memory
