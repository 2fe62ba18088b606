// GpuEngramLayer (include/engram/cuda/engram_layer.h): parameter upload, buffer management and
// the cuBLAS projections; the kernels are in src/cuda/engram_layer.cu. src/cuda/
// engram_layer_stub.cpp stands in for both in builds without CUDA.
#include "engram/cuda/engram_layer.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <limits>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/engram_layer_kernel.h"

namespace engram::cuda {
namespace {

void check_cublas(cublasStatus_t s, const char* call, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw Error(std::string(__FILE__) + ":" + std::to_string(line) + ": " + call + ": " +
              cublasGetStatusString(s));
}
#define ENGRAM_CUBLAS_CHECK(call) check_cublas((call), #call, __LINE__)

cublasHandle_t handle(void* h) { return static_cast<cublasHandle_t>(h); }

// Grows `b` to at least n elements (contents are not kept).
template <class T>
void ensure(DeviceBuffer<T>& b, int64_t n) {
  if (b.size() < static_cast<size_t>(n)) b = DeviceBuffer<T>(static_cast<size_t>(n));
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
                               const nn::EngramParams<float>& params)
    : config_(config) {
  config_.validate();
  set_params(params);
  cublasHandle_t h = nullptr;
  ENGRAM_CUBLAS_CHECK(cublasCreate(&h));
  cublas_ = h;
  // Plain FP32 GEMMs (no TF32), so results follow the CPU's float arithmetic closely.
  ENGRAM_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));
}

GpuEngramLayer::~GpuEngramLayer() {
  if (cublas_ != nullptr) (void)cublasDestroy(handle(cublas_));
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
  conv_norm_ = DeviceBuffer<float>(std::span<const float>(p.conv_norm));
}

void GpuEngramLayer::forward(const float* d_hidden, const int32_t* d_hash_ids, int64_t batch,
                             int64_t seq, const DeviceTable& table, const int64_t* d_head_offsets,
                             float* d_out) {
  const nn::EngramLayerConfig& c = config_;
  const int64_t tokens = batch * seq, H = c.heads(), D = c.row_width(), dm = c.mem_dim();
  const int64_t d = c.hidden_size, M = c.hc_mult, kvr = c.kv_rows();
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
  table_end_bit_ = std::bit_width(static_cast<uint64_t>(table.rows));
  if (tokens == 0) return;
  ensure(rows_, tokens * H);
  ensure(slots_, tokens * H);
  ensure(e_, tokens * dm);
  ensure(kv_, tokens * kvr);
  for (auto* b : {&key_rstd_, &query_rstd_, &score_, &alpha_}) ensure(*b, tokens * M);
  ensure(vt_, tokens * M * d);
  detail::launch_table_rows(rows_.data(), slots_.data(), d_hash_ids, d_head_offsets, tokens, H);
  gather_rows(e_.data(), table, d_hash_ids, d_head_offsets, tokens, H);
  // kv (tokens, kvr) = e W^T: column-major kv^T (kvr x tokens) = W^T(op T of dm x kvr) * e^T.
  const float one = 1.0f, zero = 0.0f;
  ENGRAM_CUBLAS_CHECK(cublasSgemm(handle(cublas_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(kvr),
                                  static_cast<int>(tokens), static_cast<int>(dm), &one,
                                  kv_weight_.data(), static_cast<int>(dm), e_.data(),
                                  static_cast<int>(dm), &zero, kv_.data(), static_cast<int>(kvr)));
  if (c.bias) detail::launch_add_bias(kv_.data(), kv_bias_.data(), tokens, kvr);
  detail::launch_gate_forward({kv_.data(), d_hidden, key_norm_.data(), query_norm_.data(),
                               key_rstd_.data(), query_rstd_.data(), score_.data(), alpha_.data(),
                               vt_.data(), tokens, M, d, std::numeric_limits<float>::epsilon()});
  if (c.short_conv) {
    ensure(xn_, tokens * M * d);
    ensure(u_, tokens * M * d);
    ensure(conv_rstd_, tokens * M);
    detail::launch_conv_forward(conv_args(), d_out);
  } else {
    ENGRAM_CUDA_CHECK(cudaMemcpyAsync(d_out, vt_.data(),
                                      static_cast<size_t>(tokens * M * d) * sizeof(float),
                                      cudaMemcpyDeviceToDevice));
  }
}

detail::ConvArgs GpuEngramLayer::conv_args() {
  const nn::EngramLayerConfig& c = config_;
  return {batch_,
          seq_,
          c.hc_mult,
          c.hidden_size,
          c.kernel_size,
          c.max_ngram_size,
          vt_.data(),
          conv_weight_.data(),
          conv_norm_.data(),
          xn_.data(),
          conv_rstd_.data(),
          u_.data(),
          static_cast<float>(c.conv_norm_eps)};
}

void GpuEngramLayer::backward(const float* d_dout, const float* d_hidden, float* d_dhidden,
                              GpuEngramGrads& grads) {
  const nn::EngramLayerConfig& c = config_;
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
  ensure(partial_, detail::kColChunks *
                       std::max({kvr, M * d * std::max<int64_t>(c.kernel_size, 1), int64_t{1}}));
  // dVt = d_out + the short conv's input gradient.
  ensure(dvt_, n_out);
  ENGRAM_CUDA_CHECK(cudaMemcpyAsync(dvt_.data(), d_dout, static_cast<size_t>(n_out) * sizeof(float),
                                    cudaMemcpyDeviceToDevice));
  if (c.short_conv) {
    ensure(du_, n_out);
    ensure(dxn_, n_out);
    detail::launch_conv_backward(conv_args(), d_dout, dvt_.data(), grads.conv_weight.data(),
                                 grads.conv_norm.data(), du_.data(), dxn_.data(), partial_.data());
  }
  // Gates: dkv, d_hidden, norm weight gradients.
  ensure(dkv_, tokens * kvr);
  ensure(ds_, tokens * M);
  detail::launch_gate_backward({dvt_.data(), kv_.data(), d_hidden, key_norm_.data(),
                                query_norm_.data(), key_rstd_.data(), query_rstd_.data(),
                                score_.data(), alpha_.data(), dkv_.data(), d_dhidden, ds_.data(),
                                grads.key_norm.data(), grads.query_norm.data(), partial_.data(),
                                tokens, M, d});
  // dW (kvr, dm) += dkv^T e: column-major dW^T (dm x kvr) = e^T (dm x tokens) * dkv (op T).
  const float one = 1.0f, zero = 0.0f;
  ENGRAM_CUBLAS_CHECK(cublasSgemm(handle(cublas_), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(dm),
                                  static_cast<int>(kvr), static_cast<int>(tokens), &one, e_.data(),
                                  static_cast<int>(dm), dkv_.data(), static_cast<int>(kvr), &one,
                                  grads.kv_weight.data(), static_cast<int>(dm)));
  if (c.bias)
    detail::launch_bias_grad(grads.kv_bias.data(), dkv_.data(), tokens, kvr, partial_.data());
  // de (tokens, dm) = dkv W: column-major de^T (dm x tokens) = W^T (dm x kvr) * dkv^T.
  ensure(de_, tokens * dm);
  ENGRAM_CUBLAS_CHECK(cublasSgemm(handle(cublas_), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(dm),
                                  static_cast<int>(tokens), static_cast<int>(kvr), &one,
                                  kv_weight_.data(), static_cast<int>(dm), dkv_.data(),
                                  static_cast<int>(kvr), &zero, de_.data(), static_cast<int>(dm)));
  // Sparse table gradient.
  const int64_t n = tokens * H;
  ensure(rows_sorted_, n);
  ensure(slots_sorted_, n);
  ensure(counts_, n);
  ensure(starts_, n);
  ensure(num_runs_, 1);
  ensure(grads.table_rows, n);
  ensure(grads.table_values, n * D);
  const int end_bit = static_cast<int>(table_end_bit_);
  const size_t temp_bytes = detail::table_grad_temp_bytes(n, end_bit);
  ensure(temp_, static_cast<int64_t>(temp_bytes));
  grads.table_unique = detail::launch_table_grad(
      {rows_.data(), slots_.data(), de_.data(), n, D, end_bit, rows_sorted_.data(),
       slots_sorted_.data(), counts_.data(), starts_.data(), num_runs_.data(), temp_.data(),
       temp_.size(), grads.table_rows.data(), grads.table_values.data()});
}

}  // namespace engram::cuda
