// Checking of CUDA runtime calls, for .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "engram/util/error.h"

namespace engram::cuda {

// Throws engram::Error "file:line: call: cudaGetErrorString(code)" unless code is cudaSuccess.
inline void check_cuda(cudaError_t code, const char* call, const char* file, int line) {
  if (code == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so that the next check does not see it
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
              cudaGetErrorString(code));
}

}  // namespace engram::cuda

#define ENGRAM_CUDA_CHECK(call) ::engram::cuda::check_cuda((call), #call, __FILE__, __LINE__)
