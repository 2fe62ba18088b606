// The Engram layer (ENGRAM_SPEC §3) forward and backward on the GPU, over an f32 or bf16 table:
// the computation of nn::EngramLayer<float> (src/nn/engram_layer.cpp).
//
//   GpuEngramLayer layer(config, params);                 // uploads the parameters
//   layer.forward(d_hidden, d_ids, B, T, table, d_offsets, d_out);
//   GpuEngramGrads grads(config);                          // zero-filled dense gradients
//   layer.backward(d_dout, d_hidden, d_dhidden, grads);    // d_dhidden += ...; grads += ...
//   grads.download(host_params_grads, host_table_grad);
//
// Precision (GpuEngramOptions):
//   activations kF32, Math::kExact   float32 everywhere; the (1+M)*d x d_mem projection and its
//                                    backward are plain FP32 GEMMs: matches the CPU layer to float
//                                    rounding (the default)
//   activations kF32, Math::kTf32    the same with TF32 tensor-core projections
//   activations kBF16                hidden, out, d_out, d_hidden and every saved per-token tensor
//                                    (gathered rows, projections) and backward intermediate (the
//                                    conv input's gradient, dkv, de) are bf16; the projections run
//                                    on bf16 tensor cores against a bf16 copy of the float32
//                                    weight; per-row statistics, parameters, their gradients and
//                                    all arithmetic stay float32
// The norms, gate, short conv and their backwards are kernels; the projection's bias is added
// inside the gate kernels (forward and backward), not stored. What forward saves per token is
// the gathered rows e, the projections kv (v, k_0 .. k_{M-1}) and per-row statistics (the norms'
// rstd, the score, the gate alpha): the gated value Vt = alpha (v + bias), its RMSNorm (the conv
// input) and the conv output are recomputed wherever they are needed, in float32 (so with bf16
// activations they are not rounded to bf16). The short conv runs as register walks along each
// sequence's positions (src/cuda/engram_layer.cu); its backward writes the conv input's gradient
// and the gate backward folds the conv norm's backward into d Vt without storing it. Limits of
// the kernels (ConfigError otherwise): kernel_size <= 8 with the short conv, hc_mult <= 32. The
// table gradient is sparse: the (token, head) row ids are radix-sorted (stably) with their slots
// and each distinct row's slot gradients summed in slot order; no table-sized buffer exists.
// Forward keeps what backward needs inside the object (one forward, then its backward; repeated
// steps reuse the buffers). forward() and backward() run on the default stream (backward sorts
// the table rows on a stream of its own, forked from and joined back into the default stream);
// the decoding entry points (forward_step, prefetch_step) on the stream they are given. In a build without CUDA every entry point throws
// engram::Error("... built without CUDA").
#pragma once

#include <cstdint>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engram/cuda/blas.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/gather.h"
#include "engram/cuda/graph.h"
#include "engram/cuda/phase_timer.h"
#include "engram/nn/engram_layer.h"
#include "engram/tensor/dtype.h"

namespace engram::cuda {

namespace detail {
template <class A>
struct ConvArgs;  // src/cuda/engram_layer_kernel.h
template <class A>
struct GateArgs;
}  // namespace detail

struct GpuEngramOptions {
  DType activations = DType::kF32;  // kF32 or kBF16
  Math math = Math::kExact;         // the float32 projections; unused for bf16 activations
};

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

// The short conv's state in a decoding step (GpuEngramLayer::forward_step): the conv inputs
// (RMSNorm'd Vt) of every sequence's recent positions in a ring, and where each row of the step
// belongs. With R = max_ngram_size * (kernel_size - 1), the conv's reach, `length` must be at least
// R + the most rows that one sequence has in a step, so that a step's rows never overwrite what an
// earlier row of the same step still reads.
struct GpuConvRing {
  void* data = nullptr;          // (sequences, length, M*d) of the activation type, device
  int64_t length = 0;            // ring positions per sequence
  const int32_t* seq = nullptr;  // (rows) device: each row's sequence
  const int32_t* pos = nullptr;  // (rows) device: each row's position in its sequence
};

class GpuEngramLayer {
 public:
  // Throws ConfigError for a bad config, a config beyond the kernels' limits (above), bad
  // options or parameters of the wrong sizes, engram::Error on a CUDA or cuBLAS failure.
  GpuEngramLayer(const nn::EngramLayerConfig& config, const nn::EngramParams<float>& params,
                 const GpuEngramOptions& options = {});
  ~GpuEngramLayer();
  GpuEngramLayer(const GpuEngramLayer&) = delete;
  GpuEngramLayer& operator=(const GpuEngramLayer&) = delete;

  const nn::EngramLayerConfig& config() const { return config_; }
  const GpuEngramOptions& options() const { return options_; }
  // Replaces the parameters (same sizes as the constructor's).
  void set_params(const nn::EngramParams<float>& params);

  // d_hidden (B, T, M, d); d_hash_ids (B*T, H) per-head ids; d_head_offsets (H) int64 first row
  // of each head; d_out (B, T, M, d). table.width must be the row width (n_embed / K).
  // The float overloads need options().activations == kF32, the bf16 ones kBF16 (InputError
  // otherwise). Precondition (not checked): offsets[h] + ids[t, h] names a row of the table.
  void forward(const float* d_hidden, const int32_t* d_hash_ids, int64_t batch, int64_t seq,
               const DeviceTable& table, const int64_t* d_head_offsets, float* d_out);
  void forward(const bf16* d_hidden, const int32_t* d_hash_ids, int64_t batch, int64_t seq,
               const DeviceTable& table, const int64_t* d_head_offsets, bf16* d_out);

  // Decoding: the layer's output for `rows` tokens that belong to several sequences, row r at
  // position ring.pos[r] of sequence ring.seq[r] (a sequence's rows in a step take consecutive
  // positions), as forward() over each whole sequence gives it at those positions: the short
  // conv reads earlier positions from the ring and stores this step's (see GpuConvRing). d_hidden
  // (rows, M, d), d_hash_ids (rows, H), d_out (rows, M, d). float32 activations only (InputError
  // otherwise, or for a ring shorter than the conv's reach + 1). Leaves nothing for backward:
  // backward() after forward_step throws engram::Error. Everything is enqueued on `stream` (a
  // cudaStream_t; nullptr: the default stream), in a fixed launch sequence for a given row count
  // once the layer's buffers have grown to it (CUDA-graph capture); nothing waits.
  void forward_step(const float* d_hidden, const int32_t* d_hash_ids, int64_t rows,
                    const DeviceTable& table, const int64_t* d_head_offsets,
                    const GpuConvRing& ring, float* d_out, void* stream = nullptr);
  // Gathers the table rows of a coming forward_step now, on `stream`, so that the gather (from
  // host memory over PCIe, say) overlaps whatever runs meanwhile; the next forward_step of
  // `rows` rows reads them instead of gathering (it must get the same hash ids, offsets and
  // table, and its stream must wait for this one). InputError as forward_step.
  void prefetch_step(const int32_t* d_hash_ids, int64_t rows, const DeviceTable& table,
                     const int64_t* d_head_offsets, void* stream = nullptr);
  // The device addresses a captured forward_step holds: its step buffers and the parameters.
  // They change when a buffer is regrown (forward(), a larger reserve_step) or set_params runs.
  std::vector<const void*> step_addresses() const;
  // Grows the buffers forward_step uses to `rows` rows now, so that steps of up to that many
  // rows allocate nothing (a captured CUDA graph keeps their addresses). forward() and backward()
  // may grow them again.
  void reserve_step(int64_t rows);

  // After forward: from d_dout (B, T, M, d) and the same d_hidden, d_dhidden (+=), the dense
  // parameter gradients (+=) and the sparse table gradient (replaced). Waits for the device
  // (the number of unique rows is read back).
  void backward(const float* d_dout, const float* d_hidden, float* d_dhidden,
                GpuEngramGrads& grads);
  void backward(const bf16* d_dout, const bf16* d_hidden, bf16* d_dhidden, GpuEngramGrads& grads);

  // Profiling: when on, forward and backward record a CUDA event after each phase (gather, the
  // projections, gate, conv, ...). phase_times() waits for the device and returns each phase's
  // name and device time in ms, forward's then backward's (forward starts a new list). Off by
  // default; the events cost a few microseconds.
  void set_profiling(bool on) { profiling_ = on; }
  std::vector<std::pair<std::string, float>> phase_times() const;

 private:
  void mark(const char* phase);  // records an event when profiling; "" starts a new list
  template <class A>
  void forward_impl(const A* d_hidden, const int32_t* d_hash_ids, int64_t batch, int64_t seq,
                    const DeviceTable& table, const int64_t* d_head_offsets, A* d_out);
  template <class A>
  void backward_impl(const A* d_dout, const A* d_hidden, A* d_dhidden, GpuEngramGrads& grads);
  // The short conv's arguments over the saved batch (forward and backward use the same).
  template <class A>
  detail::ConvArgs<A> conv_args();
  // Grows the per-token buffers of a forward (of either kind) to `tokens` rows of A (a step's
  // Vt and xn: reserve_step).
  template <class A>
  void reserve(int64_t tokens);
  // The gate kernel's arguments over those buffers (the conv norm's too, with the short conv).
  template <class A>
  detail::GateArgs<A> gate_args(const A* kv, const A* hidden, A* vt, A* xn, int64_t tokens);
  void check_activations(DType want, const char* where) const;

  nn::EngramLayerConfig config_;
  GpuEngramOptions options_;
  std::unique_ptr<Blas> blas_;
  DeviceBuffer<float> kv_weight_, kv_bias_, key_norm_, query_norm_, conv_weight_, conv_norm_;
  DeviceBuffer<bf16> kv_weight_bf16_;  // bf16 activations: the projection's weight, rounded
  DeviceBuffer<float> conv_weight_t_;  // conv_weight (C, kernel) transposed to (kernel, C)
  // Saved by forward; per-token tensors are bytes holding the activation type.
  int64_t batch_ = 0, seq_ = 0, table_end_bit_ = 1;
  bool stepped_ = false;  // the last forward was forward_step (nothing saved for backward)
  // What prefetch_step gathered for the next forward_step: rows, from these ids and table.
  int64_t prefetched_ = -1;
  const int32_t* prefetched_ids_ = nullptr;
  const void* prefetched_table_ = nullptr;
  DeviceBuffer<int64_t> rows_;
  DeviceBuffer<int32_t> slots_;
  DeviceBuffer<uint8_t> e_, kv_;
  DeviceBuffer<uint8_t> vt_, xn_;  // forward_step's Vt and conv input
  DeviceBuffer<float> key_rstd_, query_rstd_, score_, alpha_, conv_rstd_;
  // Backward's scratch.
  DeviceBuffer<uint8_t> dxn_, dkv_, de_;
  DeviceBuffer<float> ds_, partial_;
  DeviceBuffer<int64_t> rows_sorted_;
  DeviceBuffer<int32_t> slots_sorted_, counts_, starts_, num_runs_;
  DeviceBuffer<uint8_t> temp_;
  // backward's side stream (non-blocking) and its fork and join events: the sparse table
  // gradient's plan runs there. Made on the first backward.
  struct SideStream {
    Stream stream{true};
    Event fork, join;
  };
  std::unique_ptr<SideStream> side_;
  // Profiling.
  bool profiling_ = false;
  PhaseTimer timer_;
};

}  // namespace engram::cuda
