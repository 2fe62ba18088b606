#include "engram/nn/mlp.h"

#include <cassert>
#include <cmath>

#include "engram/tensor/gemm.h"
#include "engram/util/parallel.h"
#include "nn/activation.h"

namespace engram::nn {
namespace {

// g (n*h) = SiLU(h1) ⊙ h3.
template <class T>
void swiglu_gate(T* g, const T* h1, const T* h3, size_t size) {
  parallel_for(size, 0, 4096, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) g[i] = h1[i] * sigmoid(h1[i]) * h3[i];
  });
}

}  // namespace

template <class T>
void swiglu_forward(T* y, SwiGluSaved<T>& saved, const T* x, const T* w1, const T* w3, const T* w2,
                    int64_t n, int64_t c, int64_t h) {
  const size_t size = static_cast<size_t>(n * h);
  saved.h1.resize(size);
  saved.h3.resize(size);
  gemm<T>(Trans::kNo, Trans::kYes, n, h, c, T(1), x, c, w1, c, T(0), saved.h1.data(), h);
  gemm<T>(Trans::kNo, Trans::kYes, n, h, c, T(1), x, c, w3, c, T(0), saved.h3.data(), h);
  std::vector<T> g(size);
  swiglu_gate(g.data(), saved.h1.data(), saved.h3.data(), size);
  gemm<T>(Trans::kNo, Trans::kYes, n, c, h, T(1), g.data(), h, w2, h, T(0), y, c);
}

// With s = σ(h1), g = h1 s h3 and dg = dy W2:
//   dh1 = dg h3 s (1 + h1 (1 - s)),   dh3 = dg h1 s,
//   dW2 += dy^T g,  dW1 += dh1^T x,  dW3 += dh3^T x,  dx += dh1 W1 + dh3 W3.
template <class T>
void swiglu_backward(T* dx, T* dw1, T* dw3, T* dw2, const T* dy, const T* x,
                     const SwiGluSaved<T>& saved, const T* w1, const T* w3, const T* w2, int64_t n,
                     int64_t c, int64_t h) {
  const size_t size = static_cast<size_t>(n * h);
  assert(saved.h1.size() == size && saved.h3.size() == size);
  const T* h1 = saved.h1.data();
  const T* h3 = saved.h3.data();
  std::vector<T> g(size), dg(size);
  swiglu_gate(g.data(), h1, h3, size);
  gemm<T>(Trans::kYes, Trans::kNo, c, h, n, T(1), dy, c, g.data(), h, T(1), dw2, h);
  gemm<T>(Trans::kNo, Trans::kNo, n, h, c, T(1), dy, c, w2, h, T(0), dg.data(), h);
  // dg becomes dh1 and g becomes dh3, in place.
  T* dh1 = dg.data();
  T* dh3 = g.data();
  parallel_for(size, 0, 4096, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const T s = sigmoid(h1[i]);
      const T d = dh1[i];
      dh1[i] = d * h3[i] * s * (T(1) + h1[i] * (T(1) - s));
      dh3[i] = d * h1[i] * s;
    }
  });
  gemm<T>(Trans::kYes, Trans::kNo, h, c, n, T(1), dh1, h, x, c, T(1), dw1, c);
  gemm<T>(Trans::kYes, Trans::kNo, h, c, n, T(1), dh3, h, x, c, T(1), dw3, c);
  gemm<T>(Trans::kNo, Trans::kNo, n, c, h, T(1), dh1, h, w1, c, T(1), dx, c);
  gemm<T>(Trans::kNo, Trans::kNo, n, c, h, T(1), dh3, h, w3, c, T(1), dx, c);
}

#define ENGRAM_INSTANTIATE(T)                                                                  \
  template void swiglu_forward<T>(T*, SwiGluSaved<T>&, const T*, const T*, const T*, const T*, \
                                  int64_t, int64_t, int64_t);                                  \
  template void swiglu_backward<T>(T*, T*, T*, T*, const T*, const T*, const SwiGluSaved<T>&,  \
                                   const T*, const T*, const T*, int64_t, int64_t, int64_t);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
