// ShortConv of the Engram layer: per-branch RMSNorm, then a causal depthwise dilated conv over
// time, then SiLU.
//
//   x  (B, T, M, d)  branch-major channels c = m*d + i, C = M*d
//   xn[b,t,m,:] = RMSNorm_m(x[b,t,m,:])                      eps (1e-5), weight norm_w (M, d)
//   u[b,t,c]    = sum_j W[c,j] * xn[b, t - dilation*(w-1-j), c]   (0 before t = 0), W (C, w)
//   y           = SiLU(u)   (or u when activation is off)
#pragma once

#include <cstdint>
#include <vector>

namespace engram::nn {

struct ShortConvShape {
  int64_t batch, seq, branches, dim;  // B, T, M, d
  int64_t kernel = 4;                 // w
  int64_t dilation = 1;
  bool activation = true;
  int64_t channels() const { return branches * dim; }
  int64_t tokens() const { return batch * seq; }
};

// What forward saves for backward.
template <class T>
struct ShortConvSaved {
  std::vector<T> xn;    // (B, T, C) normalized input
  std::vector<T> rstd;  // (B*T*M)
  std::vector<T> u;     // (B, T, C) pre-activation
  // Backward's scratch, kept so that repeated steps do not allocate (and fault in) fresh pages.
  mutable std::vector<T> du, dxn;  // (B, T, C)
};

// y (B, T, C).
template <class T>
void short_conv_forward(T* y, ShortConvSaved<T>& saved, const T* x, const T* conv_w,
                        const T* norm_w, const ShortConvShape& s, T eps);

// dx (+=), d_conv_w (C, w) (+=), d_norm_w (M, d) (+=), from dy (B, T, C).
template <class T>
void short_conv_backward(T* dx, T* d_conv_w, T* d_norm_w, const T* dy, const T* x,
                         const ShortConvSaved<T>& saved, const T* conv_w, const T* norm_w,
                         const ShortConvShape& s);

}  // namespace engram::nn
