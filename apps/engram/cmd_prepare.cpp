// engram prepare: text corpora -> token shards with a train/validation split and a manifest.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "args.h"
#include "commands.h"
#include "engram/text/tokenizer.h"
#include "engram/train/dataset.h"
#include "engram/util/file.h"
#include "util/json.h"

namespace engram::cli {

int run_prepare(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"tokenizer", "out", "val-fraction", "seed", "threads", "invalid-utf8"},
                  {"no-bos"});
  if (args.positional().empty()) throw UsageError("expected one or more INPUT files or folders");
  train::PrepareOptions o;
  o.inputs = args.positional();
  o.out_dir = args.required("out");
  if (auto f = args.optional("val-fraction")) {
    try {
      size_t used = 0;
      o.val_fraction = std::stod(*f, &used);
      if (used != f->size()) throw std::invalid_argument(*f);
    } catch (const std::exception&) {
      throw UsageError("--val-fraction: expected a number, got \"" + *f + "\"");
    }
  }
  o.seed = static_cast<uint64_t>(args.integer("seed", 0, 0, INT64_MAX));
  o.threads = static_cast<int>(args.integer("threads", 0, 0, 4096));
  o.add_bos = !args.has("no-bos");
  if (auto p = args.optional("invalid-utf8")) {
    if (*p == "error")
      o.invalid_utf8 = train::PrepareOptions::InvalidUtf8::kError;
    else if (*p == "latin1")
      o.invalid_utf8 = train::PrepareOptions::InvalidUtf8::kLatin1;
    else if (*p == "replace")
      o.invalid_utf8 = train::PrepareOptions::InvalidUtf8::kReplace;
    else
      throw UsageError("--invalid-utf8: expected error, latin1 or replace, got \"" + *p + "\"");
  }
  std::string tok_path = args.required("tokenizer");
  if (is_directory(tok_path)) tok_path += "/tokenizer.json";
  const auto tokenizer = text::Tokenizer::from_file(tok_path);
  const bool tty = ::isatty(2) != 0;  // a live counter on a terminal, one final line otherwise
  o.progress = [tty](size_t done, size_t total, int64_t tokens) {
    if (!tty && done != total) return;
    std::fprintf(stderr, "%s[prepare] %zu/%zu files, %.2f M tokens%s", tty ? "\r" : "", done, total,
                 static_cast<double>(tokens) / 1e6, done == total ? "\n" : "");
  };
  const auto r = train::prepare_dataset(tokenizer, tok_path, o);
  const json::Json out = {
      {"train",
       {{"documents", r.train.documents}, {"tokens", r.train.tokens}, {"bytes", r.train.bytes}}},
      {"val", {{"documents", r.val.documents}, {"tokens", r.val.tokens}, {"bytes", r.val.bytes}}},
      {"manifest", r.manifest_path}};
  write_stdout(out.dump() + "\n");
  return 0;
}

}  // namespace engram::cli
