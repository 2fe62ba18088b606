// The GPU mixture of experts (engram/cuda/moe.h) against nn::moe_forward / nn::moe_backward on
// random inputs of several shapes (skipped without a GPU). Routing (selection, counts, offsets,
// row_of) must match exactly; floats are compared by normalised error
// max |gpu - cpu| / max(max |cpu|, 1e-6). Gradients start non-zero and are compared as
// increments (after - before), which also checks that backward accumulates.
#include "engram/cuda/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "engram/cuda/blas.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/nn/moe.h"
#include "engram/tensor/dtype.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

using test_util::to_device;
using test_util::normalised_error;

constexpr double kTolForward = 1e-5;
constexpr double kTolBackward = 1e-4;
constexpr double kTolBf16 = 2e-2;

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

std::vector<float> random_vec(size_t size, std::mt19937_64& rng, float sd) {
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(size);
  for (float& x : v) x = normal(rng);
  return v;
}

template <class T>
std::vector<T> to_host(const DeviceBuffer<T>& d, size_t size) {
  std::vector<T> all(d.size());
  if (!all.empty()) d.download(all);
  all.resize(size);
  return all;
}

// The error of got - start against want - start.
double increment_error(const std::vector<float>& got, const std::vector<float>& start,
                       const std::vector<float>& want) {
  std::vector<float> g(got.size()), w(want.size());
  for (size_t i = 0; i < g.size(); ++i) g[i] = got[i] - start[i];
  for (size_t i = 0; i < w.size(); ++i) w[i] = want[i] - start[i];
  return normalised_error(g, w);
}

float round_bf16(float v) {
  return bf16_to_float(float_to_bf16(v));
}

void round_all(std::vector<float>& v) {
  for (float& x : v) x = round_bf16(x);
}

// One problem: inputs, weights, upstream gradient and the gradients' starting values.
struct Problem {
  nn::MoeShape shape;
  std::vector<float> u, bias, wg, w1, w3, w2, sw1, sw3, sw2, dy;
  std::vector<float> du0, dwg0, dw10, dw30, dw20, dsw10, dsw30, dsw20;
};

Problem make_problem(const nn::MoeShape& s, uint64_t seed, float bias_sd = 0.2f) {
  std::mt19937_64 rng(seed);
  const int64_t n = s.tokens, c = s.dim, e = s.experts, h = s.hidden, hs = s.shared_hidden();
  const float wc = 1.0f / std::sqrt(static_cast<float>(c));
  Problem p;
  p.shape = s;
  p.u = random_vec(sz(n * c), rng, 1.0f);
  p.bias = random_vec(sz(e), rng, bias_sd);
  p.wg = random_vec(sz(e * c), rng, wc);
  p.w1 = random_vec(sz(e * h * c), rng, wc);
  p.w3 = random_vec(sz(e * h * c), rng, wc);
  p.w2 = random_vec(sz(e * c * h), rng, 1.0f / std::sqrt(static_cast<float>(h)));
  p.sw1 = random_vec(sz(hs * c), rng, wc);
  p.sw3 = random_vec(sz(hs * c), rng, wc);
  p.sw2 = random_vec(sz(c * hs), rng, hs > 0 ? 1.0f / std::sqrt(static_cast<float>(hs)) : 1.0f);
  p.dy = random_vec(sz(n * c), rng, 1.0f);
  p.du0 = random_vec(sz(n * c), rng, 0.1f);
  p.dwg0 = random_vec(p.wg.size(), rng, 0.1f);
  p.dw10 = random_vec(p.w1.size(), rng, 0.1f);
  p.dw30 = random_vec(p.w3.size(), rng, 0.1f);
  p.dw20 = random_vec(p.w2.size(), rng, 0.1f);
  p.dsw10 = random_vec(p.sw1.size(), rng, 0.1f);
  p.dsw30 = random_vec(p.sw3.size(), rng, 0.1f);
  p.dsw20 = random_vec(p.sw2.size(), rng, 0.1f);
  return p;
}

// Rounds everything the bf16 path holds in bf16 (not the router, the bias or the gradients).
void round_for_bf16(Problem& p) {
  for (auto* v : {&p.u, &p.w1, &p.w3, &p.w2, &p.sw1, &p.sw3, &p.sw2, &p.dy, &p.du0}) round_all(*v);
}

struct Result {
  std::vector<float> y, scores, weights;
  std::vector<int32_t> selected;
  std::vector<int64_t> counts, offsets, row_of;
  std::vector<float> du, dwg, dw1, dw3, dw2, dsw1, dsw3, dsw2;
};

const float* ptr_or_null(const std::vector<float>& v) {
  return v.empty() ? nullptr : v.data();
}
float* ptr_or_null(std::vector<float>& v) {
  return v.empty() ? nullptr : v.data();
}

Result run_cpu(const Problem& p) {
  const nn::MoeShape& s = p.shape;
  Result r;
  nn::MoeSaved<float> saved;
  const nn::MoeWeights<float> w{p.wg.data(),       p.w1.data(),        p.w3.data(),
                                p.w2.data(),       ptr_or_null(p.sw1), ptr_or_null(p.sw3),
                                ptr_or_null(p.sw2)};
  r.y.resize(sz(s.tokens * s.dim));
  nn::moe_forward<float>(r.y.data(), saved, p.u.data(), p.bias.data(), w, s);
  r.scores = saved.scores;
  r.weights = saved.weights;
  r.selected = saved.selected;
  r.counts = saved.counts;
  r.offsets = saved.offsets;
  r.row_of = saved.row_of;
  r.du = p.du0;
  r.dwg = p.dwg0;
  r.dw1 = p.dw10;
  r.dw3 = p.dw30;
  r.dw2 = p.dw20;
  r.dsw1 = p.dsw10;
  r.dsw3 = p.dsw30;
  r.dsw2 = p.dsw20;
  const nn::MoeGrads<float> g{r.dwg.data(),       r.dw1.data(),        r.dw3.data(),
                              r.dw2.data(),       ptr_or_null(r.dsw1), ptr_or_null(r.dsw3),
                              ptr_or_null(r.dsw2)};
  nn::moe_backward<float>(r.du.data(), g, p.dy.data(), p.u.data(), saved, w, s);
  return r;
}

template <class T>
std::vector<T> to_type(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
    return out;
  }
}

template <class T>
std::vector<float> to_float(const std::vector<T>& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
    return out;
  }
}

// The problem on the GPU, forward then backward, with its own Blas and saved state.
template <class T>
struct GpuRun {
  DeviceBuffer<T> u, w1, w3, w2, sw1, sw3, sw2, dy, y, du;
  DeviceBuffer<float> bias, wg, dwg, dw1, dw3, dw2, dsw1, dsw3, dsw2;
  GpuMoeSaved<T> saved;

  explicit GpuRun(const Problem& p)
      : u(to_device(to_type<T>(p.u))),
        w1(to_device(to_type<T>(p.w1))),
        w3(to_device(to_type<T>(p.w3))),
        w2(to_device(to_type<T>(p.w2))),
        sw1(to_device(to_type<T>(p.sw1))),
        sw3(to_device(to_type<T>(p.sw3))),
        sw2(to_device(to_type<T>(p.sw2))),
        dy(to_device(to_type<T>(p.dy))),
        y(std::max<size_t>(p.u.size(), 1)),
        du(to_device(to_type<T>(p.du0))),
        bias(to_device(p.bias)),
        wg(to_device(p.wg)),
        dwg(to_device(p.dwg0)),
        dw1(to_device(p.dw10)),
        dw3(to_device(p.dw30)),
        dw2(to_device(p.dw20)),
        dsw1(to_device(p.dsw10)),
        dsw3(to_device(p.dsw30)),
        dsw2(to_device(p.dsw20)) {}

  GpuMoeWeights<T> weights() const {
    return {wg.data(), w1.data(), w3.data(), w2.data(), sw1.data(), sw3.data(), sw2.data()};
  }
  GpuMoeGrads grads() {
    return {dwg.data(), dw1.data(), dw3.data(), dw2.data(), dsw1.data(), dsw3.data(), dsw2.data()};
  }

  void forward(Blas& blas, const nn::MoeShape& s) {
    moe_forward<T>(blas, y.data(), saved, u.data(), bias.data(), weights(), s);
  }
  void backward(Blas& blas, const nn::MoeShape& s) {
    moe_backward<T>(blas, du.data(), grads(), dy.data(), u.data(), saved, weights(), s);
  }

  Result result(const nn::MoeShape& s) const {
    const int64_t n = s.tokens, e = s.experts, k = s.top_k;
    Result r;
    r.y = to_float(to_host(y, sz(n * s.dim)));
    r.scores = to_host(saved.scores, sz(n * e));
    r.weights = to_host(saved.weights, sz(n * k));
    r.selected = to_host(saved.selected, sz(n * k));
    r.counts = to_host(saved.counts, sz(e));
    r.offsets = to_host(saved.offsets, sz(e + 1));
    const std::vector<int32_t> rows = to_host(saved.row_of, sz(n * k));
    r.row_of.assign(rows.begin(), rows.end());
    r.du = to_float(to_host(du, du.size()));
    r.dwg = to_host(dwg, dwg.size());
    r.dw1 = to_host(dw1, dw1.size());
    r.dw3 = to_host(dw3, dw3.size());
    r.dw2 = to_host(dw2, dw2.size());
    r.dsw1 = to_host(dsw1, dsw1.size());
    r.dsw3 = to_host(dsw3, dsw3.size());
    r.dsw2 = to_host(dsw2, dsw2.size());
    return r;
  }
};

template <class T>
Result run_gpu(const Problem& p) {
  Blas blas;
  GpuRun<T> run(p);
  run.forward(blas, p.shape);
  EXPECT_EQ(run.saved.host_counts.size(), sz(p.shape.experts));
  run.backward(blas, p.shape);
  device_synchronize();
  Result r = run.result(p.shape);
  EXPECT_EQ(run.saved.host_counts, r.counts);
  EXPECT_EQ(run.saved.host_offsets, r.offsets);
  return r;
}

void expect_routing_equal(const Result& gpu, const Result& cpu, double tol) {
  EXPECT_EQ(gpu.selected, cpu.selected);
  EXPECT_EQ(gpu.counts, cpu.counts);
  EXPECT_EQ(gpu.offsets, cpu.offsets);
  EXPECT_EQ(gpu.row_of, cpu.row_of);
  EXPECT_LE(normalised_error(gpu.scores, cpu.scores), tol);
  EXPECT_LE(normalised_error(gpu.weights, cpu.weights), tol);
}

void expect_grads_match(const Result& gpu, const Result& cpu, const Problem& p, double tol) {
  EXPECT_LE(increment_error(gpu.du, p.du0, cpu.du), tol) << "du";
  if (p.shape.top_k > 1) {
    EXPECT_LE(increment_error(gpu.dwg, p.dwg0, cpu.dwg), tol) << "dwg";
  } else {
    // One slot: w = route_scale whatever s is, so the router's true gradient is zero and both
    // sides hold rounding noise only; it must stay negligible against du's increment.
    double noise = 0, scale = 0;
    for (size_t i = 0; i < gpu.dwg.size(); ++i)
      noise = std::max(noise, std::abs(static_cast<double>(gpu.dwg[i]) - p.dwg0[i]));
    for (size_t i = 0; i < cpu.du.size(); ++i)
      scale = std::max(scale, std::abs(static_cast<double>(cpu.du[i]) - p.du0[i]));
    EXPECT_LE(noise, 1e-5 * scale) << "dwg with top_k 1";
  }
  EXPECT_LE(increment_error(gpu.dw1, p.dw10, cpu.dw1), tol) << "dw1";
  EXPECT_LE(increment_error(gpu.dw3, p.dw30, cpu.dw3), tol) << "dw3";
  EXPECT_LE(increment_error(gpu.dw2, p.dw20, cpu.dw2), tol) << "dw2";
  if (p.shape.n_shared > 0) {
    EXPECT_LE(increment_error(gpu.dsw1, p.dsw10, cpu.dsw1), tol) << "dshared_w1";
    EXPECT_LE(increment_error(gpu.dsw3, p.dsw30, cpu.dsw3), tol) << "dshared_w3";
    EXPECT_LE(increment_error(gpu.dsw2, p.dsw20, cpu.dsw2), tol) << "dshared_w2";
  }
}

struct Case {
  int64_t n, c, e, k, h, n_shared;
  double route_scale;
};

const Case kCases[] = {
    {1, 16, 4, 1, 8, 0, 1.0},     {1, 24, 14, 3, 16, 1, 2.5},  {7, 33, 4, 2, 20, 1, 2.5},
    {7, 8, 14, 3, 16, 0, 1.0},    {64, 64, 14, 3, 32, 1, 1.0}, {64, 128, 14, 1, 64, 1, 2.5},
    {300, 96, 14, 2, 48, 0, 2.5}, {300, 40, 4, 3, 24, 1, 1.0}, {300, 72, 4, 1, 40, 0, 1.0},
};

nn::MoeShape shape_of(const Case& k) {
  nn::MoeShape s{k.n, k.c, k.e, k.k, k.h, k.n_shared, k.route_scale};
  return s;
}

// ---- Forward and backward against the CPU -----------------------------------------------------

TEST(CudaMoe, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1;
  for (const Case& k : kCases) {
    SCOPED_TRACE(testing::Message()
                 << "N " << k.n << " C " << k.c << " E " << k.e << " K " << k.k << " H " << k.h
                 << " shared " << k.n_shared << " scale " << k.route_scale);
    Problem p = make_problem(shape_of(k), seed++);
    // One expert favoured by the bias, so the bias changes some of the selection.
    p.bias[sz(k.e - 1)] = 0.3f;
    const Result cpu = run_cpu(p);
    const Result gpu = run_gpu<float>(p);
    expect_routing_equal(gpu, cpu, kTolForward);
    EXPECT_LE(normalised_error(gpu.y, cpu.y), kTolForward);
    expect_grads_match(gpu, cpu, p, kTolBackward);
  }
}

// moe_forward_dense: the routing and y of moe_forward (the CPU's, to float rounding) on every
// case, float32 and bf16, and no backward after it.
template <class T>
void check_dense(const Problem& p, double tol) {
  const nn::MoeShape& s = p.shape;
  const Result cpu = run_cpu(p);
  Blas blas;
  GpuRun<T> run(p);
  moe_forward_dense<T>(blas, run.y.data(), run.saved, run.u.data(), run.bias.data(),
                       run.weights(), s);
  device_synchronize();
  EXPECT_EQ(to_host(run.saved.selected, sz(s.tokens * s.top_k)), cpu.selected);
  EXPECT_LE(normalised_error(to_host(run.saved.weights, sz(s.tokens * s.top_k)), cpu.weights),
            kTolForward);
  EXPECT_LE(normalised_error(to_float(to_host(run.y, sz(s.tokens * s.dim))), cpu.y), tol);
  EXPECT_THROW(run.backward(blas, s), InputError);
}

TEST(CudaMoe, DenseForwardMatchesTheRoutedOne) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 50;
  for (const Case& k : kCases) {
    SCOPED_TRACE(testing::Message() << "N " << k.n << " C " << k.c << " E " << k.e << " K "
                                    << k.k << " H " << k.h << " shared " << k.n_shared);
    Problem p = make_problem(shape_of(k), seed++);
    p.bias[sz(k.e - 1)] = 0.3f;
    check_dense<float>(p, kTolForward);
    round_for_bf16(p);
    check_dense<bf16>(p, kTolBf16);
  }
}

TEST(CudaMoe, BiasChangesTheSelection) {
  SKIP_WITHOUT_GPU();
  const nn::MoeShape s{64, 32, 14, 2, 16, 0, 1.0};
  Problem p = make_problem(s, 7, 0.0f);
  const Result unbiased = run_gpu<float>(p);
  p.bias[3] = 1.0f;
  const Result cpu = run_cpu(p);
  const Result gpu = run_gpu<float>(p);
  EXPECT_NE(gpu.selected, unbiased.selected);
  EXPECT_EQ(gpu.counts[3], s.tokens);  // the biased expert is everyone's first pick
  for (int64_t t = 0; t < s.tokens; ++t) EXPECT_EQ(gpu.selected[sz(t * s.top_k)], 3);
  expect_routing_equal(gpu, cpu, kTolForward);
  EXPECT_LE(normalised_error(gpu.y, cpu.y), kTolForward);
  expect_grads_match(gpu, cpu, p, kTolBackward);
}

// Small integers make every router logit exact, so identical rows of W_g give identical scores
// on both sides, and zero rows give s = 0.5 exactly: the ties go to the lower expert index.
TEST(CudaMoe, TiedScoresGoToTheLowerExpert) {
  SKIP_WITHOUT_GPU();
  const nn::MoeShape s{37, 16, 6, 3, 8, 1, 1.0};
  Problem p = make_problem(s, 11, 0.0f);
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int> small(-2, 2);
  for (float& x : p.u) x = static_cast<float>(small(rng));
  for (int64_t i = 0; i < s.dim; ++i) {
    const auto at = [&](int64_t e) -> float& { return p.wg[sz(e * s.dim + i)]; };
    at(0) = 0.0f;
    at(5) = 0.0f;
    at(1) = static_cast<float>(small(rng)) * 0.25f;
    at(3) = at(1);
    at(4) = at(1);
    at(2) = static_cast<float>(small(rng)) * 0.25f;
  }
  const Result cpu = run_cpu(p);
  const Result gpu = run_gpu<float>(p);
  // Sanity: ties do happen in the selection (both 1 and 3 picked, or 0 and 5).
  int tied_pairs = 0;
  for (int64_t t = 0; t < s.tokens; ++t) {
    const int32_t* sel = cpu.selected.data() + t * s.top_k;
    const bool has1 = std::find(sel, sel + s.top_k, 1) != sel + s.top_k;
    const bool has3 = std::find(sel, sel + s.top_k, 3) != sel + s.top_k;
    const bool has0 = std::find(sel, sel + s.top_k, 0) != sel + s.top_k;
    const bool has5 = std::find(sel, sel + s.top_k, 5) != sel + s.top_k;
    tied_pairs += (has1 && has3) || (has0 && has5);
  }
  EXPECT_GT(tied_pairs, 0);
  expect_routing_equal(gpu, cpu, kTolForward);
  EXPECT_LE(normalised_error(gpu.y, cpu.y), kTolForward);
  expect_grads_match(gpu, cpu, p, kTolBackward);
}

TEST(CudaMoe, ExpertWithoutTokensGetsNoGradient) {
  SKIP_WITHOUT_GPU();
  const nn::MoeShape s{50, 24, 4, 2, 12, 1, 1.0};
  Problem p = make_problem(s, 21);
  const int64_t idle = 1;
  p.bias[sz(idle)] = -100.0f;
  const Result cpu = run_cpu(p);
  const Result gpu = run_gpu<float>(p);
  EXPECT_EQ(gpu.counts[sz(idle)], 0);
  expect_routing_equal(gpu, cpu, kTolForward);
  EXPECT_LE(normalised_error(gpu.y, cpu.y), kTolForward);
  expect_grads_match(gpu, cpu, p, kTolBackward);
  const size_t hc = sz(s.hidden * s.dim), off = sz(idle) * hc;
  for (size_t i = 0; i < hc; ++i) {
    ASSERT_EQ(gpu.dw1[off + i], p.dw10[off + i]);
    ASSERT_EQ(gpu.dw3[off + i], p.dw30[off + i]);
    ASSERT_EQ(gpu.dw2[off + i], p.dw20[off + i]);
  }
  // Its router row still gets a gradient of zero from the gates (never selected).
  for (int64_t i = 0; i < s.dim; ++i) {
    const size_t at = sz(idle * s.dim + i);
    EXPECT_EQ(gpu.dwg[at], p.dwg0[at]);
  }
}

TEST(CudaMoe, NoTokens) {
  SKIP_WITHOUT_GPU();
  const nn::MoeShape s{0, 16, 4, 2, 8, 1, 1.0};
  Problem p = make_problem(s, 3);
  Blas blas;
  GpuRun<float> run(p);
  run.forward(blas, s);
  run.backward(blas, s);
  const Result r = run.result(s);
  EXPECT_EQ(r.counts, std::vector<int64_t>(4, 0));
  EXPECT_EQ(r.offsets, std::vector<int64_t>(5, 0));
  EXPECT_EQ(run.saved.host_counts, std::vector<int64_t>(4, 0));
  EXPECT_EQ(r.dw1, p.dw10);
}

// ---- bf16 activations ------------------------------------------------------------------------

TEST(CudaMoeBf16, MatchesCpuOnRoundedInputs) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (const Case& k : kCases) {
    SCOPED_TRACE(testing::Message()
                 << "N " << k.n << " C " << k.c << " E " << k.e << " K " << k.k << " H " << k.h
                 << " shared " << k.n_shared << " scale " << k.route_scale);
    Problem p = make_problem(shape_of(k), seed++);
    round_for_bf16(p);
    const Result cpu = run_cpu(p);
    const Result gpu = run_gpu<bf16>(p);
    // The router runs in float32 on exactly the same values: the routing matches as in float32.
    expect_routing_equal(gpu, cpu, kTolForward);
    EXPECT_LE(normalised_error(gpu.y, cpu.y), kTolBf16);
    expect_grads_match(gpu, cpu, p, kTolBf16);
  }
}

// ---- Determinism -------------------------------------------------------------------------------

template <class T>
void expect_identical_runs() {
  const nn::MoeShape s{300, 96, 14, 3, 48, 1, 2.5};
  Problem p = make_problem(s, 31);
  if constexpr (!std::is_same_v<T, float>) round_for_bf16(p);
  const Result a = run_gpu<T>(p);
  const Result b = run_gpu<T>(p);
  const auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same_bits(a.y, b.y));
  EXPECT_TRUE(same_bits(a.scores, b.scores));
  EXPECT_TRUE(same_bits(a.du, b.du));
  EXPECT_TRUE(same_bits(a.dwg, b.dwg));
  EXPECT_TRUE(same_bits(a.dw1, b.dw1));
  EXPECT_TRUE(same_bits(a.dw3, b.dw3));
  EXPECT_TRUE(same_bits(a.dw2, b.dw2));
  EXPECT_TRUE(same_bits(a.dsw1, b.dsw1));
  EXPECT_TRUE(same_bits(a.dsw2, b.dsw2));
  EXPECT_EQ(a.row_of, b.row_of);
}

TEST(CudaMoe, RepeatedRunsGiveIdenticalBits) {
  SKIP_WITHOUT_GPU();
  expect_identical_runs<float>();
  expect_identical_runs<bf16>();
}

// One GpuMoeSaved reused across shapes (buffers grow) gives the same results as fresh ones.
TEST(CudaMoe, SavedStateIsReusable) {
  SKIP_WITHOUT_GPU();
  Blas blas;
  GpuMoeSaved<float> saved;
  for (const Case& k : {kCases[2], kCases[7], kCases[0]}) {
    const nn::MoeShape s = shape_of(k);
    const Problem p = make_problem(s, 77);
    const Result cpu = run_cpu(p);
    GpuRun<float> run(p);
    run.saved = std::move(saved);
    run.forward(blas, s);
    run.backward(blas, s);
    const Result gpu = run.result(s);
    expect_routing_equal(gpu, cpu, kTolForward);
    EXPECT_LE(normalised_error(gpu.y, cpu.y), kTolForward);
    expect_grads_match(gpu, cpu, p, kTolBackward);
    saved = std::move(run.saved);
  }
}

// ---- Balancing ---------------------------------------------------------------------------------

TEST(CudaMoe, AuxFreeBiasUpdateMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<int64_t> counts = {5, 1, 3, 3, 0, 12, 3};
  const std::vector<int64_t> more = {1, 2, 0, 4, 1, 0, 0};
  std::vector<int64_t> total(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) total[i] = counts[i] + more[i];
  std::vector<float> bias = {0.1f, -0.2f, 0.0f, 0.3f, 1e-3f, -1.0f, 0.25f};
  DeviceBuffer<int64_t> d_counts = to_device(counts), d_more = to_device(more);
  DeviceBuffer<float> d_bias = to_device(bias);
  moe_add_counts(d_counts.data(), d_more.data(), 7);
  aux_free_bias_update(d_bias.data(), d_counts.data(), 7, 0.001);
  nn::aux_free_bias_update<float>(bias.data(), total.data(), 7, 0.001);
  EXPECT_EQ(to_host(d_counts, 7), total);
  EXPECT_EQ(to_host(d_bias, 7), bias);  // bit for bit
}

// ---- Errors ------------------------------------------------------------------------------------

TEST(CudaMoe, BadShapesAndCallsThrow) {
  SKIP_WITHOUT_GPU();
  const nn::MoeShape good{8, 16, 4, 2, 8, 1, 1.0};
  Problem p = make_problem(good, 9);
  Blas blas;
  GpuRun<float> run(p);
  // Backward before any forward.
  EXPECT_THROW(run.backward(blas, good), InputError);
  auto with = [&](auto change) {
    nn::MoeShape s = good;
    change(s);
    return s;
  };
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.top_k = 0; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.top_k = 5; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.hidden = 0; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.dim = 0; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.experts = 0; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.tokens = -1; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.n_shared = -1; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.route_scale = 0; })), ConfigError);
  EXPECT_THROW(run.forward(blas, with([](nn::MoeShape& s) { s.route_scale = NAN; })), ConfigError);
  // Null weights.
  GpuMoeWeights<float> w = run.weights();
  w.w2 = nullptr;
  EXPECT_THROW(
      moe_forward<float>(blas, run.y.data(), run.saved, run.u.data(), run.bias.data(), w, good),
      InputError);
  w = run.weights();
  w.shared_w1 = nullptr;
  EXPECT_THROW(
      moe_forward<float>(blas, run.y.data(), run.saved, run.u.data(), run.bias.data(), w, good),
      InputError);
  // Backward with a shape other than the forward's.
  run.forward(blas, good);
  EXPECT_THROW(run.backward(blas, with([](nn::MoeShape& s) { s.tokens = 4; })), InputError);
  EXPECT_THROW(run.backward(blas, with([](nn::MoeShape& s) { s.route_scale = 2.0; })), InputError);
  EXPECT_NO_THROW(run.backward(blas, good));
  EXPECT_THROW(aux_free_bias_update(run.bias.data(), run.saved.counts.data(), 0, 0.001),
               ConfigError);
}

}  // namespace
}  // namespace engram::cuda
