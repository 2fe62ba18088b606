// The language model on the GPU: model::Transformer<float> (engram/model/transformer.h) with its
// parameters, gradients and saved activations in device memory, forward and backward built from
// the engram::cuda pieces:
//
//   embedding + broadcast        cuda::embedding_forward (model_ops.h)
//   Engram layers                cuda::GpuEngramLayer, one per Engram layer
//   mHC (hc_mult > 1)            cuda::hc_coefficients / hc_readout / hc_write_back / head read-out
//   RMSNorm, SwiGLU gate, RoPE   cuda::rmsnorm_*, swiglu_gate_*, rope_* (ops.h)
//   attention                    q/k/v/o projections (cuda::Blas) around flash_attention_*
//   dense FFN                    cuda::Blas GEMMs around the SwiGLU gate
//   MoE                          cuda::moe_forward / moe_backward
//   head and loss                a cuda::Blas GEMM and cuda::cross_entropy_forward_backward
//   sparse gradients             cuda::embedding_backward (embedding), the Engram layers (tables)
//
//   model::Transformer<float> cpu(config, head_sizes, seed);
//   model::GpuTransformer gpu(cpu);                      // uploads parameters, buffers, tables
//   double loss = gpu.forward(inputs, targets, B, T, hash_ids);
//   gpu.backward();
//   gpu.download_grads(grads, embed_grad, table_grads);  // CPU layouts, for tests / checkpoints
//
// Precision: GpuTransformerOptions{DType::kF32, Math::kExact} (the default and, for now, the only
// supported mode) computes in float32 with plain FP32 GEMMs: the CPU model's arithmetic to float
// rounding. Math::kTf32 runs the dense GEMMs (projections, FFN, head) on TF32 tensor cores;
// activations kBF16 throws ConfigError (not implemented yet). The residual streams X (N, n, C)
// are float32 in every mode.
//
// Memory: every trained parameter lives in one float32 device arena in the order of
// TransformerParams::named() (embedding and Engram tables included), every dense gradient in a
// second arena in the same order (the embedding and the tables, whose gradients are sparse, have
// no slot there). The MoE selection biases are separate device buffers. Each Engram layer object
// keeps its own copy of its dense parameters (set from the arena by the constructor and by
// sync_engram_params()).
//
// Everything runs on the default CUDA stream; forward() and backward() return after the device
// is done (the loss and the sparse gradients' row counts are read back). A build without CUDA
// compiles this class; its constructor throws engram::Error("... built without CUDA").
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/cuda/blas.h"
#include "engram/cuda/engram_layer.h"
#include "engram/cuda/gather.h"
#include "engram/cuda/moe.h"
#include "engram/model/transformer.h"
#include "engram/tensor/dtype.h"

namespace engram::model {

struct GpuTransformerOptions {
  DType activations = DType::kF32;  // kF32 (kBF16 is not implemented yet: ConfigError)
  cuda::Math math = cuda::Math::kExact;
  // false: inference only (infer::GpuDecoder): no gradient arena and no Engram gradient buffers,
  // so the device holds the parameters once; backward(), download_grads(), dense_params() and
  // sparse_grads() then throw engram::Error.
  bool gradients = true;
};

// Device views of the parameters for inference code (infer::GpuDecoder), valid while the
// GpuTransformer lives. hc pointers are null when hc_mult == 1.
struct GpuHcWeights {
  const float* phi = nullptr;
  const float* b = nullptr;
  const float* alpha = nullptr;
};
struct GpuLayerWeights {
  const float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm;
  const float *w1, *w3, *w2;              // the dense FFN (null in MoE layers)
  cuda::GpuMoeWeights<float> moe;         // MoE layers (null pointers elsewhere)
  const float* moe_bias;                  // (E) selection biases, or null
  GpuHcWeights hc_attn, hc_ffn;
  cuda::GpuEngramLayer* engram;           // null where the layer has no Engram
  cuda::DeviceTable table;                // its table in the arena (data null when the CPU model
                                          // had no table, e.g. loaded without tables)
  const int64_t* head_offsets;            // (H) device: the first row of each hash head
};
struct GpuModelWeights {
  const float* embed;  // (V, C)
  GpuHcWeights hc_head;
  const float* final_norm;  // (C)
  const float* head;        // (V, C)
  std::vector<GpuLayerWeights> layers;
};

// One dense parameter on the device, for a GPU optimizer: `size` floats at `param` and its
// gradient at `grad` (same layout). decay: the CPU trainer's weight-decay rule (tensors of two
// or more dimensions).
struct GpuParam {
  std::string name;  // TransformerParams::named()'s name
  std::vector<int64_t> shape;
  float* param;
  float* grad;
  int64_t size;
  bool decay;
};

// A sparse gradient on the device (valid until the next backward): `unique` distinct rows
// (ascending) at rows[0 .. unique) and their gradients at values (unique, width); the table it
// belongs to is `table` (table_rows, width) in the parameter arena. The values are writable so
// that an optimizer can clip them in place (train::GpuOptimizer::clip_grad_norm).
struct GpuSparseGrad {
  std::string name;  // "embed" or "layers.{l}.engram.table"
  float* table;
  int64_t table_rows;
  int64_t width;
  const int64_t* rows;
  float* values;
  int64_t unique;
};

class GpuTransformer {
 public:
  // Uploads a CPU model's config, parameters, buffers (MoE biases) and Engram tables (float32).
  // Throws ConfigError for options it does not support (bf16 activations), InputError for a
  // head_dim other than 64 or 128 (the flash-attention kernels' sizes), engram::Error on a CUDA
  // failure or in a build without CUDA.
  explicit GpuTransformer(const Transformer<float>& cpu, const GpuTransformerOptions& options = {});
  ~GpuTransformer();
  GpuTransformer(const GpuTransformer&) = delete;
  GpuTransformer& operator=(const GpuTransformer&) = delete;

  const ModelConfig& config() const;
  const GpuTransformerOptions& options() const;

  // Host inputs, targets (B, T) (targets < 0 not counted) and hash_ids (L_engram, B, T, H), the
  // same contract as Transformer::forward (the same InputErrors). Returns the mean
  // cross-entropy and saves activations for backward().
  double forward(const int64_t* inputs, const int64_t* targets, int64_t batch, int64_t seq,
                 std::span<const int32_t> hash_ids = {});
  // Gradients of the last forward's loss: overwrites the dense gradient arena and the sparse
  // gradients. Throws engram::Error without a forward.
  void backward();

  // ---- Host copies, in the CPU model's layouts (tests, checkpoints) ----
  // Every parameter, the Engram tables and the MoE bias buffers (out is resized).
  void download_params(TransformerParams<float>& out) const;
  // Dense gradients (the layout of Transformer::grads(): no embed, no tables), the embedding's
  // sparse gradient and one sparse gradient per Engram layer (layer_ids order). `grads` is laid
  // out on the first call and overwritten in place after that, so pointers into it stay valid.
  void download_grads(TransformerParams<float>& grads, nn::SparseRowGrad<float>& embed,
                      std::vector<nn::SparseRowGrad<float>>& tables) const;
  // Logits of the last forward, (B*T, V) row-major.
  std::vector<float> logits() const;
  // Expert loads of the last forward, one (E) vector per layer (empty for dense layers).
  std::vector<std::vector<int64_t>> moe_expert_counts() const;
  // nn::aux_free_bias_update on every MoE layer with the last forward's loads and moe.gamma.
  void update_moe_bias();
  // Replaces every parameter, table and MoE bias from host values laid out like the CPU model's.
  void upload_params(const TransformerParams<float>& params);

  // ---- Device access, for a GPU optimizer ----
  // The dense parameters (everything but the embedding and the Engram tables).
  std::vector<GpuParam> dense_params();
  // The embedding's sparse gradient, then one per Engram layer (layer_ids order).
  std::vector<GpuSparseGrad> sparse_grads();
  // The Engram layers compute with their own copies of their dense parameters: call this after
  // changing those parameters in the arena (an optimizer step) so that the next forward sees them.
  void sync_engram_params();

  // ---- Device access, for inference ----
  GpuModelWeights weights();
  // The cuBLAS handle the model's GEMMs run on (the default stream).
  cuda::Blas& blas();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::model
