#include "engram/model/transformer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../nn/grad_check.h"
#include "engram/nn/attention.h"
#include "engram/nn/embedding.h"
#include "engram/nn/loss.h"
#include "engram/nn/mlp.h"
#include "engram/nn/rmsnorm.h"
#include "engram/tensor/gemm.h"
#include "engram/util/error.h"

namespace engram::model {
namespace {

constexpr int64_t kB = 2, kT = 5, kV = 50;

ModelConfig tiny_config(int64_t hc_mult, bool engram, bool moe, int64_t layers = 2) {
  ModelConfig c;
  c.model.vocab_size = kV;
  c.model.hidden_size = 8;
  c.model.num_layers = layers;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.head_dim = 4;
  c.model.hc_mult = hc_mult;
  c.model.max_seq_len = 16;
  c.model.dense_intermediate_size = 12;
  c.model.first_dense_layers = 1;
  c.train.seq_len = kT;
  c.train.batch_size = kB;
  if (moe) {
    MoeConfig m;
    m.num_experts = 4;
    m.num_shared_experts = 1;
    m.top_k = 2;
    m.expert_intermediate_size = 6;
    c.moe = m;
  }
  if (engram) {
    EngramConfig e;
    e.hash.engram_vocab_size = {40, 40};
    e.hash.max_ngram_size = 3;
    e.hash.n_embed_per_ngram = 8;
    e.hash.n_head_per_ngram = 2;
    e.hash.layer_ids = {1};
    e.hash.kernel_size = 2;
    c.engram = e;
  }
  return c;
}

const std::vector<std::vector<int64_t>> kHeadSizes = {{7, 11, 13, 17}};

struct Batch {
  std::vector<int64_t> inputs, targets;
  std::vector<int32_t> hash_ids;
};

Batch make_batch(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Batch b;
  for (int64_t i = 0; i < kB * kT; ++i) {
    b.inputs.push_back(static_cast<int64_t>(rng() % kV));
    b.targets.push_back(static_cast<int64_t>(rng() % kV));
  }
  b.targets[3] = -1;  // one token not counted
  if (c.engram) {
    for (const auto& sizes : kHeadSizes) {
      for (int64_t i = 0; i < kB * kT; ++i) {
        for (int64_t s : sizes) b.hash_ids.push_back(static_cast<int32_t>(rng() % s));
      }
    }
  }
  return b;
}

// Moves every parameter away from its init so that no gradient is trivially small.
void perturb(Transformer<double>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, 0.3);
  for (auto& p : model.params().named()) {
    for (int64_t i = 0; i < p.size; ++i) p.data[i] += d(rng);
  }
}

std::vector<double> densify(const nn::SparseRowGrad<double>& g, int64_t size) {
  std::vector<double> out(static_cast<size_t>(size), 0.0);
  for (size_t r = 0; r < g.rows.size(); ++r) {
    for (int64_t j = 0; j < g.width; ++j) {
      out[static_cast<size_t>(g.rows[r] * g.width + j)] +=
          g.values[r * static_cast<size_t>(g.width) + static_cast<size_t>(j)];
    }
  }
  return out;
}

void check_all_gradients(const ModelConfig& c, const std::vector<std::vector<int64_t>>& heads) {
  Transformer<double> model(c, heads, 3);
  perturb(model, 11);
  const Batch b = make_batch(c, 5);
  auto loss = [&] { return model.forward(b.inputs.data(), b.targets.data(), kB, kT, b.hash_ids); };
  loss();
  model.backward();
  std::map<std::string, std::vector<double>> analytic;
  for (auto& g : model.grads().named())
    analytic[g.name] = std::vector<double>(g.data, g.data + g.size);
  int engram_index = 0;
  size_t checked = 0;
  for (auto& p : model.params().named()) {
    std::vector<double> a;
    if (p.name == "embed") {
      a = densify(model.embed_grad(), p.size);
    } else if (p.name.ends_with("engram.table")) {
      a = densify(model.engram_table_grads()[static_cast<size_t>(engram_index++)], p.size);
    } else {
      ASSERT_TRUE(analytic.count(p.name)) << p.name;
      a = analytic[p.name];
    }
    ASSERT_EQ(static_cast<int64_t>(a.size()), p.size) << p.name;
    std::vector<double> values(p.data, p.data + p.size);
    const std::vector<double> original = values;
    auto fd_loss = [&] {
      std::copy(values.begin(), values.end(), p.data);
      return loss();
    };
    test::check_gradient(p.name, values, a, fd_loss, 10, 1e-6, 1e-6);
    std::copy(original.begin(), original.end(), p.data);
    ++checked;
  }
  EXPECT_GT(checked, 10u);
}

TEST(TransformerTest, GradCheckDenseHc1) {
  check_all_gradients(tiny_config(1, false, false), {});
}

TEST(TransformerTest, GradCheckDenseEngramHc1) {
  check_all_gradients(tiny_config(1, true, false), kHeadSizes);
}

TEST(TransformerTest, GradCheckMoeEngramHc2) {
  check_all_gradients(tiny_config(2, true, true), kHeadSizes);
}

TEST(TransformerTest, GradCheckDenseHc2) {
  check_all_gradients(tiny_config(2, false, false), {});
}

TEST(TransformerTest, NamesAreStableAndUnique) {
  Transformer<double> model(tiny_config(2, true, true), kHeadSizes, 0);
  std::map<std::string, int> seen;
  for (auto& p : model.params().named()) {
    int64_t prod = 1;
    for (int64_t s : p.shape) prod *= s;
    EXPECT_EQ(prod, p.size) << p.name;
    EXPECT_EQ(seen[p.name]++, 0) << p.name;
  }
  EXPECT_EQ(seen.count("layers.0.attn.wq"), 1u);
  EXPECT_EQ(seen.count("layers.1.moe.w1"), 1u);
  EXPECT_EQ(seen.count("layers.1.engram.table"), 1u);
  EXPECT_EQ(seen.count("layers.1.hc_ffn.phi"), 1u);
  EXPECT_EQ(seen.count("hc_head.alpha"), 1u);
  ASSERT_EQ(model.params().named_buffers().size(), 1u);
  EXPECT_EQ(model.params().named_buffers()[0].name, "layers.1.moe.bias");
}

// One dense layer with hc_mult = 1 against the plain pre-norm residual computation.
TEST(TransformerTest, Hc1MatchesPlainResidual) {
  const ModelConfig c = tiny_config(1, false, false, 1);
  Transformer<double> model(c, {}, 7);
  perturb(model, 2);
  const Batch b = make_batch(c, 9);
  const double loss = model.forward(b.inputs.data(), b.targets.data(), kB, kT);

  auto& P = model.params();
  auto& L = P.layers[0];
  const int64_t N = kB * kT, C = 8, F = 12;
  std::vector<double> x(static_cast<size_t>(N * C)), h(x.size()), f(x.size());
  std::vector<double> rstd(static_cast<size_t>(N));
  nn::embedding_forward(x.data(), b.inputs.data(), P.embed.data(), N, C, kV);
  const nn::RowLayout rows{N, C, C};
  nn::rmsnorm_forward(h.data(), C, rstd.data(), x.data(), rows, L.attn_norm.data(), 1e-6);
  nn::AttentionSaved<double> as;
  nn::AttentionShape shape{kB, kT, C, 2, 2, 4};
  nn::attention_forward(
      f.data(), as, h.data(),
      nn::AttentionWeights<double>{L.wq.data(), L.wk.data(), L.wv.data(), L.wo.data()}, shape);
  for (size_t i = 0; i < x.size(); ++i) x[i] += f[i];
  nn::rmsnorm_forward(h.data(), C, rstd.data(), x.data(), rows, L.ffn_norm.data(), 1e-6);
  nn::SwiGluSaved<double> ms;
  nn::swiglu_forward(f.data(), ms, h.data(), L.w1.data(), L.w3.data(), L.w2.data(), N, C, F);
  for (size_t i = 0; i < x.size(); ++i) x[i] += f[i];
  nn::rmsnorm_forward(h.data(), C, rstd.data(), x.data(), rows, P.final_norm.data(), 1e-6);
  std::vector<double> logits(static_cast<size_t>(N * kV));
  gemm<double>(Trans::kNo, Trans::kYes, N, kV, C, 1.0, h.data(), C, P.head.data(), C, 0.0,
               logits.data(), kV);
  const double expected = nn::cross_entropy_forward(logits.data(), b.targets.data(), N, kV);
  EXPECT_NEAR(loss, expected, 1e-12);
}

TEST(TransformerTest, SgdDecreasesLoss) {
  for (int64_t hc : {1, 2}) {
    const ModelConfig c = tiny_config(hc, true, true);
    Transformer<float> model(c, kHeadSizes, 1);
    const Batch b = make_batch(c, 4);
    const float lr = 0.5f;
    double first = 0, last = 0;
    for (int step = 0; step < 20; ++step) {
      last = model.forward(b.inputs.data(), b.targets.data(), kB, kT, b.hash_ids);
      if (step == 0) first = last;
      model.backward();
      auto params = model.params().named();
      std::map<std::string, nn::NamedParam<float>> grads;
      for (auto& g : model.grads().named()) grads.emplace(g.name, g);
      for (auto& p : params) {
        auto it = grads.find(p.name);
        if (it == grads.end()) continue;
        for (int64_t i = 0; i < p.size; ++i) p.data[i] -= lr * it->second.data[i];
      }
      const auto& eg = model.embed_grad();
      for (size_t r = 0; r < eg.rows.size(); ++r) {
        for (int64_t j = 0; j < eg.width; ++j)
          model.params().embed[static_cast<size_t>(eg.rows[r] * eg.width + j)] -=
              lr * eg.values[r * static_cast<size_t>(eg.width) + static_cast<size_t>(j)];
      }
      model.update_moe_bias();
    }
    EXPECT_TRUE(std::isfinite(last));
    EXPECT_LT(last, first - 0.1) << "hc_mult " << hc;
    const auto counts = model.moe_expert_counts();
    ASSERT_EQ(counts.size(), 2u);
    EXPECT_TRUE(counts[0].empty());
    int64_t total = 0;
    for (int64_t n : counts[1]) total += n;
    EXPECT_EQ(total, kB * kT * 2);
  }
}

// An optimizer keeps pointers into grads(): a second backward must reuse the buffers, and must
// not add to the previous gradients.
TEST(TransformerTest, BackwardReusesGradientBuffers) {
  const ModelConfig c = tiny_config(2, true, true);
  Transformer<double> model(c, kHeadSizes, 3);
  perturb(model, 2);
  const Batch b1 = make_batch(c, 6), b2 = make_batch(c, 7);
  model.forward(b1.inputs.data(), b1.targets.data(), kB, kT, b1.hash_ids);
  model.backward();
  std::vector<const double*> where;
  for (auto& g : model.grads().named()) where.push_back(g.data);
  model.forward(b2.inputs.data(), b2.targets.data(), kB, kT, b2.hash_ids);
  model.backward();
  std::map<std::string, std::vector<double>> second;
  size_t i = 0;
  for (auto& g : model.grads().named()) {
    EXPECT_EQ(g.data, where[i++]) << g.name;
    second[g.name].assign(g.data, g.data + g.size);
  }
  Transformer<double> fresh(c, kHeadSizes, 3);
  perturb(fresh, 2);
  fresh.forward(b2.inputs.data(), b2.targets.data(), kB, kT, b2.hash_ids);
  fresh.backward();
  for (auto& g : fresh.grads().named()) {
    EXPECT_EQ(second[g.name], std::vector<double>(g.data, g.data + g.size)) << g.name;
  }
}

TEST(TransformerTest, DeterministicForSameSeed) {
  const ModelConfig c = tiny_config(2, true, true);
  const Batch b = make_batch(c, 8);
  Transformer<float> m1(c, kHeadSizes, 42), m2(c, kHeadSizes, 42), m3(c, kHeadSizes, 43);
  const double l1 = m1.forward(b.inputs.data(), b.targets.data(), kB, kT, b.hash_ids);
  const double l2 = m2.forward(b.inputs.data(), b.targets.data(), kB, kT, b.hash_ids);
  const double l3 = m3.forward(b.inputs.data(), b.targets.data(), kB, kT, b.hash_ids);
  EXPECT_EQ(l1, l2);
  EXPECT_NE(l1, l3);
  m1.backward();
  m2.backward();
  EXPECT_EQ(m1.grads().head, m2.grads().head);
}

TEST(TransformerTest, RejectsBadInputs) {
  const ModelConfig c = tiny_config(1, true, false);
  Transformer<double> model(c, kHeadSizes, 0);
  const Batch b = make_batch(c, 1);
  EXPECT_THROW(model.forward(b.inputs.data(), b.targets.data(), kB, kT), InputError);
  EXPECT_THROW(model.backward(), Error);
  EXPECT_THROW(Transformer<double>(c, {}, 0), ConfigError);
}

}  // namespace
}  // namespace engram::model
