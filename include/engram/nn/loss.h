// Cross-entropy over the vocabulary.
//
// logits are (N, V); targets are (N) class ids. A target < 0 marks a token that is not counted
// (padding, prompt): it adds nothing to the loss and gets a zero gradient, as PyTorch's
// ignore_index (-100 there; here any negative value). The loss is the mean over the counted
// tokens, computed per row as logsumexp(logits) - logits[target] with the row maximum subtracted
// first, in double. With no counted token the loss is 0 and the gradient 0 (PyTorch gives NaN).
// Per-row losses are summed in row order, so the result does not depend on the thread count.
#pragma once

#include <cstdint>

namespace engram::nn {

// Mean loss over the counted tokens of logits (N, V) against targets (N). If `counted` is given,
// the number of counted tokens (targets >= 0) is written there. Throws InputError naming the
// position and value of a target >= V.
template <class T>
double cross_entropy_forward(const T* logits, const int64_t* targets, int64_t n, int64_t v,
                             int64_t* counted = nullptr);

// dlogits (N, V) = (softmax(logits) - onehot(target)) * scale / count, written (not +=);
// rows with a negative target are zero. `scale` is the upstream gradient of the loss.
// Throws InputError as cross_entropy_forward.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const int64_t* targets, int64_t n,
                            int64_t v, T scale = T(1));

// Both in one pass over the logits: returns the loss as cross_entropy_forward and writes dlogits
// as cross_entropy_backward. dlogits may alias logits (the logits are then overwritten).
template <class T>
double cross_entropy_forward_backward(T* dlogits, const T* logits, const int64_t* targets,
                                      int64_t n, int64_t v, T scale = T(1),
                                      int64_t* counted = nullptr);

}  // namespace engram::nn
