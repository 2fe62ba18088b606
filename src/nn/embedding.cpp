#include "engram/nn/embedding.h"

#include <algorithm>
#include <cassert>
#include <numeric>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::nn {

template <class T>
void embedding_forward(T* out, const int64_t* ids, const T* table, int64_t n, int64_t c,
                       int64_t v) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= v) {
      throw InputError(error_message(
          "embedding: ids[" + std::to_string(i) + "]",
          "id " + std::to_string(ids[i]) + " out of range [0, " + std::to_string(v) + ")"));
    }
  }
  parallel_for(static_cast<size_t>(n), 0, 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const T* src = table + ids[i] * c;
      std::copy(src, src + c, out + static_cast<int64_t>(i) * c);
    }
  });
}

template <class T>
void embedding_backward(SparseRowGrad<T>& grad, const T* dout, const int64_t* ids, int64_t n,
                        int64_t c) {
  // Tokens sorted by id (stably, so each row's sum runs in token order), then summed per id.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  grad.width = c;
  grad.rows.clear();
  grad.values.clear();
  for (const int64_t token : order) {
    assert(ids[token] >= 0);
    if (grad.rows.empty() || grad.rows.back() != ids[token]) {
      grad.rows.push_back(ids[token]);
      grad.values.resize(grad.values.size() + static_cast<size_t>(c), T(0));
    }
    T* dst = grad.values.data() + grad.values.size() - static_cast<size_t>(c);
    const T* src = dout + token * c;
    for (int64_t j = 0; j < c; ++j) dst[j] += src[j];
  }
}

template <class T>
void broadcast_streams_forward(T* out, const T* x, int64_t n, int64_t m, int64_t c) {
  parallel_for(static_cast<size_t>(n), 0, 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const auto t = static_cast<int64_t>(i);
      for (int64_t k = 0; k < m; ++k) std::copy(x + t * c, x + (t + 1) * c, out + (t * m + k) * c);
    }
  });
}

template <class T>
void broadcast_streams_backward(T* dx, const T* dout, int64_t n, int64_t m, int64_t c) {
  parallel_for(static_cast<size_t>(n), 0, 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const auto t = static_cast<int64_t>(i);
      for (int64_t k = 0; k < m; ++k) {
        const T* src = dout + (t * m + k) * c;
        for (int64_t j = 0; j < c; ++j) dx[t * c + j] += src[j];
      }
    }
  });
}

#define ENGRAM_INSTANTIATE(T)                                                                  \
  template void embedding_forward<T>(T*, const int64_t*, const T*, int64_t, int64_t, int64_t); \
  template void embedding_backward<T>(SparseRowGrad<T>&, const T*, const int64_t*, int64_t,    \
                                      int64_t);                                                \
  template void broadcast_streams_forward<T>(T*, const T*, int64_t, int64_t, int64_t);         \
  template void broadcast_streams_backward<T>(T*, const T*, int64_t, int64_t, int64_t);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
