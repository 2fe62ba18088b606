// train::GpuOptimizer and train::GpuGradAccumulator against the CPU optimizers and the CPU
// trainer's gradient sums, on a small MoE + Engram model (one embedding, one Engram table):
//
//   * four steps of random gradients with clipping inactive (max_norm infinite, or finite and
//     above the norm): parameters, moments, last_step and step counts equal to AdamW +
//     SparseRowAdam bit for bit. The sparse rows have gaps (each row is in a step's gradient
//     with probability 1/3, and one table has an empty gradient in one step), so the lazy
//     beta^k decay of rows that skipped steps is exercised.
//   * the same with clipping active: the norm equals clip_grad_norm's to 1e-12 (relative; the
//     GPU sums the squares in another order), and the parameters and moments are within 1e-6
//     (normalised) of the CPU's, bit for bit whenever the float clip scales agree in every step
//     (they can differ in the last bit, from the norm's rounding).
//   * the state round trip: download_state into fresh host optimizers gives the CPU's state,
//     and an optimizer resumed with upload_state takes the next step to the same bits.
//   * the accumulator's mean of three backward passes equals the CPU trainer's sums (dense:
//     0 + g1 + g2 + g3, sparse: the union of rows, in micro-batch order) times float(1/3).
//
// Skipped without a GPU.
#include "engram/train/gpu_optimizer.h"

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

#include "cuda/cuda_test_util.h"
#include "engram/cuda/buffer.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/transformer.h"
#include "engram/train/optimizer.h"
#include "engram/util/error.h"

namespace engram::train {
namespace {

using cuda::test_util::random_vec;
using cuda::test_util::to_device;

// MoE after one dense layer, Engram at layer 1, two streams; head_dim 64 for the GPU attention.
model::ModelConfig test_config() {
  model::ModelConfig c;
  c.model.vocab_size = 160;
  c.model.hidden_size = 32;
  c.model.num_layers = 3;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.head_dim = 64;
  c.model.hc_mult = 2;
  c.model.max_seq_len = 64;
  c.model.dense_intermediate_size = 64;
  c.model.first_dense_layers = 1;
  c.train.batch_size = 2;
  c.train.seq_len = 16;
  model::MoeConfig m;
  m.num_experts = 4;
  m.num_shared_experts = 1;
  m.top_k = 2;
  m.expert_intermediate_size = 24;
  c.moe = m;
  model::EngramConfig e;
  e.hash.engram_vocab_size = {61, 67};
  e.hash.max_ngram_size = 3;
  e.hash.n_embed_per_ngram = 16;
  e.hash.n_head_per_ngram = 2;
  e.hash.layer_ids = {1};
  e.hash.pad_id = 2;
  c.engram = e;
  return c;
}

// The hasher over the synthetic compression lut[id] = id % (3/4 V) (as gpu_transformer_test).
std::unique_ptr<hash::NgramHasher> make_hasher(const model::ModelConfig& c) {
  const int64_t V = c.model.vocab_size, compressed = V * 3 / 4;
  std::vector<int32_t> lut(static_cast<size_t>(V));
  for (int64_t id = 0; id < V; ++id)
    lut[static_cast<size_t>(id)] = static_cast<int32_t>(id % compressed);
  return std::make_unique<hash::NgramHasher>(c.engram_hash_config(), std::move(lut), compressed);
}

bool is_table(const std::string& name) {
  return name == "embed" || name.ends_with(".engram.table");
}

// The CPU trainer's optimizers over host parameters P: AdamW on the dense tensors (decay for
// two or more dimensions), SparseRowAdam per table, in the GPU optimizer's table order.
struct HostOptimizers {
  std::vector<std::string> dense_names;
  std::vector<std::vector<float>> grads;  // per dense group, registered with the AdamW
  std::unique_ptr<AdamW> dense;
  std::vector<std::unique_ptr<SparseRowAdam>> sparse;

  HostOptimizers(model::TransformerParams<float>& P, const std::vector<std::string>& table_names,
                 const AdamWOptions& options)
      : dense(std::make_unique<AdamW>(options)) {
    std::map<std::string, nn::NamedParam<float>> tables;
    const auto named = P.named();
    size_t n_dense = 0;
    for (const auto& p : named) n_dense += is_table(p.name) ? 0 : 1;
    grads.reserve(n_dense);  // no reallocation: AdamW holds the buffers' addresses
    for (const auto& p : named) {
      if (is_table(p.name)) {
        tables.emplace(p.name, p);
        continue;
      }
      dense_names.push_back(p.name);
      grads.emplace_back(static_cast<size_t>(p.size), 0.0f);
      dense->add_group(p.name, p.data, grads.back().data(), p.size, p.shape.size() >= 2);
    }
    for (const std::string& name : table_names) {
      const nn::NamedParam<float>& t = tables.at(name);
      sparse.push_back(std::make_unique<SparseRowAdam>(t.data, t.shape[0], t.shape[1]));
    }
  }

  std::vector<SparseRowAdam*> sparse_ptrs() {
    std::vector<SparseRowAdam*> out;
    for (auto& s : sparse) out.push_back(s.get());
    return out;
  }
};

// A model on both sides: the CPU model (its parameters are the host optimizers'), the GPU copy.
struct ModelPair {
  model::ModelConfig config = test_config();
  std::unique_ptr<hash::NgramHasher> hasher = make_hasher(config);
  std::unique_ptr<model::Transformer<float>> cpu =
      std::make_unique<model::Transformer<float>>(config, model::engram_head_sizes(*hasher), 7);
  std::unique_ptr<model::GpuTransformer> gpu = std::make_unique<model::GpuTransformer>(*cpu);
};

// One step's random gradients on both sides: host (the HostOptimizers' buffers and `host_sparse`)
// and device (`device`, pointing into the model's dense gradient arena and into `rows`/`values`).
struct StepGrads {
  std::vector<nn::SparseRowGrad<float>> host_sparse;  // GPU table order (embed first)
  std::vector<cuda::DeviceBuffer<int64_t>> rows;
  std::vector<cuda::DeviceBuffer<float>> values;
  GpuGradients device;
};

StepGrads random_grads(HostOptimizers& host, GpuOptimizer& opt, model::GpuTransformer& gpu,
                       uint64_t seed, bool empty_table_1) {
  StepGrads s;
  s.device = opt.model_gradients();
  std::map<std::string, float*> device_grad;
  const auto dense = gpu.dense_params();
  for (size_t i = 0; i < dense.size(); ++i) device_grad.emplace(dense[i].name, s.device.dense[i]);
  for (size_t i = 0; i < host.grads.size(); ++i) {
    // Copied into the existing buffer: AdamW holds its address (assigning the vector would
    // move a new buffer in and leave AdamW reading the freed one).
    const std::vector<float> g = random_vec(host.grads[i].size(), seed * 1000 + i);
    std::copy(g.begin(), g.end(), host.grads[i].begin());
    cuda::copy_to_device(device_grad.at(host.dense_names[i]), host.grads[i].data(),
                         host.grads[i].size() * sizeof(float));
  }
  std::mt19937_64 rng(seed);
  for (size_t t = 0; t < s.device.sparse.size(); ++t) {
    model::GpuSparseGrad& d = s.device.sparse[t];
    nn::SparseRowGrad<float> g;
    g.width = d.width;
    for (int64_t r = 0; r < d.table_rows; ++r) {
      if (rng() % 3 == 0 && !(empty_table_1 && t == 1)) g.rows.push_back(r);
    }
    g.values = random_vec(g.rows.size() * static_cast<size_t>(d.width), seed * 1000 + 500 + t);
    s.rows.push_back(to_device(g.rows));
    s.values.push_back(to_device(g.values));
    d.rows = s.rows.back().data();
    d.values = s.values.back().data();
    d.unique = static_cast<int64_t>(g.rows.size());
    s.host_sparse.push_back(std::move(g));
  }
  return s;
}

// train(): clip_grad_norm over the dense buffers and the sparse gradients (tables, then the
// embedding), AdamW at lr, the embedding at lr, the tables at 5 lr.
double cpu_step(HostOptimizers& host, StepGrads& s, double lr, double max_norm) {
  std::vector<std::span<float>> dense;
  for (auto& g : host.grads) dense.emplace_back(g);
  std::vector<nn::SparseRowGrad<float>*> sparse;
  for (size_t t = 1; t < s.host_sparse.size(); ++t) sparse.push_back(&s.host_sparse[t]);
  sparse.push_back(&s.host_sparse[0]);
  const double norm = clip_grad_norm(dense, sparse, max_norm);
  host.dense->step(lr);
  for (size_t t = 0; t < host.sparse.size(); ++t) {
    host.sparse[t]->step(s.host_sparse[t], t == 0 ? lr : kEngramLrMultiplier * lr);
  }
  return norm;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

double error_of(std::span<const float> got, std::span<const float> want) {
  return cuda::test_util::normalised_error(std::vector<float>(got.begin(), got.end()),
                                           std::vector<float>(want.begin(), want.end()));
}

// Compares the GPU's parameters and optimizer state with the host's: bit for bit when `bitwise`,
// else within 1e-6 (normalised). Returns the worst normalised error.
double compare(ModelPair& s, GpuOptimizer& opt, HostOptimizers& host, bool bitwise) {
  double worst = 0;
  auto check = [&](const std::string& what, std::span<const float> got,
                   std::span<const float> want) {
    const double e = error_of(got, want);
    worst = std::max(worst, e);
    if (bitwise) {
      EXPECT_TRUE(same_bits(got, want)) << what << " (normalised error " << e << ")";
    } else {
      EXPECT_LE(e, 1e-6) << what;
    }
  };
  model::TransformerParams<float> got;
  s.gpu->download_params(got);
  auto g = got.named();
  auto w = s.cpu->params().named();
  EXPECT_EQ(g.size(), w.size());
  for (size_t i = 0; i < std::min(g.size(), w.size()); ++i) {
    check("param " + w[i].name, {g[i].data, static_cast<size_t>(g[i].size)},
          {w[i].data, static_cast<size_t>(w[i].size)});
  }
  // The GPU state through download_state into optimizers registered like the host's.
  model::TransformerParams<float> scratch = s.cpu->params();
  HostOptimizers copy(scratch, opt.sparse_names(), host.dense->options());
  opt.download_state(*copy.dense, copy.sparse_ptrs());
  EXPECT_EQ(copy.dense->steps(), host.dense->steps());
  EXPECT_EQ(opt.dense_steps(), host.dense->steps());
  const auto sg = copy.dense->state(), sw = host.dense->state();
  EXPECT_EQ(sg.size(), sw.size());
  for (size_t i = 0; i < std::min(sg.size(), sw.size()); ++i) {
    EXPECT_EQ(sg[i].name, sw[i].name);
    check("dense " + sw[i].name, sg[i].values, sw[i].values);
  }
  for (size_t t = 0; t < host.sparse.size(); ++t) {
    const std::string name = opt.sparse_names()[t];
    EXPECT_EQ(copy.sparse[t]->steps(), host.sparse[t]->steps()) << name;
    const auto tg = copy.sparse[t]->state(), tw = host.sparse[t]->state();
    for (size_t k = 0; k < tw.size(); ++k)
      check(name + " " + tw[k].name, tg[k].values, tw[k].values);
    const std::span<int64_t> lg = copy.sparse[t]->last_step(), lw = host.sparse[t]->last_step();
    EXPECT_TRUE(std::equal(lg.begin(), lg.end(), lw.begin(), lw.end())) << name << " last_step";
  }
  return worst;
}

// The GPU and the CPU optimizers over one model; steps() applies the same random gradients to
// both, max_norm per step, and records whether every step's float clip scale agreed (so that the
// results must be equal bit for bit).
struct BothOptimizers {
  ModelPair setup;
  AdamWOptions options;
  std::unique_ptr<GpuOptimizer> opt;
  std::unique_ptr<HostOptimizers> host;
  bool scales_agree = true;

  BothOptimizers() {
    options.weight_decay = 0.1;
    opt = std::make_unique<GpuOptimizer>(*setup.gpu, options);
    host = std::make_unique<HostOptimizers>(setup.cpu->params(), opt->sparse_names(), options);
  }

  void steps(const std::vector<double>& max_norms, uint64_t seed) {
    const double lrs[] = {1e-2, 3e-3, 2e-2, 5e-3, 1e-2, 4e-3};
    for (size_t k = 0; k < max_norms.size(); ++k) {
      SCOPED_TRACE(testing::Message() << "step " << host->dense->steps() + 1);
      const double lr = lrs[k % 6];
      StepGrads g = random_grads(*host, *opt, *setup.gpu, seed + k, k == 2);
      const double want = cpu_step(*host, g, lr, max_norms[k]);
      const double got = opt->clip_grad_norm(g.device, max_norms[k]);
      EXPECT_NEAR(got, want, 1e-12 * want);
      const double mn = max_norms[k];
      if (static_cast<float>(mn / (got + 1e-6)) != static_cast<float>(mn / (want + 1e-6)) &&
          mn / (want + 1e-6) < 1.0) {
        scales_agree = false;
      }
      opt->step(g.device, lr, kEngramLrMultiplier * lr);
    }
  }
};

TEST(GpuOptimizer, MatchesCpuOptimizersBitForBitWithoutClipping) {
  SKIP_WITHOUT_GPU();
  BothOptimizers r;
  // Norms of these gradients are in the hundreds: 1e6 is finite but inactive.
  r.steps({INFINITY, 1e6, INFINITY, 1e6}, 11);
  const double worst = compare(r.setup, *r.opt, *r.host, true);
  std::printf("[gpu optimizer, no clipping] worst normalised error %.3g\n", worst);
}

TEST(GpuOptimizer, MatchesCpuOptimizersWithClipping) {
  SKIP_WITHOUT_GPU();
  BothOptimizers r;
  r.steps({1.0, 1.0, 0.5, 1.0}, 21);
  const double worst = compare(r.setup, *r.opt, *r.host, r.scales_agree);
  std::printf("[gpu optimizer, clipping] worst normalised error %.3g (clip scales %s)\n", worst,
              r.scales_agree ? "equal, compared bit for bit" : "differ in the last bit");
}

TEST(GpuOptimizer, ResumesFromHostStateBitForBit) {
  SKIP_WITHOUT_GPU();
  BothOptimizers r;
  r.steps({INFINITY, 1.0, INFINITY}, 31);
  // What a GPU run's checkpoint holds (parameters downloaded, download_state into host
  // optimizers registered on them), loaded into a second GPU model and optimizer (a resume).
  ModelPair fresh;
  model::TransformerParams<float> saved_params;
  r.setup.gpu->download_params(saved_params);
  auto src = saved_params.named();
  auto dst = fresh.cpu->params().named();
  ASSERT_EQ(src.size(), dst.size());
  for (size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(src[i].size, dst[i].size);
    std::copy(src[i].data, src[i].data + src[i].size, dst[i].data);
  }
  HostOptimizers saved(fresh.cpu->params(), r.opt->sparse_names(), r.options);
  r.opt->download_state(*saved.dense, saved.sparse_ptrs());
  fresh.gpu->upload_params(fresh.cpu->params());
  GpuOptimizer resumed(*fresh.gpu, r.options);
  resumed.upload_state(*saved.dense, saved.sparse_ptrs());
  EXPECT_EQ(resumed.dense_steps(), 3);
  // The next step on both, the same gradients (clipping active).
  StepGrads a = random_grads(*r.host, *r.opt, *r.setup.gpu, 99, false);
  StepGrads b = random_grads(saved, resumed, *fresh.gpu, 99, false);
  const double na = r.opt->clip_grad_norm(a.device, 1.0);
  const double nb = resumed.clip_grad_norm(b.device, 1.0);
  EXPECT_EQ(na, nb);
  r.opt->step(a.device, 1e-2, 5e-2);
  resumed.step(b.device, 1e-2, 5e-2);
  model::TransformerParams<float> pa, pb;
  r.setup.gpu->download_params(pa);
  fresh.gpu->download_params(pb);
  auto xa = pa.named();
  auto xb = pb.named();
  ASSERT_EQ(xa.size(), xb.size());
  for (size_t i = 0; i < xa.size(); ++i) {
    EXPECT_TRUE(same_bits({xa[i].data, static_cast<size_t>(xa[i].size)},
                          {xb[i].data, static_cast<size_t>(xb[i].size)}))
        << xa[i].name;
  }
}

TEST(GpuOptimizer, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  BothOptimizers r;
  GpuGradients g = r.opt->model_gradients();
  EXPECT_THROW(r.opt->clip_grad_norm(g, 0.0), InputError);
  EXPECT_THROW(r.opt->clip_grad_norm(g, NAN), InputError);
  EXPECT_THROW(r.opt->step(g, -1e-3, 1e-3), InputError);
  EXPECT_THROW(r.opt->step(g, 1e-3, NAN), InputError);
  GpuGradients short_g = g;
  short_g.dense.pop_back();
  EXPECT_THROW(r.opt->step(short_g, 1e-3, 1e-3), InputError);
  EXPECT_EQ(r.opt->dense_steps(), 0);  // nothing stepped
  GpuGradients wrong_table = g;
  std::swap(wrong_table.sparse[0], wrong_table.sparse[1]);
  EXPECT_THROW(r.opt->clip_grad_norm(wrong_table, 1.0), InputError);
  std::vector<SparseRowAdam*> too_few = r.host->sparse_ptrs();
  too_few.pop_back();
  EXPECT_THROW(r.opt->download_state(*r.host->dense, too_few), InputError);
}

// ---- GpuGradAccumulator -----------------------------------------------------------------------

TEST(GpuGradAccumulator, MeanMatchesTheCpuTrainersSums) {
  SKIP_WITHOUT_GPU();
  ModelPair s;
  GpuGradAccumulator acc(*s.gpu);
  const int64_t B = 2, T = 16, N = B * T, V = s.config.model.vocab_size, micro = 3;
  for (int round = 0; round < 2; ++round) {  // twice: clear() must forget the first round
    SCOPED_TRACE(round);
    acc.clear();
    model::TransformerParams<float> grads;  // the model's gradients, host layout
    nn::SparseRowGrad<float> embed;
    std::vector<nn::SparseRowGrad<float>> tables;
    std::map<std::string, std::vector<float>> dense_sum;
    std::vector<nn::SparseRowGrad<float>> sparse_sum;
    for (int64_t k = 0; k < micro; ++k) {
      std::mt19937_64 rng(static_cast<uint64_t>(100 * round + k));
      std::vector<int64_t> inputs, targets;
      for (int64_t i = 0; i < N; ++i) {
        inputs.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(V)));
        targets.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(V)));
      }
      std::vector<int32_t> hash_ids(s.hasher->num_layers() *
                                    static_cast<size_t>(N * s.hasher->ids_per_token()));
      s.hasher->hash_all_layers(inputs, static_cast<size_t>(B), static_cast<size_t>(T), hash_ids);
      s.gpu->forward(inputs.data(), targets.data(), B, T, hash_ids);
      s.gpu->backward();
      acc.add();
      s.gpu->download_grads(grads, embed, tables);
      for (const auto& g : grads.named()) {
        auto it = dense_sum.try_emplace(g.name, static_cast<size_t>(g.size), 0.0f).first;
        for (int64_t i = 0; i < g.size; ++i) it->second[static_cast<size_t>(i)] += g.data[i];
      }
      sparse_sum.resize(1 + tables.size());
      add_sparse_grad(sparse_sum[0], embed);
      for (size_t t = 0; t < tables.size(); ++t) add_sparse_grad(sparse_sum[t + 1], tables[t]);
    }
    const float scale = 1.0f / static_cast<float>(micro);
    const GpuGradients mean = acc.mean();
    const auto dense = s.gpu->dense_params();
    ASSERT_EQ(mean.dense.size(), dense.size());
    for (size_t i = 0; i < dense.size(); ++i) {
      std::vector<float> want = dense_sum.at(dense[i].name);
      for (float& x : want) x *= scale;
      std::vector<float> got(want.size());
      cuda::copy_to_host(got.data(), mean.dense[i], got.size() * sizeof(float));
      EXPECT_EQ(got, want) << dense[i].name;  // == : equal values (a zero's sign aside)
    }
    ASSERT_EQ(mean.sparse.size(), sparse_sum.size());
    for (size_t t = 0; t < sparse_sum.size(); ++t) {
      const model::GpuSparseGrad& g = mean.sparse[t];
      std::vector<float> want = sparse_sum[t].values;
      for (float& x : want) x *= scale;
      ASSERT_EQ(g.unique, static_cast<int64_t>(sparse_sum[t].rows.size())) << g.name;
      std::vector<int64_t> rows(static_cast<size_t>(g.unique));
      std::vector<float> values(want.size());
      if (g.unique > 0) {
        cuda::copy_to_host(rows.data(), g.rows, rows.size() * sizeof(int64_t));
        cuda::copy_to_host(values.data(), g.values, values.size() * sizeof(float));
      }
      EXPECT_EQ(rows, sparse_sum[t].rows) << g.name;
      EXPECT_EQ(values, want) << g.name;
    }
    // A second mean() hands out the same sums without scaling again.
    const GpuGradients again = acc.mean();
    std::vector<float> first(static_cast<size_t>(dense[0].size)),
        second(static_cast<size_t>(dense[0].size));
    cuda::copy_to_host(first.data(), mean.dense[0], first.size() * sizeof(float));
    cuda::copy_to_host(second.data(), again.dense[0], second.size() * sizeof(float));
    EXPECT_EQ(first, second);
  }
}

}  // namespace
}  // namespace engram::train
