// Stands in for src/cuda/ops.cpp and src/cuda/ops.cu in builds without CUDA: every call throws.
#include "engram/cuda/ops.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

void rmsnorm_forward(float*, int64_t, float*, const float*, nn::RowLayout, const float*, float,
                     void*) {
  no_cuda("cuda::rmsnorm_forward");
}
void rmsnorm_backward(float*, int64_t, float*, const float*, int64_t, const float*, nn::RowLayout,
                      const float*, const float*, void*) {
  no_cuda("cuda::rmsnorm_backward");
}
void swiglu_gate_forward(float*, const float*, const float*, int64_t, void*) {
  no_cuda("cuda::swiglu_gate_forward");
}
void swiglu_gate_backward(float*, float*, const float*, const float*, const float*, int64_t,
                          void*) {
  no_cuda("cuda::swiglu_gate_backward");
}
void rope_forward(float*, int64_t, int64_t, int64_t, int64_t, double, void*) {
  no_cuda("cuda::rope_forward");
}
void rope_backward(float*, int64_t, int64_t, int64_t, int64_t, double, void*) {
  no_cuda("cuda::rope_backward");
}
double cross_entropy_forward_backward(float*, const float*, const int64_t*, int64_t, int64_t, float,
                                      float*, int64_t*, void*) {
  no_cuda("cuda::cross_entropy_forward_backward");
}
void adamw_step(float*, const float*, float*, float*, int64_t, double, int64_t, const AdamHyper&,
                double, void*) {
  no_cuda("cuda::adamw_step");
}
void sparse_row_adam_step(float*, float*, float*, int64_t*, int64_t, int64_t, const int64_t*,
                          const float*, int64_t, double, int64_t, const AdamHyper&, void*) {
  no_cuda("cuda::sparse_row_adam_step");
}

}  // namespace engram::cuda
