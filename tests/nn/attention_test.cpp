#include "engram/nn/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "nn/grad_check.h"

namespace engram::nn {
namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

struct Params {
  std::vector<double> wq, wk, wv, wo;
  AttentionWeights<double> view() const { return {wq.data(), wk.data(), wv.data(), wo.data()}; }
};

Params random_params(const AttentionShape& s, uint64_t seed) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.dim));
  return {test::random_vector(sz(s.q_dim() * s.dim), seed + 1, scale),
          test::random_vector(sz(s.kv_dim() * s.dim), seed + 2, scale),
          test::random_vector(sz(s.kv_dim() * s.dim), seed + 3, scale),
          test::random_vector(sz(s.dim * s.q_dim()), seed + 4, scale)};
}

std::string name(const AttentionShape& s) {
  return "B" + std::to_string(s.batch) + " T" + std::to_string(s.seq) + " C" +
         std::to_string(s.dim) + " Hq" + std::to_string(s.heads) + " Hkv" +
         std::to_string(s.kv_heads) + " hd" + std::to_string(s.head_dim);
}

// y (rows, out) = x (rows, in) W^T with W (out, in).
std::vector<double> linear(const std::vector<double>& x, const std::vector<double>& w, int64_t rows,
                           int64_t in, int64_t out) {
  std::vector<double> y(sz(rows * out), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) y[sz(r * out + o)] += x[sz(r * in + i)] * w[sz(o * in + i)];
  return y;
}

// Rotate-half RoPE of one head vector at position t, written from the definition.
void reference_rope(double* v, int64_t t, int64_t hd, double theta) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double a = static_cast<double>(t) *
                     std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
    const double x1 = v[i], x2 = v[i + half];
    v[i] = x1 * std::cos(a) - x2 * std::sin(a);
    v[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
  }
}

// The plain definition: projections, RoPE, masked softmax per (b, h, t), output projection.
std::vector<double> reference_attention(const std::vector<double>& x, const Params& p,
                                        const AttentionShape& s) {
  const int64_t BT = s.tokens(), C = s.dim, hd = s.head_dim, QD = s.q_dim(), KD = s.kv_dim();
  std::vector<double> q = linear(x, p.wq, BT, C, QD), k = linear(x, p.wk, BT, C, KD),
                      v = linear(x, p.wv, BT, C, KD);
  for (int64_t bt = 0; bt < BT; ++bt) {
    for (int64_t h = 0; h < s.heads; ++h)
      reference_rope(&q[sz(bt * QD + h * hd)], bt % s.seq, hd, s.rope_theta);
    for (int64_t h = 0; h < s.kv_heads; ++h)
      reference_rope(&k[sz(bt * KD + h * hd)], bt % s.seq, hd, s.rope_theta);
  }
  std::vector<double> ctx(sz(BT * QD), 0.0);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h * s.kv_heads / s.heads;
      for (int64_t t = 0; t < s.seq; ++t) {
        std::vector<double> z(sz(t + 1));
        double mx = -1e300, sum = 0;
        for (int64_t u = 0; u <= t; ++u) {
          double d = 0;
          for (int64_t i = 0; i < hd; ++i)
            d +=
                q[sz((b * s.seq + t) * QD + h * hd + i)] * k[sz((b * s.seq + u) * KD + g * hd + i)];
          z[sz(u)] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, z[sz(u)]);
        }
        for (auto& e : z) sum += (e = std::exp(e - mx));
        for (int64_t u = 0; u <= t; ++u)
          for (int64_t i = 0; i < hd; ++i)
            ctx[sz((b * s.seq + t) * QD + h * hd + i)] +=
                z[sz(u)] / sum * v[sz((b * s.seq + u) * KD + g * hd + i)];
      }
    }
  }
  return linear(ctx, p.wo, BT, QD, C);
}

std::vector<double> run_forward(const std::vector<double>& x, const Params& p,
                                const AttentionShape& s) {
  std::vector<double> out(sz(s.tokens() * s.dim));
  AttentionSaved<double> saved;
  attention_forward(out.data(), saved, x.data(), p.view(), s);
  return out;
}

const AttentionShape kShapes[] = {
    {2, 7, 8, 4, 2, 4},   // GQA
    {2, 7, 12, 3, 3, 4},  // MHA
    {2, 1, 8, 4, 2, 4},   // single token
    {1, 5, 6, 2, 1, 6},   // MQA
};

TEST(Attention, ForwardMatchesReference) {
  for (const AttentionShape& s : kShapes) {
    const auto x = test::random_vector(sz(s.tokens() * s.dim), 7);
    const Params p = random_params(s, 100);
    const auto got = run_forward(x, p, s);
    const auto want = reference_attention(x, p, s);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-12) << name(s) << " " << i;
  }
}

TEST(Attention, SavedProbabilitiesAreCausalAndNormalized) {
  const AttentionShape s{2, 7, 8, 4, 2, 4};
  const auto x = test::random_vector(sz(s.tokens() * s.dim), 8);
  const Params p = random_params(s, 200);
  std::vector<double> out(sz(s.tokens() * s.dim));
  AttentionSaved<double> saved;
  attention_forward(out.data(), saved, x.data(), p.view(), s);
  ASSERT_EQ(saved.att.size(), sz(s.batch * s.heads * s.seq * s.seq));
  for (int64_t row = 0; row < s.batch * s.heads * s.seq; ++row) {
    const int64_t t = row % s.seq;
    double sum = 0;
    for (int64_t u = 0; u < s.seq; ++u) {
      const double v = saved.att[sz(row * s.seq + u)];
      if (u > t) {
        EXPECT_EQ(v, 0.0);
      }
      sum += v;
    }
    EXPECT_NEAR(sum, 1.0, 1e-14);
  }
}

TEST(Attention, FutureTokensDoNotChangeEarlierOutputs) {
  const AttentionShape s{2, 7, 8, 4, 2, 4};
  auto x = test::random_vector(sz(s.tokens() * s.dim), 9);
  const Params p = random_params(s, 300);
  const auto before = run_forward(x, p, s);
  const int64_t cut = 4;  // change tokens t >= cut of every sequence
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = cut; t < s.seq; ++t)
      for (int64_t c = 0; c < s.dim; ++c) x[sz((b * s.seq + t) * s.dim + c)] += 1.5;
  const auto after = run_forward(x, p, s);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t t = 0; t < s.seq; ++t) {
      double diff = 0;
      for (int64_t c = 0; c < s.dim; ++c) {
        const size_t i = sz((b * s.seq + t) * s.dim + c);
        diff = std::max(diff, std::abs(after[i] - before[i]));
      }
      if (t < cut) {
        EXPECT_EQ(diff, 0.0) << "b " << b << " t " << t;
      } else {
        EXPECT_GT(diff, 1e-6) << "b " << b << " t " << t;
      }
    }
  }
}

TEST(Attention, RopeIsIdentityAtPositionZeroAndPreservesNorms) {
  const int64_t B = 2, T = 9, H = 3, hd = 8;
  const auto x = test::random_vector(sz(B * T * H * hd), 10);
  auto y = x;
  rope_forward(y.data(), B, T, H, hd, 10000.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        const size_t off = sz(((b * T + t) * H + h) * hd);
        double nx = 0, ny = 0;
        for (int64_t i = 0; i < hd; ++i) {
          nx += x[off + sz(i)] * x[off + sz(i)];
          ny += y[off + sz(i)] * y[off + sz(i)];
          if (t == 0) {
            EXPECT_EQ(y[off + sz(i)], x[off + sz(i)]);
          }
        }
        EXPECT_NEAR(ny, nx, 1e-12 * nx);
        // Matches the rotate-half definition.
        std::vector<double> want(x.begin() + static_cast<std::ptrdiff_t>(off),
                                 x.begin() + static_cast<std::ptrdiff_t>(off) + hd);
        reference_rope(want.data(), t, hd, 10000.0);
        for (int64_t i = 0; i < hd; ++i) EXPECT_NEAR(y[off + sz(i)], want[sz(i)], 1e-14);
      }
    }
  }
  // At t = 1 the first pair (0, hd/2) turns by exactly 1 radian.
  const size_t t1 = sz(1 * H * hd);
  EXPECT_NEAR(y[t1], x[t1] * std::cos(1.0) - x[t1 + sz(hd / 2)] * std::sin(1.0), 1e-15);
  // rope_backward undoes rope_forward.
  rope_backward(y.data(), B, T, H, hd, 10000.0);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-14);
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  const AttentionShape shapes[] = {{2, 7, 8, 4, 2, 4}, {2, 5, 6, 2, 2, 6}, {1, 3, 4, 2, 1, 2}};
  for (const AttentionShape& s : shapes) {
    auto x = test::random_vector(sz(s.tokens() * s.dim), 11);
    Params p = random_params(s, 400);
    const auto r = test::random_vector(sz(s.tokens() * s.dim), 12);
    auto loss = [&] { return test::dot(run_forward(x, p, s), r); };

    std::vector<double> out(sz(s.tokens() * s.dim));
    AttentionSaved<double> saved;
    attention_forward(out.data(), saved, x.data(), p.view(), s);
    std::vector<double> dx(x.size(), 0.0), dwq(p.wq.size(), 0.0), dwk(p.wk.size(), 0.0),
        dwv(p.wv.size(), 0.0), dwo(p.wo.size(), 0.0);
    const AttentionGrads<double> grads{dwq.data(), dwk.data(), dwv.data(), dwo.data()};
    attention_backward(dx.data(), grads, r.data(), x.data(), saved, p.view(), s);

    const std::string n = name(s);
    test::check_gradient("attention dx " + n, x, dx, loss, 40);
    test::check_gradient("attention dwq " + n, p.wq, dwq, loss, 40);
    test::check_gradient("attention dwk " + n, p.wk, dwk, loss, 40);
    test::check_gradient("attention dwv " + n, p.wv, dwv, loss, 40);
    test::check_gradient("attention dwo " + n, p.wo, dwo, loss, 40);
  }
}

TEST(Attention, BackwardAccumulates) {
  const AttentionShape s{1, 4, 6, 2, 1, 4};
  const auto x = test::random_vector(sz(s.tokens() * s.dim), 13);
  const Params p = random_params(s, 500);
  const auto dout = test::random_vector(sz(s.tokens() * s.dim), 14);
  std::vector<double> out(sz(s.tokens() * s.dim));
  AttentionSaved<double> saved;
  attention_forward(out.data(), saved, x.data(), p.view(), s);
  auto grads_from = [&](double init) {
    std::vector<std::vector<double>> g = {
        std::vector<double>(x.size(), init), std::vector<double>(p.wq.size(), init),
        std::vector<double>(p.wk.size(), init), std::vector<double>(p.wv.size(), init),
        std::vector<double>(p.wo.size(), init)};
    attention_backward(g[0].data(),
                       AttentionGrads<double>{g[1].data(), g[2].data(), g[3].data(), g[4].data()},
                       dout.data(), x.data(), saved, p.view(), s);
    return g;
  };
  const auto zero = grads_from(0.0), one = grads_from(1.0);
  for (size_t k = 0; k < zero.size(); ++k)
    for (size_t i = 0; i < zero[k].size(); ++i) EXPECT_NEAR(one[k][i], zero[k][i] + 1.0, 1e-14);
}

TEST(Attention, FloatForwardIsCloseToDouble) {
  for (const AttentionShape& s : kShapes) {
    const auto x = test::random_vector(sz(s.tokens() * s.dim), 15);
    const Params p = random_params(s, 600);
    const auto want = run_forward(x, p, s);
    auto to_float = [](const std::vector<double>& v) {
      return std::vector<float>(v.begin(), v.end());
    };
    const auto xf = to_float(x), wq = to_float(p.wq), wk = to_float(p.wk), wv = to_float(p.wv),
               wo = to_float(p.wo);
    std::vector<float> out(want.size());
    AttentionSaved<float> saved;
    attention_forward(out.data(), saved, xf.data(),
                      AttentionWeights<float>{wq.data(), wk.data(), wv.data(), wo.data()}, s);
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(static_cast<double>(out[i]), want[i], 1e-5) << name(s) << " " << i;
  }
}

TEST(Attention, RejectsBadShapes) {
  const AttentionShape good{1, 4, 8, 4, 2, 4};
  EXPECT_NO_THROW(validate(good));
  auto with = [&](auto change) {
    AttentionShape s = good;
    change(s);
    return s;
  };
  EXPECT_THROW(validate(with([](AttentionShape& s) { s.kv_heads = 3; })), ConfigError);
  EXPECT_THROW(validate(with([](AttentionShape& s) { s.head_dim = 5; })), ConfigError);
  EXPECT_THROW(validate(with([](AttentionShape& s) { s.heads = 0; })), ConfigError);
  EXPECT_THROW(validate(with([](AttentionShape& s) { s.seq = 0; })), ConfigError);
  EXPECT_THROW(validate(with([](AttentionShape& s) { s.rope_theta = 0; })), ConfigError);
  std::vector<double> x(32), w(256), out(32);
  AttentionSaved<double> saved;
  const AttentionShape bad = with([](AttentionShape& s) { s.kv_heads = 3; });
  EXPECT_THROW(
      attention_forward(out.data(), saved, x.data(),
                        AttentionWeights<double>{w.data(), w.data(), w.data(), w.data()}, bad),
      ConfigError);
}

}  // namespace
}  // namespace engram::nn
