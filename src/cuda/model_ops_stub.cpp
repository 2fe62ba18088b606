// Stands in for src/cuda/model_ops.cpp and src/cuda/model_ops.cu in builds without CUDA: every
// call throws.
#include "engram/cuda/model_ops.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

void GpuSparseRowGrad::download(nn::SparseRowGrad<float>&) const {
  no_cuda("cuda::GpuSparseRowGrad::download");
}
void embedding_forward(float*, const int64_t*, const float*, int64_t, int64_t, int64_t, void*) {
  no_cuda("cuda::embedding_forward");
}
void streams_sum(float*, const float*, int64_t, int64_t, int64_t, void*) {
  no_cuda("cuda::streams_sum");
}
void embedding_backward(GpuSparseRowGrad&, const float*, const int64_t*, int64_t, int64_t, int64_t,
                        void*) {
  no_cuda("cuda::embedding_backward");
}
void add_inplace(float*, const float*, int64_t, void*) {
  no_cuda("cuda::add_inplace");
}
void scale_inplace(float*, float, int64_t, void*) {
  no_cuda("cuda::scale_inplace");
}
void copy(float*, const float*, int64_t, void*) {
  no_cuda("cuda::copy");
}
void zero(float*, int64_t, void*) {
  no_cuda("cuda::zero");
}
void copy_bytes(void*, const void*, int64_t, int64_t, void*) {
  no_cuda("cuda::copy_bytes");
}
void cast(bf16*, const float*, int64_t, void*) {
  no_cuda("cuda::cast");
}
void cast(float*, const bf16*, int64_t, void*) {
  no_cuda("cuda::cast");
}
double sum_squares(const float*, int64_t, void*) {
  no_cuda("cuda::sum_squares");
}

}  // namespace engram::cuda
