#include "engram/nn/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "nn/grad_check.h"

namespace engram::nn {
namespace {

struct Problem {
  MoeShape s;
  std::vector<double> u, bias, wg, w1, w3, w2, sw1, sw3, sw2;

  Problem(MoeShape shape, uint64_t seed, std::vector<double> selection_bias) : s(shape) {
    const size_t n = static_cast<size_t>(s.tokens), c = static_cast<size_t>(s.dim);
    const size_t e = static_cast<size_t>(s.experts), h = static_cast<size_t>(s.hidden);
    const size_t hs = static_cast<size_t>(s.shared_hidden());
    u = test::random_vector(n * c, seed);
    bias = selection_bias.empty() ? std::vector<double>(e, 0.0) : selection_bias;
    wg = test::random_vector(e * c, seed + 1, 0.8);
    w1 = test::random_vector(e * h * c, seed + 2, 0.5);
    w3 = test::random_vector(e * h * c, seed + 3, 0.5);
    w2 = test::random_vector(e * c * h, seed + 4, 0.5);
    sw1 = test::random_vector(hs * c, seed + 5, 0.5);
    sw3 = test::random_vector(hs * c, seed + 6, 0.5);
    sw2 = test::random_vector(c * hs, seed + 7, 0.5);
  }
  MoeWeights<double> weights() const {
    return {wg.data(), w1.data(), w3.data(), w2.data(), sw1.data(), sw3.data(), sw2.data()};
  }
  std::vector<double> forward(MoeSaved<double>& saved) const {
    std::vector<double> y(u.size(), std::nan(""));
    moe_forward(y.data(), saved, u.data(), bias.data(), weights(), s);
    return y;
  }
};

// One SwiGLU on one token: W2 (SiLU(W1 x) ⊙ W3 x), plain loops.
void swiglu_token(double* y, const double* x, const double* w1, const double* w3, const double* w2,
                  int64_t c, int64_t h, double weight) {
  for (int64_t j = 0; j < h; ++j) {
    double a = 0, b = 0;
    for (int64_t i = 0; i < c; ++i) {
      a += w1[j * c + i] * x[i];
      b += w3[j * c + i] * x[i];
    }
    const double g = a / (1 + std::exp(-a)) * b;
    for (int64_t i = 0; i < c; ++i) y[i] += weight * w2[i * h + j] * g;
  }
}

struct Reference {
  std::vector<double> y;
  std::vector<std::vector<int>> selected;  // per token, sorted ascending
  std::vector<int64_t> counts;
  double min_margin = std::numeric_limits<double>::infinity();  // top-k vs the rest
};

// The spec, token by token.
Reference reference(const Problem& p, bool use_bias = true) {
  const MoeShape& s = p.s;
  const int64_t c = s.dim, e_count = s.experts, h = s.hidden;
  Reference r;
  r.y.assign(p.u.size(), 0.0);
  r.counts.assign(static_cast<size_t>(e_count), 0);
  for (int64_t t = 0; t < s.tokens; ++t) {
    const double* ut = p.u.data() + t * c;
    std::vector<double> score(static_cast<size_t>(e_count)), key(score.size());
    for (int64_t e = 0; e < e_count; ++e) {
      double a = 0;
      for (int64_t i = 0; i < c; ++i) a += p.wg[static_cast<size_t>(e * c + i)] * ut[i];
      score[static_cast<size_t>(e)] = 1 / (1 + std::exp(-a));
      key[static_cast<size_t>(e)] = score[static_cast<size_t>(e)] + (use_bias ? p.bias[e] : 0.0);
    }
    std::vector<int> chosen;
    std::vector<bool> taken(static_cast<size_t>(e_count), false);
    for (int64_t j = 0; j < s.top_k; ++j) {
      int best = -1;
      for (int e = 0; e < e_count; ++e)
        if (!taken[e] && (best < 0 || key[e] > key[best])) best = e;
      taken[best] = true;
      chosen.push_back(best);
    }
    double lowest_in = std::numeric_limits<double>::infinity();
    double highest_out = -std::numeric_limits<double>::infinity();
    for (int e = 0; e < e_count; ++e) {
      if (taken[e]) lowest_in = std::min(lowest_in, key[e]);
      if (!taken[e]) highest_out = std::max(highest_out, key[e]);
    }
    r.min_margin = std::min(r.min_margin, lowest_in - highest_out);
    double total = 0;
    for (const int e : chosen) total += score[e];
    double* yt = r.y.data() + t * c;
    for (const int e : chosen) {
      ++r.counts[e];
      swiglu_token(yt, ut, p.w1.data() + e * h * c, p.w3.data() + e * h * c,
                   p.w2.data() + e * c * h, c, h, s.route_scale * score[e] / total);
    }
    if (s.n_shared > 0)
      swiglu_token(yt, ut, p.sw1.data(), p.sw3.data(), p.sw2.data(), c, s.shared_hidden(), 1.0);
    std::sort(chosen.begin(), chosen.end());
    r.selected.push_back(chosen);
  }
  return r;
}

std::vector<std::vector<int>> selections(const MoeSaved<double>& saved, const MoeShape& s) {
  std::vector<std::vector<int>> out;
  for (int64_t t = 0; t < s.tokens; ++t) {
    std::vector<int> chosen(saved.selected.begin() + t * s.top_k,
                            saved.selected.begin() + (t + 1) * s.top_k);
    std::sort(chosen.begin(), chosen.end());
    out.push_back(chosen);
  }
  return out;
}

MoeShape shape(int64_t n_shared, int64_t top_k = 2) {
  return MoeShape{/*tokens=*/9,       /*dim=*/6, /*experts=*/4, top_k,
                  /*hidden=*/5,       n_shared,
                  /*route_scale=*/2.5};
}

TEST(Moe, ForwardMatchesPerTokenReference) {
  for (const int64_t n_shared : {0, 2}) {
    const Problem p(shape(n_shared), 100, {0.3, -0.4, 0.5, 0.0});
    const Reference want = reference(p);
    // The bias must matter: without it some token picks different experts.
    EXPECT_NE(reference(p, false).selected, want.selected);
    ASSERT_GT(want.min_margin, 1e-3);

    MoeSaved<double> saved;
    const auto y = p.forward(saved);
    EXPECT_EQ(selections(saved, p.s), want.selected);
    EXPECT_EQ(saved.counts, want.counts);
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(y[i], want.y[i], 1e-12 * (1 + std::abs(want.y[i]))) << "n_shared " << n_shared;

    const auto to_float = [](const std::vector<double>& v) {
      return std::vector<float>(v.begin(), v.end());
    };
    const auto u = to_float(p.u), bias = to_float(p.bias), wg = to_float(p.wg);
    const auto w1 = to_float(p.w1), w3 = to_float(p.w3), w2 = to_float(p.w2);
    const auto sw1 = to_float(p.sw1), sw3 = to_float(p.sw3), sw2 = to_float(p.sw2);
    std::vector<float> yf(y.size());
    MoeSaved<float> saved_f;
    moe_forward(yf.data(), saved_f, u.data(), bias.data(),
                MoeWeights<float>{wg.data(), w1.data(), w3.data(), w2.data(), sw1.data(),
                                  sw3.data(), sw2.data()},
                p.s);
    EXPECT_EQ(saved_f.counts, want.counts);
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(yf[i], want.y[i], 1e-4 * (1 + std::abs(want.y[i])));
  }
}

TEST(Moe, LoadCountsAndPermutation) {
  const Problem p(MoeShape{40, 4, 4, 2, 3, 0, 1.0}, 7, {0.0, 0.2, -0.1, 0.05});
  const Reference want = reference(p);
  MoeSaved<double> saved;
  p.forward(saved);
  EXPECT_EQ(saved.counts, want.counts);
  int64_t total = 0;
  for (const int64_t count : saved.counts) total += count;
  EXPECT_EQ(total, p.s.tokens * p.s.top_k);
  // Each expert's block holds its tokens in ascending order.
  for (int64_t e = 0; e < p.s.experts; ++e) {
    std::vector<int64_t> tokens;
    for (size_t q = 0; q < saved.row_of.size(); ++q) {
      if (saved.selected[q] != e) continue;
      const int64_t row = saved.row_of[q];
      EXPECT_GE(row, saved.offsets[e]);
      EXPECT_LT(row, saved.offsets[e + 1]);
      EXPECT_EQ(row - saved.offsets[e], static_cast<int64_t>(tokens.size()));
      tokens.push_back(static_cast<int64_t>(q) / p.s.top_k);
    }
    EXPECT_TRUE(std::is_sorted(tokens.begin(), tokens.end()));
  }
}

TEST(Moe, TiesGoToTheLowerExpertIndex) {
  // A zero router gives every expert the score 1/2.
  Problem p(MoeShape{3, 4, 4, 2, 3, 0, 1.0}, 3, {});
  std::fill(p.wg.begin(), p.wg.end(), 0.0);
  MoeSaved<double> saved;
  p.forward(saved);
  for (int64_t t = 0; t < p.s.tokens; ++t) {
    EXPECT_EQ(saved.selected[t * 2], 0);
    EXPECT_EQ(saved.selected[t * 2 + 1], 1);
  }
  EXPECT_EQ(saved.counts, (std::vector<int64_t>{3, 3, 0, 0}));
}

// Checks every gradient of dot(y, r) against finite differences.
void check_gradients(Problem& p, const std::string& tag) {
  ASSERT_GT(reference(p).min_margin, 1e-3) << tag << ": selection could flip under perturbation";
  const auto r = test::random_vector(p.u.size(), 77);
  auto loss = [&] {
    MoeSaved<double> sv;
    return test::dot(p.forward(sv), r);
  };
  MoeSaved<double> saved;
  p.forward(saved);
  std::vector<double> du(p.u.size(), 0.0), dwg(p.wg.size(), 0.0), dw1(p.w1.size(), 0.0),
      dw3(p.w3.size(), 0.0), dw2(p.w2.size(), 0.0), dsw1(p.sw1.size(), 0.0),
      dsw3(p.sw3.size(), 0.0), dsw2(p.sw2.size(), 0.0);
  moe_backward(du.data(),
               MoeGrads<double>{dwg.data(), dw1.data(), dw3.data(), dw2.data(), dsw1.data(),
                                dsw3.data(), dsw2.data()},
               r.data(), p.u.data(), saved, p.weights(), p.s);
  test::check_gradient("moe du" + tag, p.u, du, loss, 60);
  test::check_gradient("moe dwg" + tag, p.wg, dwg, loss, 60);
  test::check_gradient("moe dw1" + tag, p.w1, dw1, loss, 60);
  test::check_gradient("moe dw3" + tag, p.w3, dw3, loss, 60);
  test::check_gradient("moe dw2" + tag, p.w2, dw2, loss, 60);
  if (p.s.n_shared > 0) {
    test::check_gradient("moe dshared_w1" + tag, p.sw1, dsw1, loss, 40);
    test::check_gradient("moe dshared_w3" + tag, p.sw3, dsw3, loss, 40);
    test::check_gradient("moe dshared_w2" + tag, p.sw2, dsw2, loss, 40);
  }
}

TEST(Moe, GradientsMatchFiniteDifferences) {
  for (const int64_t n_shared : {0, 2}) {
    Problem p(shape(n_shared), 200, {0.3, -0.4, 0.5, 0.0});
    check_gradients(p, " n_shared " + std::to_string(n_shared));
  }
}

TEST(Moe, AllExpertsSelected) {
  Problem p(shape(1, /*top_k=*/4), 300, {0.3, -0.4, 0.5, 0.0});
  const Reference want = reference(p);
  MoeSaved<double> saved;
  const auto y = p.forward(saved);
  EXPECT_EQ(saved.counts, (std::vector<int64_t>(4, p.s.tokens)));
  for (size_t i = 0; i < y.size(); ++i)
    EXPECT_NEAR(y[i], want.y[i], 1e-12 * (1 + std::abs(want.y[i])));
  check_gradients(p, " k = E");
}

TEST(Moe, BackwardAccumulates) {
  const Problem p(shape(1), 400, {});
  MoeSaved<double> saved;
  p.forward(saved);
  const auto dy = test::random_vector(p.u.size(), 5);
  auto run = [&](double init) {
    std::vector<std::vector<double>> g = {
        std::vector<double>(p.u.size(), init),   std::vector<double>(p.wg.size(), init),
        std::vector<double>(p.w1.size(), init),  std::vector<double>(p.w3.size(), init),
        std::vector<double>(p.w2.size(), init),  std::vector<double>(p.sw1.size(), init),
        std::vector<double>(p.sw3.size(), init), std::vector<double>(p.sw2.size(), init)};
    moe_backward(g[0].data(),
                 MoeGrads<double>{g[1].data(), g[2].data(), g[3].data(), g[4].data(), g[5].data(),
                                  g[6].data(), g[7].data()},
                 dy.data(), p.u.data(), saved, p.weights(), p.s);
    return g;
  };
  const auto zero = run(0.0), one = run(1.0);
  for (size_t a = 0; a < zero.size(); ++a)
    for (size_t i = 0; i < zero[a].size(); ++i) EXPECT_NEAR(one[a][i], zero[a][i] + 1.0, 1e-12);
}

TEST(Moe, ResultsDoNotDependOnThreadCount) {
  const Problem p(MoeShape{64, 8, 4, 2, 6, 1, 1.5}, 500, {});
  const auto dy = test::random_vector(p.u.size(), 6);
  auto run = [&](int threads) {
    set_default_threads(threads);
    MoeSaved<double> saved;
    std::vector<double> out = p.forward(saved);
    std::vector<double> du(p.u.size(), 0.0), dwg(p.wg.size(), 0.0), dw1(p.w1.size(), 0.0),
        dw3(p.w3.size(), 0.0), dw2(p.w2.size(), 0.0), dsw1(p.sw1.size(), 0.0),
        dsw3(p.sw3.size(), 0.0), dsw2(p.sw2.size(), 0.0);
    moe_backward(du.data(),
                 MoeGrads<double>{dwg.data(), dw1.data(), dw3.data(), dw2.data(), dsw1.data(),
                                  dsw3.data(), dsw2.data()},
                 dy.data(), p.u.data(), saved, p.weights(), p.s);
    for (const auto* v : {&du, &dwg, &dw1, &dw3, &dw2, &dsw1, &dsw3, &dsw2})
      out.insert(out.end(), v->begin(), v->end());
    return out;
  };
  const auto one = run(1), four = run(4);
  set_default_threads(0);
  EXPECT_EQ(one, four);
}

TEST(Moe, BiasUpdateFollowsTheSignRule) {
  // mean(c) = 5: under-loaded experts go up, over-loaded ones down, exact ones stay.
  const std::vector<int64_t> counts = {2, 5, 9, 4};
  std::vector<double> bias = {0.1, 0.2, 0.3, -0.4};
  aux_free_bias_update(bias.data(), counts.data(), 4, 0.01);
  EXPECT_DOUBLE_EQ(bias[0], 0.11);
  EXPECT_DOUBLE_EQ(bias[1], 0.2);
  EXPECT_DOUBLE_EQ(bias[2], 0.29);
  EXPECT_DOUBLE_EQ(bias[3], -0.39);
  std::vector<float> bias_f = {0, 0, 0, 0};
  aux_free_bias_update(bias_f.data(), counts.data(), 4, 0.5);
  EXPECT_EQ(bias_f, (std::vector<float>{0.5f, 0.0f, -0.5f, 0.5f}));
}

// L = alpha / B Σ_b Σ_i f_i P_i, written out.
double balance_loss_reference(const Problem& p, int64_t seq_len, double alpha) {
  const Reference r = reference(p);
  const int64_t e_count = p.s.experts, c = p.s.dim;
  const int64_t sequences = p.s.tokens / seq_len;
  double loss = 0;
  for (int64_t b = 0; b < sequences; ++b) {
    for (int64_t i = 0; i < e_count; ++i) {
      double f = 0, prob = 0;
      for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t) {
        const auto& chosen = r.selected[static_cast<size_t>(t)];
        f += std::count(chosen.begin(), chosen.end(), i) > 0 ? 1.0 : 0.0;
        double z = 0, si = 0;
        for (int64_t e = 0; e < e_count; ++e) {
          double a = 0;
          for (int64_t k = 0; k < c; ++k) a += p.wg[e * c + k] * p.u[t * c + k];
          const double s = 1 / (1 + std::exp(-a));
          z += s;
          if (e == i) si = s;
        }
        prob += si / z;
      }
      f *= static_cast<double>(e_count) / static_cast<double>(p.s.top_k * seq_len);
      prob /= static_cast<double>(seq_len);
      loss += alpha * f * prob;
    }
  }
  return loss / static_cast<double>(sequences);
}

TEST(Moe, BalanceLossAndGradients) {
  Problem p(MoeShape{12, 5, 4, 2, 3, 0, 1.0}, 600, {0.1, 0.0, -0.2, 0.0});
  const int64_t seq_len = 4;
  const double alpha = 0.3;
  ASSERT_GT(reference(p).min_margin, 1e-3);
  MoeSaved<double> saved;
  p.forward(saved);
  EXPECT_NEAR(moe_balance_loss(saved, p.s, seq_len, alpha),
              balance_loss_reference(p, seq_len, alpha), 1e-14);
  auto loss = [&] {
    MoeSaved<double> sv;
    p.forward(sv);
    return moe_balance_loss(sv, p.s, seq_len, alpha);
  };
  std::vector<double> du(p.u.size(), 0.0), dwg(p.wg.size(), 0.0);
  moe_balance_loss_backward(du.data(), dwg.data(), 1.0, p.u.data(), saved, p.wg.data(), p.s,
                            seq_len, alpha);
  test::check_gradient("balance du", p.u, du, loss, 60, 1e-6, 1e-8);
  test::check_gradient("balance dwg", p.wg, dwg, loss, 60, 1e-6, 1e-8);
  EXPECT_THROW(moe_balance_loss(saved, p.s, 5, alpha), ConfigError);
}

TEST(Moe, BadShapesThrowConfigError) {
  EXPECT_THROW(validate(MoeShape{4, 4, 4, 5, 3}), ConfigError);
  EXPECT_THROW(validate(MoeShape{4, 4, 4, 0, 3}), ConfigError);
  EXPECT_THROW(validate(MoeShape{4, 4, 4, -1, 3}), ConfigError);
  EXPECT_THROW(validate(MoeShape{4, 4, 0, 1, 3}), ConfigError);
  EXPECT_THROW(validate(MoeShape{4, 4, 4, 2, 3, -1}), ConfigError);
  EXPECT_THROW(validate(MoeShape{4, 4, 4, 2, 3, 0, 0.0}), ConfigError);
  EXPECT_NO_THROW(validate(MoeShape{4, 4, 4, 4, 3}));
  const Problem p(MoeShape{2, 3, 4, 2, 3}, 1, {});
  MoeShape bad = p.s;
  bad.top_k = 5;
  std::vector<double> y(p.u.size());
  MoeSaved<double> saved;
  EXPECT_THROW(moe_forward(y.data(), saved, p.u.data(), p.bias.data(), p.weights(), bad),
               ConfigError);
}

}  // namespace
}  // namespace engram::nn
