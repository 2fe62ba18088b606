#include <gtest/gtest.h>
TEST(CudaOpsPlaceholder, Empty) {}
