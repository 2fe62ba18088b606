// model::GpuTransformer (include/engram/model/gpu_transformer.h): the CPU model's forward and
// backward (src/model/transformer.cpp) step for step, with device buffers and the cuda:: pieces.
// Only public engram::cuda headers are used, so this file compiles without CUDA (the cuda::
// functions are then stubs that throw).
#include "engram/model/gpu_transformer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "engram/cuda/attention.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/engram_layer.h"
#include "engram/cuda/gather.h"
#include "engram/cuda/hyper_connection.h"
#include "engram/cuda/model_ops.h"
#include "engram/cuda/moe.h"
#include "engram/cuda/ops.h"
#include "engram/nn/hyper_connection.h"
#include "engram/util/error.h"

namespace engram::model {

namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

// Grows b to at least n elements (contents are not kept).
template <class T>
void ensure(cuda::DeviceBuffer<T>& b, int64_t n) {
  if (b.size() < sz(n)) b = cuda::DeviceBuffer<T>(sz(n));
}

cuda::Matrix mat(const float* p, int64_t ld) {
  return {p, DType::kF32, ld};
}
cuda::MutMatrix mut(float* p, int64_t ld) {
  return {p, DType::kF32, ld};
}

// Every tensor of a TransformerParams, one slot each, in a fixed order; Field names it.
enum Field : int {
  kEmbed,
  kAttnNorm,
  kWq,
  kWk,
  kWv,
  kWo,
  kFfnNorm,
  kW1,
  kW3,
  kW2,
  kGate,
  kEw1,
  kEw3,
  kEw2,
  kSw1,
  kSw3,
  kSw2,
  kHcAttnPhi,
  kHcAttnB,
  kHcAttnAlpha,
  kHcFfnPhi,
  kHcFfnB,
  kHcFfnAlpha,
  kEgKv,
  kEgKvBias,
  kEgKeyNorm,
  kEgQueryNorm,
  kEgConvWeight,
  kEgConvNorm,
  kEgTable,
  kHcHeadPhi,
  kHcHeadB,
  kHcHeadAlpha,
  kFinalNorm,
  kHead,
  kFieldCount
};

// Calls fn(layer, field, vector) for every tensor of p (layer -1 for the model-wide ones), the
// Engram layer's dense parameters included (when p has the Engram layer object).
template <class P, class Fn>
void visit(P& p, Fn&& fn) {
  fn(int64_t{-1}, kEmbed, p.embed);
  for (size_t l = 0; l < p.layers.size(); ++l) {
    auto& L = p.layers[l];
    const auto li = static_cast<int64_t>(l);
    fn(li, kAttnNorm, L.attn_norm);
    fn(li, kWq, L.wq);
    fn(li, kWk, L.wk);
    fn(li, kWv, L.wv);
    fn(li, kWo, L.wo);
    fn(li, kFfnNorm, L.ffn_norm);
    fn(li, kW1, L.w1);
    fn(li, kW3, L.w3);
    fn(li, kW2, L.w2);
    fn(li, kGate, L.gate);
    fn(li, kEw1, L.ew1);
    fn(li, kEw3, L.ew3);
    fn(li, kEw2, L.ew2);
    fn(li, kSw1, L.sw1);
    fn(li, kSw3, L.sw3);
    fn(li, kSw2, L.sw2);
    fn(li, kHcAttnPhi, L.hc_attn.phi);
    fn(li, kHcAttnB, L.hc_attn.b);
    fn(li, kHcAttnAlpha, L.hc_attn.alpha);
    fn(li, kHcFfnPhi, L.hc_ffn.phi);
    fn(li, kHcFfnB, L.hc_ffn.b);
    fn(li, kHcFfnAlpha, L.hc_ffn.alpha);
    if (L.engram) {
      auto& e = L.engram->params();
      fn(li, kEgKv, e.kv_weight);
      fn(li, kEgKvBias, e.kv_bias);
      fn(li, kEgKeyNorm, e.key_norm);
      fn(li, kEgQueryNorm, e.query_norm);
      fn(li, kEgConvWeight, e.conv_weight);
      fn(li, kEgConvNorm, e.conv_norm);
    }
    fn(li, kEgTable, L.engram_table);
  }
  fn(int64_t{-1}, kHcHeadPhi, p.hc_head.phi);
  fn(int64_t{-1}, kHcHeadB, p.hc_head.b);
  fn(int64_t{-1}, kHcHeadAlpha, p.hc_head.alpha);
  fn(int64_t{-1}, kFinalNorm, p.final_norm);
  fn(int64_t{-1}, kHead, p.head);
}

// Tensors whose gradient is sparse (no slot in the gradient arena).
bool sparse_field(Field f) {
  return f == kEmbed || f == kEgTable;
}

// Where a tensor lives: `size` floats at p_off in the parameter arena and (dense ones) at g_off
// in the gradient arena (-1: none).
struct Slot {
  int64_t size = 0;
  int64_t p_off = -1;
  int64_t g_off = -1;
};

// Offsets are rounded up to 64 floats (256 bytes): every tensor starts aligned like a cudaMalloc.
int64_t align_up(int64_t n) {
  return (n + 63) / 64 * 64;
}

// Table sizes per head, recovered from the layer's head offsets and its row count.
std::vector<int64_t> head_sizes_of(const nn::EngramLayer<float>& e) {
  const auto& off = e.head_offsets();
  std::vector<int64_t> out;
  for (size_t h = 0; h < off.size(); ++h)
    out.push_back((h + 1 < off.size() ? off[h + 1] : e.table_rows()) - off[h]);
  return out;
}

}  // namespace

struct GpuTransformer::Impl {
  // What sub_forward saves per sublayer (the CPU's SubSaved).
  struct SubSaved {
    cuda::DeviceBuffer<float> x;                // (N, n, C) the sublayer's input streams
    cuda::DeviceBuffer<float> y;                // (N, C) read-out (n > 1)
    cuda::DeviceBuffer<float> rstd;             // (N)
    cuda::DeviceBuffer<float> h;                // (N, C) RMSNorm(y)
    cuda::DeviceBuffer<float> f;                // (N, C) the sublayer's output
    cuda::DeviceBuffer<float> pre, post, comb;  // (N, n), (N, n), (N, n, n)
    cuda::GpuHcSaved coeff;
  };
  struct LayerSaved {
    cuda::DeviceBuffer<float> x_engram;  // (N, n, C) the Engram layer's input
    SubSaved attn, ffn;
    cuda::DeviceBuffer<float> q, k, v, ctx,
        lse;                              // (N, Hq*hd), (N, Hkv*hd) x2, (N, Hq*hd), (B, Hq, T)
    cuda::DeviceBuffer<float> h1, h3, g;  // (N, F) dense FFN
    cuda::GpuMoeSaved<float> moe;
    bool moe_valid = false;
  };
  struct EngramState {
    int64_t layer = 0;
    nn::EngramLayerConfig config;
    std::unique_ptr<cuda::GpuEngramLayer> layer_obj;
    cuda::GpuEngramGrads grads;
    cuda::DeviceBuffer<int64_t> head_offsets;
    int64_t table_rows = 0;
  };

  ModelConfig config;
  GpuTransformerOptions options;
  std::vector<std::vector<int64_t>> head_sizes;
  std::vector<int> engram_index;  // per layer: index into layer_ids, or -1
  std::unique_ptr<cuda::Blas> blas;

  // Parameters and dense gradients.
  std::vector<std::array<Slot, kFieldCount>> layer_slots;
  std::array<Slot, kFieldCount> model_slots{};
  struct Named {
    std::string name;
    std::vector<int64_t> shape;
    int64_t size, p_off, g_off;
  };
  std::vector<Named> named;  // TransformerParams::named() order
  cuda::DeviceBuffer<float> params, grads;
  std::vector<cuda::DeviceBuffer<float>> moe_bias;  // per layer, (E) or empty
  std::vector<EngramState> engram;                  // layer_ids order

  // Step state.
  int64_t batch = 0, seq = 0;
  bool have_forward = false;
  cuda::DeviceBuffer<int64_t> d_inputs, d_targets;
  cuda::DeviceBuffer<int32_t> d_hash_ids;
  std::vector<LayerSaved> saved;
  cuda::DeviceBuffer<float> x;  // (N, n, C) the residual streams; after forward, X_final
  cuda::DeviceBuffer<float> z, head_pre, final_rstd, hn, logits, dlogits, engram_out;
  cuda::GpuHcSaved head_coeff;
  // Backward's scratch.
  cuda::DeviceBuffer<float> dx, din, df, dh, dy, dpre, dpost, dcomb, dz, dhn, de;
  cuda::DeviceBuffer<float> dctx, dq, dk, dv, dg, dh1, dh3, dout_engram;
  cuda::GpuSparseRowGrad embed_grad;

  const Slot& slot(int64_t layer, Field f) const {
    return layer < 0 ? model_slots[sz(f)] : layer_slots[sz(layer)][sz(f)];
  }
  float* P(int64_t layer, Field f) {
    const Slot& s = slot(layer, f);
    return s.size > 0 ? params.data() + s.p_off : nullptr;
  }
  float* G(int64_t layer, Field f) {
    const Slot& s = slot(layer, f);
    return s.size > 0 && s.g_off >= 0 ? grads.data() + s.g_off : nullptr;
  }

  void require_gradients(const char* what) const {
    if (!options.gradients) {
      throw Error(std::string("GpuTransformer::") + what +
                  ": the model was built with options.gradients = false (inference only)");
    }
  }
  int64_t tokens() const { return batch * seq; }
  cuda::Math math() const { return options.math; }
  cuda::FlashAttentionShape attn_shape() const {
    const BackboneConfig& m = config.model;
    return {batch, seq, m.num_heads, m.num_kv_heads, m.head_dim};
  }
  nn::MoeShape moe_shape() const {
    const MoeConfig& e = *config.moe;
    nn::MoeShape s{tokens(), config.model.hidden_size, e.num_experts, e.top_k,
                   e.expert_intermediate_size};
    s.n_shared = e.num_shared_experts;
    s.route_scale = e.route_scale;
    return s;
  }
  cuda::GpuMoeWeights<float> moe_weights(int64_t l) {
    return {P(l, kGate), P(l, kEw1), P(l, kEw3), P(l, kEw2), P(l, kSw1), P(l, kSw3), P(l, kSw2)};
  }

  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    blas->gemm(ta, tb, m, n, k, 1.0f, mat(a, lda), mat(b, ldb), beta, mut(c, ldc), math());
  }

  void attention_forward(int64_t l, LayerSaved& ls, const float* h, float* f);
  void attention_backward(int64_t l, LayerSaved& ls, const float* df_, const float* h, float* dh_);
  void ffn_forward(int64_t l, LayerSaved& ls, const float* h, float* f);
  void ffn_backward(int64_t l, LayerSaved& ls, const float* df_, const float* h, float* dh_);
  void sub_forward(SubSaved& s, Field hc_phi, int64_t layer, bool is_attn);
  void sub_backward(SubSaved& s, Field hc_phi, int64_t layer, bool is_attn);
  void copy_engram_grads(EngramState& e);
};

// ---- construction and host copies ----------------------------------------------------------

GpuTransformer::GpuTransformer(const Transformer<float>& cpu, const GpuTransformerOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.config = cpu.config();
  I.options = options;
  const BackboneConfig& m = I.config.model;
  if (options.activations != DType::kF32) {
    throw ConfigError(error_message("GpuTransformer: options.activations",
                                    "only float32 activations are implemented"));
  }
  if (m.head_dim != 64 && m.head_dim != 128) {
    throw InputError(
        error_message("GpuTransformer: model.head_dim",
                      std::to_string(m.head_dim) + " (the GPU attention takes 64 or 128)"));
  }
  if (m.hc_mult > cuda::kHcMaxStreams) {
    throw InputError(error_message("GpuTransformer: model.hc_mult",
                                   std::to_string(m.hc_mult) + " (at most " +
                                       std::to_string(cuda::kHcMaxStreams) + " on the GPU)"));
  }
  I.blas = std::make_unique<cuda::Blas>();
  const TransformerParams<float>& hp = cpu.params();

  // Slots: parameters in visit order, gradients for the dense ones.
  I.layer_slots.assign(sz(m.num_layers), {});
  int64_t p_total = 0, g_total = 0;
  visit(hp, [&](int64_t layer, Field f, const std::vector<float>& v) {
    Slot& s = layer < 0 ? I.model_slots[sz(f)] : I.layer_slots[sz(layer)][sz(f)];
    s.size = static_cast<int64_t>(v.size());
    if (s.size == 0) return;
    s.p_off = p_total;
    p_total += align_up(s.size);
    if (!sparse_field(f)) {
      s.g_off = g_total;
      g_total += align_up(s.size);
    }
  });
  I.params = cuda::DeviceBuffer<float>(sz(p_total));
  I.grads = cuda::DeviceBuffer<float>(sz(options.gradients ? std::max<int64_t>(g_total, 1) : 1));
  cuda::zero(I.grads.data(), static_cast<int64_t>(I.grads.size()));
  upload_params(hp);

  // named(): each entry points into one of the visited vectors (possibly into its middle).
  struct Range {
    const float* begin;
    const float* end;
    Slot slot;
  };
  std::vector<Range> ranges;
  visit(hp, [&](int64_t layer, Field f, const std::vector<float>& v) {
    if (v.empty()) return;
    ranges.push_back({v.data(), v.data() + v.size(), I.slot(layer, f)});
  });
  auto& mutable_params = const_cast<TransformerParams<float>&>(hp);  // named() only reads
  const std::less<const float*> less;
  for (const auto& np : mutable_params.named()) {
    const float* p = np.data;
    bool found = false;
    for (const Range& r : ranges) {
      if (!less(p, r.begin) && less(p, r.end)) {
        const int64_t off = p - r.begin;
        I.named.push_back({np.name, np.shape, np.size, r.slot.p_off + off,
                           r.slot.g_off >= 0 ? r.slot.g_off + off : -1});
        found = true;
        break;
      }
    }
    if (!found) throw Error("GpuTransformer: parameter " + np.name + " has no slot");
  }

  // Buffers, Engram layers.
  I.moe_bias.resize(sz(m.num_layers));
  for (int64_t l = 0; l < m.num_layers; ++l) {
    const auto& b = hp.layers[sz(l)].moe_bias;
    if (!b.empty()) I.moe_bias[sz(l)] = cuda::DeviceBuffer<float>(std::span<const float>(b));
  }
  I.engram_index.assign(sz(m.num_layers), -1);
  if (I.config.engram) {
    const auto& ids = I.config.engram->hash.layer_ids;
    cuda::GpuEngramOptions eo;
    eo.activations = DType::kF32;
    eo.math = options.math;
    for (size_t e = 0; e < ids.size(); ++e) {
      const int64_t l = ids[e];
      I.engram_index[sz(l)] = static_cast<int>(e);
      const nn::EngramLayer<float>& cl = *hp.layers[sz(l)].engram;
      Impl::EngramState st;
      st.layer = l;
      st.config = cl.config();
      st.layer_obj = std::make_unique<cuda::GpuEngramLayer>(cl.config(), cl.params(), eo);
      if (options.gradients) st.grads = cuda::GpuEngramGrads(cl.config());
      st.head_offsets = cuda::DeviceBuffer<int64_t>(std::span<const int64_t>(cl.head_offsets()));
      st.table_rows = cl.table_rows();
      I.head_sizes.push_back(head_sizes_of(cl));
      I.engram.push_back(std::move(st));
    }
  }
  cuda::device_synchronize();
}

GpuTransformer::~GpuTransformer() = default;

const ModelConfig& GpuTransformer::config() const {
  return impl_->config;
}
const GpuTransformerOptions& GpuTransformer::options() const {
  return impl_->options;
}

void GpuTransformer::upload_params(const TransformerParams<float>& params) {
  Impl& I = *impl_;
  visit(params, [&](int64_t layer, Field f, const std::vector<float>& v) {
    const Slot& s = I.slot(layer, f);
    if (static_cast<int64_t>(v.size()) != s.size) {
      throw InputError(error_message("GpuTransformer::upload_params",
                                     "a tensor of " + std::to_string(v.size()) +
                                         " values where the model has " + std::to_string(s.size)));
    }
    if (s.size > 0)
      cuda::copy_to_device(I.params.data() + s.p_off, v.data(), v.size() * sizeof(float));
  });
  for (size_t l = 0; l < I.moe_bias.size() && l < params.layers.size(); ++l) {
    const auto& b = params.layers[l].moe_bias;
    if (I.moe_bias[l].size() > 0 && b.size() == I.moe_bias[l].size()) I.moe_bias[l].upload(b);
  }
  if (!I.engram.empty()) sync_engram_params();
}

void GpuTransformer::sync_engram_params() {
  Impl& I = *impl_;
  for (auto& e : I.engram) {
    nn::EngramParams<float> p;
    p.zeros(e.config);
    const int64_t l = e.layer;
    auto get = [&](Field f, std::vector<float>& v) {
      if (!v.empty()) cuda::copy_to_host(v.data(), I.P(l, f), v.size() * sizeof(float));
    };
    get(kEgKv, p.kv_weight);
    get(kEgKvBias, p.kv_bias);
    get(kEgKeyNorm, p.key_norm);
    get(kEgQueryNorm, p.query_norm);
    get(kEgConvWeight, p.conv_weight);
    get(kEgConvNorm, p.conv_norm);
    e.layer_obj->set_params(p);
  }
}

void GpuTransformer::download_params(TransformerParams<float>& out) const {
  const Impl& I = *impl_;
  out.zeros(I.config, I.head_sizes, true);
  visit(out, [&](int64_t layer, Field f, std::vector<float>& v) {
    const Slot& s = I.slot(layer, f);
    if (!v.empty()) {
      cuda::copy_to_host(v.data(), I.params.data() + s.p_off, v.size() * sizeof(float));
    }
  });
  for (size_t l = 0; l < out.layers.size(); ++l) {
    auto& b = out.layers[l].moe_bias;
    if (!b.empty()) I.moe_bias[l].download(b);
  }
}

void GpuTransformer::download_grads(TransformerParams<float>& grads,
                                    nn::SparseRowGrad<float>& embed,
                                    std::vector<nn::SparseRowGrad<float>>& tables) const {
  const Impl& I = *impl_;
  I.require_gradients("download_grads");
  // Laid out once: later calls overwrite the same buffers, so pointers into them (an
  // optimizer's gradient spans) stay valid.
  if (grads.layers.size() != sz(I.config.model.num_layers) ||
      grads.head.size() != sz(I.config.model.vocab_size * I.config.model.hidden_size)) {
    grads.zeros(I.config, I.head_sizes, false);
  }
  visit(grads, [&](int64_t layer, Field f, std::vector<float>& v) {
    const Slot& s = I.slot(layer, f);
    if (!v.empty() && s.g_off >= 0) {
      cuda::copy_to_host(v.data(), I.grads.data() + s.g_off, v.size() * sizeof(float));
    }
  });
  I.embed_grad.download(embed);
  tables.assign(I.engram.size(), {});
  for (size_t e = 0; e < I.engram.size(); ++e) {
    const cuda::GpuEngramGrads& g = I.engram[e].grads;
    nn::SparseRowGrad<float>& t = tables[e];
    t.width = g.table_width;
    t.rows.assign(sz(g.table_unique), 0);
    t.values.assign(sz(g.table_unique * g.table_width), 0.0f);
    if (g.table_unique > 0) {
      cuda::copy_to_host(t.rows.data(), g.table_rows.data(), t.rows.size() * sizeof(int64_t));
      cuda::copy_to_host(t.values.data(), g.table_values.data(), t.values.size() * sizeof(float));
    }
  }
}

std::vector<float> GpuTransformer::logits() const {
  const Impl& I = *impl_;
  std::vector<float> out(sz(I.tokens() * I.config.model.vocab_size));
  if (!out.empty()) cuda::copy_to_host(out.data(), I.logits.data(), out.size() * sizeof(float));
  return out;
}

std::vector<std::vector<int64_t>> GpuTransformer::moe_expert_counts() const {
  const Impl& I = *impl_;
  std::vector<std::vector<int64_t>> out(sz(I.config.model.num_layers));
  for (size_t l = 0; l < out.size() && l < I.saved.size(); ++l) {
    if (I.config.is_moe_layer(static_cast<int64_t>(l)) && I.saved[l].moe_valid)
      out[l] = I.saved[l].moe.host_counts;
  }
  return out;
}

void GpuTransformer::update_moe_bias() {
  Impl& I = *impl_;
  if (!I.config.moe) return;
  for (int64_t l = 0; l < I.config.model.num_layers; ++l) {
    if (!I.config.is_moe_layer(l) || sz(l) >= I.saved.size() || !I.saved[sz(l)].moe_valid) continue;
    cuda::aux_free_bias_update(I.moe_bias[sz(l)].data(), I.saved[sz(l)].moe.counts.data(),
                               I.config.moe->num_experts, I.config.moe->bias_update_gamma);
  }
  cuda::device_synchronize();
}

std::vector<GpuParam> GpuTransformer::dense_params() {
  Impl& I = *impl_;
  I.require_gradients("dense_params");
  std::vector<GpuParam> out;
  for (const auto& n : I.named) {
    if (n.g_off < 0) continue;
    out.push_back({n.name, n.shape, I.params.data() + n.p_off, I.grads.data() + n.g_off, n.size,
                   n.shape.size() >= 2});
  }
  return out;
}

std::vector<GpuSparseGrad> GpuTransformer::sparse_grads() {
  Impl& I = *impl_;
  I.require_gradients("sparse_grads");
  std::vector<GpuSparseGrad> out;
  const int64_t V = I.config.model.vocab_size, C = I.config.model.hidden_size;
  out.push_back({"embed", I.P(-1, kEmbed), V, C, I.embed_grad.rows.data(),
                 I.embed_grad.values.data(), I.embed_grad.unique});
  for (auto& e : I.engram) {
    out.push_back({"layers." + std::to_string(e.layer) + ".engram.table", I.P(e.layer, kEgTable),
                   e.table_rows, e.config.row_width(), e.grads.table_rows.data(),
                   e.grads.table_values.data(), e.grads.table_unique});
  }
  return out;
}

GpuModelWeights GpuTransformer::weights() {
  Impl& I = *impl_;
  const BackboneConfig& m = I.config.model;
  GpuModelWeights w;
  w.embed = I.P(-1, kEmbed);
  w.hc_head = {I.P(-1, kHcHeadPhi), I.P(-1, kHcHeadB), I.P(-1, kHcHeadAlpha)};
  w.final_norm = I.P(-1, kFinalNorm);
  w.head = I.P(-1, kHead);
  for (int64_t l = 0; l < m.num_layers; ++l) {
    GpuLayerWeights L{};
    L.attn_norm = I.P(l, kAttnNorm);
    L.wq = I.P(l, kWq);
    L.wk = I.P(l, kWk);
    L.wv = I.P(l, kWv);
    L.wo = I.P(l, kWo);
    L.ffn_norm = I.P(l, kFfnNorm);
    L.w1 = I.P(l, kW1);
    L.w3 = I.P(l, kW3);
    L.w2 = I.P(l, kW2);
    L.moe = I.moe_weights(l);
    L.moe_bias = I.moe_bias[sz(l)].size() > 0 ? I.moe_bias[sz(l)].data() : nullptr;
    L.hc_attn = {I.P(l, kHcAttnPhi), I.P(l, kHcAttnB), I.P(l, kHcAttnAlpha)};
    L.hc_ffn = {I.P(l, kHcFfnPhi), I.P(l, kHcFfnB), I.P(l, kHcFfnAlpha)};
    const int ei = I.engram_index[sz(l)];
    if (ei >= 0) {
      Impl::EngramState& e = I.engram[sz(ei)];
      L.engram = e.layer_obj.get();
      L.table = {I.P(l, kEgTable), DType::kF32, e.table_rows, e.config.row_width()};
      L.head_offsets = e.head_offsets.data();
    }
    w.layers.push_back(L);
  }
  return w;
}

cuda::Blas& GpuTransformer::blas() {
  return *impl_->blas;
}

// ---- sublayers -----------------------------------------------------------------------------

// f (N, C) = attention(h (N, C)); q, k, v, ctx, lse saved.
void GpuTransformer::Impl::attention_forward(int64_t l, LayerSaved& ls, const float* h, float* f) {
  const BackboneConfig& m = config.model;
  const int64_t N = tokens(), C = m.hidden_size, hd = m.head_dim;
  const int64_t QD = m.num_heads * hd, KD = m.num_kv_heads * hd;
  ensure(ls.q, N * QD);
  ensure(ls.k, N * KD);
  ensure(ls.v, N * KD);
  ensure(ls.ctx, N * QD);
  ensure(ls.lse, batch * m.num_heads * seq);
  gemm(false, true, N, QD, C, h, C, P(l, kWq), C, 0.0f, ls.q.data(), QD);
  gemm(false, true, N, KD, C, h, C, P(l, kWk), C, 0.0f, ls.k.data(), KD);
  gemm(false, true, N, KD, C, h, C, P(l, kWv), C, 0.0f, ls.v.data(), KD);
  cuda::rope_forward(ls.q.data(), batch, seq, m.num_heads, hd, m.rope_theta);
  cuda::rope_forward(ls.k.data(), batch, seq, m.num_kv_heads, hd, m.rope_theta);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cuda::flash_attention_forward(ls.ctx.data(), ls.lse.data(), ls.q.data(), ls.k.data(), ls.v.data(),
                                DType::kF32, attn_shape(), scale);
  gemm(false, true, N, C, QD, ls.ctx.data(), QD, P(l, kWo), QD, 0.0f, f, C);
}

// dh (N, C) = the input gradient (written); the weight gradients +=.
void GpuTransformer::Impl::attention_backward(int64_t l, LayerSaved& ls, const float* df_,
                                              const float* h, float* dh_) {
  const BackboneConfig& m = config.model;
  const int64_t N = tokens(), C = m.hidden_size, hd = m.head_dim;
  const int64_t QD = m.num_heads * hd, KD = m.num_kv_heads * hd;
  ensure(dctx, N * QD);
  ensure(dq, N * QD);
  ensure(dk, N * KD);
  ensure(dv, N * KD);
  gemm(false, false, N, QD, C, df_, C, P(l, kWo), QD, 0.0f, dctx.data(), QD);
  gemm(true, false, C, QD, N, df_, C, ls.ctx.data(), QD, 1.0f, G(l, kWo), QD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cuda::flash_attention_backward(dq.data(), dk.data(), dv.data(), dctx.data(), ls.q.data(),
                                 ls.k.data(), ls.v.data(), ls.ctx.data(), ls.lse.data(),
                                 DType::kF32, attn_shape(), scale);
  cuda::rope_backward(dq.data(), batch, seq, m.num_heads, hd, m.rope_theta);
  cuda::rope_backward(dk.data(), batch, seq, m.num_kv_heads, hd, m.rope_theta);
  gemm(false, false, N, C, QD, dq.data(), QD, P(l, kWq), C, 0.0f, dh_, C);
  gemm(false, false, N, C, KD, dk.data(), KD, P(l, kWk), C, 1.0f, dh_, C);
  gemm(false, false, N, C, KD, dv.data(), KD, P(l, kWv), C, 1.0f, dh_, C);
  gemm(true, false, QD, C, N, dq.data(), QD, h, C, 1.0f, G(l, kWq), C);
  gemm(true, false, KD, C, N, dk.data(), KD, h, C, 1.0f, G(l, kWk), C);
  gemm(true, false, KD, C, N, dv.data(), KD, h, C, 1.0f, G(l, kWv), C);
}

// f (N, C) = FFN(h): the dense SwiGLU or the MoE.
void GpuTransformer::Impl::ffn_forward(int64_t l, LayerSaved& ls, const float* h, float* f) {
  const int64_t N = tokens(), C = config.model.hidden_size;
  if (config.is_moe_layer(l)) {
    cuda::moe_forward<float>(*blas, f, ls.moe, h, moe_bias[sz(l)].data(), moe_weights(l),
                             moe_shape());
    ls.moe_valid = true;
    return;
  }
  const int64_t F = config.model.dense_intermediate_size;
  ensure(ls.h1, N * F);
  ensure(ls.h3, N * F);
  ensure(ls.g, N * F);
  gemm(false, true, N, F, C, h, C, P(l, kW1), C, 0.0f, ls.h1.data(), F);
  gemm(false, true, N, F, C, h, C, P(l, kW3), C, 0.0f, ls.h3.data(), F);
  cuda::swiglu_gate_forward(ls.g.data(), ls.h1.data(), ls.h3.data(), N * F);
  gemm(false, true, N, C, F, ls.g.data(), F, P(l, kW2), F, 0.0f, f, C);
}

// dh (N, C) written; the weight gradients +=.
void GpuTransformer::Impl::ffn_backward(int64_t l, LayerSaved& ls, const float* df_, const float* h,
                                        float* dh_) {
  const int64_t N = tokens(), C = config.model.hidden_size;
  if (config.is_moe_layer(l)) {
    cuda::zero(dh_, N * C);
    const cuda::GpuMoeGrads g{G(l, kGate), G(l, kEw1), G(l, kEw3), G(l, kEw2),
                              G(l, kSw1),  G(l, kSw3), G(l, kSw2)};
    cuda::moe_backward<float>(*blas, dh_, g, df_, h, ls.moe, moe_weights(l), moe_shape());
    return;
  }
  const int64_t F = config.model.dense_intermediate_size;
  ensure(dg, N * F);
  ensure(dh1, N * F);
  ensure(dh3, N * F);
  gemm(true, false, C, F, N, df_, C, ls.g.data(), F, 1.0f, G(l, kW2), F);
  gemm(false, false, N, F, C, df_, C, P(l, kW2), F, 0.0f, dg.data(), F);
  cuda::swiglu_gate_backward(dh1.data(), dh3.data(), dg.data(), ls.h1.data(), ls.h3.data(), N * F);
  gemm(true, false, F, C, N, dh1.data(), F, h, C, 1.0f, G(l, kW1), C);
  gemm(true, false, F, C, N, dh3.data(), F, h, C, 1.0f, G(l, kW3), C);
  gemm(false, false, N, C, F, dh1.data(), F, P(l, kW1), C, 0.0f, dh_, C);
  gemm(false, false, N, C, F, dh3.data(), F, P(l, kW3), C, 1.0f, dh_, C);
}

// x (N, n, C) is replaced by the sublayer's output (Transformer::sub_forward).
// hc_phi: kHcAttnPhi or kHcFfnPhi (b and alpha follow it in Field order).
void GpuTransformer::Impl::sub_forward(SubSaved& s, Field hc_phi, int64_t layer, bool is_attn) {
  const BackboneConfig& m = config.model;
  const int64_t N = tokens(), n = m.hc_mult, C = m.hidden_size;
  ensure(s.x, N * n * C);
  cuda::copy(s.x.data(), x.data(), N * n * C);
  const float* y = s.x.data();
  if (n > 1) {
    ensure(s.pre, N * n);
    ensure(s.post, N * n);
    ensure(s.comb, N * n * n);
    ensure(s.y, N * C);
    const auto hb = static_cast<Field>(hc_phi + 1), ha = static_cast<Field>(hc_phi + 2);
    cuda::hc_coefficients_forward(s.pre.data(), s.post.data(), s.comb.data(), s.coeff, s.x.data(),
                                  P(layer, hc_phi), P(layer, hb), P(layer, ha), N, n, C, *blas);
    cuda::hc_readout_forward(s.y.data(), s.x.data(), s.pre.data(), N, n, C);
    y = s.y.data();
  }
  ensure(s.rstd, N);
  ensure(s.h, N * C);
  ensure(s.f, N * C);
  const Field norm = is_attn ? kAttnNorm : kFfnNorm;
  cuda::rmsnorm_forward(s.h.data(), C, s.rstd.data(), y, nn::RowLayout{N, C, C}, P(layer, norm),
                        static_cast<float>(m.norm_eps));
  LayerSaved& ls = saved[sz(layer)];
  if (is_attn) {
    attention_forward(layer, ls, s.h.data(), s.f.data());
  } else {
    ffn_forward(layer, ls, s.h.data(), s.f.data());
  }
  if (n == 1) {
    cuda::add_inplace(x.data(), s.f.data(), N * C);
  } else {
    cuda::hc_write_back_forward(x.data(), s.f.data(), s.x.data(), s.post.data(), s.comb.data(), N,
                                n, C);
  }
}

// dx: the gradient w.r.t. the sublayer's output on entry, w.r.t. its input on exit.
void GpuTransformer::Impl::sub_backward(SubSaved& s, Field hc_phi, int64_t layer, bool is_attn) {
  const BackboneConfig& m = config.model;
  const int64_t N = tokens(), n = m.hc_mult, C = m.hidden_size;
  ensure(dh, N * C);
  const float* dfp = dx.data();
  if (n > 1) {
    ensure(df, N * C);
    ensure(din, N * n * C);
    ensure(dpost, N * n);
    ensure(dcomb, N * n * n);
    cuda::zero(df.data(), N * C);
    cuda::zero(din.data(), N * n * C);
    cuda::zero(dpost.data(), N * n);
    cuda::zero(dcomb.data(), N * n * n);
    cuda::hc_write_back_backward(df.data(), din.data(), dpost.data(), dcomb.data(), dx.data(),
                                 s.f.data(), s.x.data(), s.post.data(), s.comb.data(), N, n, C);
    dfp = df.data();
  }
  LayerSaved& ls = saved[sz(layer)];
  if (is_attn) {
    attention_backward(layer, ls, dfp, s.h.data(), dh.data());
  } else {
    ffn_backward(layer, ls, dfp, s.h.data(), dh.data());
  }
  const Field norm = is_attn ? kAttnNorm : kFfnNorm;
  if (n == 1) {
    // The residual gradient dx stays; RMSNorm's input gradient accumulates onto it.
    cuda::rmsnorm_backward(dx.data(), C, G(layer, norm), dh.data(), C, s.x.data(),
                           nn::RowLayout{N, C, C}, P(layer, norm), s.rstd.data());
    return;
  }
  ensure(dy, N * C);
  ensure(dpre, N * n);
  cuda::zero(dy.data(), N * C);
  cuda::zero(dpre.data(), N * n);
  cuda::rmsnorm_backward(dy.data(), C, G(layer, norm), dh.data(), C, s.y.data(),
                         nn::RowLayout{N, C, C}, P(layer, norm), s.rstd.data());
  cuda::hc_readout_backward(din.data(), dpre.data(), dy.data(), s.x.data(), s.pre.data(), N, n, C);
  const auto hb = static_cast<Field>(hc_phi + 1), ha = static_cast<Field>(hc_phi + 2);
  cuda::hc_coefficients_backward(din.data(), G(layer, hc_phi), G(layer, hb), G(layer, ha),
                                 dpre.data(), dpost.data(), dcomb.data(), s.x.data(), s.coeff,
                                 P(layer, hc_phi), P(layer, hb), P(layer, ha), N, n, C, *blas);
  std::swap(dx, din);
}

// The Engram layer's dense gradients into the gradient arena.
void GpuTransformer::Impl::copy_engram_grads(EngramState& e) {
  const int64_t l = e.layer;
  auto put = [&](Field f, const cuda::DeviceBuffer<float>& b) {
    const Slot& s = slot(l, f);
    if (s.size == 0) return;
    if (static_cast<int64_t>(b.size()) < s.size) {
      throw Error("GpuTransformer: Engram gradient buffer smaller than its parameter");
    }
    cuda::copy(grads.data() + s.g_off, b.data(), s.size);
  };
  put(kEgKv, e.grads.kv_weight);
  put(kEgKvBias, e.grads.kv_bias);
  put(kEgKeyNorm, e.grads.key_norm);
  put(kEgQueryNorm, e.grads.query_norm);
  put(kEgConvWeight, e.grads.conv_weight);
  put(kEgConvNorm, e.grads.conv_norm);
}

// ---- forward and backward ------------------------------------------------------------------

double GpuTransformer::forward(const int64_t* inputs, const int64_t* targets, int64_t batch,
                               int64_t seq, std::span<const int32_t> hash_ids) {
  Impl& I = *impl_;
  const BackboneConfig& m = I.config.model;
  if (batch < 1 || seq < 1 || seq > m.max_seq_len) {
    throw InputError("GpuTransformer forward: batch " + std::to_string(batch) + ", seq " +
                     std::to_string(seq) + " (max_seq_len " + std::to_string(m.max_seq_len) + ")");
  }
  const int64_t N = batch * seq, n = m.hc_mult, C = m.hidden_size, V = m.vocab_size;
  for (int64_t i = 0; i < N; ++i) {
    if (inputs[i] < 0 || inputs[i] >= V) {
      throw InputError(
          error_message("GpuTransformer forward: inputs[" + std::to_string(i) + "]",
                        std::to_string(inputs[i]) + " is outside [0, " + std::to_string(V) + ")"));
    }
  }
  const size_t n_engram = I.engram.size();
  int64_t H = 0;
  if (n_engram > 0) {
    H = I.config.engram->hash.ids_per_token();
    if (hash_ids.size() != n_engram * sz(N * H)) {
      throw InputError("GpuTransformer forward: " + std::to_string(hash_ids.size()) +
                       " hash ids given, expected " + std::to_string(n_engram * sz(N * H)) +
                       " (L_engram, B, T, H)");
    }
  } else if (!hash_ids.empty()) {
    throw InputError("GpuTransformer forward: hash ids given to a model without Engram");
  }
  I.have_forward = false;
  I.batch = batch;
  I.seq = seq;
  ensure(I.d_inputs, N);
  ensure(I.d_targets, N);
  cuda::copy_to_device(I.d_inputs.data(), inputs, sz(N) * sizeof(int64_t));
  cuda::copy_to_device(I.d_targets.data(), targets, sz(N) * sizeof(int64_t));
  if (n_engram > 0) {
    ensure(I.d_hash_ids, static_cast<int64_t>(hash_ids.size()));
    cuda::copy_to_device(I.d_hash_ids.data(), hash_ids.data(), hash_ids.size() * sizeof(int32_t));
  }

  ensure(I.x, N * n * C);
  cuda::embedding_forward(I.x.data(), I.d_inputs.data(), I.P(-1, kEmbed), N, n, C);
  I.saved.resize(sz(m.num_layers));
  for (int64_t l = 0; l < m.num_layers; ++l) {
    Impl::LayerSaved& ls = I.saved[sz(l)];
    ls.moe_valid = false;
    const int ei = I.engram_index[sz(l)];
    if (ei >= 0) {
      Impl::EngramState& e = I.engram[sz(ei)];
      ensure(ls.x_engram, N * n * C);
      ensure(I.engram_out, N * n * C);
      cuda::copy(ls.x_engram.data(), I.x.data(), N * n * C);
      const cuda::DeviceTable table{I.P(l, kEgTable), DType::kF32, e.table_rows,
                                    e.config.row_width()};
      e.layer_obj->forward(ls.x_engram.data(), I.d_hash_ids.data() + sz(ei) * sz(N * H), batch, seq,
                           table, e.head_offsets.data(), I.engram_out.data());
      cuda::add_inplace(I.x.data(), I.engram_out.data(), N * n * C);
    }
    I.sub_forward(ls.attn, kHcAttnPhi, l, true);
    I.sub_forward(ls.ffn, kHcFfnPhi, l, false);
  }
  // I.x now holds X_final.
  const float* z = I.x.data();
  if (n > 1) {
    ensure(I.z, N * C);
    ensure(I.head_pre, N * n);
    cuda::hc_head_readout_forward(I.z.data(), I.head_pre.data(), I.head_coeff, I.x.data(),
                                  I.P(-1, kHcHeadPhi), I.P(-1, kHcHeadB), I.P(-1, kHcHeadAlpha), N,
                                  n, C, *I.blas);
    z = I.z.data();
  }
  ensure(I.final_rstd, N);
  ensure(I.hn, N * C);
  cuda::rmsnorm_forward(I.hn.data(), C, I.final_rstd.data(), z, nn::RowLayout{N, C, C},
                        I.P(-1, kFinalNorm), static_cast<float>(m.norm_eps));
  ensure(I.logits, N * V);
  ensure(I.dlogits, N * V);
  I.gemm(false, true, N, V, C, I.hn.data(), C, I.P(-1, kHead), C, 0.0f, I.logits.data(), V);
  // The loss and its gradient together (the gradient is backward's first step).
  const double loss = cuda::cross_entropy_forward_backward(I.dlogits.data(), I.logits.data(),
                                                           I.d_targets.data(), N, V);
  I.have_forward = true;
  return loss;
}

void GpuTransformer::backward() {
  Impl& I = *impl_;
  I.require_gradients("backward");
  if (!I.have_forward) throw Error("GpuTransformer backward: no forward to differentiate");
  const BackboneConfig& m = I.config.model;
  const int64_t N = I.tokens(), n = m.hc_mult, C = m.hidden_size, V = m.vocab_size;
  cuda::zero(I.grads.data(), static_cast<int64_t>(I.grads.size()));

  ensure(I.dhn, N * C);
  I.gemm(false, false, N, C, V, I.dlogits.data(), V, I.P(-1, kHead), C, 0.0f, I.dhn.data(), C);
  I.gemm(true, false, V, C, N, I.dlogits.data(), V, I.hn.data(), C, 0.0f, I.G(-1, kHead), C);
  ensure(I.dx, N * n * C);
  ensure(I.dz, N * C);
  float* dz = n == 1 ? I.dx.data() : I.dz.data();
  cuda::zero(dz, N * C);
  const float* z = n == 1 ? I.x.data() : I.z.data();
  cuda::rmsnorm_backward(dz, C, I.G(-1, kFinalNorm), I.dhn.data(), C, z, nn::RowLayout{N, C, C},
                         I.P(-1, kFinalNorm), I.final_rstd.data());
  if (n > 1) {
    cuda::zero(I.dx.data(), N * n * C);
    cuda::hc_head_readout_backward(I.dx.data(), I.G(-1, kHcHeadPhi), I.G(-1, kHcHeadB),
                                   I.G(-1, kHcHeadAlpha), I.dz.data(), I.x.data(),
                                   I.head_pre.data(), I.head_coeff, I.P(-1, kHcHeadPhi),
                                   I.P(-1, kHcHeadB), I.P(-1, kHcHeadAlpha), N, n, C, *I.blas);
  }
  for (int64_t l = m.num_layers - 1; l >= 0; --l) {
    Impl::LayerSaved& ls = I.saved[sz(l)];
    I.sub_backward(ls.ffn, kHcFfnPhi, l, false);
    I.sub_backward(ls.attn, kHcAttnPhi, l, true);
    const int ei = I.engram_index[sz(l)];
    if (ei >= 0) {
      // X_out = X_in + Engram(X_in): d_hidden accumulates onto the residual gradient.
      Impl::EngramState& e = I.engram[sz(ei)];
      ensure(I.dout_engram, N * n * C);
      cuda::copy(I.dout_engram.data(), I.dx.data(), N * n * C);
      e.grads.zero();
      e.layer_obj->backward(I.dout_engram.data(), ls.x_engram.data(), I.dx.data(), e.grads);
      I.copy_engram_grads(e);
    }
  }
  const float* de = I.dx.data();
  if (n > 1) {
    ensure(I.de, N * C);
    cuda::streams_sum(I.de.data(), I.dx.data(), N, n, C);
    de = I.de.data();
  }
  cuda::embedding_backward(I.embed_grad, de, I.d_inputs.data(), N, C, V);
  cuda::device_synchronize();
}

}  // namespace engram::model
