#include "engram/tensor/dtype.h"

#include <cassert>

namespace engram {
namespace {

struct DTypeInfo {
  DType type;
  size_t size;
  std::string_view name;
};

// In enum order, so kInfo[static_cast<size_t>(t)] describes t.
constexpr DTypeInfo kInfo[] = {
    {DType::kF64, 8, "F64"},   {DType::kF32, 4, "F32"},        {DType::kBF16, 2, "BF16"},
    {DType::kF16, 2, "F16"},   {DType::kI64, 8, "I64"},        {DType::kI32, 4, "I32"},
    {DType::kI16, 2, "I16"},   {DType::kI8, 1, "I8"},          {DType::kU8, 1, "U8"},
    {DType::kBool, 1, "BOOL"}, {DType::kF8E4M3, 1, "F8_E4M3"}, {DType::kF8E5M2, 1, "F8_E5M2"},
};
constexpr size_t kCount = sizeof(kInfo) / sizeof(kInfo[0]);

constexpr bool info_in_enum_order() {
  for (size_t i = 0; i < kCount; ++i) {
    if (static_cast<size_t>(kInfo[i].type) != i) return false;
  }
  return true;
}
static_assert(info_in_enum_order());

const DTypeInfo& info(DType t) {
  const auto i = static_cast<size_t>(t);
  assert(i < kCount);
  return kInfo[i < kCount ? i : 0];
}

// Rounds a finite or infinite double to a binary format with `exp_bits` exponent bits and
// `man_bits` stored mantissa bits (IEEE layout, with subnormals), once, to nearest, ties to
// even. Returns the bits without the sign. Used for F16 (5, 10) and BF16 (8, 7).
uint32_t round_double_to_bits(uint64_t abs_bits, int exp_bits, int man_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const uint32_t inf_bits = ((1u << exp_bits) - 1u) << man_bits;
  const int e_field = static_cast<int>(abs_bits >> 52);
  if (e_field == 0x7ff) return inf_bits;  // infinity (NaN is handled by the callers)
  if (e_field == 0) return 0;             // double subnormals are far below either format's range
  const int e = e_field - 1023;
  if (e > bias) return inf_bits;  // at least 2^(emax+1): overflow
  const uint64_t sig = (abs_bits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
  const int emin = 1 - bias;
  int shift = 52 - man_bits;
  if (e < emin) shift += emin - e;  // lands in the subnormal range
  if (shift > 54) return 0;         // below half the smallest subnormal
  uint64_t q = sig >> shift;
  const uint64_t rem = sig & ((uint64_t{1} << shift) - 1);
  const uint64_t half = uint64_t{1} << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  if (e < emin) return static_cast<uint32_t>(q);  // q == 1 << man_bits is the smallest normal
  // q carries the implicit bit, which adds one to the exponent field; a carry out of the
  // mantissa moves to the next binade and, past the largest finite value, to infinity.
  return static_cast<uint32_t>((static_cast<uint64_t>(e + bias - 1) << man_bits) + q);
}

uint64_t double_bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

}  // namespace

size_t dtype_size(DType t) {
  return info(t).size;
}

std::string_view dtype_name(DType t) {
  return info(t).name;
}

bool dtype_from_name(std::string_view name, DType& out) {
  for (const auto& i : kInfo) {
    if (i.name == name) {
      out = i.type;
      return true;
    }
  }
  return false;
}

bf16 double_to_bf16(double d) {
  const uint64_t u = double_bits(d);
  const auto sign = static_cast<uint16_t>((u >> 48) & 0x8000u);
  const uint64_t abs = u & ~(uint64_t{1} << 63);
  if (abs > 0x7ff0000000000000ull) return bf16{static_cast<uint16_t>(sign | 0x7fc0u)};
  return bf16{static_cast<uint16_t>(sign | round_double_to_bits(abs, 8, 7))};
}

uint16_t double_to_f16(double d) {
  const uint64_t u = double_bits(d);
  const auto sign = static_cast<uint16_t>((u >> 48) & 0x8000u);
  const uint64_t abs = u & ~(uint64_t{1} << 63);
  if (abs > 0x7ff0000000000000ull) return static_cast<uint16_t>(sign | 0x7e00u);
  return static_cast<uint16_t>(sign | round_double_to_bits(abs, 5, 10));
}

// float -> double is exact, so this rounds once.
uint16_t float_to_f16(float f) {
  return double_to_f16(static_cast<double>(f));
}

float f16_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t man = bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // infinity, or NaN keeping its payload
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);  // rebias 15 -> 127
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: man * 2^-24, normal as a float
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while ((man & 0x400u) == 0);
    u = sign | (static_cast<uint32_t>(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace engram
