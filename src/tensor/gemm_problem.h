// Private to the GEMM implementation: the problem as the backends see it, and the hooks that let
// tests and benchmarks pick which instruction set kBlocked runs with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tensor/gemm.h"

namespace engram::gemm_detail {

// C(m, n) = alpha * op(A) * op(B) + beta * C, arguments already validated.
template <class T>
struct GemmProblem {
  Trans ta, tb;
  int64_t m, n, k;
  T alpha;
  const T* a;
  int64_t lda;
  const T* b;
  int64_t ldb;
  T beta;
  T* c;
  int64_t ldc;
};

// kBlocked sends problems of at most this many rows to its unpacked thin-row loops.
constexpr int64_t kThinRows = 4;

// A per-thread buffer of at least `bytes` bytes, 64-byte aligned, kept between calls. Slot 0
// holds packed A, slot 1 packed B; a buffer stays valid until the same thread asks for the same
// slot again.
void* scratch(int slot, size_t bytes);

// kBlocked's instruction sets usable on this machine, best first ("avx512", "avx2", "generic";
// only "generic" off x86-64).
std::vector<std::string> blocked_isas();
// The instruction set kBlocked uses (the best by default).
std::string blocked_isa();
// Forces one of blocked_isas(); throws engram::Error for any other name.
void set_blocked_isa(std::string_view name);

// The BLAS engram was built with, e.g. "OpenBLAS 0.3.21 ... core=SkylakeX"; empty without one.
std::string blas_description();

}  // namespace engram::gemm_detail
