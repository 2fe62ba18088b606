// CUDA devices, when engram was built with CUDA (ENGRAM_HAVE_CUDA) and a GPU is present.
#pragma once

#include <string>

namespace engram::cuda {

// True when this build contains CUDA code.
bool compiled_with_cuda();
// Number of CUDA devices usable now (0 without CUDA, a driver or a GPU; never throws).
int device_count();
// "NVIDIA H200 (sm_90, 139.8 GiB)" for device `index`, or "" if there is none.
std::string device_name(int index);

}  // namespace engram::cuda
