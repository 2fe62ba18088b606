// SwiGLU MLP without biases (BACKBONE_SPEC §3-4): y = W2 (SiLU(W1 x) ⊙ W3 x), SiLU(a) = a σ(a).
//
// x is (N, C), W1 and W3 are (H, C), W2 is (C, H), y is (N, C). Forward saves the two
// pre-activations h1 = x W1^T and h3 = x W3^T (N, H each), exactly what backward needs (the gate
// SiLU(h1) ⊙ h3 is recomputed there). Backward accumulates (+=) into dx, dw1, dw3 and dw2.
#pragma once

#include <cstdint>
#include <vector>

namespace engram::nn {

// What swiglu_forward saves for swiglu_backward. Reuse one across steps: its buffers keep their
// capacity.
template <class T>
struct SwiGluSaved {
  std::vector<T> h1;  // (N, H) x W1^T
  std::vector<T> h3;  // (N, H) x W3^T
};

// y (N, C) = W2 (SiLU(W1 x) ⊙ W3 x), from x (N, C), w1 (H, C), w3 (H, C), w2 (C, H).
template <class T>
void swiglu_forward(T* y, SwiGluSaved<T>& saved, const T* x, const T* w1, const T* w3, const T* w2,
                    int64_t n, int64_t c, int64_t h);

// dx (N, C), dw1 (H, C), dw3 (H, C), dw2 (C, H), all +=, from dy (N, C) and what forward saved.
template <class T>
void swiglu_backward(T* dx, T* dw1, T* dw3, T* dw2, const T* dy, const T* x,
                     const SwiGluSaved<T>& saved, const T* w1, const T* w3, const T* w2, int64_t n,
                     int64_t c, int64_t h);

}  // namespace engram::nn
