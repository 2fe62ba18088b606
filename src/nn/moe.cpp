#include "engram/nn/moe.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numeric>
#include <string>

#include "engram/tensor/gemm.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "nn/activation.h"

namespace engram::nn {
namespace {

constexpr size_t kTokenGrain = 16;

void check_seq_len(const MoeShape& s, int64_t seq_len) {
  if (seq_len < 1 || s.tokens % seq_len != 0)
    throw ConfigError(error_message(
        "moe balance loss: seq_len",
        std::to_string(seq_len) + " does not divide tokens " + std::to_string(s.tokens)));
}

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

}  // namespace

void validate(const MoeShape& s) {
  const auto fail = [](const char* field, const std::string& what) {
    throw ConfigError(error_message(std::string("moe: ") + field, what));
  };
  if (s.tokens < 0) fail("tokens", std::to_string(s.tokens) + " is negative");
  if (s.dim < 1) fail("dim", std::to_string(s.dim) + " is not positive");
  if (s.experts < 1) fail("experts", std::to_string(s.experts) + " is not positive");
  if (s.hidden < 1) fail("hidden", std::to_string(s.hidden) + " is not positive");
  if (s.top_k < 1 || s.top_k > s.experts)
    fail("top_k",
         std::to_string(s.top_k) + " is outside [1, experts = " + std::to_string(s.experts) + "]");
  if (s.n_shared < 0) fail("n_shared", std::to_string(s.n_shared) + " is negative");
  if (!std::isfinite(s.route_scale) || s.route_scale <= 0)
    fail("route_scale", std::to_string(s.route_scale) + " is not a positive finite number");
}

template <class T>
void moe_forward(T* y, MoeSaved<T>& saved, const T* u, const T* bias, const MoeWeights<T>& w,
                 const MoeShape& s) {
  validate(s);
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k, h = s.hidden;

  // Router: scores (N, E) = sigmoid(u W_g^T).
  saved.scores.resize(sz(n * e_count));
  gemm<T>(Trans::kNo, Trans::kYes, n, e_count, c, T(1), u, c, w.wg, c, T(0), saved.scores.data(),
          e_count);
  saved.selected.resize(sz(n * k));
  saved.weights.resize(sz(n * k));
  parallel_for(sz(n), 0, kTokenGrain, [&](size_t b, size_t end) {
    std::vector<int32_t> idx(sz(e_count));
    std::vector<T> key(sz(e_count));
    for (size_t t = b; t < end; ++t) {
      T* st = saved.scores.data() + t * sz(e_count);
      for (int64_t i = 0; i < e_count; ++i) {
        st[i] = sigmoid(st[i]);
        key[sz(i)] = st[i] + bias[i];
      }
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t bb) {
        return key[sz(a)] > key[sz(bb)] || (key[sz(a)] == key[sz(bb)] && a < bb);
      });
      T total = 0;
      for (int64_t j = 0; j < k; ++j) total += st[idx[sz(j)]];
      const T scale = static_cast<T>(s.route_scale) / total;
      for (int64_t j = 0; j < k; ++j) {
        saved.selected[t * sz(k) + sz(j)] = idx[sz(j)];
        saved.weights[t * sz(k) + sz(j)] = scale * st[idx[sz(j)]];
      }
    }
  });

  // Permutation: a counting sort of the (token, slot) pairs by expert, stable in token order.
  saved.counts.assign(sz(e_count), 0);
  for (const int32_t e : saved.selected) ++saved.counts[sz(e)];
  saved.offsets.assign(sz(e_count + 1), 0);
  for (int64_t e = 0; e < e_count; ++e)
    saved.offsets[sz(e + 1)] = saved.offsets[sz(e)] + saved.counts[sz(e)];
  std::vector<int64_t> cursor(saved.offsets.begin(), saved.offsets.end() - 1);
  saved.row_of.resize(sz(n * k));
  for (size_t p = 0; p < saved.selected.size(); ++p)
    saved.row_of[p] = cursor[sz(saved.selected[p])]++;

  saved.routed_in.resize(sz(n * k * c));
  parallel_for(sz(n * k), 0, kTokenGrain, [&](size_t b, size_t end) {
    for (size_t p = b; p < end; ++p) {
      const T* src = u + (p / sz(k)) * sz(c);
      std::copy(src, src + c, saved.routed_in.data() + sz(saved.row_of[p] * c));
    }
  });

  saved.routed_out.resize(sz(n * k * c));
  saved.expert.resize(sz(e_count));
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = saved.counts[sz(e)], off = saved.offsets[sz(e)];
    if (rows == 0) {
      saved.expert[sz(e)].h1.clear();
      saved.expert[sz(e)].h3.clear();
      continue;
    }
    swiglu_forward(saved.routed_out.data() + sz(off * c), saved.expert[sz(e)],
                   saved.routed_in.data() + sz(off * c), w.w1 + sz(e * h * c), w.w3 + sz(e * h * c),
                   w.w2 + sz(e * c * h), rows, c, h);
  }

  if (s.n_shared > 0) {
    swiglu_forward(y, saved.shared, u, w.shared_w1, w.shared_w3, w.shared_w2, n, c,
                   s.shared_hidden());
  } else {
    std::fill(y, y + n * c, T(0));
  }
  // Scatter-add, each token summing its slots in slot order.
  parallel_for(sz(n), 0, kTokenGrain, [&](size_t b, size_t end) {
    for (size_t t = b; t < end; ++t) {
      T* yt = y + t * sz(c);
      for (int64_t j = 0; j < k; ++j) {
        const size_t p = t * sz(k) + sz(j);
        const T wt = saved.weights[p];
        const T* out = saved.routed_out.data() + sz(saved.row_of[p] * c);
        for (int64_t i = 0; i < c; ++i) yt[i] += wt * out[i];
      }
    }
  });
}

// With Z = Σ_{j∈S} s_j and g_i = s_i / Z, for i ∈ S:
//   dw_i = dy · E_i(u),   ds_i = route_scale / Z · (dw_i − Σ_{j∈S} dw_j g_j),
//   dlogit_i = ds_i s_i (1 − s_i)   (0 for unselected experts),
//   dW_g += dlogit^T u,   du += dlogit W_g.
template <class T>
void moe_backward(T* du, const MoeGrads<T>& grads, const T* dy, const T* u,
                  const MoeSaved<T>& saved, const MoeWeights<T>& w, const MoeShape& s) {
  validate(s);
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k, h = s.hidden;
  assert(saved.scores.size() == sz(n * e_count) && saved.row_of.size() == sz(n * k));

  // Per-row upstream gradient of the experts, and the router logits' gradient.
  saved.drouted.resize(sz(n * k * c));
  saved.dlogits.assign(sz(n * e_count), T(0));
  parallel_for(sz(n), 0, kTokenGrain, [&](size_t b, size_t end) {
    std::vector<T> dw(sz(k));
    for (size_t t = b; t < end; ++t) {
      const T* dyt = dy + t * sz(c);
      const T* st = saved.scores.data() + t * sz(e_count);
      T total = 0;
      for (int64_t j = 0; j < k; ++j) total += st[saved.selected[t * sz(k) + sz(j)]];
      T dw_dot_g = 0;
      for (int64_t j = 0; j < k; ++j) {
        const size_t p = t * sz(k) + sz(j);
        const size_t row = sz(saved.row_of[p]);
        const T* out = saved.routed_out.data() + row * sz(c);
        T* dout = saved.drouted.data() + row * sz(c);
        const T wt = saved.weights[p];
        T acc = 0;
        for (int64_t i = 0; i < c; ++i) {
          acc += dyt[i] * out[i];
          dout[i] = wt * dyt[i];
        }
        dw[sz(j)] = acc;
        dw_dot_g += acc * st[saved.selected[p]] / total;
      }
      T* dl = saved.dlogits.data() + t * sz(e_count);
      const T scale = static_cast<T>(s.route_scale) / total;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = saved.selected[t * sz(k) + sz(j)];
        const T ds = scale * (dw[sz(j)] - dw_dot_g);
        dl[e] = ds * st[e] * (T(1) - st[e]);
      }
    }
  });

  saved.drouted_in.assign(sz(n * k * c), T(0));
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = saved.counts[sz(e)], off = saved.offsets[sz(e)];
    if (rows == 0) continue;
    swiglu_backward(saved.drouted_in.data() + sz(off * c), grads.dw1 + sz(e * h * c),
                    grads.dw3 + sz(e * h * c), grads.dw2 + sz(e * c * h),
                    saved.drouted.data() + sz(off * c), saved.routed_in.data() + sz(off * c),
                    saved.expert[sz(e)], w.w1 + sz(e * h * c), w.w3 + sz(e * h * c),
                    w.w2 + sz(e * c * h), rows, c, h);
  }
  // Gather the experts' input gradients back, each token summing its slots in slot order.
  parallel_for(sz(n), 0, kTokenGrain, [&](size_t b, size_t end) {
    for (size_t t = b; t < end; ++t) {
      T* dut = du + t * sz(c);
      for (int64_t j = 0; j < k; ++j) {
        const T* src = saved.drouted_in.data() + sz(saved.row_of[t * sz(k) + sz(j)] * c);
        for (int64_t i = 0; i < c; ++i) dut[i] += src[i];
      }
    }
  });

  if (s.n_shared > 0) {
    swiglu_backward(du, grads.dshared_w1, grads.dshared_w3, grads.dshared_w2, dy, u, saved.shared,
                    w.shared_w1, w.shared_w3, w.shared_w2, n, c, s.shared_hidden());
  }
  gemm<T>(Trans::kYes, Trans::kNo, e_count, c, n, T(1), saved.dlogits.data(), e_count, u, c, T(1),
          grads.dwg, c);
  gemm<T>(Trans::kNo, Trans::kNo, n, c, e_count, T(1), saved.dlogits.data(), e_count, w.wg, c, T(1),
          du, c);
}

template <class T>
void aux_free_bias_update(T* bias, const int64_t* counts, int64_t experts, double gamma) {
  if (experts < 1)
    throw ConfigError(
        error_message("moe bias update: experts", std::to_string(experts) + " is not positive"));
  double mean = 0;
  for (int64_t i = 0; i < experts; ++i) mean += static_cast<double>(counts[i]);
  mean /= static_cast<double>(experts);
  for (int64_t i = 0; i < experts; ++i) {
    const double diff = mean - static_cast<double>(counts[i]);
    const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    bias[i] += static_cast<T>(gamma * sign);
  }
}

template <class T>
double moe_balance_loss(const MoeSaved<T>& saved, const MoeShape& s, int64_t seq_len,
                        double alpha) {
  validate(s);
  check_seq_len(s, seq_len);
  const int64_t e_count = s.experts, k = s.top_k;
  const int64_t sequences = s.tokens / seq_len;
  double loss = 0;
  std::vector<double> f(sz(e_count)), p(sz(e_count));
  for (int64_t b = 0; b < sequences; ++b) {
    std::fill(f.begin(), f.end(), 0.0);
    std::fill(p.begin(), p.end(), 0.0);
    for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t) {
      const T* st = saved.scores.data() + sz(t * e_count);
      double z = 0;
      for (int64_t i = 0; i < e_count; ++i) z += static_cast<double>(st[i]);
      for (int64_t i = 0; i < e_count; ++i) p[sz(i)] += static_cast<double>(st[i]) / z;
      for (int64_t j = 0; j < k; ++j) f[sz(saved.selected[sz(t * k + j)])] += 1.0;
    }
    double sum = 0;
    for (int64_t i = 0; i < e_count; ++i) sum += f[sz(i)] * p[sz(i)];
    // f_i P_i = (E / (K T)) count_i · (Σ_t ratio / T).
    loss += alpha * sum * static_cast<double>(e_count) /
            (static_cast<double>(k) * static_cast<double>(seq_len) * static_cast<double>(seq_len));
  }
  return loss / static_cast<double>(sequences);
}

// With Z_t = Σ_j s_t,j and B sequences:
//   dL/ds_t,i = alpha / (B T) · (f_i / Z_t − Σ_j f_j s_t,j / Z_t²),   dlogit = ds · s (1 − s).
template <class T>
void moe_balance_loss_backward(T* du, T* dwg, double dloss, const T* u, const MoeSaved<T>& saved,
                               const T* wg, const MoeShape& s, int64_t seq_len, double alpha) {
  validate(s);
  check_seq_len(s, seq_len);
  const int64_t n = s.tokens, c = s.dim, e_count = s.experts, k = s.top_k;
  const int64_t sequences = n / seq_len;
  const double coef =
      dloss * alpha / (static_cast<double>(sequences) * static_cast<double>(seq_len));
  const double f_scale =
      static_cast<double>(e_count) / (static_cast<double>(k) * static_cast<double>(seq_len));
  saved.dlogits.assign(sz(n * e_count), T(0));
  std::vector<double> f(sz(e_count));
  for (int64_t b = 0; b < sequences; ++b) {
    std::fill(f.begin(), f.end(), 0.0);
    for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t)
      for (int64_t j = 0; j < k; ++j) f[sz(saved.selected[sz(t * k + j)])] += f_scale;
    for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t) {
      const T* st = saved.scores.data() + sz(t * e_count);
      double z = 0, fs = 0;
      for (int64_t i = 0; i < e_count; ++i) {
        z += static_cast<double>(st[i]);
        fs += f[sz(i)] * static_cast<double>(st[i]);
      }
      T* dl = saved.dlogits.data() + sz(t * e_count);
      for (int64_t i = 0; i < e_count; ++i) {
        const double si = static_cast<double>(st[i]);
        const double ds = coef * (f[sz(i)] / z - fs / (z * z));
        dl[i] = static_cast<T>(ds * si * (1.0 - si));
      }
    }
  }
  gemm<T>(Trans::kYes, Trans::kNo, e_count, c, n, T(1), saved.dlogits.data(), e_count, u, c, T(1),
          dwg, c);
  gemm<T>(Trans::kNo, Trans::kNo, n, c, e_count, T(1), saved.dlogits.data(), e_count, wg, c, T(1),
          du, c);
}

#define ENGRAM_INSTANTIATE(T)                                                                   \
  template void moe_forward<T>(T*, MoeSaved<T>&, const T*, const T*, const MoeWeights<T>&,      \
                               const MoeShape&);                                                \
  template void moe_backward<T>(T*, const MoeGrads<T>&, const T*, const T*, const MoeSaved<T>&, \
                                const MoeWeights<T>&, const MoeShape&);                         \
  template void aux_free_bias_update<T>(T*, const int64_t*, int64_t, double);                   \
  template double moe_balance_loss<T>(const MoeSaved<T>&, const MoeShape&, int64_t, double);    \
  template void moe_balance_loss_backward<T>(T*, T*, double, const T*, const MoeSaved<T>&,      \
                                             const T*, const MoeShape&, int64_t, double);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
