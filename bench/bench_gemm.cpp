// GEMM throughput per backend against the machine's measured peak.
//
// Prints one JSON line per measurement:
//   {"bench":"peak", "dtype", "isa", "threads", "gflops"}   a register-only FMA loop: the
//                                                            arithmetic ceiling of the cores
//   {"bench":"gemm", "dtype", "backend", "isa", "m", "n", "k", "ta", "tb", "threads",
//    "seconds" (best of the timed calls), "gflops", "peak_gflops", "pct_peak"}
// Shapes are the Engram layer's: M = tokens (4096..16384) x K = 1024 hidden into N = 1024 or
// 4096 (forward, with the weight stored as is or transposed), the weight gradient X^T dY
// (k = tokens), square 1024 / 2048, and decoding (1 or 4 rows: bound by reading the weight, so
// far below the arithmetic peak). kReference runs only at small sizes (it is a triple loop).
// The first line, {"bench":"config"}, names the BLAS, its kernel set and the default backend.
//
//   build/bench/bench_gemm [--quick] [--dtype f32|f64] [--threads N] [--all-isas]
// --quick: fewer, smaller shapes. --threads N: the "all threads" runs use N (default all
// cores). --all-isas: also time kBlocked with each lesser instruction set.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engram/tensor/gemm.h"
#include "engram/util/parallel.h"
#include "peak.h"
#include "tensor/gemm_problem.h"

namespace {

using engram::GemmBackend;
using engram::Trans;
using Clock = std::chrono::steady_clock;
using engram_bench::measure_peak;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- GEMM -------------------------------------------------------------------------------------
struct Shape {
  int64_t m, n, k;
  Trans ta, tb;
  const char* what;
};

template <class T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "f32" : "f64";
}

template <class T>
void bench_gemm(const Shape& s, GemmBackend backend, const std::string& isa, int threads,
                double peak) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<T> uni(-1, 1);
  const int64_t a_elems = s.m * s.k, b_elems = s.k * s.n, c_elems = s.m * s.n;
  std::vector<T> a(static_cast<size_t>(a_elems)), b(static_cast<size_t>(b_elems)),
      c(static_cast<size_t>(c_elems));
  for (auto& x : a) x = uni(rng);
  for (auto& x : b) x = uni(rng);
  const int64_t lda = s.ta == Trans::kNo ? s.k : s.m, ldb = s.tb == Trans::kNo ? s.n : s.k;
  engram::set_gemm_threads(threads);
  if (backend == GemmBackend::kBlocked) engram::gemm_detail::set_blocked_isa(isa);
  auto call = [&] {
    engram::gemm_with<T>(backend, s.ta, s.tb, s.m, s.n, s.k, T(1), a.data(), lda, b.data(), ldb,
                         T(0), c.data(), s.n);
  };
  call();  // warm-up: page faults, packing buffers, thread start
  double best = 1e30;
  const auto start = Clock::now();
  for (int rep = 0; rep < 20; ++rep) {
    const auto t0 = Clock::now();
    call();
    best = std::min(best, seconds_since(t0));
    if (rep >= 1 && seconds_since(start) > 1.5) break;
  }
  const double flops =
      2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k);
  const double gflops = flops / best / 1e9;
  std::printf(
      "{\"bench\":\"gemm\",\"shape\":\"%s\",\"dtype\":\"%s\",\"backend\":\"%s\",\"isa\":\"%s\","
      "\"m\":%lld,\"n\":%lld,\"k\":%lld,\"ta\":%s,\"tb\":%s,\"threads\":%d,\"seconds\":%.6f,"
      "\"gflops\":%.2f,\"peak_gflops\":%.2f,\"pct_peak\":%.1f}\n",
      s.what, dtype_name<T>(), engram::gemm_backend_name(backend),
      backend == GemmBackend::kBlocked ? isa.c_str() : "", static_cast<long long>(s.m),
      static_cast<long long>(s.n), static_cast<long long>(s.k),
      s.ta == Trans::kYes ? "true" : "false", s.tb == Trans::kYes ? "true" : "false", threads, best,
      gflops, peak, 100.0 * gflops / peak);
  std::fflush(stdout);
}

template <class T>
void run_dtype(bool quick, int all_threads, bool all_isas) {
  const auto isas = engram::gemm_detail::blocked_isas();
  const std::string best_isa = isas.front();
  const double peak1 = measure_peak<T>(best_isa, 1);
  const double peak_all = measure_peak<T>(best_isa, all_threads);
  for (const auto& [threads, peak] : {std::pair{1, peak1}, std::pair{all_threads, peak_all}}) {
    if (threads == all_threads && all_threads == 1) break;  // printed already
    std::printf(
        "{\"bench\":\"peak\",\"dtype\":\"%s\",\"isa\":\"%s\",\"threads\":%d,\"gflops\":%.2f}\n",
        dtype_name<T>(), best_isa.c_str(), threads, peak);
  }
  std::fflush(stdout);

  // kReference: small only.
  for (const int64_t n : {128, 256, 512}) {
    bench_gemm<T>({n, n, n, Trans::kNo, Trans::kNo, "square"}, GemmBackend::kReference, "", 1,
                  peak1);
  }
  std::vector<Shape> shapes;
  if (quick) {
    shapes = {{1024, 1024, 1024, Trans::kNo, Trans::kNo, "square"},
              {4096, 1024, 1024, Trans::kNo, Trans::kNo, "engram_fwd"},
              {4096, 1024, 1024, Trans::kNo, Trans::kYes, "engram_fwd_wT"},
              {1024, 1024, 4096, Trans::kYes, Trans::kNo, "engram_dW"},
              {1, 4096, 1024, Trans::kNo, Trans::kYes, "decode_wT"}};
  } else {
    shapes = {{1024, 1024, 1024, Trans::kNo, Trans::kNo, "square"},
              {2048, 2048, 2048, Trans::kNo, Trans::kNo, "square"},
              {4096, 1024, 1024, Trans::kNo, Trans::kNo, "engram_fwd"},
              {8192, 1024, 1024, Trans::kNo, Trans::kNo, "engram_fwd"},
              {16384, 1024, 1024, Trans::kNo, Trans::kNo, "engram_fwd"},
              {4096, 4096, 1024, Trans::kNo, Trans::kNo, "engram_fwd"},
              {16384, 4096, 1024, Trans::kNo, Trans::kNo, "engram_fwd"},
              {16384, 1024, 1024, Trans::kNo, Trans::kYes, "engram_fwd_wT"},
              {1024, 1024, 16384, Trans::kYes, Trans::kNo, "engram_dW"},
              {1, 4096, 1024, Trans::kNo, Trans::kYes, "decode_wT"},
              {4, 4096, 1024, Trans::kNo, Trans::kNo, "decode_w"}};
  }
  for (const auto& s : shapes) {
    for (const int threads : {1, all_threads}) {
      const double peak = threads == 1 ? peak1 : peak_all;
      if (engram::gemm_backend_available(GemmBackend::kBlas)) {
        bench_gemm<T>(s, GemmBackend::kBlas, "", threads, peak);
      }
      bench_gemm<T>(s, GemmBackend::kBlocked, best_isa, threads, peak);
      if (all_isas) {
        for (size_t i = 1; i < isas.size(); ++i) {
          bench_gemm<T>(s, GemmBackend::kBlocked, isas[i], threads, peak);
        }
      }
      if (threads == all_threads) break;  // one machine thread: the two runs are the same
    }
  }
  engram::gemm_detail::set_blocked_isa(best_isa);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, all_isas = false;
  std::string dtype = "all";
  int threads = engram::hardware_threads();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--all-isas") {
      all_isas = true;
    } else if (arg == "--dtype" && i + 1 < argc) {
      dtype = argv[++i];
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: bench_gemm [--quick] [--dtype f32|f64] [--threads N] [--all-isas]\n");
      return 2;
    }
  }
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf(
      "{\"bench\":\"config\",\"hardware_threads\":%d,\"blocked_isa\":\"%s\",\"blas\":\"%s\","
      "\"OPENBLAS_CORETYPE\":\"%s\",\"default_backend\":\"%s\"}\n",
      engram::hardware_threads(), engram::gemm_detail::blocked_isa().c_str(),
      engram::gemm_detail::blas_description().c_str(), coretype ? coretype : "",
      engram::gemm_backend_name(engram::default_gemm_backend()));
  if (dtype == "all" || dtype == "f32") run_dtype<float>(quick, threads, all_isas);
  if (dtype == "all" || dtype == "f64") run_dtype<double>(quick, threads, all_isas);
  return 0;
}
