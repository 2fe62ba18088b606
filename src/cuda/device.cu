// CUDA device queries. Compiled only when CMake finds nvcc; src/cuda/device_stub.cpp stands in
// otherwise.
#include <cuda_runtime.h>

#include <cstdio>

#include "engram/cuda/device.h"

namespace engram::cuda {

bool compiled_with_cuda() {
  return true;
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error: no driver or no device is not a failure here
    return 0;
  }
  return n;
}

std::string device_name(int index) {
  if (index < 0 || index >= device_count()) return "";
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, index) != cudaSuccess) return "";
  char buf[320];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace engram::cuda
