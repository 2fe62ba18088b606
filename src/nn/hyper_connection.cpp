#include "engram/nn/hyper_connection.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <random>
#include <vector>

#include "engram/tensor/gemm.h"
#include "engram/util/parallel.h"
#include "nn/activation.h"

namespace engram::nn {
namespace {

constexpr double kRmsEps = 1e-6;
constexpr double kPreEps = 1e-6;
constexpr double kSinkhornEps = 1e-6;
constexpr int kSinkhornIterations = 20;
// The normalisation steps after the softmax: one column step, then (row, column) 19 times.
constexpr int kSinkhornSteps = 2 * kSinkhornIterations - 1;
constexpr size_t kTokenGrain = 64;

// Step s (1-based) normalises columns when s is odd, rows when it is even.
bool step_normalises_columns(int step) {
  return step % 2 == 1;
}

// Element e of line l: row l when normalising rows, column l when normalising columns.
inline int64_t line_index(int64_t l, int64_t e, int64_t n, bool columns) {
  return columns ? e * n + l : l * n + e;
}

// m (n, n) = row softmax of logits + eps.
template <class T>
void softmax_rows(T* m, const T* logits, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T* row = logits + i * n;
    const T mx = *std::max_element(row, row + n);
    T sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += m[i * n + j] = std::exp(row[j] - mx);
    for (int64_t j = 0; j < n; ++j) m[i * n + j] /= sum;
  }
}

// out = in / (line sums + eps), over rows or columns.
template <class T>
void normalise_lines(T* out, const T* in, int64_t n, bool columns) {
  for (int64_t l = 0; l < n; ++l) {
    T sum = 0;
    for (int64_t e = 0; e < n; ++e) sum += in[line_index(l, e, n, columns)];
    const T denom = sum + T(kSinkhornEps);
    for (int64_t e = 0; e < n; ++e) {
      const int64_t k = line_index(l, e, n, columns);
      out[k] = in[k] / denom;
    }
  }
}

// y_e = x_e / (Σ x + eps):  dx_e = g_e / d - (Σ_f g_f x_f) / d².  Overwrites g with dx.
template <class T>
void normalise_lines_backward(T* g, const T* in, int64_t n, bool columns) {
  for (int64_t l = 0; l < n; ++l) {
    T sum = 0, dot = 0;
    for (int64_t e = 0; e < n; ++e) {
      const int64_t k = line_index(l, e, n, columns);
      sum += in[k];
      dot += g[k] * in[k];
    }
    const T denom = sum + T(kSinkhornEps);
    for (int64_t e = 0; e < n; ++e) {
      const int64_t k = line_index(l, e, n, columns);
      g[k] = g[k] / denom - dot / (denom * denom);
    }
  }
}

// states (kSinkhornSteps + 1, n, n): states[0] = softmax + eps, states[s] after step s.
template <class T>
void sinkhorn_states(T* states, const T* logits, int64_t n) {
  const int64_t nn = n * n;
  softmax_rows(states, logits, n);
  for (int64_t k = 0; k < nn; ++k) states[k] += T(kSinkhornEps);
  for (int s = 1; s <= kSinkhornSteps; ++s) {
    normalise_lines(states + s * nn, states + (s - 1) * nn, n, step_normalises_columns(s));
  }
}

// proj (N, K) = r · (x Φ^T), rstd (N) = r, from x (N, D), phi (K, D).
template <class T>
void rms_projection_forward(T* proj, T* rstd, const T* x, const T* phi, int64_t tokens, int64_t k,
                            int64_t d) {
  gemm(Trans::kNo, Trans::kYes, tokens, k, d, T(1), x, d, phi, d, T(0), proj, k);
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t) {
      const T* v = x + t * d;
      T ss = 0;
      for (int64_t i = 0; i < d; ++i) ss += v[i] * v[i];
      const T r = T(1) / std::sqrt(ss / static_cast<T>(d) + T(kRmsEps));
      rstd[t] = r;
      for (int64_t j = 0; j < k; ++j) proj[t * k + j] *= r;
    }
  });
}

// m = r p with p = Φ v and r = (mean(v²) + eps)^(-1/2):
//   dp = r dm,  dr = Σ dm p,  dv = Φ^T dp - dr r³ v / D,  dΦ += dp v^T.
// dproj (N, K) is consumed (overwritten with dp). dx (N, D) and dphi (K, D) are +=.
template <class T>
void rms_projection_backward(T* dx, T* dphi, T* dproj, const T* x, const T* phi, const T* proj,
                             const T* rstd, int64_t tokens, int64_t k, int64_t d) {
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t) {
      const T r = rstd[t];
      T* dm = dproj + t * k;
      const T* m = proj + t * k;
      T dr = 0;
      for (int64_t j = 0; j < k; ++j) dr += dm[j] * m[j];
      dr /= r;  // m = r p, so Σ dm p = Σ dm m / r
      for (int64_t j = 0; j < k; ++j) dm[j] *= r;
      const T coef = dr * r * r * r / static_cast<T>(d);
      const T* v = x + t * d;
      T* dv = dx + t * d;
      for (int64_t i = 0; i < d; ++i) dv[i] -= coef * v[i];
    }
  });
  // Both products reduce in a fixed order (GEMM splits only the output, never the sum).
  gemm(Trans::kNo, Trans::kNo, tokens, d, k, T(1), dproj, k, phi, d, T(1), dx, d);
  gemm(Trans::kYes, Trans::kNo, k, d, tokens, T(1), dproj, k, x, d, T(1), dphi, d);
}

// Which α scales coefficient j of a sublayer: 0 pre, 1 post, 2 res.
inline int64_t alpha_slot(int64_t j, int64_t n) {
  return j < n ? 0 : (j < 2 * n ? 1 : 2);
}

}  // namespace

template <class T>
void hc_sinkhorn_forward(T* comb, const T* logits, int64_t n) {
  const int64_t nn = n * n;
  std::vector<T> states(static_cast<size_t>((kSinkhornSteps + 1) * nn));
  sinkhorn_states(states.data(), logits, n);
  std::copy(states.end() - nn, states.end(), comb);
}

template <class T>
void hc_sinkhorn_backward(T* dlogits, const T* dcomb, const T* logits, int64_t n) {
  const int64_t nn = n * n;
  std::vector<T> states(static_cast<size_t>((kSinkhornSteps + 1) * nn));
  sinkhorn_states(states.data(), logits, n);
  std::vector<T> g(dcomb, dcomb + nn);
  for (int s = kSinkhornSteps; s >= 1; --s) {
    normalise_lines_backward(g.data(), states.data() + (s - 1) * nn, n, step_normalises_columns(s));
  }
  // M0 = P + eps with P the row softmax: dlogits_ij = P_ij (g_ij - Σ_k g_ik P_ik).
  std::vector<T> p(static_cast<size_t>(nn));
  softmax_rows(p.data(), logits, n);
  for (int64_t i = 0; i < n; ++i) {
    T dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += g[i * n + j] * p[i * n + j];
    for (int64_t j = 0; j < n; ++j) dlogits[i * n + j] += p[i * n + j] * (g[i * n + j] - dot);
  }
}

template <class T>
void hc_coefficients_forward(T* pre, T* post, T* comb, HcCoefficientsSaved<T>& saved, const T* x,
                             const T* phi, const T* b, const T* alpha, int64_t tokens, int64_t n,
                             int64_t c) {
  assert(n >= 1 && c >= 1 && tokens >= 0);
  const int64_t k = hc_coefficient_count(n), nn = n * n;
  saved.proj.resize(static_cast<size_t>(tokens * k));
  saved.rstd.resize(static_cast<size_t>(tokens));
  rms_projection_forward(saved.proj.data(), saved.rstd.data(), x, phi, tokens, k, n * c);
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t tb, size_t te) {
    std::vector<T> a(static_cast<size_t>(k));
    for (size_t t = tb; t < te; ++t) {
      const T* m = saved.proj.data() + t * k;
      for (int64_t j = 0; j < k; ++j) a[j] = m[j] * alpha[alpha_slot(j, n)] + b[j];
      for (int64_t i = 0; i < n; ++i) {
        pre[t * n + i] = sigmoid(a[i]) + T(kPreEps);
        post[t * n + i] = T(2) * sigmoid(a[n + i]);
      }
      hc_sinkhorn_forward(comb + t * nn, a.data() + 2 * n, n);
    }
  });
}

template <class T>
void hc_coefficients_backward(T* dx, T* dphi, T* db, T* dalpha, const T* dpre, const T* dpost,
                              const T* dcomb, const T* x, const HcCoefficientsSaved<T>& saved,
                              const T* phi, const T* b, const T* alpha, int64_t tokens, int64_t n,
                              int64_t c) {
  const int64_t k = hc_coefficient_count(n), nn = n * n;
  const T* proj = saved.proj.data();
  std::vector<T> da(static_cast<size_t>(tokens * k), T(0));  // (N, K) dL/da
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t tb, size_t te) {
    std::vector<T> a(static_cast<size_t>(k));
    for (size_t t = tb; t < te; ++t) {
      const T* m = proj + t * k;
      T* g = da.data() + t * k;
      for (int64_t j = 0; j < k; ++j) a[j] = m[j] * alpha[alpha_slot(j, n)] + b[j];
      for (int64_t i = 0; i < n; ++i) {
        const T sp = sigmoid(a[i]), sq = sigmoid(a[n + i]);
        g[i] = dpre[t * n + i] * sp * (T(1) - sp);
        g[n + i] = dpost[t * n + i] * T(2) * sq * (T(1) - sq);
      }
      hc_sinkhorn_backward(g + 2 * n, dcomb + t * nn, a.data() + 2 * n, n);
    }
  });
  // Token reductions for b and α, serial in token order (independent of the thread count).
  T dalpha_sum[3] = {0, 0, 0};
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const T g = da[static_cast<size_t>(t * k + j)];
      db[j] += g;
      dalpha_sum[alpha_slot(j, n)] += g * proj[t * k + j];
    }
  }
  for (int s = 0; s < 3; ++s) dalpha[s] += dalpha_sum[s];
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) da[static_cast<size_t>(t * k + j)] *= alpha[alpha_slot(j, n)];
  }
  rms_projection_backward(dx, dphi, da.data(), x, phi, proj, saved.rstd.data(), tokens, k, n * c);
}

template <class T>
void hc_readout_forward(T* y, const T* x, const T* pre, int64_t tokens, int64_t n, int64_t c) {
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t tb, size_t te) {
    for (size_t t = tb; t < te; ++t) {
      T* yt = y + t * c;
      std::fill(yt, yt + c, T(0));
      for (int64_t i = 0; i < n; ++i) {
        const T w = pre[t * n + i];
        const T* xi = x + (t * n + i) * c;
        for (int64_t e = 0; e < c; ++e) yt[e] += w * xi[e];
      }
    }
  });
}

namespace {

// The backward of y = sum_i w_i x_i for one term: dx += w * g, and returns sum_e g[e] * x[e]
// (the gradient of w), in one pass over the c values.
template <class T>
T dot_and_axpy(const T* g, const T* x, T* dx, T w, int64_t c) {
  T dot = 0;
  for (int64_t e = 0; e < c; ++e) {
    dot += g[e] * x[e];
    dx[e] += w * g[e];
  }
  return dot;
}

}  // namespace

template <class T>
void hc_readout_backward(T* dx, T* dpre, const T* dy, const T* x, const T* pre, int64_t tokens,
                         int64_t n, int64_t c) {
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t tb, size_t te) {
    for (size_t t = tb; t < te; ++t) {
      const T* g = dy + t * c;
      for (int64_t i = 0; i < n; ++i) {
        const T w = pre[t * n + i];
        const T* xi = x + (t * n + i) * c;
        T* dxi = dx + (t * n + i) * c;
        dpre[t * n + i] += dot_and_axpy(g, xi, dxi, w, c);
      }
    }
  });
}

template <class T>
void hc_write_back_forward(T* x_out, const T* f, const T* x, const T* post, const T* comb,
                           int64_t tokens, int64_t n, int64_t c) {
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t tb, size_t te) {
    for (size_t t = tb; t < te; ++t) {
      const T* ft = f + t * c;
      const T* ct = comb + t * n * n;
      for (int64_t k = 0; k < n; ++k) {
        T* out = x_out + (t * n + k) * c;
        const T p = post[t * n + k];
        for (int64_t e = 0; e < c; ++e) out[e] = p * ft[e];
        for (int64_t j = 0; j < n; ++j) {
          const T w = ct[j * n + k];
          const T* xj = x + (t * n + j) * c;
          for (int64_t e = 0; e < c; ++e) out[e] += w * xj[e];
        }
      }
    }
  });
}

template <class T>
void hc_write_back_backward(T* df, T* dx, T* dpost, T* dcomb, const T* dx_out, const T* f,
                            const T* x, const T* post, const T* comb, int64_t tokens, int64_t n,
                            int64_t c) {
  parallel_for(static_cast<size_t>(tokens), 0, kTokenGrain, [&](size_t tb, size_t te) {
    for (size_t t = tb; t < te; ++t) {
      const T* ft = f + t * c;
      T* dft = df + t * c;
      const T* ct = comb + t * n * n;
      T* dct = dcomb + t * n * n;
      for (int64_t k = 0; k < n; ++k) {
        const T* g = dx_out + (t * n + k) * c;
        const T p = post[t * n + k];
        dpost[t * n + k] += dot_and_axpy(g, ft, dft, p, c);
        for (int64_t j = 0; j < n; ++j) {
          const T w = ct[j * n + k];
          const T* xj = x + (t * n + j) * c;
          T* dxj = dx + (t * n + j) * c;
          dct[j * n + k] += dot_and_axpy(g, xj, dxj, w, c);
        }
      }
    }
  });
}

template <class T>
void hc_head_readout_forward(T* y, T* pre, HcCoefficientsSaved<T>& saved, const T* x,
                             const T* phi_h, const T* b_h, const T* alpha_h, int64_t tokens,
                             int64_t n, int64_t c) {
  assert(n >= 1 && c >= 1 && tokens >= 0);
  saved.proj.resize(static_cast<size_t>(tokens * n));
  saved.rstd.resize(static_cast<size_t>(tokens));
  rms_projection_forward(saved.proj.data(), saved.rstd.data(), x, phi_h, tokens, n, n * c);
  for (int64_t j = 0; j < tokens * n; ++j) {
    pre[j] = sigmoid(saved.proj[static_cast<size_t>(j)] * alpha_h[0] + b_h[j % n]) + T(kPreEps);
  }
  hc_readout_forward(y, x, pre, tokens, n, c);
}

template <class T>
void hc_head_readout_backward(T* dx, T* dphi_h, T* db_h, T* dalpha_h, const T* dy, const T* x,
                              const T* pre, const HcCoefficientsSaved<T>& saved, const T* phi_h,
                              const T* b_h, const T* alpha_h, int64_t tokens, int64_t n,
                              int64_t c) {
  std::vector<T> da(static_cast<size_t>(tokens * n), T(0));  // (N, n) dL/dpre, then dL/da
  hc_readout_backward(dx, da.data(), dy, x, pre, tokens, n, c);
  const T* proj = saved.proj.data();
  T dalpha_sum = 0;
  for (int64_t j = 0; j < tokens * n; ++j) {  // serial: fixed token order
    const T s = sigmoid(proj[j] * alpha_h[0] + b_h[j % n]);
    T& g = da[static_cast<size_t>(j)];
    g *= s * (T(1) - s);
    db_h[j % n] += g;
    dalpha_sum += g * proj[j];
    g *= alpha_h[0];
  }
  dalpha_h[0] += dalpha_sum;
  rms_projection_backward(dx, dphi_h, da.data(), x, phi_h, proj, saved.rstd.data(), tokens, n,
                          n * c);
}

template <class T>
void hc_init(T* phi, T* b, T* alpha, int64_t n, int64_t c, int64_t layer, uint64_t seed,
             const HcInit& init) {
  const int64_t k = hc_coefficient_count(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, init.phi_std);
  for (int64_t i = 0; i < k * n * c; ++i) phi[i] = static_cast<T>(dist(rng));
  for (int64_t i = 0; i < n; ++i) {
    b[i] = static_cast<T>(i == layer % n ? init.pre_favoured_logit : init.pre_other_logit);
    b[n + i] = T(0);
    for (int64_t j = 0; j < n; ++j) {
      b[2 * n + i * n + j] = static_cast<T>(i == j ? init.res_identity_logit : 0.0);
    }
  }
  for (int s = 0; s < 3; ++s) alpha[s] = static_cast<T>(init.alpha);
}

template <class T>
void hc_head_init(T* phi_h, T* b_h, T* alpha_h, int64_t n, int64_t c, int64_t layer, uint64_t seed,
                  const HcInit& init) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, init.phi_std);
  for (int64_t i = 0; i < n * n * c; ++i) phi_h[i] = static_cast<T>(dist(rng));
  for (int64_t i = 0; i < n; ++i) {
    b_h[i] = static_cast<T>(i == layer % n ? init.pre_favoured_logit : init.pre_other_logit);
  }
  alpha_h[0] = static_cast<T>(init.alpha);
}

#define ENGRAM_INSTANTIATE(T)                                                                     \
  template void hc_sinkhorn_forward<T>(T*, const T*, int64_t);                                    \
  template void hc_sinkhorn_backward<T>(T*, const T*, const T*, int64_t);                         \
  template void hc_coefficients_forward<T>(T*, T*, T*, HcCoefficientsSaved<T>&, const T*,         \
                                           const T*, const T*, const T*, int64_t, int64_t,        \
                                           int64_t);                                              \
  template void hc_coefficients_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,         \
                                            const T*, const HcCoefficientsSaved<T>&, const T*,    \
                                            const T*, const T*, int64_t, int64_t, int64_t);       \
  template void hc_readout_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t);         \
  template void hc_readout_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t,    \
                                       int64_t);                                                  \
  template void hc_write_back_forward<T>(T*, const T*, const T*, const T*, const T*, int64_t,     \
                                         int64_t, int64_t);                                       \
  template void hc_write_back_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, \
                                          const T*, int64_t, int64_t, int64_t);                   \
  template void hc_head_readout_forward<T>(T*, T*, HcCoefficientsSaved<T>&, const T*, const T*,   \
                                           const T*, const T*, int64_t, int64_t, int64_t);        \
  template void hc_head_readout_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,         \
                                            const HcCoefficientsSaved<T>&, const T*, const T*,    \
                                            const T*, int64_t, int64_t, int64_t);                 \
  template void hc_init<T>(T*, T*, T*, int64_t, int64_t, int64_t, uint64_t, const HcInit&);       \
  template void hc_head_init<T>(T*, T*, T*, int64_t, int64_t, int64_t, uint64_t, const HcInit&);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
