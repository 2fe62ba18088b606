// The optimizers of engram/train/optimizer.h with their state on the GPU, stepping a
// model::GpuTransformer's parameters in place, so that a training step moves no gradient and no
// parameter over PCIe (only the gradient norm comes back, and the Engram layers' small dense
// parameters for sync_engram_params()).
//
//   GpuOptimizer        AdamW on every dense parameter, SparseRowAdam on the embedding and on
//                       every Engram table, global-norm clipping over all of their gradients
//   GpuGradAccumulator  the mean of several micro-batches' gradients (train.grad_accum > 1)
//
//   model::GpuTransformer gpu(cpu_model);
//   GpuOptimizer opt(gpu, adamw_options);
//   gpu.forward(...); gpu.backward();
//   GpuGradients g = opt.model_gradients();             // or accumulator.mean(accum)
//   double norm = opt.clip_grad_norm(g, max_norm);      // scales g in place
//   opt.step(g, lr, engram_lr_multiplier * lr);         // then the next forward sees the update
//
// Arithmetic: every update is the CPU optimizers' per-element float arithmetic (cuda::adamw_step,
// cuda::sparse_row_adam_step), so on equal gradients the parameters and moments are equal bit
// for bit. The gradient norm is the same sum of squares in double, in another order (blocks
// instead of the CPU's 32768-element chunks): it differs from train::clip_grad_norm's by
// rounding (~1e-15 relative), so when clipping is active the scale max_norm / (norm + 1e-6),
// rounded to float, can differ from the CPU's in the last bit.
//
// Checkpoints: the state has exactly the layout of the host optimizers (AdamW::state(),
// SparseRowAdam::state() and last_step(), the step counts), and download_state / upload_state
// copy it to and from host optimizer objects, so a checkpoint written from the GPU is the CPU
// trainer's file and a run can resume on either device.
//
// Memory (device): two floats per dense parameter (m, v); per table (rows, width) two floats per
// element and one int64 per row, as on the CPU.
//
// Everything runs on the default CUDA stream. A build without CUDA compiles these classes; their
// constructors throw engram::Error("... built without CUDA").
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/cuda/buffer.h"
#include "engram/cuda/model_ops.h"
#include "engram/model/gpu_transformer.h"
#include "engram/train/optimizer.h"

namespace engram::train {

// The gradients one step applies, in device memory: dense[i] holds the gradient of the i-th
// group of GpuTransformer::dense_params() (that group's size); sparse[j] the gradient of the
// j-th table of GpuTransformer::sparse_grads() (the embedding first, then the Engram tables).
// clip_grad_norm scales the values in place.
struct GpuGradients {
  std::vector<float*> dense;
  std::vector<model::GpuSparseGrad> sparse;
};

class GpuOptimizer {
 public:
  // Registers every dense parameter of `model` (AdamW under `dense`; weight decay on the groups
  // GpuParam::decay marks, as the CPU trainer does) and every sparse table (SparseRowAdam under
  // `sparse`), with zero moments and step counts. `model` must outlive the optimizer. Throws
  // ConfigError for bad options, engram::Error on a CUDA failure or without CUDA.
  GpuOptimizer(model::GpuTransformer& model, const AdamWOptions& dense, AdamOptions sparse = {});

  // The model's own gradients of its last backward (train.grad_accum = 1).
  GpuGradients model_gradients();

  // train::clip_grad_norm on the device: norm = sqrt(sum of g^2 over every dense gradient and
  // every sparse gradient's values), and when the norm is finite every gradient is multiplied by
  // float(max_norm / (norm + 1e-6)) if that is < 1. Returns the norm before clipping (a
  // non-finite norm leaves the gradients as they are). Pass INFINITY for no clipping. Throws
  // InputError for max_norm <= 0 or NaN, or gradients not shaped like this optimizer's groups.
  double clip_grad_norm(GpuGradients& grads, double max_norm);

  // One AdamW::step(lr) of the dense groups, one SparseRowAdam::step of the embedding at lr and
  // of every Engram table at table_lr, then GpuTransformer::sync_engram_params(). Every step
  // count advances by one (tables whose gradient has no rows included). Throws InputError for a
  // learning rate < 0 or not finite or gradients shaped otherwise (nothing changed).
  void step(const GpuGradients& grads, double lr, double table_lr);

  int64_t dense_steps() const { return dense_steps_; }
  // The tables' names (GpuSparseGrad::name), in GpuGradients::sparse's order.
  std::vector<std::string> sparse_names() const;

  // Copies the state into host optimizers registered like this one: `dense` with the same
  // groups (matched by name, sizes equal), `sparse` one SparseRowAdam per table in
  // sparse_names() order (rows and width equal): moments, last_step and step counts. Throws
  // InputError on a mismatch (before anything is copied).
  void download_state(AdamW& dense, std::span<SparseRowAdam* const> sparse) const;
  // The reverse: replaces this optimizer's state with the host optimizers' (resume).
  void upload_state(AdamW& dense, std::span<SparseRowAdam* const> sparse);

 private:
  struct DenseGroup {
    std::string name;
    float* param;
    int64_t size;
    bool decay;
    size_t offset;  // into m_ and v_
  };
  struct SparseGroup {
    std::string name;
    float* table;
    int64_t rows, width;
    cuda::DeviceBuffer<float> m, v;         // (rows, width)
    cuda::DeviceBuffer<int64_t> last_step;  // (rows)
    int64_t steps = 0;
  };
  // Throws InputError naming `where` unless grads has this optimizer's shape.
  void check(const GpuGradients& grads, const char* where) const;
  void match(AdamW& dense, std::span<SparseRowAdam* const> sparse, const char* where) const;

  model::GpuTransformer* model_;
  AdamWOptions dense_options_;
  AdamOptions sparse_options_;
  std::vector<DenseGroup> dense_;
  cuda::DeviceBuffer<float> m_, v_;  // every dense group, back to back
  int64_t dense_steps_ = 0;
  std::vector<SparseGroup> sparse_;
};

// Sums the gradients of several backward passes of one GpuTransformer on the device and hands
// out their mean, as the CPU trainer does for train.grad_accum > 1:
//   dense:  0 + g_1 + ... + g_k, elementwise, then * float(1 / k)
//   sparse: the union of the rows (ascending); a row's value is 0 plus its values in the
//           micro-batches that have it, in micro-batch order, then * float(1 / k)
// which is the CPU's arithmetic bit for bit (up to the sign of a zero sum). The sparse union is
// cuda::embedding_backward over the concatenated (row, values) lists of the micro-batches.
class GpuGradAccumulator {
 public:
  // `model` must outlive the accumulator. Allocates one dense gradient arena.
  explicit GpuGradAccumulator(model::GpuTransformer& model);

  // Forgets the sums (the start of a step).
  void clear();
  // Adds the model's gradients of its last backward.
  void add();
  // Scales the sums by float(1 / count) (count: the add() calls since clear()) and returns
  // them; valid until the next clear() or add(). A second call before those returns the same
  // gradients (as the first call's caller left them: clipped, say) without scaling again.
  // Throws InputError without an add().
  GpuGradients mean();

 private:
  struct Table {
    cuda::DeviceBuffer<int64_t> rows;  // the micro-batches' rows, concatenated (capacity)
    cuda::DeviceBuffer<float> values;  // their values (capacity)
    int64_t count = 0;                 // rows used
    cuda::GpuSparseRowGrad sum;        // the union, made by mean()
  };
  model::GpuTransformer* model_;
  cuda::DeviceBuffer<float> dense_;  // every dense group, back to back
  std::vector<size_t> offsets_;      // of each group in dense_
  std::vector<Table> tables_;
  int64_t count_ = 0;
  bool averaged_ = false;  // mean() has scaled the sums
};

}  // namespace engram::train
