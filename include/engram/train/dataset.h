// Token shards for training: `engram prepare` turns text corpora into uint32 token files with a
// deterministic, document-level train/validation split and a manifest.
//
// Output folder:
//   train.bin, val.bin     uint32 little-endian token ids, documents one after another (each
//                          starting with the tokenizer's BOS token when it has one)
//   train.docs, val.docs   uint64 little-endian: the start offset (in tokens) of every document
//   manifest.json          sources (path, bytes, documents, tokens per split), totals, the
//                          tokenizer's path, vocabulary size and FNV-1a 64 hash, the options
// Every file is written atomically; manifest.json is written last and marks a complete dataset.
//
// Documents: a .txt/.text/.md/.rst file is one document; every non-empty line of a .jsonl file is
// one (its "text" field). A document goes to validation when the hash of (its source's path
// relative to the input it was found under, its index in the file, the seed) falls below
// val_fraction, so adding or removing other documents never moves it. If that leaves the
// validation set empty (small corpora), the document with the smallest hash is moved there.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/text/tokenizer.h"

namespace engram::train {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or folders (searched recursively)
  std::string out_dir;              // created if missing
  double val_fraction = 0.01;       // in [0, 1)
  uint64_t seed = 0;
  bool add_bos = true;
  // A file that is not valid UTF-8: kError stops with its name and byte offset; kLatin1 reads
  // the whole file as ISO-8859-1 (old Gutenberg texts); kReplace substitutes U+FFFD.
  enum class InvalidUtf8 { kError, kLatin1, kReplace } invalid_utf8 = InvalidUtf8::kError;
  int threads = 0;  // 0 = all cores
  // Called after every input file: files done, files in all, tokens so far.
  std::function<void(size_t, size_t, int64_t)> progress;
};

struct SplitStats {
  int64_t documents = 0, tokens = 0, bytes = 0;
};

struct SourceStats {
  std::string path;
  std::string encoding;  // "utf-8", or how an invalid file was read: "latin-1", "utf-8-replaced"
  SplitStats train, val;
};

struct PrepareResult {
  SplitStats train, val;
  std::vector<SourceStats> sources;
  std::string manifest_path;
};

// Tokenizes and writes the dataset. Throws IoError/InputError naming the file (unreadable input,
// invalid UTF-8 with its byte offset, a JSONL line without a "text" string) and InputError for
// an empty corpus or bad options.
PrepareResult prepare_dataset(const text::Tokenizer& tokenizer, const std::string& tokenizer_path,
                              const PrepareOptions& options);

// FNV-1a 64 of a byte string, as 16 hex digits (identifies a tokenizer.json).
std::string fnv1a64_hex(std::string_view bytes);

// A memory-mapped shard of uint32 tokens (train.bin / val.bin).
class TokenShard {
 public:
  // Throws IoError (cannot open/map) or FormatError (size not a multiple of 4).
  static TokenShard open(const std::string& path);
  std::span<const uint32_t> tokens() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  std::shared_ptr<void> mapping_;
  const uint32_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace engram::train
