#include "engram/train/checkpoint.h"

#include <charconv>
#include <cstring>
#include <set>
#include <system_error>
#include <utility>

#include "engram/model/safetensors.h"
#include "engram/util/error.h"

namespace engram::train {
namespace {

struct Target {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  void* data;
  int64_t size;
};

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string describe(DType dtype, const std::vector<int64_t>& shape) {
  return std::string(dtype_name(dtype)) + shape_string(shape);
}

std::vector<Target> collect(model::TransformerParams<float>& params,
                            const std::vector<OptimizerCheckpoint>& optimizers) {
  std::vector<Target> out;
  for (auto& p : params.named()) {
    out.push_back({"param." + p.name, DType::kF32, p.shape, p.data, p.size});
  }
  for (auto& p : params.named_buffers()) {
    out.push_back({"buffer." + p.name, DType::kF32, p.shape, p.data, p.size});
  }
  for (const auto& o : optimizers) {
    for (const auto& s : o.state) {
      const auto n = static_cast<int64_t>(s.values.size());
      out.push_back({"optim." + o.prefix + "." + s.name, DType::kF32, {n}, s.values.data(), n});
    }
    for (const auto& c : o.counters) {
      const auto n = static_cast<int64_t>(c.values.size());
      out.push_back({"optim." + o.prefix + "." + c.name, DType::kI64, {n}, c.values.data(), n});
    }
  }
  return out;
}

const std::string& meta(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end()) {
    throw FormatError(error_message(f.path(), "__metadata__: missing \"" + key + "\""));
  }
  return it->second;
}

template <class I>
I meta_int(const SafetensorsFile& f, const std::string& key) {
  const std::string& s = meta(f, key);
  I v{};
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) {
    throw FormatError(
        error_message(f.path(), "__metadata__: " + key + ": not an integer: \"" + s + "\""));
  }
  return v;
}

}  // namespace

OptimizerCheckpoint optimizer_checkpoint(std::string prefix, AdamW& optimizer) {
  OptimizerCheckpoint o;
  o.prefix = std::move(prefix);
  o.state = optimizer.state();
  o.steps = optimizer.steps();
  o.restore_steps = [&optimizer](int64_t t) { optimizer.set_steps(t); };
  return o;
}

OptimizerCheckpoint optimizer_checkpoint(std::string prefix, SparseRowAdam& optimizer) {
  OptimizerCheckpoint o;
  o.prefix = std::move(prefix);
  o.state = optimizer.state();
  o.counters.push_back({"last_step", optimizer.last_step()});
  o.steps = optimizer.steps();
  o.restore_steps = [&optimizer](int64_t t) { optimizer.set_steps(t); };
  return o;
}

void save_checkpoint(const std::string& path, model::TransformerParams<float>& params,
                     const std::vector<OptimizerCheckpoint>& optimizers,
                     const CheckpointState& state) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& t : collect(params, optimizers)) {
    tensors.emplace_back(t.name, Tensor::view(t.dtype, t.shape, t.data, nullptr));
  }
  std::map<std::string, std::string> metadata;
  metadata["format"] = kCheckpointFormat;
  metadata["step"] = std::to_string(state.step);
  metadata["data_seed"] = std::to_string(state.data_seed);
  metadata["data_position"] = std::to_string(state.data_position);
  metadata["config_toml"] = state.config_toml;
  for (const auto& o : optimizers) {
    const std::string key = "optim." + o.prefix + ".steps";
    if (!metadata.emplace(key, std::to_string(o.steps)).second) {
      throw InputError(error_message(path, "duplicate optimizer prefix \"" + o.prefix + "\""));
    }
  }
  for (const auto& [k, v] : state.extra) metadata["extra." + k] = v;
  write_safetensors(path, tensors, metadata);
}

namespace {

// weights_only: optimizer tensors and metadata in the file are ignored (inference).
CheckpointState load_impl(const std::string& path, model::TransformerParams<float>& params,
                          std::vector<OptimizerCheckpoint>& optimizers, bool weights_only) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  const std::string& format = meta(file, "format");
  if (format != kCheckpointFormat) {
    throw FormatError(error_message(
        path, "__metadata__: format: \"" + format + "\" (expected \"" + kCheckpointFormat + "\")"));
  }

  // Validate everything before modifying anything.
  const std::vector<Target> targets = collect(params, optimizers);
  std::set<std::string> expected;
  std::vector<Tensor> sources;
  sources.reserve(targets.size());
  for (const auto& t : targets) {
    expected.insert(t.name);
    if (!file.contains(t.name)) {
      throw FormatError(error_message(
          path, t.name + ": missing tensor (expected " + describe(t.dtype, t.shape) + ")"));
    }
    Tensor src = file.get(t.name);
    if (src.dtype() != t.dtype || src.shape() != t.shape) {
      throw FormatError(
          error_message(path, t.name + ": checkpoint has " + describe(src.dtype(), src.shape()) +
                                  " but the model expects " + describe(t.dtype, t.shape) +
                                  " (architecture differs from the config?)"));
    }
    sources.push_back(std::move(src));
  }
  for (const auto& name : file.names()) {
    if (weights_only && name.rfind("optim.", 0) == 0) continue;
    if (expected.count(name) == 0) {
      throw FormatError(error_message(path, name + ": unexpected tensor " +
                                                shape_string(file.get(name).shape()) +
                                                " (architecture differs from the config?)"));
    }
  }
  CheckpointState state;
  state.step = meta_int<int64_t>(file, "step");
  state.data_seed = meta_int<uint64_t>(file, "data_seed");
  state.data_position = meta_int<int64_t>(file, "data_position");
  state.config_toml = meta(file, "config_toml");
  std::vector<int64_t> steps;
  for (const auto& o : optimizers) {
    steps.push_back(meta_int<int64_t>(file, "optim." + o.prefix + ".steps"));
  }
  for (const auto& [k, v] : file.metadata()) {
    if (k.rfind("extra.", 0) == 0) state.extra[k.substr(6)] = v;
  }

  for (size_t i = 0; i < targets.size(); ++i) {
    const Tensor src = sources[i].is_contiguous() ? sources[i] : sources[i].contiguous();
    if (targets[i].size > 0) std::memcpy(targets[i].data, src.raw(), src.nbytes());
  }
  for (size_t i = 0; i < optimizers.size(); ++i) {
    optimizers[i].steps = steps[i];
    if (optimizers[i].restore_steps) optimizers[i].restore_steps(steps[i]);
  }
  return state;
}

}  // namespace

CheckpointState load_checkpoint(const std::string& path, model::TransformerParams<float>& params,
                                std::vector<OptimizerCheckpoint>& optimizers) {
  return load_impl(path, params, optimizers, false);
}

CheckpointState load_checkpoint_weights_only(const std::string& path,
                                             model::TransformerParams<float>& params) {
  std::vector<OptimizerCheckpoint> none;
  return load_impl(path, params, none, true);
}

CheckpointState read_checkpoint_metadata(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  const std::string& format = meta(file, "format");
  if (format != kCheckpointFormat) {
    throw FormatError(error_message(
        path, "__metadata__: format: \"" + format + "\" (expected \"" + kCheckpointFormat + "\")"));
  }
  CheckpointState state;
  state.step = meta_int<int64_t>(file, "step");
  state.data_seed = meta_int<uint64_t>(file, "data_seed");
  state.data_position = meta_int<int64_t>(file, "data_position");
  state.config_toml = meta(file, "config_toml");
  for (const auto& [k, v] : file.metadata()) {
    if (k.rfind("extra.", 0) == 0) state.extra[k.substr(6)] = v;
  }
  return state;
}

}  // namespace engram::train
