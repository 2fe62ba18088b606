#include "engram/nn/hyper_connection.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engram/util/parallel.h"
#include "nn/grad_check.h"

namespace engram::nn {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// The spec's Sinkhorn written out plainly: a (n, n) row-major logits.
std::vector<double> reference_sinkhorn(const std::vector<double>& a, int64_t n) {
  std::vector<double> m(sz(n * n));
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(a[sz(i * n + j)]);
    for (int64_t j = 0; j < n; ++j) m[sz(i * n + j)] = std::exp(a[sz(i * n + j)]) / sum + 1e-6;
  }
  auto normalise_columns = [&] {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += m[sz(i * n + j)];
      for (int64_t i = 0; i < n; ++i) m[sz(i * n + j)] /= sum + 1e-6;
    }
  };
  auto normalise_rows = [&] {
    for (int64_t i = 0; i < n; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += m[sz(i * n + j)];
      for (int64_t j = 0; j < n; ++j) m[sz(i * n + j)] /= sum + 1e-6;
    }
  };
  normalise_columns();
  for (int it = 0; it < 19; ++it) {
    normalise_rows();
    normalise_columns();
  }
  return m;
}

struct Coefficients {
  std::vector<double> pre, post, comb;
};

// The spec's coefficient function for one token at a time, plain loops.
Coefficients reference_coefficients(const std::vector<double>& x, const std::vector<double>& phi,
                                    const std::vector<double>& b, const std::vector<double>& alpha,
                                    int64_t tokens, int64_t n, int64_t c) {
  const int64_t k = hc_coefficient_count(n), d = n * c;
  Coefficients out{std::vector<double>(sz(tokens * n)), std::vector<double>(sz(tokens * n)),
                   std::vector<double>(sz(tokens * n * n))};
  for (int64_t t = 0; t < tokens; ++t) {
    const double* v = x.data() + t * d;
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += v[i] * v[i];
    const double r = 1 / std::sqrt(ss / static_cast<double>(d) + 1e-6);
    std::vector<double> a(sz(k));
    for (int64_t j = 0; j < k; ++j) {
      double p = 0;
      for (int64_t i = 0; i < d; ++i) p += phi[sz(j * d + i)] * v[i];
      const double slot_alpha = j < n ? alpha[0] : (j < 2 * n ? alpha[1] : alpha[2]);
      a[sz(j)] = r * p * slot_alpha + b[sz(j)];
    }
    for (int64_t i = 0; i < n; ++i) {
      out.pre[sz(t * n + i)] = 1 / (1 + std::exp(-a[sz(i)])) + 1e-6;
      out.post[sz(t * n + i)] = 2 / (1 + std::exp(-a[sz(n + i)]));
    }
    const std::vector<double> comb =
        reference_sinkhorn(std::vector<double>(a.begin() + 2 * n, a.end()), n);
    std::copy(comb.begin(), comb.end(), out.comb.begin() + t * n * n);
  }
  return out;
}

// Random parameters with α and biases large enough that every path carries gradient.
struct Params {
  std::vector<double> x, phi, b, alpha;
};

Params random_params(int64_t tokens, int64_t n, int64_t c, uint64_t seed) {
  const int64_t k = hc_coefficient_count(n);
  return {test::random_vector(sz(tokens * n * c), seed),
          test::random_vector(sz(k * n * c), seed + 1, 0.3),
          test::random_vector(sz(k), seed + 2, 0.5), test::random_vector(3, seed + 3, 0.7)};
}

TEST(HyperConnectionSinkhorn, ColumnsAndRowsSumToOne) {
  for (int64_t n : {1, 2, 3, 4, 8}) {
    for (double scale : {0.1, 1.0, 3.0}) {
      const std::vector<double> logits = test::random_vector(sz(n * n), 100 + n, scale);
      std::vector<double> comb(sz(n * n));
      hc_sinkhorn_forward(comb.data(), logits.data(), n);
      for (int64_t l = 0; l < n; ++l) {
        double row = 0, col = 0;
        for (int64_t e = 0; e < n; ++e) {
          row += comb[sz(l * n + e)];
          col += comb[sz(e * n + l)];
          EXPECT_GT(comb[sz(l * n + e)], 0.0);
        }
        // The last step normalises columns: each sums to s / (s + 1e-6) with s ≈ 1.
        EXPECT_NEAR(col, 1.0, 2e-6) << "n=" << n << " scale=" << scale;
        // Rows only converge: 20 iterations leave them within 1e-4 for moderate logits, and
        // visibly off (about 5e-3 for n = 2) when the logits spread widely.
        EXPECT_NEAR(row, 1.0, scale <= 1.0 ? 1e-4 : 1e-2) << "n=" << n << " scale=" << scale;
      }
      const std::vector<double> ref = reference_sinkhorn(logits, n);
      for (size_t i = 0; i < comb.size(); ++i) EXPECT_NEAR(comb[i], ref[i], 1e-15);
    }
  }
}

TEST(HyperConnectionSinkhorn, GradientsMatchFiniteDifferences) {
  for (int64_t n : {1, 2, 4}) {
    std::vector<double> logits = test::random_vector(sz(n * n), 200 + n);
    const std::vector<double> r = test::random_vector(sz(n * n), 300 + n);
    auto loss = [&] {
      std::vector<double> comb(sz(n * n));
      hc_sinkhorn_forward(comb.data(), logits.data(), n);
      return test::dot(comb, r);
    };
    std::vector<double> dlogits(sz(n * n), 0.0);
    hc_sinkhorn_backward(dlogits.data(), r.data(), logits.data(), n);
    test::check_gradient("sinkhorn dlogits (n=" + std::to_string(n) + ")", logits, dlogits, loss);
  }
}

TEST(HyperConnectionCoefficients, ForwardMatchesReference) {
  const int64_t tokens = 5, c = 6;
  for (int64_t n : {1, 2, 4}) {
    const Params p = random_params(tokens, n, c, 10 + n);
    const Coefficients ref = reference_coefficients(p.x, p.phi, p.b, p.alpha, tokens, n, c);
    std::vector<double> pre(sz(tokens * n)), post(sz(tokens * n)), comb(sz(tokens * n * n));
    HcCoefficientsSaved<double> saved;
    hc_coefficients_forward(pre.data(), post.data(), comb.data(), saved, p.x.data(), p.phi.data(),
                            p.b.data(), p.alpha.data(), tokens, n, c);
    for (size_t i = 0; i < pre.size(); ++i) EXPECT_NEAR(pre[i], ref.pre[i], 1e-13);
    for (size_t i = 0; i < post.size(); ++i) EXPECT_NEAR(post[i], ref.post[i], 1e-13);
    for (size_t i = 0; i < comb.size(); ++i) EXPECT_NEAR(comb[i], ref.comb[i], 1e-13);

    // float follows the same definition to single precision.
    auto to_float = [](const std::vector<double>& v) {
      return std::vector<float>(v.begin(), v.end());
    };
    const std::vector<float> xf = to_float(p.x), phif = to_float(p.phi), bf = to_float(p.b),
                             af = to_float(p.alpha);
    std::vector<float> pref(pre.size()), postf(post.size()), combf(comb.size());
    HcCoefficientsSaved<float> savedf;
    hc_coefficients_forward(pref.data(), postf.data(), combf.data(), savedf, xf.data(), phif.data(),
                            bf.data(), af.data(), tokens, n, c);
    for (size_t i = 0; i < pre.size(); ++i) EXPECT_NEAR(pref[i], ref.pre[i], 1e-5);
    for (size_t i = 0; i < post.size(); ++i) EXPECT_NEAR(postf[i], ref.post[i], 1e-5);
    for (size_t i = 0; i < comb.size(); ++i) EXPECT_NEAR(combf[i], ref.comb[i], 1e-5);
  }
}

TEST(HyperConnectionCoefficients, GradientsMatchFiniteDifferences) {
  const int64_t tokens = 3, c = 4;
  for (int64_t n : {1, 2, 4}) {
    Params p = random_params(tokens, n, c, 20 + n);
    const std::vector<double> r_pre = test::random_vector(sz(tokens * n), 30 + n);
    const std::vector<double> r_post = test::random_vector(sz(tokens * n), 40 + n);
    const std::vector<double> r_comb = test::random_vector(sz(tokens * n * n), 50 + n);
    auto loss = [&] {
      std::vector<double> pre(r_pre.size()), post(r_post.size()), comb(r_comb.size());
      HcCoefficientsSaved<double> saved;
      hc_coefficients_forward(pre.data(), post.data(), comb.data(), saved, p.x.data(), p.phi.data(),
                              p.b.data(), p.alpha.data(), tokens, n, c);
      return test::dot(pre, r_pre) + test::dot(post, r_post) + test::dot(comb, r_comb);
    };
    std::vector<double> pre(r_pre.size()), post(r_post.size()), comb(r_comb.size());
    HcCoefficientsSaved<double> saved;
    hc_coefficients_forward(pre.data(), post.data(), comb.data(), saved, p.x.data(), p.phi.data(),
                            p.b.data(), p.alpha.data(), tokens, n, c);
    std::vector<double> dx(p.x.size(), 0.0), dphi(p.phi.size(), 0.0), db(p.b.size(), 0.0),
        dalpha(3, 0.0);
    hc_coefficients_backward(dx.data(), dphi.data(), db.data(), dalpha.data(), r_pre.data(),
                             r_post.data(), r_comb.data(), p.x.data(), saved, p.phi.data(),
                             p.b.data(), p.alpha.data(), tokens, n, c);
    const std::string tag = " (n=" + std::to_string(n) + ")";
    test::check_gradient("coefficients dx" + tag, p.x, dx, loss, 48);
    test::check_gradient("coefficients dphi" + tag, p.phi, dphi, loss, 48);
    test::check_gradient("coefficients db" + tag, p.b, db, loss, 48);
    test::check_gradient("coefficients dalpha" + tag, p.alpha, dalpha, loss);
  }
}

TEST(HyperConnectionReadout, ForwardAndGradients) {
  const int64_t tokens = 3, c = 5;
  for (int64_t n : {1, 2, 4}) {
    std::vector<double> x = test::random_vector(sz(tokens * n * c), 60 + n);
    std::vector<double> pre = test::random_vector(sz(tokens * n), 70 + n);
    const std::vector<double> r = test::random_vector(sz(tokens * c), 80 + n);
    std::vector<double> y(sz(tokens * c));
    hc_readout_forward(y.data(), x.data(), pre.data(), tokens, n, c);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t e = 0; e < c; ++e) {
        double want = 0;
        for (int64_t i = 0; i < n; ++i) want += pre[sz(t * n + i)] * x[sz((t * n + i) * c + e)];
        EXPECT_NEAR(y[sz(t * c + e)], want, 1e-14);
      }
    }
    auto loss = [&] {
      std::vector<double> yy(sz(tokens * c));
      hc_readout_forward(yy.data(), x.data(), pre.data(), tokens, n, c);
      return test::dot(yy, r);
    };
    std::vector<double> dx(x.size(), 0.0), dpre(pre.size(), 0.0);
    hc_readout_backward(dx.data(), dpre.data(), r.data(), x.data(), pre.data(), tokens, n, c);
    const std::string tag = " (n=" + std::to_string(n) + ")";
    test::check_gradient("readout dx" + tag, x, dx, loss, 48);
    test::check_gradient("readout dpre" + tag, pre, dpre, loss, 48);
  }
}

TEST(HyperConnectionWriteBack, ForwardAndGradients) {
  const int64_t tokens = 3, c = 5;
  for (int64_t n : {1, 2, 4}) {
    std::vector<double> f = test::random_vector(sz(tokens * c), 90 + n);
    std::vector<double> x = test::random_vector(sz(tokens * n * c), 91 + n);
    std::vector<double> post = test::random_vector(sz(tokens * n), 92 + n);
    std::vector<double> comb = test::random_vector(sz(tokens * n * n), 93 + n);
    const std::vector<double> r = test::random_vector(sz(tokens * n * c), 94 + n);
    std::vector<double> out(sz(tokens * n * c));
    hc_write_back_forward(out.data(), f.data(), x.data(), post.data(), comb.data(), tokens, n, c);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t k = 0; k < n; ++k) {
        for (int64_t e = 0; e < c; ++e) {
          double want = post[sz(t * n + k)] * f[sz(t * c + e)];
          for (int64_t j = 0; j < n; ++j) {
            want += comb[sz(t * n * n + j * n + k)] * x[sz((t * n + j) * c + e)];
          }
          EXPECT_NEAR(out[sz((t * n + k) * c + e)], want, 1e-14);
        }
      }
    }
    auto loss = [&] {
      std::vector<double> o(sz(tokens * n * c));
      hc_write_back_forward(o.data(), f.data(), x.data(), post.data(), comb.data(), tokens, n, c);
      return test::dot(o, r);
    };
    std::vector<double> df(f.size(), 0.0), dx(x.size(), 0.0), dpost(post.size(), 0.0),
        dcomb(comb.size(), 0.0);
    hc_write_back_backward(df.data(), dx.data(), dpost.data(), dcomb.data(), r.data(), f.data(),
                           x.data(), post.data(), comb.data(), tokens, n, c);
    const std::string tag = " (n=" + std::to_string(n) + ")";
    test::check_gradient("write-back df" + tag, f, df, loss, 48);
    test::check_gradient("write-back dx" + tag, x, dx, loss, 48);
    test::check_gradient("write-back dpost" + tag, post, dpost, loss, 48);
    test::check_gradient("write-back dcomb" + tag, comb, dcomb, loss, 48);
  }
}

TEST(HyperConnectionHeadReadout, ForwardAndGradients) {
  const int64_t tokens = 3, c = 4;
  for (int64_t n : {1, 2, 4}) {
    std::vector<double> x = test::random_vector(sz(tokens * n * c), 110 + n);
    std::vector<double> phi = test::random_vector(sz(n * n * c), 111 + n, 0.3);
    std::vector<double> b = test::random_vector(sz(n), 112 + n, 0.5);
    std::vector<double> alpha = {0.8};
    const std::vector<double> r = test::random_vector(sz(tokens * c), 113 + n);
    std::vector<double> y(sz(tokens * c)), pre(sz(tokens * n));
    HcCoefficientsSaved<double> saved;
    hc_head_readout_forward(y.data(), pre.data(), saved, x.data(), phi.data(), b.data(),
                            alpha.data(), tokens, n, c);
    // Reference: the pre entries of the sublayer coefficients with α_pre = α_h.
    for (int64_t t = 0; t < tokens; ++t) {
      const double* v = x.data() + t * n * c;
      double ss = 0;
      for (int64_t i = 0; i < n * c; ++i) ss += v[i] * v[i];
      const double rs = 1 / std::sqrt(ss / static_cast<double>(n * c) + 1e-6);
      for (int64_t i = 0; i < n; ++i) {
        double p = 0;
        for (int64_t e = 0; e < n * c; ++e) p += phi[sz(i * n * c + e)] * v[e];
        EXPECT_NEAR(pre[sz(t * n + i)], 1 / (1 + std::exp(-(rs * p * alpha[0] + b[sz(i)]))) + 1e-6,
                    1e-14);
      }
    }
    auto loss = [&] {
      std::vector<double> yy(sz(tokens * c)), pp(sz(tokens * n));
      HcCoefficientsSaved<double> s;
      hc_head_readout_forward(yy.data(), pp.data(), s, x.data(), phi.data(), b.data(), alpha.data(),
                              tokens, n, c);
      return test::dot(yy, r);
    };
    std::vector<double> dx(x.size(), 0.0), dphi(phi.size(), 0.0), db(b.size(), 0.0), dalpha(1, 0.0);
    hc_head_readout_backward(dx.data(), dphi.data(), db.data(), dalpha.data(), r.data(), x.data(),
                             pre.data(), saved, phi.data(), b.data(), alpha.data(), tokens, n, c);
    const std::string tag = " (n=" + std::to_string(n) + ")";
    test::check_gradient("head dx" + tag, x, dx, loss, 48);
    test::check_gradient("head dphi" + tag, phi, dphi, loss, 48);
    test::check_gradient("head db" + tag, b, db, loss);
    test::check_gradient("head dalpha" + tag, alpha, dalpha, loss);
  }
}

// The whole sublayer wrapper with F a fixed linear map f = y W (W is (C, C)):
// coefficients → read-out → F → write-back, gradients for X, Φ, b, α.
TEST(HyperConnectionSublayer, CompositionGradientsMatchFiniteDifferences) {
  const int64_t tokens = 3, c = 4;
  for (int64_t n : {1, 2, 4}) {
    Params p = random_params(tokens, n, c, 120 + n);
    const std::vector<double> w = test::random_vector(sz(c * c), 130 + n, 0.5);
    const std::vector<double> r = test::random_vector(sz(tokens * n * c), 140 + n);
    struct Forward {
      std::vector<double> pre, post, comb, y, f, out;
      HcCoefficientsSaved<double> saved;
    };
    auto forward = [&] {
      Forward s{std::vector<double>(sz(tokens * n)),
                std::vector<double>(sz(tokens * n)),
                std::vector<double>(sz(tokens * n * n)),
                std::vector<double>(sz(tokens * c)),
                std::vector<double>(sz(tokens * c), 0.0),
                std::vector<double>(sz(tokens * n * c)),
                {}};
      hc_coefficients_forward(s.pre.data(), s.post.data(), s.comb.data(), s.saved, p.x.data(),
                              p.phi.data(), p.b.data(), p.alpha.data(), tokens, n, c);
      hc_readout_forward(s.y.data(), p.x.data(), s.pre.data(), tokens, n, c);
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t o = 0; o < c; ++o) {
          for (int64_t i = 0; i < c; ++i)
            s.f[sz(t * c + o)] += s.y[sz(t * c + i)] * w[sz(i * c + o)];
        }
      }
      hc_write_back_forward(s.out.data(), s.f.data(), p.x.data(), s.post.data(), s.comb.data(),
                            tokens, n, c);
      return s;
    };
    auto loss = [&] { return test::dot(forward().out, r); };
    Forward s = forward();
    std::vector<double> dx(p.x.size(), 0.0), dphi(p.phi.size(), 0.0), db(p.b.size(), 0.0),
        dalpha(3, 0.0);
    std::vector<double> df(s.f.size(), 0.0), dpost(s.post.size(), 0.0), dcomb(s.comb.size(), 0.0),
        dy(s.y.size(), 0.0), dpre(s.pre.size(), 0.0);
    hc_write_back_backward(df.data(), dx.data(), dpost.data(), dcomb.data(), r.data(), s.f.data(),
                           p.x.data(), s.post.data(), s.comb.data(), tokens, n, c);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t o = 0; o < c; ++o) {
        for (int64_t i = 0; i < c; ++i) dy[sz(t * c + i)] += df[sz(t * c + o)] * w[sz(i * c + o)];
      }
    }
    hc_readout_backward(dx.data(), dpre.data(), dy.data(), p.x.data(), s.pre.data(), tokens, n, c);
    hc_coefficients_backward(dx.data(), dphi.data(), db.data(), dalpha.data(), dpre.data(),
                             dpost.data(), dcomb.data(), p.x.data(), s.saved, p.phi.data(),
                             p.b.data(), p.alpha.data(), tokens, n, c);
    const std::string tag = " (n=" + std::to_string(n) + ")";
    test::check_gradient("sublayer dx" + tag, p.x, dx, loss, 48);
    test::check_gradient("sublayer dphi" + tag, p.phi, dphi, loss, 48);
    test::check_gradient("sublayer db" + tag, p.b, db, loss, 48);
    test::check_gradient("sublayer dalpha" + tag, p.alpha, dalpha, loss);
  }
}

TEST(HyperConnectionCoefficients, SingleStreamReducesToScaledResidual) {
  const int64_t tokens = 4, c = 3, n = 1;
  const Params p = random_params(tokens, n, c, 150);
  std::vector<double> pre(sz(tokens)), post(sz(tokens)), comb(sz(tokens)), y(sz(tokens * c));
  HcCoefficientsSaved<double> saved;
  hc_coefficients_forward(pre.data(), post.data(), comb.data(), saved, p.x.data(), p.phi.data(),
                          p.b.data(), p.alpha.data(), tokens, n, c);
  hc_readout_forward(y.data(), p.x.data(), pre.data(), tokens, n, c);
  for (int64_t t = 0; t < tokens; ++t) {
    EXPECT_NEAR(comb[sz(t)], 1.0, 2e-6);
    for (int64_t e = 0; e < c; ++e) {
      EXPECT_DOUBLE_EQ(y[sz(t * c + e)], pre[sz(t)] * p.x[sz(t * c + e)]);
    }
  }
}

TEST(HyperConnectionCoefficients, BackwardAccumulatesAndIgnoresThreadCount) {
  const int64_t tokens = 300, c = 8, n = 4;
  const Params p = random_params(tokens, n, c, 160);
  const std::vector<double> g_pre = test::random_vector(sz(tokens * n), 161);
  const std::vector<double> g_post = test::random_vector(sz(tokens * n), 162);
  const std::vector<double> g_comb = test::random_vector(sz(tokens * n * n), 163);
  std::vector<double> pre(g_pre.size()), post(g_post.size()), comb(g_comb.size());
  HcCoefficientsSaved<double> saved;
  hc_coefficients_forward(pre.data(), post.data(), comb.data(), saved, p.x.data(), p.phi.data(),
                          p.b.data(), p.alpha.data(), tokens, n, c);
  auto backward = [&](double start) {
    std::vector<double> out(p.x.size() + p.phi.size() + p.b.size() + 3, start);
    double* dx = out.data();
    double* dphi = dx + p.x.size();
    double* db = dphi + p.phi.size();
    hc_coefficients_backward(dx, dphi, db, db + p.b.size(), g_pre.data(), g_post.data(),
                             g_comb.data(), p.x.data(), saved, p.phi.data(), p.b.data(),
                             p.alpha.data(), tokens, n, c);
    return out;
  };
  set_default_threads(1);
  const std::vector<double> one_thread = backward(0.0);
  set_default_threads(4);
  const std::vector<double> four_threads = backward(0.0);
  const std::vector<double> shifted = backward(1.0);
  set_default_threads(0);
  for (size_t i = 0; i < one_thread.size(); ++i) {
    EXPECT_EQ(one_thread[i], four_threads[i]) << i;
    EXPECT_NEAR(shifted[i], one_thread[i] + 1.0, 1e-12) << i;
  }
}

TEST(HyperConnectionInit, NearIdentityMixingAndFavouredStream) {
  const int64_t n = 4, c = 16, tokens = 2, layer = 6;
  const int64_t k = hc_coefficient_count(n);
  std::vector<float> phi(sz(k * n * c)), b(sz(k)), alpha(3);
  hc_init(phi.data(), b.data(), alpha.data(), n, c, layer, 7);
  for (float a : alpha) EXPECT_FLOAT_EQ(a, 0.01f);
  double sq = 0;
  for (float v : phi) sq += static_cast<double>(v) * v;
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(phi.size())), 0.002, 0.0003);

  std::vector<float> x(sz(tokens * n * c));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<float>(std::sin(0.7 * static_cast<double>(i)));
  std::vector<float> pre(sz(tokens * n)), post(sz(tokens * n)), comb(sz(tokens * n * n));
  HcCoefficientsSaved<float> saved;
  hc_coefficients_forward(pre.data(), post.data(), comb.data(), saved, x.data(), phi.data(),
                          b.data(), alpha.data(), tokens, n, c);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(post[sz(t * n + i)], 1.0, 1e-3);  // b_post = 0
      EXPECT_EQ(pre[sz(t * n + i)] > 0.5f, i == layer % n);
      for (int64_t j = 0; j < n; ++j) {
        const float m = comb[sz(t * n * n + i * n + j)];
        if (i == j) {
          EXPECT_GT(m, 0.9f);
        } else {
          EXPECT_LT(m, 0.05f);
        }
      }
    }
  }

  std::vector<float> phi_h(sz(n * n * c)), b_h(sz(n)), alpha_h(1);
  hc_head_init(phi_h.data(), b_h.data(), alpha_h.data(), n, c, layer, 8);
  EXPECT_FLOAT_EQ(alpha_h[0], 0.01f);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(b_h[sz(i)] > 0, i == layer % n);
}

}  // namespace
}  // namespace engram::nn
