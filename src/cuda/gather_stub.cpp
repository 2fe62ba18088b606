// Stands in for src/cuda/gather.cu in builds without CUDA: every call throws.
#include "engram/cuda/gather.h"

#include "engram/util/error.h"

namespace engram::cuda {

void gather_rows(float*, const DeviceTable&, const int32_t*, const int64_t*, int64_t, int64_t,
                 void*) {
  throw Error(error_message("gather_rows", "built without CUDA"));
}

void gather_rows(bf16*, const DeviceTable&, const int32_t*, const int64_t*, int64_t, int64_t,
                 void*) {
  throw Error(error_message("gather_rows", "built without CUDA"));
}

void copy_rows(void*, const DeviceTable&, const int32_t*, const int64_t*, int64_t, int64_t,
               void*) {
  throw Error(error_message("copy_rows", "built without CUDA"));
}

int64_t table_row_bytes(const DeviceTable&) {
  throw Error(error_message("table_row_bytes", "built without CUDA"));
}

void cached_rows(void*, void*, const DeviceTable&, const int64_t*, int64_t, void*) {
  throw Error(error_message("cached_rows", "built without CUDA"));
}

}  // namespace engram::cuda
