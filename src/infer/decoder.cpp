#include "engram/infer/decoder.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "engram/memory/fetch_plan.h"
#include "engram/memory/row_store.h"
#include "engram/nn/embedding.h"
#include "engram/nn/rmsnorm.h"
#include "engram/nn/short_conv.h"
#include "engram/tensor/gemm.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::infer {
namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

ConfigError hasher_error(const std::string& what) {
  return ConfigError(error_message("decoder: hasher", what));
}

// Engram layer `layer`'s rows of the current push, read from the prefetcher's staging (the layer
// has waited for them). Gathers come from the layer's worker threads at once.
class PrefetchedRows final : public memory::RowStore {
 public:
  PrefetchedRows(memory::Prefetcher& prefetcher, size_t layer, const memory::RowStore& store)
      : prefetcher_(&prefetcher), layer_(layer), rows_(store.num_rows()), width_(store.width()) {}
  int64_t num_rows() const override { return rows_; }
  int64_t width() const override { return width_; }
  void gather(std::span<const int64_t> rows, float* out, int64_t stride) const override {
    prefetcher_->gather(layer_, rows, out, stride);
  }
  void gather(std::span<const int64_t> rows, double* out, int64_t stride) const override {
    prefetcher_->gather(layer_, rows, out, stride);
  }

 private:
  memory::Prefetcher* prefetcher_;
  size_t layer_;
  int64_t rows_, width_;
};

}  // namespace

Decoder::Decoder(const model::Transformer<float>& model, const hash::NgramHasher* hasher)
    : model_(&model), config_(&model.config()), hasher_(hasher) {
  const model::ModelConfig& c = *config_;
  const model::BackboneConfig& m = c.model;
  engram_index_.assign(sz(m.num_layers), -1);
  token_limit_ = m.vocab_size;
  if (c.engram) {
    if (hasher == nullptr) throw hasher_error("none given, but the model has [engram] layers");
    const auto& ids = c.engram->hash.layer_ids;
    if (hasher->num_layers() != ids.size() ||
        hasher->ids_per_token() != c.engram->hash.ids_per_token()) {
      throw hasher_error("has " + std::to_string(hasher->num_layers()) + " layers of " +
                         std::to_string(hasher->ids_per_token()) + " ids per token, the model " +
                         std::to_string(ids.size()) + " of " +
                         std::to_string(c.engram->hash.ids_per_token()));
    }
    for (size_t e = 0; e < ids.size(); ++e) {
      const auto& layer = model.params().layers[sz(ids[e])].engram;
      if (hasher->layer_id(e) != ids[e] || hasher->table_rows(e) != layer->table_rows()) {
        throw hasher_error("Engram layer " + std::to_string(ids[e]) + ": the hasher's table has " +
                           std::to_string(hasher->table_rows(e)) + " rows, the model's " +
                           std::to_string(layer->table_rows()));
      }
      engram_index_[sz(ids[e])] = static_cast<int>(e);
    }
    token_limit_ = std::min(token_limit_, hasher->tokenizer_vocab());
    stream_.emplace(*hasher);
    if (c.engram->short_conv) {
      conv_lookback_ = static_cast<int64_t>(c.engram->hash.max_ngram_size) *
                       (static_cast<int64_t>(c.engram->hash.kernel_size) - 1);
    }
  } else if (hasher != nullptr) {
    throw hasher_error("given, but the model has no [engram] layers");
  }
  // cos/sin of every position, as nn::rope_forward computes them (in double, then rounded).
  const int64_t half = m.head_dim / 2;
  rope_cos_.resize(sz(m.max_seq_len * half));
  rope_sin_.resize(sz(m.max_seq_len * half));
  for (int64_t t = 0; t < m.max_seq_len; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq =
          std::pow(m.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(m.head_dim));
      const double angle = static_cast<double>(t) * inv_freq;
      rope_cos_[sz(t * half + i)] = static_cast<float>(std::cos(angle));
      rope_sin_[sz(t * half + i)] = static_cast<float>(std::sin(angle));
    }
  }
  cache_.resize(sz(m.num_layers));
}

void Decoder::reset() {
  position_ = 0;
  for (LayerCache& lc : cache_) {
    lc.k.clear();
    lc.v.clear();
    lc.conv_hist.clear();
  }
  if (stream_) stream_->reset();
}

std::span<const float> Decoder::push(std::span<const int64_t> tokens) {
  const model::BackboneConfig& m = config_->model;
  const model::TransformerParams<float>& P = model_->params();
  const int64_t N = static_cast<int64_t>(tokens.size()), n = m.hc_mult, C = m.hidden_size;
  const int64_t V = m.vocab_size;
  if (N == 0) throw InputError("decoder push: no tokens given");
  if (position_ + N > m.max_seq_len) {
    throw InputError(error_message(
        "decoder push", std::to_string(N) + " token(s) after " + std::to_string(position_) +
                            " would exceed model.max_seq_len = " + std::to_string(m.max_seq_len)));
  }
  for (int64_t i = 0; i < N; ++i) {
    const int64_t id = tokens[sz(i)];
    if (id < 0 || id >= token_limit_) {
      throw InputError(error_message(
          "decoder push", "tokens[" + std::to_string(i) + "] = " + std::to_string(id) +
                              " is outside [0, " + std::to_string(token_limit_) + ")" +
                              (token_limit_ < V ? " (the hasher's tokenizer vocabulary)" : "")));
    }
  }

  for (size_t e = 0; e < hash_layers(); ++e)
    check_table(e, table_stores_.empty() ? nullptr : table_stores_[e]);

  if (stream_) {
    hash_ids_.resize(hasher_->num_layers() * sz(N) * static_cast<size_t>(hasher_->ids_per_token()));
    stream_->push(tokens, hash_ids_);
  }
  // Every Engram layer's rows are known now: fetching starts before the first block.
  if (prefetcher_) {
    prefetcher_->begin_step(
        memory::FetchPlan::build(hash_ids_, sz(N), config_->engram->hash.layer_ids, head_offsets_));
  }
  e_.resize(sz(N * C));
  nn::embedding_forward(e_.data(), tokens.data(), P.embed.data(), N, C, V);
  if (n == 1) {
    x_.swap(e_);
  } else {
    x_.resize(sz(N * n * C));
    nn::broadcast_streams_forward(x_.data(), e_.data(), N, n, C);
  }
  for (int64_t l = 0; l < m.num_layers; ++l) {
    const int ei = engram_index_[sz(l)];
    if (ei >= 0) {
      const size_t per_layer = sz(N) * static_cast<size_t>(hasher_->ids_per_token());
      engram(l, hash_ids_.data() + sz(ei) * per_layer, N);
    }
    sublayer(l, true, N);
    sublayer(l, false, N);
  }
  position_ += N;

  // Head, on the last position only.
  const float* last = x_.data() + (N - 1) * n * C;
  z_.resize(sz(C));
  if (n == 1) {
    std::copy(last, last + C, z_.begin());
  } else {
    pre_.resize(sz(n));
    nn::hc_head_readout_forward(z_.data(), pre_.data(), coeff_, last, P.hc_head.phi.data(),
                                P.hc_head.b.data(), P.hc_head.alpha.data(), 1, n, C);
  }
  hn_.resize(sz(C));
  float rstd = 0;
  nn::rmsnorm_forward(hn_.data(), C, &rstd, z_.data(), nn::RowLayout{1, C, C}, P.final_norm.data(),
                      static_cast<float>(m.norm_eps));
  logits_.resize(sz(V));
  gemm<float>(Trans::kNo, Trans::kYes, 1, V, C, 1.0f, hn_.data(), C, P.head.data(), C, 0.0f,
              logits_.data(), V);
  return logits_;
}

void Decoder::sublayer(int64_t layer, bool is_attn, int64_t count) {
  const model::BackboneConfig& m = config_->model;
  const int64_t N = count, n = m.hc_mult, C = m.hidden_size;
  const model::LayerParams<float>& L = model_->params().layers[sz(layer)];
  const model::HcParams<float>& hc = is_attn ? L.hc_attn : L.hc_ffn;
  const float* y = x_.data();
  if (n > 1) {
    pre_.resize(sz(N * n));
    post_.resize(sz(N * n));
    comb_.resize(sz(N * n * n));
    nn::hc_coefficients_forward(pre_.data(), post_.data(), comb_.data(), coeff_, x_.data(),
                                hc.phi.data(), hc.b.data(), hc.alpha.data(), N, n, C);
    y_.resize(sz(N * C));
    nn::hc_readout_forward(y_.data(), x_.data(), pre_.data(), N, n, C);
    y = y_.data();
  }
  rstd_.resize(sz(N));
  h_.resize(sz(N * C));
  nn::rmsnorm_forward(h_.data(), C, rstd_.data(), y, nn::RowLayout{N, C, C},
                      is_attn ? L.attn_norm.data() : L.ffn_norm.data(),
                      static_cast<float>(m.norm_eps));
  f_.resize(sz(N * C));
  if (is_attn) {
    attention(layer, h_.data(), f_.data(), N);
  } else if (config_->is_moe_layer(layer)) {
    const model::MoeConfig& e = *config_->moe;
    nn::MoeShape s{N, C, e.num_experts, e.top_k, e.expert_intermediate_size};
    s.n_shared = e.num_shared_experts;
    s.route_scale = e.route_scale;
    const nn::MoeWeights<float> w{L.gate.data(), L.ew1.data(), L.ew3.data(), L.ew2.data(),
                                  L.sw1.data(),  L.sw3.data(), L.sw2.data()};
    nn::moe_forward(f_.data(), moe_, h_.data(), L.moe_bias.data(), w, s);
  } else {
    nn::swiglu_forward(f_.data(), mlp_, h_.data(), L.w1.data(), L.w3.data(), L.w2.data(), N, C,
                       m.dense_intermediate_size);
  }
  if (n == 1) {
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += f_[i];
  } else {
    x_next_.resize(x_.size());
    nn::hc_write_back_forward(x_next_.data(), f_.data(), x_.data(), post_.data(), comb_.data(), N,
                              n, C);
    x_.swap(x_next_);
  }
}

void Decoder::attention(int64_t layer, const float* h, float* out, int64_t count) {
  const model::BackboneConfig& m = config_->model;
  const int64_t N = count, C = m.hidden_size, hd = m.head_dim, Hq = m.num_heads;
  const int64_t Hkv = m.num_kv_heads, QD = Hq * hd, KD = Hkv * hd, group = Hq / Hkv;
  const int64_t total = position_ + N;
  const model::LayerParams<float>& L = model_->params().layers[sz(layer)];
  LayerCache& lc = cache_[sz(layer)];
  lc.k.resize(sz(total * KD));
  lc.v.resize(sz(total * KD));
  float* k_new = lc.k.data() + position_ * KD;
  float* v_new = lc.v.data() + position_ * KD;
  q_.resize(sz(N * QD));
  gemm<float>(Trans::kNo, Trans::kYes, N, QD, C, 1.0f, h, C, L.wq.data(), C, 0.0f, q_.data(), QD);
  gemm<float>(Trans::kNo, Trans::kYes, N, KD, C, 1.0f, h, C, L.wk.data(), C, 0.0f, k_new, KD);
  gemm<float>(Trans::kNo, Trans::kYes, N, KD, C, 1.0f, h, C, L.wv.data(), C, 0.0f, v_new, KD);
  rope(q_.data(), N, Hq);
  rope(k_new, N, Hkv);

  // Per query head, causal over the cache and the new positions (the order of
  // nn::attention_forward's sums).
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  ctx_.resize(sz(N * QD));
  scores_.resize(sz(Hq * total));
  const float* K = lc.k.data();
  const float* Vc = lc.v.data();
  parallel_for(sz(Hq), 0, 1, [&](size_t hb, size_t he) {
    for (size_t head = hb; head < he; ++head) {
      const int64_t hh = static_cast<int64_t>(head), g = hh / group;
      float* p = scores_.data() + hh * total;
      for (int64_t t = 0; t < N; ++t) {
        nn::attention_row(ctx_.data() + t * QD + hh * hd, p, q_.data() + t * QD + hh * hd,
                          K + g * hd, Vc + g * hd, position_ + t + 1, KD, hd, scale);
      }
    }
  });
  gemm<float>(Trans::kNo, Trans::kYes, N, C, QD, 1.0f, ctx_.data(), QD, L.wo.data(), QD, 0.0f, out,
              C);
}

void Decoder::rope(float* x, int64_t count, int64_t heads) const {
  const int64_t hd = config_->model.head_dim, half = hd / 2;
  for (int64_t t = 0; t < count; ++t) {
    const float* c = rope_cos_.data() + (position_ + t) * half;
    const float* s = rope_sin_.data() + (position_ + t) * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* row = x + (t * heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = row[i], x2 = row[i + half];
        row[i] = x1 * c[i] - x2 * s[i];
        row[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

size_t Decoder::hash_layers() const {
  return config_->engram ? config_->engram->hash.layer_ids.size() : 0;
}

void Decoder::check_table(size_t e, const memory::RowStore* store) const {
  const int64_t layer = config_->engram->hash.layer_ids[e];
  if (store == nullptr && model_->params().layers[sz(layer)].engram_table.empty()) {
    throw ConfigError(
        error_message("decoder: Engram layer " + std::to_string(layer),
                      "no table store given, and the model was loaded without its Engram tables"));
  }
}

void Decoder::set_table_stores(std::vector<const memory::RowStore*> stores) {
  prefetcher_.reset();
  head_offsets_.clear();
  if (stores.empty()) {
    table_stores_.clear();
    return;
  }
  const size_t n = config_->engram ? config_->engram->hash.layer_ids.size() : 0;
  if (stores.size() != n) {
    throw ConfigError(error_message("decoder: table stores",
                                    std::to_string(stores.size()) + " given, the model has " +
                                        std::to_string(n) + " Engram layers"));
  }
  for (size_t e = 0; e < n; ++e) {
    check_table(e, stores[e]);
    if (stores[e] == nullptr) continue;
    const int64_t layer = config_->engram->hash.layer_ids[e];
    const nn::EngramLayer<float>& el = *model_->params().layers[sz(layer)].engram;
    if (stores[e]->num_rows() != el.table_rows() || stores[e]->width() != el.config().row_width()) {
      throw ConfigError(error_message(
          "decoder: table store of Engram layer " + std::to_string(layer),
          std::to_string(stores[e]->num_rows()) + " rows of " + std::to_string(stores[e]->width()) +
              ", the model's table " + std::to_string(el.table_rows()) + " rows of " +
              std::to_string(el.config().row_width())));
    }
  }
  table_stores_ = std::move(stores);
}

void Decoder::set_prefetched_table_stores(std::vector<const memory::TieredRowStore*> stores,
                                          memory::PrefetcherOptions options) {
  std::vector<const memory::RowStore*> plain;
  for (size_t e = 0; e < stores.size(); ++e) {
    if (stores[e] == nullptr) {
      throw ConfigError(error_message("decoder: prefetched table stores",
                                      "store " + std::to_string(e) + " is null"));
    }
    plain.push_back(stores[e]);
  }
  if (plain.empty()) {
    throw ConfigError(error_message("decoder: prefetched table stores", "none given"));
  }
  set_table_stores(std::move(plain));
  auto prefetcher = std::make_unique<memory::Prefetcher>(std::move(stores), std::move(options));
  for (const int layer : config_->engram->hash.layer_ids)
    head_offsets_.push_back(model_->params().layers[sz(layer)].engram->head_offsets());
  prefetcher_ = std::move(prefetcher);
}

void Decoder::engram(int64_t layer, const int32_t* hash_ids, int64_t count) {
  const model::LayerParams<float>& L = model_->params().layers[sz(layer)];
  const nn::EngramLayer<float>& el = *L.engram;
  const nn::EngramLayerConfig& ec = el.config();
  const int64_t N = count, width = ec.hc_mult * ec.hidden_size;  // M*d per token
  const memory::VectorRowStore<float> own(&L.engram_table, ec.row_width());
  const auto e = sz(engram_index_[sz(layer)]);
  const memory::RowStore* external = table_stores_.empty() ? nullptr : table_stores_[e];
  std::optional<PrefetchedRows> prefetched;
  if (prefetcher_) {
    prefetcher_->wait_layer(e);  // this layer's rows only; later layers may still be fetching
    prefetched.emplace(*prefetcher_, e, *external);
    external = &*prefetched;
  }
  const memory::RowStore& store = external != nullptr ? *external : own;
  engram_out_.resize(sz(N * width));
  el.forward(x_.data(), hash_ids, 1, N, store, engram_out_.data(), engram_saved_);
  if (ec.short_conv) {
    // The layer's conv saw only the new positions; out = Vt + ShortConv(Vt) is redone over the
    // window (the look-back history, the new Vt), whose first row is the sequence's start or
    // at least R rows back, as far as the conv reaches.
    LayerCache& lc = cache_[sz(layer)];
    const int64_t hist = static_cast<int64_t>(lc.conv_hist.size()) / width;
    const int64_t rows = hist + N;
    conv_in_.assign(lc.conv_hist.begin(), lc.conv_hist.end());
    conv_in_.insert(conv_in_.end(), engram_saved_.vt.begin(), engram_saved_.vt.end());
    conv_out_.resize(sz(rows * width));
    nn::ShortConvShape s{1, rows, ec.hc_mult, ec.hidden_size};
    s.kernel = ec.kernel_size;
    s.dilation = ec.max_ngram_size;
    const nn::EngramParams<float>& ep = el.params();
    nn::short_conv_forward(conv_out_.data(), conv_saved_, conv_in_.data(), ep.conv_weight.data(),
                           ep.conv_norm.data(), s, static_cast<float>(ec.conv_norm_eps));
    const float* conv_new = conv_out_.data() + hist * width;
    for (size_t i = 0; i < engram_out_.size(); ++i)
      engram_out_[i] = conv_new[i] + engram_saved_.vt[i];
    const int64_t keep = std::min(rows, conv_lookback_);
    lc.conv_hist.assign(conv_in_.end() - keep * width, conv_in_.end());
  }
  for (size_t i = 0; i < x_.size(); ++i) x_[i] += engram_out_[i];
}

}  // namespace engram::infer
