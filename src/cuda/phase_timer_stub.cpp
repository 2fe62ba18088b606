// Stands in for src/cuda/phase_timer.cu in builds without CUDA.
#include "engram/cuda/phase_timer.h"

#include "engram/util/error.h"

namespace engram::cuda {

PhaseTimer::~PhaseTimer() = default;
void PhaseTimer::record(size_t) {
  throw Error(error_message("PhaseTimer", "built without CUDA"));
}
void PhaseTimer::start() {
  record(0);
}
void PhaseTimer::mark(const std::string&) {
  record(0);
}
std::vector<std::pair<std::string, float>> PhaseTimer::times() const {
  return {};
}

}  // namespace engram::cuda
