// Stands in for src/cuda/buffer.cpp in builds without CUDA: every call throws.
#include "engram/cuda/buffer.h"

namespace engram::cuda {
namespace {
[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}
}  // namespace

void* device_alloc(size_t) {
  no_cuda("device_alloc");
}
void device_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t) {
  no_cuda("copy_to_device");
}
void copy_to_host(void*, const void*, size_t) {
  no_cuda("copy_to_host");
}
void device_synchronize() {
  no_cuda("device_synchronize");
}
void fill_device_bytes(void*, int, size_t) {
  no_cuda("fill_device_bytes");
}
bool is_device_memory(const void*) {
  no_cuda("is_device_memory");
}
void* mapped_host_alloc(size_t, void**) {
  no_cuda("mapped_host_alloc");
}
void mapped_host_free(void*) noexcept {}

}  // namespace engram::cuda
