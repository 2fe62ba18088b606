#include "engram/nn/mlp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "nn/grad_check.h"

namespace engram::nn {
namespace {

// y = W2 (SiLU(W1 x) ⊙ W3 x), written as plain loops.
std::vector<double> swiglu_reference(const std::vector<double>& x, const std::vector<double>& w1,
                                     const std::vector<double>& w3, const std::vector<double>& w2,
                                     int64_t n, int64_t c, int64_t h) {
  std::vector<double> y(static_cast<size_t>(n * c), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> g(static_cast<size_t>(h));
    for (int64_t j = 0; j < h; ++j) {
      double a = 0, b = 0;
      for (int64_t i = 0; i < c; ++i) {
        a += w1[j * c + i] * x[t * c + i];
        b += w3[j * c + i] * x[t * c + i];
      }
      g[j] = a / (1 + std::exp(-a)) * b;
    }
    for (int64_t i = 0; i < c; ++i) {
      for (int64_t j = 0; j < h; ++j) y[t * c + i] += w2[i * h + j] * g[j];
    }
  }
  return y;
}

struct Shape {
  int64_t n, c, h;
};

TEST(SwiGlu, ForwardMatchesReferenceLoops) {
  for (const Shape s : {Shape{1, 1, 1}, Shape{3, 4, 5}, Shape{7, 16, 40}}) {
    const auto x = test::random_vector(static_cast<size_t>(s.n * s.c), 1);
    const auto w1 = test::random_vector(static_cast<size_t>(s.h * s.c), 2);
    const auto w3 = test::random_vector(static_cast<size_t>(s.h * s.c), 3);
    const auto w2 = test::random_vector(static_cast<size_t>(s.c * s.h), 4);
    const auto want = swiglu_reference(x, w1, w3, w2, s.n, s.c, s.h);

    std::vector<double> y(want.size(), std::nan(""));
    SwiGluSaved<double> saved;
    swiglu_forward(y.data(), saved, x.data(), w1.data(), w3.data(), w2.data(), s.n, s.c, s.h);
    ASSERT_EQ(saved.h1.size(), static_cast<size_t>(s.n * s.h));
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(y[i], want[i], 1e-12 * (1 + std::abs(want[i])));

    const auto to_float = [](const std::vector<double>& v) {
      return std::vector<float>(v.begin(), v.end());
    };
    const auto xf = to_float(x), w1f = to_float(w1), w3f = to_float(w3), w2f = to_float(w2);
    std::vector<float> yf(want.size());
    SwiGluSaved<float> saved_f;
    swiglu_forward(yf.data(), saved_f, xf.data(), w1f.data(), w3f.data(), w2f.data(), s.n, s.c,
                   s.h);
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(yf[i], want[i], 1e-4 * (1 + std::abs(want[i])));
  }
}

TEST(SwiGlu, GradientsMatchFiniteDifferences) {
  for (const Shape s : {Shape{1, 1, 1}, Shape{3, 4, 5}, Shape{5, 8, 6}}) {
    const std::string tag =
        " (" + std::to_string(s.n) + "," + std::to_string(s.c) + "," + std::to_string(s.h) + ")";
    auto x = test::random_vector(static_cast<size_t>(s.n * s.c), 10 + s.c);
    auto w1 = test::random_vector(static_cast<size_t>(s.h * s.c), 20 + s.c, 0.5);
    auto w3 = test::random_vector(static_cast<size_t>(s.h * s.c), 30 + s.c, 0.5);
    auto w2 = test::random_vector(static_cast<size_t>(s.c * s.h), 40 + s.c, 0.5);
    const auto r = test::random_vector(static_cast<size_t>(s.n * s.c), 50 + s.c);
    auto loss = [&] {
      std::vector<double> y(r.size());
      SwiGluSaved<double> sv;
      swiglu_forward(y.data(), sv, x.data(), w1.data(), w3.data(), w2.data(), s.n, s.c, s.h);
      return test::dot(y, r);
    };
    std::vector<double> y(r.size());
    SwiGluSaved<double> saved;
    swiglu_forward(y.data(), saved, x.data(), w1.data(), w3.data(), w2.data(), s.n, s.c, s.h);
    std::vector<double> dx(x.size(), 0.0), dw1(w1.size(), 0.0), dw3(w3.size(), 0.0),
        dw2(w2.size(), 0.0);
    swiglu_backward(dx.data(), dw1.data(), dw3.data(), dw2.data(), r.data(), x.data(), saved,
                    w1.data(), w3.data(), w2.data(), s.n, s.c, s.h);
    test::check_gradient("swiglu dx" + tag, x, dx, loss, 40);
    test::check_gradient("swiglu dw1" + tag, w1, dw1, loss, 40);
    test::check_gradient("swiglu dw3" + tag, w3, dw3, loss, 40);
    test::check_gradient("swiglu dw2" + tag, w2, dw2, loss, 40);
  }
}

TEST(SwiGlu, BackwardAccumulates) {
  const int64_t n = 3, c = 4, h = 6;
  const auto x = test::random_vector(n * c, 1), dy = test::random_vector(n * c, 2);
  const auto w1 = test::random_vector(h * c, 3), w3 = test::random_vector(h * c, 4);
  const auto w2 = test::random_vector(c * h, 5);
  std::vector<double> y(n * c);
  SwiGluSaved<double> saved;
  swiglu_forward(y.data(), saved, x.data(), w1.data(), w3.data(), w2.data(), n, c, h);
  std::vector<double> dx0(n * c, 0.0), dw10(h * c, 0.0), dw30(h * c, 0.0), dw20(c * h, 0.0);
  std::vector<double> dx1(n * c, 1.0), dw11(h * c, 2.0), dw31(h * c, 3.0), dw21(c * h, 4.0);
  swiglu_backward(dx0.data(), dw10.data(), dw30.data(), dw20.data(), dy.data(), x.data(), saved,
                  w1.data(), w3.data(), w2.data(), n, c, h);
  swiglu_backward(dx1.data(), dw11.data(), dw31.data(), dw21.data(), dy.data(), x.data(), saved,
                  w1.data(), w3.data(), w2.data(), n, c, h);
  for (size_t i = 0; i < dx0.size(); ++i) EXPECT_NEAR(dx1[i], dx0[i] + 1.0, 1e-12);
  for (size_t i = 0; i < dw10.size(); ++i) {
    EXPECT_NEAR(dw11[i], dw10[i] + 2.0, 1e-12);
    EXPECT_NEAR(dw31[i], dw30[i] + 3.0, 1e-12);
    EXPECT_NEAR(dw21[i], dw20[i] + 4.0, 1e-12);
  }
}

}  // namespace
}  // namespace engram::nn
