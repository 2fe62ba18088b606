// Helpers shared by the CUDA tests: the GPU skip, random inputs, host <-> device copies and a
// normalised error. Tests import what they use (using test_util::random_vec; ...).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/tensor/dtype.h"

// Skips the test on a machine without a CUDA device (CI compiles the GPU tests and skips them).
#define SKIP_WITHOUT_GPU() \
  if (::engram::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine"

namespace engram::cuda::test_util {

// size values ~ N(0, sd), from mt19937_64(seed).
inline std::vector<float> random_vec(size_t size, uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(size);
  for (float& x : v) x = normal(rng);
  return v;
}

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
  if (host.empty()) return DeviceBuffer<T>();
  return DeviceBuffer<T>(std::span<const T>(host));
}

template <class T>
std::vector<T> to_host(const DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  if (!h.empty()) d.download(h);
  return h;
}

// Every value rounded to bf16 (and back to float).
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

inline std::vector<float> from_bf16(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

// max |got - want| / max(max |want|, 1e-6); infinite when NaN appears on one side only.
inline double normalised_error(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double g = got[i], w = want[i];
    diff = std::isnan(g) != std::isnan(w) ? INFINITY : std::max(diff, std::abs(g - w));
    scale = std::max(scale, std::abs(w));
  }
  return diff / std::max(scale, 1e-6);
}

}  // namespace engram::cuda::test_util
