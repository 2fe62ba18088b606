#include <gtest/gtest.h>
TEST(Placeholder, Sampler) {}
