// GPU n-gram hashing against the CPU hasher, id for id (skipped without a GPU), and the clear
// error a machine without one gets.
#include "engram/cuda/ngram_hash.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"

namespace engram::cuda {
namespace {

using hash::EngramHashConfig;
using hash::NgramHasher;

// The reference tokenizer's sizes: 128,815 ids compressed onto 98,627.
constexpr int64_t kTokenizerVocab = 128815;
constexpr int32_t kCompressedVocab = 98627;

// A synthetic compression table: the first V' ids onto themselves, the rest at random.
NgramHasher make_hasher(EngramHashConfig config, int64_t vocab = kTokenizerVocab,
                        int32_t compressed = kCompressedVocab) {
  std::mt19937_64 rng(7);
  std::vector<int32_t> lut(static_cast<size_t>(vocab));
  for (size_t i = 0; i < lut.size(); ++i) {
    lut[i] = i < static_cast<size_t>(compressed)
                 ? static_cast<int32_t>(i)
                 : static_cast<int32_t>(rng() % static_cast<uint64_t>(compressed));
  }
  return NgramHasher(std::move(config), std::move(lut), compressed);
}

std::vector<int64_t> random_ids(size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  return ids;
}

// The CPU's ids (all cores) against the GPU's, reporting the first difference only.
void expect_same_as_cpu(const NgramHasher& cpu, const GpuNgramHasher& gpu,
                        const std::vector<int64_t>& ids, int64_t batch, int64_t seq) {
  const size_t ipt = static_cast<size_t>(cpu.ids_per_token());
  std::vector<int32_t> want(cpu.num_layers() * ids.size() * ipt);
  cpu.hash_all_layers(ids, static_cast<size_t>(batch), static_cast<size_t>(seq), want, 0);
  const std::vector<int32_t> got = gpu.hash_host(ids, batch, seq);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i]) {
      const size_t token = i / ipt % ids.size(), layer = i / ipt / ids.size();
      FAIL() << "batch " << batch << " x seq " << seq << ": layer " << layer << ", ids["
             << token / static_cast<size_t>(seq) << "][" << token % static_cast<size_t>(seq)
             << "], id " << i % ipt << ": GPU " << got[i] << ", CPU " << want[i];
    }
  }
}

TEST(GpuNgramHasher, ReferenceDefaultConfigOverShapes) {
  SKIP_WITHOUT_GPU();
  const NgramHasher cpu = make_hasher(EngramHashConfig{});  // 646,400 x 2 orders, 8 heads, 2 layers
  const GpuNgramHasher gpu(cpu);
  EXPECT_EQ(gpu.num_layers(), 2);
  EXPECT_EQ(gpu.ids_per_token(), 16);
  // seq 1 and 2 are shorter than max_ngram_size; 100,003 tokens span many blocks.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {1, 2}, {5, 1}, {3, 2}, {2, 3}, {7, 33}, {4, 4096}, {1, 100003}, {64, 512}};
  uint64_t seed = 1;
  for (const auto& [batch, seq] : shapes) {
    const auto ids = random_ids(static_cast<size_t>(batch * seq), kTokenizerVocab, seed++);
    expect_same_as_cpu(cpu, gpu, ids, batch, seq);
  }
}

TEST(GpuNgramHasher, PadIdsAndExtremeIds) {
  SKIP_WITHOUT_GPU();
  const NgramHasher cpu = make_hasher(EngramHashConfig{});
  const GpuNgramHasher gpu(cpu);
  const int64_t pad = cpu.config().pad_id, last = kTokenizerVocab - 1;
  // Rows of pads, pads inside rows, and the first and last tokenizer ids.
  const std::vector<int64_t> ids = {pad, pad,  pad, pad, 0,   pad, last, 0,   pad,  pad,
                                    5,   last, 0,   0,   pad, 9,   pad,  pad, last, last};
  expect_same_as_cpu(cpu, gpu, ids, 4, 5);
  expect_same_as_cpu(cpu, gpu, ids, 10, 2);
  expect_same_as_cpu(cpu, gpu, ids, 20, 1);
  // A token with only pads before it hashes like the row's first token.
  const std::vector<int32_t> row = gpu.hash_host(std::vector<int64_t>{pad, pad, 42}, 1, 3);
  const std::vector<int32_t> first = gpu.hash_host(std::vector<int64_t>{42}, 1, 1);
  for (size_t l = 0; l < 2; ++l) {
    for (size_t j = 0; j < 16; ++j) EXPECT_EQ(row[l * 48 + 32 + j], first[l * 16 + j]);
  }
}

TEST(GpuNgramHasher, ThreeLayersUpToFourGrams) {
  SKIP_WITHOUT_GPU();
  EngramHashConfig c;
  c.engram_vocab_size = {646400, 500000, 300007};
  c.max_ngram_size = 4;
  c.layer_ids = {1, 7, 15};
  c.seed = 12345;
  const NgramHasher cpu = make_hasher(c);
  const GpuNgramHasher gpu(cpu);
  for (const auto& [batch, seq] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {2, 2}, {3, 3}, {4, 5}, {8, 1000}, {2, 65536}}) {
    const auto ids = random_ids(static_cast<size_t>(batch * seq), kTokenizerVocab, 99);
    expect_same_as_cpu(cpu, gpu, ids, batch, seq);
  }
}

TEST(GpuNgramHasher, OtherHeadCountsAndSizes) {
  SKIP_WITHOUT_GPU();
  // K = 16 (vector stores), K = 3 and 5 (scalar stores), tiny tables and vocabularies.
  struct Case {
    std::vector<int64_t> bases;
    int heads;
    int64_t vocab;
    int32_t compressed;
  };
  const std::vector<Case> cases = {{{1000, 2000}, 16, 5000, 3000},
                                   {{17, 31, 64}, 3, 100, 7},
                                   {{2262400}, 5, 1000, 1000},
                                   {{16000000, 16000000, 16000000}, 8, 129280, 99092}};
  for (const Case& k : cases) {
    EngramHashConfig c;
    c.engram_vocab_size = k.bases;
    c.max_ngram_size = static_cast<int>(k.bases.size()) + 1;
    c.n_head_per_ngram = k.heads;
    c.n_embed_per_ngram = 4 * k.heads;
    c.pad_id = 1;
    const NgramHasher cpu = make_hasher(c, k.vocab, k.compressed);
    const GpuNgramHasher gpu(cpu);
    const auto ids = random_ids(3 * 777, k.vocab, static_cast<uint64_t>(k.heads));
    expect_same_as_cpu(cpu, gpu, ids, 3, 777);
  }
}

TEST(GpuNgramHasher, DeadIdRule) {
  SKIP_WITHOUT_GPU();
  EngramHashConfig c;
  c.max_ngram_size = 4;
  c.engram_vocab_size = {646400, 646400, 646400};
  c.dead_token_id = -1;
  const NgramHasher cpu = make_hasher(c);
  const GpuNgramHasher gpu(cpu);
  // About one token in six dead, runs of dead tokens included, and rows starting dead.
  std::vector<int64_t> ids = random_ids(16 * 300, kTokenizerVocab, 5);
  std::mt19937_64 rng(6);
  for (auto& id : ids) {
    if (rng() % 6 == 0) id = -1;
  }
  ids[0] = ids[1] = ids[300] = -1;
  expect_same_as_cpu(cpu, gpu, ids, 16, 300);
  expect_same_as_cpu(cpu, gpu, ids, 1600, 3);
}

TEST(GpuNgramHasher, DeviceApiWritesAnyAlignmentAndOnAStream) {
  SKIP_WITHOUT_GPU();
  const NgramHasher cpu = make_hasher(EngramHashConfig{});
  const GpuNgramHasher gpu(cpu);
  const int64_t batch = 3, seq = 1001;
  const auto ids = random_ids(static_cast<size_t>(batch * seq), kTokenizerVocab, 11);
  const std::vector<int32_t> want = gpu.hash_host(ids, batch, seq);
  const DeviceBuffer<int64_t> d_ids{std::span<const int64_t>(ids)};
  // One int32 past a 16-byte boundary: the kernel must fall back to 4-byte stores.
  DeviceBuffer<int32_t> d_out(want.size() + 1);
  gpu.hash(d_ids.data(), batch, seq, d_out.data() + 1);
  std::vector<int32_t> got(want.size() + 1);
  d_out.download(got);
  EXPECT_EQ(std::vector<int32_t>(got.begin() + 1, got.end()), want);
  EXPECT_THROW(gpu.hash(d_ids.data(), -1, seq, d_out.data()), InputError);
  gpu.hash(d_ids.data(), 0, seq, d_out.data());  // nothing to do
}

TEST(GpuNgramHasher, BadIdsAreInputErrorsOnTheHostAndHarmlessOnTheDevice) {
  SKIP_WITHOUT_GPU();
  const NgramHasher cpu = make_hasher(EngramHashConfig{});
  const GpuNgramHasher gpu(cpu);
  std::vector<int64_t> ids = random_ids(2 * 6, kTokenizerVocab, 3);
  ids[8] = kTokenizerVocab;  // row 1, position 2
  try {
    gpu.hash_host(ids, 2, 6);
    FAIL() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("ids[1][2] = 128815"), std::string::npos) << e.what();
  }
  ids[8] = -1;  // not the dead id: dead-id rule off
  EXPECT_THROW(gpu.hash_host(ids, 2, 6), InputError);
  EXPECT_THROW(gpu.hash_host(ids, 3, 6), InputError);  // size mismatch

  // The device API does not check, but reads nothing out of bounds: every order whose window
  // holds the bad id is -1, the others are the CPU's ids.
  ids[8] = INT64_MAX;
  const DeviceBuffer<int64_t> d_ids{std::span<const int64_t>(ids)};
  DeviceBuffer<int32_t> d_out(2 * ids.size() * 16);
  gpu.hash(d_ids.data(), 2, 6, d_out.data());
  std::vector<int32_t> got(d_out.size());
  d_out.download(got);
  for (size_t l = 0; l < 2; ++l) {
    for (size_t pos = 0; pos < 6; ++pos) {
      const int32_t* o = got.data() + (l * 12 + 6 + pos) * 16;
      const bool bigram_bad = pos == 2 || pos == 3, trigram_bad = pos >= 2 && pos <= 4;
      for (size_t j = 0; j < 8; ++j) {
        EXPECT_EQ(o[j] == -1, bigram_bad) << "layer " << l << " position " << pos;
        EXPECT_EQ(o[8 + j] == -1, trigram_bad) << "layer " << l << " position " << pos;
      }
    }
  }
}

// Runs everywhere: without a usable GPU (CPU-only build, or CUDA build on a machine without a
// device, as in CI) every entry point throws a clear engram::Error instead of crashing.
TEST(GpuNgramHasher, WithoutADeviceEveryCallThrows) {
  if (device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  // A CUDA build names the failing runtime call (and cudaGetErrorString's reason).
  auto expect_clear_error = [](auto&& call, const std::string& cuda_call) {
    const std::string expected = compiled_with_cuda() ? cuda_call : "built without CUDA";
    try {
      call();
      ADD_FAILURE() << "no engram::Error, expected one naming " << expected;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  const NgramHasher cpu = make_hasher(EngramHashConfig{});
  expect_clear_error([&] { GpuNgramHasher gpu(cpu); }, "cudaMalloc");
  expect_clear_error([] { DeviceBuffer<float> b(16); }, "cudaMalloc");
  expect_clear_error([] { device_synchronize(); }, "cudaDeviceSynchronize");
}

}  // namespace
}  // namespace engram::cuda
