// cuda::Blas (engram/cuda/blas.h) against a double-precision CPU GEMM, for every transpose
// combination and precision, batched and not (skipped without a GPU). Errors are normalised by
// the largest reference value.
#include "engram/cuda/blas.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/tensor/dtype.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

using test_util::round_bf16;
using test_util::to_bf16;

std::vector<float> random_vec(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(size);
  for (float& x : v) x = normal(rng);
  return v;
}

// C (m, n) = alpha op(A) op(B) + beta C, row-major, in double.
void reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
               const std::vector<float>& a, int64_t lda, const std::vector<float>& b, int64_t ldb,
               float beta, std::vector<double>& c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = ta ? a[p * lda + i] : a[i * lda + p];
        const double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
        s += av * bv;
      }
      c[i * ldc + j] = alpha * s + beta * c[i * ldc + j];
    }
  }
}

double max_error(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0, scale = 1e-6;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return diff / scale;
}

struct Case {
  bool ta, tb;
  int64_t m, n, k;
};

class BlasTest : public ::testing::TestWithParam<Case> {};

TEST_P(BlasTest, MatchesDoubleReferenceInEveryPrecision) {
  SKIP_WITHOUT_GPU();
  const Case cs = GetParam();
  // Stored shapes, with a padded leading dimension to exercise ld.
  const int64_t a_rows = cs.ta ? cs.k : cs.m, a_cols = cs.ta ? cs.m : cs.k;
  const int64_t b_rows = cs.tb ? cs.n : cs.k, b_cols = cs.tb ? cs.k : cs.n;
  const int64_t lda = a_cols + 3, ldb = b_cols + 1, ldc = cs.n + 2;
  const auto a = random_vec(static_cast<size_t>(a_rows * lda), 1);
  const auto b = random_vec(static_cast<size_t>(b_rows * ldb), 2);
  const auto c0 = random_vec(static_cast<size_t>(cs.m * ldc), 3);
  const float alpha = 0.75f, beta = -0.5f;
  Blas blas;
  DeviceBuffer<float> dc(c0.size());

  struct Run {
    DType in, out;
    Math math;
    double tol;
  };
  for (const Run& r : {Run{DType::kF32, DType::kF32, Math::kExact, 2e-6},
                       Run{DType::kF32, DType::kF32, Math::kTf32, 3e-3},
                       Run{DType::kBF16, DType::kF32, Math::kExact, 2e-6},
                       Run{DType::kBF16, DType::kBF16, Math::kExact, 8e-3}}) {
    const bool bf = r.in == DType::kBF16;
    const auto ah = bf ? round_bf16(a) : a, bh = bf ? round_bf16(b) : b;
    std::vector<double> want(c0.begin(), c0.end());
    if (r.out == DType::kBF16) {
      const auto cr = round_bf16(c0);
      want.assign(cr.begin(), cr.end());
    }
    reference(cs.ta, cs.tb, cs.m, cs.n, cs.k, alpha, ah, lda, bh, ldb, beta, want, ldc);
    std::vector<float> got(c0.size());
    if (!bf) {
      DeviceBuffer<float> da{std::span<const float>(a)}, db{std::span<const float>(b)};
      dc.upload(c0);
      blas.gemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, alpha, {da.data(), DType::kF32, lda},
                {db.data(), DType::kF32, ldb}, beta, {dc.data(), DType::kF32, ldc}, r.math);
      dc.download(got);
    } else {
      const auto ab = to_bf16(a), bb = to_bf16(b);
      DeviceBuffer<bf16> da{std::span<const bf16>(ab)}, db{std::span<const bf16>(bb)};
      if (r.out == DType::kF32) {
        dc.upload(c0);
        blas.gemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, alpha, {da.data(), DType::kBF16, lda},
                  {db.data(), DType::kBF16, ldb}, beta, {dc.data(), DType::kF32, ldc});
        dc.download(got);
      } else {
        const auto cb = to_bf16(c0);
        DeviceBuffer<bf16> dcb{std::span<const bf16>(cb)};
        blas.gemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, alpha, {da.data(), DType::kBF16, lda},
                  {db.data(), DType::kBF16, ldb}, beta, {dcb.data(), DType::kBF16, ldc});
        std::vector<bf16> gb(cb.size());
        dcb.download(gb);
        for (size_t i = 0; i < gb.size(); ++i) got[i] = bf16_to_float(gb[i]);
      }
    }
    // Padding columns of C are left alone.
    for (int64_t i = 0; i < cs.m; ++i)
      for (int64_t j = cs.n; j < ldc; ++j) want[i * ldc + j] = got[i * ldc + j];
    EXPECT_LT(max_error(got, want), r.tol)
        << "in " << dtype_name(r.in) << " out " << dtype_name(r.out) << " tf32 "
        << (r.math == Math::kTf32);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, BlasTest,
                         ::testing::Values(Case{false, false, 7, 5, 3}, Case{false, true, 33, 17, 65},
                                           Case{true, false, 16, 48, 40},
                                           Case{true, true, 9, 64, 128},
                                           Case{false, true, 130, 96, 257}));

TEST(Blas, StridedBatchedMatchesPerMatrixGemm) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 12, n = 10, k = 20, batch = 3;
  const auto a = random_vec(static_cast<size_t>(batch * m * k), 4);
  const auto b = random_vec(static_cast<size_t>(batch * n * k), 5);
  DeviceBuffer<float> da{std::span<const float>(a)}, db{std::span<const float>(b)};
  DeviceBuffer<float> dc(static_cast<size_t>(batch * m * n));
  Blas blas;
  blas.gemm_strided_batched(false, true, m, n, k, 1.0f, {da.data(), DType::kF32, k}, m * k,
                            {db.data(), DType::kF32, k}, n * k, 0.0f, {dc.data(), DType::kF32, n},
                            m * n, batch);
  std::vector<float> got(dc.size());
  dc.download(got);
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<float> ai(a.begin() + i * m * k, a.begin() + (i + 1) * m * k);
    std::vector<float> bi(b.begin() + i * n * k, b.begin() + (i + 1) * n * k);
    std::vector<double> want(static_cast<size_t>(m * n), 0.0);
    reference(false, true, m, n, k, 1.0f, ai, k, bi, k, 0.0f, want, n);
    std::vector<float> gi(got.begin() + i * m * n, got.begin() + (i + 1) * m * n);
    EXPECT_LT(max_error(gi, want), 2e-6) << "matrix " << i;
  }
}

TEST(Blas, BetaZeroIgnoresNanInC) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> a = {1, 2}, b = {3, 4};
  std::vector<float> c = {NAN};
  DeviceBuffer<float> da{std::span<const float>(a)}, db{std::span<const float>(b)},
      dc{std::span<const float>(c)};
  Blas blas;
  blas.gemm(false, true, 1, 1, 2, 1.0f, {da.data(), DType::kF32, 2}, {db.data(), DType::kF32, 2},
            0.0f, {dc.data(), DType::kF32, 1});
  dc.download(c);
  EXPECT_EQ(c[0], 11.0f);
}

TEST(Blas, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<float> d(64);
  DeviceBuffer<bf16> h(64);
  Blas blas;
  const Matrix f{d.data(), DType::kF32, 8}, bfm{h.data(), DType::kBF16, 8};
  const MutMatrix c{d.data(), DType::kF32, 8};
  EXPECT_THROW(blas.gemm(false, false, -1, 8, 8, 1, f, f, 0, c), InputError);
  EXPECT_THROW(blas.gemm(false, false, 8, 8, 8, 1, f, bfm, 0, c), InputError);
  EXPECT_THROW(blas.gemm(false, false, 8, 8, 8, 1, {d.data(), DType::kF32, 4}, f, 0, c),
               InputError);
  EXPECT_THROW(blas.gemm(false, false, 8, 8, 8, 1, {d.data(), DType::kI32, 8}, f, 0, c),
               InputError);
  EXPECT_THROW(
      blas.gemm(false, false, 8, 8, 8, 1, f, f, 0, MutMatrix{h.data(), DType::kBF16, 8}),
      InputError);
}

}  // namespace
}  // namespace engram::cuda
