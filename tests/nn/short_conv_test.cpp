#include "engram/nn/short_conv.h"

#include <gtest/gtest.h>

#include "nn/grad_check.h"

namespace engram::nn {
namespace {

// The definition, written out: per-branch RMSNorm, causal dilated depthwise conv, SiLU.
std::vector<double> reference(const std::vector<double>& x, const std::vector<double>& conv_w,
                              const std::vector<double>& norm_w, const ShortConvShape& s,
                              double eps) {
  const int64_t C = s.channels();
  std::vector<double> xn(x.size()), y(x.size());
  for (int64_t bt = 0; bt < s.tokens(); ++bt) {
    for (int64_t m = 0; m < s.branches; ++m) {
      double ss = 0;
      for (int64_t i = 0; i < s.dim; ++i)
        ss += std::pow(x[static_cast<size_t>(bt * C + m * s.dim + i)], 2);
      const double r = 1 / std::sqrt(ss / static_cast<double>(s.dim) + eps);
      for (int64_t i = 0; i < s.dim; ++i) {
        const auto k = static_cast<size_t>(bt * C + m * s.dim + i);
        xn[k] = x[k] * r * norm_w[static_cast<size_t>(m * s.dim + i)];
      }
    }
  }
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t t = 0; t < s.seq; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        double u = 0;
        for (int64_t j = 0; j < s.kernel; ++j) {
          const int64_t src = t - s.dilation * (s.kernel - 1 - j);
          if (src >= 0)
            u += conv_w[static_cast<size_t>(c * s.kernel + j)] *
                 xn[static_cast<size_t>((b * s.seq + src) * C + c)];
        }
        y[static_cast<size_t>((b * s.seq + t) * C + c)] = s.activation ? u / (1 + std::exp(-u)) : u;
      }
    }
  }
  return y;
}

struct Case {
  int64_t batch, seq, branches, dim, kernel, dilation;
  bool activation;
};

class ShortConvTest : public ::testing::TestWithParam<Case> {};

TEST_P(ShortConvTest, ForwardMatchesDefinitionAndGradientsMatchFiniteDifferences) {
  const Case& p = GetParam();
  ShortConvShape s{p.batch, p.seq, p.branches, p.dim};
  s.kernel = p.kernel;
  s.dilation = p.dilation;
  s.activation = p.activation;
  const double eps = 1e-5;
  const size_t n = static_cast<size_t>(s.tokens() * s.channels());
  std::vector<double> x = test::random_vector(n, 1);
  std::vector<double> conv_w =
      test::random_vector(static_cast<size_t>(s.channels() * s.kernel), 2, 0.5);
  std::vector<double> norm_w = test::random_vector(static_cast<size_t>(s.channels()), 3);
  const std::vector<double> r = test::random_vector(n, 4);
  ShortConvSaved<double> saved;
  std::vector<double> y(n);
  short_conv_forward(y.data(), saved, x.data(), conv_w.data(), norm_w.data(), s, eps);
  const auto want = reference(x, conv_w, norm_w, s, eps);
  for (size_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], want[i], 1e-12 * (1 + std::abs(want[i]))) << i;
  // The first dilation*(w-1) steps see only zero padding before them: causal.
  auto loss = [&] {
    ShortConvSaved<double> sv;
    std::vector<double> out(n);
    short_conv_forward(out.data(), sv, x.data(), conv_w.data(), norm_w.data(), s, eps);
    return test::dot(out, r);
  };
  std::vector<double> dx(n, 0.0), dcw(conv_w.size(), 0.0), dnw(norm_w.size(), 0.0);
  short_conv_backward(dx.data(), dcw.data(), dnw.data(), r.data(), x.data(), saved, conv_w.data(),
                      norm_w.data(), s);
  test::check_gradient("short_conv dx", x, dx, loss, 40);
  test::check_gradient("short_conv dW", conv_w, dcw, loss, 40);
  test::check_gradient("short_conv dnorm", norm_w, dnw, loss, 40);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ShortConvTest,
                         ::testing::Values(Case{1, 5, 1, 3, 4, 1, true},
                                           Case{2, 9, 2, 4, 4, 3, true},
                                           Case{2, 13, 4, 3, 3, 4, true},
                                           Case{3, 6, 2, 5, 2, 2, false},
                                           Case{1, 3, 1, 2, 4, 3, true}));

TEST(ShortConv, IsCausal) {
  ShortConvShape s{1, 10, 2, 3};
  s.kernel = 4;
  s.dilation = 3;
  const size_t n = static_cast<size_t>(s.tokens() * s.channels());
  std::vector<double> x = test::random_vector(n, 5), cw = test::random_vector(24, 6), nw(6, 1.0),
                      y1(n), y2(n);
  ShortConvSaved<double> sv;
  short_conv_forward(y1.data(), sv, x.data(), cw.data(), nw.data(), s, 1e-5);
  for (size_t i = 6 * 6; i < n; ++i) x[i] += 1.0;  // change the future from t = 6 on
  short_conv_forward(y2.data(), sv, x.data(), cw.data(), nw.data(), s, 1e-5);
  for (size_t i = 0; i < 6 * 6; ++i) EXPECT_EQ(y1[i], y2[i]) << i;
}

}  // namespace
}  // namespace engram::nn
