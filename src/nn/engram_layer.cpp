#include "engram/nn/engram_layer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "engram/nn/rmsnorm.h"
#include "engram/tensor/gemm.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"
#include "nn/activation.h"

namespace engram::nn {
namespace {

// Token loops that also reduce into weight gradients run over a fixed number of chunks whose
// partial sums are added in chunk order: results do not depend on the number of threads.
constexpr size_t kChunks = 64;

// The gate's score transform: sign(s) * sqrt(max(|s|, 1e-6)), and its derivative (PyTorch's
// clamp_min passes the gradient where |s| >= 1e-6; sign has none).
template <class T>
T signed_sqrt(T s) {
  const T a = std::max(std::abs(s), T(1e-6));
  return s > 0 ? std::sqrt(a) : (s < 0 ? -std::sqrt(a) : T(0));
}
template <class T>
T signed_sqrt_grad(T s) {
  const T a = std::abs(s);
  return (s != 0 && a >= T(1e-6)) ? T(0.5) / std::sqrt(a) : T(0);
}

void check_positive(int64_t v, const char* field) {
  if (v < 1)
    throw ConfigError(
        error_message(std::string("engram layer: ") + field, std::to_string(v) + " must be >= 1"));
}

}  // namespace

// ---- config ---------------------------------------------------------------------------------

EngramLayerConfig EngramLayerConfig::from_hash_config(const hash::EngramHashConfig& c) {
  EngramLayerConfig l;
  l.hidden_size = c.hidden_size;
  l.hc_mult = c.hc_mult;
  l.max_ngram_size = c.max_ngram_size;
  l.n_embed_per_ngram = c.n_embed_per_ngram;
  l.n_head_per_ngram = c.n_head_per_ngram;
  l.kernel_size = c.kernel_size;
  l.validate();
  return l;
}

void EngramLayerConfig::validate() const {
  check_positive(hidden_size, "hidden_size");
  check_positive(hc_mult, "hc_mult");
  check_positive(n_head_per_ngram, "n_head_per_ngram");
  check_positive(kernel_size, "kernel_size");
  if (max_ngram_size < 2) {
    throw ConfigError(error_message("engram layer: max_ngram_size",
                                    std::to_string(max_ngram_size) + " must be >= 2"));
  }
  if (n_embed_per_ngram < 1 || n_embed_per_ngram % n_head_per_ngram != 0) {
    throw ConfigError(error_message("engram layer: n_embed_per_ngram",
                                    std::to_string(n_embed_per_ngram) +
                                        " must be a positive multiple of n_head_per_ngram (" +
                                        std::to_string(n_head_per_ngram) + ")"));
  }
}

// ---- parameters -----------------------------------------------------------------------------

template <class T>
void EngramParams<T>::zeros(const EngramLayerConfig& c) {
  const auto d = static_cast<size_t>(c.hidden_size), m = static_cast<size_t>(c.hc_mult);
  kv_weight.assign(static_cast<size_t>(c.kv_rows() * c.mem_dim()), T(0));
  kv_bias.assign(c.bias ? static_cast<size_t>(c.kv_rows()) : 0, T(0));
  key_norm.assign(m * d, T(0));
  query_norm.assign(m * d, T(0));
  conv_weight.assign(c.short_conv ? m * d * static_cast<size_t>(c.kernel_size) : 0, T(0));
  conv_norm.assign(c.short_conv ? m * d : 0, T(0));
}

template <class T>
void EngramParams<T>::init(const EngramLayerConfig& c, uint64_t seed, bool zero_conv) {
  zeros(c);
  std::mt19937_64 rng(seed);
  const T bound = T(1) / std::sqrt(static_cast<T>(c.mem_dim()));
  std::uniform_real_distribution<double> lin(-static_cast<double>(bound),
                                             static_cast<double>(bound));
  for (T& w : kv_weight) w = static_cast<T>(lin(rng));
  for (T& b : kv_bias) b = static_cast<T>(lin(rng));
  std::fill(key_norm.begin(), key_norm.end(), T(1));
  std::fill(query_norm.begin(), query_norm.end(), T(1));
  std::fill(conv_norm.begin(), conv_norm.end(), T(1));
  if (!zero_conv) {
    const double cb = 1.0 / std::sqrt(static_cast<double>(c.kernel_size));
    std::uniform_real_distribution<double> conv(-cb, cb);
    for (T& w : conv_weight) w = static_cast<T>(conv(rng));
  }
}

template <class T>
std::vector<NamedParam<T>> EngramParams<T>::named(const EngramLayerConfig& c) {
  const int64_t d = c.hidden_size, dm = c.mem_dim(), M = c.hc_mult;
  std::vector<NamedParam<T>> out;
  // state_dict order of the reference module (multi_head_embedding.embedding.weight, the table,
  // comes first there and is held elsewhere).
  if (c.short_conv) {
    out.push_back({"short_conv.conv.weight",
                   {M * d, 1, c.kernel_size},
                   conv_weight.data(),
                   M * d * c.kernel_size});
    for (int64_t m = 0; m < M; ++m) {
      out.push_back(
          {"short_conv.norms." + std::to_string(m) + ".weight", {d}, conv_norm.data() + m * d, d});
    }
  }
  out.push_back({"value_proj.weight", {d, dm}, kv_weight.data(), d * dm});
  if (c.bias) out.push_back({"value_proj.bias", {d}, kv_bias.data(), d});
  for (int64_t m = 0; m < M; ++m) {
    const std::string p = "key_projs." + std::to_string(m);
    out.push_back({p + ".weight", {d, dm}, kv_weight.data() + (1 + m) * d * dm, d * dm});
    if (c.bias) out.push_back({p + ".bias", {d}, kv_bias.data() + (1 + m) * d, d});
  }
  for (int64_t m = 0; m < M; ++m)
    out.push_back({"norm1." + std::to_string(m) + ".weight", {d}, key_norm.data() + m * d, d});
  for (int64_t m = 0; m < M; ++m)
    out.push_back({"norm2." + std::to_string(m) + ".weight", {d}, query_norm.data() + m * d, d});
  return out;
}

// ---- layer ----------------------------------------------------------------------------------

template <class T>
EngramLayer<T>::EngramLayer(EngramLayerConfig config, std::vector<int64_t> head_sizes)
    : config_(config), head_sizes_(std::move(head_sizes)) {
  config_.validate();
  if (static_cast<int64_t>(head_sizes_.size()) != config_.heads()) {
    throw ConfigError(error_message(
        "engram layer", std::to_string(head_sizes_.size()) + " head sizes given, the config has " +
                            std::to_string(config_.heads()) + " heads"));
  }
  for (int64_t s : head_sizes_) {
    head_offsets_.push_back(table_rows_);
    if (s < 1)
      throw ConfigError(
          error_message("engram layer", "head size " + std::to_string(s) + " must be >= 1"));
    table_rows_ += s;
  }
  params_.zeros(config_);
}

template <class T>
ShortConvShape EngramLayer<T>::conv_shape(int64_t batch, int64_t seq) const {
  ShortConvShape s{batch, seq, config_.hc_mult, config_.hidden_size};
  s.kernel = config_.kernel_size;
  s.dilation = config_.max_ngram_size;
  return s;
}

template <class T>
void EngramLayer<T>::forward(const T* hidden, const int32_t* hash_ids, int64_t batch, int64_t seq,
                             const memory::RowStore& table, T* out, EngramSaved<T>& saved) const {
  const EngramLayerConfig& c = config_;
  const int64_t tokens = batch * seq, H = c.heads(), D = c.row_width(), dm = c.mem_dim();
  const int64_t d = c.hidden_size, M = c.hc_mult, kvr = c.kv_rows();
  if (table.num_rows() != table_rows_ || table.width() != D) {
    throw InputError(error_message("engram layer", "table has " + std::to_string(table.num_rows()) +
                                                       " rows of " + std::to_string(table.width()) +
                                                       ", expected " + std::to_string(table_rows_) +
                                                       " rows of " + std::to_string(D)));
  }
  saved.batch = batch;
  saved.seq = seq;
  // Rows to read: per-head id + head offset.
  saved.rows.resize(static_cast<size_t>(tokens * H));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t z = hash_ids[t * H + h];
      if (z < 0 || z >= head_sizes_[static_cast<size_t>(h)]) {
        throw InputError(error_message(
            "engram layer", "hash_ids[" + std::to_string(t / seq) + "][" + std::to_string(t % seq) +
                                "][" + std::to_string(h) + "] = " + std::to_string(z) +
                                " is outside [0, " +
                                std::to_string(head_sizes_[static_cast<size_t>(h)]) + ")"));
      }
      saved.rows[static_cast<size_t>(t * H + h)] = z + head_offsets_[static_cast<size_t>(h)];
    }
  }
  // e = the rows, concatenated per token: (tokens * H, D) is (tokens, d_mem).
  saved.e.resize(static_cast<size_t>(tokens * dm));
  parallel_for(static_cast<size_t>(tokens * H), 0, 4096, [&](size_t b, size_t e) {
    table.gather(std::span<const int64_t>(saved.rows.data() + b, e - b),
                 saved.e.data() + b * static_cast<size_t>(D), D);
  });
  // [v | k_0 .. k_{M-1}] = e W_kv^T + b_kv
  saved.kv.resize(static_cast<size_t>(tokens * kvr));
  gemm<T>(Trans::kNo, Trans::kYes, tokens, kvr, dm, T(1), saved.e.data(), dm,
          params_.kv_weight.data(), dm, T(0), saved.kv.data(), kvr);
  if (c.bias) {
    parallel_for(static_cast<size_t>(tokens), 0, 256, [&](size_t b, size_t e) {
      for (size_t t = b; t < e; ++t) {
        T* row = saved.kv.data() + t * static_cast<size_t>(kvr);
        for (int64_t j = 0; j < kvr; ++j) row[j] += params_.kv_bias[static_cast<size_t>(j)];
      }
    });
  }
  // Gates and gated values.
  const size_t tm = static_cast<size_t>(tokens * M);
  saved.key_rstd.resize(tm);
  saved.query_rstd.resize(tm);
  saved.score.resize(tm);
  saved.alpha.resize(tm);
  saved.vt.resize(static_cast<size_t>(tokens * M * d));
  const T eps = std::numeric_limits<T>::epsilon();
  const T inv_sqrt_d = T(1) / std::sqrt(static_cast<T>(d));
  parallel_for(static_cast<size_t>(tokens), 0, 64, [&](size_t b, size_t e) {
    std::vector<T> nk(static_cast<size_t>(d)), nq(static_cast<size_t>(d));
    for (size_t t = b; t < e; ++t) {
      const T* v = saved.kv.data() + t * static_cast<size_t>(kvr);
      for (int64_t m = 0; m < M; ++m) {
        const size_t i = t * static_cast<size_t>(M) + static_cast<size_t>(m);
        const T* k = v + (1 + m) * d;
        const T* q = hidden + static_cast<int64_t>(i) * d;
        saved.key_rstd[i] =
            rmsnorm_row_forward(nk.data(), k, params_.key_norm.data() + m * d, d, eps);
        saved.query_rstd[i] =
            rmsnorm_row_forward(nq.data(), q, params_.query_norm.data() + m * d, d, eps);
        T s = 0;
        for (int64_t j = 0; j < d; ++j)
          s += nk[static_cast<size_t>(j)] * nq[static_cast<size_t>(j)];
        s *= inv_sqrt_d;
        const T alpha = sigmoid(signed_sqrt(s));
        saved.score[i] = s;
        saved.alpha[i] = alpha;
        T* vt = saved.vt.data() + static_cast<int64_t>(i) * d;
        for (int64_t j = 0; j < d; ++j) vt[j] = alpha * v[j];
      }
    }
  });
  // out = Vt + ShortConv(Vt)
  const size_t n_out = static_cast<size_t>(tokens * M * d);
  if (c.short_conv) {
    short_conv_forward(out, saved.conv, saved.vt.data(), params_.conv_weight.data(),
                       params_.conv_norm.data(), conv_shape(batch, seq),
                       static_cast<T>(c.conv_norm_eps));
    for (size_t i = 0; i < n_out; ++i) out[i] += saved.vt[i];
  } else {
    std::copy(saved.vt.begin(), saved.vt.end(), out);
  }
}

template <class T>
void EngramLayer<T>::backward(const T* d_out, const T* hidden, const EngramSaved<T>& saved,
                              T* d_hidden, EngramParams<T>& grads,
                              SparseRowGrad<T>& table_grad) const {
  const EngramLayerConfig& c = config_;
  const int64_t tokens = saved.batch * saved.seq, H = c.heads(), D = c.row_width(),
                dm = c.mem_dim();
  const int64_t d = c.hidden_size, M = c.hc_mult, kvr = c.kv_rows();
  const size_t n_out = static_cast<size_t>(tokens * M * d);
  // dVt = d_out (identity path) + the short conv's input gradient.
  std::vector<T>& dvt = saved.dvt;
  dvt.assign(d_out, d_out + n_out);
  if (c.short_conv) {
    short_conv_backward(dvt.data(), grads.conv_weight.data(), grads.conv_norm.data(), d_out,
                        saved.vt.data(), saved.conv, params_.conv_weight.data(),
                        params_.conv_norm.data(), conv_shape(saved.batch, saved.seq));
  }
  // Back through the gates, per token; norm weight gradients go to per-chunk partials.
  std::vector<T>& dkv = saved.dkv;
  dkv.assign(static_cast<size_t>(tokens * kvr), T(0));
  const size_t md = static_cast<size_t>(M * d);
  std::vector<T> part_key(kChunks * md, T(0)), part_query(kChunks * md, T(0));
  const T inv_sqrt_d = T(1) / std::sqrt(static_cast<T>(d));
  const auto n_tok = static_cast<size_t>(tokens);
  parallel_for(kChunks, 0, 1, [&](size_t cb, size_t ce) {
    std::vector<T> nk(static_cast<size_t>(d)), nq(static_cast<size_t>(d)),
        dnk(static_cast<size_t>(d)), dnq(static_cast<size_t>(d));
    for (size_t chunk = cb; chunk < ce; ++chunk) {
      T* pk = part_key.data() + chunk * md;
      T* pq = part_query.data() + chunk * md;
      for (size_t t = n_tok * chunk / kChunks; t < n_tok * (chunk + 1) / kChunks; ++t) {
        const T* v = saved.kv.data() + t * static_cast<size_t>(kvr);
        T* dv = dkv.data() + t * static_cast<size_t>(kvr);
        for (int64_t m = 0; m < M; ++m) {
          const size_t i = t * static_cast<size_t>(M) + static_cast<size_t>(m);
          const T* g = dvt.data() + static_cast<int64_t>(i) * d;
          const T alpha = saved.alpha[i];
          T dalpha = 0;
          for (int64_t j = 0; j < d; ++j) {
            dalpha += g[j] * v[j];
            dv[j] += alpha * g[j];
          }
          const T ds =
              dalpha * alpha * (T(1) - alpha) * signed_sqrt_grad(saved.score[i]) * inv_sqrt_d;
          if (ds == T(0)) continue;
          const T* k = v + (1 + m) * d;
          const T* q = hidden + static_cast<int64_t>(i) * d;
          const T* wk = params_.key_norm.data() + m * d;
          const T* wq = params_.query_norm.data() + m * d;
          const T rk = saved.key_rstd[i], rq = saved.query_rstd[i];
          for (int64_t j = 0; j < d; ++j) {
            nk[static_cast<size_t>(j)] = k[j] * rk * wk[j];
            nq[static_cast<size_t>(j)] = q[j] * rq * wq[j];
          }
          for (int64_t j = 0; j < d; ++j) {
            dnk[static_cast<size_t>(j)] = ds * nq[static_cast<size_t>(j)];
            dnq[static_cast<size_t>(j)] = ds * nk[static_cast<size_t>(j)];
          }
          rmsnorm_row_backward(dv + (1 + m) * d, pk + m * d, dnk.data(), k, wk, rk, d);
          rmsnorm_row_backward(d_hidden + static_cast<int64_t>(i) * d, pq + m * d, dnq.data(), q,
                               wq, rq, d);
        }
      }
    }
  });
  for (size_t chunk = 0; chunk < kChunks; ++chunk) {
    for (size_t j = 0; j < md; ++j) {
      grads.key_norm[j] += part_key[chunk * md + j];
      grads.query_norm[j] += part_query[chunk * md + j];
    }
  }
  // Projections: dW_kv += dkv^T e, db_kv += column sums of dkv, de = dkv W_kv.
  gemm<T>(Trans::kYes, Trans::kNo, kvr, dm, tokens, T(1), dkv.data(), kvr, saved.e.data(), dm, T(1),
          grads.kv_weight.data(), dm);
  if (c.bias) {
    std::vector<T> part_bias(kChunks * static_cast<size_t>(kvr), T(0));
    parallel_for(kChunks, 0, 1, [&](size_t cb, size_t ce) {
      for (size_t chunk = cb; chunk < ce; ++chunk) {
        T* pb = part_bias.data() + chunk * static_cast<size_t>(kvr);
        for (size_t t = n_tok * chunk / kChunks; t < n_tok * (chunk + 1) / kChunks; ++t) {
          const T* row = dkv.data() + t * static_cast<size_t>(kvr);
          for (int64_t j = 0; j < kvr; ++j) pb[j] += row[j];
        }
      }
    });
    for (size_t chunk = 0; chunk < kChunks; ++chunk) {
      for (int64_t j = 0; j < kvr; ++j)
        grads.kv_bias[static_cast<size_t>(j)] +=
            part_bias[chunk * static_cast<size_t>(kvr) + static_cast<size_t>(j)];
    }
  }
  std::vector<T>& de = saved.de;
  de.resize(static_cast<size_t>(tokens * dm));
  gemm<T>(Trans::kNo, Trans::kNo, tokens, dm, kvr, T(1), dkv.data(), kvr, params_.kv_weight.data(),
          dm, T(0), de.data(), dm);
  // Sparse table gradient: the (token, head) slots sorted by row (stably, so each row's sum runs
  // in token order), then summed per distinct row.
  const size_t slots = static_cast<size_t>(tokens * H);
  std::vector<uint32_t> order(slots);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return saved.rows[a] < saved.rows[b]; });
  table_grad.width = D;
  table_grad.rows.clear();
  table_grad.values.clear();
  for (size_t k = 0; k < slots; ++k) {
    const int64_t row = saved.rows[order[k]];
    if (table_grad.rows.empty() || table_grad.rows.back() != row) {
      table_grad.rows.push_back(row);
      table_grad.values.resize(table_grad.values.size() + static_cast<size_t>(D), T(0));
    }
    T* dst = table_grad.values.data() + table_grad.values.size() - static_cast<size_t>(D);
    const T* src = de.data() + static_cast<size_t>(order[k]) * static_cast<size_t>(D);
    for (int64_t j = 0; j < D; ++j) dst[j] += src[j];
  }
}

template struct EngramParams<float>;
template struct EngramParams<double>;
template class EngramLayer<float>;
template class EngramLayer<double>;

}  // namespace engram::nn
