#include "engram/nn/short_conv.h"

#include <cmath>

#include "engram/nn/rmsnorm.h"
#include "engram/util/parallel.h"
#include "nn/activation.h"

namespace engram::nn {
template <class T>
void short_conv_forward(T* y, ShortConvSaved<T>& saved, const T* x, const T* conv_w,
                        const T* norm_w, const ShortConvShape& s, T eps) {
  const int64_t C = s.channels(), d = s.dim, w = s.kernel;
  const size_t n = static_cast<size_t>(s.tokens() * C);
  saved.xn.assign(n, T(0));
  saved.rstd.assign(static_cast<size_t>(s.tokens() * s.branches), T(0));
  saved.u.assign(n, T(0));
  // Per-branch norms: rows of d, one per (token, branch).
  parallel_for(static_cast<size_t>(s.tokens()), 0, 64, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t) {
      for (int64_t m = 0; m < s.branches; ++m) {
        const size_t row = t * static_cast<size_t>(s.branches) + static_cast<size_t>(m);
        saved.rstd[row] =
            rmsnorm_row_forward(saved.xn.data() + row * static_cast<size_t>(d),
                                x + row * static_cast<size_t>(d), norm_w + m * d, d, eps);
      }
    }
  });
  // Causal dilated depthwise conv, then the activation.
  parallel_for(static_cast<size_t>(s.tokens()), 0, 64, [&](size_t b, size_t e) {
    for (size_t bt = b; bt < e; ++bt) {
      const int64_t t = static_cast<int64_t>(bt) % s.seq;
      T* u = saved.u.data() + bt * static_cast<size_t>(C);
      for (int64_t j = 0; j < w; ++j) {
        const int64_t back = s.dilation * (w - 1 - j);
        if (t - back < 0) continue;
        const T* src = saved.xn.data() + (bt - static_cast<size_t>(back)) * static_cast<size_t>(C);
        for (int64_t c = 0; c < C; ++c) u[c] += conv_w[c * w + j] * src[c];
      }
      T* out = y + bt * static_cast<size_t>(C);
      for (int64_t c = 0; c < C; ++c) out[c] = s.activation ? u[c] * sigmoid(u[c]) : u[c];
    }
  });
}

template <class T>
void short_conv_backward(T* dx, T* d_conv_w, T* d_norm_w, const T* dy, const T* x,
                         const ShortConvSaved<T>& saved, const T* conv_w, const T* norm_w,
                         const ShortConvShape& s) {
  const int64_t C = s.channels(), d = s.dim, w = s.kernel, tokens = s.tokens();
  // du = dy * SiLU'(u), SiLU'(u) = sig(u) (1 + u (1 - sig(u))).
  std::vector<T>& du = saved.du;
  du.resize(static_cast<size_t>(tokens * C));
  parallel_for(du.size(), 0, 4096, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const T u = saved.u[i];
      du[i] = s.activation ? dy[i] * sigmoid(u) * (T(1) + u * (T(1) - sigmoid(u))) : dy[i];
    }
  });
  // Weight gradient and input gradient, parallel over channels: each channel's sums run over
  // (b, t) in order, so the result does not depend on the number of threads.
  std::vector<T>& dxn = saved.dxn;
  dxn.assign(static_cast<size_t>(tokens * C), T(0));
  parallel_for(static_cast<size_t>(C), 0, 16, [&](size_t cb, size_t ce) {
    for (int64_t bt = 0; bt < tokens; ++bt) {
      const int64_t t = bt % s.seq;
      for (int64_t j = 0; j < w; ++j) {
        const int64_t back = s.dilation * (w - 1 - j);
        if (t - back < 0) continue;
        const T* g = du.data() + bt * C;
        const T* src = saved.xn.data() + (bt - back) * C;
        T* dsrc = dxn.data() + (bt - back) * C;
        for (size_t c = cb; c < ce; ++c) {
          d_conv_w[c * static_cast<size_t>(w) + static_cast<size_t>(j)] += g[c] * src[c];
          dsrc[c] += conv_w[c * static_cast<size_t>(w) + static_cast<size_t>(j)] * g[c];
        }
      }
    }
  });
  // Back through the per-branch norms: rows of (token, branch).
  for (int64_t m = 0; m < s.branches; ++m) {
    const RowLayout layout{tokens, d, C};
    std::vector<T> rstd_m(static_cast<size_t>(tokens));
    for (int64_t bt = 0; bt < tokens; ++bt)
      rstd_m[static_cast<size_t>(bt)] = saved.rstd[static_cast<size_t>(bt * s.branches + m)];
    rmsnorm_backward(dx + m * d, C, d_norm_w + m * d, dxn.data() + m * d, C, x + m * d, layout,
                     norm_w + m * d, rstd_m.data());
  }
}

#define ENGRAM_INSTANTIATE(T)                                                                    \
  template void short_conv_forward<T>(T*, ShortConvSaved<T>&, const T*, const T*, const T*,      \
                                      const ShortConvShape&, T);                                 \
  template void short_conv_backward<T>(T*, T*, T*, const T*, const T*, const ShortConvSaved<T>&, \
                                       const T*, const T*, const ShortConvShape&);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
