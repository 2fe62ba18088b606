// The Engram layer (ENGRAM_SPEC §3) forward and backward on the GPU, float32 activations, over an
// f32 or bf16 table: the computation of nn::EngramLayer<float> (src/nn/engram_layer.cpp), which
// it matches to float rounding.
//
//   GpuEngramLayer layer(config, params);                 // uploads the parameters
//   layer.forward(d_hidden, d_ids, B, T, table, d_offsets, d_out);
//   GpuEngramGrads grads(config);                          // zero-filled dense gradients
//   layer.backward(d_dout, d_hidden, d_dhidden, grads);    // d_dhidden += ...; grads += ...
//   grads.download(host_params_grads, host_table_grad);
//
// The (1+M)*d x d_mem projection and its backward are cuBLAS SGEMMs (FP32 math, no TF32); the
// norms, gate, short conv and their backwards are kernels. The table gradient is sparse: the
// (token, head) row ids are radix-sorted (stably) with their slots and each distinct row's slot
// gradients summed in slot order; no table-sized buffer exists. Forward keeps what backward
// needs inside the object (one forward, then its backward; repeated steps reuse the buffers).
// Everything runs on the default stream. In a build without CUDA every entry point throws
// engram::Error("... built without CUDA").
#pragma once

#include <cstdint>

#include "engram/cuda/buffer.h"
#include "engram/cuda/gather.h"
#include "engram/nn/engram_layer.h"

namespace engram::cuda {

namespace detail {
struct ConvArgs;  // src/cuda/engram_layer_kernel.h
}  // namespace detail

// Gradients on the device: dense ones laid out like nn::EngramParams (accumulated, +=), and the
// table's sparse one (replaced by each backward): table_unique rows (ascending) in
// table_rows[0 .. table_unique) and their gradients in table_values (table_unique, table_width).
struct GpuEngramGrads {
  DeviceBuffer<float> kv_weight, kv_bias, key_norm, query_norm, conv_weight, conv_norm;
  DeviceBuffer<int64_t> table_rows;  // capacity: tokens * heads
  DeviceBuffer<float> table_values;  // capacity: tokens * heads * width
  int64_t table_unique = 0;
  int64_t table_width = 0;

  GpuEngramGrads() = default;
  // Dense buffers sized for `c`, zero-filled.
  explicit GpuEngramGrads(const nn::EngramLayerConfig& c);
  // Sets the dense gradients to zero.
  void zero();
  // Copies everything to the host: `dense` is resized like EngramParams::zeros, `table` replaced.
  void download(nn::EngramParams<float>& dense, nn::SparseRowGrad<float>& table) const;
};

class GpuEngramLayer {
 public:
  // Throws ConfigError for a bad config or parameters of the wrong sizes, engram::Error on a
  // CUDA or cuBLAS failure.
  GpuEngramLayer(const nn::EngramLayerConfig& config, const nn::EngramParams<float>& params);
  ~GpuEngramLayer();
  GpuEngramLayer(const GpuEngramLayer&) = delete;
  GpuEngramLayer& operator=(const GpuEngramLayer&) = delete;

  const nn::EngramLayerConfig& config() const { return config_; }
  // Replaces the parameters (same sizes as the constructor's).
  void set_params(const nn::EngramParams<float>& params);

  // d_hidden (B, T, M, d); d_hash_ids (B*T, H) per-head ids; d_head_offsets (H) int64 first row
  // of each head; d_out (B, T, M, d). table.width must be the row width (n_embed / K).
  // Precondition (not checked): offsets[h] + ids[t, h] names a row of the table.
  void forward(const float* d_hidden, const int32_t* d_hash_ids, int64_t batch, int64_t seq,
               const DeviceTable& table, const int64_t* d_head_offsets, float* d_out);

  // After forward: from d_dout (B, T, M, d) and the same d_hidden, d_dhidden (+=), the dense
  // parameter gradients (+=) and the sparse table gradient (replaced). Waits for the device
  // (the number of unique rows is read back).
  void backward(const float* d_dout, const float* d_hidden, float* d_dhidden,
                GpuEngramGrads& grads);

 private:
  // The short conv's arguments over the saved batch (forward and backward use the same).
  detail::ConvArgs conv_args();

  nn::EngramLayerConfig config_;
  void* cublas_ = nullptr;  // cublasHandle_t
  DeviceBuffer<float> kv_weight_, kv_bias_, key_norm_, query_norm_, conv_weight_, conv_norm_;
  // Saved by forward.
  int64_t batch_ = 0, seq_ = 0, table_end_bit_ = 1;
  DeviceBuffer<int64_t> rows_;
  DeviceBuffer<int32_t> slots_;
  DeviceBuffer<float> e_, kv_, key_rstd_, query_rstd_, score_, alpha_, vt_, xn_, conv_rstd_, u_;
  // Backward's scratch.
  DeviceBuffer<float> dvt_, du_, dxn_, dkv_, ds_, de_, partial_;
  DeviceBuffer<int64_t> rows_sorted_;
  DeviceBuffer<int32_t> slots_sorted_, counts_, starts_, num_runs_;
  DeviceBuffer<uint8_t> temp_;
};

}  // namespace engram::cuda
