// Matrix products, row-major: C(m, n) = alpha * op(A)(m, k) * op(B)(k, n) + beta * C.
// op(X) is X or its transpose. lda/ldb/ldc are row strides in elements of the stored matrices
// (A is (m, k) when not transposed, (k, m) when transposed; likewise B).
//
// Backends: kReference (the obvious triple loop, the definition), kBlocked (engram's own
// cache-blocked kernel, with AVX-512 / AVX2 / baseline variants chosen at run time) and kBlas
// (the system BLAS, when engram was built with one). gemm() uses the default backend — the
// fastest available, see docs/benchmarks.md: kBlas, unless it runs kernels for an older
// instruction set than kBlocked has on this CPU (OpenBLAS 0.3.21 falls back to generic
// "Prescott" kernels on CPUs it does not know, about 5x slower), else kBlocked.
// With beta == 0, C is written without being read (NaN in C does not propagate). Sizes must be
// non-negative and each leading dimension at least max(1, its stored row length); violations
// throw engram::Error naming the argument.
#pragma once

#include <cstdint>

namespace engram {

enum class Trans : uint8_t { kNo, kYes };
enum class GemmBackend : uint8_t { kReference, kBlocked, kBlas };

template <class T>
void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

template <class T>
void gemm_with(GemmBackend backend, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

bool gemm_backend_available(GemmBackend backend);
GemmBackend default_gemm_backend();
void set_default_gemm_backend(GemmBackend backend);  // throws engram::Error if unavailable
const char* gemm_backend_name(GemmBackend backend);

// Threads the GEMM backends may use (0 = default_threads()). Applies to kBlocked and kBlas.
void set_gemm_threads(int threads);
int gemm_threads();

}  // namespace engram
