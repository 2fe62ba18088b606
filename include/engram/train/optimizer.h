// Optimizers for training, on CPU over float buffers (fp32 master weights, fp32 state).
//
//   LrSchedule     linear warm-up, then cosine decay to a floor
//   AdamW          dense weights, torch.optim.AdamW semantics, per-group "no weight decay"
//   SparseRowAdam  Engram tables: Adam on the rows a step touched, lazily exact moments
//   clip_grad_norm global-norm clipping over dense buffers and sparse row gradients
//   add_sparse_grad  the sum of two sparse row gradients (gradient accumulation)
//
// The recipe (issue): dense weights with AdamW under the schedule; Engram tables with Adam at
// kEngramLrMultiplier x the scheduled rate and no weight decay; gradients clipped first.
//
// Every update is elementwise (or rowwise), so results do not depend on the thread count.
// State is exposed as named spans (state()) so that checkpoints can save and restore it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/nn/engram_layer.h"

namespace engram::train {

// The Engram tables' learning rate is this multiple of the dense base rate (and schedule).
inline constexpr double kEngramLrMultiplier = 5.0;

// lr(step), step counted from 0, with W = warmup_steps, S = total_steps, base = base_lr,
// floor = min_lr_ratio * base:
//   step <  W:        base * step / W                           (lr(0) = 0)
//   W <= step < S:    floor + (base - floor) * (1 + cos(pi * (step - W) / (S - W))) / 2
//   step >= S:        floor
// So lr(W) = base, the cosine's midpoint gives (base + floor) / 2 and it reaches floor at S.
struct LrSchedule {
  double base_lr = 3e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.1;

  double lr(int64_t step) const;
  // Throws ConfigError naming the field: base_lr < 0 or not finite, warmup_steps < 0,
  // total_steps < warmup_steps, min_lr_ratio outside [0, 1].
  void validate() const;
};

// Defaults are PyTorch's.
struct AdamOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // Throws ConfigError: betas outside [0, 1), eps < 0.
  void validate() const;
};

struct AdamWOptions {
  AdamOptions adam;
  double weight_decay = 0.01;  // decoupled: p -= lr * weight_decay * p (PyTorch's default)
  // Throws ConfigError as AdamOptions, or weight_decay < 0.
  void validate() const;
};

// A state buffer under a name, for checkpoints: read it to save, write through it to restore.
template <class T>
struct NamedState {
  std::string name;
  std::span<T> values;
};

// torch.optim.AdamW, per element, with t the step count after increment:
//   p -= lr * weight_decay * p                  (groups with decay only)
//   m  = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// which is p -= lr * m_hat / (sqrt(v_hat) + eps). Parameters and gradients are registered once
// (add_group) and read in place at every step().
class AdamW {
 public:
  explicit AdamW(AdamWOptions options);

  // Registers `size` parameters and their gradient buffer (both must outlive the optimizer);
  // decay = false for norm weights and biases. Throws InputError for a null buffer with
  // size > 0, a negative size or a name already registered.
  void add_group(std::string name, float* param, const float* grad, int64_t size,
                 bool decay = true);

  // One update of every group at learning rate lr. Throws InputError for lr < 0 or not finite.
  void step(double lr);

  const AdamWOptions& options() const { return options_; }
  int64_t steps() const { return step_; }   // t: updates done so far
  void set_steps(int64_t t) { step_ = t; }  // for restoring a checkpoint

  // "<group>.exp_avg" (m) and "<group>.exp_avg_sq" (v) of every group, in registration order.
  std::vector<NamedState<float>> state();

 private:
  struct Group {
    std::string name;
    float* param;
    const float* grad;
    int64_t size;
    bool decay;
    std::vector<float> m, v;  // (size)
  };
  AdamWOptions options_;
  std::vector<Group> groups_;
  int64_t step_ = 0;
};

// Adam (no weight decay) for a table (rows, width) whose gradient is sparse. step() updates
// only the rows in the gradient. Moments are lazily exact: before a row's update, m and v are
// multiplied by beta1^k and beta2^k for the k steps since the row last moved, exactly what k
// zero-gradient steps would have done to them; bias correction uses the global step t.
//
// Unlike dense Adam fed zero gradients, the parameters of an untouched row do NOT move on the
// skipped steps (dense Adam would keep applying the decaying momentum m_hat / sqrt(v_hat)).
// A row never touched keeps its initial values.
//
// Memory: the state is dense, rows * width * 2 floats plus one int64 per row (three times the
// table's size, about) — fine for CPU-sized tables.
class SparseRowAdam {
 public:
  // table (rows, width), outliving the optimizer. Throws InputError for a null table with
  // rows * width > 0 or negative sizes; ConfigError for bad options.
  SparseRowAdam(float* table, int64_t rows, int64_t width, AdamOptions options = {});

  // One step at learning rate lr (pass kEngramLrMultiplier * the dense rate). Throws InputError
  // (and changes nothing) for a row out of range, rows not strictly increasing, a width other
  // than the table's, values not rows * width long, or lr < 0 or not finite.
  void step(const nn::SparseRowGrad<float>& grad, double lr);

  int64_t rows() const { return rows_; }
  int64_t width() const { return width_; }
  int64_t steps() const { return step_; }  // t: steps done so far (touched rows or not)
  void set_steps(int64_t t) { step_ = t; }

  // "exp_avg", "exp_avg_sq": (rows, width), each row as of its last update.
  std::vector<NamedState<float>> state();
  // (rows) the step t at which each row was last updated, 0 for never.
  std::span<int64_t> last_step() { return last_step_; }

 private:
  float* table_;
  int64_t rows_, width_;
  AdamOptions options_;
  std::vector<float> m_, v_;
  std::vector<int64_t> last_step_;
  int64_t step_ = 0;
};

// acc += g for sparse row gradients whose rows are ascending: the union of the rows, ascending,
// each row's values summed (acc's first). An empty acc becomes g; an empty g changes nothing.
// Throws InputError when both have rows of different widths. Gradient accumulation over
// micro-batches uses it (train(), and the GPU path's tests as the reference).
void add_sparse_grad(nn::SparseRowGrad<float>& acc, const nn::SparseRowGrad<float>& g);

// Global-norm clipping: norm = sqrt(sum of g^2 over every dense buffer and every sparse
// gradient's values), accumulated in double in a fixed order (independent of threads). When
// the norm is finite, every gradient is multiplied by min(1, max_norm / (norm + 1e-6)) as
// torch.nn.utils.clip_grad_norm_ does; a non-finite norm is returned with the gradients left
// as they are (the caller should skip the step). Returns the norm before clipping.
// Throws InputError for max_norm <= 0 or NaN, or a sparse gradient whose values are not
// rows * width long.
double clip_grad_norm(std::span<const std::span<float>> dense,
                      std::span<nn::SparseRowGrad<float>* const> sparse, double max_norm);

}  // namespace engram::train
