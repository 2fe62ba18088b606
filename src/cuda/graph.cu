// cuda::Stream, cuda::Event, cuda::HostGate and cuda::Graph (include/engram/cuda/graph.h). src/cuda/graph_stub.cpp stands in
// for this file in builds without CUDA.
#include <cuda_runtime.h>

#include <utility>

#include "cuda/check.h"
#include "engram/cuda/graph.h"

namespace engram::cuda {
namespace {

cudaStream_t as_stream(const Stream& s) {
  return static_cast<cudaStream_t>(s.get());
}

// Spins until *gate (pinned host memory, read over the bus each time) is nonzero. The system-
// scope fence orders the later work's reads of host memory after the flag's.
__global__ void host_gate_wait_kernel(const volatile int* gate) {
  while (*gate == 0) __nanosleep(1000);
  __threadfence_system();
}

}  // namespace

Stream::Stream(bool non_blocking) {
  cudaStream_t s = nullptr;
  ENGRAM_CUDA_CHECK(
      cudaStreamCreateWithFlags(&s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault));
  stream_ = s;
}

Stream::~Stream() {
  if (stream_ != nullptr) (void)cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void Stream::synchronize() const {
  ENGRAM_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
}

Event::Event() {
  cudaEvent_t e = nullptr;
  ENGRAM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  event_ = e;
}

Event::~Event() {
  if (event_ != nullptr) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void Event::record(const Stream& s) {
  record(s.get());
}

void Event::wait(const Stream& s) const {
  wait(s.get());
}

void Event::record(void* stream) {
  ENGRAM_CUDA_CHECK(
      cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)));
}

HostGate::HostGate() {
  void* host = nullptr;
  void* device = nullptr;
  ENGRAM_CUDA_CHECK(cudaHostAlloc(&host, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
  if (const cudaError_t e = cudaHostGetDevicePointer(&device, host, 0); e != cudaSuccess) {
    (void)cudaFreeHost(host);
    ENGRAM_CUDA_CHECK(e);
  }
  host_ = static_cast<int*>(host);
  device_ = static_cast<const int*>(device);
  open();
}

HostGate::~HostGate() {
  if (host_ != nullptr) (void)cudaFreeHost(host_);
}

void HostGate::close() {
  __atomic_store_n(host_, 0, __ATOMIC_SEQ_CST);
}

void HostGate::open() {
  // Sequentially consistent: the host's earlier writes are visible before the flag is.
  __atomic_store_n(host_, 1, __ATOMIC_SEQ_CST);
}

void HostGate::wait(void* stream) const {
  host_gate_wait_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(device_);
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

void Event::wait(void* stream) const {
  ENGRAM_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                        static_cast<cudaEvent_t>(event_), 0));
}

Graph::~Graph() {
  reset();
}

Graph::Graph(Graph&& other) noexcept
    : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}

Graph& Graph::operator=(Graph&& other) noexcept {
  if (this != &other) {
    reset();
    graph_ = std::exchange(other.graph_, nullptr);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

void Graph::reset() {
  if (exec_ != nullptr) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_ != nullptr) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = nullptr;
  graph_ = nullptr;
}

void Graph::begin_capture(const Stream& s) {
  reset();
  ENGRAM_CUDA_CHECK(cudaStreamBeginCapture(as_stream(s), cudaStreamCaptureModeThreadLocal));
}

void Graph::end_capture(const Stream& s) {
  cudaGraph_t g = nullptr;
  ENGRAM_CUDA_CHECK(cudaStreamEndCapture(as_stream(s), &g));
  graph_ = g;
  cudaGraphExec_t e = nullptr;
  ENGRAM_CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
  exec_ = e;
}

void Graph::launch(const Stream& s) const {
  ENGRAM_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), as_stream(s)));
}

}  // namespace engram::cuda
