// cuda::PhaseTimer (include/engram/cuda/phase_timer.h). src/cuda/phase_timer_stub.cpp stands in
// for this file in builds without CUDA.
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "engram/cuda/phase_timer.h"

namespace engram::cuda {

PhaseTimer::~PhaseTimer() {
  for (void* e : events_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e));
}

void PhaseTimer::record(size_t i) {
  if (i == events_.size()) {
    cudaEvent_t e = nullptr;
    ENGRAM_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  ENGRAM_CUDA_CHECK(
      cudaEventRecord(static_cast<cudaEvent_t>(events_[i]), static_cast<cudaStream_t>(stream_)));
}

void PhaseTimer::start() {
  names_.clear();
  record(0);
  names_.emplace_back("start");
}

void PhaseTimer::mark(const std::string& name) {
  if (names_.empty()) start();
  record(names_.size());
  names_.push_back(name);
}

std::vector<std::pair<std::string, float>> PhaseTimer::times() const {
  std::vector<std::pair<std::string, float>> out;
  if (names_.empty()) return out;
  ENGRAM_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[names_.size() - 1])));
  for (size_t i = 1; i < names_.size(); ++i) {
    float ms = 0.0f;
    ENGRAM_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(events_[i - 1]),
                                           static_cast<cudaEvent_t>(events_[i])));
    out.emplace_back(names_[i], ms);
  }
  return out;
}

}  // namespace engram::cuda
