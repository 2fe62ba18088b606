// Loading a checkpoint for inference, optionally leaving its Engram tables on disk.
//
// The Engram tables are most of a model's parameters (DeepSeek-V4.1: two 94 GiB tables beside
// the dense weights), and a Decoder that reads them from the memory tier (.engt files through
// memory::EngtRowStore or memory::TieredRowStore, Decoder::set_table_stores) never touches the
// checkpoint's copy. With LoadOptions::engram_tables = false the checkpoint's table tensors
// (param.layers.{l}.engram.table) are checked, never read: the checkpoint is memory-mapped, so
// their pages are never faulted in, and the model's engram_table vectors stay empty (never
// allocated). Host memory then holds the dense weights only.
//
//   LoadedModel m = infer::load_model(ckpt, tokenizer, {.engram_tables = false});
//   infer::Decoder dec(*m.model, m.text.hasher.get());
//   dec.set_table_stores(stores);  // one per Engram layer, none null: the model has no tables
#pragma once

#include <string>

#include "engram/train/run.h"

namespace engram::infer {

struct LoadOptions {
  // true: everything, as train::load_model. false: the Engram tables stay in the file; each must
  // still be there with the dtype and shape the config gives (F32, table rows x row width).
  bool engram_tables = true;
};

// `path` as train::resolve_checkpoint; tokenizer as train::make_text_context. Validates the whole
// file before copying anything (train::load_checkpoint_weights_only's checks): every parameter
// and buffer present as F32 with the model's shape, nothing unexpected (optimizer state is
// ignored). Throws IoError (no such file) or FormatError naming the file, the tensor and both
// shapes.
train::LoadedModel load_model(const std::string& path, const std::string& tokenizer = "",
                              const LoadOptions& options = {});

}  // namespace engram::infer
