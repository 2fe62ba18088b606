// Throughput of Engram's n-gram hashing (NgramHasher) in the reference's default shape:
// orders 2..3, 8 heads, layers [1, 15], V' = 98,627.
//
// Counters: tokens/s; ids/s (tokens x ids_per_token x layers, each one 64-bit multiply-xor
// share and one exact modulo); out_bytes/s (the int32 ids written: the memory traffic floor).
// The compression table is the golden one when ENGRAM_COMPRESS_LUT names an .npy file, else a
// synthetic table of the same shape (128,815 ids onto 98,627): hashing speed does not depend on
// which ids map where.
//
//   build/bench/bench_hash [--benchmark_filter=OneLayer]
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <span>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/util/npy.h"

namespace {

using engram::hash::EngramHashConfig;
using engram::hash::NgramHasher;
using engram::hash::StreamingHasher;

constexpr size_t kTokenizerVocab = 128815;
constexpr int32_t kCompressedVocab = 98627;
// Batches of up to kMaxBatch rows of kSeqLen tokens. 8 x 4096 (output 2 MiB a layer, about L2)
// matches tools/reference/engram_hash_numpy.py's default; 32 x 4096 (8 MiB a layer) gives each
// of several threads a share worth handing over.
constexpr size_t kMaxBatch = 32, kSeqLen = 4096;

std::vector<int32_t> compress_lut() {
  if (const char* path = std::getenv("ENGRAM_COMPRESS_LUT")) {
    return engram::read_npy_int32_vector(path);
  }
  std::mt19937_64 rng(1);
  std::vector<int32_t> lut(kTokenizerVocab);
  for (size_t i = 0; i < lut.size(); ++i) {
    lut[i] = i < static_cast<size_t>(kCompressedVocab)
                 ? static_cast<int32_t>(i)
                 : static_cast<int32_t>(rng() % static_cast<uint64_t>(kCompressedVocab));
  }
  return lut;
}

const NgramHasher& hasher() {
  static const NgramHasher h(EngramHashConfig{}, compress_lut(), kCompressedVocab);
  return h;
}

const std::vector<int64_t>& random_ids() {
  static const std::vector<int64_t> ids = [] {
    std::mt19937_64 rng(2);
    std::vector<int64_t> v(kMaxBatch * kSeqLen);
    for (auto& id : v) id = static_cast<int64_t>(rng() % hasher().tokenizer_vocab());
    return v;
  }();
  return ids;
}

void set_counters(benchmark::State& state, size_t tokens_per_iter, size_t layers) {
  const double tokens =
      static_cast<double>(state.iterations()) * static_cast<double>(tokens_per_iter);
  const double ids = tokens * static_cast<double>(layers) * hasher().ids_per_token();
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["ids/s"] = benchmark::Counter(ids, benchmark::Counter::kIsRate);
  state.counters["out_bytes/s"] = benchmark::Counter(
      ids * sizeof(int32_t), benchmark::Counter::kIsRate, benchmark::Counter::kIs1024);
}

// Args: batch rows, threads (0 = all cores; NgramHasher hands a thread at least 32 Ki
// tokens x layers, so one layer of batch 8 runs on one thread either way).
void BM_HashOneLayer(benchmark::State& state) {
  const NgramHasher& h = hasher();
  const size_t batch = static_cast<size_t>(state.range(0));
  const std::span<const int64_t> ids = std::span(random_ids()).first(batch * kSeqLen);
  std::vector<int32_t> out(ids.size() * static_cast<size_t>(h.ids_per_token()));
  const int threads = static_cast<int>(state.range(1));
  for (auto _ : state) {
    h.hash(ids, batch, kSeqLen, 0, out, threads);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, ids.size(), 1);
}
BENCHMARK(BM_HashOneLayer)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{8, 32}, {1, 0}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_HashAllLayers(benchmark::State& state) {
  const NgramHasher& h = hasher();
  const size_t batch = static_cast<size_t>(state.range(0));
  const std::span<const int64_t> ids = std::span(random_ids()).first(batch * kSeqLen);
  std::vector<int32_t> out(h.num_layers() * ids.size() * static_cast<size_t>(h.ids_per_token()));
  const int threads = static_cast<int>(state.range(1));
  for (auto _ : state) {
    h.hash_all_layers(ids, batch, kSeqLen, out, threads);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, ids.size(), h.num_layers());
}
BENCHMARK(BM_HashAllLayers)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{8, 32}, {1, 0}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// DeepSeek-V4.1's shape with the dead-id rule: orders 2..4, 8 heads, base 16,000,000, two
// layers; one token in 64 is dead (-1). One layer, one thread.
void BM_HashOneLayerDeadRule(benchmark::State& state) {
  EngramHashConfig c;
  c.max_ngram_size = 4;
  c.engram_vocab_size = {16000000, 16000000, 16000000};
  c.n_embed_per_ngram = 2048;
  c.layer_ids = {1, 14};
  c.dead_token_id = -1;
  static const NgramHasher h(c, compress_lut(), kCompressedVocab);
  std::vector<int64_t> ids = random_ids();
  ids.resize(8 * kSeqLen);
  for (size_t i = 0; i < ids.size(); i += 64) ids[i] = -1;
  std::vector<int32_t> out(ids.size() * static_cast<size_t>(h.ids_per_token()));
  for (auto _ : state) {
    h.hash(ids, 8, kSeqLen, 0, out, 1);
    benchmark::DoNotOptimize(out.data());
  }
  const double tokens = static_cast<double>(state.iterations()) * static_cast<double>(ids.size());
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["ids/s"] =
      benchmark::Counter(tokens * h.ids_per_token(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_HashOneLayerDeadRule)->UseRealTime()->Unit(benchmark::kMicrosecond);

// The kernel alone: already compressed ids, one layer, one thread, output in L2 (256 KiB).
void BM_HashCompressedOneLayer(benchmark::State& state) {
  const NgramHasher& h = hasher();
  std::vector<int64_t> window(kSeqLen + 2, h.pad_compressed());  // (N-1 history, ids)
  std::vector<int64_t> ids(kSeqLen);
  h.compress(std::span(random_ids()).first(kSeqLen), ids);
  std::copy(ids.begin(), ids.end(), window.begin() + 2);
  std::vector<int32_t> out(kSeqLen * static_cast<size_t>(h.ids_per_token()));
  for (auto _ : state) {
    h.hash_compressed(window.data(), window.data() + 2, kSeqLen, 0, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, kSeqLen, 1);
}
BENCHMARK(BM_HashCompressedOneLayer)->Unit(benchmark::kMicrosecond);

// Decode: one token per step for all layers, as a serving loop calls it.
void BM_StreamDecodeStep(benchmark::State& state) {
  const NgramHasher& h = hasher();
  StreamingHasher stream(h);
  const std::vector<int64_t>& ids = random_ids();
  std::vector<int32_t> out(h.num_layers() * static_cast<size_t>(h.ids_per_token()));
  size_t i = 0;
  for (auto _ : state) {
    stream.push(std::span(ids).subspan(i, 1), out);
    benchmark::DoNotOptimize(out.data());
    i = (i + 1) % ids.size();
  }
  set_counters(state, 1, h.num_layers());
}
BENCHMARK(BM_StreamDecodeStep);

}  // namespace

BENCHMARK_MAIN();
