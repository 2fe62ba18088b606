// The GPU non-GEMM ops (engram/cuda/ops.h) against the CPU functions they mirror, on random
// inputs of several shapes (skipped without a GPU). Errors are normalised by the largest CPU
// value: max |gpu - cpu| / max(max |cpu|, 1e-6).
#include "engram/cuda/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/nn/attention.h"
#include "engram/nn/engram_layer.h"
#include "engram/nn/loss.h"
#include "engram/nn/mlp.h"
#include "engram/nn/rmsnorm.h"
#include "engram/tensor/gemm.h"
#include "engram/train/optimizer.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

using test_util::random_vec;
using test_util::to_device;
using test_util::to_host;
using test_util::normalised_error;

constexpr double kTol = 1e-5;

// ---- RMSNorm ----------------------------------------------------------------------------------

struct NormCase {
  int64_t n, c, x_stride, y_stride;
};

TEST(CudaOpsRmsNorm, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const NormCase cases[] = {{1, 1, 1, 1},     {7, 33, 33, 33},     {64, 1024, 1024, 1024},
                            {300, 4096, 4096, 4096}, {16, 100, 130, 120}, {1000, 256, 512, 256}};
  uint64_t seed = 1;
  for (const NormCase& k : cases) {
    SCOPED_TRACE(testing::Message() << "n " << k.n << " c " << k.c << " strides " << k.x_stride
                                    << "/" << k.y_stride);
    const nn::RowLayout xl{k.n, k.c, k.x_stride};
    const auto xs = static_cast<size_t>(k.n * k.x_stride);
    const auto ys = static_cast<size_t>(k.n * k.y_stride);
    const std::vector<float> x = random_vec(xs, ++seed, 2.0f);
    std::vector<float> w = random_vec(static_cast<size_t>(k.c), ++seed);
    const std::vector<float> y0 = random_vec(ys, ++seed);  // padding must be left alone
    const float eps = 1e-6f;

    std::vector<float> y_cpu = y0, rstd_cpu(static_cast<size_t>(k.n));
    nn::rmsnorm_forward<float>(y_cpu.data(), k.y_stride, rstd_cpu.data(), x.data(), xl, w.data(),
                               eps);
    const auto d_x = to_device(x);
    const auto d_w = to_device(w);
    auto d_y = to_device(y0);
    DeviceBuffer<float> d_rstd(static_cast<size_t>(k.n));
    rmsnorm_forward(d_y.data(), k.y_stride, d_rstd.data(), d_x.data(), xl, d_w.data(), eps);
    const double e_y = normalised_error(to_host(d_y), y_cpu);
    const double e_r = normalised_error(to_host(d_rstd), rstd_cpu);
    EXPECT_LE(e_y, kTol);
    EXPECT_LE(e_r, kTol);

    // Backward, with dy in y's layout and dx accumulated into x's layout.
    const std::vector<float> dy = random_vec(ys, ++seed);
    const std::vector<float> dx0 = random_vec(xs, ++seed);
    const std::vector<float> dw0 = random_vec(static_cast<size_t>(k.c), ++seed);
    std::vector<float> dx_cpu = dx0, dw_cpu = dw0;
    nn::rmsnorm_backward<float>(dx_cpu.data(), k.x_stride, dw_cpu.data(), dy.data(), k.y_stride,
                                x.data(), xl, w.data(), rstd_cpu.data());
    auto d_dx = to_device(dx0);
    auto d_dw = to_device(dw0);
    const auto d_dy = to_device(dy);
    const auto d_rstd_cpu = to_device(rstd_cpu);
    rmsnorm_backward(d_dx.data(), k.x_stride, d_dw.data(), d_dy.data(), k.y_stride, d_x.data(), xl,
                     d_w.data(), d_rstd_cpu.data());
    const double e_dx = normalised_error(to_host(d_dx), dx_cpu);
    const double e_dw = normalised_error(to_host(d_dw), dw_cpu);
    EXPECT_LE(e_dx, kTol);
    EXPECT_LE(e_dw, kTol);
    std::printf("[rmsnorm n=%lld c=%lld] y %.3g rstd %.3g dx %.3g dw %.3g\n",
                static_cast<long long>(k.n), static_cast<long long>(k.c), e_y, e_r, e_dx, e_dw);
  }
}

TEST(CudaOpsRmsNorm, BadArgumentsThrow) {
  // The checks run before any CUDA call; a build without CUDA throws its "built without CUDA".
  if (!engram::cuda::compiled_with_cuda()) GTEST_SKIP() << "built without CUDA";
  EXPECT_THROW(rmsnorm_forward(nullptr, 4, nullptr, nullptr, {2, 4, 3}, nullptr, 1e-6f),
               InputError);
  EXPECT_THROW(rmsnorm_backward(nullptr, 4, nullptr, nullptr, 4, nullptr, {-1, 4, 4}, nullptr,
                                nullptr),
               InputError);
}

// ---- SwiGLU -----------------------------------------------------------------------------------

TEST(CudaOpsSwiGlu, GateMatchesCpuMath) {
  SKIP_WITHOUT_GPU();
  for (const int64_t size : {int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 3}}) {
    SCOPED_TRACE(size);
    const auto n = static_cast<size_t>(size);
    const std::vector<float> a = random_vec(n, 11, 3.0f), b = random_vec(n, 12, 2.0f);
    const std::vector<float> dh = random_vec(n, 13);
    // src/nn/mlp.cpp's elementwise math, in the same order.
    std::vector<float> h(n), da(n), db(n);
    for (size_t i = 0; i < n; ++i) {
      const float s = 1.0f / (1.0f + std::exp(-a[i]));
      h[i] = a[i] * s * b[i];
      da[i] = dh[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
      db[i] = dh[i] * a[i] * s;
    }
    const auto d_a = to_device(a), d_b = to_device(b), d_dh = to_device(dh);
    DeviceBuffer<float> d_h(n), d_da(n), d_db(n);
    swiglu_gate_forward(d_h.data(), d_a.data(), d_b.data(), size);
    swiglu_gate_backward(d_da.data(), d_db.data(), d_dh.data(), d_a.data(), d_b.data(), size);
    const double e_h = normalised_error(to_host(d_h), h);
    const double e_da = normalised_error(to_host(d_da), da);
    const double e_db = normalised_error(to_host(d_db), db);
    EXPECT_LE(e_h, kTol);
    EXPECT_LE(e_da, kTol);
    EXPECT_LE(e_db, kTol);
    // In place: da written over dh.
    auto d_inplace = to_device(dh);
    swiglu_gate_backward(d_inplace.data(), d_db.data(), d_inplace.data(), d_a.data(), d_b.data(),
                         size);
    EXPECT_LE(normalised_error(to_host(d_inplace), da), kTol);
    std::printf("[swiglu size=%lld] h %.3g da %.3g db %.3g\n", static_cast<long long>(size), e_h,
                e_da, e_db);
  }
}

// The whole MLP with the GEMMs on the host and the gate on the GPU, against nn::swiglu_*.
TEST(CudaOpsSwiGlu, ComposesToTheCpuMlp) {
  SKIP_WITHOUT_GPU();
  const int64_t N = 24, C = 40, H = 72;
  const auto nc = static_cast<size_t>(N * C), hc = static_cast<size_t>(H * C),
             nh = static_cast<size_t>(N * H);
  const std::vector<float> x = random_vec(nc, 21), w1 = random_vec(hc, 22, 0.3f),
                           w3 = random_vec(hc, 23, 0.3f), w2 = random_vec(hc, 24, 0.3f),
                           dy = random_vec(nc, 25);
  nn::SwiGluSaved<float> saved;
  std::vector<float> y_cpu(nc);
  nn::swiglu_forward<float>(y_cpu.data(), saved, x.data(), w1.data(), w3.data(), w2.data(), N, C,
                            H);
  std::vector<float> dx_cpu(nc, 0.0f), dw1_cpu(hc, 0.0f), dw3_cpu(hc, 0.0f), dw2_cpu(hc, 0.0f);
  nn::swiglu_backward<float>(dx_cpu.data(), dw1_cpu.data(), dw3_cpu.data(), dw2_cpu.data(),
                             dy.data(), x.data(), saved, w1.data(), w3.data(), w2.data(), N, C, H);

  const auto d_a = to_device(saved.h1), d_b = to_device(saved.h3);
  DeviceBuffer<float> d_g(nh);
  swiglu_gate_forward(d_g.data(), d_a.data(), d_b.data(), N * H);
  const std::vector<float> g = to_host(d_g);
  std::vector<float> y(nc);
  gemm<float>(Trans::kNo, Trans::kYes, N, C, H, 1.0f, g.data(), H, w2.data(), H, 0.0f, y.data(), C);
  EXPECT_LE(normalised_error(y, y_cpu), kTol);

  std::vector<float> dg(nh), dw2(hc, 0.0f);
  gemm<float>(Trans::kYes, Trans::kNo, C, H, N, 1.0f, dy.data(), C, g.data(), H, 1.0f, dw2.data(),
              H);
  gemm<float>(Trans::kNo, Trans::kNo, N, H, C, 1.0f, dy.data(), C, w2.data(), H, 0.0f, dg.data(), H);
  const auto d_dg = to_device(dg);
  DeviceBuffer<float> d_da(nh), d_db(nh);
  swiglu_gate_backward(d_da.data(), d_db.data(), d_dg.data(), d_a.data(), d_b.data(), N * H);
  const std::vector<float> da = to_host(d_da), db = to_host(d_db);
  std::vector<float> dx(nc, 0.0f), dw1(hc, 0.0f), dw3(hc, 0.0f);
  gemm<float>(Trans::kYes, Trans::kNo, H, C, N, 1.0f, da.data(), H, x.data(), C, 1.0f, dw1.data(),
              C);
  gemm<float>(Trans::kYes, Trans::kNo, H, C, N, 1.0f, db.data(), H, x.data(), C, 1.0f, dw3.data(),
              C);
  gemm<float>(Trans::kNo, Trans::kNo, N, C, H, 1.0f, da.data(), H, w1.data(), C, 1.0f, dx.data(), C);
  gemm<float>(Trans::kNo, Trans::kNo, N, C, H, 1.0f, db.data(), H, w3.data(), C, 1.0f, dx.data(), C);
  EXPECT_LE(normalised_error(dw2, dw2_cpu), kTol);
  EXPECT_LE(normalised_error(dw1, dw1_cpu), kTol);
  EXPECT_LE(normalised_error(dw3, dw3_cpu), kTol);
  EXPECT_LE(normalised_error(dx, dx_cpu), kTol);
}

// ---- RoPE -------------------------------------------------------------------------------------

TEST(CudaOpsRope, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t b, t, h, hd;
    double theta;
  };
  const Case cases[] = {{2, 5, 3, 8, 10000.0},
                        {1, 37, 4, 64, 10000.0},
                        {3, 128, 8, 128, 500000.0},
                        {1, 4096, 2, 2, 10000.0},
                        {2, 2048, 4, 96, 1e6}};
  uint64_t seed = 100;
  for (const Case& k : cases) {
    SCOPED_TRACE(testing::Message() << k.b << "x" << k.t << "x" << k.h << "x" << k.hd);
    const auto size = static_cast<size_t>(k.b * k.t * k.h * k.hd);
    const std::vector<float> x = random_vec(size, ++seed);
    std::vector<float> fwd = x, bwd = x;
    nn::rope_forward<float>(fwd.data(), k.b, k.t, k.h, k.hd, k.theta);
    nn::rope_backward<float>(bwd.data(), k.b, k.t, k.h, k.hd, k.theta);
    auto d_f = to_device(x), d_b = to_device(x);
    rope_forward(d_f.data(), k.b, k.t, k.h, k.hd, k.theta);
    rope_backward(d_b.data(), k.b, k.t, k.h, k.hd, k.theta);
    const double e_f = normalised_error(to_host(d_f), fwd);
    const double e_b = normalised_error(to_host(d_b), bwd);
    EXPECT_LE(e_f, kTol);
    EXPECT_LE(e_b, kTol);
    std::printf("[rope %lldx%lldx%lldx%lld] fwd %.3g bwd %.3g\n", static_cast<long long>(k.b),
                static_cast<long long>(k.t), static_cast<long long>(k.h),
                static_cast<long long>(k.hd), e_f, e_b);
  }
  EXPECT_THROW(rope_forward(nullptr, 1, 1, 1, 3, 10000.0), ConfigError);
  EXPECT_THROW(rope_backward(nullptr, 1, 1, 1, 4, 0.0), ConfigError);
}

// ---- Cross-entropy ----------------------------------------------------------------------------

struct CeCase {
  int64_t n, v;
  float scale;
  int ignore_every;  // every k-th target is -100 (0: none); -1: all ignored
};

TEST(CudaOpsCrossEntropy, LossAndGradientMatchCpu) {
  SKIP_WITHOUT_GPU();
  const CeCase cases[] = {{1, 1, 1.0f, 0},      {5, 7, 1.0f, 2},       {33, 1000, 0.5f, 3},
                          {16, 128815, 1.0f, 4}, {6, 128815, 1.0f, -1}, {300, 4096, 2.0f, 5}};
  uint64_t seed = 200;
  for (const CeCase& k : cases) {
    SCOPED_TRACE(testing::Message() << "n " << k.n << " v " << k.v);
    const auto size = static_cast<size_t>(k.n * k.v);
    const std::vector<float> logits = random_vec(size, ++seed, 3.0f);
    std::mt19937_64 rng(++seed);
    std::vector<int64_t> targets(static_cast<size_t>(k.n));
    for (size_t i = 0; i < targets.size(); ++i) {
      const bool ignored =
          k.ignore_every < 0 || (k.ignore_every > 0 && i % static_cast<size_t>(k.ignore_every) == 1);
      targets[i] = ignored ? -100 : static_cast<int64_t>(rng() % static_cast<uint64_t>(k.v));
    }
    std::vector<float> d_cpu(size);
    int64_t counted_cpu = -1;
    const double loss_cpu = nn::cross_entropy_forward_backward<float>(
        d_cpu.data(), logits.data(), targets.data(), k.n, k.v, k.scale, &counted_cpu);

    const auto d_logits = to_device(logits);
    const auto d_targets = to_device(targets);
    DeviceBuffer<float> d_d(size), d_row(static_cast<size_t>(k.n));
    int64_t counted = -1;
    const double loss = cross_entropy_forward_backward(d_d.data(), d_logits.data(),
                                                       d_targets.data(), k.n, k.v, k.scale,
                                                       d_row.data(), &counted);
    EXPECT_EQ(counted, counted_cpu);
    const double e_loss = std::abs(loss - loss_cpu) / std::max(std::abs(loss_cpu), 1e-12);
    if (counted_cpu == 0) {
      EXPECT_EQ(loss, 0.0);
    } else {
      EXPECT_LE(e_loss, 1e-6) << loss << " vs " << loss_cpu;
    }
    const std::vector<float> d_gpu = to_host(d_d);
    const double e_d = normalised_error(d_gpu, d_cpu);
    EXPECT_LE(e_d, kTol);
    if (counted_cpu == 0) {
      EXPECT_TRUE(std::all_of(d_gpu.begin(), d_gpu.end(), [](float x) { return x == 0.0f; }));
    }
    // Per-row losses: each row alone on the CPU.
    const std::vector<float> rows = to_host(d_row);
    double e_row = 0;
    for (int64_t r = 0; r < k.n; r += std::max<int64_t>(1, k.n / 8)) {
      const auto ur = static_cast<size_t>(r);
      const double want = targets[ur] < 0 ? 0.0
                                          : nn::cross_entropy_forward<float>(
                                                logits.data() + r * k.v, &targets[ur], 1, k.v);
      e_row = std::max(e_row, std::abs(rows[ur] - want) / std::max(std::abs(want), 1e-6));
    }
    EXPECT_LE(e_row, kTol);
    // Forward only, and in place (dlogits == logits): the same loss and gradient.
    EXPECT_EQ(cross_entropy_forward_backward(nullptr, d_logits.data(), d_targets.data(), k.n, k.v,
                                             k.scale),
              loss);
    auto d_inplace = to_device(logits);
    EXPECT_EQ(cross_entropy_forward_backward(d_inplace.data(), d_inplace.data(), d_targets.data(),
                                             k.n, k.v, k.scale),
              loss);
    EXPECT_EQ(normalised_error(to_host(d_inplace), d_gpu), 0.0);
    std::printf("[cross-entropy n=%lld v=%lld] loss %.17g (cpu %.17g) rel %.3g dlogits %.3g "
                "row %.3g\n",
                static_cast<long long>(k.n), static_cast<long long>(k.v), loss, loss_cpu, e_loss,
                e_d, e_row);
  }
}

TEST(CudaOpsCrossEntropy, TargetOutOfRangeThrows) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> logits = random_vec(3 * 10, 5);
  const std::vector<int64_t> targets = {1, 10, 12};
  const auto d_logits = to_device(logits);
  const auto d_targets = to_device(targets);
  DeviceBuffer<float> d_d(logits.size());
  EXPECT_THROW(cross_entropy_forward_backward(d_d.data(), d_logits.data(), d_targets.data(), 3, 10),
               InputError);
  EXPECT_EQ(cross_entropy_forward_backward(d_d.data(), d_logits.data(), d_targets.data(), 0, 10),
            0.0);
}

// ---- Adam -------------------------------------------------------------------------------------

double relative_error(const std::vector<float>& got, std::span<const float> want) {
  return normalised_error(got, std::vector<float>(want.begin(), want.end()));
}

TEST(CudaOpsAdam, AdamWMatchesCpuOverThreeSteps) {
  SKIP_WITHOUT_GPU();
  const size_t n1 = 100003, n2 = 517;
  train::AdamWOptions opt;
  opt.weight_decay = 0.1;
  std::vector<float> p1 = random_vec(n1, 31), p2 = random_vec(n2, 32);
  std::vector<float> g1(n1), g2(n2);
  train::AdamW cpu(opt);
  cpu.add_group("w", p1.data(), g1.data(), static_cast<int64_t>(n1), true);
  cpu.add_group("norm", p2.data(), g2.data(), static_cast<int64_t>(n2), false);
  auto d_p1 = to_device(p1), d_p2 = to_device(p2);
  auto d_m1 = to_device(std::vector<float>(n1, 0.0f)), d_v1 = to_device(std::vector<float>(n1, 0.0f));
  auto d_m2 = to_device(std::vector<float>(n2, 0.0f)), d_v2 = to_device(std::vector<float>(n2, 0.0f));
  const AdamHyper hyper{opt.adam.beta1, opt.adam.beta2, opt.adam.eps};
  const double lrs[] = {1e-3, 3e-4, 2e-3};
  for (int step = 0; step < 3; ++step) {
    // Copied into the registered buffers (the CPU optimizer holds their addresses).
    const std::vector<float> new_g1 =
        random_vec(n1, 40 + static_cast<uint64_t>(step), step == 1 ? 1e-4f : 1.0f);
    const std::vector<float> new_g2 = random_vec(n2, 50 + static_cast<uint64_t>(step));
    std::copy(new_g1.begin(), new_g1.end(), g1.begin());
    std::copy(new_g2.begin(), new_g2.end(), g2.begin());
    const auto d_g1 = to_device(g1), d_g2 = to_device(g2);
    cpu.step(lrs[step]);
    adamw_step(d_p1.data(), d_g1.data(), d_m1.data(), d_v1.data(), static_cast<int64_t>(n1),
               lrs[step], step + 1, hyper, opt.weight_decay);
    adamw_step(d_p2.data(), d_g2.data(), d_m2.data(), d_v2.data(), static_cast<int64_t>(n2),
               lrs[step], step + 1, hyper, 0.0);
  }
  const auto state = cpu.state();
  double worst = 0;
  for (const double e : {relative_error(to_host(d_p1), p1), relative_error(to_host(d_p2), p2),
                         relative_error(to_host(d_m1), state[0].values),
                         relative_error(to_host(d_v1), state[1].values),
                         relative_error(to_host(d_m2), state[2].values),
                         relative_error(to_host(d_v2), state[3].values)}) {
    EXPECT_LE(e, 1e-6);
    worst = std::max(worst, e);
  }
  std::printf("[adamw] worst relative error after 3 steps %.3g\n", worst);
  EXPECT_THROW(adamw_step(nullptr, nullptr, nullptr, nullptr, 1, -1.0, 1, hyper, 0.0), InputError);
  EXPECT_THROW(adamw_step(nullptr, nullptr, nullptr, nullptr, 1, 1e-3, 0, hyper, 0.0), InputError);
}

TEST(CudaOpsAdam, SparseRowAdamMatchesCpuIncludingSkippedRows) {
  SKIP_WITHOUT_GPU();
  for (const int64_t width : {int64_t{37}, int64_t{512}}) {
    SCOPED_TRACE(width);
    const int64_t rows = 50;
    const auto size = static_cast<size_t>(rows * width);
    std::vector<float> table = random_vec(size, 60);
    const std::vector<float> table0 = table;
    train::SparseRowAdam cpu(table.data(), rows, width);
    auto d_table = to_device(table0);
    auto d_m = to_device(std::vector<float>(size, 0.0f));
    auto d_v = to_device(std::vector<float>(size, 0.0f));
    auto d_last = to_device(std::vector<int64_t>(static_cast<size_t>(rows), 0));
    // Row 1 and 7 skip step 2; row 5 skips step 3; row 9 first moves at step 2; 49 at step 3.
    const std::vector<std::vector<int64_t>> step_rows = {{1, 5, 7, 20}, {5, 9}, {1, 7, 9, 49}};
    const double lrs[] = {1e-2, 5e-3, 2e-2};
    const AdamHyper hyper{};
    for (size_t s = 0; s < step_rows.size(); ++s) {
      nn::SparseRowGrad<float> g;
      g.rows = step_rows[s];
      g.width = width;
      g.values = random_vec(g.rows.size() * static_cast<size_t>(width), 70 + s);
      cpu.step(g, lrs[s]);
      const auto d_rows = to_device(g.rows);
      const auto d_values = to_device(g.values);
      sparse_row_adam_step(d_table.data(), d_m.data(), d_v.data(), d_last.data(), rows, width,
                           d_rows.data(), d_values.data(), static_cast<int64_t>(g.rows.size()),
                           lrs[s], static_cast<int64_t>(s + 1), hyper);
    }
    const auto state = cpu.state();
    const double e_p = relative_error(to_host(d_table), table);
    const double e_m = relative_error(to_host(d_m), state[0].values);
    const double e_v = relative_error(to_host(d_v), state[1].values);
    EXPECT_LE(e_p, 1e-6);
    EXPECT_LE(e_m, 1e-6);
    EXPECT_LE(e_v, 1e-6);
    const std::vector<int64_t> last = to_host(d_last);
    const std::span<int64_t> last_cpu = cpu.last_step();
    EXPECT_TRUE(std::equal(last.begin(), last.end(), last_cpu.begin(), last_cpu.end()));
    // Untouched rows keep their values.
    const std::vector<float> t_gpu = to_host(d_table);
    EXPECT_TRUE(std::equal(t_gpu.begin() + 2 * width, t_gpu.begin() + 3 * width,
                           table0.begin() + 2 * width));
    std::printf("[sparse adam width=%lld] table %.3g m %.3g v %.3g\n",
                static_cast<long long>(width), e_p, e_m, e_v);
  }
}

}  // namespace
}  // namespace engram::cuda
