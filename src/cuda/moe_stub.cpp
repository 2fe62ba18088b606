// Stands in for src/cuda/moe.cpp and src/cuda/moe.cu in builds without CUDA: every call throws.
#include "engram/cuda/moe.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

template <class T>
void moe_forward(Blas&, T*, GpuMoeSaved<T>&, const T*, const float*, const GpuMoeWeights<T>&,
                 const nn::MoeShape&) {
  no_cuda("cuda::moe_forward");
}

template <class T>
void moe_forward_dense(Blas&, T*, GpuMoeSaved<T>&, const T*, const float*,
                       const GpuMoeWeights<T>&, const nn::MoeShape&) {
  no_cuda("cuda::moe_forward_dense");
}

template <class T>
void moe_backward(Blas&, T*, const GpuMoeGrads&, const T*, const T*, GpuMoeSaved<T>&,
                  const GpuMoeWeights<T>&, const nn::MoeShape&) {
  no_cuda("cuda::moe_backward");
}

void aux_free_bias_update(float*, const int64_t*, int64_t, double, void*) {
  no_cuda("cuda::aux_free_bias_update");
}

void moe_add_counts(int64_t*, const int64_t*, int64_t, void*) {
  no_cuda("cuda::moe_add_counts");
}

template void moe_forward<float>(Blas&, float*, GpuMoeSaved<float>&, const float*, const float*,
                                 const GpuMoeWeights<float>&, const nn::MoeShape&);
template void moe_forward<bf16>(Blas&, bf16*, GpuMoeSaved<bf16>&, const bf16*, const float*,
                                const GpuMoeWeights<bf16>&, const nn::MoeShape&);
template void moe_forward_dense<float>(Blas&, float*, GpuMoeSaved<float>&, const float*,
                                       const float*, const GpuMoeWeights<float>&,
                                       const nn::MoeShape&);
template void moe_forward_dense<bf16>(Blas&, bf16*, GpuMoeSaved<bf16>&, const bf16*, const float*,
                                      const GpuMoeWeights<bf16>&, const nn::MoeShape&);
template void moe_backward<float>(Blas&, float*, const GpuMoeGrads&, const float*, const float*,
                                  GpuMoeSaved<float>&, const GpuMoeWeights<float>&,
                                  const nn::MoeShape&);
template void moe_backward<bf16>(Blas&, bf16*, const GpuMoeGrads&, const bf16*, const bf16*,
                                 GpuMoeSaved<bf16>&, const GpuMoeWeights<bf16>&,
                                 const nn::MoeShape&);

}  // namespace engram::cuda
