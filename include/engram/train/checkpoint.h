// Training checkpoints: one safetensors file holding everything needed to resume a run.
//
//   param.<name>               F32, the model's trained parameters (TransformerParams::named())
//   buffer.<name>              F32, its non-trained buffers (named_buffers())
//   optim.<prefix>.<state>     F32 (1-D), optimizer state (AdamW / SparseRowAdam::state())
//   optim.<prefix>.<counter>   I64 (1-D), integer state (SparseRowAdam::last_step())
//
// and metadata: "format" = "engram-checkpoint-v1", "step", "data_seed", "data_position",
// "config_toml", "optim.<prefix>.steps" per optimizer group and "extra.<key>" per extra entry.
//
// Saving is atomic (write_safetensors): a failed save leaves any previous file intact.
// Loading validates the whole file before touching any target: every expected tensor present
// with the exact dtype and shape, no unexpected tensor, all metadata present and well-formed.
// Otherwise FormatError naming the file, the tensor and both shapes; the targets are untouched.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engram/model/transformer.h"
#include "engram/train/optimizer.h"

namespace engram::train {

inline constexpr const char* kCheckpointFormat = "engram-checkpoint-v1";

// Run state saved beside the weights.
struct CheckpointState {
  int64_t step = 0;
  uint64_t data_seed = 0;
  int64_t data_position = 0;
  std::string config_toml;
  std::map<std::string, std::string> extra;
};

// One optimizer's state under a prefix (unique per checkpoint, no '.' needed but allowed).
// On save `steps` is written; on load it is overwritten with the saved value and, when set,
// restore_steps(saved) is called (e.g. to call AdamW::set_steps).
struct OptimizerCheckpoint {
  std::string prefix;
  std::vector<NamedState<float>> state;
  std::vector<NamedState<int64_t>> counters;  // e.g. {"last_step", SparseRowAdam::last_step()}
  int64_t steps = 0;
  std::function<void(int64_t)> restore_steps;
};

// Groups wired to an optimizer: state, counters, steps and restore_steps filled in. `steps` is
// the count at the time of the call: make the groups right before saving.
OptimizerCheckpoint optimizer_checkpoint(std::string prefix, AdamW& optimizer);
OptimizerCheckpoint optimizer_checkpoint(std::string prefix, SparseRowAdam& optimizer);

// Writes the checkpoint atomically. Throws IoError when the file cannot be written (the old
// file, if any, is untouched) or InputError for duplicate tensor names.
void save_checkpoint(const std::string& path, model::TransformerParams<float>& params,
                     const std::vector<OptimizerCheckpoint>& optimizers,
                     const CheckpointState& state);

// Validates and restores params, optimizer state/counters/steps; returns the run state.
// Throws IoError (cannot open) or FormatError (see above); on error nothing is modified.
CheckpointState load_checkpoint(const std::string& path, model::TransformerParams<float>& params,
                                std::vector<OptimizerCheckpoint>& optimizers);

// Only the model: param.* and buffer.* validated and restored as above; optimizer tensors and
// metadata in the file are ignored (inference).
CheckpointState load_checkpoint_weights_only(const std::string& path,
                                             model::TransformerParams<float>& params);

// The run state (metadata) of a checkpoint without reading its tensors.
CheckpointState read_checkpoint_metadata(const std::string& path);

}  // namespace engram::train
