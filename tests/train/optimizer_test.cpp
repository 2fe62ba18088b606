// Optimizers: the schedule's values, AdamW against a plain double reference, SparseRowAdam's
// lazily exact moments, global-norm clipping, state hooks and bad input.
#include "engram/train/optimizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::train {
namespace {

std::vector<float> random_vector(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// torch.optim.AdamW written out in double.
struct ReferenceAdamW {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  std::vector<double> p, m, v;
  int64_t t = 0;

  explicit ReferenceAdamW(const std::vector<float>& init)
      : p(init.begin(), init.end()), m(init.size(), 0.0), v(init.size(), 0.0) {}

  void step(const std::vector<float>& g, double lr, bool decay) {
    ++t;
    const double bc1 = 1 - std::pow(beta1, static_cast<double>(t));
    const double bc2 = 1 - std::pow(beta2, static_cast<double>(t));
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] -= lr * weight_decay * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      p[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
    }
  }
};

// ---- LrSchedule -------------------------------------------------------------------------------

TEST(ScheduleTest, WarmupThenCosineToFloor) {
  LrSchedule s{.base_lr = 2e-3, .warmup_steps = 10, .total_steps = 110, .min_lr_ratio = 0.1};
  s.validate();
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);      // warm-up start
  EXPECT_DOUBLE_EQ(s.lr(5), 1e-3);     // warm-up middle
  EXPECT_DOUBLE_EQ(s.lr(9), 1.8e-3);   // last warm-up step
  EXPECT_DOUBLE_EQ(s.lr(10), 2e-3);    // warm-up end: base
  EXPECT_DOUBLE_EQ(s.lr(60), 1.1e-3);  // cosine middle: (base + floor) / 2
  // A quarter of the way: floor + (base - floor) * (1 + cos(pi/4)) / 2.
  EXPECT_NEAR(s.lr(35), 2e-4 + 1.8e-3 * 0.5 * (1 + std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(s.lr(109), 2e-4 + 1.8e-3 * 0.5 * (1 + std::cos(std::numbers::pi * 0.99)), 1e-15);
  EXPECT_DOUBLE_EQ(s.lr(110), 2e-4);     // cosine end: floor
  EXPECT_DOUBLE_EQ(s.lr(100000), 2e-4);  // constant after
}

TEST(ScheduleTest, NoWarmupStartsAtBase) {
  LrSchedule s{.base_lr = 1.0, .warmup_steps = 0, .total_steps = 4, .min_lr_ratio = 0.0};
  EXPECT_DOUBLE_EQ(s.lr(0), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(2), 0.5);
  EXPECT_DOUBLE_EQ(s.lr(4), 0.0);
}

TEST(ScheduleTest, BadConfigThrows) {
  EXPECT_THROW((LrSchedule{.base_lr = -1}.validate()), ConfigError);
  EXPECT_THROW((LrSchedule{.warmup_steps = 5, .total_steps = 4}.validate()), ConfigError);
  EXPECT_THROW((LrSchedule{.min_lr_ratio = 1.5}.validate()), ConfigError);
  EXPECT_THROW((LrSchedule{.warmup_steps = -1}.validate()), ConfigError);
}

// ---- AdamW ------------------------------------------------------------------------------------

TEST(AdamWTest, OneHandComputedStep) {
  // lr 0.1, wd 0.01, default betas/eps. g = 0.5: m = 0.05, v = 0.00025, m_hat = 0.5,
  // sqrt(v_hat) = 0.5, so the Adam step is 0.1 * 0.5 / (0.5 + 1e-8) ~ 0.1; decay takes
  // 1 -> 0.999 first. g = -2 moves the other way by the same 0.1.
  std::vector<float> p = {1.0f, 1.0f}, g = {0.5f, -2.0f};
  std::vector<float> q = {1.0f}, gq = {0.5f};
  AdamW opt(AdamWOptions{});
  opt.add_group("w", p.data(), g.data(), 2);
  opt.add_group("norm", q.data(), gq.data(), 1, /*decay=*/false);
  opt.step(0.1);
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_NEAR(p[0], 0.899f, 1e-7);
  EXPECT_NEAR(p[1], 1.099f, 1e-7);
  EXPECT_NEAR(q[0], 0.9f, 1e-7);  // no weight decay
  auto state = opt.state();
  ASSERT_EQ(state.size(), 4u);
  EXPECT_EQ(state[0].name, "w.exp_avg");
  EXPECT_EQ(state[1].name, "w.exp_avg_sq");
  EXPECT_EQ(state[2].name, "norm.exp_avg");
  EXPECT_FLOAT_EQ(state[0].values[0], 0.05f);
  EXPECT_FLOAT_EQ(state[0].values[1], -0.2f);
  EXPECT_FLOAT_EQ(state[1].values[0], 0.00025f);
  EXPECT_FLOAT_EQ(state[1].values[1], 0.004f);
}

void expect_matches_reference(double weight_decay, bool group_decay) {
  std::mt19937 rng(7);
  const size_t n = 40000;  // several parallel pieces
  std::vector<float> p = random_vector(n, rng), g(n);
  ReferenceAdamW ref(p);
  ref.weight_decay = weight_decay;
  AdamWOptions o;
  o.weight_decay = weight_decay;
  AdamW opt(o);
  opt.add_group("w", p.data(), g.data(), static_cast<int64_t>(n), group_decay);
  LrSchedule s{.base_lr = 1e-2, .warmup_steps = 3, .total_steps = 10, .min_lr_ratio = 0.1};
  for (int64_t step = 0; step < 10; ++step) {
    std::ranges::copy(random_vector(n, rng), g.begin());  // in place: the optimizer holds g
    const double lr = s.lr(step + 1);
    opt.step(lr);
    ref.step(g, lr, group_decay);
  }
  EXPECT_EQ(opt.steps(), 10);
  auto state = opt.state();
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(p[i], ref.p[i], 2e-6 * std::max(1.0, std::abs(ref.p[i]))) << i;
    ASSERT_NEAR(state[0].values[i], ref.m[i], 1e-6 * std::max(1.0, std::abs(ref.m[i]))) << i;
    ASSERT_NEAR(state[1].values[i], ref.v[i], 1e-6 * std::max(1.0, std::abs(ref.v[i]))) << i;
  }
}

TEST(AdamWTest, MatchesReferenceWithWeightDecay) {
  expect_matches_reference(0.1, true);
}
TEST(AdamWTest, MatchesReferenceWithoutWeightDecay) {
  expect_matches_reference(0.0, true);
}
TEST(AdamWTest, MatchesReferenceNoDecayGroup) {
  expect_matches_reference(0.1, false);
}

TEST(AdamWTest, SameResultForAnyThreadCount) {
  std::mt19937 rng(3);
  const size_t n = 100000;
  const std::vector<float> init = random_vector(n, rng), g = random_vector(n, rng);
  std::vector<float> results[2];
  const int threads[2] = {1, 4};
  for (int k = 0; k < 2; ++k) {
    set_default_threads(threads[k]);
    std::vector<float> p = init;
    AdamW opt(AdamWOptions{});
    opt.add_group("w", p.data(), g.data(), static_cast<int64_t>(n));
    for (int s = 0; s < 3; ++s) opt.step(1e-3);
    results[k] = p;
  }
  set_default_threads(0);
  EXPECT_EQ(results[0], results[1]);
}

TEST(AdamWTest, BadInputThrows) {
  std::vector<float> p(3), g(3);
  AdamW opt(AdamWOptions{});
  opt.add_group("w", p.data(), g.data(), 3);
  EXPECT_THROW(opt.add_group("w", p.data(), g.data(), 3), InputError);
  EXPECT_THROW(opt.add_group("x", nullptr, g.data(), 3), InputError);
  EXPECT_THROW(opt.add_group("y", p.data(), g.data(), -1), InputError);
  EXPECT_THROW(opt.step(-1.0), InputError);
  EXPECT_THROW(opt.step(std::nan("")), InputError);
  EXPECT_EQ(opt.steps(), 0);
  AdamWOptions bad;
  bad.adam.beta1 = 1.0;
  EXPECT_THROW(AdamW{bad}, ConfigError);
  bad = {};
  bad.weight_decay = -0.1;
  EXPECT_THROW(AdamW{bad}, ConfigError);
}

// ---- State hooks ------------------------------------------------------------------------------

TEST(OptimizerStateTest, RestoredAdamWContinuesIdentically) {
  std::mt19937 rng(11);
  const size_t n = 64;
  std::vector<float> p = random_vector(n, rng), g(n);
  AdamW a(AdamWOptions{});
  a.add_group("w", p.data(), g.data(), static_cast<int64_t>(n));
  for (int s = 0; s < 3; ++s) {
    std::ranges::copy(random_vector(n, rng), g.begin());  // in place: the optimizer holds g
    a.step(1e-2);
  }
  // "Checkpoint": parameters, state buffers and step count into a fresh optimizer.
  std::vector<float> q = p;
  AdamW b(AdamWOptions{});
  b.add_group("w", q.data(), g.data(), static_cast<int64_t>(n));
  auto from = a.state(), to = b.state();
  ASSERT_EQ(from.size(), to.size());
  for (size_t i = 0; i < from.size(); ++i) {
    ASSERT_EQ(from[i].name, to[i].name);
    std::copy(from[i].values.begin(), from[i].values.end(), to[i].values.begin());
  }
  b.set_steps(a.steps());
  std::ranges::copy(random_vector(n, rng), g.begin());
  a.step(1e-2);
  b.step(1e-2);
  EXPECT_EQ(p, q);
}

// ---- SparseRowAdam ----------------------------------------------------------------------------

nn::SparseRowGrad<float> sparse_grad(const std::vector<int64_t>& rows, int64_t width,
                                     std::mt19937& rng) {
  nn::SparseRowGrad<float> g;
  g.rows = rows;
  g.width = width;
  g.values = random_vector(rows.size() * static_cast<size_t>(width), rng);
  return g;
}

// Dense gradient (rows, width) holding g's rows, zero elsewhere.
std::vector<float> densify(const nn::SparseRowGrad<float>& g, int64_t rows) {
  std::vector<float> out(static_cast<size_t>(rows * g.width), 0.0f);
  for (size_t i = 0; i < g.rows.size(); ++i) {
    for (int64_t j = 0; j < g.width; ++j) {
      out[static_cast<size_t>(g.rows[i] * g.width + j)] =
          g.values[i * static_cast<size_t>(g.width) + static_cast<size_t>(j)];
    }
  }
  return out;
}

TEST(AdamSparseRowTest, EveryRowTouchedEqualsDenseAdamWithoutDecay) {
  std::mt19937 rng(5);
  const int64_t rows = 6, width = 5;
  std::vector<float> table = random_vector(static_cast<size_t>(rows * width), rng);
  std::vector<float> dense_p = table, dense_g(table.size());
  SparseRowAdam sparse(table.data(), rows, width);
  AdamWOptions o;
  o.weight_decay = 0.0;
  AdamW dense(o);
  dense.add_group("table", dense_p.data(), dense_g.data(), rows * width);
  for (int s = 0; s < 10; ++s) {
    auto g = sparse_grad({0, 1, 2, 3, 4, 5}, width, rng);
    std::ranges::copy(densify(g, rows), dense_g.begin());
    const double lr = 1e-2 * (1 + s);
    sparse.step(g, lr);
    dense.step(lr);
  }
  EXPECT_EQ(table, dense_p);  // bit for bit: the same update, no decay of the moments needed
  auto ss = sparse.state(), ds = dense.state();
  EXPECT_TRUE(std::equal(ss[0].values.begin(), ss[0].values.end(), ds[0].values.begin()));
  EXPECT_TRUE(std::equal(ss[1].values.begin(), ss[1].values.end(), ds[1].values.begin()));
}

TEST(AdamSparseRowTest, SkippedRowHasLazilyExactMomentsAndDoesNotMove) {
  std::mt19937 rng(9);
  const int64_t rows = 3, width = 4, k = 3;
  std::vector<float> table = random_vector(static_cast<size_t>(rows * width), rng);
  std::vector<float> dense_p = table, dense_g(table.size());
  SparseRowAdam sparse(table.data(), rows, width);
  AdamWOptions o;
  o.weight_decay = 0.0;
  AdamW dense(o);  // sees the skipped row's steps as zero gradients
  dense.add_group("table", dense_p.data(), dense_g.data(), rows * width);
  auto run = [&](const nn::SparseRowGrad<float>& g) {
    std::ranges::copy(densify(g, rows), dense_g.begin());
    sparse.step(g, 1e-2);
    dense.step(1e-2);
  };
  auto row1 = [&](const std::vector<float>& t) {
    return std::vector<float>(t.begin() + width, t.begin() + 2 * width);
  };

  run(sparse_grad({0, 1, 2}, width, rng));
  const std::vector<float> row1_params = row1(table);
  for (int s = 0; s < k; ++s) {
    run(sparse_grad({0, 2}, width, rng));
    EXPECT_EQ(row1(table), row1_params) << "a skipped row must not move";
    EXPECT_EQ(sparse.last_step()[1], 1);
  }
  EXPECT_NE(row1(dense_p), row1_params);  // dense Adam keeps moving it on zero gradients

  run(sparse_grad({1}, width, rng));
  EXPECT_EQ(sparse.steps(), k + 2);
  EXPECT_EQ(sparse.last_step()[1], k + 2);
  auto ss = sparse.state(), ds = dense.state();
  // Row 1: m, v after k zero-gradient updates then one real one, as dense Adam computed them.
  // (Rows 0 and 2 were skipped by this last step: their moments are one decay behind, lazily.)
  for (size_t i = static_cast<size_t>(width); i < static_cast<size_t>(2 * width); ++i) {
    EXPECT_NEAR(ss[0].values[i], ds[0].values[i], 1e-6f * std::abs(ds[0].values[i])) << i;
    EXPECT_NEAR(ss[1].values[i], ds[1].values[i], 1e-6f * std::abs(ds[1].values[i])) << i;
  }
  // And the row's parameters took one Adam step from where they stood, with global-t correction.
  const double t = static_cast<double>(k + 2);
  for (int64_t j = 0; j < width; ++j) {
    const size_t i = static_cast<size_t>(width + j);
    const double m_hat = ss[0].values[i] / (1 - std::pow(0.9, t));
    const double v_hat = ss[1].values[i] / (1 - std::pow(0.999, t));
    EXPECT_NEAR(table[i],
                row1_params[static_cast<size_t>(j)] - 1e-2 * m_hat / (std::sqrt(v_hat) + 1e-8),
                1e-6);
  }
}

TEST(AdamSparseRowTest, RowsNeverTouchedStayUnchanged) {
  std::mt19937 rng(2);
  const int64_t rows = 5, width = 3;
  std::vector<float> table = random_vector(static_cast<size_t>(rows * width), rng);
  const std::vector<float> init = table;
  SparseRowAdam opt(table.data(), rows, width);
  for (int s = 0; s < 4; ++s) opt.step(sparse_grad({1, 3}, width, rng), 1e-1);
  for (int64_t r : {0, 2, 4}) {
    for (int64_t j = 0; j < width; ++j) {
      const size_t i = static_cast<size_t>(r * width + j);
      EXPECT_EQ(table[i], init[i]);
      EXPECT_EQ(opt.state()[0].values[i], 0.0f);
    }
    EXPECT_EQ(opt.last_step()[r], 0);
  }
  EXPECT_NE(table[static_cast<size_t>(width)], init[static_cast<size_t>(width)]);
}

TEST(AdamSparseRowTest, EmptyGradientCountsAStep) {
  std::vector<float> table(4, 1.0f);
  SparseRowAdam opt(table.data(), 2, 2);
  nn::SparseRowGrad<float> g;
  g.width = 2;
  opt.step(g, 1e-2);
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_EQ(table, std::vector<float>(4, 1.0f));
}

TEST(AdamSparseRowTest, BadInputThrowsAndChangesNothing) {
  std::mt19937 rng(1);
  std::vector<float> table(4 * 3, 1.0f);
  SparseRowAdam opt(table.data(), 4, 3);
  EXPECT_THROW(opt.step(sparse_grad({4}, 3, rng), 1e-2), InputError);     // out of range
  EXPECT_THROW(opt.step(sparse_grad({-1}, 3, rng), 1e-2), InputError);    // negative
  EXPECT_THROW(opt.step(sparse_grad({0, 1}, 2, rng), 1e-2), InputError);  // width mismatch
  EXPECT_THROW(opt.step(sparse_grad({2, 1}, 3, rng), 1e-2), InputError);  // not sorted
  EXPECT_THROW(opt.step(sparse_grad({1, 1}, 3, rng), 1e-2), InputError);  // duplicate
  EXPECT_THROW(opt.step(sparse_grad({1}, 3, rng), -1.0), InputError);     // bad lr
  auto short_values = sparse_grad({0, 1}, 3, rng);
  short_values.values.pop_back();
  EXPECT_THROW(opt.step(short_values, 1e-2), InputError);
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_EQ(table, std::vector<float>(4 * 3, 1.0f));
  EXPECT_THROW(SparseRowAdam(nullptr, 4, 3), InputError);
  EXPECT_THROW(SparseRowAdam(table.data(), -1, 3), InputError);
  EXPECT_THROW(SparseRowAdam(table.data(), 4, 3, AdamOptions{.beta2 = 1.0}), ConfigError);
}

// ---- Gradient clipping ------------------------------------------------------------------------

TEST(ClipGradNormTest, ScalesExactlyAndReportsTheNorm) {
  // Norm of (3, 4) and (12): sqrt(9 + 16 + 144) = 13.
  std::vector<float> a = {3.0f, 4.0f};
  nn::SparseRowGrad<float> s;
  s.rows = {7};
  s.width = 1;
  s.values = {12.0f};
  std::vector<std::span<float>> dense = {a};
  std::vector<nn::SparseRowGrad<float>*> sparse = {&s};
  const double norm = clip_grad_norm(dense, sparse, 1.3);
  EXPECT_DOUBLE_EQ(norm, 13.0);
  const float scale = static_cast<float>(1.3 / (13.0 + 1e-6));
  EXPECT_EQ(a[0], 3.0f * scale);
  EXPECT_EQ(a[1], 4.0f * scale);
  EXPECT_EQ(s.values[0], 12.0f * scale);
  // Now below max_norm (norm ~1.3 < 2): nothing changes.
  const std::vector<float> before = a;
  EXPECT_NEAR(clip_grad_norm(dense, sparse, 2.0), 1.3, 1e-6);
  EXPECT_EQ(a, before);
}

TEST(ClipGradNormTest, SameNormForAnyThreadCount) {
  std::mt19937 rng(4);
  std::vector<float> a = random_vector(300000, rng), b = random_vector(70001, rng);
  std::vector<std::span<float>> dense = {a, b};
  double norms[2];
  const int threads[2] = {1, 5};
  for (int k = 0; k < 2; ++k) {
    set_default_threads(threads[k]);
    norms[k] = clip_grad_norm(dense, {}, 1e9);
  }
  set_default_threads(0);
  EXPECT_EQ(norms[0], norms[1]);
  double ref = 0;
  for (float x : a) ref += static_cast<double>(x) * x;
  for (float x : b) ref += static_cast<double>(x) * x;
  EXPECT_NEAR(norms[0], std::sqrt(ref), 1e-9 * std::sqrt(ref));
}

TEST(ClipGradNormTest, NonFiniteNormLeavesGradients) {
  std::vector<float> a = {1.0f, INFINITY};
  std::vector<std::span<float>> dense = {a};
  EXPECT_TRUE(std::isinf(clip_grad_norm(dense, {}, 1.0)));
  EXPECT_EQ(a[0], 1.0f);
}

TEST(ClipGradNormTest, BadInputThrows) {
  std::vector<float> a = {1.0f};
  std::vector<std::span<float>> dense = {a};
  EXPECT_THROW(clip_grad_norm(dense, {}, 0.0), InputError);
  EXPECT_THROW(clip_grad_norm(dense, {}, std::nan("")), InputError);
  nn::SparseRowGrad<float> s;
  s.rows = {0, 1};
  s.width = 2;
  s.values = {1.0f};
  std::vector<nn::SparseRowGrad<float>*> sparse = {&s};
  EXPECT_THROW(clip_grad_norm(dense, sparse, 1.0), InputError);
}

nn::SparseRowGrad<float> sparse(std::vector<int64_t> rows, std::vector<float> values,
                                int64_t width) {
  nn::SparseRowGrad<float> g;
  g.rows = std::move(rows);
  g.values = std::move(values);
  g.width = width;
  return g;
}

TEST(AddSparseGradTest, UnionOfRowsWithSharedRowsSummed) {
  nn::SparseRowGrad<float> acc;
  add_sparse_grad(acc, sparse({1, 4}, {1, 2, 3, 4}, 2));  // empty acc: becomes g
  EXPECT_EQ(acc.rows, (std::vector<int64_t>{1, 4}));
  add_sparse_grad(acc, sparse({0, 4, 7}, {10, 20, 30, 40, 50, 60}, 2));
  EXPECT_EQ(acc.rows, (std::vector<int64_t>{0, 1, 4, 7}));
  EXPECT_EQ(acc.values, (std::vector<float>{10, 20, 1, 2, 33, 44, 50, 60}));
  EXPECT_EQ(acc.width, 2);
  add_sparse_grad(acc, sparse({}, {}, 0));  // an empty gradient (any width) changes nothing
  EXPECT_EQ(acc.rows, (std::vector<int64_t>{0, 1, 4, 7}));
  EXPECT_THROW(add_sparse_grad(acc, sparse({2}, {1, 2, 3}, 3)), InputError);
}

}  // namespace
}  // namespace engram::train
