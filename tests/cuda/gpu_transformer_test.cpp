// model::GpuTransformer against model::Transformer<float> on the CPU, whole model: loss, logits,
// every dense gradient, the embedding's and the Engram tables' sparse gradients, MoE expert
// loads and the bias update, over the parity configs' kinds (dense hc_mult 1; dense hc_mult 2
// with GQA; MoE + Engram hc_mult 2; MoE + Engram without conv or biases; two Engram layers with
// hc_mult 4), with head_dim 64 (the GPU attention's size). Repeated steps on one object give
// identical bits. Skipped without a GPU.
#include "engram/model/gpu_transformer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/device.h"
#include "engram/cuda/model_ops.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/model/transformer.h"
#include "engram/nn/embedding.h"
#include "engram/util/error.h"
#include "cuda/cuda_test_util.h"
#include "cuda/model_cases.h"

namespace engram::model {
namespace {

using namespace test_cases;  // NOLINT(google-build-using-namespace)

// Normalised error: max |gpu - cpu| / max(max |cpu|, 1e-6) (NaN on the GPU counts as infinite).
template <class A, class B>
double rel_error(const std::vector<A>& gpu, const std::vector<B>& cpu) {
  EXPECT_EQ(gpu.size(), cpu.size());
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < std::min(gpu.size(), cpu.size()); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(gpu[i]) - static_cast<double>(cpu[i])));
    scale = std::max(scale, std::abs(static_cast<double>(cpu[i])));
    if (std::isnan(gpu[i])) diff = INFINITY;
  }
  return diff / std::max(scale, 1e-6);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// The bound on every normalised error, GPU against the float32 CPU model. Where the CPU model's
// own float32 result is further than kTol / 3 from the float64 model's (err32), the bounds are
// 3·err32 against the float32 model and 2·err32 against the float64 one: conditioning, not the
// GPU. The Engram gate's sign(s)·sqrt(|s|) has derivative 0.5/sqrt(|s|), so for a token whose
// score s is a near-cancelling sum, float rounding of k is amplified into the gradients of the
// key path and everything upstream of it (the engram_layer test describes the same effect). In
// MoeEngram2Hc4 the float32 CPU model is up to 7e-3 away from float64; the GPU is closer to
// both than that.
constexpr double kTol = 1e-4;

struct Batch {
  std::vector<int64_t> inputs, targets;
  std::vector<int32_t> hash_ids;
};

Batch make_batch(const ModelConfig& c, const Hashing& s, int64_t B, int64_t T, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t N = B * T, V = c.model.vocab_size;
  Batch b;
  for (int64_t i = 0; i < N; ++i) {
    b.inputs.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(V)));
    b.targets.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(V)));
  }
  for (int64_t i = 3; i < N; i += 11) b.targets[static_cast<size_t>(i)] = -1;  // not counted
  if (s.hasher) {
    b.hash_ids.resize(s.hasher->num_layers() * static_cast<size_t>(N * s.hasher->ids_per_token()));
    s.hasher->hash_all_layers(b.inputs, static_cast<size_t>(B), static_cast<size_t>(T), b.hash_ids);
  }
  return b;
}

struct Worst {
  double err = 0.0;
  std::string name;
  void add(const std::string& n, double e) {
    if (e > err || name.empty()) {
      err = std::max(err, e);
      name = n;
    }
  }
};

// The float64 CPU model with the float32 model's parameters and buffers.
std::unique_ptr<Transformer<double>> widened(Transformer<float>& cpu, const ModelConfig& c,
                                             const std::vector<std::vector<int64_t>>& heads) {
  auto ref = std::make_unique<Transformer<double>>(c, heads, 0);
  auto a = cpu.params().named();
  auto r = ref->params().named();
  EXPECT_EQ(a.size(), r.size());
  for (size_t i = 0; i < std::min(a.size(), r.size()); ++i)
    std::copy(a[i].data, a[i].data + a[i].size, r[i].data);
  auto ab = cpu.params().named_buffers();
  auto rb = ref->params().named_buffers();
  for (size_t i = 0; i < std::min(ab.size(), rb.size()); ++i)
    std::copy(ab[i].data, ab[i].data + ab[i].size, rb[i].data);
  return ref;
}

// GPU values against the float32 CPU model's (cpu32) and the float64 model's (cpu64).
struct Errors {
  Worst gpu32, gpu64, cpu32;  // worst normalised errors: GPU-CPU32, GPU-CPU64, CPU32-CPU64
  void check(const std::string& name, const std::vector<float>& gpu, const std::vector<float>& c32,
             const std::vector<double>& c64) {
    const double e32 = rel_error(c32, c64);
    const double g32 = rel_error(gpu, c32), g64 = rel_error(gpu, c64);
    EXPECT_LE(g32, std::max(kTol, 3 * e32))
        << name << " (float32 CPU against float64: " << e32 << ")";
    EXPECT_LE(g64, std::max(kTol, 2 * e32))
        << name << " (float32 CPU against float64: " << e32 << ")";
    gpu32.add(name, g32);
    gpu64.add(name, g64);
    cpu32.add(name, e32);
  }
};

class GpuTransformerMatchesCpu : public ::testing::TestWithParam<Case> {};

TEST_P(GpuTransformerMatchesCpu, LossLogitsAndGradients) {
  SKIP_WITHOUT_GPU();
  const Case& p = GetParam();
  const Hashing setup = make_hashing(p.config);
  Transformer<float> cpu(p.config, setup.head_sizes, 7);
  perturb(cpu, 11);
  GpuTransformer gpu(cpu);
  auto ref = widened(cpu, p.config, setup.head_sizes);

  // The upload is exact.
  {
    TransformerParams<float> back;
    gpu.download_params(back);
    auto want = cpu.params().named();
    auto got = back.named();
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(want[i].name, got[i].name);
      ASSERT_EQ(want[i].size, got[i].size);
      EXPECT_EQ(std::memcmp(want[i].data, got[i].data, static_cast<size_t>(want[i].size) * 4), 0)
          << want[i].name;
    }
    auto wb = cpu.params().named_buffers();
    auto gb = back.named_buffers();
    ASSERT_EQ(wb.size(), gb.size());
    for (size_t i = 0; i < wb.size(); ++i)
      EXPECT_EQ(std::memcmp(wb[i].data, gb[i].data, static_cast<size_t>(wb[i].size) * 4), 0);
  }

  const Batch b = make_batch(p.config, setup, p.batch, p.seq, 3);
  const double cpu_loss =
      cpu.forward(b.inputs.data(), b.targets.data(), p.batch, p.seq, b.hash_ids);
  cpu.backward();
  ref->forward(b.inputs.data(), b.targets.data(), p.batch, p.seq, b.hash_ids);
  ref->backward();
  const double gpu_loss =
      gpu.forward(b.inputs.data(), b.targets.data(), p.batch, p.seq, b.hash_ids);
  gpu.backward();

  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-5 * std::max(1.0, std::abs(cpu_loss)));
  Errors logits_err;
  logits_err.check("logits", gpu.logits(), cpu.logits(), ref->logits());

  TransformerParams<float> grads;
  nn::SparseRowGrad<float> embed;
  std::vector<nn::SparseRowGrad<float>> tables;
  gpu.download_grads(grads, embed, tables);

  Errors dense;
  std::map<std::string, nn::NamedParam<float>> cpu_grads;
  std::map<std::string, nn::NamedParam<double>> ref_grads;
  for (auto& g : cpu.grads().named()) cpu_grads.emplace(g.name, g);
  for (auto& g : ref->grads().named()) ref_grads.emplace(g.name, g);
  auto gpu_named = grads.named();
  EXPECT_EQ(gpu_named.size(), cpu_grads.size());
  for (auto& g : gpu_named) {
    auto it = cpu_grads.find(g.name);
    ASSERT_NE(it, cpu_grads.end()) << g.name;
    ASSERT_EQ(it->second.size, g.size) << g.name;
    const auto& r = ref_grads.at(g.name);
    dense.check(g.name, std::vector<float>(g.data, g.data + g.size),
                std::vector<float>(it->second.data, it->second.data + g.size),
                std::vector<double>(r.data, r.data + r.size));
  }

  Errors sparse;
  EXPECT_EQ(embed.width, cpu.embed_grad().width);
  EXPECT_EQ(embed.rows, cpu.embed_grad().rows);
  ASSERT_EQ(ref->embed_grad().rows, cpu.embed_grad().rows);
  sparse.check("embed", embed.values, cpu.embed_grad().values, ref->embed_grad().values);
  const auto& cpu_tables = cpu.engram_table_grads();
  ASSERT_EQ(tables.size(), cpu_tables.size());
  for (size_t e = 0; e < tables.size(); ++e) {
    EXPECT_EQ(tables[e].width, cpu_tables[e].width);
    EXPECT_EQ(tables[e].rows, cpu_tables[e].rows) << "table " << e;
    ASSERT_EQ(ref->engram_table_grads()[e].rows, cpu_tables[e].rows);
    sparse.check("table " + std::to_string(e), tables[e].values, cpu_tables[e].values,
                 ref->engram_table_grads()[e].values);
  }

  // Expert loads and the bias update.
  EXPECT_EQ(gpu.moe_expert_counts(), cpu.moe_expert_counts());
  if (p.config.moe) {
    cpu.update_moe_bias();
    gpu.update_moe_bias();
    TransformerParams<float> after;
    gpu.download_params(after);
    auto wb = cpu.params().named_buffers();
    auto gb = after.named_buffers();
    ASSERT_EQ(wb.size(), gb.size());
    for (size_t i = 0; i < wb.size(); ++i) {
      const std::vector<float> w(wb[i].data, wb[i].data + wb[i].size);
      const std::vector<float> g(gb[i].data, gb[i].data + gb[i].size);
      EXPECT_TRUE(same_bits(w, g)) << wb[i].name;
    }
  }

  std::printf(
      "[ %s ] loss cpu %.9f gpu %.9f |diff| %.3g; logits %.3g\n"
      "  dense grads: gpu-cpu32 %.3g (%s), gpu-cpu64 %.3g (%s), cpu32-cpu64 %.3g (%s)\n"
      "  sparse grads (embed %zu rows, %zu tables): gpu-cpu32 %.3g (%s), gpu-cpu64 %.3g, "
      "cpu32-cpu64 %.3g\n",
      p.name.c_str(), cpu_loss, gpu_loss, std::abs(gpu_loss - cpu_loss), logits_err.gpu32.err,
      dense.gpu32.err, dense.gpu32.name.c_str(), dense.gpu64.err, dense.gpu64.name.c_str(),
      dense.cpu32.err, dense.cpu32.name.c_str(), embed.rows.size(), tables.size(), sparse.gpu32.err,
      sparse.gpu32.name.c_str(), sparse.gpu64.err, sparse.cpu32.err);
}

INSTANTIATE_TEST_SUITE_P(GpuTransformer, GpuTransformerMatchesCpu, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// Everything one step produces, downloaded.
struct Step {
  double loss = 0;
  std::vector<float> logits;
  TransformerParams<float> grads;
  nn::SparseRowGrad<float> embed;
  std::vector<nn::SparseRowGrad<float>> tables;
  std::vector<std::vector<int64_t>> counts;
};

Step run_step(GpuTransformer& gpu, const Batch& b, int64_t B, int64_t T) {
  Step s;
  s.loss = gpu.forward(b.inputs.data(), b.targets.data(), B, T, b.hash_ids);
  gpu.backward();
  s.logits = gpu.logits();
  gpu.download_grads(s.grads, s.embed, s.tables);
  s.counts = gpu.moe_expert_counts();
  return s;
}

void expect_same(Step& a, Step& b) {
  EXPECT_EQ(std::memcmp(&a.loss, &b.loss, sizeof(double)), 0);
  EXPECT_TRUE(same_bits(a.logits, b.logits));
  auto ga = a.grads.named();
  auto gb = b.grads.named();
  ASSERT_EQ(ga.size(), gb.size());
  for (size_t i = 0; i < ga.size(); ++i) {
    EXPECT_EQ(std::memcmp(ga[i].data, gb[i].data, static_cast<size_t>(ga[i].size) * 4), 0)
        << ga[i].name;
  }
  EXPECT_EQ(a.embed.rows, b.embed.rows);
  EXPECT_TRUE(same_bits(a.embed.values, b.embed.values));
  ASSERT_EQ(a.tables.size(), b.tables.size());
  for (size_t e = 0; e < a.tables.size(); ++e) {
    EXPECT_EQ(a.tables[e].rows, b.tables[e].rows);
    EXPECT_TRUE(same_bits(a.tables[e].values, b.tables[e].values));
  }
  EXPECT_EQ(a.counts, b.counts);
}

// Two steps on one object give identical bits, also with a step of another shape in between
// (the buffers then hold more than a step needs).
TEST(GpuTransformerSteps, RepeatedStepsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  for (const Case& p : cases()) {
    if (p.name != "MoeEngramHc2" && p.name != "MoeEngram2Hc4") continue;
    SCOPED_TRACE(p.name);
    const Hashing setup = make_hashing(p.config);
    Transformer<float> cpu(p.config, setup.head_sizes, 5);
    perturb(cpu, 9);
    GpuTransformer gpu(cpu);
    const Batch b = make_batch(p.config, setup, p.batch, p.seq, 21);
    const Batch other = make_batch(p.config, setup, p.batch + 1, p.seq + 9, 22);
    Step s1 = run_step(gpu, b, p.batch, p.seq);
    Step s2 = run_step(gpu, b, p.batch, p.seq);
    expect_same(s1, s2);
    run_step(gpu, other, p.batch + 1, p.seq + 9);
    Step s3 = run_step(gpu, b, p.batch, p.seq);
    expect_same(s1, s3);
  }
}

// The second of two steps (after update_moe_bias and a parameter upload) still matches the CPU:
// the model state carried between steps is the CPU's.
TEST(GpuTransformerSteps, SecondStepAfterBiasUpdateAndUpload) {
  SKIP_WITHOUT_GPU();
  const Case p = cases()[2];  // MoeEngramHc2
  const Hashing setup = make_hashing(p.config);
  Transformer<float> cpu(p.config, setup.head_sizes, 13);
  perturb(cpu, 17);
  GpuTransformer gpu(cpu);
  const Batch b1 = make_batch(p.config, setup, p.batch, p.seq, 31);
  const Batch b2 = make_batch(p.config, setup, p.batch, p.seq, 32);
  cpu.forward(b1.inputs.data(), b1.targets.data(), p.batch, p.seq, b1.hash_ids);
  cpu.backward();
  gpu.forward(b1.inputs.data(), b1.targets.data(), p.batch, p.seq, b1.hash_ids);
  gpu.backward();
  cpu.update_moe_bias();
  gpu.update_moe_bias();
  // A crude SGD step on the CPU, uploaded: Engram layers must see the new parameters.
  {
    std::map<std::string, nn::NamedParam<float>> g;
    for (auto& x : cpu.grads().named()) g.emplace(x.name, x);
    for (auto& x : cpu.params().named()) {
      auto it = g.find(x.name);
      if (it == g.end()) continue;
      for (int64_t i = 0; i < x.size; ++i) x.data[i] -= 0.5f * it->second.data[i];
    }
  }
  TransformerParams<float> with_bias;
  gpu.download_params(with_bias);
  EXPECT_EQ(with_bias.named_buffers().size(), cpu.params().named_buffers().size());
  gpu.upload_params(cpu.params());
  const double lc = cpu.forward(b2.inputs.data(), b2.targets.data(), p.batch, p.seq, b2.hash_ids);
  cpu.backward();
  const double lg = gpu.forward(b2.inputs.data(), b2.targets.data(), p.batch, p.seq, b2.hash_ids);
  gpu.backward();
  EXPECT_NEAR(lg, lc, 1e-5 * std::max(1.0, std::abs(lc)));
  TransformerParams<float> grads;
  nn::SparseRowGrad<float> embed;
  std::vector<nn::SparseRowGrad<float>> tables;
  gpu.download_grads(grads, embed, tables);
  std::map<std::string, nn::NamedParam<float>> cg;
  for (auto& x : cpu.grads().named()) cg.emplace(x.name, x);
  for (auto& x : grads.named()) {
    const auto& c = cg.at(x.name);
    EXPECT_LE(rel_error(std::vector<float>(x.data, x.data + x.size),
                        std::vector<float>(c.data, c.data + c.size)),
              kTol)
        << x.name;
  }
  EXPECT_EQ(embed.rows, cpu.embed_grad().rows);
  ASSERT_EQ(tables.size(), 1u);
  EXPECT_EQ(tables[0].rows, cpu.engram_table_grads()[0].rows);
  EXPECT_LE(rel_error(tables[0].values, cpu.engram_table_grads()[0].values), kTol);
}

// Device access for an optimizer: every dense parameter once, with its gradient, and the sparse
// gradients naming the embedding and the tables.
TEST(GpuTransformerSteps, DeviceAccessListsEveryParameter) {
  SKIP_WITHOUT_GPU();
  const Case p = cases()[4];  // MoeEngram2Hc4
  const Hashing setup = make_hashing(p.config);
  Transformer<float> cpu(p.config, setup.head_sizes, 3);
  GpuTransformer gpu(cpu);
  const Batch b = make_batch(p.config, setup, p.batch, p.seq, 41);
  cpu.forward(b.inputs.data(), b.targets.data(), p.batch, p.seq, b.hash_ids);
  cpu.backward();
  gpu.forward(b.inputs.data(), b.targets.data(), p.batch, p.seq, b.hash_ids);
  gpu.backward();
  std::map<std::string, nn::NamedParam<float>> params, grads;
  for (auto& x : cpu.params().named()) params.emplace(x.name, x);
  for (auto& x : cpu.grads().named()) grads.emplace(x.name, x);
  const auto dense = gpu.dense_params();
  EXPECT_EQ(dense.size(), grads.size());
  for (const auto& d : dense) {
    ASSERT_EQ(params.count(d.name), 1u) << d.name;
    const auto& cp = params.at(d.name);
    ASSERT_EQ(d.size, cp.size);
    EXPECT_EQ(d.shape, cp.shape);
    EXPECT_EQ(d.decay, cp.shape.size() >= 2);
    std::vector<float> pv(static_cast<size_t>(d.size)), gv(static_cast<size_t>(d.size));
    cuda::copy_to_host(pv.data(), d.param, pv.size() * 4);
    cuda::copy_to_host(gv.data(), d.grad, gv.size() * 4);
    EXPECT_TRUE(same_bits(pv, std::vector<float>(cp.data, cp.data + cp.size))) << d.name;
    const auto& cgr = grads.at(d.name);
    EXPECT_LE(rel_error(gv, std::vector<float>(cgr.data, cgr.data + cgr.size)), kTol) << d.name;
  }
  const auto sparse = gpu.sparse_grads();
  ASSERT_EQ(sparse.size(), 3u);
  EXPECT_EQ(sparse[0].name, "embed");
  EXPECT_EQ(sparse[0].unique, static_cast<int64_t>(cpu.embed_grad().rows.size()));
  EXPECT_EQ(sparse[1].name, "layers.0.engram.table");
  EXPECT_EQ(sparse[2].name, "layers.2.engram.table");
  for (size_t e = 0; e < 2; ++e) {
    const auto& cg = cpu.engram_table_grads()[e];
    EXPECT_EQ(sparse[e + 1].unique, static_cast<int64_t>(cg.rows.size()));
    std::vector<int64_t> rows(static_cast<size_t>(sparse[e + 1].unique));
    cuda::copy_to_host(rows.data(), sparse[e + 1].rows, rows.size() * sizeof(int64_t));
    EXPECT_EQ(rows, cg.rows);
  }
}

// The model ops on their own: the sparse embedding gradient against nn::embedding_backward bit
// for bit (repeated ids, odd widths), the stream sum, the cast round trip and sum_squares.
TEST(GpuTransformerOps, EmbeddingBackwardMatchesCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  for (const int64_t c : {1, 7, 64}) {
    for (const int64_t vocab : {1, 5, 1000, 100003}) {
      const int64_t n = 257;
      std::mt19937_64 rng(static_cast<uint64_t>(c * 31 + vocab));
      std::vector<int64_t> ids(static_cast<size_t>(n));
      for (auto& x : ids) x = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
      std::normal_distribution<float> d(0.0f, 1.0f);
      std::vector<float> dout(static_cast<size_t>(n * c));
      for (auto& x : dout) x = d(rng);
      nn::SparseRowGrad<float> want;
      nn::embedding_backward(want, dout.data(), ids.data(), n, c);
      cuda::DeviceBuffer<int64_t> d_ids{std::span<const int64_t>(ids)};
      cuda::DeviceBuffer<float> d_dout{std::span<const float>(dout)};
      cuda::GpuSparseRowGrad g;
      cuda::embedding_backward(g, d_dout.data(), d_ids.data(), n, c, vocab);
      nn::SparseRowGrad<float> got;
      g.download(got);
      EXPECT_EQ(got.width, c);
      EXPECT_EQ(got.rows, want.rows) << "c " << c << " vocab " << vocab;
      EXPECT_TRUE(same_bits(got.values, want.values)) << "c " << c << " vocab " << vocab;

      // Forward with 3 streams, then their sum: 3 x the gathered rows.
      const int64_t m = 3;
      std::vector<float> table(static_cast<size_t>(vocab * c));
      for (auto& x : table) x = d(rng);
      cuda::DeviceBuffer<float> d_table{std::span<const float>(table)};
      cuda::DeviceBuffer<float> d_x(static_cast<size_t>(n * m * c)),
          d_sum(static_cast<size_t>(n * c));
      cuda::embedding_forward(d_x.data(), d_ids.data(), d_table.data(), n, m, c);
      cuda::streams_sum(d_sum.data(), d_x.data(), n, m, c);
      std::vector<float> x(d_x.size()), sum(d_sum.size());
      d_x.download(x);
      d_sum.download(sum);
      std::vector<float> xs(x.size()), ss(sum.size());
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t j = 0; j < c; ++j) {
          const float v = table[static_cast<size_t>(ids[static_cast<size_t>(t)] * c + j)];
          for (int64_t k = 0; k < m; ++k) xs[static_cast<size_t>((t * m + k) * c + j)] = v;
          ss[static_cast<size_t>(t * c + j)] = 0.0f + v + v + v;
        }
      }
      EXPECT_TRUE(same_bits(x, xs));
      EXPECT_TRUE(same_bits(sum, ss));
    }
  }
}

TEST(GpuTransformerOps, SumSquaresCastAndElementwise) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : {1, 255, 4097, 1 << 20}) {
    std::mt19937_64 rng(static_cast<uint64_t>(n));
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    for (auto& v : x) v = d(rng);
    for (auto& v : y) v = d(rng);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dy{std::span<const float>(y)};
    double want = 0.0;
    for (float v : x) want += static_cast<double>(v) * v;
    const double got = cuda::sum_squares(dx.data(), n);
    EXPECT_NEAR(got, want, 1e-10 * want);
    EXPECT_EQ(got, cuda::sum_squares(dx.data(), n));  // same bits every call

    cuda::add_inplace(dy.data(), dx.data(), n);
    cuda::scale_inplace(dy.data(), 0.5f, n);
    std::vector<float> out(static_cast<size_t>(n)), want_y(static_cast<size_t>(n));
    dy.download(out);
    for (size_t i = 0; i < out.size(); ++i) want_y[i] = (y[i] + x[i]) * 0.5f;
    EXPECT_TRUE(same_bits(out, want_y));

    cuda::DeviceBuffer<bf16> db(static_cast<size_t>(n));
    cuda::cast(db.data(), dx.data(), n);
    cuda::DeviceBuffer<float> back(static_cast<size_t>(n));
    cuda::cast(back.data(), db.data(), n);
    std::vector<float> r(static_cast<size_t>(n)), want_r(static_cast<size_t>(n));
    back.download(r);
    for (size_t i = 0; i < r.size(); ++i) want_r[i] = bf16_to_float(float_to_bf16(x[i]));
    EXPECT_TRUE(same_bits(r, want_r));

    cuda::copy(back.data(), dx.data(), n);
    back.download(r);
    EXPECT_TRUE(same_bits(r, x));
    cuda::zero(back.data(), n);
    back.download(r);
    EXPECT_TRUE(std::all_of(r.begin(), r.end(), [](float v) { return v == 0.0f; }));
  }
}

TEST(GpuTransformerOps, ChecksArguments) {
  if (!cuda::compiled_with_cuda()) GTEST_SKIP() << "built without CUDA";
  EXPECT_THROW(cuda::add_inplace(nullptr, nullptr, -1), InputError);
  EXPECT_THROW(cuda::streams_sum(nullptr, nullptr, -1, 1, 1), InputError);
  cuda::GpuSparseRowGrad g;
  EXPECT_THROW(cuda::embedding_backward(g, nullptr, nullptr, 4, 4, 0), InputError);
}

TEST(GpuTransformerSteps, RejectsBadInputs) {
  SKIP_WITHOUT_GPU();
  const Case p = cases()[2];
  const Hashing setup = make_hashing(p.config);
  Transformer<float> cpu(p.config, setup.head_sizes, 1);
  GpuTransformer gpu(cpu);
  EXPECT_THROW(gpu.backward(), Error);
  Batch b = make_batch(p.config, setup, 1, 8, 1);
  EXPECT_THROW(gpu.forward(b.inputs.data(), b.targets.data(), 1, 8, {}), InputError);
  b.inputs[2] = p.config.model.vocab_size;
  EXPECT_THROW(gpu.forward(b.inputs.data(), b.targets.data(), 1, 8, b.hash_ids), InputError);
  EXPECT_THROW(gpu.forward(b.inputs.data(), b.targets.data(), 1, 1000, b.hash_ids), InputError);
  GpuTransformerOptions bf;
  bf.activations = DType::kBF16;
  EXPECT_THROW({ GpuTransformer g(cpu, bf); }, ConfigError);
  ModelConfig small = base_config(32, 16, 1, 2, 2, 1, 16);
  small.model.head_dim = 8;
  Transformer<float> tiny(small, {}, 1);
  EXPECT_THROW({ GpuTransformer g(tiny); }, InputError);
}

}  // namespace
}  // namespace engram::model
