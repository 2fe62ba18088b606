// Stands in for src/cuda/ngram_hash.cpp and .cu in builds without CUDA: every call throws.
#include "engram/cuda/ngram_hash.h"

namespace engram::cuda {

GpuNgramHasher::GpuNgramHasher(const hash::NgramHasher&) {
  throw Error(error_message("GpuNgramHasher", "built without CUDA"));
}
void GpuNgramHasher::hash(const int64_t*, int64_t, int64_t, int32_t*, void*) const {
  throw Error(error_message("GpuNgramHasher::hash", "built without CUDA"));
}
std::vector<int32_t> GpuNgramHasher::hash_host(std::span<const int64_t>, int64_t, int64_t) const {
  throw Error(error_message("GpuNgramHasher::hash_host", "built without CUDA"));
}

}  // namespace engram::cuda
