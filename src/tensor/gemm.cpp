#include "engram/tensor/gemm.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "gemm_problem.h"

#ifdef ENGRAM_HAVE_BLAS
#include <cblas.h>
#endif

namespace engram {
namespace gemm_detail {

void* scratch(int slot, size_t bytes) {
  struct Buffer {
    std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};
    size_t size = 0;
  };
  thread_local Buffer buffers[2];
  Buffer& buf = buffers[slot];
  if (buf.size < bytes) {
    const size_t size = (bytes + 4095) / 4096 * 4096;
    buf.data.reset(std::aligned_alloc(64, size));
    if (!buf.data) throw std::bad_alloc();
    buf.size = size;
  }
  return buf.data.get();
}

}  // namespace gemm_detail
}  // namespace engram

// ---- kBlocked: one kernel per instruction set -------------------------------------------------
// The generic kernel uses the compiler's baseline (SSE2 on x86-64, NEON on AArch64); on x86-64
// GCC also builds AVX2+FMA and AVX-512 variants, picked at run time with __builtin_cpu_supports.
#define ENGRAM_GEMM_ISA generic
#define ENGRAM_GEMM_VECTOR_BYTES 16
#include "gemm_blocked_isa.h"
#undef ENGRAM_GEMM_ISA
#undef ENGRAM_GEMM_VECTOR_BYTES

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ENGRAM_GEMM_X86_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ENGRAM_GEMM_ISA avx2
#define ENGRAM_GEMM_VECTOR_BYTES 32
#include "gemm_blocked_isa.h"
#undef ENGRAM_GEMM_ISA
#undef ENGRAM_GEMM_VECTOR_BYTES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#define ENGRAM_GEMM_ISA avx512
#define ENGRAM_GEMM_VECTOR_BYTES 64
#include "gemm_blocked_isa.h"
#undef ENGRAM_GEMM_ISA
#undef ENGRAM_GEMM_VECTOR_BYTES
#pragma GCC pop_options
#endif

namespace engram {
namespace gemm_detail {
namespace {

struct BlockedIsa {
  const char* name;
  bool (*supported)();
  void (*f32)(const GemmProblem<float>&, int64_t, int64_t, int64_t, int64_t);
  void (*f64)(const GemmProblem<double>&, int64_t, int64_t, int64_t, int64_t);
  void (*thin_f32)(const GemmProblem<float>&, int64_t, int64_t);
  void (*thin_f64)(const GemmProblem<double>&, int64_t, int64_t);
  int mr_f32, nr_f32, mr_f64, nr_f64;  // tile sizes, to split C between threads on tile edges
};

// clang-format off
#define ENGRAM_BLOCKED_ISA(ns, supported_fn)                                                   \
  BlockedIsa{#ns, supported_fn, &ns::blocked_tile, &ns::blocked_tile, &ns::thin_rows,          \
             &ns::thin_rows, ns::BlockingOf<float>::value.mr, ns::BlockingOf<float>::value.nr, \
             ns::BlockingOf<double>::value.mr, ns::BlockingOf<double>::value.nr}
// clang-format on

// Best first.
const BlockedIsa kIsas[] = {
#ifdef ENGRAM_GEMM_X86_VARIANTS
    ENGRAM_BLOCKED_ISA(avx512,
                       [] {
                         return __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("avx512bw");
                       }),
    ENGRAM_BLOCKED_ISA(
        avx2, [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }),
#endif
    ENGRAM_BLOCKED_ISA(generic, [] { return true; }),
};
#undef ENGRAM_BLOCKED_ISA

const BlockedIsa* best_isa() {
#ifdef ENGRAM_GEMM_X86_VARIANTS
  __builtin_cpu_init();  // in case this runs before main (from a static initializer)
#endif
  for (const auto& isa : kIsas) {
    if (isa.supported()) return &isa;
  }
  return &kIsas[std::size(kIsas) - 1];
}

std::atomic<const BlockedIsa*> g_isa{nullptr};

const BlockedIsa& current_isa() {
  const BlockedIsa* isa = g_isa.load(std::memory_order_acquire);
  if (isa == nullptr) {
    isa = best_isa();
    g_isa.store(isa, std::memory_order_release);
  }
  return *isa;
}

}  // namespace

std::vector<std::string> blocked_isas() {
  std::vector<std::string> names;
  for (const auto& isa : kIsas) {
    if (isa.supported()) names.emplace_back(isa.name);
  }
  return names;
}

std::string blocked_isa() {
  return current_isa().name;
}

void set_blocked_isa(std::string_view name) {
  for (const auto& isa : kIsas) {
    if (name == isa.name && isa.supported()) {
      g_isa.store(&isa, std::memory_order_release);
      return;
    }
  }
  throw Error(error_message("set_blocked_isa",
                            "instruction set \"" + std::string(name) + "\" is not available"));
}

std::string blas_description() {
#if defined(ENGRAM_HAVE_BLAS) && defined(OPENBLAS_VERSION)
  return std::string(openblas_get_config()) + " core=" + openblas_get_corename();
#elif defined(ENGRAM_HAVE_BLAS)
  return "cblas";
#else
  return "";
#endif
}

}  // namespace gemm_detail

namespace {

using gemm_detail::GemmProblem;

std::atomic<int> g_threads{0};  // 0: default_threads()

#ifdef ENGRAM_HAVE_BLAS
// Instruction-set tiers, to compare OpenBLAS's kernels with ours: 2 AVX-512, 1 AVX2+FMA, 0 older.
int blocked_tier() {
  const std::string isa = gemm_detail::blocked_isas().front();  // the best this CPU runs
  return isa == "avx512" ? 2 : isa == "avx2" ? 1 : 0;
}

int blas_tier() {
#ifdef OPENBLAS_VERSION
  std::string core = openblas_get_corename();
  for (char& ch : core) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (core == "skylakex" || core == "cooperlake" || core == "sapphirerapids") return 2;
  if (core == "haswell" || core == "zen" || core == "excavator") return 1;
  return 0;
#else
  return 2;  // another BLAS: trust it
#endif
}
#endif

// The fastest backend available: the system BLAS, unless it runs kernels for an older
// instruction set than kBlocked has here. (OpenBLAS falls back to its generic "Prescott"
// kernels on CPUs newer than it knows unless OPENBLAS_CORETYPE says otherwise; see
// docs/benchmarks.md.)
GemmBackend fastest_backend() {
#ifdef ENGRAM_HAVE_BLAS
  if (blas_tier() >= blocked_tier()) return GemmBackend::kBlas;
#endif
  return GemmBackend::kBlocked;
}

constexpr int kUnset = -1;
std::atomic<int> g_backend{kUnset};

GemmBackend current_backend() {
  int b = g_backend.load(std::memory_order_relaxed);
  if (b == kUnset) {
    const int fastest = static_cast<int>(fastest_backend());
    g_backend.compare_exchange_strong(b, fastest);
    b = g_backend.load(std::memory_order_relaxed);
  }
  return static_cast<GemmBackend>(b);
}

template <class T>
void check_arguments(const char* where, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k,
                     const T* a, int64_t lda, const T* b, int64_t ldb, const T* c, int64_t ldc) {
  if (m < 0 || n < 0 || k < 0) {
    throw Error(error_message(where, "negative size m=" + std::to_string(m) +
                                         " n=" + std::to_string(n) + " k=" + std::to_string(k)));
  }
  // Leading dimensions as BLAS requires them: at least the stored row length, and at least 1.
  const int64_t a_row = ta == Trans::kNo ? k : m, b_row = tb == Trans::kNo ? n : k;
  auto check_ld = [&](const char* name, int64_t ld, int64_t row) {
    if (ld < std::max<int64_t>(1, row)) {
      throw Error(error_message(where, std::string(name) + "=" + std::to_string(ld) +
                                           " is less than the row length " +
                                           std::to_string(std::max<int64_t>(1, row))));
    }
  };
  check_ld("lda", lda, a_row);
  check_ld("ldb", ldb, b_row);
  check_ld("ldc", ldc, n);
  if ((m > 0 && n > 0 && c == nullptr) || (m > 0 && k > 0 && a == nullptr) ||
      (k > 0 && n > 0 && b == nullptr)) {
    throw Error(error_message(where, "null matrix pointer"));
  }
}

// C = beta * C over m x n, without reading C when beta == 0.
template <class T>
void scale_c(int64_t m, int64_t n, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    if (beta == T(0)) {
      std::fill(ci, ci + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
    }
  }
}

template <class T>
void gemm_reference(const GemmProblem<T>& g) {
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.n; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < g.k; ++p) {
        const T x = g.ta == Trans::kNo ? g.a[i * g.lda + p] : g.a[p * g.lda + i];
        const T y = g.tb == Trans::kNo ? g.b[p * g.ldb + j] : g.b[j * g.ldb + p];
        sum += x * y;
      }
      T& cij = g.c[i * g.ldc + j];
      cij = g.beta == T(0) ? g.alpha * sum : g.alpha * sum + g.beta * cij;
    }
  }
}

// Splits C into a grid of tiles, one per thread, on micro-tile edges, and runs the kernel of
// the current instruction set on each.
template <class T>
void gemm_blocked(const GemmProblem<T>& g) {
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0 || g.alpha == T(0)) {
    scale_c(g.m, g.n, g.beta, g.c, g.ldc);
    return;
  }
  const auto& isa = gemm_detail::current_isa();
  // A thread is worth waking for about a million multiply-adds (tens of microseconds).
  const double work =
      static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k);
  const int64_t max_threads =
      std::min<int64_t>(gemm_threads(), static_cast<int64_t>(work / 1e6) + 1);

  if (g.m <= gemm_detail::kThinRows) {  // a few rows: stream B, split its columns
    const auto thin = [&] {
      if constexpr (std::is_same_v<T, float>) {
        return isa.thin_f32;
      } else {
        return isa.thin_f64;
      }
    }();
    constexpr int64_t kColumns = 64;  // per piece, at least
    const int64_t units = (g.n + kColumns - 1) / kColumns;
    const int64_t pieces = std::min(max_threads, units);
    if (pieces <= 1) {
      thin(g, 0, g.n);
      return;
    }
    parallel_for(static_cast<size_t>(pieces), static_cast<int>(pieces), 1,
                 [&](size_t begin, size_t end) {
                   for (size_t t = begin; t < end; ++t) {
                     const auto q = static_cast<int64_t>(t);
                     thin(g, std::min(g.n, units * q / pieces * kColumns),
                          std::min(g.n, units * (q + 1) / pieces * kColumns));
                   }
                 });
    return;
  }

  const auto kernel = [&] {
    if constexpr (std::is_same_v<T, float>) {
      return isa.f32;
    } else {
      return isa.f64;
    }
  }();
  const int64_t mr = std::is_same_v<T, float> ? isa.mr_f32 : isa.mr_f64;
  const int64_t nr = std::is_same_v<T, float> ? isa.nr_f32 : isa.nr_f64;
  const int64_t m_tiles = (g.m + mr - 1) / mr, n_tiles = (g.n + nr - 1) / nr;

  const int64_t threads = std::min(max_threads, m_tiles * n_tiles);
  if (threads <= 1) {
    kernel(g, 0, g.m, 0, g.n);
    return;
  }
  // The grid tm x tn (tm * tn == threads) whose tiles are closest to square: each thread packs
  // its rows of A and columns of B, so square tiles pack the least.
  int64_t tm = 1, tn = threads;
  double best = 1e300;
  for (int64_t r = 1; r <= threads; ++r) {
    if (threads % r != 0) continue;
    const int64_t c = threads / r;
    if (r > m_tiles || c > n_tiles) continue;
    const double h = static_cast<double>(g.m) / static_cast<double>(r);
    const double w = static_cast<double>(g.n) / static_cast<double>(c);
    const double score = std::abs(std::log(h / w));
    if (score < best) best = score, tm = r, tn = c;
  }
  if (best == 1e300) {  // threads has no factorisation that fits: split the longer side only
    if (m_tiles >= n_tiles) {
      tm = std::min(threads, m_tiles), tn = 1;
    } else {
      tm = 1, tn = std::min(threads, n_tiles);
    }
  }
  parallel_for(static_cast<size_t>(tm * tn), static_cast<int>(tm * tn), 1,
               [&](size_t begin, size_t end) {
                 for (size_t t = begin; t < end; ++t) {
                   const auto r = static_cast<int64_t>(t) / tn, c = static_cast<int64_t>(t) % tn;
                   const int64_t i0 = std::min(g.m, m_tiles * r / tm * mr);
                   const int64_t i1 = std::min(g.m, m_tiles * (r + 1) / tm * mr);
                   const int64_t j0 = std::min(g.n, n_tiles * c / tn * nr);
                   const int64_t j1 = std::min(g.n, n_tiles * (c + 1) / tn * nr);
                   kernel(g, i0, i1, j0, j1);
                 }
               });
}

#ifdef ENGRAM_HAVE_BLAS
void set_blas_threads(int threads) {
#ifdef OPENBLAS_VERSION
  // OpenBLAS keeps one process-wide setting; only touch it when ours changes.
  static std::atomic<int> applied{0};
  if (applied.exchange(threads) != threads) openblas_set_num_threads(threads);
#else
  (void)threads;
#endif
}

CBLAS_TRANSPOSE cblas_trans(Trans t) {
  return t == Trans::kNo ? CblasNoTrans : CblasTrans;
}

template <class T>
void gemm_blas(const GemmProblem<T>& g) {
  if (g.m == 0 || g.n == 0) return;
  const int64_t limit = INT_MAX;
  if (g.m > limit || g.n > limit || g.k > limit || g.lda > limit || g.ldb > limit ||
      g.ldc > limit) {
    throw Error(error_message("gemm(kBlas)", "sizes exceed the BLAS integer range"));
  }
  set_blas_threads(gemm_threads());
  const auto m = static_cast<int>(g.m), n = static_cast<int>(g.n), k = static_cast<int>(g.k);
  const auto lda = static_cast<int>(g.lda), ldb = static_cast<int>(g.ldb),
             ldc = static_cast<int>(g.ldc);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, cblas_trans(g.ta), cblas_trans(g.tb), m, n, k, g.alpha, g.a, lda,
                g.b, ldb, g.beta, g.c, ldc);
  } else {
    cblas_dgemm(CblasRowMajor, cblas_trans(g.ta), cblas_trans(g.tb), m, n, k, g.alpha, g.a, lda,
                g.b, ldb, g.beta, g.c, ldc);
  }
}
#endif

}  // namespace

template <class T>
void gemm_with(GemmBackend backend, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  check_arguments("gemm", ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
  const GemmProblem<T> g{ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc};
  switch (backend) {
    case GemmBackend::kReference:
      gemm_reference(g);
      return;
    case GemmBackend::kBlocked:
      gemm_blocked(g);
      return;
    case GemmBackend::kBlas:
#ifdef ENGRAM_HAVE_BLAS
      gemm_blas(g);
      return;
#else
      break;
#endif
  }
  throw Error(error_message("gemm", std::string("backend ") + gemm_backend_name(backend) +
                                        " is not available in this build"));
}

template <class T>
void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  gemm_with<T>(current_backend(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template void gemm<float>(Trans, Trans, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(Trans, Trans, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);
template void gemm_with<float>(GemmBackend, Trans, Trans, int64_t, int64_t, int64_t, float,
                               const float*, int64_t, const float*, int64_t, float, float*,
                               int64_t);
template void gemm_with<double>(GemmBackend, Trans, Trans, int64_t, int64_t, int64_t, double,
                                const double*, int64_t, const double*, int64_t, double, double*,
                                int64_t);

bool gemm_backend_available(GemmBackend backend) {
  switch (backend) {
    case GemmBackend::kReference:
    case GemmBackend::kBlocked:
      return true;
    case GemmBackend::kBlas:
#ifdef ENGRAM_HAVE_BLAS
      return true;
#else
      return false;
#endif
  }
  return false;
}

GemmBackend default_gemm_backend() {
  return current_backend();
}

void set_default_gemm_backend(GemmBackend backend) {
  if (!gemm_backend_available(backend)) {
    throw Error(error_message(
        "set_default_gemm_backend",
        std::string("backend ") + gemm_backend_name(backend) + " is not available in this build"));
  }
  g_backend.store(static_cast<int>(backend));
}

const char* gemm_backend_name(GemmBackend backend) {
  switch (backend) {
    case GemmBackend::kReference:
      return "reference";
    case GemmBackend::kBlocked:
      return "blocked";
    case GemmBackend::kBlas:
      return "blas";
  }
  return "unknown";
}

void set_gemm_threads(int threads) {
  if (threads < 0) {
    throw Error(
        error_message("set_gemm_threads", "negative thread count " + std::to_string(threads)));
  }
  g_threads.store(threads);
}

int gemm_threads() {
  const int t = g_threads.load();
  return t > 0 ? t : default_threads();
}

}  // namespace engram
