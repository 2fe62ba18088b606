// The GPU causal attention (engram/cuda/attention.h) against float64 CPU references written
// here (forward: softmax attention and its log-sum-exp; backward: the gradients of softmax
// attention from the full probability matrix), on MHA and GQA shapes whose sequence lengths sit
// on both sides of the 64-row tiles. bf16 runs are compared with the reference computed from the
// bf16-rounded inputs, for both kernels (tensor cores, and the float32-math kernel), and the two
// kernels with each other on longer sequences. Decode is checked against the forward, with NaN in
// the cache beyond each sequence's length. Errors are normalised by the largest reference value:
// max |gpu - cpu| / max(max |cpu|, floor). Tests that need a GPU skip without one; the argument
// checks run everywhere.
#include "engram/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/tensor/dtype.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

using Shape = FlashAttentionShape;

const char* type_name(DType t) {
  return t == DType::kBF16 ? "bf16" : "f32";
}

size_t count(int64_t a, int64_t b, int64_t c, int64_t d) {
  return static_cast<size_t>(a * b * c * d);
}

// Normal(0, sd) values, rounded to bf16 when `type` is bf16 (so that the reference sees exactly
// what the GPU reads).
std::vector<float> random_values(size_t size, uint64_t seed, DType type, float sd = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(size);
  for (float& x : v) {
    x = normal(rng);
    if (type == DType::kBF16) x = bf16_to_float(float_to_bf16(x));
  }
  return v;
}

// A device array of float32 or bf16 elements, uploaded from and downloaded to float32.
class DeviceTensor {
 public:
  DeviceTensor(const std::vector<float>& host, DType type) : type_(type) {
    if (type == DType::kBF16) {
      std::vector<bf16> b(host.size());
      for (size_t i = 0; i < host.size(); ++i) b[i] = float_to_bf16(host[i]);
      b16_ = DeviceBuffer<bf16>(std::span<const bf16>(b));
    } else {
      f32_ = DeviceBuffer<float>(std::span<const float>(host));
    }
  }
  DeviceTensor(size_t size, DType type) : DeviceTensor(std::vector<float>(size, 0.0f), type) {}

  void* data() { return type_ == DType::kBF16 ? static_cast<void*>(b16_.data()) : f32_.data(); }
  std::vector<float> download() const {
    if (type_ == DType::kBF16) {
      std::vector<bf16> b(b16_.size());
      b16_.download(b);
      std::vector<float> f(b.size());
      for (size_t i = 0; i < b.size(); ++i) f[i] = bf16_to_float(b[i]);
      return f;
    }
    std::vector<float> f(f32_.size());
    f32_.download(f);
    return f;
  }

 private:
  DType type_;
  DeviceBuffer<float> f32_;
  DeviceBuffer<bf16> b16_;
};

std::vector<float> download(const DeviceBuffer<float>& d) {
  std::vector<float> h(d.size());
  d.download(h);
  return h;
}

// `floor` bounds the normaliser from below, for results that cancel to (nearly) zero.
double normalised_error(const std::vector<float>& got, const std::vector<double>& want,
                        double floor = 1e-6) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, scale = floor;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double g = got[i], w = want[i];
    diff = std::isnan(g) != std::isnan(w) ? INFINITY : std::max(diff, std::abs(g - w));
    scale = std::max(scale, std::abs(w));
  }
  return diff / scale;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (const double x : v) m = std::max(m, std::abs(x));
  return m;
}

double max_abs_error(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
  }
  return diff;
}

// ---- float64 references -----------------------------------------------------------------------

struct Inputs {
  std::vector<float> q, k, v;  // (B, T, Hq, hd), (B, T, Hkv, hd) x 2
};

Inputs random_inputs(const Shape& s, DType type, uint64_t seed, float q_sd = 1.0f) {
  return {random_values(count(s.batch, s.seq, s.heads, s.head_dim), seed, type, q_sd),
          random_values(count(s.batch, s.seq, s.kv_heads, s.head_dim), seed + 1, type),
          random_values(count(s.batch, s.seq, s.kv_heads, s.head_dim), seed + 2, type)};
}

// Row offsets into (B, T, H, hd) arrays.
size_t row(const Shape& s, int64_t heads, int64_t b, int64_t t, int64_t h) {
  return static_cast<size_t>(((b * s.seq + t) * heads + h) * s.head_dim);
}

// probs[u] for u <= t, the causal softmax of query (b, t, h); returns the log-sum-exp.
double softmax_row(std::vector<double>& probs, const Inputs& in, const Shape& s, int64_t b,
                   int64_t t, int64_t h, double scale) {
  const int64_t g = h / (s.heads / s.kv_heads), hd = s.head_dim;
  const float* qt = in.q.data() + row(s, s.heads, b, t, h);
  probs.assign(static_cast<size_t>(t + 1), 0.0);
  double mx = -INFINITY;
  for (int64_t u = 0; u <= t; ++u) {
    const float* ku = in.k.data() + row(s, s.kv_heads, b, u, g);
    double d = 0;
    for (int64_t i = 0; i < hd; ++i) d += static_cast<double>(qt[i]) * ku[i];
    probs[static_cast<size_t>(u)] = d * scale;
    mx = std::max(mx, d * scale);
  }
  double sum = 0;
  for (double& p : probs) sum += (p = std::exp(p - mx));
  for (double& p : probs) p /= sum;
  return mx + std::log(sum);
}

struct ForwardRef {
  std::vector<double> ctx;  // (B, T, Hq, hd)
  std::vector<double> lse;  // (B, Hq, T)
};

ForwardRef reference_forward(const Inputs& in, const Shape& s, double scale) {
  const int64_t hd = s.head_dim, g_size = s.heads / s.kv_heads;
  ForwardRef r{std::vector<double>(count(s.batch, s.seq, s.heads, hd)),
               std::vector<double>(count(s.batch, s.heads, s.seq, 1))};
  std::vector<double> p;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t t = 0; t < s.seq; ++t) {
        r.lse[static_cast<size_t>((b * s.heads + h) * s.seq + t)] =
            softmax_row(p, in, s, b, t, h, scale);
        double* c = r.ctx.data() + row(s, s.heads, b, t, h);
        for (int64_t u = 0; u <= t; ++u) {
          const float* vu = in.v.data() + row(s, s.kv_heads, b, u, h / g_size);
          for (int64_t i = 0; i < hd; ++i) c[i] += p[static_cast<size_t>(u)] * vu[i];
        }
      }
    }
  }
  return r;
}

struct BackwardRef {
  std::vector<double> dq, dk, dv;
};

// dP = dctx v^T, D = rowsum(P * dP), dS = P (dP - D);
// dq = scale dS k, dk = scale dS^T q, dv = P^T dctx (dk, dv summed over the group's heads).
BackwardRef reference_backward(const Inputs& in, const std::vector<float>& dctx, const Shape& s,
                               double scale) {
  const int64_t hd = s.head_dim, g_size = s.heads / s.kv_heads;
  BackwardRef r{std::vector<double>(in.q.size()), std::vector<double>(in.k.size()),
                std::vector<double>(in.v.size())};
  std::vector<double> p, dp;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / g_size;
      for (int64_t t = 0; t < s.seq; ++t) {
        softmax_row(p, in, s, b, t, h, scale);
        const float* o = dctx.data() + row(s, s.heads, b, t, h);
        const float* qt = in.q.data() + row(s, s.heads, b, t, h);
        dp.assign(static_cast<size_t>(t + 1), 0.0);
        double dsum = 0;
        for (int64_t u = 0; u <= t; ++u) {
          const float* vu = in.v.data() + row(s, s.kv_heads, b, u, g);
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += static_cast<double>(o[i]) * vu[i];
          dp[static_cast<size_t>(u)] = d;
          dsum += p[static_cast<size_t>(u)] * d;
        }
        double* dqt = r.dq.data() + row(s, s.heads, b, t, h);
        for (int64_t u = 0; u <= t; ++u) {
          const double pu = p[static_cast<size_t>(u)];
          const double ds = pu * (dp[static_cast<size_t>(u)] - dsum) * scale;
          const size_t ku = row(s, s.kv_heads, b, u, g);
          for (int64_t i = 0; i < hd; ++i) {
            dqt[i] += ds * in.k[ku + static_cast<size_t>(i)];
            r.dk[ku + static_cast<size_t>(i)] += ds * qt[i];
            r.dv[ku + static_cast<size_t>(i)] += pu * o[i];
          }
        }
      }
    }
  }
  return r;
}

double default_scale(const Shape& s) {
  return 1.0 / std::sqrt(static_cast<double>(s.head_dim));
}

// MHA and GQA, sequence lengths on both sides of the 64-row tiles (and of the 32-row key tiles
// of head_dim 128), head_dim 64 and 128.
const Shape kShapes[] = {
    {1, 1, 2, 2, 64},   {2, 5, 4, 2, 64},    {1, 64, 4, 4, 64},   {3, 65, 8, 1, 64},
    {1, 257, 4, 2, 64}, {2, 130, 8, 1, 64},  {1, 1, 8, 1, 128},   {3, 33, 4, 2, 128},
    {2, 64, 2, 2, 128}, {1, 130, 4, 2, 128}, {1, 257, 8, 1, 128},
};

std::string describe(const Shape& s, DType type) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "%s B=%lld T=%lld Hq=%lld Hkv=%lld hd=%lld", type_name(type),
                static_cast<long long>(s.batch), static_cast<long long>(s.seq),
                static_cast<long long>(s.heads), static_cast<long long>(s.kv_heads),
                static_cast<long long>(s.head_dim));
  return buf;
}

// ---- forward ----------------------------------------------------------------------------------

void check_forward(const Shape& s, DType type, uint64_t seed, float q_sd = 1.0f,
                   AttentionKernel kernel = AttentionKernel::kAuto) {
  SCOPED_TRACE(describe(s, type));
  const Inputs in = random_inputs(s, type, seed, q_sd);
  const double scale = default_scale(s);
  const ForwardRef ref = reference_forward(in, s, scale);

  DeviceTensor q(in.q, type), k(in.k, type), v(in.v, type), ctx(in.q.size(), type);
  DeviceBuffer<float> lse(ref.lse.size());
  flash_attention_forward(ctx.data(), lse.data(), q.data(), k.data(), v.data(), type, s,
                          static_cast<float>(scale), nullptr, kernel);
  const double e_ctx = normalised_error(ctx.download(), ref.ctx);
  const double e_lse = max_abs_error(download(lse), ref.lse);
  EXPECT_LE(e_ctx, type == DType::kBF16 ? 1e-2 : 1e-5);
  EXPECT_LE(e_lse, 1e-5);
  std::printf("[forward %s q_sd %g%s] ctx %.3g lse %.3g\n", describe(s, type).c_str(), q_sd,
              kernel == AttentionKernel::kPlain ? " plain" : "", e_ctx, e_lse);
}

TEST(CudaAttentionForward, MatchesCpuF32) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (const Shape& s : kShapes) check_forward(s, DType::kF32, seed += 10);
}

TEST(CudaAttentionForward, MatchesCpuBf16) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (const Shape& s : kShapes) check_forward(s, DType::kBF16, seed += 10);
}

TEST(CudaAttentionForward, PlainKernelMatchesCpuBf16) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 250;
  for (const Shape& s : kShapes)
    check_forward(s, DType::kBF16, seed += 10, 1.0f, AttentionKernel::kPlain);
}

// The bf16 tensor-core kernel against the float32-math one on the same inputs, at sizes of
// several tiles per block row.
TEST(CudaAttentionForward, TensorCoresMatchPlainKernel) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 270;
  for (const Shape& s : {Shape{2, 700, 4, 2, 64}, Shape{1, 1000, 8, 1, 128},
                         Shape{3, 129, 2, 2, 64}, Shape{1, 3, 4, 1, 128}}) {
    SCOPED_TRACE(describe(s, DType::kBF16));
    const Inputs in = random_inputs(s, DType::kBF16, seed += 10);
    const auto scale = static_cast<float>(default_scale(s));
    DeviceTensor q(in.q, DType::kBF16), k(in.k, DType::kBF16), v(in.v, DType::kBF16);
    DeviceTensor ctx_tc(in.q.size(), DType::kBF16), ctx_plain(in.q.size(), DType::kBF16);
    DeviceBuffer<float> lse_tc(count(s.batch, s.heads, s.seq, 1)), lse_plain(lse_tc.size());
    flash_attention_forward(ctx_tc.data(), lse_tc.data(), q.data(), k.data(), v.data(),
                            DType::kBF16, s, scale, nullptr, AttentionKernel::kAuto);
    flash_attention_forward(ctx_plain.data(), lse_plain.data(), q.data(), k.data(), v.data(),
                            DType::kBF16, s, scale, nullptr, AttentionKernel::kPlain);
    const std::vector<float> plain = ctx_plain.download(), plain_lse = download(lse_plain);
    const double e_ctx =
        normalised_error(ctx_tc.download(), std::vector<double>(plain.begin(), plain.end()));
    const double e_lse =
        max_abs_error(download(lse_tc), std::vector<double>(plain_lse.begin(), plain_lse.end()));
    EXPECT_LE(e_ctx, 1e-2);
    EXPECT_LE(e_lse, 1e-5);
    std::printf("[tensor cores vs plain %s] ctx %.3g lse %.3g\n", describe(s, DType::kBF16).c_str(),
                e_ctx, e_lse);
  }
}

// Large scores: the running maximum changes from tile to tile and most probabilities underflow.
TEST(CudaAttentionForward, SharpSoftmaxMatchesCpu) {
  SKIP_WITHOUT_GPU();
  check_forward({2, 200, 4, 2, 64}, DType::kF32, 300, 8.0f);
  check_forward({1, 150, 2, 1, 128}, DType::kF32, 310, 8.0f);
}

// ---- backward ---------------------------------------------------------------------------------

struct BackwardRun {
  std::vector<float> ctx, lse, dq, dk, dv;
};

// Forward then backward on the GPU with dctx given, both with `kernel`.
BackwardRun run_backward(const Inputs& in, const std::vector<float>& dctx_host, const Shape& s,
                         DType type, float scale, AttentionKernel kernel = AttentionKernel::kAuto) {
  DeviceTensor q(in.q, type), k(in.k, type), v(in.v, type), ctx(in.q.size(), type);
  DeviceTensor dctx(dctx_host, type), dq(in.q.size(), type), dk(in.k.size(), type),
      dv(in.v.size(), type);
  DeviceBuffer<float> lse(count(s.batch, s.heads, s.seq, 1));
  flash_attention_forward(ctx.data(), lse.data(), q.data(), k.data(), v.data(), type, s, scale,
                          nullptr, kernel);
  flash_attention_backward(dq.data(), dk.data(), dv.data(), dctx.data(), q.data(), k.data(),
                           v.data(), ctx.data(), lse.data(), type, s, scale, nullptr, kernel);
  return {ctx.download(), download(lse), dq.download(), dk.download(), dv.download()};
}

void check_backward(const Shape& s, DType type, uint64_t seed,
                    AttentionKernel kernel = AttentionKernel::kAuto) {
  SCOPED_TRACE(describe(s, type));
  const Inputs in = random_inputs(s, type, seed);
  const std::vector<float> dctx = random_values(in.q.size(), seed + 7, type);
  const double scale = default_scale(s);
  const BackwardRef ref = reference_backward(in, dctx, s, scale);
  const BackwardRun got = run_backward(in, dctx, s, type, static_cast<float>(scale), kernel);
  // dq and dk are sums of P (dP - D) terms that cancel exactly in some cases (T = 1: P = 1,
  // D = dP), leaving rounding noise of the size of dP: their errors are measured against the
  // scale of dv = P^T dctx, which is that of dP, when that is larger.
  const double floor = max_abs(ref.dv);
  const double e_dq = normalised_error(got.dq, ref.dq, floor);
  const double e_dk = normalised_error(got.dk, ref.dk, floor);
  const double e_dv = normalised_error(got.dv, ref.dv);
  // bf16: the outputs and the saved ctx (which enters D) are rounded to 8 bits of mantissa.
  const double tol = type == DType::kBF16 ? 3e-2 : 1e-4;
  EXPECT_LE(e_dq, tol);
  EXPECT_LE(e_dk, tol);
  EXPECT_LE(e_dv, tol);
  std::printf("[backward %s%s] dq %.3g dk %.3g dv %.3g\n", describe(s, type).c_str(),
              kernel == AttentionKernel::kPlain ? " plain" : "", e_dq, e_dk, e_dv);
}

TEST(CudaAttentionBackward, MatchesCpuF32) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 400;
  for (const Shape& s : kShapes) check_backward(s, DType::kF32, seed += 10);
}

TEST(CudaAttentionBackward, MatchesCpuBf16) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (const Shape& s : kShapes) check_backward(s, DType::kBF16, seed += 10);
}

TEST(CudaAttentionBackward, PlainKernelMatchesCpuBf16) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 550;
  for (const Shape& s : kShapes)
    check_backward(s, DType::kBF16, seed += 10, AttentionKernel::kPlain);
}

// The bf16 tensor-core backward against the float32-math one on the same inputs, at sizes of
// several tiles, GQA groups included.
TEST(CudaAttentionBackward, TensorCoresMatchPlainKernel) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 570;
  for (const Shape& s : {Shape{2, 700, 4, 2, 64}, Shape{1, 600, 8, 1, 128}, Shape{3, 129, 2, 2, 64},
                         Shape{1, 3, 4, 1, 128}, Shape{1, 97, 4, 4, 128}}) {
    SCOPED_TRACE(describe(s, DType::kBF16));
    const Inputs in = random_inputs(s, DType::kBF16, seed += 10);
    const std::vector<float> dctx = random_values(in.q.size(), seed + 7, DType::kBF16);
    const auto scale = static_cast<float>(default_scale(s));
    const BackwardRun tc = run_backward(in, dctx, s, DType::kBF16, scale, AttentionKernel::kAuto);
    const BackwardRun plain =
        run_backward(in, dctx, s, DType::kBF16, scale, AttentionKernel::kPlain);
    const auto wide = [](const std::vector<float>& x) {
      return std::vector<double>(x.begin(), x.end());
    };
    const double floor = max_abs(wide(plain.dv));
    const double e_dq = normalised_error(tc.dq, wide(plain.dq), floor);
    const double e_dk = normalised_error(tc.dk, wide(plain.dk), floor);
    const double e_dv = normalised_error(tc.dv, wide(plain.dv));
    EXPECT_LE(e_dq, 2e-2);
    EXPECT_LE(e_dk, 2e-2);
    EXPECT_LE(e_dv, 2e-2);
    std::printf("[backward tensor cores vs plain %s] dq %.3g dk %.3g dv %.3g\n",
                describe(s, DType::kBF16).c_str(), e_dq, e_dk, e_dv);
  }
}

// The outputs are written, not accumulated: stale values in dq/dk/dv do not leak through.
TEST(CudaAttentionBackward, OverwritesItsOutputs) {
  SKIP_WITHOUT_GPU();
  const Shape s{2, 70, 4, 2, 64};
  const Inputs in = random_inputs(s, DType::kF32, 600);
  const std::vector<float> dctx_host = random_values(in.q.size(), 601, DType::kF32);
  const auto scale = static_cast<float>(default_scale(s));
  const BackwardRun clean = run_backward(in, dctx_host, s, DType::kF32, scale);

  DeviceTensor q(in.q, DType::kF32), k(in.k, DType::kF32), v(in.v, DType::kF32);
  DeviceTensor ctx(clean.ctx, DType::kF32), dctx(dctx_host, DType::kF32);
  DeviceBuffer<float> lse{std::span<const float>(clean.lse)};
  DeviceTensor dq(random_values(in.q.size(), 602, DType::kF32), DType::kF32);
  DeviceTensor dk(random_values(in.k.size(), 603, DType::kF32), DType::kF32);
  DeviceTensor dv(random_values(in.v.size(), 604, DType::kF32), DType::kF32);
  flash_attention_backward(dq.data(), dk.data(), dv.data(), dctx.data(), q.data(), k.data(),
                           v.data(), ctx.data(), lse.data(), DType::kF32, s, scale);
  EXPECT_EQ(dq.download(), clean.dq);
  EXPECT_EQ(dk.download(), clean.dk);
  EXPECT_EQ(dv.download(), clean.dv);
}

// ---- determinism ------------------------------------------------------------------------------

TEST(CudaAttentionDeterminism, RepeatedRunsGiveIdenticalBits) {
  SKIP_WITHOUT_GPU();
  for (const DType type : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : {Shape{2, 190, 8, 2, 64}, Shape{1, 100, 4, 1, 128}}) {
      SCOPED_TRACE(describe(s, type));
      const Inputs in = random_inputs(s, type, 700);
      const std::vector<float> dctx = random_values(in.q.size(), 701, type);
      const auto scale = static_cast<float>(default_scale(s));
      const BackwardRun a = run_backward(in, dctx, s, type, scale);
      const BackwardRun b = run_backward(in, dctx, s, type, scale);
      const auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
        return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * 4) == 0;
      };
      EXPECT_TRUE(same_bits(a.ctx, b.ctx));
      EXPECT_TRUE(same_bits(a.lse, b.lse));
      EXPECT_TRUE(same_bits(a.dq, b.dq));
      EXPECT_TRUE(same_bits(a.dk, b.dk));
      EXPECT_TRUE(same_bits(a.dv, b.dv));
    }
  }
}

// ---- decode -----------------------------------------------------------------------------------

// The decode output for the last valid position of each sequence equals the forward's ctx at that
// position. Cache entries at or beyond a sequence's length hold NaN: reading one would show.
void check_decode(const Shape& s, const std::vector<int32_t>& lengths, DType type, uint64_t seed) {
  SCOPED_TRACE(describe(s, type));
  ASSERT_EQ(lengths.size(), static_cast<size_t>(s.batch));
  const Inputs in = random_inputs(s, type, seed);
  const auto scale = static_cast<float>(default_scale(s));
  DeviceTensor q(in.q, type), k(in.k, type), v(in.v, type), ctx(in.q.size(), type);
  DeviceBuffer<float> lse(count(s.batch, s.heads, s.seq, 1));
  flash_attention_forward(ctx.data(), lse.data(), q.data(), k.data(), v.data(), type, s, scale);
  const std::vector<float> full = ctx.download();

  const size_t qrow = static_cast<size_t>(s.heads * s.head_dim);
  const size_t kvrow = static_cast<size_t>(s.kv_heads * s.head_dim);
  std::vector<float> q_new(static_cast<size_t>(s.batch) * qrow);
  std::vector<double> want(q_new.size());
  std::vector<float> k_cache = in.k, v_cache = in.v;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t len = lengths[static_cast<size_t>(b)];
    const size_t pos = static_cast<size_t>(b * s.seq + std::max<int64_t>(len - 1, 0));
    for (size_t i = 0; i < qrow; ++i) {
      q_new[static_cast<size_t>(b) * qrow + i] = in.q[pos * qrow + i];
      want[static_cast<size_t>(b) * qrow + i] = len == 0 ? 0.0 : full[pos * qrow + i];
    }
    for (int64_t t = len; t < s.seq; ++t) {
      std::fill_n(k_cache.begin() + static_cast<ptrdiff_t>((b * s.seq + t) * kvrow), kvrow, nan);
      std::fill_n(v_cache.begin() + static_cast<ptrdiff_t>((b * s.seq + t) * kvrow), kvrow, nan);
    }
  }
  DeviceTensor dq_new(q_new, type), dk(k_cache, type), dv(v_cache, type), out(q_new.size(), type);
  DeviceBuffer<int32_t> d_len{std::span<const int32_t>(lengths)};
  attention_decode(out.data(), dq_new.data(), dk.data(), dv.data(), d_len.data(), type, s, scale);
  const double e = normalised_error(out.download(), want);
  EXPECT_LE(e, type == DType::kBF16 ? 1e-2 : 1e-5);
  std::printf("[decode %s] %.3g\n", describe(s, type).c_str(), e);
}

TEST(CudaAttentionDecode, MatchesForwardAtTheLastPosition) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 800;
  for (const DType type : {DType::kF32, DType::kBF16}) {
    check_decode({3, 70, 4, 2, 64}, {1, 37, 70}, type, seed += 10);
    check_decode({4, 600, 8, 1, 64}, {600, 256, 257, 513}, type, seed += 10);  // several splits
    check_decode({2, 300, 4, 4, 128}, {300, 5}, type, seed += 10);
    check_decode({3, 1, 2, 1, 128}, {1, 1, 1}, type, seed += 10);
  }
}

TEST(CudaAttentionDecode, EmptySequenceGivesZeros) {
  SKIP_WITHOUT_GPU();
  check_decode({2, 40, 4, 2, 64}, {0, 40}, DType::kF32, 900);
}

// ---- argument checks (no device needed: they throw before anything is launched) --------------

template <class F>
void expect_input_error(F&& call) {
  if (compiled_with_cuda()) {
    EXPECT_THROW(call(), InputError);
  } else {
    EXPECT_THROW(call(), Error);  // the stub: "built without CUDA"
  }
}

TEST(CudaAttentionErrors, BadShapesAndTypesAreInputErrors) {
  const auto forward = [](const Shape& s, DType type = DType::kF32, float scale = 0.125f,
                          void* ptr = nullptr) {
    return [=] { flash_attention_forward(ptr, nullptr, ptr, ptr, ptr, type, s, scale); };
  };
  expect_input_error(forward({1, 8, 4, 3, 64}));  // kv_heads does not divide heads
  expect_input_error(forward({1, 8, 4, 0, 64}));  // no kv heads
  expect_input_error(forward({1, 8, 4, 8, 64}));  // more kv heads than heads
  expect_input_error(forward({1, 8, 4, 2, 96}));  // unsupported head_dim
  expect_input_error(forward({1, 8, 4, 2, 0}));
  expect_input_error(forward({-1, 8, 4, 2, 64}));  // negative sizes
  expect_input_error(forward({1, -8, 4, 2, 64}));
  expect_input_error(forward({1, 8, -4, 2, 64}));
  expect_input_error(forward({1, 8, 4, 2, 64}, DType::kF16));
  expect_input_error(forward({1, 8, 4, 2, 64}, DType::kF32, std::nanf("")));
  // Misaligned pointers (16 bytes are needed).
  expect_input_error(forward({1, 8, 4, 2, 64}, DType::kF32, 0.125f, reinterpret_cast<void*>(4)));
  expect_input_error(forward({1, 8, 4, 2, 64}, DType::kBF16, 0.125f, reinterpret_cast<void*>(8)));
  // The checks come first even when there is nothing to compute.
  expect_input_error(forward({0, 8, 4, 3, 64}));
  expect_input_error(forward({1, 0, 4, 2, 80}));

  expect_input_error([] {
    flash_attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                             nullptr, DType::kBF16, {2, 8, 6, 4, 64}, 0.125f);
  });
  expect_input_error([] {
    flash_attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                             nullptr, DType::kF32, {2, 8, 4, 2, 32}, 0.125f);
  });
  expect_input_error([] {
    attention_decode(nullptr, nullptr, nullptr, nullptr, nullptr, DType::kF32, {2, 8, 4, 2, 48},
                     0.125f);
  });
  expect_input_error([] {
    attention_decode(nullptr, nullptr, nullptr, nullptr, nullptr, DType::kBF16, {2, -1, 4, 2, 64},
                     0.125f);
  });
}

TEST(CudaAttentionErrors, EmptyShapesDoNothing) {
  if (!compiled_with_cuda()) GTEST_SKIP() << "built without CUDA";
  // Valid shapes with nothing to compute return before touching the (null) pointers.
  EXPECT_NO_THROW(flash_attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, DType::kF32,
                                          {0, 8, 4, 2, 64}, 0.125f));
  EXPECT_NO_THROW(flash_attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                           nullptr, nullptr, nullptr, DType::kBF16,
                                           {2, 0, 4, 2, 128}, 0.125f));
  EXPECT_NO_THROW(attention_decode(nullptr, nullptr, nullptr, nullptr, nullptr, DType::kF32,
                                   {2, 8, 0, 2, 64}, 0.125f));
}

}  // namespace
}  // namespace engram::cuda
