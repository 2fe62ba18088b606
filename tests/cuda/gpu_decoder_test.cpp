// infer::GpuDecoder against model::Transformer<float>::forward on each whole sequence, for the
// GPU model cases (dense hc_mult 1 and 2 with GQA, MoE + Engram with and without the short conv,
// two Engram layers with hc_mult 4): three sequences decoded together in steps that mix prompt
// chunks and single tokens in interleaved rows, one sequence reset and started again, with CUDA
// graphs, prefetched rows and dense MoE, and with none of them (routed MoE); graph replays against eager
// steps (bit for bit); the greedy
// argmax against the host's; tables read from mapped host memory (bit-identical) and as bf16;
// hot rows in GPU memory in front of host tables (bit-identical, small caches too); table
// stores gathered while the first layers run (a slow store; a failing one fails its step
// only); the input errors (nothing changes) and config errors. Skipped without a GPU.
#include "engram/infer/gpu_decoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/decode.h"
#include "engram/cuda/model_ops.h"
#include "engram/memory/row_store.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/transformer.h"
#include "engram/tensor/tensor.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"
#include "cuda/model_cases.h"
#include "error_of.h"

namespace engram::infer {
namespace {

using model::test_cases::Case;
using model::test_cases::Hashing;

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

struct TestModel {
  Case c;
  Hashing hashing;
  std::unique_ptr<model::Transformer<float>> cpu;
  std::unique_ptr<model::GpuTransformer> gpu;
};

TestModel make_setup(const Case& c, uint64_t seed) {
  TestModel s;
  s.c = c;
  s.hashing = model::test_cases::make_hashing(c.config);
  s.cpu = std::make_unique<model::Transformer<float>>(c.config, s.hashing.head_sizes, seed);
  model::test_cases::perturb(*s.cpu, seed + 1);
  model::GpuTransformerOptions o;
  o.gradients = false;
  s.gpu = std::make_unique<model::GpuTransformer>(*s.cpu, o);
  return s;
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(sz(n));
  for (auto& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  return ids;
}

// Transformer::forward's logits (T, V) over the whole sequence.
std::vector<float> full_logits(TestModel& s, const std::vector<int64_t>& ids) {
  std::vector<int32_t> hash_ids;
  if (s.hashing.hasher) {
    hash_ids.resize(s.hashing.hasher->num_layers() * ids.size() *
                    static_cast<size_t>(s.hashing.hasher->ids_per_token()));
    s.hashing.hasher->hash_all_layers(ids, 1, ids.size(), hash_ids);
  }
  const std::vector<int64_t> targets(ids.size(), -1);
  s.cpu->forward(ids.data(), targets.data(), 1, static_cast<int64_t>(ids.size()), hash_ids);
  return s.cpu->logits();
}

// max |got - ref row| / max(max |ref row|, 1).
double row_error(const float* got, const float* ref, int64_t V) {
  double diff = 0.0, scale = 1.0;
  for (int64_t v = 0; v < V; ++v) {
    diff = std::max(diff, std::abs(static_cast<double>(got[v]) - ref[v]));
    if (std::isnan(got[v])) diff = INFINITY;
    scale = std::max(scale, std::abs(static_cast<double>(ref[v])));
  }
  return diff / scale;
}

// Decodes three sequences (lengths 23, 17, 11; the third starts at step 2, is reset once it has
// 6 or more tokens and restarts with 9 others) in random steps, checking every logits row.
void check_interleaved(TestModel& s, uint64_t seed, bool graphs, int64_t dense_moe_rows) {
  const model::ModelConfig& c = s.c.config;
  const int64_t V = c.model.vocab_size;
  std::vector<std::vector<int64_t>> seqs = {random_tokens(23, V, seed),
                                            random_tokens(17, V, seed + 1),
                                            random_tokens(11, V, seed + 2)};
  const std::vector<int64_t> restart = random_tokens(9, V, seed + 3);
  std::vector<std::vector<float>> ref;
  for (const auto& q : seqs) ref.push_back(full_logits(s, q));
  const std::vector<float> ref_restart = full_logits(s, restart);

  GpuDecoderOptions o;
  o.max_sequences = 3;
  o.max_len = 32;
  o.max_step_rows = 12;
  o.max_rows_per_sequence = 6;
  o.cuda_graphs = graphs;
  o.prefetch_rows = graphs;
  o.dense_moe_rows = dense_moe_rows;
  GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
  std::mt19937_64 rng(seed + 4);
  std::vector<int64_t> done(3, 0);
  bool restarted = false;
  int checked = 0;
  for (int step = 0; step < 100; ++step) {
    if (!restarted && done[2] >= 6) {
      dec.reset(2);
      EXPECT_EQ(dec.position(2), 0);
      seqs[2] = restart;
      ref[2] = ref_restart;
      done[2] = 0;
      restarted = true;
    }
    // Each sequence contributes 0 .. 6 (prompt) or 0 .. 2 (later) tokens, merged in random order.
    std::vector<int64_t> order;
    for (int64_t q = 0; q < 3; ++q) {
      if (q == 2 && step < 2) continue;
      const int64_t left = static_cast<int64_t>(seqs[sz(q)].size()) - done[sz(q)];
      const int64_t most = done[sz(q)] == 0 ? 6 : 2;
      const int64_t k = std::min<int64_t>(left, static_cast<int64_t>(rng() % sz(most + 1)));
      for (int64_t i = 0; i < k; ++i) order.push_back(q);
    }
    if (order.empty()) {
      if (done[0] == 23 && done[1] == 17 && restarted && done[2] == 9) break;
      continue;
    }
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int64_t> tokens;
    std::vector<int64_t> at = done;
    for (const int64_t q : order) tokens.push_back(seqs[sz(q)][sz(at[sz(q)]++)]);
    dec.step(order, tokens);
    const std::vector<float> logits = dec.logits();
    const std::vector<int64_t>& who = dec.logit_sequences();
    ASSERT_EQ(logits.size(), who.size() * sz(V));
    for (size_t i = 0; i < who.size(); ++i) {
      const int64_t q = who[i], p = at[sz(q)] - 1;
      ASSERT_EQ(dec.position(q), at[sz(q)]);
      const double err = row_error(logits.data() + i * sz(V), ref[sz(q)].data() + p * V, V);
      EXPECT_LE(err, 1e-4) << s.c.name << ": step " << step << ", sequence " << q
                           << ", position " << p;
      ++checked;
    }
    // The greedy choice is the host's argmax of the same rows.
    const std::vector<int64_t> greedy = dec.greedy();
    ASSERT_EQ(greedy.size(), who.size());
    for (size_t i = 0; i < who.size(); ++i) {
      const float* row = logits.data() + i * sz(V);
      EXPECT_EQ(greedy[i], std::max_element(row, row + V) - row) << s.c.name;
    }
    done = at;
  }
  EXPECT_EQ(done[0], 23);
  EXPECT_EQ(done[1], 17);
  EXPECT_TRUE(restarted);
  EXPECT_GT(checked, 20) << s.c.name;
}

TEST(GpuDecoder, MatchesForwardOnInterleavedSequences) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (const Case& c : model::test_cases::cases()) {
    SCOPED_TRACE(c.name);
    TestModel s = make_setup(c, seed);
    {
      SCOPED_TRACE("CUDA graphs, rows prefetched, dense MoE");
      check_interleaved(s, seed + 10, true, 256);
    }
    {
      SCOPED_TRACE("no graphs, rows gathered in the layer, routed MoE");
      check_interleaved(s, seed + 20, false, 0);
    }
    seed += 100;
  }
}

// Two decoders over s's model with options o, the first without CUDA graphs, the second with
// them; step() runs the same step on both and compares their logits bit for bit.
struct EagerAndGraphed {
  GpuDecoder eager, graphed;
  EagerAndGraphed(TestModel& s, GpuDecoderOptions o)
      : eager(*s.gpu, s.hashing.hasher.get(), with_graphs(o, false)),
        graphed(*s.gpu, s.hashing.hasher.get(), with_graphs(o, true)) {}
  static GpuDecoderOptions with_graphs(GpuDecoderOptions o, bool on) {
    o.cuda_graphs = on;
    return o;
  }
  testing::AssertionResult step(std::span<const int64_t> seqs, std::span<const int64_t> tokens) {
    eager.step(seqs, tokens);
    graphed.step(seqs, tokens);
    const std::vector<float> a = eager.logits(), b = graphed.logits();
    if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0)
      return testing::AssertionFailure() << "the graphed decoder's logits differ";
    return testing::AssertionSuccess();
  }
};

// Replayed CUDA graphs give the eager steps' logits bit for bit: two decoders over one model, one
// with graphs, decoding the same 4 sequences (prompts of 5, then 12 single-token steps).
TEST(GpuDecoder, GraphsReplayTheEagerSteps) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : model::test_cases::cases()) {
    SCOPED_TRACE(c.name);
    TestModel s = make_setup(c, 31);
    const int64_t V = c.config.model.vocab_size;
    GpuDecoderOptions o;
    o.max_sequences = 4;
    o.max_step_rows = 20;
    o.max_rows_per_sequence = 5;
    EagerAndGraphed d(s, o);
    const std::vector<int64_t> prompt = random_tokens(20, V, 32);
    std::vector<int64_t> seqs;
    for (int64_t q = 0; q < 4; ++q) seqs.insert(seqs.end(), 5, q);
    ASSERT_TRUE(d.step(seqs, prompt)) << "prompt";
    std::vector<int64_t> next = d.eager.greedy();
    ASSERT_EQ(d.graphed.greedy(), next);
    const std::vector<int64_t> four = {0, 1, 2, 3};
    for (int i = 0; i < 12; ++i) {
      ASSERT_TRUE(d.step(four, next)) << "step " << i;
      next = d.eager.greedy();
    }
  }
}

// The case with two Engram layers, hc_mult 4.
Case engram_case() {
  for (const Case& c : model::test_cases::cases()) {
    if (c.name == "MoeEngram2Hc4") return c;
  }
  ADD_FAILURE() << "no MoeEngram2Hc4 case";
  return {};
}

// Captured graphs are dropped and captured again when the buffers they hold move: a second
// decoder with larger steps regrows the Engram layers' step buffers, and re-uploading the
// parameters replaces the Engram layers' copies. The graphed decoder keeps giving the logits of an
// eager one, bit for bit.
TEST(GpuDecoder, GraphsFollowBuffersThatMove) {
  SKIP_WITHOUT_GPU();
  Case c = engram_case();
  TestModel s = make_setup(c, 41);
  const int64_t V = c.config.model.vocab_size;
  GpuDecoderOptions o;
  o.max_step_rows = 4;
  o.max_rows_per_sequence = 4;
  EagerAndGraphed d(s, o);
  const std::vector<int64_t> ids = random_tokens(30, V, 42);
  const std::vector<int64_t> zero = {0};
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i == 10) {  // a decoder of larger steps: the shared step buffers grow
      GpuDecoderOptions big;
      big.max_step_rows = 256;
      GpuDecoder other(*s.gpu, s.hashing.hasher.get(), big);
    }
    if (i == 20) s.gpu->upload_params(s.cpu->params());  // the Engram layers' parameter copies
    ASSERT_TRUE(d.step(zero, {ids.data() + i, 1})) << "token " << i;
  }
}

// A step whose inputs are refused changes nothing; push checks every id before its first step.
TEST(GpuDecoder, PushChecksEveryChunkFirst) {
  SKIP_WITHOUT_GPU();
  TestModel s = make_setup(engram_case(), 43);
  const int64_t V = s.c.config.model.vocab_size;
  GpuDecoderOptions o;
  o.max_rows_per_sequence = 4;
  o.max_step_rows = 4;
  GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
  std::vector<int64_t> ids = random_tokens(10, V, 44);
  ids[9] = V;  // in the third chunk
  EXPECT_THROW(dec.push(0, ids), InputError);
  EXPECT_EQ(dec.position(0), 0);
  ids[9] = 1;
  const std::span<const float> got = dec.push(0, ids);
  const std::vector<float> ref = full_logits(s, ids);
  EXPECT_LE(row_error(got.data(), ref.data() + 9 * V, V), 1e-4);
}

// Sequence 0 decoded from the start: the last token's logits.
std::vector<float> decode_from_start(GpuDecoder& dec, const std::vector<int64_t>& ids) {
  dec.reset(0);
  const std::span<const float> l = dec.push(0, ids);
  return std::vector<float>(l.begin(), l.end());
}

TEST(GpuDecoder, TablesInMappedHostMemoryAndBf16) {
  SKIP_WITHOUT_GPU();
  TestModel s = make_setup(engram_case(), 7);
  const model::ModelConfig& c = s.c.config;
  const int64_t V = c.model.vocab_size;
  const std::vector<int64_t> ids = random_tokens(20, V, 8);
  GpuDecoderOptions o;
  o.max_rows_per_sequence = 8;
  GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
  auto decode = [&] { return decode_from_start(dec, ids); };
  const std::vector<float> own = decode();
  ASSERT_EQ(own.size(), sz(V));

  std::vector<cuda::MappedHostBuffer<float>> mapped;
  std::vector<cuda::DeviceBuffer<bf16>> halves;
  std::vector<cuda::DeviceTable> host_tables, bf16_tables;
  TestModel r = make_setup(engram_case(), 7);  // the same parameters; its tables get bf16 values
  for (const int layer : c.engram->hash.layer_ids) {
    const auto& L = s.cpu->params().layers[sz(layer)];
    const int64_t rows = L.engram->table_rows(), width = L.engram->config().row_width();
    const std::vector<float>& t = L.engram_table;
    ASSERT_EQ(t.size(), sz(rows * width));
    mapped.emplace_back(t.size());
    std::copy(t.begin(), t.end(), mapped.back().host().begin());
    host_tables.push_back({mapped.back().device(), DType::kF32, rows, width});
    std::vector<bf16> h(t.size());
    std::vector<float>& rt = r.cpu->params().layers[sz(layer)].engram_table;
    ASSERT_EQ(rt, t);
    for (size_t i = 0; i < t.size(); ++i) {
      h[i] = float_to_bf16(t[i]);
      rt[i] = bf16_to_float(h[i]);
    }
    halves.emplace_back(std::span<const bf16>(h));
    bf16_tables.push_back({halves.back().data(), DType::kBF16, rows, width});
  }
  dec.set_tables(host_tables);
  const std::vector<float> host = decode();
  EXPECT_EQ(std::memcmp(host.data(), own.data(), own.size() * sizeof(float)), 0)
      << "the same f32 rows read over PCIe";

  dec.set_tables(bf16_tables);
  const std::vector<float> half = decode();
  const std::vector<float> ref = full_logits(r, ids);
  EXPECT_LE(row_error(half.data(), ref.data() + (ids.size() - 1) * sz(V), V), 1e-4);
  EXPECT_GT(row_error(half.data(), own.data(), V), 0.0) << "bf16 rows should change something";

  dec.set_tables({});
  const std::vector<float> again = decode();
  EXPECT_EQ(std::memcmp(again.data(), own.data(), own.size() * sizeof(float)), 0);

  std::vector<cuda::DeviceTable> bad = host_tables;
  bad[0].rows -= 1;
  EXPECT_THROW(dec.set_tables(bad), ConfigError);
  bad = host_tables;
  bad.pop_back();
  EXPECT_THROW(dec.set_tables(bad), ConfigError);
}

// Hot rows: tables in mapped host memory (f32 and bf16) read through a cache of rows in GPU
// memory give the same logits bit for bit as without it, for a cache that holds every row and
// for one of 24 rows (evictions, refused rows read from the table), with and without prefetched
// rows, eager steps and graph replays; the statistics count the steps' distinct rows, and a
// second pass over the same tokens hits. Tables in GPU memory get no cache; set_table_stores
// drops the caches.
TEST(GpuDecoder, HotRowsReadTheTablesBitForBit) {
  SKIP_WITHOUT_GPU();
  TestModel s = make_setup(engram_case(), 7);
  const model::ModelConfig& c = s.c.config;
  const std::vector<int64_t> ids = random_tokens(30, c.model.vocab_size, 8);
  std::vector<cuda::MappedHostBuffer<float>> mapped;
  std::vector<cuda::MappedHostBuffer<bf16>> mapped_halves;
  std::vector<cuda::DeviceBuffer<float>> on_device;
  std::vector<cuda::DeviceTable> host_tables, bf16_tables, device_tables;
  for (const int layer : c.engram->hash.layer_ids) {
    const auto& L = s.cpu->params().layers[sz(layer)];
    const int64_t rows = L.engram->table_rows(), width = L.engram->config().row_width();
    const std::vector<float>& t = L.engram_table;
    mapped.emplace_back(t.size());
    std::copy(t.begin(), t.end(), mapped.back().host().begin());
    host_tables.push_back({mapped.back().device(), DType::kF32, rows, width});
    mapped_halves.emplace_back(t.size());
    for (size_t i = 0; i < t.size(); ++i) mapped_halves.back().host()[i] = float_to_bf16(t[i]);
    bf16_tables.push_back({mapped_halves.back().device(), DType::kBF16, rows, width});
    on_device.emplace_back(std::span<const float>(t));
    device_tables.push_back({on_device.back().data(), DType::kF32, rows, width});
  }
  for (const bool prefetch : {true, false}) {
    GpuDecoderOptions plain;
    plain.max_rows_per_sequence = 4;  // 8 steps, repeated shapes: graphs replay
    plain.prefetch_rows = prefetch;
    GpuDecoder ref(*s.gpu, s.hashing.hasher.get(), plain);
    ref.set_tables(host_tables);
    const std::vector<float> want = decode_from_start(ref, ids);
    ref.set_tables(bf16_tables);
    const std::vector<float> want_bf16 = decode_from_start(ref, ids);
    for (const int64_t capacity : {int64_t{1} << 16, int64_t{24}}) {
      SCOPED_TRACE(std::string(prefetch ? "prefetched" : "in the layer") + ", " +
                   std::to_string(capacity) + " rows");
      GpuDecoderOptions o = plain;
      o.hot_rows = capacity;
      o.hot_policy = capacity > 24 ? memory::CachePolicy::kFrequency : memory::CachePolicy::kLru;
      GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
      dec.set_tables(host_tables);
      for (int pass = 0; pass < 2; ++pass) {
        const std::vector<float> got = decode_from_start(dec, ids);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << pass;
        const std::vector<memory::CacheStats> st = dec.hot_row_stats();
        ASSERT_EQ(st.size(), c.engram->hash.layer_ids.size());
        EXPECT_GT(st[0].lookups, 0);
        if (pass == 0) {
          EXPECT_GT(st[0].fills, 0);
        } else {
          EXPECT_GT(st[0].hits, 0);
        }
        if (capacity == 24) {
          EXPECT_GT(st[0].evictions + st[0].bypassed, 0);
        }
        dec.reset_hot_row_stats();
      }
      dec.set_tables(bf16_tables);
      const std::vector<float> half = decode_from_start(dec, ids);
      EXPECT_EQ(std::memcmp(half.data(), want_bf16.data(), want_bf16.size() * sizeof(float)), 0);
      EXPECT_GT(dec.hot_row_stats()[0].lookups, 0);
      dec.set_tables(device_tables);  // in GPU memory: no cache
      const std::vector<float> dev = decode_from_start(dec, ids);
      EXPECT_EQ(std::memcmp(dev.data(), want.data(), want.size() * sizeof(float)), 0);
      EXPECT_EQ(dec.hot_row_stats()[0].lookups, 0);
      dec.set_tables(host_tables);
      dec.set_table_stores({});  // drops the caches
      const std::vector<float> again = decode_from_start(dec, ids);
      EXPECT_EQ(std::memcmp(again.data(), want.data(), want.size() * sizeof(float)), 0);
      EXPECT_EQ(dec.hot_row_stats()[0].lookups, 0);
    }
  }
  GpuDecoderOptions bad;
  bad.hot_rows = -1;
  EXPECT_THROW(GpuDecoder(*s.gpu, s.hashing.hasher.get(), bad), ConfigError);
}

// A copy of each Engram layer's table of the CPU model, in layer order.
std::vector<Tensor> model_tables(const TestModel& s) {
  std::vector<Tensor> tables;
  for (const int layer : s.c.config.engram->hash.layer_ids) {
    const auto& L = s.cpu->params().layers[sz(layer)];
    const int64_t rows = L.engram->table_rows(), width = L.engram->config().row_width();
    tables.emplace_back(DType::kF32, std::vector<int64_t>{rows, width});
    std::copy(L.engram_table.begin(), L.engram_table.end(), tables.back().data<float>());
  }
  return tables;
}

// set_table_stores: each step's rows gathered on the host through a RowStore into pinned
// staging give the same logits, bit for bit, as the model's tables (eager steps and graph
// replays); an empty list, or set_tables, returns to the model's tables; a store of the wrong
// size is refused.
TEST(GpuDecoder, TableStoresStageEachStepsRows) {
  SKIP_WITHOUT_GPU();
  TestModel s = make_setup(engram_case(), 7);
  const model::ModelConfig& c = s.c.config;
  const int64_t V = c.model.vocab_size;
  const std::vector<int64_t> ids = random_tokens(30, V, 9);
  GpuDecoderOptions o;
  o.max_rows_per_sequence = 4;  // 8 steps, repeated shapes: graphs replay
  GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
  auto decode = [&] { return decode_from_start(dec, ids); };
  const std::vector<float> own = decode();
  const std::vector<Tensor> tables = model_tables(s);
  std::vector<std::unique_ptr<memory::TensorRowStore>> stores;
  std::vector<const memory::RowStore*> ptrs;
  for (const Tensor& t : tables) {
    stores.push_back(std::make_unique<memory::TensorRowStore>(t));
    ptrs.push_back(stores.back().get());
  }
  dec.set_table_stores(ptrs);
  for (int round = 0; round < 2; ++round) {
    const std::vector<float> staged = decode();
    ASSERT_EQ(staged.size(), own.size());
    EXPECT_EQ(std::memcmp(staged.data(), own.data(), own.size() * sizeof(float)), 0) << round;
  }
  dec.set_table_stores({});
  const std::vector<float> again = decode();
  EXPECT_EQ(std::memcmp(again.data(), own.data(), own.size() * sizeof(float)), 0);
  dec.set_table_stores(ptrs);
  dec.set_tables({});  // drops the stores too
  const std::vector<float> back = decode();
  EXPECT_EQ(std::memcmp(back.data(), own.data(), own.size() * sizeof(float)), 0);

  Tensor small(DType::kF32, {tables[0].shape()[0] - 1, tables[0].shape()[1]});
  const memory::TensorRowStore wrong(small);
  std::vector<const memory::RowStore*> bad = ptrs;
  bad[0] = &wrong;
  EXPECT_THROW(dec.set_table_stores(bad), ConfigError);
  bad.pop_back();
  if (!bad.empty()) {
    EXPECT_THROW(dec.set_table_stores(bad), ConfigError);
  }
}

using test::error_of;

// A store over another that sleeps in every gather (so that the device reaches the decoder's
// gate before the rows are staged) and fails its fail_at-th call.
class SlowStore final : public memory::RowStore {
 public:
  SlowStore(const memory::RowStore& inner, int delay_ms) : inner_(inner), delay_ms_(delay_ms) {}
  int64_t num_rows() const override { return inner_.num_rows(); }
  int64_t width() const override { return inner_.width(); }
  void gather(std::span<const int64_t> rows, float* out, int64_t out_stride) const override {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    if (++calls == fail_at) throw InputError("SlowStore: call " + std::to_string(calls) + " fails");
    inner_.gather(rows, out, out_stride);
  }
  void gather(std::span<const int64_t> rows, double* out, int64_t out_stride) const override {
    inner_.gather(rows, out, out_stride);
  }
  mutable int calls = 0;
  int fail_at = -1;

 private:
  const memory::RowStore& inner_;
  int delay_ms_;
};

// The staged rows are gathered while the step's first layers run: the layers wait at the gate
// (a slow store makes them reach it first), eager steps, captures and replays alike, with and
// without prefetched rows; a failed gather fails its step only.
TEST(GpuDecoder, TableStoresOverlapTheFirstLayers) {
  SKIP_WITHOUT_GPU();
  for (const bool prefetch : {true, false}) {
    SCOPED_TRACE(prefetch ? "prefetched rows" : "rows gathered in the layer");
    TestModel s = make_setup(engram_case(), 7);
    const model::ModelConfig& c = s.c.config;
    const std::vector<int64_t> ids = random_tokens(30, c.model.vocab_size, 9);
    GpuDecoderOptions o;
    o.max_rows_per_sequence = 4;  // 8 steps, repeated shapes: graphs replay
    o.prefetch_rows = prefetch;
    GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
    auto decode = [&] { return decode_from_start(dec, ids); };
    const std::vector<float> own = decode();
    const std::vector<Tensor> tables = model_tables(s);
    std::vector<std::unique_ptr<memory::TensorRowStore>> inner;
    std::vector<std::unique_ptr<SlowStore>> slow;
    std::vector<const memory::RowStore*> ptrs;
    for (const Tensor& t : tables) {
      inner.push_back(std::make_unique<memory::TensorRowStore>(t));
      slow.push_back(std::make_unique<SlowStore>(*inner.back(), 5));
      ptrs.push_back(slow.back().get());
    }
    dec.set_table_stores(ptrs);
    for (int round = 0; round < 2; ++round) {
      const std::vector<float> staged = decode();
      ASSERT_EQ(staged.size(), own.size());
      EXPECT_EQ(std::memcmp(staged.data(), own.data(), own.size() * sizeof(float)), 0) << round;
    }
    slow[0]->fail_at = slow[0]->calls + 3;
    EXPECT_EQ(error_of<InputError>([&] { decode(); }),
              "SlowStore: call " + std::to_string(slow[0]->fail_at) + " fails");
    const std::vector<float> again = decode();
    EXPECT_EQ(std::memcmp(again.data(), own.data(), own.size() * sizeof(float)), 0);
    // A failed step in the middle of a sequence: the sequence goes on from where it was.
    const std::span<const int64_t> all(ids);
    dec.reset(0);
    dec.push(0, all.first(12));
    slow[0]->fail_at = slow[0]->calls + 1;
    EXPECT_THROW(dec.push(0, all.subspan(12, 8)), InputError);
    EXPECT_EQ(dec.position(0), 12);
    const std::span<const float> rest = dec.push(0, all.subspan(12));
    ASSERT_EQ(rest.size(), own.size());
    EXPECT_EQ(std::memcmp(rest.data(), own.data(), own.size() * sizeof(float)), 0);
  }
}

TEST(GpuDecoder, InputErrorsChangeNothing) {
  SKIP_WITHOUT_GPU();
  TestModel s = make_setup(engram_case(), 9);
  const int64_t V = s.c.config.model.vocab_size;
  GpuDecoderOptions o;
  o.max_sequences = 2;
  o.max_len = 16;
  o.max_step_rows = 6;
  o.max_rows_per_sequence = 4;
  GpuDecoder dec(*s.gpu, s.hashing.hasher.get(), o);
  const std::vector<int64_t> ids = random_tokens(16, V, 10);
  for (int64_t p = 0; p < 12; p += 4) dec.step(std::vector<int64_t>(4, 0), {ids.data() + p, 4});
  dec.step(std::vector<int64_t>{0}, {ids.data() + 12, 1});
  ASSERT_EQ(dec.position(0), 13);
  using V64 = std::vector<int64_t>;
  auto step = [&](const V64& q, const V64& t) { dec.step(q, t); };
  EXPECT_NE(error_of<InputError>([&] { step({0, 0}, {1}); }).find("2 sequences for 1 tokens"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step({}, {}); }).find("0 tokens"), std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step(V64(7, 1), V64(7, 1)); }).find("max_step_rows = 6"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step({0, 2}, {1, 1}); }).find("seqs[1] = 2"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step({-1}, {1}); }).find("seqs[0] = -1"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step({1, 1}, {1, V}); }).find("tokens[1]"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step({1}, {-1}); }).find("outside"), std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step(V64(5, 1), V64(5, 1)); })
                .find("max_rows_per_sequence = 4"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { step({1, 0, 0, 0, 0}, {1, 1, 1, 1, 1}); })
                .find("would exceed max_len = 16"),
            std::string::npos);
  EXPECT_THROW(dec.reset(2), InputError);
  EXPECT_THROW(dec.position(-1), InputError);
  EXPECT_EQ(dec.position(0), 13);
  EXPECT_EQ(dec.position(1), 0);
  // Sequence 0 goes on as if the failed steps never happened, up to max_len exactly.
  dec.step(V64(3, 0), {ids.data() + 13, 3});
  const std::vector<float> ref = full_logits(s, ids);
  const std::vector<float> got = dec.logits();
  EXPECT_LE(row_error(got.data(), ref.data() + 15 * V, V), 1e-4);
  EXPECT_THROW(step({0}, {1}), InputError);
}

TEST(GpuDecoder, ConfigErrors) {
  SKIP_WITHOUT_GPU();
  TestModel engram = make_setup(engram_case(), 11);
  TestModel dense = make_setup(model::test_cases::cases().front(), 12);
  EXPECT_NE(error_of<ConfigError>([&] { GpuDecoder(*engram.gpu, nullptr); }).find("none given"),
            std::string::npos);
  EXPECT_NE(error_of<ConfigError>([&] {
              GpuDecoder(*dense.gpu, engram.hashing.hasher.get());
            }).find("no [engram]"),
            std::string::npos);
  GpuDecoderOptions o;
  o.max_len = engram.c.config.model.max_seq_len + 1;
  EXPECT_NE(error_of<ConfigError>([&] {
              GpuDecoder(*engram.gpu, engram.hashing.hasher.get(), o);
            }).find("exceeds model.max_seq_len"),
            std::string::npos);
  o = {};
  o.max_sequences = 0;
  EXPECT_THROW(GpuDecoder(*engram.gpu, engram.hashing.hasher.get(), o), ConfigError);
  // An inference-only model has no gradients.
  EXPECT_THROW(engram.gpu->backward(), Error);
  EXPECT_THROW(engram.gpu->dense_params(), Error);
}

// decode_attention against a float64 softmax over each row's cache prefix, for plain,
// grouped (2, 3, 8 query heads a kv head: the grouped kernel) and >8 groups, every head_dim.
TEST(GpuDecode, AttentionMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t hq, hkv, hd;
  };
  const Shape shapes[] = {{4, 4, 64}, {6, 3, 128}, {6, 2, 32}, {24, 8, 128}, {8, 1, 64},
                          {16, 1, 64}, {2, 2, 256}, {4, 2, 256}};
  const int64_t S = 3, L = 40, rows = 5;
  const std::vector<int32_t> seq = {0, 2, 1, 2, 0}, pos = {0, 39, 17, 5, 33};
  uint64_t seed = 90;
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(testing::Message() << sh.hq << " query heads, " << sh.hkv << " kv heads, hd "
                                    << sh.hd);
    const int64_t KD = sh.hkv * sh.hd, QD = sh.hq * sh.hd, group = sh.hq / sh.hkv;
    const std::vector<float> k = cuda::test_util::random_vec(sz(S * L * KD), seed++);
    const std::vector<float> v = cuda::test_util::random_vec(sz(S * L * KD), seed++);
    const std::vector<float> q = cuda::test_util::random_vec(sz(rows * QD), seed++);
    auto dk = cuda::test_util::to_device(k), dv = cuda::test_util::to_device(v);
    auto dq = cuda::test_util::to_device(q);
    auto dseq = cuda::test_util::to_device(seq), dpos = cuda::test_util::to_device(pos);
    cuda::DeviceBuffer<float> ctx(sz(rows * QD));
    const float scale = 1.0f / std::sqrt(static_cast<float>(sh.hd));
    cuda::decode_attention(ctx.data(), dq.data(), dk.data(), dv.data(), dseq.data(), dpos.data(),
                           rows, sh.hq, sh.hkv, sh.hd, L, scale);
    const std::vector<float> got = cuda::test_util::to_host(ctx);
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < sh.hq; ++h) {
        const int64_t g = h / group, n = pos[sz(r)] + 1;
        std::vector<double> p(sz(n));
        double mx = -INFINITY, total = 0;
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0;
          for (int64_t i = 0; i < sh.hd; ++i) {
            dot += static_cast<double>(q[sz((r * sh.hq + h) * sh.hd + i)]) *
                   k[sz((seq[sz(r)] * L + j) * KD + g * sh.hd + i)];
          }
          p[sz(j)] = dot * scale;
          mx = std::max(mx, p[sz(j)]);
        }
        for (auto& x : p) total += (x = std::exp(x - mx));
        for (int64_t i = 0; i < sh.hd; ++i) {
          double want = 0;
          for (int64_t j = 0; j < n; ++j)
            want += p[sz(j)] / total * v[sz((seq[sz(r)] * L + j) * KD + g * sh.hd + i)];
          worst = std::max(worst, std::abs(want - got[sz((r * sh.hq + h) * sh.hd + i)]));
        }
      }
    }
    EXPECT_LE(worst, 2e-5);
  }
  EXPECT_THROW(cuda::decode_attention(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 6,
                                      4, 64, 8, 1.0f),
               InputError);
  EXPECT_THROW(cuda::decode_attention(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4,
                                      2, 48, 8, 1.0f),
               InputError);
}

TEST(GpuDecode, ArgmaxTiesAndNaN) {
  SKIP_WITHOUT_GPU();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {1, 3, 3, 2,  nan, nan, nan, nan,  nan, -1, 5, 5,
                                -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  auto d = cuda::test_util::to_device(x);
  cuda::DeviceBuffer<int64_t> out(4);
  cuda::argmax_rows(out.data(), d.data(), 4, 4);
  EXPECT_EQ(cuda::test_util::to_host(out), (std::vector<int64_t>{1, 0, 2, 0}));
}

}  // namespace
}  // namespace engram::infer
