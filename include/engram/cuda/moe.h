// The DeepSeek-V3 mixture of experts (BACKBONE_SPEC §3) on the GPU, forward and backward: the
// computation of nn::moe_forward / nn::moe_backward (include/engram/nn/moe.h), on N tokens u
// (N, C):
//
//   s = sigmoid(u W_g^T)                    (N, E) router scores, always float32
//   S_t = top-k of (s_t + bias)             selection only; ties go to the lower expert index;
//                                           selected[t] lists S_t best first
//   w_t,i = route_scale · s_t,i / Σ_{j∈S_t} s_t,j
//   y_t = Σ_{i∈S_t} w_t,i · E_i(u_t) + E_shared(u_t),   E(u) = W2 (SiLU(W1 u) ⊙ W3 u)
//
//   cuda::Blas blas;
//   cuda::GpuMoeSaved<float> saved;                      // reused across steps
//   cuda::moe_forward(blas, d_y, saved, d_u, d_bias, weights, shape);
//   cuda::moe_backward(blas, d_du, grads, d_dy, d_u, saved, weights, shape);   // += into du, grads
//   cuda::aux_free_bias_update(d_bias, saved.counts.data(), shape.experts, 0.001, blas.stream());
//
// Activations T are float or engram::bf16 (u, y, du, dy, the experts' weights and the permuted
// rows). The router (W_g, bias, scores, gates, their gradients) is float32 whatever T is, as the
// spec asks: with bf16 activations u is widened to float32 for the router GEMM. Every GEMM
// accumulates in float32; with T = float the GEMMs run in plain FP32 (Math::kExact, no TF32),
// so results match the CPU to float rounding; with T = bf16 they run on bf16 tensor cores with
// float32 outputs (the experts' pre-activations, outputs and input gradients stay float32; only
// GEMM inputs are rounded to bf16). Gradients are float32 for every T (master-weight
// gradients), accumulated (+=) with cuBLAS beta = 1.
//
// Tokens are permuted per expert: the (token, slot) pairs are radix-sorted (stably) by expert, so
// expert e's pairs fill rows [offsets[e], offsets[e+1]) of the permuted buffers in ascending
// token order, exactly the CPU's row_of. Each expert then runs three cuBLAS GEMMs on its rows,
// which needs the per-expert row counts on the host: moe_forward copies the E + 1 offsets from
// the device and waits for the stream once per call. Outputs are combined per token over its
// slots in slot order (no atomics): repeated calls give identical bits.
//
// Conventions: pointers are device memory, row-major; everything is enqueued on blas.stream()
// (moe_forward waits for it once, see above; moe_backward does not wait). Sizes are checked
// (nn::validate's ConfigError for a bad shape; InputError for a null pointer, N·K or N·K·max(C,H)
// beyond int32 limits, or a backward whose shape differs from the saved forward's); pointers are
// not otherwise checked. A build without CUDA has the same functions, each throwing
// engram::Error("... built without CUDA").
#pragma once

#include <cstdint>
#include <vector>

#include "engram/cuda/blas.h"
#include "engram/cuda/buffer.h"
#include "engram/nn/moe.h"
#include "engram/tensor/dtype.h"

namespace engram::cuda {

// Device pointers laid out exactly like nn::MoeWeights: the router in float32, the experts in T.
template <class T>
struct GpuMoeWeights {
  const float* wg;     // (E, C) router
  const T* w1;         // (E, H, C) expert e's W1 at w1 + e·H·C
  const T* w3;         // (E, H, C)
  const T* w2;         // (E, C, H)
  const T* shared_w1;  // (n_shared·H, C); unused (may be null) when n_shared == 0
  const T* shared_w3;  // (n_shared·H, C)
  const T* shared_w2;  // (C, n_shared·H)
};

// Float32 gradients laid out like nn::MoeGrads; backward accumulates (+=).
struct GpuMoeGrads {
  float* dwg;
  float* dw1;
  float* dw3;
  float* dw2;
  float* dshared_w1;  // unused (may be null) when n_shared == 0
  float* dshared_w3;
  float* dshared_w2;
};

// What moe_forward saves for moe_backward, and its scratch. Reuse one across steps: buffers grow
// when a call needs more and are never shrunk, so sizes below are capacities (the first N·E,
// N·K, ... elements are meaningful). With P = N·K pairs:
template <class T>
struct GpuMoeSaved {
  // The routing, as nn::MoeSaved holds it.
  DeviceBuffer<float> scores;      // (N, E) s = sigmoid(u W_g^T)
  DeviceBuffer<int32_t> selected;  // (N, K) chosen experts, best (s + bias) first
  DeviceBuffer<float> weights;     // (N, K) w = route_scale · normalised gate
  DeviceBuffer<int64_t> counts;    // (E) pairs routed to each expert (the load)
  DeviceBuffer<int64_t> offsets;   // (E + 1) expert e's rows are [offsets[e], offsets[e+1])
  DeviceBuffer<int32_t> row_of;    // (N, K) permuted row holding pair (t, j) (int32, not int64)
  // The same counts and offsets on the host, exactly E and E + 1 long after each forward.
  std::vector<int64_t> host_counts, host_offsets;

  // Internal: the permutation's scratch, the permuted rows and the experts' activations.
  DeviceBuffer<float> u_f32;  // (N, C) u widened for the router (T = bf16 only)
  DeviceBuffer<int32_t> pair_iota, keys_sorted, pair_of_row;  // (P)
  DeviceBuffer<uint8_t> sort_temp;
  DeviceBuffer<T> routed_in;                 // (P, C) u gathered per expert
  DeviceBuffer<float> h1, h3;                // (P, H) routed_in W1_e^T, routed_in W3_e^T
  DeviceBuffer<T> g;                         // (P, H) silu(h1) h3
  DeviceBuffer<float> routed_out;            // (P, C) E_e(u) per row
  DeviceBuffer<float> shared_h1, shared_h3;  // (N, n_shared·H)
  DeviceBuffer<T> shared_g;                  // (N, n_shared·H)
  DeviceBuffer<float> shared_out;            // (N, C)
  // Internal: backward's scratch.
  DeviceBuffer<T> drouted;         // (P, C) w · dy per row
  DeviceBuffer<float> dg;          // (max(P, N·n_shared) · H) gradient of g
  DeviceBuffer<T> dh1, dh3;        // same size: gradients of h1, h3
  DeviceBuffer<float> drouted_in;  // (P, C)
  DeviceBuffer<float> dlogits;     // (N, E)
  DeviceBuffer<float> du_f32;      // (N, C) du accumulated in float32 (T = bf16 only)

  // The shape of the last forward (backward checks it); tokens < 0 before the first forward.
  nn::MoeShape shape{-1, 0, 0, 0, 0};
};

// y (N, C) from u (N, C) and bias (E, float32, selection only). Fills `saved` (routing, counts,
// offsets, row_of, host_counts and host_offsets included). Waits for blas.stream() once (the
// per-expert row counts). N == 0 is allowed (counts and offsets become zeros).
template <class T>
void moe_forward(Blas& blas, T* y, GpuMoeSaved<T>& saved, const T* u, const float* bias,
                 const GpuMoeWeights<T>& w, const nn::MoeShape& s);

// The same y for small batches (decoding): every expert runs on every token, three
// strided-batched GEMMs over the E experts, and each token's selected outputs are combined in
// slot order, as moe_forward combines them. No host sync, no permutation and a fixed launch
// sequence for a given shape (CUDA-graph friendly), at E / K times the routed FLOPs: it pays
// while the experts' weight reads, not their FLOPs, bound the step (N up to a few hundred
// tokens). Fills scores, selected, weights and row_of of `saved`, not the loads (counts,
// offsets, host_counts); moe_backward after it throws InputError. Also InputError when N · E ·
// max(C, H) exceeds 2^31 - 1.
template <class T>
void moe_forward_dense(Blas& blas, T* y, GpuMoeSaved<T>& saved, const T* u, const float* bias,
                       const GpuMoeWeights<T>& w, const nn::MoeShape& s);

// After moe_forward with the same u, weights and shape: du (N, C) (+=) and grads (+=) from
// dy (N, C), through the experts, the gate weights (dw → ds through the normalisation, the
// route_scale and the sigmoid) and the router GEMM; the selection has no gradient:
//   dw_i = dy · E_i(u),   ds_i = route_scale / Z · (dw_i − Σ_{j∈S} dw_j s_j / Z),  Z = Σ_{j∈S} s_j
//   dlogit_i = ds_i s_i (1 − s_i),   dW_g += dlogit^T u,   du += dlogit W_g
// An expert that received no tokens gets no gradient (its dW stay as they were). With T = bf16,
// du's contributions are summed in float32 and added to du with one rounding. Uses the scratch
// buffers of `saved` (hence non-const). Throws InputError when `s` differs from the shape of the
// saved forward.
template <class T>
void moe_backward(Blas& blas, T* du, const GpuMoeGrads& grads, const T* dy, const T* u,
                  GpuMoeSaved<T>& saved, const GpuMoeWeights<T>& w, const nn::MoeShape& s);

// Auxiliary-loss-free balancing, nn::aux_free_bias_update on the device: bias (E) +=
// float(gamma · sign(mean(c) − c_i)), counts c (E, int64, device, e.g. GpuMoeSaved::counts or a
// sum made with moe_add_counts). Throws ConfigError for experts < 1.
void aux_free_bias_update(float* bias, const int64_t* counts, int64_t experts, double gamma,
                          void* stream = nullptr);

// total (E) += counts (E), int64, device: sums the loads of a step's batches.
void moe_add_counts(int64_t* total, const int64_t* counts, int64_t experts, void* stream = nullptr);

}  // namespace engram::cuda
