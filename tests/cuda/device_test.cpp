// CUDA device queries: this build's CUDA status, and a device name where a GPU exists (skipped
// on machines without one, such as CI).
#include "engram/cuda/device.h"

#include <gtest/gtest.h>

namespace engram::cuda {
namespace {

TEST(CudaDevice, BuildMatchesConfiguration) {
#ifdef ENGRAM_HAVE_CUDA
  EXPECT_TRUE(compiled_with_cuda());
#else
  EXPECT_FALSE(compiled_with_cuda());
  EXPECT_EQ(device_count(), 0);
#endif
  EXPECT_EQ(device_name(-1), "");
  EXPECT_EQ(device_name(device_count()), "");
}

TEST(CudaDevice, NamesEveryDevice) {
  const int n = device_count();
  if (n == 0) GTEST_SKIP() << "no CUDA device on this machine";
  for (int i = 0; i < n; ++i)
    EXPECT_NE(device_name(i).find("sm_"), std::string::npos) << device_name(i);
}

}  // namespace
}  // namespace engram::cuda
