// Scalar activations shared by the layers (private).
#pragma once

#include <cmath>

namespace engram::nn {

template <class T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

}  // namespace engram::nn
