// Stands in for src/cuda/decode.cu in builds without CUDA: every call throws.
#include "engram/cuda/decode.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

void kv_cache_append(float*, float*, const float*, const float*, const int32_t*, const int32_t*,
                     int64_t, int64_t, int64_t, void*) {
  no_cuda("kv_cache_append");
}

void decode_attention(float*, const float*, const float*, const float*, const int32_t*,
                      const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, float, void*) {
  no_cuda("decode_attention");
}

void rope_at(float*, const int32_t*, int64_t, int64_t, int64_t, const float*, const float*,
             void*) {
  no_cuda("rope_at");
}

void select_rows(float*, const float*, const int32_t*, int64_t, int64_t, void*) {
  no_cuda("select_rows");
}

void argmax_rows(int64_t*, const float*, int64_t, int64_t, void*) {
  no_cuda("argmax_rows");
}

}  // namespace engram::cuda
