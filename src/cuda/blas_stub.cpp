// Stands in for src/cuda/blas.cpp in builds without CUDA: every call throws.
#include "engram/cuda/blas.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {
[[noreturn]] void fail(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}
}  // namespace

Blas::Blas() { fail("cuda::Blas"); }
Blas::~Blas() = default;
void Blas::set_stream(void*) { fail("cuda::Blas::set_stream"); }
void Blas::gemm(bool, bool, int64_t, int64_t, int64_t, float, Matrix, Matrix, float, MutMatrix,
                Math) {
  fail("cuda::Blas::gemm");
}
void Blas::gemm_strided_batched(bool, bool, int64_t, int64_t, int64_t, float, Matrix, int64_t,
                                Matrix, int64_t, float, MutMatrix, int64_t, int64_t, Math) {
  fail("cuda::Blas::gemm_strided_batched");
}

}  // namespace engram::cuda
