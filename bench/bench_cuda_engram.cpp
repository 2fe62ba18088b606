// The CUDA Engram layer (GpuEngramLayer) at the shape of issue 5, for comparison with the PyTorch
// reference module (tools/torch_ref/engram_layer_ref.py bench) in the same run.
//
// Shape: B=4, T=4096, hidden 1024, hc_mult 4, max_ngram_size 3, n_embed_per_ngram 512,
// n_head_per_ngram 8 (16 heads of 64 values, d_mem 1024), kernel_size 4, bias on; the table of
// the reference default config: 16 heads of the primes just above 646,400 (the same sizes as
// engram_layer_ref.py's bench), 10,343,165 rows of 64 values. Hash ids are precomputed: random
// ids below each head's prime (no hashing; the same kind of ids as the PyTorch bench). Hidden
// states and d_out are f32 or bf16 (the layer's activations), the table f32 or bf16.
//
// One JSON line per (table dtype, precision, short_conv, what); precision: f32 (exact FP32
// projections), tf32 (TF32 tensor-core projections), bf16 (bf16 activations and projections):
//   forward            GpuEngramLayer::forward
//   forward_backward   forward, then backward (backward waits for the device: it reads back
//                      the number of unique rows)
//   gather             gather_rows alone (the forward's table read), for the achieved GB/s; also
//                      from fp8 and int8 tables, dequantized into f32 and bf16 e
// Times: device-synchronised wall clock, mean (and min) of 20 after 3 warm-ups.
// gb_per_s = rows read x row bytes / gather time (gb_per_s_rw adds the f32 e written);
// tflop_per_s = 2*N*d_mem*(1+M)*d (forward), x3 (forward+backward) / layer time.
// Peaks (/work/.library/device/H200.md, KINDS.md): HBM 4.8 TB/s (datasheet), ~4.3 TB/s measured
// device-to-device copy; fp32 (non-tensor, which is what the layer's no-TF32 SGEMMs use)
// ~67 TFLOP/s, dense bf16 tensor ~990 TFLOP/s datasheet (~790 measured).
//
//   bench_cuda_engram [reps=20]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engram/cuda/blas.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/cuda/engram_layer.h"
#include "engram/cuda/gather.h"
#include "engram/nn/engram_layer.h"
#include "engram/tensor/dtype.h"

namespace {

using Clock = std::chrono::steady_clock;
using engram::DType;
using engram::cuda::DeviceBuffer;
using engram::cuda::DeviceTable;

constexpr int64_t kBatch = 4, kSeq = 4096;
constexpr int kWarmups = 3;
constexpr double kPeakHbmGBs = 4800.0, kCopyGBs = 4300.0, kPeakFp32TFlops = 67.0;
// Dense tensor-core peaks (datasheet, no sparsity): TF32 ~495, bf16 ~990 TFLOP/s.
constexpr double kPeakTf32TFlops = 495.0, kPeakBf16TFlops = 990.0;
const std::vector<int64_t> kHeadSizes = {646403, 646411, 646421, 646423, 646433, 646453,
                                         646519, 646523, 646537, 646543, 646549, 646571,
                                         646573, 646577, 646609, 646619};

struct Timing {
  double mean_ms, min_ms;
};

template <class F>
Timing time_it(int reps, F&& fn) {
  for (int i = 0; i < kWarmups; ++i) fn();
  engram::cuda::device_synchronize();
  double total = 0.0, best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    fn();
    engram::cuda::device_synchronize();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    total += ms;
    best = std::min(best, ms);
  }
  return {total / reps, best};
}

// Cheap deterministic values in [-1, 1) (xorshift64*).
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  float uniform() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }
};

std::vector<float> uniform_vector(size_t n, uint64_t seed) {
  Rng rng{seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform();
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (engram::cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_cuda_engram: no CUDA device\n");
    return 1;
  }
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;

  engram::nn::EngramLayerConfig c;
  c.hidden_size = 1024;
  c.hc_mult = 4;
  c.max_ngram_size = 3;
  c.n_embed_per_ngram = 512;
  c.n_head_per_ngram = 8;
  c.kernel_size = 4;
  c.bias = true;
  const int64_t H = c.heads(), D = c.row_width(), M = c.hc_mult, d = c.hidden_size,
                d_mem = c.mem_dim(), N = kBatch * kSeq;

  // The CPU layer only for its head offsets, table size and the parameter initialisation.
  engram::nn::EngramLayer<float> cpu_layer(c, kHeadSizes);
  engram::nn::EngramParams<float> params;
  params.init(c, 11, /*zero_conv=*/false);
  const int64_t table_rows = cpu_layer.table_rows();

  std::printf(
      "{\"device\": \"%s\", \"batch\": %lld, \"seq\": %lld, \"hidden\": %lld, \"hc_mult\": %lld, "
      "\"heads\": %lld, \"row_width\": %lld, \"d_mem\": %lld, \"table_rows\": %lld, "
      "\"ids\": \"random below each head's prime\", \"reps\": %d, \"warmups\": %d, "
      "\"peak_hbm_gb_per_s\": %.0f, \"copy_gb_per_s_measured\": %.0f, "
      "\"peak_fp32_tflop_per_s\": %.0f}\n",
      engram::cuda::device_name(0).c_str(), static_cast<long long>(kBatch),
      static_cast<long long>(kSeq), static_cast<long long>(d), static_cast<long long>(M),
      static_cast<long long>(H), static_cast<long long>(D), static_cast<long long>(d_mem),
      static_cast<long long>(table_rows), reps, kWarmups, kPeakHbmGBs, kCopyGBs,
      kPeakFp32TFlops);
  std::fflush(stdout);

  // Ids, hidden, d_out.
  std::vector<int32_t> ids(static_cast<size_t>(N * H));
  {
    Rng rng{12345};
    for (int64_t i = 0; i < N * H; ++i)
      ids[static_cast<size_t>(i)] =
          static_cast<int32_t>(rng.next() % static_cast<uint64_t>(kHeadSizes[i % H]));
  }
  const size_t n_act = static_cast<size_t>(N * M * d);
  const DeviceBuffer<int32_t> d_ids{std::span<const int32_t>(ids)};
  const DeviceBuffer<int64_t> d_offsets{std::span<const int64_t>(cpu_layer.head_offsets())};
  const DeviceBuffer<float> d_hidden{std::span<const float>(uniform_vector(n_act, 7))};
  const DeviceBuffer<float> d_dout{std::span<const float>(uniform_vector(n_act, 8))};
  DeviceBuffer<float> d_out(n_act), d_dh(n_act), d_e(static_cast<size_t>(N * d_mem));
  // The same hidden and d_out in bf16, for the bf16-activation layer.
  auto bf16_of = [](const std::vector<float>& v) {
    std::vector<engram::bf16> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = engram::float_to_bf16(v[i]);
    return b;
  };
  const DeviceBuffer<engram::bf16> h_hidden{
      std::span<const engram::bf16>(bf16_of(uniform_vector(n_act, 7)))};
  const DeviceBuffer<engram::bf16> h_dout{
      std::span<const engram::bf16>(bf16_of(uniform_vector(n_act, 8)))};
  DeviceBuffer<engram::bf16> h_out(n_act), h_dh(n_act);

  // The table values (f32); the bf16 table is their rounding.
  const size_t n_table = static_cast<size_t>(table_rows * D);
  const std::vector<float> table_f32 = uniform_vector(n_table, 3);

  const double fwd_flop = 2.0 * static_cast<double>(N) * static_cast<double>(d_mem) *
                          static_cast<double>((1 + M) * d);

  // The layer's three projections alone, in bf16 (bf16 in, bf16 or f32 out, f32 accumulation),
  // at the layer's shapes: the GEMM floor of the bf16 layer's time.
  {
    const int64_t kvr = (1 + M) * d;
    engram::cuda::Blas blas;
    DeviceBuffer<engram::bf16> e(static_cast<size_t>(N * d_mem)), w(static_cast<size_t>(kvr * d_mem)),
        kv(static_cast<size_t>(N * kvr));
    DeviceBuffer<float> dw(static_cast<size_t>(kvr * d_mem));
    using engram::cuda::Matrix;
    using engram::cuda::MutMatrix;
    const DType b = DType::kBF16;
    struct G {
      const char* what;
      std::function<void()> fn;
    };
    const G gemms[] = {
        {"gemm_kv = e W^T",
         [&] { blas.gemm(false, true, N, kvr, d_mem, 1.0f, Matrix{e.data(), b, d_mem},
                         Matrix{w.data(), b, d_mem}, 0.0f, MutMatrix{kv.data(), b, kvr}); }},
        {"gemm_dW += dkv^T e",
         [&] { blas.gemm(true, false, kvr, d_mem, N, 1.0f, Matrix{kv.data(), b, kvr},
                         Matrix{e.data(), b, d_mem}, 1.0f,
                         MutMatrix{dw.data(), DType::kF32, d_mem}); }},
        {"gemm_de = dkv W",
         [&] { blas.gemm(false, false, N, d_mem, kvr, 1.0f, Matrix{kv.data(), b, kvr},
                         Matrix{w.data(), b, d_mem}, 0.0f, MutMatrix{e.data(), b, d_mem}); }},
    };
    for (const G& gm : gemms) {
      const Timing t = time_it(reps, gm.fn);
      std::printf("{\"bench\": \"cuda_engram\", \"precision\": \"bf16\", \"what\": \"%s\", "
                  "\"mean_ms\": %.4f, \"min_ms\": %.4f, \"tflop_per_s\": %.1f, "
                  "\"frac_of_peak\": %.3f}\n",
                  gm.what, t.mean_ms, t.min_ms, fwd_flop / t.mean_ms / 1e9,
                  fwd_flop / t.mean_ms / 1e9 / kPeakBf16TFlops);
      std::fflush(stdout);
    }
  }
  // The gather from quantized tables (fp8 E4M3 + UE8M0 per 32, int8 + float32 per 32; codes
  // random, scales 1), dequantized into f32 and bf16 e, beside the bf16 table into bf16 e: the
  // cost of dequantizing in the gather. Row bytes: fp8 66, int8 72, bf16 128.
  {
    DeviceBuffer<engram::bf16> e16(static_cast<size_t>(N * d_mem));
    for (const DType dt : {DType::kF8E4M3, DType::kI8, DType::kBF16}) {
      const int64_t row_bytes = dt == DType::kF8E4M3 ? D + D / 32 : dt == DType::kI8 ? D + D / 8 : 2 * D;
      std::vector<uint8_t> bytes(static_cast<size_t>(table_rows * row_bytes));
      Rng rng{11};
      for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng.next() >> 56);
      for (int64_t r = 0; r < table_rows && dt != DType::kBF16; ++r) {
        uint8_t* scales = bytes.data() + r * row_bytes + D;
        for (int64_t g = 0; g < D / 32; ++g) {
          if (dt == DType::kF8E4M3) {
            scales[g] = 127;
          } else {
            const float one = 1.0f;
            std::memcpy(scales + 4 * g, &one, 4);
          }
        }
      }
      const DeviceBuffer<uint8_t> d_q{std::span<const uint8_t>(bytes)};
      const DeviceTable table{d_q.data(), dt, table_rows, D};
      const double read_bytes = static_cast<double>(N * H * row_bytes);
      for (const bool to_bf16 : {false, true}) {
        if (dt == DType::kBF16 && !to_bf16) continue;  // the f32-out bf16 gather is below
        const Timing g = time_it(reps, [&] {
          if (to_bf16) {
            engram::cuda::gather_rows(e16.data(), table, d_ids.data(), d_offsets.data(), N, H);
          } else {
            engram::cuda::gather_rows(d_e.data(), table, d_ids.data(), d_offsets.data(), N, H);
          }
        });
        std::printf("{\"bench\": \"cuda_engram\", \"table\": \"%s\", \"out\": \"%s\", "
                    "\"what\": \"gather\", \"mean_ms\": %.4f, \"min_ms\": %.4f, "
                    "\"row_bytes\": %lld, \"gb_per_s\": %.1f}\n",
                    dt == DType::kF8E4M3 ? "fp8" : dt == DType::kI8 ? "int8" : "bf16",
                    to_bf16 ? "bf16" : "f32", g.mean_ms, g.min_ms,
                    static_cast<long long>(row_bytes), read_bytes / g.mean_ms / 1e6);
        std::fflush(stdout);
      }
    }
  }
  for (const DType dt : {DType::kF32, DType::kBF16}) {
    const char* dt_name = dt == DType::kBF16 ? "bf16" : "f32";
    const size_t elem = dt == DType::kBF16 ? 2 : 4;
    DeviceBuffer<uint8_t> d_table(n_table * elem);
    if (dt == DType::kBF16) {
      std::vector<engram::bf16> b(n_table);
      for (size_t i = 0; i < n_table; ++i) b[i] = engram::float_to_bf16(table_f32[i]);
      engram::cuda::copy_to_device(d_table.data(), b.data(), d_table.bytes());
    } else {
      engram::cuda::copy_to_device(d_table.data(), table_f32.data(), d_table.bytes());
    }
    const DeviceTable table{d_table.data(), dt, table_rows, D};

    // The gather alone.
    const Timing g = time_it(reps, [&] {
      engram::cuda::gather_rows(d_e.data(), table, d_ids.data(), d_offsets.data(), N, H);
    });
    const double read_bytes = static_cast<double>(N * H * D) * static_cast<double>(elem);
    const double write_bytes = static_cast<double>(N * d_mem) * 4.0;
    std::printf(
        "{\"bench\": \"cuda_engram\", \"table\": \"%s\", \"what\": \"gather\", \"mean_ms\": %.4f, "
        "\"min_ms\": %.4f, \"read_bytes\": %.0f, \"gb_per_s\": %.1f, \"gb_per_s_rw\": %.1f, "
        "\"frac_of_copy_bw\": %.3f}\n",
        dt_name, g.mean_ms, g.min_ms, read_bytes, read_bytes / g.mean_ms / 1e6,
        (read_bytes + write_bytes) / g.mean_ms / 1e6,
        (read_bytes + write_bytes) / g.mean_ms / 1e6 / kCopyGBs);
    std::fflush(stdout);

    struct Variant {
      bool conv;
      const char* prec;  // "f32" (exact FP32), "tf32", "bf16" (bf16 activations)
    };
    const std::vector<Variant> variants =
        dt == DType::kF32
            ? std::vector<Variant>{{true, "f32"}, {false, "f32"}, {true, "tf32"}, {true, "bf16"}}
            : std::vector<Variant>{{true, "f32"}, {true, "bf16"}, {false, "bf16"}};
    for (const Variant& var : variants) {
      const bool conv = var.conv;
      const bool act_bf16 = std::string(var.prec) == "bf16";
      engram::nn::EngramLayerConfig cc = c;
      cc.short_conv = conv;
      engram::nn::EngramParams<float> pc = params, sizes;
      sizes.zeros(cc);  // without the short conv, its parameters are empty
      if (sizes.conv_weight.empty()) pc.conv_weight.clear();
      if (sizes.conv_norm.empty()) pc.conv_norm.clear();
      engram::cuda::GpuEngramOptions opt;
      if (std::string(var.prec) == "tf32") opt.math = engram::cuda::Math::kTf32;
      if (act_bf16) opt.activations = DType::kBF16;
      engram::cuda::GpuEngramLayer layer(cc, pc, opt);
      engram::cuda::GpuEngramGrads grads(cc);
      auto fwd = [&] {
        if (act_bf16) {
          layer.forward(h_hidden.data(), d_ids.data(), kBatch, kSeq, table, d_offsets.data(),
                        h_out.data());
        } else {
          layer.forward(d_hidden.data(), d_ids.data(), kBatch, kSeq, table, d_offsets.data(),
                        d_out.data());
        }
      };
      auto bwd = [&] {
        if (act_bf16) {
          layer.backward(h_dout.data(), h_hidden.data(), h_dh.data(), grads);
        } else {
          layer.backward(d_dout.data(), d_hidden.data(), d_dh.data(), grads);
        }
      };
      const Timing f = time_it(reps, fwd);
      const Timing fb = time_it(reps, [&] {
        fwd();
        bwd();
      });
      // One profiled step: the device time of each phase.
      layer.set_profiling(true);
      fwd();
      bwd();
      std::string phases;
      for (const auto& [name, ms] : layer.phase_times()) {
        char buf[96];
        std::snprintf(buf, sizeof(buf), "%s\"%s\": %.4f", phases.empty() ? "" : ", ", name.c_str(),
                      ms);
        phases += buf;
      }
      layer.set_profiling(false);
      std::printf("{\"bench\": \"cuda_engram\", \"table\": \"%s\", \"precision\": \"%s\", "
                  "\"short_conv\": %s, \"what\": \"phases_ms\", %s}\n",
                  dt_name, var.prec, conv ? "true" : "false", phases.c_str());
      for (int k = 0; k < 2; ++k) {
        const Timing& t = k == 0 ? f : fb;
        const double flop = fwd_flop * (k == 0 ? 1.0 : 3.0);
        const double peak = std::string(var.prec) == "f32"    ? kPeakFp32TFlops
                            : std::string(var.prec) == "tf32" ? kPeakTf32TFlops
                                                              : kPeakBf16TFlops;
        std::printf(
            "{\"bench\": \"cuda_engram\", \"table\": \"%s\", \"precision\": \"%s\", "
            "\"short_conv\": %s, \"what\": \"%s\", \"tokens\": %lld, \"mean_ms\": %.4f, "
            "\"min_ms\": %.4f, \"gemm_flop\": %.4g, \"tflop_per_s\": %.2f, "
            "\"frac_of_peak\": %.3f, \"table_unique_rows\": %lld}\n",
            dt_name, var.prec, conv ? "true" : "false", k == 0 ? "forward" : "forward_backward",
            static_cast<long long>(N), t.mean_ms, t.min_ms, flop, flop / t.mean_ms / 1e9,
            flop / t.mean_ms / 1e9 / peak, static_cast<long long>(grads.table_unique));
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
