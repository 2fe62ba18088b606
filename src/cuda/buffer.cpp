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

void fill_device_bytes(void* dst, int value, size_t bytes) {
  if (bytes == 0) return;
  ENGRAM_CUDA_CHECK(cudaMemset(dst, value, bytes));
}

bool is_device_memory(const void* p) {
  cudaPointerAttributes a{};
  ENGRAM_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

void* mapped_host_alloc(size_t bytes, void** device) {
  *device = nullptr;
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  ENGRAM_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
  const cudaError_t e = cudaHostGetDevicePointer(device, p, 0);
  if (e != cudaSuccess) {
    (void)cudaFreeHost(p);
    ENGRAM_CUDA_CHECK(e);
  }
  return p;
}

void mapped_host_free(void* host) noexcept {
  if (host != nullptr) (void)cudaFreeHost(host);
}

}  // namespace engram::cuda
