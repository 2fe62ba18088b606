// GpuEngramLayer (include/engram/cuda/engram_layer.h): parameter upload, buffer management and
// the cuBLAS projections; the kernels are in src/cuda/engram_layer.cu. src/cuda/
// engram_layer_stub.cpp stands in for both in builds without CUDA.
#include "engram/cuda/engram_layer.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/check.h"
#include "cuda/engram_layer_kernel.h"
#include "cuda/sparse_rows_kernel.h"

namespace engram::cuda {
namespace {

// Grows `b` to at least n elements (contents are not kept).
template <class T>
void ensure(DeviceBuffer<T>& b, int64_t n) {
  if (b.size() < static_cast<size_t>(n)) b = DeviceBuffer<T>(static_cast<size_t>(n));
}

// Grows the byte buffer `b` to hold at least n values of A.
template <class A>
A* ensure_as(DeviceBuffer<uint8_t>& b, int64_t n) {
  ensure(b, n * static_cast<int64_t>(sizeof(A)));
  return reinterpret_cast<A*>(b.data());
}

template <class A>
A* as(DeviceBuffer<uint8_t>& b) {
  return reinterpret_cast<A*>(b.data());
}

template <class A>
constexpr DType dtype_of() {
  return std::is_same_v<A, float> ? DType::kF32 : DType::kBF16;
}

template <class T>
void zero_fill(DeviceBuffer<T>& b) {
  if (b.size() > 0) ENGRAM_CUDA_CHECK(cudaMemset(b.data(), 0, b.bytes()));
}

template <class T>
void download_into(const DeviceBuffer<T>& b, std::vector<T>& host, size_t n) {
  host.resize(n);
  if (n > 0) copy_to_host(host.data(), b.data(), n * sizeof(T));
}

void check_param(const std::vector<float>& v, size_t want, const char* name) {
  if (v.size() != want) {
    throw ConfigError(error_message(std::string("GpuEngramLayer: ") + name,
                                    std::to_string(v.size()) + " values, the config needs " +
                                        std::to_string(want)));
  }
}

}  // namespace

// ---- gradients ------------------------------------------------------------------------------

GpuEngramGrads::GpuEngramGrads(const nn::EngramLayerConfig& c) {
  nn::EngramParams<float> z;
  z.zeros(c);
  kv_weight = DeviceBuffer<float>(z.kv_weight.size());
  kv_bias = DeviceBuffer<float>(z.kv_bias.size());
  key_norm = DeviceBuffer<float>(z.key_norm.size());
  query_norm = DeviceBuffer<float>(z.query_norm.size());
  conv_weight = DeviceBuffer<float>(z.conv_weight.size());
  conv_norm = DeviceBuffer<float>(z.conv_norm.size());
  table_width = c.row_width();
  zero();
}

void GpuEngramGrads::zero() {
  zero_fill(kv_weight);
  zero_fill(kv_bias);
  zero_fill(key_norm);
  zero_fill(query_norm);
  zero_fill(conv_weight);
  zero_fill(conv_norm);
}

void GpuEngramGrads::download(nn::EngramParams<float>& dense,
                              nn::SparseRowGrad<float>& table) const {
  download_into(kv_weight, dense.kv_weight, kv_weight.size());
  download_into(kv_bias, dense.kv_bias, kv_bias.size());
  download_into(key_norm, dense.key_norm, key_norm.size());
  download_into(query_norm, dense.query_norm, query_norm.size());
  download_into(conv_weight, dense.conv_weight, conv_weight.size());
  download_into(conv_norm, dense.conv_norm, conv_norm.size());
  table.width = table_width;
  download_into(table_rows, table.rows, static_cast<size_t>(table_unique));
  download_into(table_values, table.values, static_cast<size_t>(table_unique * table_width));
}

// ---- layer ----------------------------------------------------------------------------------

GpuEngramLayer::GpuEngramLayer(const nn::EngramLayerConfig& config,
                               const nn::EngramParams<float>& params,
                               const GpuEngramOptions& options)
    : config_(config), options_(options) {
  config_.validate();
  if (options_.activations != DType::kF32 && options_.activations != DType::kBF16) {
    throw ConfigError(error_message("GpuEngramLayer: options.activations",
                                    std::string(dtype_name(options_.activations)) +
                                        " is not F32 or BF16"));
  }
  if (config_.short_conv && config_.kernel_size > detail::kMaxConvKernel) {
    throw ConfigError(error_message("GpuEngramLayer: kernel_size",
                                    std::to_string(config_.kernel_size) + " exceeds " +
                                        std::to_string(detail::kMaxConvKernel) +
                                        " (the GPU layer's widest short conv)"));
  }
  if (config_.hc_mult > 32) {
    // The gate backward runs one warp per branch in a block of 32 * hc_mult threads.
    throw ConfigError(error_message("GpuEngramLayer: hc_mult",
                                    std::to_string(config_.hc_mult) + " exceeds 32"));
  }
  set_params(params);
  blas_ = std::make_unique<Blas>();
}

GpuEngramLayer::~GpuEngramLayer() = default;

void GpuEngramLayer::mark(const char* phase) {
  if (!profiling_) return;
  if (phase[0] == '\0') {
    timer_.start();
  } else {
    timer_.mark(phase);
  }
}

std::vector<std::pair<std::string, float>> GpuEngramLayer::phase_times() const {
  return timer_.times();
}

void GpuEngramLayer::set_params(const nn::EngramParams<float>& p) {
  nn::EngramParams<float> z;
  z.zeros(config_);
  check_param(p.kv_weight, z.kv_weight.size(), "kv_weight");
  check_param(p.kv_bias, z.kv_bias.size(), "kv_bias");
  check_param(p.key_norm, z.key_norm.size(), "key_norm");
  check_param(p.query_norm, z.query_norm.size(), "query_norm");
  check_param(p.conv_weight, z.conv_weight.size(), "conv_weight");
  check_param(p.conv_norm, z.conv_norm.size(), "conv_norm");
  kv_weight_ = DeviceBuffer<float>(std::span<const float>(p.kv_weight));
  kv_bias_ = DeviceBuffer<float>(std::span<const float>(p.kv_bias));
  key_norm_ = DeviceBuffer<float>(std::span<const float>(p.key_norm));
  query_norm_ = DeviceBuffer<float>(std::span<const float>(p.query_norm));
  conv_weight_ = DeviceBuffer<float>(std::span<const float>(p.conv_weight));
  {
    // (C, kernel) -> (kernel, C), so that the conv kernels read consecutive channels.
    const size_t K = static_cast<size_t>(config_.kernel_size);
    const size_t C = K == 0 ? 0 : p.conv_weight.size() / K;
    std::vector<float> wt(p.conv_weight.size());
    for (size_t c = 0; c < C; ++c)
      for (size_t j = 0; j < K; ++j) wt[j * C + c] = p.conv_weight[c * K + j];
    conv_weight_t_ = DeviceBuffer<float>(std::span<const float>(wt));
  }
  conv_norm_ = DeviceBuffer<float>(std::span<const float>(p.conv_norm));
  if (options_.activations == DType::kBF16) {
    std::vector<bf16> w(p.kv_weight.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_bf16(p.kv_weight[i]);
    kv_weight_bf16_ = DeviceBuffer<bf16>(std::span<const bf16>(w));
  }
}

void GpuEngramLayer::check_activations(DType want, const char* where) const {
  if (options_.activations != want) {
    throw InputError(error_message(where, std::string("called with ") +
                                              std::string(dtype_name(want)) +
                                              " activations on a layer built for " +
                                              std::string(dtype_name(options_.activations))));
  }
}

void GpuEngramLayer::forward(const float* d_hidden, const int32_t* d_hash_ids, int64_t batch,
                             int64_t seq, const DeviceTable& table, const int64_t* d_head_offsets,
                             float* d_out) {
  check_activations(DType::kF32, "GpuEngramLayer::forward");
  forward_impl(d_hidden, d_hash_ids, batch, seq, table, d_head_offsets, d_out);
}

void GpuEngramLayer::forward(const bf16* d_hidden, const int32_t* d_hash_ids, int64_t batch,
                             int64_t seq, const DeviceTable& table, const int64_t* d_head_offsets,
                             bf16* d_out) {
  check_activations(DType::kBF16, "GpuEngramLayer::forward");
  forward_impl(d_hidden, d_hash_ids, batch, seq, table, d_head_offsets, d_out);
}

void GpuEngramLayer::backward(const float* d_dout, const float* d_hidden, float* d_dhidden,
                              GpuEngramGrads& grads) {
  check_activations(DType::kF32, "GpuEngramLayer::backward");
  backward_impl(d_dout, d_hidden, d_dhidden, grads);
}

void GpuEngramLayer::backward(const bf16* d_dout, const bf16* d_hidden, bf16* d_dhidden,
                              GpuEngramGrads& grads) {
  check_activations(DType::kBF16, "GpuEngramLayer::backward");
  backward_impl(d_dout, d_hidden, d_dhidden, grads);
}

template <class A>
void GpuEngramLayer::forward_impl(const A* d_hidden, const int32_t* d_hash_ids, int64_t batch,
                                  int64_t seq, const DeviceTable& table,
                                  const int64_t* d_head_offsets, A* d_out) {
  const nn::EngramLayerConfig& c = config_;
  const int64_t tokens = batch * seq, H = c.heads(), D = c.row_width(), dm = c.mem_dim();
  const int64_t kvr = c.kv_rows();
  if (batch < 0 || seq < 0) {
    throw InputError(error_message("GpuEngramLayer::forward",
                                   "batch " + std::to_string(batch) + " and seq " +
                                       std::to_string(seq) + " must be >= 0"));
  }
  if (table.width != D || table.rows < 1) {
    throw InputError(error_message("GpuEngramLayer::forward",
                                   "table has " + std::to_string(table.rows) + " rows of " +
                                       std::to_string(table.width) + ", expected rows of " +
                                       std::to_string(D)));
  }
  if (tokens * H > std::numeric_limits<int32_t>::max()) {
    throw InputError(error_message("GpuEngramLayer::forward",
                                   "batch * seq * heads = " + std::to_string(tokens * H) +
                                       " exceeds 2^31 - 1"));
  }
  batch_ = batch;
  seq_ = seq;
  stepped_ = false;
  table_end_bit_ = std::bit_width(static_cast<uint64_t>(table.rows));
  if (tokens == 0) return;
  constexpr DType kA = dtype_of<A>();
  ensure(rows_, tokens * H);
  ensure(slots_, tokens * H);
  reserve<A>(tokens);
  A* e = as<A>(e_);
  A* kv = as<A>(kv_);
  mark("");
  detail::launch_table_rows(rows_.data(), slots_.data(), d_hash_ids, d_head_offsets, tokens, H);
  gather_rows(e, table, d_hash_ids, d_head_offsets, tokens, H);
  mark("fwd: rows + gather");
  // kv (tokens, kvr) = e (tokens, dm) W^T, W (kvr, dm); the bias is added in the gate.
  const void* w = kA == DType::kBF16 ? static_cast<const void*>(kv_weight_bf16_.data())
                                     : static_cast<const void*>(kv_weight_.data());
  blas_->gemm(false, true, tokens, kvr, dm, 1.0f, {e, kA, dm}, {w, kA, dm}, 0.0f, {kv, kA, kvr},
              options_.math);
  mark("fwd: projection GEMM");
  // Without the short conv the gate writes Vt, the layer's output, into d_out; with it the
  // gate keeps only per-row statistics and the conv recomputes Vt from v.
  detail::launch_gate_forward<A>(
      gate_args<A>(kv, d_hidden, c.short_conv ? nullptr : d_out, nullptr, tokens));
  mark(c.short_conv ? "fwd: gate + conv norm" : "fwd: gate");
  if (c.short_conv) {
    detail::launch_conv_forward<A>(conv_args<A>(), d_out);
    mark("fwd: short conv");
  }
}

void GpuEngramLayer::forward_step(const float* d_hidden, const int32_t* d_hash_ids, int64_t rows,
                                  const DeviceTable& table, const int64_t* d_head_offsets,
                                  const GpuConvRing& ring, float* d_out, void* stream) {
  check_activations(DType::kF32, "GpuEngramLayer::forward_step");
  const nn::EngramLayerConfig& c = config_;
  const int64_t H = c.heads(), D = c.row_width(), dm = c.mem_dim();
  const int64_t d = c.hidden_size, M = c.hc_mult, kvr = c.kv_rows();
  const int64_t reach = c.short_conv ? c.max_ngram_size * (c.kernel_size - 1) : 0;
  if (rows < 0) {
    throw InputError(error_message("GpuEngramLayer::forward_step",
                                   "rows " + std::to_string(rows) + " must be >= 0"));
  }
  if (table.width != D || table.rows < 1) {
    throw InputError(error_message("GpuEngramLayer::forward_step",
                                   "table has " + std::to_string(table.rows) + " rows of " +
                                       std::to_string(table.width) + ", expected rows of " +
                                       std::to_string(D)));
  }
  if (c.short_conv && (ring.data == nullptr || ring.length < reach + 1)) {
    throw InputError(error_message("GpuEngramLayer::forward_step",
                                   "conv ring of " + std::to_string(ring.length) +
                                       " positions; the conv reaches " + std::to_string(reach) +
                                       " back, so at least " + std::to_string(reach + 1) +
                                       " are needed"));
  }
  if (rows * H > std::numeric_limits<int32_t>::max()) {
    throw InputError(error_message("GpuEngramLayer::forward_step",
                                   "rows * heads = " + std::to_string(rows * H) +
                                       " exceeds 2^31 - 1"));
  }
  stepped_ = true;
  batch_ = 0;
  seq_ = 0;
  if (rows == 0) return;
  reserve_step(rows);
  float* e = as<float>(e_);
  float* kv = as<float>(kv_);
  // Without the short conv the gate's Vt is the layer's output: written straight into d_out.
  float* vt = c.short_conv ? as<float>(vt_) : d_out;
  if (prefetched_ != rows || prefetched_ids_ != d_hash_ids || prefetched_table_ != table.data)
    gather_rows(e, table, d_hash_ids, d_head_offsets, rows, H, stream);
  prefetched_ = -1;
  blas_->set_stream(stream);
  try {
    blas_->gemm(false, true, rows, kvr, dm, 1.0f, {e, DType::kF32, dm},
                {kv_weight_.data(), DType::kF32, dm}, 0.0f, {kv, DType::kF32, kvr}, options_.math);
  } catch (...) {
    blas_->set_stream(nullptr);
    throw;
  }
  blas_->set_stream(nullptr);
  detail::launch_gate_forward<float>(
      gate_args<float>(kv, d_hidden, vt, c.short_conv ? as<float>(xn_) : nullptr, rows), stream);
  if (!c.short_conv) return;
  const detail::ConvStepArgs<float> a{rows, M * d, c.kernel_size, c.max_ngram_size, ring.length,
                                      vt, as<float>(xn_), conv_weight_t_.data(),
                                      static_cast<float*>(ring.data), ring.seq, ring.pos};
  detail::launch_conv_ring_store<float>(a, stream);
  detail::launch_conv_step<float>(a, d_out, stream);
}

void GpuEngramLayer::prefetch_step(const int32_t* d_hash_ids, int64_t rows,
                                   const DeviceTable& table, const int64_t* d_head_offsets,
                                   void* stream) {
  const nn::EngramLayerConfig& c = config_;
  if (rows < 0 || table.width != c.row_width() || table.rows < 1 ||
      rows * c.heads() > std::numeric_limits<int32_t>::max()) {
    throw InputError(error_message("GpuEngramLayer::prefetch_step",
                                   std::to_string(rows) + " rows from a table of " +
                                       std::to_string(table.rows) + " rows of " +
                                       std::to_string(table.width) + ", expected rows of " +
                                       std::to_string(c.row_width())));
  }
  prefetched_ = -1;
  if (rows == 0) return;
  reserve_step(rows);
  gather_rows(as<float>(e_), table, d_hash_ids, d_head_offsets, rows, c.heads(), stream);
  prefetched_ = rows;
  prefetched_ids_ = d_hash_ids;
  prefetched_table_ = table.data;
}

std::vector<const void*> GpuEngramLayer::step_addresses() const {
  return {e_.data(),         kv_.data(),          vt_.data(),          xn_.data(),
          key_rstd_.data(),  query_rstd_.data(),  score_.data(),       alpha_.data(),
          conv_rstd_.data(), kv_weight_.data(),   kv_bias_.data(),     key_norm_.data(),
          query_norm_.data(), conv_norm_.data(),  conv_weight_t_.data()};
}

void GpuEngramLayer::reserve_step(int64_t rows) {
  reserve<float>(rows);
  if (rows <= 0) return;
  // With the short conv a step stores Vt and the conv input xn (the ring keeps xn); without it
  // the gate writes Vt straight into the output.
  if (!config_.short_conv) return;
  ensure_as<float>(vt_, rows * config_.hc_mult * config_.hidden_size);
  ensure_as<float>(xn_, rows * config_.hc_mult * config_.hidden_size);
}

template <class A>
void GpuEngramLayer::reserve(int64_t tokens) {
  const nn::EngramLayerConfig& c = config_;
  const int64_t M = c.hc_mult;
  if (tokens <= 0) return;
  ensure_as<A>(e_, tokens * c.mem_dim());
  ensure_as<A>(kv_, tokens * c.kv_rows());
  for (auto* b : {&key_rstd_, &query_rstd_, &score_, &alpha_}) ensure(*b, tokens * M);
  if (c.short_conv) ensure(conv_rstd_, tokens * M);
}

template <class A>
detail::GateArgs<A> GpuEngramLayer::gate_args(const A* kv, const A* hidden, A* vt, A* xn,
                                              int64_t tokens) {
  const nn::EngramLayerConfig& c = config_;
  detail::GateArgs<A> gate{kv, c.bias ? kv_bias_.data() : nullptr, hidden,
                           key_norm_.data(), query_norm_.data(), key_rstd_.data(),
                           query_rstd_.data(), score_.data(), alpha_.data(), vt, tokens,
                           c.hc_mult, c.hidden_size, std::numeric_limits<float>::epsilon()};
  if (c.short_conv) {
    gate.conv_norm_w = conv_norm_.data();
    gate.xn = xn;
    gate.conv_rstd = conv_rstd_.data();
    gate.conv_eps = static_cast<float>(c.conv_norm_eps);
  }
  return gate;
}

template <class A>
detail::ConvArgs<A> GpuEngramLayer::conv_args() {
  const nn::EngramLayerConfig& c = config_;
  return {batch_,
          seq_,
          c.hc_mult,
          c.hidden_size,
          c.kernel_size,
          c.max_ngram_size,
          as<A>(kv_),
          c.kv_rows(),
          c.bias ? kv_bias_.data() : nullptr,
          alpha_.data(),
          conv_weight_t_.data(),
          conv_norm_.data(),
          conv_rstd_.data()};
}

template <class A>
void GpuEngramLayer::backward_impl(const A* d_dout, const A* d_hidden, A* d_dhidden,
                                   GpuEngramGrads& grads) {
  const nn::EngramLayerConfig& c = config_;
  if (stepped_) {
    throw Error(error_message("GpuEngramLayer::backward",
                              "the last forward was forward_step, which saves nothing"));
  }
  const int64_t tokens = batch_ * seq_, H = c.heads(), D = c.row_width(), dm = c.mem_dim();
  const int64_t d = c.hidden_size, M = c.hc_mult, kvr = c.kv_rows(), n_out = tokens * M * d;
  grads.table_width = D;
  grads.table_unique = 0;
  if (tokens == 0) return;
  if (grads.kv_weight.size() != kv_weight_.size() || grads.kv_bias.size() != kv_bias_.size() ||
      grads.conv_weight.size() != conv_weight_.size()) {
    throw InputError(error_message("GpuEngramLayer::backward",
                                   "gradients are not sized for this layer's config"));
  }
  constexpr DType kA = dtype_of<A>();
  const int64_t conv_cols = M * d * (c.kernel_size + 1);  // the taps' and the norm's
  ensure(partial_, std::max({detail::kColChunks * std::max(kvr, conv_cols),
                             detail::kMaxConvChunks * conv_cols, int64_t{1}}));
  // The sparse table gradient's plan (sort the (token, head) rows, find the distinct ones) needs
  // only the row ids: it runs on a side stream while the conv and gate backward run.
  const int64_t n = tokens * H;
  ensure(rows_sorted_, n);
  ensure(slots_sorted_, n);
  ensure(counts_, n);
  ensure(starts_, n);
  ensure(num_runs_, 1);
  ensure(grads.table_rows, n);
  ensure(grads.table_values, n * D);
  const int end_bit = static_cast<int>(table_end_bit_);
  ensure(temp_, static_cast<int64_t>(detail::sparse_rows_temp_bytes(n, end_bit)));
  A* de = ensure_as<A>(de_, tokens * dm);
  const detail::SparseRowsArgs<A> sparse{
      rows_.data(),         slots_.data(),        de,
      n,                    D,                    end_bit,
      rows_sorted_.data(),  slots_sorted_.data(), counts_.data(),
      starts_.data(),       num_runs_.data(),     temp_.data(),
      temp_.size(),         grads.table_rows.data(), grads.table_values.data()};
  A* dxn = c.short_conv ? ensure_as<A>(dxn_, n_out) : nullptr;
  A* dkv = ensure_as<A>(dkv_, tokens * kvr);
  ensure(ds_, tokens * M);
  if (!side_) side_ = std::make_unique<SideStream>();
  side_->fork.record(nullptr);  // after the forward's rows, on the default stream
  side_->fork.wait(side_->stream);
  // If anything below throws before the join, the side stream's work must end before its
  // buffers can be touched again (the next forward rewrites the rows it sorts).
  struct JoinOnUnwind {
    const Stream& stream;
    bool armed = true;
    ~JoinOnUnwind() {
      if (armed) (void)cudaStreamSynchronize(static_cast<cudaStream_t>(stream.get()));
    }
  } join_on_unwind{side_->stream};
  detail::launch_sparse_rows_plan<A>(sparse, side_->stream.get());
  side_->join.record(side_->stream);
  // The short conv's input gradient dxn; the gate backward adds the norm's backward of it to
  // d_out (the residual's part) to get d Vt.
  if (c.short_conv) {
    const detail::PhaseHook hook{
        [](void* self, const char* phase) { static_cast<GpuEngramLayer*>(self)->mark(phase); },
        this};
    detail::launch_conv_backward<A>(conv_args<A>(), d_dout, dxn, grads.conv_weight.data(),
                                    grads.conv_norm.data(), partial_.data(), hook);
  }
  // Gates: dkv, d_hidden, norm weight gradients.
  const A* kv = as<A>(kv_);
  detail::launch_gate_backward<A>({d_dout, dxn, c.short_conv ? conv_norm_.data() : nullptr,
                                   c.short_conv ? conv_rstd_.data() : nullptr, kv,
                                   c.bias ? kv_bias_.data() : nullptr, d_hidden,
                                   key_norm_.data(), query_norm_.data(), key_rstd_.data(),
                                   query_rstd_.data(), score_.data(), alpha_.data(), dkv,
                                   d_dhidden, ds_.data(), grads.key_norm.data(),
                                   grads.query_norm.data(), partial_.data(), tokens, M, d});
  mark("bwd: gate + norm weight grads");
  // dW (kvr, dm) += dkv^T (kvr, tokens) e (tokens, dm).
  const A* e = as<A>(e_);
  blas_->gemm(true, false, kvr, dm, tokens, 1.0f, {dkv, kA, kvr}, {e, kA, dm}, 1.0f,
              {grads.kv_weight.data(), DType::kF32, dm}, options_.math);
  mark("bwd: dW GEMM");
  if (c.bias) detail::launch_bias_grad<A>(grads.kv_bias.data(), dkv, tokens, kvr, partial_.data());
  mark("bwd: bias grad");
  // de (tokens, dm) = dkv (tokens, kvr) W (kvr, dm).
  const void* w = kA == DType::kBF16 ? static_cast<const void*>(kv_weight_bf16_.data())
                                     : static_cast<const void*>(kv_weight_.data());
  blas_->gemm(false, false, tokens, dm, kvr, 1.0f, {dkv, kA, kvr}, {w, kA, dm}, 0.0f,
              {de, kA, dm}, options_.math);
  mark("bwd: de GEMM");
  // The sparse table gradient: each distinct row's slot gradients summed (after the plan).
  side_->join.wait(nullptr);
  join_on_unwind.armed = false;
  detail::launch_sparse_rows_values<A>(sparse, nullptr);
  mark("bwd: sparse table grad");
  grads.table_unique = detail::read_sparse_rows_count(num_runs_.data(), nullptr);
}


}  // namespace engram::cuda
