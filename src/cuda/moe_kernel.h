// Launchers of the kernels in src/cuda/moe.cu, in plain types, called by src/cuda/moe.cpp after it
// has checked the arguments (the .cu file is C++17 and has no argument checks of its own).
// A is the activation type: float or engram::bf16 (both instantiated). Every launcher enqueues on
// `stream` (a cudaStream_t) and returns at once unless it says otherwise. Sizes are >= 1 unless
// noted; N tokens, E experts, K slots, P = N·K (token, slot) pairs, C model width.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engram/tensor/dtype.h"

namespace engram::cuda::detail {

// dst (n) = float(src), or back to A with one rounding (round to nearest, ties to even).
template <class A>
void launch_moe_to_f32(float* dst, const A* src, int64_t n, void* stream);
template <class A>
void launch_moe_from_f32(A* dst, const float* src, int64_t n, void* stream);

// Per token t, in place on scores (N, E) holding the router logits:
//   s = sigmoid(logit);  selected (N, K) = the K best experts by (s + bias), best first, ties to
//   the lower index;  weights (N, K) = route_scale · s_i / Σ_{j∈S} s_j (sum in slot order).
void launch_moe_route(float* scores, int32_t* selected, float* weights, const float* bias,
                      int64_t n, int64_t e, int64_t k, float route_scale, void* stream);

// The permutation of the P = N·K (token, slot) pairs by expert, stable in pair order.
struct MoePermuteArgs {
  const int32_t* selected;  // (P) expert of pair p = t·K + j
  int32_t* pair_iota;       // (P) scratch: 0, 1, ..., P-1
  int32_t* keys_sorted;     // (P) scratch: experts in row order
  int32_t* pair_of_row;     // (P) pair held by each row of the permuted buffers
  int32_t* row_of;          // (P) row of each pair
  int64_t* counts;          // (E) pairs routed to each expert
  int64_t* offsets;         // (E + 1) exclusive scan of counts
  void* temp;               // sort scratch of moe_sort_temp_bytes(pairs, end_bit) bytes
  size_t temp_bytes;
  int64_t pairs, experts;
  int end_bit;  // bits of the largest expert id (>= 1)
};
size_t moe_sort_temp_bytes(int64_t pairs, int end_bit);
void launch_moe_permute(const MoePermuteArgs& a, void* stream);

// routed_in (P, C): row r = u[pair_of_row[r] / K].
template <class A>
void launch_moe_gather(A* routed_in, const A* u, const int32_t* pair_of_row, int64_t pairs,
                       int64_t k, int64_t c, void* stream);

// g (size) = silu(h1) · h3 = h1 · sigmoid(h1) · h3, rounded to A.
template <class A>
void launch_moe_gate(A* g, const float* h1, const float* h3, int64_t size, void* stream);

// With s = sigmoid(h1) and dg the gradient of g:
//   dh1 = dg · h3 · s · (1 + h1 (1 − s)),   dh3 = dg · h1 · s    (written, rounded to A)
template <class A>
void launch_moe_gate_backward(A* dh1, A* dh3, const float* dg, const float* h1, const float* h3,
                              int64_t size, void* stream);

// row_of[t, j] = selected[t, j] * n + t: the rows of moe_forward_dense's (E, N, C) outputs.
void launch_moe_dense_rows(int32_t* row_of, const int32_t* selected, int64_t n, int64_t k,
                           void* stream);

// y (N, C) = shared_out (or 0 when null) + Σ_j weights[t, j] · routed_out[row_of[t, j]], the
// slots summed in order, in float, rounded to A once.
template <class A>
void launch_moe_combine(A* y, const float* shared_out, const float* routed_out,
                        const float* weights, const int32_t* row_of, int64_t n, int64_t k,
                        int64_t c, void* stream);

// One block per token t: for each slot j (pair p, row r = row_of[p], expert e = selected[p]):
//   dw_j = dy_t · routed_out[r]                       (block reduction, fixed tree)
//   drouted[r] = weights[p] · dy_t                    (rounded to A)
// then, with Z = Σ_j s_e and dwg = Σ_j dw_j s_e / Z (slot order):
//   dlogits[t, e] = route_scale / Z · (dw_j − dwg) · s_e (1 − s_e), 0 for unselected experts.
template <class A>
void launch_moe_router_backward(A* drouted, float* dlogits, const A* dy, const float* routed_out,
                                const float* scores, const int32_t* selected, const float* weights,
                                const int32_t* row_of, int64_t n, int64_t e, int64_t k, int64_t c,
                                float route_scale, void* stream);

// du (N, C) += Σ_j drouted_in[row_of[t, j]], the slots added one after the other in order.
void launch_moe_scatter_grad(float* du, const float* drouted_in, const int32_t* row_of, int64_t n,
                             int64_t k, int64_t c, void* stream);

// bias (E) += float(gamma · sign(mean(counts) − counts_i)), the mean in double.
void launch_moe_bias_update(float* bias, const int64_t* counts, int64_t e, double gamma,
                            void* stream);
// total (E) += counts (E).
void launch_moe_add_counts(int64_t* total, const int64_t* counts, int64_t e, void* stream);

// Copies n int64 from the device to the host and waits for `stream`.
void moe_copy_to_host(int64_t* host, const int64_t* device, int64_t n, void* stream);

}  // namespace engram::cuda::detail
