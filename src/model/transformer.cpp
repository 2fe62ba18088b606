#include "engram/model/transformer.h"

#include <algorithm>
#include <random>
#include <string>

#include "engram/nn/embedding.h"
#include "engram/nn/loss.h"
#include "engram/nn/rmsnorm.h"
#include "engram/tensor/gemm.h"
#include "engram/util/error.h"

namespace engram::model {

namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

template <class T>
void fill_normal(std::vector<T>& v, std::mt19937_64& rng, double std) {
  std::normal_distribution<double> dist(0.0, std);
  for (auto& x : v) x = static_cast<T>(dist(rng));
}

nn::EngramLayerConfig engram_layer_config(const ModelConfig& c) {
  nn::EngramLayerConfig e = nn::EngramLayerConfig::from_hash_config(c.engram_hash_config());
  e.bias = c.engram->bias;
  e.short_conv = c.engram->short_conv;
  return e;
}

template <class T>
void add_to(std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
}

}  // namespace

std::vector<std::vector<int64_t>> engram_head_sizes(const hash::NgramHasher& hasher) {
  std::vector<std::vector<int64_t>> out;
  for (size_t l = 0; l < hasher.num_layers(); ++l) {
    std::vector<int64_t> sizes;
    for (const auto& order : hasher.primes(l))
      sizes.insert(sizes.end(), order.begin(), order.end());
    out.push_back(std::move(sizes));
  }
  return out;
}

template <class T>
void TransformerParams<T>::zeros(const ModelConfig& config,
                                 const std::vector<std::vector<int64_t>>& head_sizes,
                                 bool with_tables) {
  const BackboneConfig& m = config.model;
  const int64_t C = m.hidden_size, V = m.vocab_size, n = m.hc_mult;
  const int64_t q = m.num_heads * m.head_dim, kv = m.num_kv_heads * m.head_dim;
  auto z = [](std::vector<T>& v, int64_t size) { v.assign(sz(size), T(0)); };
  z(embed, with_tables ? V * C : 0);
  z(final_norm, C);
  z(head, V * C);
  layers.clear();
  layers.resize(sz(m.num_layers));
  const int64_t K = nn::hc_coefficient_count(n);
  auto hc = [&](HcParams<T>& p, int64_t rows, int64_t alphas) {
    z(p.phi, rows * n * C);
    z(p.b, rows);
    z(p.alpha, alphas);
  };
  if (n > 1) hc(hc_head, n, 1);
  for (int64_t l = 0; l < m.num_layers; ++l) {
    LayerParams<T>& L = layers[sz(l)];
    z(L.attn_norm, C);
    z(L.ffn_norm, C);
    z(L.wq, q * C);
    z(L.wk, kv * C);
    z(L.wv, kv * C);
    z(L.wo, C * q);
    if (config.is_moe_layer(l)) {
      const MoeConfig& e = *config.moe;
      const int64_t E = e.num_experts, H = e.expert_intermediate_size;
      const int64_t S = e.num_shared_experts * H;
      z(L.gate, E * C);
      z(L.ew1, E * H * C);
      z(L.ew3, E * H * C);
      z(L.ew2, E * C * H);
      z(L.sw1, S * C);
      z(L.sw3, S * C);
      z(L.sw2, C * S);
      z(L.moe_bias, E);
    } else {
      const int64_t F = m.dense_intermediate_size;
      z(L.w1, F * C);
      z(L.w3, F * C);
      z(L.w2, C * F);
    }
    if (n > 1) {
      hc(L.hc_attn, K, 3);
      hc(L.hc_ffn, K, 3);
    }
  }
  if (config.engram) {
    const auto& ids = config.engram->hash.layer_ids;
    if (head_sizes.size() != ids.size()) {
      throw ConfigError("transformer: " + std::to_string(head_sizes.size()) +
                        " lists of Engram head sizes given, the config has " +
                        std::to_string(ids.size()) + " Engram layers");
    }
    const nn::EngramLayerConfig ec = engram_layer_config(config);
    for (size_t e = 0; e < ids.size(); ++e) {
      LayerParams<T>& L = layers[sz(ids[e])];
      L.engram.emplace(ec, head_sizes[e]);
      L.engram->params().zeros(ec);
      z(L.engram_table, with_tables ? L.engram->table_rows() * ec.row_width() : 0);
    }
  }
}

template <class T>
void TransformerParams<T>::init(const ModelConfig& config,
                                const std::vector<std::vector<int64_t>>& head_sizes, uint64_t seed,
                                bool with_tables) {
  zeros(config, head_sizes, with_tables);
  const BackboneConfig& m = config.model;
  // zeros() without tables is the gradients' layout, which has no dense embedding either.
  if (!with_tables) embed.assign(sz(m.vocab_size * m.hidden_size), T(0));
  const int64_t n = m.hc_mult, C = m.hidden_size;
  std::mt19937_64 rng(seed);
  const double s = 0.02;
  fill_normal(embed, rng, s);
  std::fill(final_norm.begin(), final_norm.end(), T(1));
  fill_normal(head, rng, s);
  for (int64_t l = 0; l < m.num_layers; ++l) {
    LayerParams<T>& L = layers[sz(l)];
    std::fill(L.attn_norm.begin(), L.attn_norm.end(), T(1));
    std::fill(L.ffn_norm.begin(), L.ffn_norm.end(), T(1));
    for (auto* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w3, &L.w2, &L.gate, &L.ew1, &L.ew3,
                    &L.ew2, &L.sw1, &L.sw3, &L.sw2})
      fill_normal(*v, rng, s);
    const uint64_t layer_seed = seed * 1000003ULL + static_cast<uint64_t>(l) * 7919ULL + 1;
    if (n > 1) {
      nn::hc_init(L.hc_attn.phi.data(), L.hc_attn.b.data(), L.hc_attn.alpha.data(), n, C, l,
                  layer_seed);
      nn::hc_init(L.hc_ffn.phi.data(), L.hc_ffn.b.data(), L.hc_ffn.alpha.data(), n, C, l,
                  layer_seed + 1);
    }
    if (L.engram) {
      L.engram->params().init(L.engram->config(), layer_seed + 2, true);
      fill_normal(L.engram_table, rng, s);
    }
  }
  if (n > 1) {
    nn::hc_head_init(hc_head.phi.data(), hc_head.b.data(), hc_head.alpha.data(), n, C, m.num_layers,
                     seed * 1000003ULL + 12345);
  }
}

template <class T>
std::vector<nn::NamedParam<T>> TransformerParams<T>::named() {
  std::vector<nn::NamedParam<T>> out;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, std::vector<T>& v) {
    if (!v.empty())
      out.push_back({name, std::move(shape), v.data(), static_cast<int64_t>(v.size())});
  };
  const int64_t C = final_norm.empty() ? 0 : static_cast<int64_t>(final_norm.size());
  const int64_t V = C > 0 ? static_cast<int64_t>(head.size()) / C : 0;
  add("embed", {V, C}, embed);
  auto add_hc = [&](const std::string& p, HcParams<T>& h) {
    const int64_t rows = static_cast<int64_t>(h.b.size());
    add(p + ".phi", {rows, rows > 0 ? static_cast<int64_t>(h.phi.size()) / rows : 0}, h.phi);
    add(p + ".b", {rows}, h.b);
    add(p + ".alpha", {static_cast<int64_t>(h.alpha.size())}, h.alpha);
  };
  auto sz64 = [](const std::vector<T>& v) { return static_cast<int64_t>(v.size()); };
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerParams<T>& L = layers[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_norm", {C}, L.attn_norm);
    add(p + "attn.wq", {sz64(L.wq) / C, C}, L.wq);
    add(p + "attn.wk", {sz64(L.wk) / C, C}, L.wk);
    add(p + "attn.wv", {sz64(L.wv) / C, C}, L.wv);
    add(p + "attn.wo", {C, sz64(L.wo) / C}, L.wo);
    add(p + "ffn_norm", {C}, L.ffn_norm);
    add(p + "mlp.w1", {sz64(L.w1) / C, C}, L.w1);
    add(p + "mlp.w3", {sz64(L.w3) / C, C}, L.w3);
    add(p + "mlp.w2", {C, sz64(L.w2) / C}, L.w2);
    const int64_t E = sz64(L.gate) / std::max<int64_t>(C, 1);
    if (E > 0) {
      const int64_t H = sz64(L.ew1) / (E * C);
      add(p + "moe.gate", {E, C}, L.gate);
      add(p + "moe.w1", {E, H, C}, L.ew1);
      add(p + "moe.w3", {E, H, C}, L.ew3);
      add(p + "moe.w2", {E, C, H}, L.ew2);
      add(p + "moe.shared_w1", {sz64(L.sw1) / C, C}, L.sw1);
      add(p + "moe.shared_w3", {sz64(L.sw3) / C, C}, L.sw3);
      add(p + "moe.shared_w2", {C, sz64(L.sw2) / C}, L.sw2);
    }
    add_hc(p + "hc_attn", L.hc_attn);
    add_hc(p + "hc_ffn", L.hc_ffn);
    if (L.engram) {
      for (auto& np : L.engram->params().named(L.engram->config())) {
        np.name = p + "engram." + np.name;
        if (np.size > 0) out.push_back(std::move(np));
      }
      const int64_t w = L.engram->config().row_width();
      add(p + "engram.table", {sz64(L.engram_table) / w, w}, L.engram_table);
    }
  }
  add_hc("hc_head", hc_head);
  add("final_norm", {C}, final_norm);
  add("head", {V, C}, head);
  return out;
}

template <class T>
std::vector<nn::NamedParam<T>> TransformerParams<T>::named_buffers() {
  std::vector<nn::NamedParam<T>> out;
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& b = layers[l].moe_bias;
    if (!b.empty()) {
      out.push_back({"layers." + std::to_string(l) + ".moe.bias",
                     {static_cast<int64_t>(b.size())},
                     b.data(),
                     static_cast<int64_t>(b.size())});
    }
  }
  return out;
}

template <class T>
void Transformer<T>::index_layers() {
  config_.validate("transformer");
  engram_index_.assign(sz(config_.model.num_layers), -1);
  if (config_.engram) {
    const auto& ids = config_.engram->hash.layer_ids;
    for (size_t e = 0; e < ids.size(); ++e) engram_index_[sz(ids[e])] = static_cast<int>(e);
    table_grads_.resize(ids.size());
  }
}

template <class T>
Transformer<T>::Transformer(ModelConfig config, std::vector<std::vector<int64_t>> head_sizes,
                            uint64_t seed, bool with_engram_tables)
    : config_(std::move(config)), head_sizes_(std::move(head_sizes)) {
  index_layers();
  params_.init(config_, head_sizes_, seed, with_engram_tables);
  grads_.zeros(config_, head_sizes_, false);
}

template <class T>
Transformer<T>::Transformer(ModelConfig config, std::vector<std::vector<int64_t>> head_sizes,
                            Uninitialized, bool with_engram_tables)
    : config_(std::move(config)), head_sizes_(std::move(head_sizes)) {
  index_layers();
  params_.zeros(config_, head_sizes_, with_engram_tables);
  // zeros() without tables is the gradients' layout, which has no dense embedding.
  if (!with_engram_tables)
    params_.embed.assign(sz(config_.model.vocab_size * config_.model.hidden_size), T(0));
  inference_only_ = true;
}

template <class T>
nn::AttentionShape Transformer<T>::attn_shape() const {
  const BackboneConfig& m = config_.model;
  nn::AttentionShape s{batch_, seq_, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim};
  s.rope_theta = m.rope_theta;
  return s;
}

template <class T>
nn::MoeShape Transformer<T>::moe_shape() const {
  const MoeConfig& e = *config_.moe;
  nn::MoeShape s{batch_ * seq_, config_.model.hidden_size, e.num_experts, e.top_k,
                 e.expert_intermediate_size};
  s.n_shared = e.num_shared_experts;
  s.route_scale = e.route_scale;
  return s;
}

// x (N, n, C) is replaced by the sublayer's output.
template <class T>
void Transformer<T>::sub_forward(std::vector<T>& x, SubSaved& s, const HcParams<T>& hc,
                                 const T* norm_w, int64_t layer, bool is_attn) {
  const int64_t N = batch_ * seq_, n = config_.model.hc_mult, C = config_.model.hidden_size;
  s.x = x;
  if (n == 1) {
    s.y.clear();
  } else {
    s.pre.assign(sz(N * n), T(0));
    s.post.assign(sz(N * n), T(0));
    s.comb.assign(sz(N * n * n), T(0));
    nn::hc_coefficients_forward(s.pre.data(), s.post.data(), s.comb.data(), s.coeff, x.data(),
                                hc.phi.data(), hc.b.data(), hc.alpha.data(), N, n, C);
    s.y.assign(sz(N * C), T(0));
    nn::hc_readout_forward(s.y.data(), x.data(), s.pre.data(), N, n, C);
  }
  const T* y = n == 1 ? s.x.data() : s.y.data();
  s.rstd.assign(sz(N), T(0));
  s.h.assign(sz(N * C), T(0));
  nn::rmsnorm_forward(s.h.data(), C, s.rstd.data(), y, nn::RowLayout{N, C, C}, norm_w,
                      static_cast<T>(config_.model.norm_eps));
  s.f.assign(sz(N * C), T(0));
  LayerParams<T>& L = params_.layers[sz(layer)];
  LayerSaved& ls = saved_[sz(layer)];
  if (is_attn) {
    const nn::AttentionWeights<T> w{L.wq.data(), L.wk.data(), L.wv.data(), L.wo.data()};
    nn::attention_forward(s.f.data(), ls.att, s.h.data(), w, attn_shape());
  } else if (config_.is_moe_layer(layer)) {
    const nn::MoeWeights<T> w{L.gate.data(), L.ew1.data(), L.ew3.data(), L.ew2.data(),
                              L.sw1.data(),  L.sw3.data(), L.sw2.data()};
    nn::moe_forward(s.f.data(), ls.moe, s.h.data(), L.moe_bias.data(), w, moe_shape());
  } else {
    nn::swiglu_forward(s.f.data(), ls.mlp, s.h.data(), L.w1.data(), L.w3.data(), L.w2.data(), N, C,
                       config_.model.dense_intermediate_size);
  }
  if (n == 1) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += s.f[i];
  } else {
    nn::hc_write_back_forward(x.data(), s.f.data(), s.x.data(), s.post.data(), s.comb.data(), N, n,
                              C);
  }
}

// dx: gradient w.r.t. the sublayer's output on entry, w.r.t. its input on exit.
template <class T>
void Transformer<T>::sub_backward(std::vector<T>& dx, SubSaved& s, const HcParams<T>& hc,
                                  HcParams<T>& dhc, const T* norm_w, T* dnorm_w, int64_t layer,
                                  bool is_attn) {
  const int64_t N = batch_ * seq_, n = config_.model.hc_mult, C = config_.model.hidden_size;
  std::vector<T> df, din;
  std::vector<T> dpost, dcomb;
  if (n == 1) {
    df = dx;
    din = dx;
  } else {
    df.assign(sz(N * C), T(0));
    din.assign(dx.size(), T(0));
    dpost.assign(sz(N * n), T(0));
    dcomb.assign(sz(N * n * n), T(0));
    nn::hc_write_back_backward(df.data(), din.data(), dpost.data(), dcomb.data(), dx.data(),
                               s.f.data(), s.x.data(), s.post.data(), s.comb.data(), N, n, C);
  }
  std::vector<T> dh(sz(N * C), T(0));
  LayerParams<T>& L = params_.layers[sz(layer)];
  LayerParams<T>& G = grads_.layers[sz(layer)];
  LayerSaved& ls = saved_[sz(layer)];
  if (is_attn) {
    const nn::AttentionWeights<T> w{L.wq.data(), L.wk.data(), L.wv.data(), L.wo.data()};
    const nn::AttentionGrads<T> g{G.wq.data(), G.wk.data(), G.wv.data(), G.wo.data()};
    nn::attention_backward(dh.data(), g, df.data(), s.h.data(), ls.att, w, attn_shape());
  } else if (config_.is_moe_layer(layer)) {
    const nn::MoeWeights<T> w{L.gate.data(), L.ew1.data(), L.ew3.data(), L.ew2.data(),
                              L.sw1.data(),  L.sw3.data(), L.sw2.data()};
    const nn::MoeGrads<T> g{G.gate.data(), G.ew1.data(), G.ew3.data(), G.ew2.data(),
                            G.sw1.data(),  G.sw3.data(), G.sw2.data()};
    nn::moe_backward(dh.data(), g, df.data(), s.h.data(), ls.moe, w, moe_shape());
  } else {
    nn::swiglu_backward(dh.data(), G.w1.data(), G.w3.data(), G.w2.data(), df.data(), s.h.data(),
                        ls.mlp, L.w1.data(), L.w3.data(), L.w2.data(), N, C,
                        config_.model.dense_intermediate_size);
  }
  if (n == 1) {
    // dy accumulates straight into din (the residual gradient).
    nn::rmsnorm_backward(din.data(), C, dnorm_w, dh.data(), C, s.x.data(), nn::RowLayout{N, C, C},
                         norm_w, s.rstd.data());
  } else {
    std::vector<T> dy(sz(N * C), T(0)), dpre(sz(N * n), T(0));
    nn::rmsnorm_backward(dy.data(), C, dnorm_w, dh.data(), C, s.y.data(), nn::RowLayout{N, C, C},
                         norm_w, s.rstd.data());
    nn::hc_readout_backward(din.data(), dpre.data(), dy.data(), s.x.data(), s.pre.data(), N, n, C);
    nn::hc_coefficients_backward(din.data(), dhc.phi.data(), dhc.b.data(), dhc.alpha.data(),
                                 dpre.data(), dpost.data(), dcomb.data(), s.x.data(), s.coeff,
                                 hc.phi.data(), hc.b.data(), hc.alpha.data(), N, n, C);
  }
  dx.swap(din);
}

template <class T>
double Transformer<T>::forward(const int64_t* inputs, const int64_t* targets, int64_t batch,
                               int64_t seq, std::span<const int32_t> hash_ids) {
  const BackboneConfig& m = config_.model;
  if (batch < 1 || seq < 1 || seq > m.max_seq_len) {
    throw InputError("transformer forward: batch " + std::to_string(batch) + ", seq " +
                     std::to_string(seq) + " (max_seq_len " + std::to_string(m.max_seq_len) + ")");
  }
  batch_ = batch;
  seq_ = seq;
  const int64_t N = batch * seq, n = m.hc_mult, C = m.hidden_size, V = m.vocab_size;
  inputs_.assign(inputs, inputs + N);
  targets_.assign(targets, targets + N);
  const size_t n_engram = config_.engram ? config_.engram->hash.layer_ids.size() : 0;
  int64_t H = 0;
  if (n_engram > 0) {
    H = config_.engram->hash.ids_per_token();
    if (hash_ids.size() != n_engram * sz(N * H)) {
      throw InputError("transformer forward: " + std::to_string(hash_ids.size()) +
                       " hash ids given, expected " + std::to_string(n_engram * sz(N * H)) +
                       " (L_engram, B, T, H)");
    }
    hash_ids_.assign(hash_ids.begin(), hash_ids.end());
  } else if (!hash_ids.empty()) {
    throw InputError("transformer forward: hash ids given to a model without Engram");
  }
  have_forward_ = false;

  std::vector<T> e(sz(N * C));
  nn::embedding_forward(e.data(), inputs, params_.embed.data(), N, C, V);
  std::vector<T> x;
  if (n == 1) {
    x = std::move(e);
  } else {
    x.assign(sz(N * n * C), T(0));
    nn::broadcast_streams_forward(x.data(), e.data(), N, n, C);
  }
  saved_.resize(sz(m.num_layers));
  for (int64_t l = 0; l < m.num_layers; ++l) {
    LayerParams<T>& L = params_.layers[sz(l)];
    LayerSaved& ls = saved_[sz(l)];
    const int ei = engram_index_[sz(l)];
    if (ei >= 0) {
      ls.x_engram = x;
      std::vector<T> out(x.size(), T(0));
      const memory::VectorRowStore<T> store(&L.engram_table, L.engram->config().row_width());
      L.engram->forward(x.data(), hash_ids_.data() + sz(ei) * sz(N * H), batch, seq, store,
                        out.data(), ls.engram);
      add_to(x, out);
    }
    sub_forward(x, ls.attn, L.hc_attn, L.attn_norm.data(), l, true);
    sub_forward(x, ls.ffn, L.hc_ffn, L.ffn_norm.data(), l, false);
  }
  x_final_ = std::move(x);
  if (n == 1) {
    z_ = x_final_;
  } else {
    z_.assign(sz(N * C), T(0));
    head_pre_.assign(sz(N * n), T(0));
    nn::hc_head_readout_forward(z_.data(), head_pre_.data(), head_coeff_, x_final_.data(),
                                params_.hc_head.phi.data(), params_.hc_head.b.data(),
                                params_.hc_head.alpha.data(), N, n, C);
  }
  final_rstd_.assign(sz(N), T(0));
  hn_.assign(sz(N * C), T(0));
  nn::rmsnorm_forward(hn_.data(), C, final_rstd_.data(), z_.data(), nn::RowLayout{N, C, C},
                      params_.final_norm.data(), static_cast<T>(m.norm_eps));
  logits_.resize(sz(N * V));  // written by the product (beta = 0), not cleared first
  gemm<T>(Trans::kNo, Trans::kYes, N, V, C, T(1), hn_.data(), C, params_.head.data(), C, T(0),
          logits_.data(), V);
  const double loss = nn::cross_entropy_forward(logits_.data(), targets_.data(), N, V);
  have_forward_ = true;
  return loss;
}

template <class T>
void Transformer<T>::backward() {
  if (inference_only_) throw Error("transformer backward: the model has no gradient buffers");
  if (!have_forward_) throw Error("transformer backward: no forward to differentiate");
  const BackboneConfig& m = config_.model;
  const int64_t N = batch_ * seq_, n = m.hc_mult, C = m.hidden_size, V = m.vocab_size;
  // Zeroed in place: the buffers keep their addresses (an optimizer holds pointers to them).
  // The head's gradient is written whole by its product below (beta = 0).
  for (auto& g : grads_.named()) {
    if (g.data != grads_.head.data()) std::fill(g.data, g.data + g.size, T(0));
  }
  for (auto& g : grads_.named_buffers()) std::fill(g.data, g.data + g.size, T(0));

  dlogits_.resize(sz(N * V));  // kept between steps: (N, V) is the largest activation
  nn::cross_entropy_backward(dlogits_.data(), logits_.data(), targets_.data(), N, V);
  std::vector<T> dhn(sz(N * C), T(0));
  gemm<T>(Trans::kNo, Trans::kNo, N, C, V, T(1), dlogits_.data(), V, params_.head.data(), C, T(0),
          dhn.data(), C);
  gemm<T>(Trans::kYes, Trans::kNo, V, C, N, T(1), dlogits_.data(), V, hn_.data(), C, T(0),
          grads_.head.data(), C);
  std::vector<T> dz(sz(N * C), T(0));
  nn::rmsnorm_backward(dz.data(), C, grads_.final_norm.data(), dhn.data(), C, z_.data(),
                       nn::RowLayout{N, C, C}, params_.final_norm.data(), final_rstd_.data());
  std::vector<T> dx;
  if (n == 1) {
    dx = std::move(dz);
  } else {
    dx.assign(sz(N * n * C), T(0));
    nn::hc_head_readout_backward(dx.data(), grads_.hc_head.phi.data(), grads_.hc_head.b.data(),
                                 grads_.hc_head.alpha.data(), dz.data(), x_final_.data(),
                                 head_pre_.data(), head_coeff_, params_.hc_head.phi.data(),
                                 params_.hc_head.b.data(), params_.hc_head.alpha.data(), N, n, C);
  }
  for (int64_t l = m.num_layers - 1; l >= 0; --l) {
    LayerParams<T>& L = params_.layers[sz(l)];
    LayerParams<T>& G = grads_.layers[sz(l)];
    LayerSaved& ls = saved_[sz(l)];
    sub_backward(dx, ls.ffn, L.hc_ffn, G.hc_ffn, L.ffn_norm.data(), G.ffn_norm.data(), l, false);
    sub_backward(dx, ls.attn, L.hc_attn, G.hc_attn, L.attn_norm.data(), G.attn_norm.data(), l,
                 true);
    const int ei = engram_index_[sz(l)];
    if (ei >= 0) {
      // X_out = X_in + Engram(X_in): d_hidden accumulates onto the residual gradient.
      const std::vector<T> dout = dx;
      L.engram->backward(dout.data(), ls.x_engram.data(), ls.engram, dx.data(), G.engram->params(),
                         table_grads_[sz(ei)]);
    }
  }
  if (n == 1) {
    nn::embedding_backward(embed_grad_, dx.data(), inputs_.data(), N, C);
  } else {
    std::vector<T> de(sz(N * C), T(0));
    nn::broadcast_streams_backward(de.data(), dx.data(), N, n, C);
    nn::embedding_backward(embed_grad_, de.data(), inputs_.data(), N, C);
  }
}

template <class T>
std::vector<std::vector<int64_t>> Transformer<T>::moe_expert_counts() const {
  std::vector<std::vector<int64_t>> out(sz(config_.model.num_layers));
  for (int64_t l = 0; l < config_.model.num_layers; ++l) {
    if (config_.is_moe_layer(l) && sz(l) < saved_.size()) out[sz(l)] = saved_[sz(l)].moe.counts;
  }
  return out;
}

template <class T>
void Transformer<T>::update_moe_bias() {
  if (!config_.moe) return;
  for (int64_t l = 0; l < config_.model.num_layers; ++l) {
    if (!config_.is_moe_layer(l) || sz(l) >= saved_.size()) continue;
    const auto& counts = saved_[sz(l)].moe.counts;
    if (counts.empty()) continue;
    nn::aux_free_bias_update(params_.layers[sz(l)].moe_bias.data(), counts.data(),
                             config_.moe->num_experts, config_.moe->bias_update_gamma);
  }
}

template struct TransformerParams<float>;
template struct TransformerParams<double>;
template class Transformer<float>;
template class Transformer<double>;

}  // namespace engram::model
