// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, over the last dimension.
//
// x is (n, c) with a row stride (elements between consecutive rows), so a norm can run over one
// branch of a (B, T, M, d) tensor in place. Forward saves the per-row reciprocal RMS `rstd`
// (n), exactly what backward needs. Backward accumulates (+=) into dx and dw.
#pragma once

#include <cstdint>

namespace engram::nn {

struct RowLayout {
  int64_t n;       // rows
  int64_t c;       // columns (the normalized dimension)
  int64_t stride;  // elements from one row to the next (>= c)
};

// y (n, c) with y_stride, rstd (n).
template <class T>
void rmsnorm_forward(T* y, int64_t y_stride, T* rstd, const T* x, RowLayout x_layout, const T* w,
                     T eps);

// dx (n, c) with dx_stride (+=), dw (c) (+=), from dy (n, c) with dy_stride.
template <class T>
void rmsnorm_backward(T* dx, int64_t dx_stride, T* dw, const T* dy, int64_t dy_stride, const T* x,
                      RowLayout x_layout, const T* w, const T* rstd);

// Plain single-row forms, the definitions the above follow (used by the layer's fused loops).
template <class T>
T rmsnorm_row_forward(T* y, const T* x, const T* w, int64_t c, T eps);
template <class T>
void rmsnorm_row_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, T rstd, int64_t c);

}  // namespace engram::nn
