// A training run on disk and what a trained model needs around it: the tokenizer, the Engram
// hasher, and the weights and config of a checkpoint.
//
// A run directory (engram train --out DIR) holds
//   DIR/checkpoint.safetensors   the latest checkpoint (train/checkpoint.h), replaced atomically
//   DIR/config.toml              the full config of the run (every field written out)
//   DIR/metrics.jsonl            one JSON object per logged step / evaluation
//   DIR/loss.svg                 the loss curves, redrawn at every evaluation
//
// The tokenizer of a run is the one its data was prepared with: train.data's manifest.json
// names it ("tokenizer.path"). A relative train.data or tokenizer path is taken relative to the
// working directory. Every loader accepts an explicit tokenizer folder or file instead.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "engram/hash/ngram_hasher.h"
#include "engram/model/config.h"
#include "engram/model/transformer.h"
#include "engram/text/tokenizer.h"
#include "engram/train/checkpoint.h"
#include "engram/train/data_loader.h"

namespace engram::train {

struct RunDir {
  std::string dir;
  std::string checkpoint() const { return dir + "/checkpoint.safetensors"; }
  std::string config() const { return dir + "/config.toml"; }
  std::string metrics() const { return dir + "/metrics.jsonl"; }
  std::string loss_svg() const { return dir + "/loss.svg"; }
};

// `path` is a run directory (its checkpoint.safetensors) or a checkpoint file. Throws IoError
// when neither exists.
std::string resolve_checkpoint(const std::string& path);

// The manifest.json of a prepared data folder, parsed: the tokenizer file recorded there and
// the validation bytes (for bits per byte). Throws IoError / FormatError naming the file.
struct DataManifest {
  std::string tokenizer_path;
  int64_t vocab_size = 0;
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t train_bytes = 0, val_bytes = 0;
};
DataManifest read_manifest(const std::string& data_dir);

// A loader over `data_dir`/`file` (train.bin or val.bin) with the config's batch_size, seq_len
// and seed. Errors (cannot open, fewer tokens than one window) name the shard file.
DataLoader open_data_loader(const std::string& data_dir, const std::string& file,
                            const model::ModelConfig& config, const hash::NgramHasher* hasher,
                            DataLoader::Mode mode);

// The tokenizer and (for configs with [engram]) the hasher of a model.
struct TextContext {
  std::string tokenizer_path;  // the tokenizer.json used
  std::shared_ptr<const text::Tokenizer> tokenizer;
  std::shared_ptr<const hash::NgramHasher> hasher;  // null without [engram]
  // Table sizes per Engram layer as the hasher chose them (model::engram_head_sizes).
  std::vector<std::vector<int64_t>> head_sizes;
};

// tokenizer: a folder holding tokenizer.json or the file itself; empty = the one named by the
// manifest of config.train.data. Throws ConfigError when neither is given, InputError when the
// tokenizer's vocabulary is larger than model.vocab_size.
TextContext make_text_context(const model::ModelConfig& config, const std::string& tokenizer = "");

// A trained model ready for inference: forward only (built with Transformer's Uninitialized
// constructor, every value read from the checkpoint; backward() throws).
struct LoadedModel {
  model::ModelConfig config;
  CheckpointState state;
  TextContext text;
  std::unique_ptr<model::Transformer<float>> model;
};

// Reads the config from the checkpoint's metadata, builds the text context and loads the
// weights. `path` as resolve_checkpoint.
LoadedModel load_model(const std::string& path, const std::string& tokenizer = "");

}  // namespace engram::train
