#include "engram/infer/model_loader.h"

#include <cstring>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "engram/model/safetensors.h"
#include "engram/train/checkpoint.h"
#include "engram/util/error.h"

namespace engram::infer {
namespace {

struct Target {
  std::string name;
  std::vector<int64_t> shape;
  float* data;  // null: checked, not read (a table left on disk)
};

std::string describe(DType dtype, const std::vector<int64_t>& shape) {
  std::string s = std::string(dtype_name(dtype)) + "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The checkpoint's param.* and buffer.* tensors into params, which has no Engram tables: the
// tables' tensors are checked against their shape in the config and left in the file.
void load_weights_without_tables(const std::string& path, const model::ModelConfig& config,
                                 model::TransformerParams<float>& params) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  std::vector<Target> targets;
  for (auto& p : params.named()) targets.push_back({"param." + p.name, p.shape, p.data});
  for (auto& p : params.named_buffers()) targets.push_back({"buffer." + p.name, p.shape, p.data});
  if (config.engram) {
    for (const int l : config.engram->hash.layer_ids) {
      const nn::EngramLayer<float>& el = *params.layers[static_cast<size_t>(l)].engram;
      targets.push_back({"param.layers." + std::to_string(l) + ".engram.table",
                         {el.table_rows(), el.config().row_width()},
                         nullptr});
    }
  }
  // Validate everything before copying anything.
  std::set<std::string> expected;
  std::vector<Tensor> sources;
  for (const Target& t : targets) {
    expected.insert(t.name);
    if (!file.contains(t.name)) {
      throw FormatError(error_message(
          path, t.name + ": missing tensor (expected " + describe(DType::kF32, t.shape) + ")"));
    }
    Tensor src = file.get(t.name);
    if (src.dtype() != DType::kF32 || src.shape() != t.shape) {
      throw FormatError(
          error_message(path, t.name + ": checkpoint has " + describe(src.dtype(), src.shape()) +
                                  " but the model expects " + describe(DType::kF32, t.shape) +
                                  " (architecture differs from the config?)"));
    }
    sources.push_back(std::move(src));
  }
  for (const std::string& name : file.names()) {
    if (name.rfind("optim.", 0) == 0) continue;
    if (expected.count(name) == 0) {
      throw FormatError(
          error_message(path, name + ": unexpected tensor " +
                                  describe(file.get(name).dtype(), file.get(name).shape()) +
                                  " (architecture differs from the config?)"));
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].data == nullptr) continue;  // a table: its pages are never touched
    const Tensor src = sources[i].is_contiguous() ? sources[i] : sources[i].contiguous();
    std::memcpy(targets[i].data, src.raw(), src.nbytes());
  }
}

}  // namespace

train::LoadedModel load_model(const std::string& path, const std::string& tokenizer,
                              const LoadOptions& options) {
  if (options.engram_tables) return train::load_model(path, tokenizer);
  train::LoadedModel out;
  const std::string file = train::resolve_checkpoint(path);
  out.state = train::read_checkpoint_metadata(file);
  out.config = model::ModelConfig::from_toml(out.state.config_toml, file + " (config_toml)");
  out.text = train::make_text_context(out.config, tokenizer);
  out.model = std::make_unique<model::Transformer<float>>(
      out.config, out.text.head_sizes, model::Transformer<float>::Uninitialized{},
      /*with_engram_tables=*/false);
  load_weights_without_tables(file, out.config, out.model->params());
  return out;
}

}  // namespace engram::infer
