// The arithmetic ceiling of the cores: independent fused multiply-add chains kept in registers,
// timed on 1..N threads at once. Shared by the benchmarks that report a fraction of peak.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace engram_bench {

using PeakClock = std::chrono::steady_clock;

// ---- Peak: independent fused multiply-add chains, all in registers -------------------------
// 16 accumulators cover the FMA latency (4 cycles) times the FMA ports (2). Returns a value
// derived from the accumulators so the loop cannot be removed.
#define ENGRAM_PEAK_LOOP(T, BYTES)                                                 \
  typedef T V __attribute__((vector_size(BYTES)));                                 \
  V acc[16];                                                                       \
  for (int i = 0; i < 16; ++i) acc[i] = V{} + static_cast<T>(i) * T(1e-3);         \
  const V x = V{} + T(0.999999), y = V{} + T(1e-7);                                \
  for (int64_t it = 0; it < iters; ++it) {                                         \
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i) acc[i] = acc[i] * x + y; \
  }                                                                                \
  T sum = 0;                                                                       \
  for (int i = 0; i < 16; ++i)                                                     \
    for (size_t l = 0; l < BYTES / sizeof(T); ++l) sum += acc[i][l];               \
  return static_cast<double>(sum);

template <class T>
inline double peak_generic(int64_t iters) {
  ENGRAM_PEAK_LOOP(T, 16)
}
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
template <class T>
__attribute__((target("avx2,fma"))) double peak_avx2(int64_t iters) {
  ENGRAM_PEAK_LOOP(T, 32)
}
template <class T>
__attribute__((target("avx512f,fma"))) double peak_avx512(int64_t iters) {
  ENGRAM_PEAK_LOOP(T, 64)
}
#endif

// Flops of one iteration of the loop above.
template <class T>
inline int64_t peak_flops_per_iter(const std::string& isa) {
  const int64_t bytes = isa == "avx512" ? 64 : isa == "avx2" ? 32 : 16;
  return 16 * 2 * bytes / static_cast<int64_t>(sizeof(T));
}

template <class T>
inline double run_peak_loop(const std::string& isa, int64_t iters) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (isa == "avx512") return peak_avx512<T>(iters);
  if (isa == "avx2") return peak_avx2<T>(iters);
#endif
  return peak_generic<T>(iters);
}

// GFLOP/s of `threads` copies of the loop running at once.
template <class T>
inline double measure_peak(const std::string& isa, int threads) {
  const int64_t iters = 50'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<std::thread> pool;
    std::vector<double> sink(static_cast<size_t>(threads));
    const auto t0 = PeakClock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] { sink[static_cast<size_t>(t)] = run_peak_loop<T>(isa, iters); });
    }
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(PeakClock::now() - t0).count();
    if (sink[0] == 12345.678) std::puts("");  // keep the results live
    best = std::max(best,
                    static_cast<double>(iters * peak_flops_per_iter<T>(isa) * threads) / s / 1e9);
  }
  return best;
}


}  // namespace engram_bench
