// Stands in for src/cuda/hyper_connection.cpp and src/cuda/hyper_connection.cu in builds without
// CUDA: every call throws.
#include "engram/cuda/hyper_connection.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

void hc_sinkhorn_forward(float*, const float*, int64_t, int64_t, void*) {
  no_cuda("cuda::hc_sinkhorn_forward");
}
void hc_sinkhorn_backward(float*, const float*, const float*, int64_t, int64_t, void*) {
  no_cuda("cuda::hc_sinkhorn_backward");
}
void hc_coefficients_forward(float*, float*, float*, GpuHcSaved&, const float*, const float*,
                             const float*, const float*, int64_t, int64_t, int64_t, Blas&, void*) {
  no_cuda("cuda::hc_coefficients_forward");
}
void hc_coefficients_backward(float*, float*, float*, float*, const float*, const float*,
                              const float*, const float*, const GpuHcSaved&, const float*,
                              const float*, const float*, int64_t, int64_t, int64_t, Blas&, void*) {
  no_cuda("cuda::hc_coefficients_backward");
}
void hc_readout_forward(float*, const float*, const float*, int64_t, int64_t, int64_t, void*) {
  no_cuda("cuda::hc_readout_forward");
}
void hc_readout_backward(float*, float*, const float*, const float*, const float*, int64_t, int64_t,
                         int64_t, void*) {
  no_cuda("cuda::hc_readout_backward");
}
void hc_write_back_forward(float*, const float*, const float*, const float*, const float*, int64_t,
                           int64_t, int64_t, void*) {
  no_cuda("cuda::hc_write_back_forward");
}
void hc_write_back_backward(float*, float*, float*, float*, const float*, const float*,
                            const float*, const float*, const float*, int64_t, int64_t, int64_t,
                            void*) {
  no_cuda("cuda::hc_write_back_backward");
}
void hc_head_readout_forward(float*, float*, GpuHcSaved&, const float*, const float*, const float*,
                             const float*, int64_t, int64_t, int64_t, Blas&, void*) {
  no_cuda("cuda::hc_head_readout_forward");
}
void hc_head_readout_backward(float*, float*, float*, float*, const float*, const float*,
                              const float*, const GpuHcSaved&, const float*, const float*,
                              const float*, int64_t, int64_t, int64_t, Blas&, void*) {
  no_cuda("cuda::hc_head_readout_backward");
}

}  // namespace engram::cuda
