// The training loop and evaluation of a language model on prepared token shards.
//
// One optimizer step s (0-based) of train():
//   for k in 0 .. grad_accum-1:  batch = loader.batch_at(s * grad_accum + k)   (pure in seed, s, k)
//                                 loss_k = model.forward(batch); model.backward()
//                                 gradients summed (dense buffers and sparse rows), MoE biases
//                                 updated from the micro-batch's expert loads
//   gradients scaled by 1 / grad_accum; train_loss = mean of loss_k
//   norm = clip_grad_norm(all gradients, grad_clip)     (a non-finite norm stops the run)
//   lr = LrSchedule{lr, warmup_steps, steps, min_lr_ratio}.lr(s + 1)
//   AdamW(lr) on every dense parameter: weight decay on matrices (2-D and up), none on norms,
//     biases and the mHC scalars
//   SparseRowAdam(lr) on the token-embedding rows the step touched (no weight decay)
//   SparseRowAdam(engram_lr_multiplier * lr) on the Engram table rows touched (no weight decay)
// With device "cuda" everything runs on the GPU: forward, backward and evaluation
// (model::GpuTransformer, float32), gradient accumulation (train::GpuGradAccumulator), clipping
// and the optimizers (train::GpuOptimizer: the same per-element updates as above; the gradient
// norm summed in another order). Only the norm comes back each step; parameters and optimizer
// state are copied to the host when a checkpoint is written (and up on resume). Checkpoints are
// the same files either way, so a run may be resumed on the other device.
// Every eval_every steps, and after the last, the validation loss over eval_tokens tokens and
// a checkpoint (RunDir::checkpoint(), atomic) are written; the run state saved is the step, so
// `resume` continues with exactly the batches, moments and biases of an uninterrupted run:
// the losses are bit-identical when the thread count is the same.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "engram/model/config.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/transformer.h"
#include "engram/train/data_loader.h"
#include "engram/train/metrics.h"
#include "engram/train/run.h"

namespace engram::train {

struct TrainOptions {
  std::string out_dir;       // the run directory, created if missing
  std::optional<int64_t> steps;  // overrides train.steps (the schedule's length and the end)
  std::optional<int64_t> stop_at;  // stop (with a checkpoint) after this many steps
  bool resume = false;       // continue from out_dir's checkpoint
  std::string tokenizer;     // overrides the tokenizer named by the data manifest
  std::string device = "cpu";  // "cpu" or "cuda" (ConfigError otherwise, Error without a GPU)
  // device "cuda": the GPU model's precision (default float32 with exact FP32 GEMMs;
  // math = cuda::Math::kTf32 runs the dense GEMMs on TF32 tensor cores).
  model::GpuTransformerOptions gpu;
  // Set from elsewhere (a signal handler) to stop after the current step with a checkpoint.
  const std::atomic<bool>* interrupt = nullptr;
  std::function<void(const StepReport&)> on_step;  // progress (e.g. the CLI's bar)
  std::function<void(const std::string&)> on_note;  // one-line notes (checkpoint saved, ...)
};

struct TrainResult {
  int64_t steps_done = 0;
  bool interrupted = false;
  double last_train_loss = 0;
  std::optional<double> last_val_loss;
  double tokens_per_s = 0;  // mean over this process's steps
  std::string checkpoint;
};

// Trains `config` (its train.data must name a prepared data folder). Without resume an existing
// checkpoint in out_dir is an error (nothing is overwritten); with resume the checkpoint's
// model sections ([model], [moe], [engram]) must equal the config's. Throws ConfigError,
// InputError, IoError or FormatError naming the file and field.
TrainResult train(const model::ModelConfig& config, const TrainOptions& options);

struct EvalResult {
  double loss = 0;           // mean cross-entropy (nats per token)
  double ppl = 0;            // exp(loss)
  double bits_per_byte = 0;  // loss summed over tokens / ln 2 / UTF-8 bytes of those tokens
  int64_t tokens = 0;        // tokens scored
  int64_t bytes = 0;
};

// Byte length of every token id's text (special added tokens count 0 bytes).
std::vector<int32_t> token_byte_lengths(const text::Tokenizer& tokenizer);

// Mean loss over the first sequential windows of `loader` (reset first) covering at least
// max_tokens tokens (all windows when max_tokens <= 0). byte_lengths as token_byte_lengths.
// window_losses, when given, gets the mean loss of every window scored, in order (for paired
// comparisons of two models on the same windows).
EvalResult evaluate(model::Transformer<float>& model, DataLoader& loader, int64_t max_tokens,
                    const std::vector<int32_t>& byte_lengths,
                    std::vector<double>* window_losses = nullptr);
// The same on the GPU.
EvalResult evaluate(model::GpuTransformer& model, DataLoader& loader, int64_t max_tokens,
                    const std::vector<int32_t>& byte_lengths,
                    std::vector<double>* window_losses = nullptr);

// Checks a --device value: "cpu" or "cuda" (ConfigError naming the value otherwise; for "cuda",
// engram::Error when this build has no CUDA or the machine no GPU).
void check_device(const std::string& device);

}  // namespace engram::train
