// Stands in for src/cuda/attention.cpp and src/cuda/attention.cu in builds without CUDA: every
// call throws.
#include "engram/cuda/attention.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

void flash_attention_forward(void*, float*, const void*, const void*, const void*, DType,
                             const FlashAttentionShape&, float, void*, AttentionKernel) {
  no_cuda("cuda::flash_attention_forward");
}
void flash_attention_backward(void*, void*, void*, const void*, const void*, const void*,
                              const void*, const void*, const float*, DType,
                              const FlashAttentionShape&, float, void*, AttentionKernel) {
  no_cuda("cuda::flash_attention_backward");
}
void attention_decode(void*, const void*, const void*, const void*, const int32_t*, DType,
                      const FlashAttentionShape&, float, void*) {
  no_cuda("cuda::attention_decode");
}

}  // namespace engram::cuda
