// Device memory and copies (include/engram/cuda/buffer.h); plain C++ over the CUDA runtime
// (the header uses std::span, which the C++17 .cu files cannot see). src/cuda/buffer_stub.cpp
// stands in for this file in builds without CUDA.
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "engram/cuda/buffer.h"

namespace engram::cuda {

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  ENGRAM_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}

void device_free(void* ptr) noexcept {
  if (ptr != nullptr) (void)cudaFree(ptr);  // a destructor must not throw; errors resurface later
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  ENGRAM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  ENGRAM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void device_synchronize() {
  ENGRAM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace engram::cuda
