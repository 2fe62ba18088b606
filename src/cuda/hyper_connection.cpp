// The mHC functions of include/engram/cuda/hyper_connection.h: argument checks, the saved state,
// scratch and the cuBLAS GEMMs; the kernels are in src/cuda/hyper_connection.cu.
// src/cuda/hyper_connection_stub.cpp stands in for both in builds without CUDA.
#include "engram/cuda/hyper_connection.h"

#include <cuda_runtime.h>

#include <cstddef>
#include <limits>
#include <string>

#include "cuda/check.h"
#include "cuda/hyper_connection_kernel.h"
#include "engram/cuda/blas.h"
#include "engram/nn/hyper_connection.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

static_assert(kHcMaxStreams == detail::kHcMaxStreams);

// Checks N, n, C (N = 0 is allowed: the callers return early).
void check_sizes(const char* where, int64_t tokens, int64_t n, int64_t c) {
  if (tokens < 0 || tokens > std::numeric_limits<int32_t>::max()) {
    throw InputError(
        error_message(where, "tokens " + std::to_string(tokens) + " (expected 0 to 2^31 - 1)"));
  }
  if (n < 1 || n > kHcMaxStreams) {
    throw InputError(error_message(where, "streams n = " + std::to_string(n) + " (expected 1 to " +
                                              std::to_string(kHcMaxStreams) + ")"));
  }
  if (c < 1) {
    throw InputError(
        error_message(where, "channels c = " + std::to_string(c) + " (expected >= 1)"));
  }
}

void check_saved(const char* where, const GpuHcSaved& saved, int64_t tokens, int64_t k) {
  if (saved.proj.size() < static_cast<size_t>(tokens * k) ||
      saved.rstd.size() < static_cast<size_t>(tokens)) {
    throw InputError(error_message(
        where, "saved state holds " + std::to_string(saved.rstd.size()) + " tokens, " +
                   std::to_string(saved.proj.size()) + " projections; the call needs " +
                   std::to_string(tokens) + " tokens of " + std::to_string(k)));
  }
}

// Grows `b` to at least n elements (contents are not kept).
void ensure(DeviceBuffer<float>& b, int64_t n) {
  if (b.size() < static_cast<size_t>(n)) b = DeviceBuffer<float>(static_cast<size_t>(n));
}

// Runs the Blas's GEMMs on `stream` for the lifetime of the guard, then restores its stream.
class BlasStream {
 public:
  BlasStream(Blas& blas, void* stream) : blas_(blas), saved_(blas.stream()) {
    blas_.set_stream(stream);
  }
  ~BlasStream() {
    try {
      blas_.set_stream(saved_);
    } catch (...) {  // a failing cublasSetStream leaves the handle on `stream`; nothing to undo
    }
  }
  BlasStream(const BlasStream&) = delete;
  BlasStream& operator=(const BlasStream&) = delete;

 private:
  Blas& blas_;
  void* saved_;
};

// Stream-ordered scratch: allocated and freed on `stream`.
class StreamScratch {
 public:
  StreamScratch(size_t floats, void* stream) : stream_(static_cast<cudaStream_t>(stream)) {
    ENGRAM_CUDA_CHECK(
        cudaMallocAsync(reinterpret_cast<void**>(&data_), floats * sizeof(float), stream_));
  }
  ~StreamScratch() { (void)cudaFreeAsync(data_, stream_); }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  float* data() { return data_; }

 private:
  cudaStream_t stream_;
  float* data_ = nullptr;
};

Matrix f32(const float* p, int64_t ld) {
  return {p, DType::kF32, ld};
}
MutMatrix f32(float* p, int64_t ld) {
  return {p, DType::kF32, ld};
}

// proj (N, K) = x (N, D) Φ^T with Φ (K, D).
void projection_forward(Blas& blas, float* proj, const float* x, const float* phi, int64_t tokens,
                        int64_t k, int64_t d) {
  blas.gemm(false, true, tokens, k, d, 1.0f, f32(x, d), f32(phi, d), 0.0f, f32(proj, k),
            Math::kExact);
}

// dx (N, D) += dp (N, K) Φ (K, D);  dΦ (K, D) += dp^T x.
void projection_backward(Blas& blas, float* dx, float* dphi, const float* dp, const float* x,
                         const float* phi, int64_t tokens, int64_t k, int64_t d) {
  blas.gemm(false, false, tokens, d, k, 1.0f, f32(dp, k), f32(phi, d), 1.0f, f32(dx, d),
            Math::kExact);
  blas.gemm(true, false, k, d, tokens, 1.0f, f32(dp, k), f32(x, d), 1.0f, f32(dphi, d),
            Math::kExact);
}

}  // namespace

void hc_sinkhorn_forward(float* comb, const float* logits, int64_t tokens, int64_t n,
                         void* stream) {
  check_sizes("cuda::hc_sinkhorn_forward", tokens, n, 1);
  if (tokens == 0) return;
  detail::launch_hc_sinkhorn_forward(comb, logits, tokens, n, stream);
}

void hc_sinkhorn_backward(float* dlogits, const float* dcomb, const float* logits, int64_t tokens,
                          int64_t n, void* stream) {
  check_sizes("cuda::hc_sinkhorn_backward", tokens, n, 1);
  if (tokens == 0) return;
  detail::launch_hc_sinkhorn_backward(dlogits, dcomb, logits, tokens, n, stream);
}

void hc_coefficients_forward(float* pre, float* post, float* comb, GpuHcSaved& saved,
                             const float* x, const float* phi, const float* b, const float* alpha,
                             int64_t tokens, int64_t n, int64_t c, Blas& blas, void* stream) {
  check_sizes("cuda::hc_coefficients_forward", tokens, n, c);
  if (tokens == 0) return;
  const int64_t k = nn::hc_coefficient_count(n), d = n * c;
  ensure(saved.proj, tokens * k);
  ensure(saved.rstd, tokens);
  {
    const BlasStream on(blas, stream);
    projection_forward(blas, saved.proj.data(), x, phi, tokens, k, d);
  }
  detail::launch_hc_coefficients_forward(pre, post, comb, saved.proj.data(), saved.rstd.data(), x,
                                         b, alpha, tokens, n, c, stream);
}

void hc_coefficients_backward(float* dx, float* dphi, float* db, float* dalpha, const float* dpre,
                              const float* dpost, const float* dcomb, const float* x,
                              const GpuHcSaved& saved, const float* phi, const float* b,
                              const float* alpha, int64_t tokens, int64_t n, int64_t c, Blas& blas,
                              void* stream) {
  const char* where = "cuda::hc_coefficients_backward";
  check_sizes(where, tokens, n, c);
  const int64_t k = nn::hc_coefficient_count(n), d = n * c;
  check_saved(where, saved, tokens, k);
  if (tokens == 0) return;
  StreamScratch scratch(static_cast<size_t>(2 * tokens * k), stream);
  float* da = scratch.data();   // (N, K) dL/da
  float* dp = da + tokens * k;  // (N, K) dL/d(Φ v)
  detail::launch_hc_coefficients_backward_tokens(da, dp, dx, dpre, dpost, dcomb, x,
                                                 saved.proj.data(), saved.rstd.data(), b, alpha,
                                                 tokens, n, c, stream);
  detail::launch_hc_bias_alpha_grads(db, dalpha, da, saved.proj.data(), tokens, k, n, stream);
  const BlasStream on(blas, stream);
  projection_backward(blas, dx, dphi, dp, x, phi, tokens, k, d);
}

void hc_readout_forward(float* y, const float* x, const float* pre, int64_t tokens, int64_t n,
                        int64_t c, void* stream) {
  check_sizes("cuda::hc_readout_forward", tokens, n, c);
  if (tokens == 0) return;
  detail::launch_hc_readout_forward(y, x, pre, tokens, n, c, stream);
}

void hc_readout_backward(float* dx, float* dpre, const float* dy, const float* x, const float* pre,
                         int64_t tokens, int64_t n, int64_t c, void* stream) {
  check_sizes("cuda::hc_readout_backward", tokens, n, c);
  if (tokens == 0) return;
  detail::launch_hc_readout_backward(dx, dpre, dy, x, pre, tokens, n, c, stream);
}

void hc_write_back_forward(float* x_out, const float* f, const float* x, const float* post,
                           const float* comb, int64_t tokens, int64_t n, int64_t c, void* stream) {
  check_sizes("cuda::hc_write_back_forward", tokens, n, c);
  if (tokens == 0) return;
  detail::launch_hc_write_back_forward(x_out, f, x, post, comb, tokens, n, c, stream);
}

void hc_write_back_backward(float* df, float* dx, float* dpost, float* dcomb, const float* dx_out,
                            const float* f, const float* x, const float* post, const float* comb,
                            int64_t tokens, int64_t n, int64_t c, void* stream) {
  check_sizes("cuda::hc_write_back_backward", tokens, n, c);
  if (tokens == 0) return;
  detail::launch_hc_write_back_backward(df, dx, dpost, dcomb, dx_out, f, x, post, comb, tokens, n,
                                        c, stream);
}

void hc_head_readout_forward(float* y, float* pre, GpuHcSaved& saved, const float* x,
                             const float* phi_h, const float* b_h, const float* alpha_h,
                             int64_t tokens, int64_t n, int64_t c, Blas& blas, void* stream) {
  check_sizes("cuda::hc_head_readout_forward", tokens, n, c);
  if (tokens == 0) return;
  const int64_t d = n * c;
  ensure(saved.proj, tokens * n);
  ensure(saved.rstd, tokens);
  {
    const BlasStream on(blas, stream);
    projection_forward(blas, saved.proj.data(), x, phi_h, tokens, n, d);
  }
  detail::launch_hc_head_readout_forward(y, pre, saved.proj.data(), saved.rstd.data(), x, b_h,
                                         alpha_h, tokens, n, c, stream);
}

void hc_head_readout_backward(float* dx, float* dphi_h, float* db_h, float* dalpha_h,
                              const float* dy, const float* x, const float* pre,
                              const GpuHcSaved& saved, const float* phi_h, const float* b_h,
                              const float* alpha_h, int64_t tokens, int64_t n, int64_t c,
                              Blas& blas, void* stream) {
  const char* where = "cuda::hc_head_readout_backward";
  check_sizes(where, tokens, n, c);
  check_saved(where, saved, tokens, n);
  if (tokens == 0) return;
  const int64_t d = n * c;
  StreamScratch scratch(static_cast<size_t>(2 * tokens * n), stream);
  float* da = scratch.data();   // (N, n) dL/da
  float* dp = da + tokens * n;  // (N, n) dL/d(Φ_h v)
  detail::launch_hc_head_readout_backward_tokens(da, dp, dx, dy, x, pre, saved.proj.data(),
                                                 saved.rstd.data(), b_h, alpha_h, tokens, n, c,
                                                 stream);
  detail::launch_hc_bias_alpha_grads(db_h, dalpha_h, da, saved.proj.data(), tokens, n, n, stream);
  const BlasStream on(blas, stream);
  projection_backward(blas, dx, dphi_h, dp, x, phi_h, tokens, n, d);
}

}  // namespace engram::cuda
