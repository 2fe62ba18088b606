// Finite-difference gradient checks in float64.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace engram::test {

// Central differences of loss() with respect to values[i] for a sample of up to `max_checks`
// indices, compared with analytic[i]: |a - f| <= tol * max(1, |a| + |f|) (relative for large
// gradients, absolute near zero). Returns the largest error seen.
inline double check_gradient(const std::string& what, std::vector<double>& values,
                             const std::vector<double>& analytic,
                             const std::function<double()>& loss, size_t max_checks = 24,
                             double h = 1e-6, double tol = 1e-6) {
  EXPECT_EQ(values.size(), analytic.size()) << what;
  std::mt19937_64 rng(values.size() * 7919 + what.size());
  double worst = 0;
  const size_t n = values.size();
  for (size_t k = 0; k < std::min(n, max_checks); ++k) {
    const size_t i = n <= max_checks ? k : static_cast<size_t>(rng() % n);
    const double saved = values[i];
    values[i] = saved + h;
    const double up = loss();
    values[i] = saved - h;
    const double down = loss();
    values[i] = saved;
    const double fd = (up - down) / (2 * h);
    const double err =
        std::abs(fd - analytic[i]) / std::max(1.0, std::abs(fd) + std::abs(analytic[i]));
    worst = std::max(worst, err);
    EXPECT_LE(err, tol) << what << "[" << i << "]: analytic " << analytic[i]
                        << ", finite difference " << fd;
  }
  return worst;
}

inline std::vector<double> random_vector(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace engram::test
