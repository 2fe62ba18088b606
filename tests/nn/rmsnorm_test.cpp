#include "engram/nn/rmsnorm.h"

#include <gtest/gtest.h>

#include "nn/grad_check.h"

namespace engram::nn {
namespace {

TEST(RmsNorm, ForwardMatchesDefinition) {
  const std::vector<double> x = {1, -2, 3, 0.5, 4, 4, -4, 4};
  const std::vector<double> w = {1, 2, 0.5, -1};
  std::vector<double> y(8), rstd(2);
  rmsnorm_forward(y.data(), 4, rstd.data(), x.data(), RowLayout{2, 4, 4}, w.data(), 1e-5);
  const double r0 = 1 / std::sqrt((1 + 4 + 9 + 0.25) / 4 + 1e-5);
  EXPECT_DOUBLE_EQ(rstd[0], r0);
  EXPECT_DOUBLE_EQ(y[1], -2 * r0 * 2);
  EXPECT_DOUBLE_EQ(rstd[1], 1 / std::sqrt(16 + 1e-5));
  EXPECT_DOUBLE_EQ(y[7], 4 * rstd[1] * -1);
}

TEST(RmsNorm, StridedRowsLeaveOtherColumnsAlone) {
  std::vector<double> x = test::random_vector(3 * 10, 1), y(3 * 10, 7.0), rstd(3);
  const std::vector<double> w(4, 1.0);
  rmsnorm_forward(y.data() + 2, 10, rstd.data(), x.data() + 2, RowLayout{3, 4, 10}, w.data(), 1e-6);
  EXPECT_EQ(y[0], 7.0);
  EXPECT_EQ(y[6], 7.0);
  EXPECT_NE(y[2], 7.0);
}

TEST(RmsNorm, GradientsMatchFiniteDifferences) {
  for (int64_t c : {1, 3, 16}) {
    const int64_t n = 5, stride = c + 2;
    std::vector<double> x = test::random_vector(static_cast<size_t>(n * stride), 10 + c);
    std::vector<double> w = test::random_vector(static_cast<size_t>(c), 20 + c);
    const std::vector<double> r = test::random_vector(static_cast<size_t>(n * c), 30 + c);
    const double eps = 1e-5;
    auto loss = [&] {
      std::vector<double> y(static_cast<size_t>(n * c)), rs(static_cast<size_t>(n));
      rmsnorm_forward(y.data(), c, rs.data(), x.data(), RowLayout{n, c, stride}, w.data(), eps);
      return test::dot(y, r);
    };
    std::vector<double> y(static_cast<size_t>(n * c)), rs(static_cast<size_t>(n));
    rmsnorm_forward(y.data(), c, rs.data(), x.data(), RowLayout{n, c, stride}, w.data(), eps);
    std::vector<double> dx(x.size(), 0.0), dw(w.size(), 0.0);
    rmsnorm_backward(dx.data(), stride, dw.data(), r.data(), c, x.data(), RowLayout{n, c, stride},
                     w.data(), rs.data());
    // Padding columns get no gradient.
    for (int64_t row = 0; row < n; ++row) EXPECT_EQ(dx[static_cast<size_t>(row * stride + c)], 0.0);
    test::check_gradient("rmsnorm dx (c=" + std::to_string(c) + ")", x, dx, loss, 40);
    test::check_gradient("rmsnorm dw (c=" + std::to_string(c) + ")", w, dw, loss, 40);
  }
}

TEST(RmsNorm, BackwardAccumulates) {
  std::vector<double> x = test::random_vector(8, 3), w(4, 1.0), dy = test::random_vector(8, 4);
  std::vector<double> y(8), rs(2), dx1(8, 0.0), dw1(4, 0.0), dx2(8, 1.0), dw2(4, 2.0);
  rmsnorm_forward(y.data(), 4, rs.data(), x.data(), RowLayout{2, 4, 4}, w.data(), 1e-5);
  rmsnorm_backward(dx1.data(), 4, dw1.data(), dy.data(), 4, x.data(), RowLayout{2, 4, 4}, w.data(),
                   rs.data());
  rmsnorm_backward(dx2.data(), 4, dw2.data(), dy.data(), 4, x.data(), RowLayout{2, 4, 4}, w.data(),
                   rs.data());
  for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(dx2[i], dx1[i] + 1.0, 1e-15);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(dw2[i], dw1[i] + 2.0, 1e-15);
}

}  // namespace
}  // namespace engram::nn
