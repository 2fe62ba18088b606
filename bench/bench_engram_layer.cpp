// Engram layer throughput on CPU: forward and forward+backward tokens/s at a realistic shape
// (hidden 1024, hc_mult 4, 2 orders x 8 heads x 64 dims, the reference default table of
// 16 primes near 646,400 rows each), with the GEMM rate it reaches and the process's peak memory.
//
// Usage: bench_engram_layer [--tokens N] [--threads N] [--dtype f32|f64] [--seconds S]
// Prints one JSON line.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engram/memory/row_store.h"
#include "engram/nn/engram_layer.h"
#include "engram/tensor/gemm.h"
#include "engram/util/parallel.h"

namespace {

using Clock = std::chrono::steady_clock;

double now_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB
}

template <class T>
void run(int64_t tokens, int threads, double min_seconds, const char* dtype_name) {
  using namespace engram;
  nn::EngramLayerConfig c;
  c.hidden_size = 1024;
  c.hc_mult = 4;
  c.max_ngram_size = 3;
  c.n_embed_per_ngram = 512;
  c.n_head_per_ngram = 8;
  c.kernel_size = 4;
  // The reference default table: the primes the prime walk gives layer 1 of cfg_default.
  const std::vector<int64_t> sizes = {646403, 646411, 646421, 646423, 646433, 646453,
                                      646519, 646523, 646537, 646543, 646549, 646571,
                                      646573, 646577, 646609, 646619};
  nn::EngramLayer<T> layer(c, sizes);
  layer.params().init(c, 1, /*zero_conv=*/false);
  const DType dt = std::is_same_v<T, double> ? DType::kF64 : DType::kF32;
  Tensor table(dt, {layer.table_rows(), c.row_width()});
  {
    T* p = table.data<T>();
    const int64_t n = table.numel();
    parallel_for(static_cast<size_t>(n), 0, 1 << 20, [&](size_t b, size_t e) {
      std::mt19937_64 rng(b);
      std::normal_distribution<double> nd(0.0, 1.0);
      for (size_t i = b; i < e; ++i) p[i] = static_cast<T>(nd(rng));
    });
  }
  const memory::TensorRowStore store(table);
  const int64_t seq = std::min<int64_t>(tokens, 4096), batch = (tokens + seq - 1) / seq;
  const int64_t n = batch * seq;
  std::mt19937_64 rng(7);
  std::vector<int32_t> ids(static_cast<size_t>(n * c.heads()));
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int32_t>(rng() % static_cast<uint64_t>(sizes[i % sizes.size()]));
  std::vector<T> hidden(static_cast<size_t>(n * c.hc_mult * c.hidden_size)), out(hidden.size()),
      d_out(hidden.size()), d_hidden(hidden.size());
  std::normal_distribution<double> nd(0.0, 1.0);
  for (auto& x : hidden) x = static_cast<T>(nd(rng));
  for (auto& x : d_out) x = static_cast<T>(nd(rng));
  nn::EngramSaved<T> saved;
  nn::EngramParams<T> grads;
  grads.zeros(c);
  nn::SparseRowGrad<T> tg;

  auto time_loop = [&](auto&& body) {
    body();  // warm-up
    double best = 1e300, total = 0;
    for (int rep = 0; rep < 3 || total < min_seconds; ++rep) {
      const double t0 = now_s();
      body();
      const double dt_s = now_s() - t0;
      best = std::min(best, dt_s);
      total += dt_s;
    }
    return best;
  };
  const double fwd = time_loop(
      [&] { layer.forward(hidden.data(), ids.data(), batch, seq, store, out.data(), saved); });
  const double fwd_bwd = time_loop([&] {
    layer.forward(hidden.data(), ids.data(), batch, seq, store, out.data(), saved);
    layer.backward(d_out.data(), hidden.data(), saved, d_hidden.data(), grads, tg);
  });
  // GEMM work: forward one (n x d_mem) by (d_mem x (1+M)d) product; backward two more.
  const double gemm_flop = 2.0 * static_cast<double>(n) * static_cast<double>(c.mem_dim()) *
                           static_cast<double>(c.kv_rows());
  std::printf(
      "{\"dtype\": \"%s\", \"tokens\": %lld, \"threads\": %d, \"gemm_backend\": \"%s\", "
      "\"table_rows\": %lld, "
      "\"forward_tokens_per_s\": %.6g, \"forward_backward_tokens_per_s\": %.6g, \"forward_ms\": "
      "%.4g, "
      "\"forward_backward_ms\": %.4g, \"forward_gemm_gflops\": %.4g, "
      "\"layer_gflop_per_s_fwd_bwd\": %.4g, "
      "\"peak_rss_gib\": %.3f}\n",
      dtype_name, static_cast<long long>(n), threads, gemm_backend_name(default_gemm_backend()),
      static_cast<long long>(layer.table_rows()), static_cast<double>(n) / fwd,
      static_cast<double>(n) / fwd_bwd, fwd * 1e3, fwd_bwd * 1e3, gemm_flop / fwd / 1e9,
      3 * gemm_flop / fwd_bwd / 1e9, peak_rss_gib());
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 4096;
  int threads = 0;
  double seconds = 2.0;
  std::string dtype = "f32";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tokens")
      tokens = std::stoll(argv[i + 1]);
    else if (a == "--threads")
      threads = std::stoi(argv[i + 1]);
    else if (a == "--seconds")
      seconds = std::stod(argv[i + 1]);
    else if (a == "--dtype")
      dtype = argv[i + 1];
    else {
      std::fprintf(
          stderr,
          "usage: bench_engram_layer [--tokens N] [--threads N] [--dtype f32|f64] [--seconds S]\n");
      return 2;
    }
  }
  engram::set_default_threads(threads);
  engram::set_gemm_threads(threads);
  if (threads == 0) threads = engram::default_threads();
  if (dtype == "f64") {
    run<double>(tokens, threads, seconds, "f64");
  } else {
    run<float>(tokens, threads, seconds, "f32");
  }
  return 0;
}
