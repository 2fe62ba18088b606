#include "engram/nn/loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "nn/grad_check.h"

namespace engram::nn {
namespace {

TEST(CrossEntropy, MatchesHandComputedValue) {
  // Row 0: log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2); row 1: log(3).
  const std::vector<double> logits = {1, 2, 3, 1, 1, 1};
  const std::vector<int64_t> targets = {2, 0};
  int64_t counted = -1;
  const double loss = cross_entropy_forward(logits.data(), targets.data(), 2, 3, &counted);
  EXPECT_NEAR(loss, (0.40760596444438013 + 1.0986122886681098) / 2, 1e-15);
  EXPECT_NEAR(loss, 0.753109126556245, 1e-15);
  EXPECT_EQ(counted, 2);
  const std::vector<float> logits_f(logits.begin(), logits.end());
  EXPECT_NEAR(cross_entropy_forward(logits_f.data(), targets.data(), 2, 3), 0.753109126556245,
              1e-7);

  // Gradient: (softmax - onehot) / 2.
  std::vector<double> d(6);
  cross_entropy_backward(d.data(), logits.data(), targets.data(), 2, 3);
  const double z = std::exp(1) + std::exp(2) + std::exp(3);
  EXPECT_NEAR(d[0], std::exp(1) / z / 2, 1e-15);
  EXPECT_NEAR(d[2], (std::exp(3) / z - 1) / 2, 1e-15);
  EXPECT_NEAR(d[3], (1.0 / 3 - 1) / 2, 1e-15);
  EXPECT_NEAR(d[4], 1.0 / 3 / 2, 1e-15);
}

TEST(CrossEntropy, IgnoresNegativeTargets) {
  const int64_t v = 5;
  const auto logits = test::random_vector(4 * v, 1);
  const std::vector<int64_t> targets = {-100, 3, -1, 0};
  int64_t counted = 0;
  const double loss = cross_entropy_forward(logits.data(), targets.data(), 4, v, &counted);
  EXPECT_EQ(counted, 2);
  const std::vector<int64_t> one = {3}, other = {0};
  const double l1 = cross_entropy_forward(logits.data() + v, one.data(), 1, v);
  const double l3 = cross_entropy_forward(logits.data() + 3 * v, other.data(), 1, v);
  EXPECT_NEAR(loss, (l1 + l3) / 2, 1e-15);

  std::vector<double> d(logits.size(), 7.0);
  cross_entropy_backward(d.data(), logits.data(), targets.data(), 4, v);
  for (int64_t j = 0; j < v; ++j) {
    EXPECT_EQ(d[j], 0.0);
    EXPECT_EQ(d[2 * v + j], 0.0);
  }
  EXPECT_NE(d[v], 0.0);

  // Nothing counted: loss 0, gradient 0.
  const std::vector<int64_t> none = {-1, -1, -100, -5};
  EXPECT_EQ(cross_entropy_forward(logits.data(), none.data(), 4, v, &counted), 0.0);
  EXPECT_EQ(counted, 0);
  cross_entropy_backward(d.data(), logits.data(), none.data(), 4, v);
  for (const double g : d) EXPECT_EQ(g, 0.0);
}

TEST(CrossEntropy, StableForHugeLogits) {
  const std::vector<float> logits = {1e4f, 0.0f, -1e4f, 1e4f, 1e4f, 1e4f};
  const std::vector<int64_t> targets = {0, 1};
  const double loss = cross_entropy_forward(logits.data(), targets.data(), 2, 3);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(loss, (0.0 + std::log(3.0)) / 2, 1e-12);
  const std::vector<int64_t> wrong = {2, 1};
  EXPECT_NEAR(cross_entropy_forward(logits.data(), wrong.data(), 2, 3), (2e4 + std::log(3.0)) / 2,
              1e-9);
  std::vector<float> d(6);
  cross_entropy_backward(d.data(), logits.data(), wrong.data(), 2, 3);
  for (const float g : d) EXPECT_TRUE(std::isfinite(g));
  EXPECT_NEAR(d[0], 0.5f, 1e-7);
  EXPECT_NEAR(d[2], -0.5f, 1e-7);
  EXPECT_NEAR(d[4], (1.0f / 3 - 1) / 2, 1e-7);
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  struct Shape {
    int64_t n, v;
  };
  for (const Shape s : {Shape{1, 2}, Shape{4, 7}, Shape{6, 33}}) {
    auto logits = test::random_vector(static_cast<size_t>(s.n * s.v), 10 + s.v, 2.0);
    std::vector<int64_t> targets(static_cast<size_t>(s.n));
    for (int64_t i = 0; i < s.n; ++i) targets[i] = (i % 3 == 2) ? -100 : (i * 5 + 1) % s.v;
    const double scale = 0.7;
    auto loss = [&] {
      return scale * cross_entropy_forward(logits.data(), targets.data(), s.n, s.v);
    };
    std::vector<double> d(logits.size());
    cross_entropy_backward(d.data(), logits.data(), targets.data(), s.n, s.v, scale);
    test::check_gradient(
        "cross entropy dlogits (" + std::to_string(s.n) + "," + std::to_string(s.v) + ")", logits,
        d, loss, 60);
  }
}

TEST(CrossEntropy, FusedMatchesSeparatePasses) {
  const int64_t n = 5, v = 11;
  const auto logits = test::random_vector(n * v, 3);
  const std::vector<int64_t> targets = {1, -1, 10, 0, 4};
  std::vector<double> d(logits.size());
  cross_entropy_backward(d.data(), logits.data(), targets.data(), n, v, 2.0);
  std::vector<double> fused = logits;  // in place: the gradient replaces the logits
  int64_t counted = 0;
  const double loss = cross_entropy_forward_backward(fused.data(), fused.data(), targets.data(), n,
                                                     v, 2.0, &counted);
  EXPECT_EQ(loss, cross_entropy_forward(logits.data(), targets.data(), n, v));
  EXPECT_EQ(counted, 4);
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(fused[i], d[i]);
}

TEST(CrossEntropy, OutOfRangeTargetsThrow) {
  const std::vector<double> logits(6, 0.0);
  const std::vector<int64_t> targets = {1, 3};
  std::vector<double> d(6);
  try {
    cross_entropy_forward(logits.data(), targets.data(), 2, 3);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("targets[1]"), std::string::npos) << what;
    EXPECT_NE(what.find("target 3"), std::string::npos) << what;
  }
  EXPECT_THROW(cross_entropy_backward(d.data(), logits.data(), targets.data(), 2, 3), InputError);
  EXPECT_THROW(cross_entropy_forward_backward(d.data(), logits.data(), targets.data(), 2, 3),
               InputError);
}

}  // namespace
}  // namespace engram::nn
