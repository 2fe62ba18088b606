// Row-major GEMMs on the GPU through cuBLAS, in the model's precisions.
//
//   Blas blas;                                        // one cuBLAS handle + workspace
//   blas.gemm(false, true, m, n, k, 1.0f,             // C (m, n) = A (m, k) · B(n, k)^T
//             {x, DType::kBF16, k}, {w, DType::kBF16, k}, 0.0f, {y, DType::kF32, n});
//
// Every matrix is row-major: element (i, j) of a Matrix {ptr, type, ld} is at ptr[i * ld + j].
//   C = alpha · op(A) · op(B) + beta · C,  op(A) (m, k), op(B) (k, n), C (m, n)
//   op(A) = A (m, k) when trans_a is false, A^T with A stored (k, m) when true; likewise B.
// Accumulation is in float32 always. Element types:
//   A, B float32  and C float32   Math::kExact: plain FP32 (no TF32), the CPU's arithmetic to
//                                 rounding; Math::kTf32: TF32 tensor cores (10-bit mantissa
//                                 inputs, ~8× the FP32 rate)
//   A, B bfloat16 and C float32 or bfloat16: bf16 tensor cores (the math argument is ignored)
// beta == 0 never reads C (it may hold NaN). Sizes of 0 are fine (nothing happens, or C *= beta
// when k == 0). Throws InputError for negative sizes, a leading dimension smaller than a row,
// sizes beyond int32, or an unsupported type mix; engram::Error naming the cuBLAS status on a
// failure. Work is enqueued on the stream set with set_stream (default stream at first).
// A build without CUDA throws engram::Error("... built without CUDA") from the constructor.
#pragma once

#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda {

enum class Math : uint8_t { kExact, kTf32 };

struct Matrix {
  const void* ptr;  // device memory
  DType type;       // kF32 or kBF16
  int64_t ld;       // row stride in elements, >= the row length
};

struct MutMatrix {
  void* ptr;
  DType type;
  int64_t ld;
};

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // cudaStream_t (nullptr = the default stream) for everything enqueued from now on. The
  // handle keeps its one workspace (cuBLAS would otherwise fall back to its own pool, which
  // allocates inside captured CUDA graphs): do not enqueue on two streams that run at once.
  void set_stream(void* stream);
  void* stream() const { return stream_; }

  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, Matrix a,
            Matrix b, float beta, MutMatrix c, Math math = Math::kExact);

  // `batch` independent GEMMs of the same shape: matrix i of A starts stride_a elements after
  // matrix i-1 (likewise B, C). One launch.
  void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                            float alpha, Matrix a, int64_t stride_a, Matrix b, int64_t stride_b,
                            float beta, MutMatrix c, int64_t stride_c, int64_t batch,
                            Math math = Math::kExact);

  // The cublasHandle_t, for callers that need a cuBLAS call not wrapped here.
  void* handle() const { return handle_; }

 private:
  void* handle_ = nullptr;  // cublasHandle_t
  void* stream_ = nullptr;
  void* workspace_ = nullptr;
};

}  // namespace engram::cuda
