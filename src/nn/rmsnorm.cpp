#include "engram/nn/rmsnorm.h"

#include <cmath>
#include <vector>

#include "engram/util/parallel.h"

namespace engram::nn {

template <class T>
T rmsnorm_row_forward(T* y, const T* x, const T* w, int64_t c, T eps) {
  T ss = 0;
  for (int64_t i = 0; i < c; ++i) ss += x[i] * x[i];
  const T rstd = T(1) / std::sqrt(ss / static_cast<T>(c) + eps);
  for (int64_t i = 0; i < c; ++i) y[i] = x[i] * rstd * w[i];
  return rstd;
}

// y_i = x_i r w_i, r = (mean(x^2) + eps)^(-1/2):
//   dx_i = r w_i dy_i - x_i r^3 / c * sum_j dy_j w_j x_j,   dw_i = dy_i x_i r.
template <class T>
void rmsnorm_row_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, T rstd, int64_t c) {
  T dot = 0;
  for (int64_t i = 0; i < c; ++i) dot += dy[i] * w[i] * x[i];
  const T k = dot * rstd * rstd * rstd / static_cast<T>(c);
  for (int64_t i = 0; i < c; ++i) {
    dx[i] += rstd * w[i] * dy[i] - x[i] * k;
    dw[i] += dy[i] * x[i] * rstd;
  }
}

template <class T>
void rmsnorm_forward(T* y, int64_t y_stride, T* rstd, const T* x, RowLayout xl, const T* w, T eps) {
  parallel_for(static_cast<size_t>(xl.n), 0, 256, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      const auto row = static_cast<int64_t>(r);
      rstd[r] = rmsnorm_row_forward(y + row * y_stride, x + row * xl.stride, w, xl.c, eps);
    }
  });
}

template <class T>
void rmsnorm_backward(T* dx, int64_t dx_stride, T* dw, const T* dy, int64_t dy_stride, const T* x,
                      RowLayout xl, const T* w, const T* rstd) {
  // Rows are cut into a fixed number of chunks whose dw partials are summed in chunk order, so
  // the result does not depend on the number of threads.
  constexpr size_t kChunks = 64;
  const size_t n = static_cast<size_t>(xl.n);
  const size_t c = static_cast<size_t>(xl.c);
  std::vector<T> partial(kChunks * c, T(0));
  parallel_for(kChunks, 0, 1, [&](size_t cb, size_t ce) {
    for (size_t chunk = cb; chunk < ce; ++chunk) {
      T* pw = partial.data() + chunk * c;
      for (size_t r = n * chunk / kChunks; r < n * (chunk + 1) / kChunks; ++r) {
        const auto row = static_cast<int64_t>(r);
        rmsnorm_row_backward(dx + row * dx_stride, pw, dy + row * dy_stride, x + row * xl.stride, w,
                             rstd[r], xl.c);
      }
    }
  });
  for (size_t chunk = 0; chunk < kChunks; ++chunk) {
    for (size_t i = 0; i < c; ++i) dw[i] += partial[chunk * c + i];
  }
}

#define ENGRAM_INSTANTIATE(T)                                                                \
  template T rmsnorm_row_forward<T>(T*, const T*, const T*, int64_t, T);                     \
  template void rmsnorm_row_backward<T>(T*, T*, const T*, const T*, const T*, T, int64_t);   \
  template void rmsnorm_forward<T>(T*, int64_t, T*, const T*, RowLayout, const T*, T);       \
  template void rmsnorm_backward<T>(T*, int64_t, T*, const T*, int64_t, const T*, RowLayout, \
                                    const T*, const T*);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
