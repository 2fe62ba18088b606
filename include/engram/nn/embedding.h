// Token embedding and the broadcast of the embedded stream to M residual branches.
//
// table is (V, C); ids are (N) token ids in [0, V); out is (N, C) = table[ids]. The gradient of
// the table is sparse, as the Engram layer's (SparseRowGrad): the distinct ids, sorted, each with
// the sum of its tokens' output gradients taken in token order (deterministic, never a dense
// (V, C) buffer).
#pragma once

#include <cstdint>

#include "engram/nn/engram_layer.h"  // SparseRowGrad

namespace engram::nn {

// out (N, C) = table[ids], from table (V, C) and ids (N). Throws InputError naming the position
// and value of the first id outside [0, V) (out is then unspecified).
template <class T>
void embedding_forward(T* out, const int64_t* ids, const T* table, int64_t n, int64_t c, int64_t v);

// grad = the table's gradient from dout (N, C) and the ids forward read (already checked there).
// grad is overwritten (its buffers keep their capacity): grad.rows (sorted unique ids),
// grad.values (rows.size(), C), grad.width = C.
template <class T>
void embedding_backward(SparseRowGrad<T>& grad, const T* dout, const int64_t* ids, int64_t n,
                        int64_t c);

// out (N, M, C) = x (N, C) copied to each of the M branches ((B, T, C) -> (B, T, M, C), N = B*T).
template <class T>
void broadcast_streams_forward(T* out, const T* x, int64_t n, int64_t m, int64_t c);

// dx (N, C) += sum over branches of dout (N, M, C), branches summed in order 0..M-1.
template <class T>
void broadcast_streams_backward(T* dx, const T* dout, int64_t n, int64_t m, int64_t c);

}  // namespace engram::nn
