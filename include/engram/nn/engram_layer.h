// The Engram layer (ENGRAM_SPEC §3), forward and backward, on CPU in float or double.
//
// Shapes: B batch, T sequence, M = hc_mult branches, d = hidden_size, H = (N-1)*K heads of
// D = n_embed_per_ngram / K values each, d_mem = H*D.
//
//   e[t]    = concat_h table[z[t,h] + offset[h]]                       (B*T, d_mem)
//   v       = e W_V^T + b_V ;  k_m = e W_K^m^T + b_K^m                 (B*T, d) each
//   s_m     = <RMSNorm1_m(k_m), RMSNorm2_m(h_m)> / sqrt(d)              eps = machine epsilon of T
//   alpha_m = sigmoid(sign(s_m) * sqrt(max(|s_m|, 1e-6)))
//   Vt_m    = alpha_m * v                                               (B, T, M, d)
//   out     = Vt + ShortConv(Vt)          (out = Vt without the short conv, as DeepSeek-V4.1)
//
// The value and key projections are one matrix ((1+M)*d, d_mem): value rows first, then the keys
// of branch 0..M-1, so the layer does one GEMM for all of them. Parameter names for I/O are the
// reference's state_dict names (see EngramParams::named).
//
// The table is read through a memory::RowStore and is not part of EngramParams; its gradient is
// sparse: the rows the batch read, each once, with their summed gradients (never a dense
// table-sized buffer).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engram/hash/hash_config.h"
#include "engram/memory/row_store.h"
#include "engram/nn/short_conv.h"

namespace engram::nn {

struct EngramLayerConfig {
  int64_t hidden_size = 0;  // d
  int64_t hc_mult = 1;      // M
  int64_t max_ngram_size = 3;
  int64_t n_embed_per_ngram = 512;
  int64_t n_head_per_ngram = 8;  // K
  int64_t kernel_size = 4;       // short conv width; dilation = max_ngram_size
  bool bias = true;              // biases on the value and key projections
  bool short_conv = true;        // false: out = Vt (DeepSeek-V4.1)
  double conv_norm_eps = 1e-5;

  int64_t heads() const { return (max_ngram_size - 1) * n_head_per_ngram; }
  int64_t row_width() const { return n_embed_per_ngram / n_head_per_ngram; }
  int64_t mem_dim() const { return (max_ngram_size - 1) * n_embed_per_ngram; }
  int64_t kv_rows() const { return (1 + hc_mult) * hidden_size; }

  // From a hashing config (hidden_size and hc_mult must be given there). Throws ConfigError.
  static EngramLayerConfig from_hash_config(const hash::EngramHashConfig& c);
  // Throws ConfigError naming the field for values that make no sense.
  void validate() const;
};

// A parameter under its reference name: shape and where its values live.
template <class T>
struct NamedParam {
  std::string name;
  std::vector<int64_t> shape;
  T* data;
  int64_t size;
};

template <class T>
struct EngramParams {
  std::vector<T> kv_weight;    // ((1+M)*d, d_mem): value_proj.weight, key_projs.{m}.weight
  std::vector<T> kv_bias;      // ((1+M)*d), empty without bias
  std::vector<T> key_norm;     // (M, d) norm1.{m}.weight
  std::vector<T> query_norm;   // (M, d) norm2.{m}.weight
  std::vector<T> conv_weight;  // (M*d, w) short_conv.conv.weight (stored (M*d, 1, w))
  std::vector<T> conv_norm;    // (M, d) short_conv.norms.{m}.weight

  // All buffers sized for `c` and zero-filled.
  void zeros(const EngramLayerConfig& c);
  // The reference's initialisation: linear layers U(-1/sqrt(d_mem), 1/sqrt(d_mem)), norm weights 1,
  // conv weight 0 (zero_conv, the paper's recipe: the layer starts as a gated lookup) or
  // U(-1/sqrt(w), 1/sqrt(w)).
  void init(const EngramLayerConfig& c, uint64_t seed, bool zero_conv = true);
  // Every parameter except the table, under the reference's state_dict names, in state_dict order.
  std::vector<NamedParam<T>> named(const EngramLayerConfig& c);
};

// The table's gradient: rows (sorted, unique) and their gradients (rows.size(), width).
template <class T>
struct SparseRowGrad {
  std::vector<int64_t> rows;
  std::vector<T> values;
  int64_t width = 0;
};

// What forward saves for backward. Reuse one across steps: its buffers keep their capacity.
template <class T>
struct EngramSaved {
  int64_t batch = 0, seq = 0;
  std::vector<int64_t> rows;                          // (B*T, H) table rows read
  std::vector<T> e;                                   // (B*T, d_mem)
  std::vector<T> kv;                                  // (B*T, (1+M)*d): v, then k_0 .. k_{M-1}
  std::vector<T> key_rstd, query_rstd, score, alpha;  // (B*T, M)
  std::vector<T> vt;                                  // (B, T, M, d)
  ShortConvSaved<T> conv;
  // Backward's scratch, kept so that repeated steps do not allocate (and fault in) fresh pages.
  mutable std::vector<T> dvt, dkv, de;
};

template <class T>
class EngramLayer {
 public:
  // head_sizes: the prime table size of every head in output order (H values); the layer's
  // table has sum(head_sizes) rows, head h starting at the sum of the sizes before it.
  EngramLayer(EngramLayerConfig config, std::vector<int64_t> head_sizes);

  const EngramLayerConfig& config() const { return config_; }
  EngramParams<T>& params() { return params_; }
  const EngramParams<T>& params() const { return params_; }
  int64_t table_rows() const { return table_rows_; }
  const std::vector<int64_t>& head_offsets() const { return head_offsets_; }

  // hidden (B, T, M, d); hash_ids (B, T, H) per-head ids in [0, head_sizes[h]); out (B, T, M, d).
  // Throws InputError for an id out of range or a table of the wrong shape.
  void forward(const T* hidden, const int32_t* hash_ids, int64_t batch, int64_t seq,
               const memory::RowStore& table, T* out, EngramSaved<T>& saved) const;

  // From d_out (B, T, M, d): d_hidden (+=), parameter gradients (+=, into `grads`, sized like
  // params), and the table's sparse gradient (replaced).
  void backward(const T* d_out, const T* hidden, const EngramSaved<T>& saved, T* d_hidden,
                EngramParams<T>& grads, SparseRowGrad<T>& table_grad) const;

 private:
  ShortConvShape conv_shape(int64_t batch, int64_t seq) const;
  EngramLayerConfig config_;
  std::vector<int64_t> head_sizes_, head_offsets_;
  int64_t table_rows_ = 0;
  EngramParams<T> params_;
};

}  // namespace engram::nn
