#include "engram/nn/loss.h"

#include <algorithm>
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
