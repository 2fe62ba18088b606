// The GPU mHC functions (engram/cuda/hyper_connection.h) against the CPU functions they mirror
// (engram/nn/hyper_connection.h), on random inputs of several shapes (skipped without a GPU).
// Forward errors are normalised by the largest CPU value: max |gpu - cpu| / max |cpu|. Backward
// gradients start non-zero (to check +=) and their errors are normalised by the largest CPU
// contribution: max |gpu - cpu| / max |cpu - start|.
#include "engram/cuda/hyper_connection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "engram/cuda/blas.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/nn/hyper_connection.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

using test_util::random_vec;
using test_util::to_device;
using test_util::to_host;

constexpr double kForwardTol = 1e-5;
constexpr double kBackwardTol = 1e-4;

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// The first `count` elements of a device buffer (saved state buffers are capacities).
std::vector<float> to_host_prefix(const DeviceBuffer<float>& d, size_t count) {
  std::vector<float> h(count);
  if (count > 0) copy_to_host(h.data(), d.data(), count * sizeof(float));
  return h;
}

double max_abs_diff(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double g = got[i], w = want[i];
    diff = std::isnan(g) || std::isnan(w) ? INFINITY : std::max(diff, std::abs(g - w));
  }
  return diff;
}

double normalised_error(const std::vector<float>& got, const std::vector<float>& want) {
  double scale = 0;
  for (float w : want) scale = std::max(scale, std::abs(static_cast<double>(w)));
  return max_abs_diff(got, want) / std::max(scale, 1e-6);
}

// Error relative to the largest contribution of a backward: want - start.
double delta_error(const std::vector<float>& got, const std::vector<float>& want,
                   const std::vector<float>& start) {
  double scale = 0;
  for (size_t i = 0; i < std::min(want.size(), start.size()); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(want[i]) - start[i]));
  }
  return max_abs_diff(got, want) / std::max(scale, 1e-6);
}

// Non-zero starting values for gradients, on the scale of a backward's contribution (`delta`,
// computed from zero), so that the += is checked without the starting values' rounding hiding
// the contribution's errors.
std::vector<float> start_like(const std::vector<float>& delta, uint64_t seed) {
  float scale = 0.0f;
  for (float v : delta) scale = std::max(scale, std::abs(v));
  return random_vec(delta.size(), seed, scale > 0.0f ? 0.5f * scale : 1.0f);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Shape {
  int64_t tokens, n, c;
};

// The shapes of the brief: n in {1, 2, 4}, C in {8, 64, 257}, N in {1, 3, 100, 1000}, plus the
// odd and the largest stream counts.
std::vector<Shape> shapes() {
  std::vector<Shape> out;
  for (int64_t n : {1, 2, 4}) {
    for (int64_t c : {8, 64, 257}) {
      for (int64_t tokens : {1, 3, 100, 1000}) out.push_back({tokens, n, c});
    }
  }
  out.push_back({37, 3, 33});
  out.push_back({200, 8, 64});
  out.push_back({5, 8, 257});
  return out;
}

// Sublayer parameters: nn::hc_init's (α = 0.01, near-identity mixing), or "large": Φ, b random
// and α = 1, so that the logits spread over several units and the Sinkhorn mixes for real.
struct HcParams {
  std::vector<float> phi, b, alpha;
};

HcParams sublayer_params(int64_t n, int64_t c, bool large, uint64_t seed) {
  const int64_t k = nn::hc_coefficient_count(n);
  HcParams p{std::vector<float>(sz(k * n * c)), std::vector<float>(sz(k)), std::vector<float>(3)};
  nn::hc_init(p.phi.data(), p.b.data(), p.alpha.data(), n, c, /*layer=*/1, seed);
  if (large) {
    p.phi = random_vec(p.phi.size(), seed + 1, 1.5f / std::sqrt(static_cast<float>(n * c)));
    p.b = random_vec(p.b.size(), seed + 2, 1.0f);
    p.alpha = {1.0f, 0.7f, 1.3f};
  }
  return p;
}

HcParams head_params(int64_t n, int64_t c, bool large, uint64_t seed) {
  HcParams p{std::vector<float>(sz(n * n * c)), std::vector<float>(sz(n)), std::vector<float>(1)};
  nn::hc_head_init(p.phi.data(), p.b.data(), p.alpha.data(), n, c, /*layer=*/2, seed);
  if (large) {
    p.phi = random_vec(p.phi.size(), seed + 1, 1.5f / std::sqrt(static_cast<float>(n * c)));
    p.b = random_vec(p.b.size(), seed + 2, 1.0f);
    p.alpha = {0.8f};
  }
  return p;
}

// ---- Sinkhorn ---------------------------------------------------------------------------------

TEST(CudaHcSinkhorn, ForwardAndBackwardMatchCpuPerToken) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (int64_t n = 1; n <= kHcMaxStreams; ++n) {
    for (float sd : {0.5f, 3.0f}) {
      SCOPED_TRACE(testing::Message() << "n " << n << " logit sd " << sd);
      const int64_t tokens = 67, nn = n * n;
      const std::vector<float> logits = random_vec(sz(tokens * nn), ++seed, sd);
      const std::vector<float> dcomb = random_vec(sz(tokens * nn), ++seed);
      const std::vector<float> dlogits0 = random_vec(sz(tokens * nn), ++seed, 0.1f);
      std::vector<float> comb_cpu(sz(tokens * nn)), dlogits_cpu = dlogits0;
      for (int64_t t = 0; t < tokens; ++t) {
        nn::hc_sinkhorn_forward(comb_cpu.data() + t * nn, logits.data() + t * nn, n);
        nn::hc_sinkhorn_backward(dlogits_cpu.data() + t * nn, dcomb.data() + t * nn,
                                 logits.data() + t * nn, n);
      }
      const auto d_logits = to_device(logits);
      const auto d_dcomb = to_device(dcomb);
      DeviceBuffer<float> d_comb(sz(tokens * nn));
      auto d_dlogits = to_device(dlogits0);
      hc_sinkhorn_forward(d_comb.data(), d_logits.data(), tokens, n);
      hc_sinkhorn_backward(d_dlogits.data(), d_dcomb.data(), d_logits.data(), tokens, n);
      const std::vector<float> comb = to_host(d_comb);
      const std::vector<float> dlogits = to_host(d_dlogits);

      // Per token, so that one bad token is not hidden by the others' scale.
      double worst_c = 0, worst_d = 0;
      for (int64_t t = 0; t < tokens; ++t) {
        const auto at = [&](const std::vector<float>& v) {
          return std::vector<float>(v.begin() + t * nn, v.begin() + (t + 1) * nn);
        };
        worst_c = std::max(worst_c, normalised_error(at(comb), at(comb_cpu)));
        worst_d = std::max(worst_d, delta_error(at(dlogits), at(dlogits_cpu), at(dlogits0)));
      }
      EXPECT_LE(worst_c, kForwardTol);
      EXPECT_LE(worst_d, kBackwardTol);

      // The last step normalises columns: they sum to 1 - O(1e-6). Rows are only as close to 1
      // as 20 iterations get; with logits of sd 0.5 that is ~1e-6.
      double col_dev = 0, row_dev = 0;
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t l = 0; l < n; ++l) {
          double cs = 0, rs = 0;
          for (int64_t e = 0; e < n; ++e) {
            cs += comb[sz(t * nn + e * n + l)];
            rs += comb[sz(t * nn + l * n + e)];
          }
          col_dev = std::max(col_dev, std::abs(cs - 1.0));
          row_dev = std::max(row_dev, std::abs(rs - 1.0));
        }
      }
      EXPECT_LE(col_dev, 1e-5);
      if (sd <= 0.5f) {
        EXPECT_LE(row_dev, 1e-4);
      }
      std::printf("[sinkhorn n=%lld sd=%.1f] comb %.3g dlogits %.3g col %.3g row %.3g\n",
                  static_cast<long long>(n), static_cast<double>(sd), worst_c, worst_d, col_dev,
                  row_dev);
    }
  }
}

// ---- Coefficients -----------------------------------------------------------------------------

TEST(CudaHcCoefficients, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  Blas blas;
  GpuHcSaved saved;  // reused across shapes, as across steps
  uint64_t seed = 1000;
  for (const Shape& s : shapes()) {
    for (bool large : {false, true}) {
      SCOPED_TRACE(testing::Message() << "N " << s.tokens << " n " << s.n << " C " << s.c
                                      << (large ? " large" : " init"));
      const int64_t tokens = s.tokens, n = s.n, c = s.c;
      const int64_t k = nn::hc_coefficient_count(n), d = n * c;
      const HcParams p = sublayer_params(n, c, large, ++seed);
      const std::vector<float> x = random_vec(sz(tokens * d), ++seed, 1.7f);

      std::vector<float> pre_cpu(sz(tokens * n)), post_cpu(sz(tokens * n));
      std::vector<float> comb_cpu(sz(tokens * n * n));
      nn::HcCoefficientsSaved<float> saved_cpu;
      nn::hc_coefficients_forward(pre_cpu.data(), post_cpu.data(), comb_cpu.data(), saved_cpu,
                                  x.data(), p.phi.data(), p.b.data(), p.alpha.data(), tokens, n, c);

      const auto d_x = to_device(x);
      const auto d_phi = to_device(p.phi);
      const auto d_b = to_device(p.b);
      const auto d_alpha = to_device(p.alpha);
      DeviceBuffer<float> d_pre(pre_cpu.size()), d_post(post_cpu.size()), d_comb(comb_cpu.size());
      hc_coefficients_forward(d_pre.data(), d_post.data(), d_comb.data(), saved, d_x.data(),
                              d_phi.data(), d_b.data(), d_alpha.data(), tokens, n, c, blas);
      const double e_pre = normalised_error(to_host(d_pre), pre_cpu);
      const double e_post = normalised_error(to_host(d_post), post_cpu);
      const double e_comb = normalised_error(to_host(d_comb), comb_cpu);
      const double e_proj =
          normalised_error(to_host_prefix(saved.proj, sz(tokens * k)), saved_cpu.proj);
      const double e_rstd =
          normalised_error(to_host_prefix(saved.rstd, sz(tokens)), saved_cpu.rstd);
      EXPECT_LE(e_pre, kForwardTol);
      EXPECT_LE(e_post, kForwardTol);
      EXPECT_LE(e_comb, kForwardTol);
      EXPECT_LE(e_proj, kForwardTol);
      EXPECT_LE(e_rstd, kForwardTol);

      // Backward from the GPU's own saved state; every gradient starts non-zero.
      const std::vector<float> dpre = random_vec(pre_cpu.size(), ++seed);
      const std::vector<float> dpost = random_vec(post_cpu.size(), ++seed);
      const std::vector<float> dcomb = random_vec(comb_cpu.size(), ++seed);
      std::vector<float> dx_cpu(x.size()), dphi_cpu(p.phi.size()), db_cpu(p.b.size());
      std::vector<float> dalpha_cpu(3);
      const auto cpu_backward = [&] {
        nn::hc_coefficients_backward(dx_cpu.data(), dphi_cpu.data(), db_cpu.data(),
                                     dalpha_cpu.data(), dpre.data(), dpost.data(), dcomb.data(),
                                     x.data(), saved_cpu, p.phi.data(), p.b.data(), p.alpha.data(),
                                     tokens, n, c);
      };
      cpu_backward();  // from zero: the scale of each contribution
      const std::vector<float> dx0 = start_like(dx_cpu, ++seed);
      const std::vector<float> dphi0 = start_like(dphi_cpu, ++seed);
      const std::vector<float> db0 = start_like(db_cpu, ++seed);
      const std::vector<float> dalpha0 = start_like(dalpha_cpu, ++seed);
      dx_cpu = dx0, dphi_cpu = dphi0, db_cpu = db0, dalpha_cpu = dalpha0;
      cpu_backward();
      const auto d_dpre = to_device(dpre);
      const auto d_dpost = to_device(dpost);
      const auto d_dcomb = to_device(dcomb);
      auto d_dx = to_device(dx0);
      auto d_dphi = to_device(dphi0);
      auto d_db = to_device(db0);
      auto d_dalpha = to_device(dalpha0);
      hc_coefficients_backward(d_dx.data(), d_dphi.data(), d_db.data(), d_dalpha.data(),
                               d_dpre.data(), d_dpost.data(), d_dcomb.data(), d_x.data(), saved,
                               d_phi.data(), d_b.data(), d_alpha.data(), tokens, n, c, blas);
      const double e_dx = delta_error(to_host(d_dx), dx_cpu, dx0);
      const double e_dphi = delta_error(to_host(d_dphi), dphi_cpu, dphi0);
      const double e_db = delta_error(to_host(d_db), db_cpu, db0);
      const double e_dalpha = delta_error(to_host(d_dalpha), dalpha_cpu, dalpha0);
      EXPECT_LE(e_dx, kBackwardTol);
      EXPECT_LE(e_dphi, kBackwardTol);
      EXPECT_LE(e_db, kBackwardTol);
      EXPECT_LE(e_dalpha, kBackwardTol);
      std::printf(
          "[coefficients N=%lld n=%lld C=%lld %s] pre %.2g post %.2g comb %.2g proj %.2g rstd "
          "%.2g | dx %.2g dphi %.2g db %.2g dalpha %.2g\n",
          static_cast<long long>(tokens), static_cast<long long>(n), static_cast<long long>(c),
          large ? "large" : "init", e_pre, e_post, e_comb, e_proj, e_rstd, e_dx, e_dphi, e_db,
          e_dalpha);
    }
  }
}

TEST(CudaHcCoefficients, RepeatedCallsGiveIdenticalBits) {
  SKIP_WITHOUT_GPU();
  Blas blas;
  const int64_t tokens = 1000, n = 4, c = 257, k = nn::hc_coefficient_count(n);
  const HcParams p = sublayer_params(n, c, /*large=*/true, 7);
  const auto d_x = to_device(random_vec(sz(tokens * n * c), 8));
  const auto d_phi = to_device(p.phi);
  const auto d_b = to_device(p.b);
  const auto d_alpha = to_device(p.alpha);
  const auto d_dpre = to_device(random_vec(sz(tokens * n), 9));
  const auto d_dpost = to_device(random_vec(sz(tokens * n), 10));
  const auto d_dcomb = to_device(random_vec(sz(tokens * n * n), 11));
  std::vector<float> first[7];
  for (int run = 0; run < 2; ++run) {
    GpuHcSaved saved;
    DeviceBuffer<float> d_pre(sz(tokens * n)), d_post(sz(tokens * n)), d_comb(sz(tokens * n * n));
    hc_coefficients_forward(d_pre.data(), d_post.data(), d_comb.data(), saved, d_x.data(),
                            d_phi.data(), d_b.data(), d_alpha.data(), tokens, n, c, blas);
    auto d_dx = to_device(std::vector<float>(sz(tokens * n * c), 0.5f));
    auto d_dphi = to_device(std::vector<float>(p.phi.size(), 0.5f));
    auto d_db = to_device(std::vector<float>(sz(k), 0.5f));
    auto d_dalpha = to_device(std::vector<float>(3, 0.5f));
    hc_coefficients_backward(d_dx.data(), d_dphi.data(), d_db.data(), d_dalpha.data(),
                             d_dpre.data(), d_dpost.data(), d_dcomb.data(), d_x.data(), saved,
                             d_phi.data(), d_b.data(), d_alpha.data(), tokens, n, c, blas);
    const std::vector<float> got[7] = {to_host(d_pre),   to_host(d_post), to_host(d_comb),
                                       to_host(d_dx),    to_host(d_dphi), to_host(d_db),
                                       to_host(d_dalpha)};
    for (int i = 0; i < 7; ++i) {
      if (run == 0) {
        first[i] = got[i];
      } else {
        EXPECT_TRUE(same_bits(first[i], got[i])) << "output " << i;
      }
    }
  }
}

// ---- Read-out and write-back ------------------------------------------------------------------

TEST(CudaHcReadout, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(testing::Message() << "N " << s.tokens << " n " << s.n << " C " << s.c);
    const int64_t tokens = s.tokens, n = s.n, c = s.c;
    const std::vector<float> x = random_vec(sz(tokens * n * c), ++seed);
    std::vector<float> pre = random_vec(sz(tokens * n), ++seed);
    for (float& v : pre) v = 1.0f / (1.0f + std::exp(-v));
    std::vector<float> y_cpu(sz(tokens * c));
    nn::hc_readout_forward(y_cpu.data(), x.data(), pre.data(), tokens, n, c);
    const auto d_x = to_device(x);
    const auto d_pre = to_device(pre);
    DeviceBuffer<float> d_y(y_cpu.size());
    hc_readout_forward(d_y.data(), d_x.data(), d_pre.data(), tokens, n, c);
    const double e_y = normalised_error(to_host(d_y), y_cpu);
    EXPECT_LE(e_y, kForwardTol);

    const std::vector<float> dy = random_vec(y_cpu.size(), ++seed);
    const std::vector<float> dx0 = random_vec(x.size(), ++seed, 0.3f);
    const std::vector<float> dpre0 = random_vec(pre.size(), ++seed, 0.3f);
    std::vector<float> dx_cpu = dx0, dpre_cpu = dpre0;
    nn::hc_readout_backward(dx_cpu.data(), dpre_cpu.data(), dy.data(), x.data(), pre.data(), tokens,
                            n, c);
    const auto d_dy = to_device(dy);
    auto d_dx = to_device(dx0);
    auto d_dpre = to_device(dpre0);
    hc_readout_backward(d_dx.data(), d_dpre.data(), d_dy.data(), d_x.data(), d_pre.data(), tokens,
                        n, c);
    const double e_dx = delta_error(to_host(d_dx), dx_cpu, dx0);
    const double e_dpre = delta_error(to_host(d_dpre), dpre_cpu, dpre0);
    EXPECT_LE(e_dx, kBackwardTol);
    EXPECT_LE(e_dpre, kBackwardTol);
    std::printf("[readout N=%lld n=%lld C=%lld] y %.2g | dx %.2g dpre %.2g\n",
                static_cast<long long>(tokens), static_cast<long long>(n),
                static_cast<long long>(c), e_y, e_dx, e_dpre);
  }
}

TEST(CudaHcWriteBack, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 3000;
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(testing::Message() << "N " << s.tokens << " n " << s.n << " C " << s.c);
    const int64_t tokens = s.tokens, n = s.n, c = s.c;
    const std::vector<float> x = random_vec(sz(tokens * n * c), ++seed);
    const std::vector<float> f = random_vec(sz(tokens * c), ++seed);
    const std::vector<float> post = random_vec(sz(tokens * n), ++seed);
    const std::vector<float> comb = random_vec(sz(tokens * n * n), ++seed, 0.5f);
    std::vector<float> out_cpu(x.size());
    nn::hc_write_back_forward(out_cpu.data(), f.data(), x.data(), post.data(), comb.data(), tokens,
                              n, c);
    const auto d_x = to_device(x);
    const auto d_f = to_device(f);
    const auto d_post = to_device(post);
    const auto d_comb = to_device(comb);
    DeviceBuffer<float> d_out(x.size());
    hc_write_back_forward(d_out.data(), d_f.data(), d_x.data(), d_post.data(), d_comb.data(),
                          tokens, n, c);
    const double e_out = normalised_error(to_host(d_out), out_cpu);
    EXPECT_LE(e_out, kForwardTol);

    const std::vector<float> dout = random_vec(x.size(), ++seed);
    const std::vector<float> df0 = random_vec(f.size(), ++seed, 0.3f);
    const std::vector<float> dx0 = random_vec(x.size(), ++seed, 0.3f);
    const std::vector<float> dpost0 = random_vec(post.size(), ++seed, 0.3f);
    const std::vector<float> dcomb0 = random_vec(comb.size(), ++seed, 0.3f);
    std::vector<float> df_cpu = df0, dx_cpu = dx0, dpost_cpu = dpost0, dcomb_cpu = dcomb0;
    nn::hc_write_back_backward(df_cpu.data(), dx_cpu.data(), dpost_cpu.data(), dcomb_cpu.data(),
                               dout.data(), f.data(), x.data(), post.data(), comb.data(), tokens, n,
                               c);
    const auto d_dout = to_device(dout);
    auto d_df = to_device(df0);
    auto d_dx = to_device(dx0);
    auto d_dpost = to_device(dpost0);
    auto d_dcomb = to_device(dcomb0);
    hc_write_back_backward(d_df.data(), d_dx.data(), d_dpost.data(), d_dcomb.data(), d_dout.data(),
                           d_f.data(), d_x.data(), d_post.data(), d_comb.data(), tokens, n, c);
    const double e_df = delta_error(to_host(d_df), df_cpu, df0);
    const double e_dx = delta_error(to_host(d_dx), dx_cpu, dx0);
    const double e_dpost = delta_error(to_host(d_dpost), dpost_cpu, dpost0);
    const double e_dcomb = delta_error(to_host(d_dcomb), dcomb_cpu, dcomb0);
    EXPECT_LE(e_df, kBackwardTol);
    EXPECT_LE(e_dx, kBackwardTol);
    EXPECT_LE(e_dpost, kBackwardTol);
    EXPECT_LE(e_dcomb, kBackwardTol);
    std::printf(
        "[write-back N=%lld n=%lld C=%lld] out %.2g | df %.2g dx %.2g dpost %.2g dcomb "
        "%.2g\n",
        static_cast<long long>(tokens), static_cast<long long>(n), static_cast<long long>(c), e_out,
        e_df, e_dx, e_dpost, e_dcomb);
  }
}

// ---- Head read-out ----------------------------------------------------------------------------

TEST(CudaHcHeadReadout, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  Blas blas;
  GpuHcSaved saved;
  uint64_t seed = 4000;
  for (const Shape& s : shapes()) {
    for (bool large : {false, true}) {
      SCOPED_TRACE(testing::Message() << "N " << s.tokens << " n " << s.n << " C " << s.c
                                      << (large ? " large" : " init"));
      const int64_t tokens = s.tokens, n = s.n, c = s.c, d = n * c;
      const HcParams p = head_params(n, c, large, ++seed);
      const std::vector<float> x = random_vec(sz(tokens * d), ++seed, 0.8f);
      std::vector<float> y_cpu(sz(tokens * c)), pre_cpu(sz(tokens * n));
      nn::HcCoefficientsSaved<float> saved_cpu;
      nn::hc_head_readout_forward(y_cpu.data(), pre_cpu.data(), saved_cpu, x.data(), p.phi.data(),
                                  p.b.data(), p.alpha.data(), tokens, n, c);
      const auto d_x = to_device(x);
      const auto d_phi = to_device(p.phi);
      const auto d_b = to_device(p.b);
      const auto d_alpha = to_device(p.alpha);
      DeviceBuffer<float> d_y(y_cpu.size()), d_pre(pre_cpu.size());
      hc_head_readout_forward(d_y.data(), d_pre.data(), saved, d_x.data(), d_phi.data(), d_b.data(),
                              d_alpha.data(), tokens, n, c, blas);
      const double e_y = normalised_error(to_host(d_y), y_cpu);
      const double e_pre = normalised_error(to_host(d_pre), pre_cpu);
      const double e_proj =
          normalised_error(to_host_prefix(saved.proj, sz(tokens * n)), saved_cpu.proj);
      const double e_rstd =
          normalised_error(to_host_prefix(saved.rstd, sz(tokens)), saved_cpu.rstd);
      EXPECT_LE(e_y, kForwardTol);
      EXPECT_LE(e_pre, kForwardTol);
      EXPECT_LE(e_proj, kForwardTol);
      EXPECT_LE(e_rstd, kForwardTol);

      const std::vector<float> dy = random_vec(y_cpu.size(), ++seed);
      std::vector<float> dx_cpu(x.size()), dphi_cpu(p.phi.size()), db_cpu(p.b.size());
      std::vector<float> dalpha_cpu(1);
      const auto cpu_backward = [&] {
        nn::hc_head_readout_backward(
            dx_cpu.data(), dphi_cpu.data(), db_cpu.data(), dalpha_cpu.data(), dy.data(), x.data(),
            pre_cpu.data(), saved_cpu, p.phi.data(), p.b.data(), p.alpha.data(), tokens, n, c);
      };
      cpu_backward();  // from zero: the scale of each contribution
      const std::vector<float> dx0 = start_like(dx_cpu, ++seed);
      const std::vector<float> dphi0 = start_like(dphi_cpu, ++seed);
      const std::vector<float> db0 = start_like(db_cpu, ++seed);
      const std::vector<float> dalpha0 = start_like(dalpha_cpu, ++seed);
      dx_cpu = dx0, dphi_cpu = dphi0, db_cpu = db0, dalpha_cpu = dalpha0;
      cpu_backward();
      const auto d_dy = to_device(dy);
      auto d_dx = to_device(dx0);
      auto d_dphi = to_device(dphi0);
      auto d_db = to_device(db0);
      auto d_dalpha = to_device(dalpha0);
      hc_head_readout_backward(d_dx.data(), d_dphi.data(), d_db.data(), d_dalpha.data(),
                               d_dy.data(), d_x.data(), d_pre.data(), saved, d_phi.data(),
                               d_b.data(), d_alpha.data(), tokens, n, c, blas);
      const double e_dx = delta_error(to_host(d_dx), dx_cpu, dx0);
      const double e_dphi = delta_error(to_host(d_dphi), dphi_cpu, dphi0);
      const double e_db = delta_error(to_host(d_db), db_cpu, db0);
      const double e_dalpha = delta_error(to_host(d_dalpha), dalpha_cpu, dalpha0);
      EXPECT_LE(e_dx, kBackwardTol);
      EXPECT_LE(e_dphi, kBackwardTol);
      EXPECT_LE(e_db, kBackwardTol);
      EXPECT_LE(e_dalpha, kBackwardTol);
      std::printf(
          "[head N=%lld n=%lld C=%lld %s] y %.2g pre %.2g proj %.2g rstd %.2g | dx %.2g "
          "dphi %.2g db %.2g dalpha %.2g\n",
          static_cast<long long>(tokens), static_cast<long long>(n), static_cast<long long>(c),
          large ? "large" : "init", e_y, e_pre, e_proj, e_rstd, e_dx, e_dphi, e_db, e_dalpha);
    }
  }
}

// ---- Determinism of the element-wise and per-token kernels -----------------------------------

TEST(CudaHcReadout, RepeatedCallsGiveIdenticalBits) {
  SKIP_WITHOUT_GPU();
  Blas blas;
  const int64_t tokens = 300, n = 4, c = 257;
  const HcParams p = head_params(n, c, /*large=*/true, 21);
  const auto d_x = to_device(random_vec(sz(tokens * n * c), 22));
  const auto d_f = to_device(random_vec(sz(tokens * c), 23));
  const auto d_dy = to_device(random_vec(sz(tokens * c), 24));
  const auto d_dout = to_device(random_vec(sz(tokens * n * c), 25));
  const auto d_post = to_device(random_vec(sz(tokens * n), 26));
  const auto d_comb = to_device(random_vec(sz(tokens * n * n), 27));
  const auto d_phi = to_device(p.phi);
  const auto d_b = to_device(p.b);
  const auto d_alpha = to_device(p.alpha);
  std::vector<float> first[6];
  for (int run = 0; run < 2; ++run) {
    GpuHcSaved saved;
    DeviceBuffer<float> d_y(sz(tokens * c)), d_pre(sz(tokens * n));
    hc_head_readout_forward(d_y.data(), d_pre.data(), saved, d_x.data(), d_phi.data(), d_b.data(),
                            d_alpha.data(), tokens, n, c, blas);
    auto d_dx = to_device(std::vector<float>(sz(tokens * n * c), 0.25f));
    auto d_dphi = to_device(std::vector<float>(p.phi.size(), 0.25f));
    auto d_db = to_device(std::vector<float>(sz(n), 0.25f));
    auto d_dalpha = to_device(std::vector<float>(1, 0.25f));
    hc_head_readout_backward(d_dx.data(), d_dphi.data(), d_db.data(), d_dalpha.data(), d_dy.data(),
                             d_x.data(), d_pre.data(), saved, d_phi.data(), d_b.data(),
                             d_alpha.data(), tokens, n, c, blas);
    auto d_df = to_device(std::vector<float>(sz(tokens * c), 0.0f));
    auto d_dpost = to_device(std::vector<float>(sz(tokens * n), 0.0f));
    auto d_dcomb = to_device(std::vector<float>(sz(tokens * n * n), 0.0f));
    hc_write_back_backward(d_df.data(), d_dx.data(), d_dpost.data(), d_dcomb.data(), d_dout.data(),
                           d_f.data(), d_x.data(), d_post.data(), d_comb.data(), tokens, n, c);
    const std::vector<float> got[6] = {to_host(d_y),  to_host(d_dx),     to_host(d_dphi),
                                       to_host(d_db), to_host(d_dalpha), to_host(d_dcomb)};
    for (int i = 0; i < 6; ++i) {
      if (run == 0) {
        first[i] = got[i];
      } else {
        EXPECT_TRUE(same_bits(first[i], got[i])) << "output " << i;
      }
    }
  }
}

// ---- Argument checks --------------------------------------------------------------------------

TEST(CudaHcArguments, BadSizesThrowInputError) {
#ifndef ENGRAM_HAVE_CUDA
  GTEST_SKIP() << "argument checks are part of the CUDA build";
#else
  // The checks run before any device work, so null pointers are fine here; the Blas needs a GPU.
  float* p = nullptr;
  EXPECT_THROW(hc_sinkhorn_forward(p, p, 4, 0), InputError);
  EXPECT_THROW(hc_sinkhorn_forward(p, p, 4, kHcMaxStreams + 1), InputError);
  EXPECT_THROW(hc_sinkhorn_backward(p, p, p, -1, 2), InputError);
  EXPECT_THROW(hc_readout_forward(p, p, p, 4, 2, 0), InputError);
  EXPECT_THROW(hc_readout_backward(p, p, p, p, p, -3, 2, 8), InputError);
  EXPECT_THROW(hc_write_back_forward(p, p, p, p, p, 4, 9, 8), InputError);
  EXPECT_THROW(hc_write_back_backward(p, p, p, p, p, p, p, p, p, 4, 2, -1), InputError);
  // N = 0 is nothing to do.
  EXPECT_NO_THROW(hc_readout_forward(p, p, p, 0, 2, 8));
  if (device_count() == 0) return;
  Blas blas;
  GpuHcSaved saved;
  EXPECT_THROW(hc_coefficients_forward(p, p, p, saved, p, p, p, p, 4, 0, 8, blas), InputError);
  EXPECT_THROW(hc_coefficients_forward(p, p, p, saved, p, p, p, p, 4, 2, 0, blas), InputError);
  EXPECT_THROW(hc_head_readout_forward(p, p, saved, p, p, p, p, -1, 2, 8, blas), InputError);
  // A backward needs a saved state of at least N tokens.
  EXPECT_THROW(hc_coefficients_backward(p, p, p, p, p, p, p, p, saved, p, p, p, 4, 2, 8, blas),
               InputError);
  EXPECT_THROW(hc_head_readout_backward(p, p, p, p, p, p, p, saved, p, p, p, 4, 2, 8, blas),
               InputError);
#endif
}

}  // namespace
}  // namespace engram::cuda
