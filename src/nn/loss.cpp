#include "engram/nn/loss.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>
#include <cmath>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::nn {
namespace {

// Checks every target and returns how many are counted (>= 0).
int64_t count_targets(const int64_t* targets, int64_t n, int64_t v) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] >= v) {
      throw InputError(error_message(
          "cross entropy: targets[" + std::to_string(i) + "]",
          "target " + std::to_string(targets[i]) + " out of range [0, " + std::to_string(v) + ")"));
    }
    if (targets[i] >= 0) ++count;
  }
  return count;
}

// log(sum_j exp(x_j)) of one row, with the maximum subtracted first, in double.
template <class T>
double row_logsumexp(const T* x, int64_t v) {
  double mx = static_cast<double>(x[0]);
  for (int64_t j = 1; j < v; ++j) mx = std::max(mx, static_cast<double>(x[j]));
  double sum = 0;
  for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(x[j]) - mx);
  return mx + std::log(sum);
}

// float rows: exp(x) for x <= 0 in float (Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-5
// polynomial, about 1 ulp), branch-free so that the loops vectorize; row sums in double.
// Arguments below -87.3 (where expf underflows) give exp(-87.3) ~ 1e-38 instead of 0, which
// changes no sum. Compiled for AVX-512, AVX2 and the baseline, chosen at load time.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.3f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(shifter);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((ni + 127) << 23);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define ENGRAM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ENGRAM_CLONES
#endif

// sum_j exp(x_j - mx) of a float row: blocks of 256 summed in 16 float lanes, block sums added
// in double.
ENGRAM_CLONES double row_sum_exp_f32(const float* x, int64_t v, float mx) {
  double sum = 0;
  for (int64_t j0 = 0; j0 < v; j0 += 256) {
    const int64_t len = std::min<int64_t>(256, v - j0);
    float e[256];
    for (int64_t j = 0; j < len; ++j) e[j] = exp_nonpositive(x[j0 + j] - mx);
    for (int64_t j = len; j < 256; ++j) e[j] = 0.0f;
    float lanes[16] = {};
    for (int64_t j = 0; j < 256; j += 16) {
      for (int k = 0; k < 16; ++k) lanes[k] += e[j + k];
    }
    for (float l : lanes) sum += static_cast<double>(l);
  }
  return sum;
}

// GCC vector extension: 16 floats, one zmm register in the AVX-512 clone.
typedef float Float16 __attribute__((vector_size(64)));

ENGRAM_CLONES float row_max_f32(const float* x, int64_t v) {
  float mx = x[0];
  int64_t j = 0;
  if (v >= 16) {
    Float16 m;
    std::memcpy(&m, x, sizeof m);
    for (; j + 16 <= v; j += 16) {
      Float16 c;
      std::memcpy(&c, x + j, sizeof c);
      m = c > m ? c : m;
    }
    for (int k = 0; k < 16; ++k) mx = std::max(mx, m[k]);
  }
  for (; j < v; ++j) mx = std::max(mx, x[j]);
  return mx;
}

// d_j = exp(x_j - lse) * scale (the target's -scale is added by the caller). d may equal x.
ENGRAM_CLONES void row_softmax_f32(float* d, const float* x, int64_t v, float lse, float scale) {
  for (int64_t j0 = 0; j0 < v; j0 += 256) {
    const int64_t len = std::min<int64_t>(256, v - j0);
    float e[256];
    for (int64_t j = 0; j < 256; ++j) e[j] = x[j0 + std::min(j, len - 1)];
    for (int64_t j = 0; j < 256; ++j) e[j] = exp_nonpositive(e[j] - lse) * scale;
    std::copy(e, e + len, d + j0);
  }
}

template <>
double row_logsumexp<float>(const float* x, int64_t v) {
  const float mx = row_max_f32(x, v);
  return static_cast<double>(mx) + std::log(row_sum_exp_f32(x, v, mx));
}

// The shared pass: returns the mean loss over counted rows and, when dlogits is given, writes the
// gradient. Each row reads its logits before writing its gradient, so dlogits may alias logits.
template <class T>
double cross_entropy_pass(T* dlogits, const T* logits, const int64_t* targets, int64_t n, int64_t v,
                          T scale, int64_t* counted) {
  const int64_t count = count_targets(targets, n, v);
  if (counted != nullptr) *counted = count;
  const double grad_scale = count > 0 ? static_cast<double>(scale) / static_cast<double>(count) : 0;
  std::vector<double> row_loss(static_cast<size_t>(n), 0.0);
  parallel_for(static_cast<size_t>(n), 0, 1, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      const int64_t row = static_cast<int64_t>(r);
      const T* x = logits + row * v;
      const int64_t target = targets[r];
      if (target < 0) {
        if (dlogits != nullptr) std::fill(dlogits + row * v, dlogits + (row + 1) * v, T(0));
        continue;
      }
      const double lse = row_logsumexp(x, v);
      row_loss[r] = lse - static_cast<double>(x[target]);
      if constexpr (std::is_same_v<T, float>) {
        if (dlogits != nullptr) {
          const double target_logit = static_cast<double>(x[target]);
          float* d = dlogits + row * v;
          row_softmax_f32(d, x, v, static_cast<float>(lse), static_cast<float>(grad_scale));
          d[target] = static_cast<float>(
              (std::exp(target_logit - lse) - 1.0) * grad_scale);
        }
        continue;
      }
      if (dlogits != nullptr) {
        T* d = dlogits + row * v;
        for (int64_t j = 0; j < v; ++j) {
          const double p = std::exp(static_cast<double>(x[j]) - lse);
          d[j] = static_cast<T>((p - (j == target ? 1.0 : 0.0)) * grad_scale);
        }
      }
    }
  });
  if (count == 0) return 0.0;
  double sum = 0;
  for (const double l : row_loss) sum += l;
  return sum / static_cast<double>(count);
}

}  // namespace

template <class T>
double cross_entropy_forward(const T* logits, const int64_t* targets, int64_t n, int64_t v,
                             int64_t* counted) {
  return cross_entropy_pass<T>(nullptr, logits, targets, n, v, T(1), counted);
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const int64_t* targets, int64_t n,
                            int64_t v, T scale) {
  cross_entropy_pass<T>(dlogits, logits, targets, n, v, scale, nullptr);
}

template <class T>
double cross_entropy_forward_backward(T* dlogits, const T* logits, const int64_t* targets,
                                      int64_t n, int64_t v, T scale, int64_t* counted) {
  return cross_entropy_pass<T>(dlogits, logits, targets, n, v, scale, counted);
}

#define ENGRAM_INSTANTIATE(T)                                                                     \
  template double cross_entropy_forward<T>(const T*, const int64_t*, int64_t, int64_t, int64_t*); \
  template void cross_entropy_backward<T>(T*, const T*, const int64_t*, int64_t, int64_t, T);     \
  template double cross_entropy_forward_backward<T>(T*, const T*, const int64_t*, int64_t,        \
                                                    int64_t, T, int64_t*);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
