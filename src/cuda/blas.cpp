// cuda::Blas (include/engram/cuda/blas.h): row-major GEMMs mapped onto column-major cuBLAS.
// Row-major C (m, n) is column-major C^T (n, m), so C = op(A) op(B) is computed as
// C^T = op(B)^T op(A)^T: cuBLAS gets B first, with the same transpose flags.
#include "engram/cuda/blas.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <string>

#include "cuda/check.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLAS's recommendation for Hopper

void check_cublas(cublasStatus_t s, const char* call, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw Error(std::string(__FILE__) + ":" + std::to_string(line) + ": " + call + ": " +
              cublasGetStatusString(s));
}
#define ENGRAM_CUBLAS_CHECK(call) check_cublas((call), #call, __LINE__)

cublasHandle_t as_handle(void* h) { return static_cast<cublasHandle_t>(h); }

[[noreturn]] void bad(const std::string& what) {
  throw InputError(error_message("cuda::Blas::gemm", what));
}

int to_int(int64_t v, const char* name) {
  if (v < 0) bad(std::string(name) + " = " + std::to_string(v) + " is negative");
  if (v > std::numeric_limits<int>::max())
    bad(std::string(name) + " = " + std::to_string(v) + " exceeds 2^31 - 1");
  return static_cast<int>(v);
}

cudaDataType_t data_type(DType t, const char* name) {
  if (t == DType::kF32) return CUDA_R_32F;
  if (t == DType::kBF16) return CUDA_R_16BF;
  bad(std::string(name) + " has type " + std::string(dtype_name(t)) + "; only F32 and BF16");
}

struct Plan {
  int m, n, k, lda, ldb, ldc;
  cudaDataType_t ta, tb, tc;
  cublasComputeType_t compute;
};

Plan plan(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, Matrix a, Matrix b,
          MutMatrix c, Math math) {
  Plan p{};
  p.m = to_int(m, "m");
  p.n = to_int(n, "n");
  p.k = to_int(k, "k");
  // Row lengths of the stored matrices.
  const int64_t a_row = trans_a ? m : k, b_row = trans_b ? k : n;
  auto check_ld = [](int64_t ld, int64_t row, const char* name) {
    if (ld < std::max<int64_t>(row, 1))
      bad(std::string(name) + " = " + std::to_string(ld) + " is less than the row length " +
          std::to_string(row));
    return to_int(ld, name);
  };
  p.lda = check_ld(a.ld, a_row, "lda");
  p.ldb = check_ld(b.ld, b_row, "ldb");
  p.ldc = check_ld(c.ld, n, "ldc");
  p.ta = data_type(a.type, "A");
  p.tb = data_type(b.type, "B");
  p.tc = data_type(c.type, "C");
  if (p.ta != p.tb) bad("A and B must have the same type");
  if (p.ta == CUDA_R_32F) {
    if (p.tc != CUDA_R_32F) bad("float32 A and B need a float32 C");
    p.compute = math == Math::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F_PEDANTIC;
  } else {
    p.compute = CUBLAS_COMPUTE_32F;
  }
  return p;
}

}  // namespace

Blas::Blas() {
  cublasHandle_t h = nullptr;
  ENGRAM_CUBLAS_CHECK(cublasCreate(&h));
  handle_ = h;
  try {
    ENGRAM_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
    ENGRAM_CUBLAS_CHECK(cublasSetWorkspace(h, workspace_, kWorkspaceBytes));
  } catch (...) {
    (void)cublasDestroy(h);
    if (workspace_ != nullptr) (void)cudaFree(workspace_);
    throw;
  }
}

Blas::~Blas() {
  if (handle_ != nullptr) (void)cublasDestroy(as_handle(handle_));
  if (workspace_ != nullptr) (void)cudaFree(workspace_);
}

void Blas::set_stream(void* stream) {
  ENGRAM_CUBLAS_CHECK(cublasSetStream(as_handle(handle_), static_cast<cudaStream_t>(stream)));
  // cublasSetStream drops the handle's workspace for cuBLAS's default pool: give ours back.
  ENGRAM_CUBLAS_CHECK(cublasSetWorkspace(as_handle(handle_), workspace_, kWorkspaceBytes));
  stream_ = stream;
}

void Blas::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                Matrix a, Matrix b, float beta, MutMatrix c, Math math) {
  gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, 0, b, 0, beta, c, 0, 1, math);
}

void Blas::gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                float alpha, Matrix a, int64_t stride_a, Matrix b,
                                int64_t stride_b, float beta, MutMatrix c, int64_t stride_c,
                                int64_t batch, Math math) {
  const Plan p = plan(trans_a, trans_b, m, n, k, a, b, c, math);
  const int nb = to_int(batch, "batch");
  if (stride_a < 0 || stride_b < 0 || stride_c < 0) bad("negative batch stride");
  if (p.m == 0 || p.n == 0 || nb == 0) return;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  // Column-major: C^T (n x m) = op(B)^T (n x k) · op(A)^T (k x m).
  if (nb == 1) {
    ENGRAM_CUBLAS_CHECK(cublasGemmEx(as_handle(handle_), op_b, op_a, p.n, p.m, p.k, &alpha, b.ptr,
                                     p.tb, p.ldb, a.ptr, p.ta, p.lda, &beta, c.ptr, p.tc, p.ldc,
                                     p.compute, CUBLAS_GEMM_DEFAULT));
  } else {
    ENGRAM_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        as_handle(handle_), op_b, op_a, p.n, p.m, p.k, &alpha, b.ptr, p.tb, p.ldb, stride_b, a.ptr,
        p.ta, p.lda, stride_a, &beta, c.ptr, p.tc, p.ldc, stride_c, nb, p.compute,
        CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace engram::cuda
