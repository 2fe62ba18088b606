// Stands in for src/cuda/engram_layer.{cpp,cu} in builds without CUDA: every call throws.
#include "engram/cuda/engram_layer.h"

#include "engram/util/error.h"

namespace engram::cuda {
namespace {
[[noreturn]] void fail(const char* where) {
  throw Error(error_message(where, "built without CUDA"));
}
}  // namespace

GpuEngramGrads::GpuEngramGrads(const nn::EngramLayerConfig&) { fail("GpuEngramGrads"); }
void GpuEngramGrads::zero() { fail("GpuEngramGrads::zero"); }
void GpuEngramGrads::download(nn::EngramParams<float>&, nn::SparseRowGrad<float>&) const {
  fail("GpuEngramGrads::download");
}

GpuEngramLayer::GpuEngramLayer(const nn::EngramLayerConfig&, const nn::EngramParams<float>&,
                               const GpuEngramOptions&) {
  fail("GpuEngramLayer");
}
GpuEngramLayer::~GpuEngramLayer() = default;
std::vector<std::pair<std::string, float>> GpuEngramLayer::phase_times() const {
  fail("GpuEngramLayer::phase_times");
}
void GpuEngramLayer::mark(const char*) {}
void GpuEngramLayer::set_params(const nn::EngramParams<float>&) {
  fail("GpuEngramLayer::set_params");
}
void GpuEngramLayer::forward(const float*, const int32_t*, int64_t, int64_t, const DeviceTable&,
                             const int64_t*, float*) {
  fail("GpuEngramLayer::forward");
}
void GpuEngramLayer::forward_step(const float*, const int32_t*, int64_t, const DeviceTable&,
                                  const int64_t*, const GpuConvRing&, float*, void*) {
  fail("GpuEngramLayer::forward_step");
}
void GpuEngramLayer::prefetch_step(const int32_t*, int64_t, const DeviceTable&, const int64_t*,
                                   void*) {
  fail("GpuEngramLayer::prefetch_step");
}
std::vector<const void*> GpuEngramLayer::step_addresses() const {
  fail("GpuEngramLayer::step_addresses");
}
void GpuEngramLayer::reserve_step(int64_t) {
  fail("GpuEngramLayer::reserve_step");
}
void GpuEngramLayer::backward(const float*, const float*, float*, GpuEngramGrads&) {
  fail("GpuEngramLayer::backward");
}
void GpuEngramLayer::forward(const bf16*, const int32_t*, int64_t, int64_t, const DeviceTable&,
                             const int64_t*, bf16*) {
  fail("GpuEngramLayer::forward");
}
void GpuEngramLayer::backward(const bf16*, const bf16*, bf16*, GpuEngramGrads&) {
  fail("GpuEngramLayer::backward");
}

}  // namespace engram::cuda
