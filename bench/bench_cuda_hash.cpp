// GPU n-gram hashing (GpuNgramHasher) against the CPU hasher (NgramHasher::hash_all_layers on
// all cores), measured in the same run, in the reference's default shape: orders 2..3, 8 heads,
// layers [1, 15], bases 646,400, a synthetic compression table of 128,815 ids onto 98,627.
//
// One JSON line per (tokens, path):
//   gpu_device       ids already on the GPU, output left there: the kernel alone (no copies)
//   gpu_with_copies  H2D of the ids, the kernel, D2H of the output, from and to pageable host
//                    memory (what hash_host does, less its id check)
//   cpu              hash_all_layers, threads = all cores
// gb_per_s counts the ideal traffic (8-byte ids read once, the int32 ids written):
// 136 bytes a token, against about 4.3 TB/s measured for a device-to-device copy on an H200.
// The GPU output is compared with the CPU's id for id ("identical").
//
//   build-cuda/bench/bench_cuda_hash [max_tokens_log2=24]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/cuda/ngram_hash.h"
#include "engram/hash/ngram_hasher.h"

namespace {

using Clock = std::chrono::steady_clock;
using engram::cuda::DeviceBuffer;
using engram::hash::EngramHashConfig;
using engram::hash::NgramHasher;

constexpr int64_t kTokenizerVocab = 128815;
constexpr int32_t kCompressedVocab = 98627;
constexpr int64_t kSeqLen = 4096;

std::vector<int32_t> synthetic_lut() {
  std::mt19937_64 rng(1);
  std::vector<int32_t> lut(kTokenizerVocab);
  for (size_t i = 0; i < lut.size(); ++i) {
    lut[i] = i < static_cast<size_t>(kCompressedVocab)
                 ? static_cast<int32_t>(i)
                 : static_cast<int32_t>(rng() % static_cast<uint64_t>(kCompressedVocab));
  }
  return lut;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best of `reps` timings of fn().
template <class F>
double best_seconds(int reps, F&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    fn();
    best = std::min(best, seconds_since(start));
  }
  return best;
}

void print(const char* path, int64_t tokens, double seconds, int reps, int threads,
           bool identical) {
  const double tps = static_cast<double>(tokens) / seconds;
  std::printf(
      "{\"bench\": \"cuda_hash\", \"path\": \"%s\", \"tokens\": %lld, \"layers\": 2, "
      "\"ids_per_token\": 16, \"seconds\": %.6f, \"reps\": %d, \"tokens_per_s\": %.4g, "
      "\"gb_per_s\": %.1f, \"threads\": %d, \"identical\": %s}\n",
      path, static_cast<long long>(tokens), seconds, reps, tps, tps * 136.0 / 1e9, threads,
      identical ? "true" : "false");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int max_log2 = argc > 1 ? std::atoi(argv[1]) : 24;
  if (engram::cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_cuda_hash: no CUDA device\n");
    return 1;
  }
  const NgramHasher cpu(EngramHashConfig{}, synthetic_lut(), kCompressedVocab);
  const engram::cuda::GpuNgramHasher gpu(cpu);
  const int threads = static_cast<int>(std::thread::hardware_concurrency());
  std::printf("{\"device\": \"%s\", \"cpu_threads\": %d}\n", engram::cuda::device_name(0).c_str(),
              threads);
  for (int log2 : {20, 24}) {
    if (log2 > max_log2) break;
    const int64_t tokens = int64_t{1} << log2, batch = tokens / kSeqLen;
    std::mt19937_64 rng(2);
    std::vector<int64_t> ids(static_cast<size_t>(tokens));
    for (auto& id : ids) id = static_cast<int64_t>(rng() % kTokenizerVocab);
    const size_t out_size = 2 * ids.size() * 16;

    // CPU reference, all cores.
    std::vector<int32_t> want(out_size);
    const int cpu_reps = log2 <= 20 ? 5 : 2;
    const double cpu_s = best_seconds(
        cpu_reps, [&] { cpu.hash_all_layers(ids, static_cast<size_t>(batch), kSeqLen, want, 0); });

    // GPU, kernel only.
    const DeviceBuffer<int64_t> d_ids{std::span<const int64_t>(ids)};
    DeviceBuffer<int32_t> d_out(out_size);
    gpu.hash(d_ids.data(), batch, kSeqLen, d_out.data());  // warm-up
    engram::cuda::device_synchronize();
    const int gpu_reps = 20;
    const double dev_s = best_seconds(gpu_reps, [&] {
      gpu.hash(d_ids.data(), batch, kSeqLen, d_out.data());
      engram::cuda::device_synchronize();
    });
    std::vector<int32_t> got(out_size);
    d_out.download(got);
    const bool identical = got == want;

    // GPU with copies from and to pageable host memory.
    DeviceBuffer<int64_t> d_ids_copy(ids.size());
    const double copy_s = best_seconds(5, [&] {
      d_ids_copy.upload(ids);
      gpu.hash(d_ids_copy.data(), batch, kSeqLen, d_out.data());
      d_out.download(got);
    });
    const bool identical_copy = got == want;

    print("gpu_device", tokens, dev_s, gpu_reps, 0, identical);
    print("gpu_with_copies", tokens, copy_s, 5, 0, identical_copy);
    print("cpu", tokens, cpu_s, cpu_reps, threads, true);
  }
  return 0;
}
