// GPU memory owned by RAII handles, free of CUDA headers so that CPU-only builds compile.
//
//   DeviceBuffer<float> buf(1024);          // cudaMalloc of 1024 floats
//   buf.upload(host);                       // host.size() == buf.size()
//   kernel_launcher(buf.data(), ...);
//   buf.download(host);
//
// Every CUDA call is checked: a failure throws engram::Error naming the call, its file:line and
// cudaGetErrorString, e.g. "src/cuda/buffer.cpp:31: cudaMalloc(&p, bytes): out of memory".
// In a build without CUDA every function here throws engram::Error("built without CUDA"), so a
// caller fails loudly instead of crashing.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <utility>

#include "engram/util/error.h"

namespace engram::cuda {

// Untyped device memory; the typed DeviceBuffer below is what callers use.
void* device_alloc(size_t bytes);                               // nullptr for 0 bytes
void device_free(void* ptr) noexcept;                           // nullptr is fine
void copy_to_device(void* dst, const void* src, size_t bytes);  // synchronous
void copy_to_host(void* dst, const void* src, size_t bytes);    // synchronous
void device_synchronize();                                      // waits for all streams
void fill_device_bytes(void* dst, int value, size_t bytes);     // memset; synchronous
// Whether p points into GPU memory (cudaMalloc'd, or managed), not host memory (mapped pinned
// host memory included).
bool is_device_memory(const void* p);
// Pinned host memory mapped into the device's address space (cudaHostAlloc with
// cudaHostAllocMapped | cudaHostAllocPortable): *device receives the pointer kernels read it
// through (zero-copy over PCIe). nullptr (and *device = nullptr) for 0 bytes.
void* mapped_host_alloc(size_t bytes, void** device);
void mapped_host_free(void* host) noexcept;  // nullptr is fine

// A device array of `size()` elements of a trivially copyable T. Move-only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t size)
      : data_(static_cast<T*>(device_alloc(size * sizeof(T)))), size_(size) {}
  // Allocates and uploads `host`.
  explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { device_free(data_); }

  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      device_free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  T* data() { return data_; }
  const T* data() const { return data_; }

  // Copies host.size() == size() elements in; throws InputError on a size mismatch.
  void upload(std::span<const T> host) {
    check_size(host.size(), "upload");
    copy_to_device(data_, host.data(), bytes());
  }
  // Copies all size() elements out into host (host.size() == size()).
  void download(std::span<T> host) const {
    check_size(host.size(), "download");
    copy_to_host(host.data(), data_, bytes());
  }

 private:
  void check_size(size_t host_size, const char* where) const {
    if (host_size != size_) {
      throw InputError(error_message(std::string("DeviceBuffer::") + where,
                                     "host span has " + std::to_string(host_size) +
                                         " elements, the buffer " + std::to_string(size_)));
    }
  }

  T* data_ = nullptr;
  size_t size_ = 0;
};

// Host memory the GPU reads directly: `size()` elements of T at host() for the CPU and at
// device() for kernels (the same bytes, over PCIe; e.g. a DeviceTable over an Engram table that
// stays in host memory). Pinned: the pages never swap. Move-only.
template <class T>
class MappedHostBuffer {
 public:
  MappedHostBuffer() = default;
  explicit MappedHostBuffer(size_t size) : size_(size) {
    void* device = nullptr;
    host_ = static_cast<T*>(mapped_host_alloc(size * sizeof(T), &device));
    device_ = static_cast<T*>(device);
  }
  ~MappedHostBuffer() { mapped_host_free(host_); }
  MappedHostBuffer(MappedHostBuffer&& other) noexcept
      : host_(std::exchange(other.host_, nullptr)),
        device_(std::exchange(other.device_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  MappedHostBuffer& operator=(MappedHostBuffer&& other) noexcept {
    if (this != &other) {
      mapped_host_free(host_);
      host_ = std::exchange(other.host_, nullptr);
      device_ = std::exchange(other.device_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  MappedHostBuffer(const MappedHostBuffer&) = delete;
  MappedHostBuffer& operator=(const MappedHostBuffer&) = delete;

  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  std::span<T> host() { return {host_, size_}; }
  std::span<const T> host() const { return {host_, size_}; }
  const T* device() const { return device_; }

 private:
  T* host_ = nullptr;
  T* device_ = nullptr;
  size_t size_ = 0;
};

}  // namespace engram::cuda
