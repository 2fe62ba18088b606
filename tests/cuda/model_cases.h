// The whole-model cases of the GPU tests (model::GpuTransformer, infer::GpuDecoder): the kinds
// of tools/torch_ref/configs/*.toml with head_dim 64, their n-gram hashers over a synthetic
// compression, and a perturbation that moves every parameter off its init.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engram/hash/ngram_hasher.h"
#include "engram/model/config.h"
#include "engram/model/transformer.h"

namespace engram::model::test_cases {

inline ModelConfig base_config(int64_t vocab, int64_t hidden, int64_t layers, int64_t heads,
                        int64_t kv_heads, int64_t hc_mult, int64_t ffn) {
  ModelConfig c;
  c.model.vocab_size = vocab;
  c.model.hidden_size = hidden;
  c.model.num_layers = layers;
  c.model.num_heads = heads;
  c.model.num_kv_heads = kv_heads;
  c.model.head_dim = 64;
  c.model.hc_mult = hc_mult;
  c.model.max_seq_len = 128;
  c.model.dense_intermediate_size = ffn;
  c.train.batch_size = 2;
  c.train.seq_len = 16;
  return c;
}

inline MoeConfig moe(int64_t experts, int64_t shared, int64_t top_k, int64_t hidden, double scale) {
  MoeConfig m;
  m.num_experts = experts;
  m.num_shared_experts = shared;
  m.top_k = top_k;
  m.expert_intermediate_size = hidden;
  m.route_scale = scale;
  m.bias_update_gamma = 0.01;
  return m;
}

inline EngramConfig engram(std::vector<int64_t> vocab, int max_ngram, int n_embed, int heads,
                    std::vector<int> layer_ids, int kernel, bool conv, bool bias,
                    uint64_t seed = 0) {
  EngramConfig e;
  e.hash.engram_vocab_size = std::move(vocab);
  e.hash.max_ngram_size = max_ngram;
  e.hash.n_embed_per_ngram = n_embed;
  e.hash.n_head_per_ngram = heads;
  e.hash.layer_ids = std::move(layer_ids);
  e.hash.pad_id = 2;
  e.hash.seed = seed;
  e.hash.kernel_size = kernel;
  e.short_conv = conv;
  e.bias = bias;
  return e;
}

struct Case {
  std::string name;
  ModelConfig config;
  int64_t batch, seq;
};

// The kinds of tools/torch_ref/configs/*.toml, with head_dim 64.
inline std::vector<Case> cases() {
  std::vector<Case> out;
  {  // (a) dense, one stream; T = 70 crosses the attention's 64-row tiles
    ModelConfig c = base_config(96, 32, 2, 2, 2, 1, 48);
    out.push_back({"DenseHc1", c, 2, 70});
  }
  {  // (b) dense, 2 streams, grouped-query attention (4 query heads, 2 kv heads)
    ModelConfig c = base_config(128, 48, 3, 4, 2, 2, 96);
    c.model.rope_theta = 500.0;
    out.push_back({"DenseHc2Gqa", c, 2, 24});
  }
  {  // (c) MoE after one dense layer, Engram at layer 1 (conv and biases on), 2 streams
    ModelConfig c = base_config(160, 32, 3, 2, 1, 2, 64);
    c.model.first_dense_layers = 1;
    c.moe = moe(4, 1, 2, 24, 2.5);
    c.engram = engram({61, 67}, 3, 16, 2, {1}, 4, true, true);
    out.push_back({"MoeEngramHc2", c, 2, 24});
  }
  {  // (d) as (c) without the short conv and biases, one stream
    ModelConfig c = base_config(160, 32, 3, 2, 2, 1, 64);
    c.model.first_dense_layers = 1;
    c.moe = moe(4, 1, 2, 24, 2.5);
    c.engram = engram({61, 67}, 3, 16, 2, {1}, 4, false, false);
    out.push_back({"MoeEngramNoConvNoBiasHc1", c, 3, 17});
  }
  {  // (e) 4 streams, 8 experts top-3 with 2 shared, Engram at layers 0 and 2, orders 2-4
    ModelConfig c = base_config(128, 32, 4, 2, 2, 4, 64);
    c.model.first_dense_layers = 2;
    c.moe = moe(8, 2, 3, 16, 1.0);
    c.engram = engram({37, 41, 43}, 4, 12, 3, {0, 2}, 3, true, true, 5);
    out.push_back({"MoeEngram2Hc4", c, 2, 20});
  }
  return out;
}

// Hash ids from an NgramHasher over the synthetic compression lut[id] = id % (3/4 V), as
// tools/torch_ref/dump_model.cpp does.
struct Hashing {
  std::vector<std::vector<int64_t>> head_sizes;
  std::unique_ptr<hash::NgramHasher> hasher;
};

inline Hashing make_hashing(const ModelConfig& c) {
  Hashing s;
  if (!c.engram) return s;
  s.hasher = std::make_unique<hash::NgramHasher>(
      hash::NgramHasher::synthetic(c.engram_hash_config(), c.model.vocab_size));
  s.head_sizes = engram_head_sizes(*s.hasher);
  return s;
}

// Moves every parameter off its init (norms off 1, conv weights off 0) and gives the MoE
// selection biases values, so that every path carries signal.
inline void perturb(Transformer<float>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  for (auto& p : model.params().named()) {
    for (int64_t i = 0; i < p.size; ++i) p.data[i] += d(rng);
  }
  std::normal_distribution<float> db(0.0f, 0.01f);
  for (auto& p : model.params().named_buffers()) {
    for (int64_t i = 0; i < p.size; ++i) p.data[i] = db(rng);
  }
}

}  // namespace engram::model::test_cases
