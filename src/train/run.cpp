#include "engram/train/run.h"

#include "engram/text/compressor.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "util/json.h"

namespace engram::train {
std::string resolve_checkpoint(const std::string& path) {
  if (is_directory(path)) {
    const std::string f = RunDir{path}.checkpoint();
    if (!is_regular_file(f)) {
      throw IoError(error_message(path, "no checkpoint.safetensors in this run directory"));
    }
    return f;
  }
  if (!is_regular_file(path)) throw IoError(error_message(path, "no such checkpoint file or run directory"));
  return path;
}

DataManifest read_manifest(const std::string& data_dir) {
  const std::string path = data_dir + "/manifest.json";
  if (!is_regular_file(path)) {
    throw IoError(error_message(path, "missing (prepare the data with `engram prepare` first)"));
  }
  const json::Json j = json::parse(read_file(path), path);
  const json::Where w{path, ""};
  DataManifest m;
  const json::Json& tok = json::require_object(json::require(j, "tokenizer", w), w.field("tokenizer"));
  m.tokenizer_path = json::require_string(json::require(tok, "path", w.field("tokenizer")),
                                          w.field("tokenizer").field("path"));
  m.vocab_size = json::require_int(json::require(tok, "vocab_size", w.field("tokenizer")),
                                   w.field("tokenizer").field("vocab_size"));
  for (const char* split : {"train", "val"}) {
    const json::Where ws = w.field(split);
    const json::Json& s = json::require_object(json::require(j, split, w), ws);
    const int64_t tokens = json::require_int(json::require(s, "tokens", ws), ws.field("tokens"));
    const int64_t bytes = json::require_int(json::require(s, "bytes", ws), ws.field("bytes"));
    if (std::string(split) == "train") {
      m.train_tokens = tokens;
      m.train_bytes = bytes;
    } else {
      m.val_tokens = tokens;
      m.val_bytes = bytes;
    }
  }
  return m;
}

DataLoader open_data_loader(const std::string& data_dir, const std::string& file,
                            const model::ModelConfig& config, const hash::NgramHasher* hasher,
                            DataLoader::Mode mode) {
  const std::string path = data_dir + "/" + file;
  try {
    return DataLoader(TokenShard::open(path), config.train.batch_size, config.train.seq_len,
                      hasher, config.train.seed, mode);
  } catch (const InputError& e) {
    throw InputError(error_message(path, e.what()));
  }
}

TextContext make_text_context(const model::ModelConfig& config, const std::string& tokenizer) {
  TextContext ctx;
  std::string path = tokenizer;
  if (path.empty()) {
    if (config.train.data.empty()) {
      throw ConfigError(
          "no tokenizer: the config has no train.data (whose manifest names the tokenizer) and "
          "none was given");
    }
    path = read_manifest(config.train.data).tokenizer_path;
  }
  if (is_directory(path)) path += "/tokenizer.json";
  ctx.tokenizer_path = path;
  auto tok = std::make_shared<text::Tokenizer>(text::Tokenizer::from_file(path));
  if (static_cast<int64_t>(tok->vocab_size()) > config.model.vocab_size) {
    throw InputError(error_message(
        path, "vocabulary of " + std::to_string(tok->vocab_size()) +
                  " ids does not fit the model's model.vocab_size = " +
                  std::to_string(config.model.vocab_size)));
  }
  ctx.tokenizer = tok;
  if (config.engram) {
    text::CompressionTable table = text::CompressionTable::build(*tok);
    const int64_t compressed = table.compressed_size();
    auto hasher = std::make_shared<hash::NgramHasher>(config.engram_hash_config(),
                                                      std::move(table.lut), compressed);
    ctx.head_sizes = model::engram_head_sizes(*hasher);
    ctx.hasher = hasher;
  }
  return ctx;
}

LoadedModel load_model(const std::string& path, const std::string& tokenizer) {
  LoadedModel out;
  const std::string file = resolve_checkpoint(path);
  out.state = read_checkpoint_metadata(file);
  out.config = model::ModelConfig::from_toml(out.state.config_toml, file + " (config_toml)");
  out.text = make_text_context(out.config, tokenizer);
  // Every value comes from the file: no random init, no gradient buffers (forward only).
  out.model = std::make_unique<model::Transformer<float>>(
      out.config, out.text.head_sizes, model::Transformer<float>::Uninitialized{}, true);
  load_checkpoint_weights_only(file, out.model->params());
  return out;
}

}  // namespace engram::train
