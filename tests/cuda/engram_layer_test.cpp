#include <gtest/gtest.h>
TEST(CudaEngramLayerPlaceholder, Empty) {}
