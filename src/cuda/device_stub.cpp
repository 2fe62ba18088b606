// Stands in for src/cuda/device.cu in builds without CUDA.
#include "engram/cuda/device.h"

namespace engram::cuda {

bool compiled_with_cuda() {
  return false;
}
int device_count() {
  return 0;
}
std::string device_name(int) {
  return "";
}

}  // namespace engram::cuda
