// Stands in for src/cuda/graph.cu in builds without CUDA: every call throws.
#include "engram/cuda/graph.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void no_cuda(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}

}  // namespace

Stream::Stream(bool) {
  no_cuda("cuda::Stream");
}
Stream::~Stream() = default;
void Stream::synchronize() const {
  no_cuda("cuda::Stream::synchronize");
}
Event::Event() {
  no_cuda("cuda::Event");
}
Event::~Event() = default;
void Event::record(const Stream&) {
  no_cuda("cuda::Event::record");
}
void Event::wait(const Stream&) const {
  no_cuda("cuda::Event::wait");
}
void Event::record(void*) {
  no_cuda("cuda::Event::record");
}
void Event::wait(void*) const {
  no_cuda("cuda::Event::wait");
}
HostGate::HostGate() {
  no_cuda("cuda::HostGate");
}
HostGate::~HostGate() = default;
void HostGate::close() {
  no_cuda("cuda::HostGate::close");
}
void HostGate::open() {
  no_cuda("cuda::HostGate::open");
}
void HostGate::wait(void*) const {
  no_cuda("cuda::HostGate::wait");
}
Graph::~Graph() = default;
Graph::Graph(Graph&&) noexcept = default;
Graph& Graph::operator=(Graph&&) noexcept = default;
void Graph::reset() {}
void Graph::begin_capture(const Stream&) {
  no_cuda("cuda::Graph::begin_capture");
}
void Graph::end_capture(const Stream&) {
  no_cuda("cuda::Graph::end_capture");
}
void Graph::launch(const Stream&) const {
  no_cuda("cuda::Graph::launch");
}

}  // namespace engram::cuda
