// Every GEMM backend (kBlocked once per instruction set the machine has, kBlas when built in)
// against kReference, the definition, over many shapes, all transpose combinations, padded
// leading dimensions and alpha/beta, in float and double. Elements are compared with a bound
// scaled by k * eps * (|alpha| |A||B| + |beta C|), the forward error of a k-term dot product.
#include "engram/tensor/gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "tensor/gemm_problem.h"

namespace engram {
namespace {

// Restores the global GEMM settings a test changes.
class GemmSettingsGuard {
 public:
  GemmSettingsGuard()
      : backend_(default_gemm_backend()),
        threads_(gemm_threads()),
        isa_(gemm_detail::blocked_isa()) {}
  ~GemmSettingsGuard() {
    set_default_gemm_backend(backend_);
    set_gemm_threads(threads_);
    gemm_detail::set_blocked_isa(isa_);
  }

 private:
  GemmBackend backend_;
  int threads_;
  std::string isa_;
};

struct Variant {
  std::string name;
  GemmBackend backend;
  std::string isa;  // kBlocked only
};

std::vector<Variant> fast_variants() {
  std::vector<Variant> v;
  for (const auto& isa : gemm_detail::blocked_isas()) {
    v.push_back({"blocked/" + isa, GemmBackend::kBlocked, isa});
  }
  if (gemm_backend_available(GemmBackend::kBlas)) v.push_back({"blas", GemmBackend::kBlas, ""});
  return v;
}

struct Case {
  Trans ta = Trans::kNo, tb = Trans::kNo;
  int64_t m = 0, n = 0, k = 0;
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra elements at the end of each stored row
  double alpha = 1, beta = 0;
  int threads = 1;
};

std::string describe(const Case& c) {
  return "m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         " ta=" + std::to_string(c.ta == Trans::kYes) +
         " tb=" + std::to_string(c.tb == Trans::kYes) + " pads=" + std::to_string(c.pad_a) + "," +
         std::to_string(c.pad_b) + "," + std::to_string(c.pad_c) +
         " alpha=" + std::to_string(c.alpha) + " beta=" + std::to_string(c.beta) +
         " threads=" + std::to_string(c.threads);
}

// Runs one case on every variant and compares with kReference. Padding is NaN: a backend that
// reads it poisons its result, and one that writes it is caught below.
template <class T>
void check_case(const Case& c, const std::vector<Variant>& variants, std::mt19937_64& rng) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  const int64_t a_rows = c.ta == Trans::kNo ? c.m : c.k, a_cols = c.ta == Trans::kNo ? c.k : c.m;
  const int64_t b_rows = c.tb == Trans::kNo ? c.k : c.n, b_cols = c.tb == Trans::kNo ? c.n : c.k;
  const int64_t lda = std::max<int64_t>(1, a_cols) + c.pad_a;
  const int64_t ldb = std::max<int64_t>(1, b_cols) + c.pad_b;
  const int64_t ldc = std::max<int64_t>(1, c.n) + c.pad_c;
  auto matrix = [&](int64_t rows, int64_t cols, int64_t ld, bool values) {
    std::vector<T> x(static_cast<size_t>(std::max<int64_t>(1, rows * ld)), nan);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        if (values) x[static_cast<size_t>(i * ld + j)] = static_cast<T>(uni(rng));
      }
    }
    return x;
  };
  const std::vector<T> a = matrix(a_rows, a_cols, lda, true);
  const std::vector<T> b = matrix(b_rows, b_cols, ldb, true);
  // With beta == 0 the old C must not be read: make it NaN.
  const std::vector<T> c0 = matrix(c.m, c.n, ldc, c.beta != 0);
  const auto alpha = static_cast<T>(c.alpha), beta = static_cast<T>(c.beta);

  std::vector<T> want = c0;
  gemm_with<T>(GemmBackend::kReference, c.ta, c.tb, c.m, c.n, c.k, alpha, a.data(), lda, b.data(),
               ldb, beta, want.data(), ldc);

  // Error bound per element.
  const double eps = std::numeric_limits<T>::epsilon();
  std::vector<double> bound(static_cast<size_t>(c.m * c.n));
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < c.k; ++p) {
        const T x = c.ta == Trans::kNo ? a[static_cast<size_t>(i * lda + p)]
                                       : a[static_cast<size_t>(p * lda + i)];
        const T y = c.tb == Trans::kNo ? b[static_cast<size_t>(p * ldb + j)]
                                       : b[static_cast<size_t>(j * ldb + p)];
        s += std::abs(static_cast<double>(x) * static_cast<double>(y));
      }
      const double old = c.beta != 0 ? std::abs(c.beta * c0[static_cast<size_t>(i * ldc + j)]) : 0;
      bound[static_cast<size_t>(i * c.n + j)] =
          static_cast<double>(c.k + 4) * eps * (std::abs(c.alpha) * s + old) +
          std::numeric_limits<T>::min();
    }
  }

  set_gemm_threads(c.threads);
  for (const auto& v : variants) {
    if (!v.isa.empty()) gemm_detail::set_blocked_isa(v.isa);
    std::vector<T> got = c0;
    gemm_with<T>(v.backend, c.ta, c.tb, c.m, c.n, c.k, alpha, a.data(), lda, b.data(), ldb, beta,
                 got.data(), ldc);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < ldc; ++j) {
        const auto at = static_cast<size_t>(i * ldc + j);
        if (j >= c.n) {  // padding: untouched
          ASSERT_TRUE(std::isnan(got[at]))
              << v.name << " wrote padding at (" << i << ", " << j << ") " << describe(c);
          continue;
        }
        const double err = std::abs(static_cast<double>(got[at]) - static_cast<double>(want[at]));
        ASSERT_LE(err, bound[static_cast<size_t>(i * c.n + j)])
            << v.name << " at (" << i << ", " << j << "): got " << got[at] << ", reference "
            << want[at] << "; " << describe(c);
      }
    }
  }
}

const int64_t kSizes[] = {0, 1, 2, 3, 7, 15, 16, 17, 31, 64, 100, 129};
const double kAlphas[] = {1.0, -0.75, 2.0, 0.5};
const double kBetas[] = {0.0, 1.0, -0.5, 0.0, 2.0};

struct Combo {
  bool f64;
  Trans ta, tb;
};

class GemmConformance : public testing::TestWithParam<Combo> {};

template <class T>
void run_size_grid(Trans ta, Trans tb, uint64_t seed) {
  GemmSettingsGuard guard;
  const auto variants = fast_variants();
  std::mt19937_64 rng(seed);
  int index = 0;
  for (const int64_t m : kSizes) {
    for (const int64_t n : kSizes) {
      for (const int64_t k : kSizes) {
        Case c;
        c.ta = ta, c.tb = tb, c.m = m, c.n = n, c.k = k;
        c.pad_a = index % 3, c.pad_b = (index / 3) % 4, c.pad_c = (index / 2) % 3;
        c.alpha = kAlphas[index % 4];
        c.beta = kBetas[index % 5];
        c.threads = 1 + index % 4;
        ++index;
        check_case<T>(c, variants, rng);
        if (testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

// m, n, k each over {0, 1, 2, 3, 7, 15, 16, 17, 31, 64, 100, 129}: 1728 shapes.
TEST_P(GemmConformance, EveryBackendMatchesReferenceOverTheSizeGrid) {
  const Combo p = GetParam();
  const uint64_t seed =
      1000 + (p.f64 ? 1 : 0) * 4 + (p.ta == Trans::kYes) * 2 + (p.tb == Trans::kYes);
  if (p.f64) {
    run_size_grid<double>(p.ta, p.tb, seed);
  } else {
    run_size_grid<float>(p.ta, p.tb, seed);
  }
}

// Shapes past every cache block (k > KC, n > NC, m > MC), odd thread counts, skinny and wide
// matrices that split C only one way between threads, and a few rows over many columns.
TEST_P(GemmConformance, LargeAndSkinnyShapesAcrossThreadCounts) {
  const Combo p = GetParam();
  GemmSettingsGuard guard;
  const auto variants = fast_variants();
  std::mt19937_64 rng(77 + (p.f64 ? 1 : 0));
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{300, 200, 1000},
                          {97, 1100, 70},
                          {3200, 24, 40},
                          {5, 3000, 300},
                          {2000, 3, 257},
                          {130, 130, 400},
                          {1, 1500, 1500},
                          {1500, 1, 1500},
                          // kBlocked's thin-row path (m <= 4): column chunks, dot-product tails
                          {3, 2000, 700},
                          {1, 5000, 33},
                          {4, 700, 1029},
                          {2, 9000, 3}};
  int index = 0;
  for (const auto& s : shapes) {
    for (const int threads : {2, 3, 4, 7}) {
      Case c;
      c.ta = p.ta, c.tb = p.tb, c.m = s.m, c.n = s.n, c.k = s.k;
      c.pad_a = index % 5, c.pad_b = 3 - index % 4, c.pad_c = index % 2;
      c.alpha = kAlphas[index % 4];
      c.beta = kBetas[index % 5];
      c.threads = threads;
      ++index;
      if (p.f64) {
        check_case<double>(c, variants, rng);
      } else {
        check_case<float>(c, variants, rng);
      }
      if (HasFatalFailure()) return;
    }
  }
}

// Random shapes up to 300 with random transposes, paddings, alpha and beta.
TEST_P(GemmConformance, RandomShapes) {
  const Combo p = GetParam();
  GemmSettingsGuard guard;
  const auto variants = fast_variants();
  std::mt19937_64 rng(4242 + (p.f64 ? 1 : 0) * 4 + (p.ta == Trans::kYes) * 2 +
                      (p.tb == Trans::kYes));
  std::uniform_int_distribution<int64_t> size(0, 300), pad(0, 9);
  std::uniform_real_distribution<double> scale(-2.0, 2.0);
  for (int i = 0; i < 40; ++i) {
    Case c;
    c.ta = p.ta, c.tb = p.tb, c.m = size(rng), c.n = size(rng), c.k = size(rng);
    c.pad_a = pad(rng), c.pad_b = pad(rng), c.pad_c = pad(rng);
    c.alpha = scale(rng);
    c.beta = i % 3 == 0 ? 0.0 : scale(rng);
    c.threads = 1 + i % 3;
    if (p.f64) {
      check_case<double>(c, variants, rng);
    } else {
      check_case<float>(c, variants, rng);
    }
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllTypesAndTransposes, GemmConformance,
    testing::Values(Combo{false, Trans::kNo, Trans::kNo}, Combo{false, Trans::kNo, Trans::kYes},
                    Combo{false, Trans::kYes, Trans::kNo}, Combo{false, Trans::kYes, Trans::kYes},
                    Combo{true, Trans::kNo, Trans::kNo}, Combo{true, Trans::kNo, Trans::kYes},
                    Combo{true, Trans::kYes, Trans::kNo}, Combo{true, Trans::kYes, Trans::kYes}),
    [](const testing::TestParamInfo<Combo>& param_info) {
      return std::string(param_info.param.f64 ? "F64" : "F32") +
             (param_info.param.ta == Trans::kYes ? "_AT" : "_A") +
             (param_info.param.tb == Trans::kYes ? "_BT" : "_B");
    });

// The definition on a product small enough to check by hand; every backend gets it exactly.
TEST(Gemm, HandComputedProduct) {
  GemmSettingsGuard guard;
  const double a[] = {1, 2, 3, 4, 5, 6};     // (2, 3)
  const double b[] = {7, 8, 9, 10, 11, 12};  // (3, 2)
  const double at[] = {1, 4, 2, 5, 3, 6};    // A stored transposed, (3, 2)
  std::vector<Variant> variants = fast_variants();
  variants.push_back({"reference", GemmBackend::kReference, ""});
  for (const auto& v : variants) {
    if (!v.isa.empty()) gemm_detail::set_blocked_isa(v.isa);
    double c[] = {1, 1, 1, 1};
    gemm_with<double>(v.backend, Trans::kNo, Trans::kNo, 2, 2, 3, 2.0, a, 3, b, 2, 0.5, c, 2);
    EXPECT_EQ(std::vector<double>(c, c + 4), (std::vector<double>{116.5, 128.5, 278.5, 308.5}))
        << v.name;
    float cf[] = {0, 0, 0, 0};
    const float af[] = {1, 4, 2, 5, 3, 6}, bf[] = {7, 8, 9, 10, 11, 12};
    gemm_with<float>(v.backend, Trans::kYes, Trans::kNo, 2, 2, 3, 1.0f, af, 2, bf, 2, 0.0f, cf, 2);
    EXPECT_EQ(std::vector<float>(cf, cf + 4), (std::vector<float>{58, 64, 139, 154})) << v.name;
    double ct[] = {0, 0, 0, 0};
    gemm_with<double>(v.backend, Trans::kYes, Trans::kYes, 2, 2, 3, 1.0, at, 2, b, 3, 0.0, ct, 2);
    // A^T^T = A, and B^T read from b as (2, 3) rows {7 8 9} {10 11 12}: A * that^T.
    EXPECT_EQ(std::vector<double>(ct, ct + 4), (std::vector<double>{50, 68, 122, 167})) << v.name;
  }
}

// beta == 0 overwrites NaN; k == 0 gives beta * C; alpha == 0 gives beta * C.
TEST(Gemm, DegenerateScalings) {
  GemmSettingsGuard guard;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<Variant> variants = fast_variants();
  variants.push_back({"reference", GemmBackend::kReference, ""});
  const float a[] = {1, 2, 3, 4}, b[] = {5, 6, 7, 8};
  for (const auto& v : variants) {
    if (!v.isa.empty()) gemm_detail::set_blocked_isa(v.isa);
    float c[] = {nan, nan, nan, nan};
    gemm_with<float>(v.backend, Trans::kNo, Trans::kNo, 2, 2, 0, 1.0f, a, 1, b, 2, 0.0f, c, 2);
    EXPECT_EQ(std::vector<float>(c, c + 4), (std::vector<float>{0, 0, 0, 0})) << v.name;
    float d[] = {1, 2, 3, 4};
    gemm_with<float>(v.backend, Trans::kNo, Trans::kNo, 2, 2, 0, 1.0f, a, 1, b, 2, 3.0f, d, 2);
    EXPECT_EQ(std::vector<float>(d, d + 4), (std::vector<float>{3, 6, 9, 12})) << v.name;
    float e[] = {1, 2, 3, 4};
    gemm_with<float>(v.backend, Trans::kNo, Trans::kNo, 2, 2, 2, 0.0f, a, 2, b, 2, -1.0f, e, 2);
    EXPECT_EQ(std::vector<float>(e, e + 4), (std::vector<float>{-1, -2, -3, -4})) << v.name;
    float f[] = {nan, nan, nan, nan};
    gemm_with<float>(v.backend, Trans::kNo, Trans::kNo, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, f, 2);
    EXPECT_EQ(std::vector<float>(f, f + 4), (std::vector<float>{19, 22, 43, 50})) << v.name;
    // m == 0 or n == 0: nothing to do, C untouched.
    float g[] = {nan};
    gemm_with<float>(v.backend, Trans::kNo, Trans::kNo, 0, 1, 2, 1.0f, a, 2, b, 1, 0.0f, g, 1);
    EXPECT_TRUE(std::isnan(g[0])) << v.name;
  }
}

TEST(Gemm, BackendSelection) {
  GemmSettingsGuard guard;
  EXPECT_TRUE(gemm_backend_available(GemmBackend::kReference));
  EXPECT_TRUE(gemm_backend_available(GemmBackend::kBlocked));
  EXPECT_STREQ(gemm_backend_name(GemmBackend::kReference), "reference");
  EXPECT_STREQ(gemm_backend_name(GemmBackend::kBlocked), "blocked");
  EXPECT_STREQ(gemm_backend_name(GemmBackend::kBlas), "blas");
  // The default is the fastest available: the system BLAS when built in, unless it runs
  // generic kernels (OpenBLAS on a CPU it does not know) while kBlocked has AVX2 or AVX-512.
  const std::string blas = gemm_detail::blas_description();
  if (!gemm_backend_available(GemmBackend::kBlas)) {
    EXPECT_TRUE(blas.empty());
    EXPECT_EQ(default_gemm_backend(), GemmBackend::kBlocked);
  } else if (blas.find("core=Prescott") != std::string::npos &&
             gemm_detail::blocked_isas().front() != "generic") {
    EXPECT_EQ(default_gemm_backend(), GemmBackend::kBlocked) << blas;
  } else if (blas.find("core=SkylakeX") != std::string::npos ||
             blas.find("core=Cooperlake") != std::string::npos ||
             blas.find("core=SapphireRapids") != std::string::npos) {
    EXPECT_EQ(default_gemm_backend(), GemmBackend::kBlas) << blas;
  }

  // gemm() follows the default: bit-identical to gemm_with() on the same backend.
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> uni(-1, 1);
  std::vector<float> a(200 * 150), b(150 * 170);
  for (auto& x : a) x = uni(rng);
  for (auto& x : b) x = uni(rng);
  for (const GemmBackend be :
       {GemmBackend::kReference, GemmBackend::kBlocked, GemmBackend::kBlas}) {
    if (!gemm_backend_available(be)) continue;
    set_default_gemm_backend(be);
    EXPECT_EQ(default_gemm_backend(), be);
    std::vector<float> c1(200 * 170), c2(200 * 170);
    gemm<float>(Trans::kNo, Trans::kNo, 200, 170, 150, 1.0f, a.data(), 150, b.data(), 170, 0.0f,
                c1.data(), 170);
    gemm_with<float>(be, Trans::kNo, Trans::kNo, 200, 170, 150, 1.0f, a.data(), 150, b.data(), 170,
                     0.0f, c2.data(), 170);
    EXPECT_EQ(c1, c2) << gemm_backend_name(be);
  }
  if (!gemm_backend_available(GemmBackend::kBlas)) {
    EXPECT_THROW(set_default_gemm_backend(GemmBackend::kBlas), Error);
    float x = 0;
    EXPECT_THROW(gemm_with<float>(GemmBackend::kBlas, Trans::kNo, Trans::kNo, 1, 1, 1, 1.0f, &x, 1,
                                  &x, 1, 0.0f, &x, 1),
                 Error);
  }
}

TEST(Gemm, Threads) {
  GemmSettingsGuard guard;
  set_gemm_threads(0);
  EXPECT_EQ(gemm_threads(), hardware_threads());
  set_gemm_threads(3);
  EXPECT_EQ(gemm_threads(), 3);
  EXPECT_THROW(set_gemm_threads(-1), Error);
  EXPECT_EQ(gemm_threads(), 3);
}

TEST(Gemm, InstructionSets) {
  GemmSettingsGuard guard;
  const auto isas = gemm_detail::blocked_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), "generic");
  EXPECT_EQ(gemm_detail::blocked_isa(), isas.front());  // the best by default
  EXPECT_THROW(gemm_detail::set_blocked_isa("sse9"), Error);
}

TEST(Gemm, BadArgumentsThrow) {
  float x[16] = {};
  auto call = [&](int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                  Trans ta = Trans::kNo, Trans tb = Trans::kNo) {
    gemm_with<float>(GemmBackend::kBlocked, ta, tb, m, n, k, 1.0f, x, lda, x, ldb, 0.0f, x, ldc);
  };
  auto expect_message = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no exception for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_message([&] { call(-1, 2, 2, 2, 2, 2); }, "gemm: negative size m=-1 n=2 k=2");
  expect_message([&] { call(2, 2, 3, 2, 2, 2); }, "gemm: lda=2 is less than the row length 3");
  expect_message([&] { call(2, 3, 2, 2, 2, 3); }, "ldb=2 is less than the row length 3");
  expect_message([&] { call(2, 3, 2, 2, 3, 2); }, "ldc=2 is less than the row length 3");
  // Transposed A is stored (k, m): its rows are m long.
  expect_message([&] { call(3, 2, 2, 2, 2, 2, Trans::kYes); },
                 "lda=2 is less than the row length 3");
  expect_message([&] { call(2, 2, 0, 0, 2, 2); }, "lda=0 is less than the row length 1");
  EXPECT_NO_THROW(call(2, 2, 2, 2, 2, 2));
  expect_message(
      [&] {
        gemm_with<float>(GemmBackend::kReference, Trans::kNo, Trans::kNo, 2, 2, 2, 1.0f, nullptr, 2,
                         x, 2, 0.0f, x, 2);
      },
      "gemm: null matrix pointer");
}

}  // namespace
}  // namespace engram
