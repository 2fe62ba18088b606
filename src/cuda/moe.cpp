// The mixture-of-experts layer on the GPU (include/engram/cuda/moe.h): argument checks, buffer
// management and the experts' cuBLAS GEMMs here; the kernels are in src/cuda/moe.cu.
// src/cuda/moe_stub.cpp stands in for both in builds without CUDA.
#include "engram/cuda/moe.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/moe_kernel.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

// Grows `b` to at least n elements (its contents are then undefined).
template <class X>
void grow(DeviceBuffer<X>& b, int64_t n) {
  if (b.size() < sz(n)) b = DeviceBuffer<X>(sz(n));
}

template <class T>
constexpr DType dtype_of() {
  return std::is_same_v<T, float> ? DType::kF32 : DType::kBF16;
}

void require(const char* where, const void* ptr, const char* name) {
  if (ptr == nullptr) {
    throw InputError(error_message(where, std::string(name) + " is null"));
  }
}

// Row indices of the permuted buffers are int32 (and cub's item count is an int).
void check_limits(const char* where, const nn::MoeShape& s) {
  const int64_t pairs = s.tokens * s.top_k;
  if (pairs > std::numeric_limits<int32_t>::max()) {
    throw InputError(
        error_message(where, "tokens · top_k = " + std::to_string(pairs) + " exceeds 2^31 - 1"));
  }
}

bool same_shape(const nn::MoeShape& a, const nn::MoeShape& b) {
  return a.tokens == b.tokens && a.dim == b.dim && a.experts == b.experts && a.top_k == b.top_k &&
         a.hidden == b.hidden && a.n_shared == b.n_shared && a.route_scale == b.route_scale;
}

template <class T>
void check_weights(const char* where, const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  require(where, w.wg, "weights.wg");
  require(where, w.w1, "weights.w1");
  require(where, w.w3, "weights.w3");
  require(where, w.w2, "weights.w2");
  if (s.n_shared > 0) {
    require(where, w.shared_w1, "weights.shared_w1");
    require(where, w.shared_w3, "weights.shared_w3");
    require(where, w.shared_w2, "weights.shared_w2");
  }
}


// The shape (nn::validate, the int32 limits) and, with tokens, the pointers of a forward.
template <class T>
void check_forward(const char* where, const T* y, const T* u, const float* bias,
                   const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  nn::validate(s);
  check_limits(where, s);
  if (s.tokens == 0) return;
  require(where, y, "y");
  require(where, u, "u");
  require(where, bias, "bias");
  check_weights(where, w, s);
}

// Router, in float32: scores (N, E) = sigmoid(u W_g^T), then the top-k (selected) and the gates
// (weights).
template <class T>
void route(Blas& blas, GpuMoeSaved<T>& saved, const T* u, const float* bias,
           const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k, pairs = n * k;
  void* stream = blas.stream();
  const float* uf = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    uf = u;
  } else {
    grow(saved.u_f32, n * c);
    detail::launch_moe_to_f32(saved.u_f32.data(), u, n * c, stream);
    uf = saved.u_f32.data();
  }
  grow(saved.scores, n * e_count);
  grow(saved.selected, pairs);
  grow(saved.weights, pairs);
  blas.gemm(false, true, n, e_count, c, 1.0f, {uf, DType::kF32, c}, {w.wg, DType::kF32, c}, 0.0f,
            {saved.scores.data(), DType::kF32, e_count}, Math::kExact);
  detail::launch_moe_route(saved.scores.data(), saved.selected.data(), saved.weights.data(), bias,
                           n, e_count, k, static_cast<float>(s.route_scale), stream);
}

// Shared expert: shared_out (N, C) = W2 (silu(W1 u) W3 u); null without shared experts.
template <class T>
const float* shared_expert(Blas& blas, GpuMoeSaved<T>& saved, const T* u,
                           const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  const int64_t n = s.tokens, c = s.dim, hs = s.shared_hidden();
  if (hs == 0) return nullptr;
  const DType at = dtype_of<T>();
  grow(saved.shared_h1, n * hs);
  grow(saved.shared_h3, n * hs);
  grow(saved.shared_g, n * hs);
  grow(saved.shared_out, n * c);
  blas.gemm(false, true, n, hs, c, 1.0f, {u, at, c}, {w.shared_w1, at, c}, 0.0f,
            {saved.shared_h1.data(), DType::kF32, hs}, Math::kExact);
  blas.gemm(false, true, n, hs, c, 1.0f, {u, at, c}, {w.shared_w3, at, c}, 0.0f,
            {saved.shared_h3.data(), DType::kF32, hs}, Math::kExact);
  detail::launch_moe_gate(saved.shared_g.data(), saved.shared_h1.data(), saved.shared_h3.data(),
                          n * hs, blas.stream());
  blas.gemm(false, true, n, c, hs, 1.0f, {saved.shared_g.data(), at, hs}, {w.shared_w2, at, hs},
            0.0f, {saved.shared_out.data(), DType::kF32, c}, Math::kExact);
  return saved.shared_out.data();
}

}  // namespace

template <class T>
void moe_forward(Blas& blas, T* y, GpuMoeSaved<T>& saved, const T* u, const float* bias,
                 const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  check_forward("cuda::moe_forward", y, u, bias, w, s);
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k, h = s.hidden;
  const int64_t pairs = n * k;
  void* stream = blas.stream();
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  const DType at = dtype_of<T>();

  saved.shape = s;
  grow(saved.counts, e_count);
  grow(saved.offsets, e_count + 1);
  saved.host_counts.assign(sz(e_count), 0);
  saved.host_offsets.assign(sz(e_count + 1), 0);
  if (n == 0) {
    ENGRAM_CUDA_CHECK(cudaMemsetAsync(saved.counts.data(), 0, sz(e_count) * sizeof(int64_t), cs));
    ENGRAM_CUDA_CHECK(
        cudaMemsetAsync(saved.offsets.data(), 0, sz(e_count + 1) * sizeof(int64_t), cs));
    return;
  }

  route(blas, saved, u, bias, w, s);

  // Permutation: pairs sorted (stably) by expert; counts, offsets and row_of.
  int end_bit = 1;
  while ((int64_t{1} << end_bit) < e_count) ++end_bit;
  const size_t temp_bytes = detail::moe_sort_temp_bytes(pairs, end_bit);
  grow(saved.sort_temp, static_cast<int64_t>(temp_bytes));
  grow(saved.pair_iota, pairs);
  grow(saved.keys_sorted, pairs);
  grow(saved.pair_of_row, pairs);
  grow(saved.row_of, pairs);
  detail::MoePermuteArgs pa{};
  pa.selected = saved.selected.data();
  pa.pair_iota = saved.pair_iota.data();
  pa.keys_sorted = saved.keys_sorted.data();
  pa.pair_of_row = saved.pair_of_row.data();
  pa.row_of = saved.row_of.data();
  pa.counts = saved.counts.data();
  pa.offsets = saved.offsets.data();
  pa.temp = saved.sort_temp.data();
  pa.temp_bytes = saved.sort_temp.size();
  pa.pairs = pairs;
  pa.experts = e_count;
  pa.end_bit = end_bit;
  detail::launch_moe_permute(pa, stream);
  // The experts' GEMM sizes: the one device-to-host copy (and wait) of the forward.
  detail::moe_copy_to_host(saved.host_offsets.data(), saved.offsets.data(), e_count + 1, stream);
  for (int64_t e = 0; e < e_count; ++e) {
    saved.host_counts[sz(e)] = saved.host_offsets[sz(e + 1)] - saved.host_offsets[sz(e)];
  }

  grow(saved.routed_in, pairs * c);
  detail::launch_moe_gather(saved.routed_in.data(), u, saved.pair_of_row.data(), pairs, k, c,
                            stream);

  // Experts: h1, h3 (rows, H) = X_e W1_e^T, X_e W3_e^T; g = silu(h1) h3; out (rows, C) = g W2_e^T.
  grow(saved.h1, pairs * h);
  grow(saved.h3, pairs * h);
  grow(saved.g, pairs * h);
  grow(saved.routed_out, pairs * c);
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = saved.host_counts[sz(e)], off = saved.host_offsets[sz(e)];
    if (rows == 0) continue;
    const T* x = saved.routed_in.data() + off * c;
    blas.gemm(false, true, rows, h, c, 1.0f, {x, at, c}, {w.w1 + e * h * c, at, c}, 0.0f,
              {saved.h1.data() + off * h, DType::kF32, h}, Math::kExact);
    blas.gemm(false, true, rows, h, c, 1.0f, {x, at, c}, {w.w3 + e * h * c, at, c}, 0.0f,
              {saved.h3.data() + off * h, DType::kF32, h}, Math::kExact);
  }
  detail::launch_moe_gate(saved.g.data(), saved.h1.data(), saved.h3.data(), pairs * h, stream);
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = saved.host_counts[sz(e)], off = saved.host_offsets[sz(e)];
    if (rows == 0) continue;
    blas.gemm(false, true, rows, c, h, 1.0f, {saved.g.data() + off * h, at, h},
              {w.w2 + e * c * h, at, h}, 0.0f, {saved.routed_out.data() + off * c, DType::kF32, c},
              Math::kExact);
  }

  const float* shared_out = shared_expert(blas, saved, u, w, s);
  // y_t = shared_out_t + Σ_j w_t,j routed_out[row_of(t, j)], slots in order.
  detail::launch_moe_combine(y, shared_out, saved.routed_out.data(), saved.weights.data(),
                             saved.row_of.data(), n, k, c, stream);
}

// Every expert on every token (include/engram/cuda/moe.h): three strided-batched GEMMs over the
// experts, then the selected outputs combined in slot order through row_of = expert * N + t.
template <class T>
void moe_forward_dense(Blas& blas, T* y, GpuMoeSaved<T>& saved, const T* u, const float* bias,
                       const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  const char* where = "cuda::moe_forward_dense";
  check_forward(where, y, u, bias, w, s);
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k, h = s.hidden;
  if (n * e_count * std::max(c, h) > std::numeric_limits<int32_t>::max()) {
    throw InputError(error_message(where, "tokens · experts · max(C, H) = " +
                                              std::to_string(n * e_count * std::max(c, h)) +
                                              " exceeds 2^31 - 1"));
  }
  saved.shape = nn::MoeShape{-1, 0, 0, 0, 0};  // nothing for moe_backward
  if (n == 0) return;
  void* stream = blas.stream();
  const DType at = dtype_of<T>();
  route(blas, saved, u, bias, w, s);
  grow(saved.h1, e_count * n * h);
  grow(saved.h3, e_count * n * h);
  grow(saved.g, e_count * n * h);
  grow(saved.routed_out, e_count * n * c);
  grow(saved.row_of, n * k);
  // h1, h3 (E, N, H) = u W1_e^T, u W3_e^T; g = silu(h1) h3; routed_out (E, N, C) = g W2_e^T.
  blas.gemm_strided_batched(false, true, n, h, c, 1.0f, {u, at, c}, 0, {w.w1, at, c}, h * c, 0.0f,
                            {saved.h1.data(), DType::kF32, h}, n * h, e_count, Math::kExact);
  blas.gemm_strided_batched(false, true, n, h, c, 1.0f, {u, at, c}, 0, {w.w3, at, c}, h * c, 0.0f,
                            {saved.h3.data(), DType::kF32, h}, n * h, e_count, Math::kExact);
  detail::launch_moe_gate(saved.g.data(), saved.h1.data(), saved.h3.data(), e_count * n * h,
                          stream);
  blas.gemm_strided_batched(false, true, n, c, h, 1.0f, {saved.g.data(), at, h}, n * h,
                            {w.w2, at, h}, c * h, 0.0f, {saved.routed_out.data(), DType::kF32, c},
                            n * c, e_count, Math::kExact);
  const float* shared_out = shared_expert(blas, saved, u, w, s);
  detail::launch_moe_dense_rows(saved.row_of.data(), saved.selected.data(), n, k, stream);
  detail::launch_moe_combine(y, shared_out, saved.routed_out.data(), saved.weights.data(),
                             saved.row_of.data(), n, k, c, stream);
}

template <class T>
void moe_backward(Blas& blas, T* du, const GpuMoeGrads& grads, const T* dy, const T* u,
                  GpuMoeSaved<T>& saved, const GpuMoeWeights<T>& w, const nn::MoeShape& s) {
  const char* where = "cuda::moe_backward";
  nn::validate(s);
  check_limits(where, s);
  if (!same_shape(s, saved.shape)) {
    throw InputError(error_message(
        where, saved.shape.tokens < 0
                   ? std::string("no forward was saved")
                   : "shape (tokens " + std::to_string(s.tokens) + ", dim " +
                         std::to_string(s.dim) + ", experts " + std::to_string(s.experts) +
                         ", ...) differs from the saved forward's (tokens " +
                         std::to_string(saved.shape.tokens) + ", dim " +
                         std::to_string(saved.shape.dim) + ", experts " +
                         std::to_string(saved.shape.experts) + ", ...)"));
  }
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k, h = s.hidden;
  const int64_t hs = s.shared_hidden(), pairs = n * k;
  if (n == 0) return;
  require(where, du, "du");
  require(where, dy, "dy");
  require(where, u, "u");
  check_weights(where, w, s);
  require(where, grads.dwg, "grads.dwg");
  require(where, grads.dw1, "grads.dw1");
  require(where, grads.dw3, "grads.dw3");
  require(where, grads.dw2, "grads.dw2");
  if (hs > 0) {
    require(where, grads.dshared_w1, "grads.dshared_w1");
    require(where, grads.dshared_w3, "grads.dshared_w3");
    require(where, grads.dshared_w2, "grads.dshared_w2");
  }
  void* stream = blas.stream();
  const DType at = dtype_of<T>();

  // du's contributions are summed in float32: into du itself, or a widened copy for bf16.
  float* du_acc = nullptr;
  const float* uf = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    du_acc = du;
    uf = u;
  } else {
    grow(saved.du_f32, n * c);
    detail::launch_moe_to_f32(saved.du_f32.data(), du, n * c, stream);
    du_acc = saved.du_f32.data();
    uf = saved.u_f32.data();  // widened by the forward
  }

  // Per row: drouted = w · dy; per token: the router logits' gradient.
  grow(saved.drouted, pairs * c);
  grow(saved.dlogits, n * e_count);
  detail::launch_moe_router_backward(
      saved.drouted.data(), saved.dlogits.data(), dy, saved.routed_out.data(), saved.scores.data(),
      saved.selected.data(), saved.weights.data(), saved.row_of.data(), n, e_count, k, c,
      static_cast<float>(s.route_scale), stream);

  // Experts, as nn::swiglu_backward on each block of rows:
  //   dW2 += drouted^T g,  dg = drouted W2,  (dh1, dh3) from dg,
  //   dW1 += dh1^T X,  dW3 += dh3^T X,  drouted_in = dh1 W1 + dh3 W3.
  const int64_t gate_size = std::max(pairs * h, n * hs);
  grow(saved.dg, gate_size);
  grow(saved.dh1, gate_size);
  grow(saved.dh3, gate_size);
  grow(saved.drouted_in, pairs * c);
  const std::vector<int64_t>& counts = saved.host_counts;
  const std::vector<int64_t>& offsets = saved.host_offsets;
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = counts[sz(e)], off = offsets[sz(e)];
    if (rows == 0) continue;
    const T* dout = saved.drouted.data() + off * c;
    blas.gemm(true, false, c, h, rows, 1.0f, {dout, at, c}, {saved.g.data() + off * h, at, h}, 1.0f,
              {grads.dw2 + e * c * h, DType::kF32, h}, Math::kExact);
    blas.gemm(false, false, rows, h, c, 1.0f, {dout, at, c}, {w.w2 + e * c * h, at, h}, 0.0f,
              {saved.dg.data() + off * h, DType::kF32, h}, Math::kExact);
  }
  detail::launch_moe_gate_backward(saved.dh1.data(), saved.dh3.data(), saved.dg.data(),
                                   saved.h1.data(), saved.h3.data(), pairs * h, stream);
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = counts[sz(e)], off = offsets[sz(e)];
    if (rows == 0) continue;
    const T* x = saved.routed_in.data() + off * c;
    const T* dh1 = saved.dh1.data() + off * h;
    const T* dh3 = saved.dh3.data() + off * h;
    float* dx = saved.drouted_in.data() + off * c;
    blas.gemm(true, false, h, c, rows, 1.0f, {dh1, at, h}, {x, at, c}, 1.0f,
              {grads.dw1 + e * h * c, DType::kF32, c}, Math::kExact);
    blas.gemm(true, false, h, c, rows, 1.0f, {dh3, at, h}, {x, at, c}, 1.0f,
              {grads.dw3 + e * h * c, DType::kF32, c}, Math::kExact);
    blas.gemm(false, false, rows, c, h, 1.0f, {dh1, at, h}, {w.w1 + e * h * c, at, c}, 0.0f,
              {dx, DType::kF32, c}, Math::kExact);
    blas.gemm(false, false, rows, c, h, 1.0f, {dh3, at, h}, {w.w3 + e * h * c, at, c}, 1.0f,
              {dx, DType::kF32, c}, Math::kExact);
  }
  // du_t += Σ_j drouted_in[row_of(t, j)], slots in order.
  detail::launch_moe_scatter_grad(du_acc, saved.drouted_in.data(), saved.row_of.data(), n, k, c,
                                  stream);

  if (hs > 0) {
    blas.gemm(true, false, c, hs, n, 1.0f, {dy, at, c}, {saved.shared_g.data(), at, hs}, 1.0f,
              {grads.dshared_w2, DType::kF32, hs}, Math::kExact);
    blas.gemm(false, false, n, hs, c, 1.0f, {dy, at, c}, {w.shared_w2, at, hs}, 0.0f,
              {saved.dg.data(), DType::kF32, hs}, Math::kExact);
    detail::launch_moe_gate_backward(saved.dh1.data(), saved.dh3.data(), saved.dg.data(),
                                     saved.shared_h1.data(), saved.shared_h3.data(), n * hs,
                                     stream);
    blas.gemm(true, false, hs, c, n, 1.0f, {saved.dh1.data(), at, hs}, {u, at, c}, 1.0f,
              {grads.dshared_w1, DType::kF32, c}, Math::kExact);
    blas.gemm(true, false, hs, c, n, 1.0f, {saved.dh3.data(), at, hs}, {u, at, c}, 1.0f,
              {grads.dshared_w3, DType::kF32, c}, Math::kExact);
    blas.gemm(false, false, n, c, hs, 1.0f, {saved.dh1.data(), at, hs}, {w.shared_w1, at, c}, 1.0f,
              {du_acc, DType::kF32, c}, Math::kExact);
    blas.gemm(false, false, n, c, hs, 1.0f, {saved.dh3.data(), at, hs}, {w.shared_w3, at, c}, 1.0f,
              {du_acc, DType::kF32, c}, Math::kExact);
  }

  // Router, in float32: dW_g (E, C) += dlogits^T u,  du (N, C) += dlogits W_g.
  blas.gemm(true, false, e_count, c, n, 1.0f, {saved.dlogits.data(), DType::kF32, e_count},
            {uf, DType::kF32, c}, 1.0f, {grads.dwg, DType::kF32, c}, Math::kExact);
  blas.gemm(false, false, n, c, e_count, 1.0f, {saved.dlogits.data(), DType::kF32, e_count},
            {w.wg, DType::kF32, c}, 1.0f, {du_acc, DType::kF32, c}, Math::kExact);

  if constexpr (!std::is_same_v<T, float>) {
    detail::launch_moe_from_f32(du, du_acc, n * c, stream);
  }
}

void aux_free_bias_update(float* bias, const int64_t* counts, int64_t experts, double gamma,
                          void* stream) {
  const char* where = "cuda::aux_free_bias_update";
  if (experts < 1) {
    throw ConfigError(
        error_message(where, "experts " + std::to_string(experts) + " is not positive"));
  }
  require(where, bias, "bias");
  require(where, counts, "counts");
  detail::launch_moe_bias_update(bias, counts, experts, gamma, stream);
}

void moe_add_counts(int64_t* total, const int64_t* counts, int64_t experts, void* stream) {
  const char* where = "cuda::moe_add_counts";
  if (experts < 0) {
    throw InputError(error_message(where, "experts " + std::to_string(experts) + " is negative"));
  }
  if (experts == 0) return;
  require(where, total, "total");
  require(where, counts, "counts");
  detail::launch_moe_add_counts(total, counts, experts, stream);
}

#define ENGRAM_INSTANTIATE(T)                                                      \
  template void moe_forward<T>(Blas&, T*, GpuMoeSaved<T>&, const T*, const float*, \
                               const GpuMoeWeights<T>&, const nn::MoeShape&);      \
  template void moe_forward_dense<T>(Blas&, T*, GpuMoeSaved<T>&, const T*, const float*, \
                                     const GpuMoeWeights<T>&, const nn::MoeShape&);      \
  template void moe_backward<T>(Blas&, T*, const GpuMoeGrads&, const T*, const T*, \
                                GpuMoeSaved<T>&, const GpuMoeWeights<T>&, const nn::MoeShape&);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(bf16)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::cuda
