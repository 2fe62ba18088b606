// The Engram layer's CUDA kernels (src/cuda/engram_layer.cu), in plain types: the .cu files are
// C++17 and cannot include the std::span headers that GpuEngramLayer's file uses. Every launcher
// runs asynchronously on the default stream, or on the `stream` it takes (the decoding step's),
// and throws engram::Error on a launch failure.
// Layouts follow src/nn/engram_layer.cpp: tokens = B*T, kvr = (1+M)*d, C = M*d.
//
// A is the activation type, float or engram::bf16 (explicit instantiations in the .cu file):
// every (tokens, ...) tensor is stored in A; per-row statistics (rstd, score, alpha), parameters
// and parameter gradients are float; all arithmetic is float.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda::detail {

// Rows of the column reductions' partial sums: a reduction over `rows` needs
// kColChunks * cols floats of scratch.
inline constexpr int kColChunks = 64;

// The short conv's widest kernel the GPU layer runs (its taps are held in registers).
inline constexpr int64_t kMaxConvKernel = 8;
// The most token chunks of the conv backward's weight-gradient partial sums: its scratch needs
// kMaxConvChunks * C * (kernel + 1) floats.
inline constexpr int64_t kMaxConvChunks = 256;

// rows[i] = offsets[i % heads] + ids[i], slots[i] = i, for i < tokens*heads.
void launch_table_rows(int64_t* rows, int32_t* slots, const int32_t* ids, const int64_t* offsets,
                       int64_t tokens, int64_t heads);

template <class A>
struct GateArgs {
  const A* kv;           // (tokens, kvr): v, k_0 .. k_{M-1}, before the bias
  const float* bias;     // (kvr) or nullptr: added to kv on the fly
  const A* hidden;       // (tokens, M, d)
  const float* key_w;    // (M, d)
  const float* query_w;  // (M, d)
  float* key_rstd;       // (tokens, M)
  float* query_rstd;     // (tokens, M)
  float* score;          // (tokens, M)
  float* alpha;          // (tokens, M)
  A* vt;                 // (tokens, M, d) or nullptr: Vt = alpha * (v + bias) not stored
  int64_t tokens, M, d;
  float eps;
  // The short conv's RMSNorm of Vt (of the float values), fused (conv_norm_w == nullptr: not
  // computed): conv_rstd always, xn = Vt * conv_rstd * conv_norm_w stored when both xn and vt
  // are given.
  const float* conv_norm_w = nullptr;  // (M, d)
  A* xn = nullptr;                     // (tokens, M, d) or nullptr
  float* conv_rstd = nullptr;          // (tokens, M)
  float conv_eps = 0.0f;
};
template <class A>
void launch_gate_forward(const GateArgs<A>& a, void* stream = nullptr);

template <class A>
struct GateBwdArgs {
  // d Vt, the gated value's gradient: without the short conv dvt (tokens, M, d) itself (d out);
  // with it (dxn != nullptr), dvt (d out, the residual's part) plus the conv norm's backward of
  // dxn (the conv's input gradient, launch_conv_backward), recomputed per row:
  //   d Vt = dvt + conv_rstd * conv_norm_w * dxn - vt * k,  k = conv_rstd^3 / d * sum_j dxn
  //   conv_norm_w vt,  vt = alpha * (v + bias).
  const A* dvt;
  const A* dxn;               // (tokens, M, d) or nullptr
  const float* conv_norm_w;   // (M, d) with dxn
  const float* conv_rstd;     // (tokens, M) with dxn
  const A* kv;
  const float* bias;  // (kvr) or nullptr
  const A* hidden;
  const float* key_w;
  const float* query_w;
  const float* key_rstd;
  const float* query_rstd;
  const float* score;
  const float* alpha;
  A* dkv;            // (tokens, kvr), written
  A* d_hidden;       // (tokens, M, d), +=
  float* ds;         // (tokens, M) scratch: the score gradient
  float* d_key_w;    // (M, d), +=
  float* d_query_w;  // (M, d), +=
  float* partial;    // kColChunks * M * d scratch
  int64_t tokens, M, d;
};
template <class A>
void launch_gate_backward(const GateBwdArgs<A>& a);

// The short conv over a forward's batch. Its input is not stored: every kernel recomputes
//   vt[bt, m*d + j] = alpha[bt, m] * (v[bt, j] + v_bias[j])      (the gated value, Vt)
//   xn[bt, m*d + j] = vt * rstd[bt, m] * norm_w[m*d + j]           (its RMSNorm, the conv input)
// from the projection's value row v (column 0 of kv), the gate's alpha and the norm's rstd (the
// gate forward's).
template <class A>
struct ConvArgs {
  int64_t batch, seq, M, d, kernel, dilation;
  const A* v;            // (tokens, v_stride): the value row at column 0, before the bias
  int64_t v_stride;      // (1 + M) * d
  const float* v_bias;   // (d) or nullptr
  const float* alpha;    // (tokens, M)
  const float* conv_wt;  // (kernel, C): the taps, conv_weight (C, kernel) transposed
  const float* norm_w;   // (M, d)
  const float* rstd;     // (tokens, M)
};
// out = vt + SiLU(conv(xn)). The conv output u is not kept: backward recomputes it.
template <class A>
void launch_conv_forward(const ConvArgs<A>& a, A* out);

// The conv's backward from dy = d out, up to the conv input: dxn (tokens, C) = d xn (written;
// the residual's dy and the norm's backward are the gate backward's, launch_gate_backward),
// d_conv_w (C, kernel) +=, d_norm_w (M, d) += (the norm weight's gradient, sum over tokens of
// dxn * vt * rstd); partial (kMaxConvChunks * C * (kernel + 1) floats) is scratch.
// Called between the launches of a multi-kernel step with the name of the part just enqueued
// (GpuEngramLayer's profiling); fn == nullptr: nothing.
struct PhaseHook {
  void (*fn)(void* ctx, const char* phase) = nullptr;
  void* ctx = nullptr;
};
template <class A>
void launch_conv_backward(const ConvArgs<A>& a, const A* dy, A* dxn, float* d_conv_w,
                          float* d_norm_w, float* partial, PhaseHook hook = {});

// d_bias (cols) += column sums of dkv (tokens, cols); partial: kColChunks * cols scratch.
template <class A>
void launch_bias_grad(float* d_bias, const A* dkv, int64_t tokens, int64_t cols, float* partial);

// The short conv of a decoding step (GpuEngramLayer::forward_step): rows of several sequences,
// row r at position pos[r] of sequence seq[r], each sequence's earlier conv inputs xn in a ring
// (sequences, ring_len, C). launch_conv_ring_store puts every row's xn into the ring at
// (seq[r], pos[r] mod ring_len); launch_conv_step then computes, with back_j = dilation *
// (kernel - 1 - j),
//   u[r, c] = sum_j w[c, j] * ring[seq[r], (pos[r] - back_j) mod ring_len, c]   (pos[r] >= back_j)
//   out[r, c] = x[r, c] + SiLU(u)
// the conv of nn::short_conv_forward over the whole sequence (taps summed in j order).
template <class A>
struct ConvStepArgs {
  int64_t rows, C, kernel, dilation, ring_len;
  const A* x;            // (rows, C): Vt
  const A* xn;           // (rows, C): RMSNorm(Vt), the gate forward's
  const float* conv_wt;  // (kernel, C)
  A* ring;               // (sequences, ring_len, C)
  const int32_t* seq;    // (rows)
  const int32_t* pos;    // (rows)
};
template <class A>
void launch_conv_ring_store(const ConvStepArgs<A>& a, void* stream = nullptr);
template <class A>
void launch_conv_step(const ConvStepArgs<A>& a, A* out, void* stream = nullptr);

// The sparse table gradient: detail::launch_sparse_rows_plan, _values and read_sparse_rows_count
// (src/cuda/sparse_rows_kernel.h) over the rows and slots of launch_table_rows.

}  // namespace engram::cuda::detail
