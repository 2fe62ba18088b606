// Element types of tensors, and bfloat16.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace engram {

enum class DType : uint8_t {
  kF64,
  kF32,
  kBF16,
  kF16,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
  kF8E4M3,
  kF8E5M2
};

// Bytes per element.
size_t dtype_size(DType t);
// The safetensors spelling: "F64", "F32", "BF16", "F16", "I64", "I32", "I16", "I8", "U8",
// "BOOL", "F8_E4M3", "F8_E5M2".
std::string_view dtype_name(DType t);
// Parses a safetensors dtype name; false if unknown.
bool dtype_from_name(std::string_view name, DType& out);

// bfloat16: the high half of an IEEE float32.
struct bf16 {
  uint16_t bits = 0;
};

inline float bf16_to_float(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest, ties to even (NaN stays NaN).
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// Rounds a float64 straight to bfloat16 (one rounding, not via float32): ties to even, NaN
// stays NaN, overflow gives infinity.
bf16 double_to_bf16(double d);

// IEEE binary16 ("F16") as raw bits: conversions from float and double round once to nearest,
// ties to even (subnormals included, overflow gives infinity, NaN stays a quiet NaN);
// f16_to_float is exact.
uint16_t float_to_f16(float f);
uint16_t double_to_f16(double d);
float f16_to_float(uint16_t bits);

}  // namespace engram
