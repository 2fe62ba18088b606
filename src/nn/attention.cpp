#include "engram/nn/attention.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <string>

#include "engram/tensor/gemm.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::nn {
namespace {

void require_positive(int64_t value, const char* field) {
  if (value <= 0) {
    throw ConfigError(error_message(std::string("attention: ") + field,
                                    "must be positive, got " + std::to_string(value)));
  }
}

// Rotates each (i, i + hd/2) pair of every head of x (B, T, H, hd) by sign * t * theta^(-2i/hd).
template <class T>
void rope_rotate(T* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, double theta,
                 double sign) {
  const int64_t half = head_dim / 2;
  // cos/sin table (T, hd/2), computed in double.
  std::vector<T> cos_t(static_cast<size_t>(seq * half)), sin_t(static_cast<size_t>(seq * half));
  for (int64_t t = 0; t < seq; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq =
          std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
      const double angle = sign * static_cast<double>(t) * inv_freq;
      cos_t[static_cast<size_t>(t * half + i)] = static_cast<T>(std::cos(angle));
      sin_t[static_cast<size_t>(t * half + i)] = static_cast<T>(std::sin(angle));
    }
  }
  parallel_for(static_cast<size_t>(batch * seq), 0, 16, [&](size_t b, size_t e) {
    for (size_t bt = b; bt < e; ++bt) {
      const int64_t t = static_cast<int64_t>(bt) % seq;
      const T* c = cos_t.data() + t * half;
      const T* sn = sin_t.data() + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        T* row = x + (static_cast<int64_t>(bt) * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = row[i], x2 = row[i + half];
          row[i] = x1 * c[i] - x2 * sn[i];
          row[i + half] = x2 * c[i] + x1 * sn[i];
        }
      }
    }
  });
}

}  // namespace

void validate(const AttentionShape& s) {
  require_positive(s.batch, "batch");
  require_positive(s.seq, "seq");
  require_positive(s.dim, "dim");
  require_positive(s.heads, "heads");
  require_positive(s.kv_heads, "kv_heads");
  require_positive(s.head_dim, "head_dim");
  if (s.heads % s.kv_heads != 0) {
    throw ConfigError(error_message(
        "attention: kv_heads",
        "must divide heads (" + std::to_string(s.heads) + "), got " + std::to_string(s.kv_heads)));
  }
  if (s.head_dim % 2 != 0) {
    throw ConfigError(error_message("attention: head_dim",
                                    "must be even for RoPE, got " + std::to_string(s.head_dim)));
  }
  if (!(s.rope_theta > 0)) {
    throw ConfigError(error_message("attention: rope_theta",
                                    "must be positive, got " + std::to_string(s.rope_theta)));
  }
}

template <class T>
void rope_forward(T* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, double theta) {
  rope_rotate(x, batch, seq, heads, head_dim, theta, 1.0);
}

template <class T>
void rope_backward(T* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                   double theta) {
  rope_rotate(x, batch, seq, heads, head_dim, theta, -1.0);
}

template <class T>
void attention_row(T* ctx, T* p, const T* q, const T* k, const T* v, int64_t keys,
                   int64_t stride, int64_t head_dim, T scale) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t u = 0; u < keys; ++u) {
    const T* ku = k + u * stride;
    T dot = 0;
    for (int64_t i = 0; i < head_dim; ++i) dot += q[i] * ku[i];
    p[u] = dot * scale;
    mx = std::max(mx, p[u]);
  }
  T sum = 0;
  for (int64_t u = 0; u < keys; ++u) {
    p[u] = std::exp(p[u] - mx);
    sum += p[u];
  }
  const T inv = T(1) / sum;
  std::fill(ctx, ctx + head_dim, T(0));
  for (int64_t u = 0; u < keys; ++u) {
    p[u] *= inv;
    const T* vu = v + u * stride;
    for (int64_t i = 0; i < head_dim; ++i) ctx[i] += p[u] * vu[i];
  }
}

template <class T>
void attention_forward(T* out, AttentionSaved<T>& saved, const T* x, const AttentionWeights<T>& w,
                       const AttentionShape& s) {
  validate(s);
  const int64_t BT = s.tokens(), C = s.dim, Tn = s.seq, hd = s.head_dim;
  const int64_t QD = s.q_dim(), KD = s.kv_dim(), group = s.heads / s.kv_heads;
  saved.q.resize(static_cast<size_t>(BT * QD));
  saved.k.resize(static_cast<size_t>(BT * KD));
  saved.v.resize(static_cast<size_t>(BT * KD));
  saved.att.assign(static_cast<size_t>(s.batch * s.heads * Tn * Tn), T(0));
  saved.context.resize(static_cast<size_t>(BT * QD));

  gemm<T>(Trans::kNo, Trans::kYes, BT, QD, C, T(1), x, C, w.wq, C, T(0), saved.q.data(), QD);
  gemm<T>(Trans::kNo, Trans::kYes, BT, KD, C, T(1), x, C, w.wk, C, T(0), saved.k.data(), KD);
  gemm<T>(Trans::kNo, Trans::kYes, BT, KD, C, T(1), x, C, w.wv, C, T(0), saved.v.data(), KD);
  rope_forward(saved.q.data(), s.batch, Tn, s.heads, hd, s.rope_theta);
  rope_forward(saved.k.data(), s.batch, Tn, s.kv_heads, hd, s.rope_theta);

  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  // One (b, h) pair per work item: each writes only its own att rows and context columns.
  parallel_for(static_cast<size_t>(s.batch * s.heads), 0, 1, [&](size_t ib, size_t ie) {
    for (size_t item = ib; item < ie; ++item) {
      const int64_t b = static_cast<int64_t>(item) / s.heads;
      const int64_t h = static_cast<int64_t>(item) % s.heads;
      const int64_t g = h / group;
      for (int64_t t = 0; t < Tn; ++t) {
        attention_row(saved.context.data() + (b * Tn + t) * QD + h * hd,
                      saved.att.data() + ((b * s.heads + h) * Tn + t) * Tn,
                      saved.q.data() + (b * Tn + t) * QD + h * hd,
                      saved.k.data() + b * Tn * KD + g * hd, saved.v.data() + b * Tn * KD + g * hd,
                      t + 1, KD, hd, scale);
      }
    }
  });

  gemm<T>(Trans::kNo, Trans::kYes, BT, C, QD, T(1), saved.context.data(), QD, w.wo, QD, T(0), out,
          C);
}

// With p = softmax(z), z = scale q.k:  dz_u = p_u (dp_u - sum_w p_w dp_w),
// dp_u = dctx . v_u,  dv_u += p_u dctx,  dq += scale dz_u k_u,  dk_u += scale dz_u q.
template <class T>
void attention_backward(T* dx, const AttentionGrads<T>& grads, const T* dout, const T* x,
                        const AttentionSaved<T>& saved, const AttentionWeights<T>& w,
                        const AttentionShape& s) {
  validate(s);
  const int64_t BT = s.tokens(), C = s.dim, Tn = s.seq, hd = s.head_dim;
  const int64_t QD = s.q_dim(), KD = s.kv_dim(), group = s.heads / s.kv_heads;
  assert(saved.q.size() == static_cast<size_t>(BT * QD));
  std::vector<T>& dctx = saved.dcontext;
  std::vector<T>& dq = saved.dq;
  std::vector<T>& dk = saved.dk;
  std::vector<T>& dv = saved.dv;
  dctx.resize(static_cast<size_t>(BT * QD));
  dq.assign(static_cast<size_t>(BT * QD), T(0));
  dk.assign(static_cast<size_t>(BT * KD), T(0));
  dv.assign(static_cast<size_t>(BT * KD), T(0));

  // out = ctx Wo^T: dctx = dout Wo, dWo += dout^T ctx.
  gemm<T>(Trans::kNo, Trans::kNo, BT, QD, C, T(1), dout, C, w.wo, QD, T(0), dctx.data(), QD);
  gemm<T>(Trans::kYes, Trans::kNo, C, QD, BT, T(1), dout, C, saved.context.data(), QD, T(1),
          grads.dwo, QD);

  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  // One (b, key/value head) per work item, its query heads in order: dk/dv of a kv head are
  // written by one item only, and sums run in a fixed order whatever the thread count.
  parallel_for(static_cast<size_t>(s.batch * s.kv_heads), 0, 1, [&](size_t ib, size_t ie) {
    std::vector<T> dp(static_cast<size_t>(Tn));
    for (size_t item = ib; item < ie; ++item) {
      const int64_t b = static_cast<int64_t>(item) / s.kv_heads;
      const int64_t g = static_cast<int64_t>(item) % s.kv_heads;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t t = 0; t < Tn; ++t) {
          const T* p = saved.att.data() + ((b * s.heads + h) * Tn + t) * Tn;
          const T* dct = dctx.data() + (b * Tn + t) * QD + h * hd;
          const T* qt = saved.q.data() + (b * Tn + t) * QD + h * hd;
          T* dqt = dq.data() + (b * Tn + t) * QD + h * hd;
          T pdp = 0;
          for (int64_t u = 0; u <= t; ++u) {
            const T* vu = saved.v.data() + (b * Tn + u) * KD + g * hd;
            T* dvu = dv.data() + (b * Tn + u) * KD + g * hd;
            T d = 0;
            for (int64_t i = 0; i < hd; ++i) {
              d += dct[i] * vu[i];
              dvu[i] += p[u] * dct[i];
            }
            dp[static_cast<size_t>(u)] = d;
            pdp += p[u] * d;
          }
          for (int64_t u = 0; u <= t; ++u) {
            const T dz = scale * p[u] * (dp[static_cast<size_t>(u)] - pdp);
            const T* ku = saved.k.data() + (b * Tn + u) * KD + g * hd;
            T* dku = dk.data() + (b * Tn + u) * KD + g * hd;
            for (int64_t i = 0; i < hd; ++i) {
              dqt[i] += dz * ku[i];
              dku[i] += dz * qt[i];
            }
          }
        }
      }
    }
  });

  // Back through RoPE (its transpose is the inverse rotation), then the projections.
  rope_backward(dq.data(), s.batch, Tn, s.heads, hd, s.rope_theta);
  rope_backward(dk.data(), s.batch, Tn, s.kv_heads, hd, s.rope_theta);
  gemm<T>(Trans::kNo, Trans::kNo, BT, C, QD, T(1), dq.data(), QD, w.wq, C, T(1), dx, C);
  gemm<T>(Trans::kNo, Trans::kNo, BT, C, KD, T(1), dk.data(), KD, w.wk, C, T(1), dx, C);
  gemm<T>(Trans::kNo, Trans::kNo, BT, C, KD, T(1), dv.data(), KD, w.wv, C, T(1), dx, C);
  gemm<T>(Trans::kYes, Trans::kNo, QD, C, BT, T(1), dq.data(), QD, x, C, T(1), grads.dwq, C);
  gemm<T>(Trans::kYes, Trans::kNo, KD, C, BT, T(1), dk.data(), KD, x, C, T(1), grads.dwk, C);
  gemm<T>(Trans::kYes, Trans::kNo, KD, C, BT, T(1), dv.data(), KD, x, C, T(1), grads.dwv, C);
}

#define ENGRAM_INSTANTIATE(T)                                                                      \
  template void attention_row<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,  \
                                 T);                                                              \
  template void attention_forward<T>(T*, AttentionSaved<T>&, const T*, const AttentionWeights<T>&, \
                                     const AttentionShape&);                                       \
  template void attention_backward<T>(T*, const AttentionGrads<T>&, const T*, const T*,            \
                                      const AttentionSaved<T>&, const AttentionWeights<T>&,        \
                                      const AttentionShape&);                                      \
  template void rope_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, double);                   \
  template void rope_backward<T>(T*, int64_t, int64_t, int64_t, int64_t, double);
ENGRAM_INSTANTIATE(float)
ENGRAM_INSTANTIATE(double)
#undef ENGRAM_INSTANTIATE

}  // namespace engram::nn
