// engram tokenize, engram compress.
#include <cstdio>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "engram/text/compressor.h"
#include "engram/text/tokenizer.h"
#include "engram/text/utf8.h"
#include "engram/util/error.h"
#include "engram/util/npy.h"
#include "util/json.h"

namespace engram::cli {

int run_tokenize(int argc, char** argv) {
  const Args args(argc, argv, 2, {"tokenizer"}, {"decode"});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const auto tokenizer = text::Tokenizer::from_file(args.required("tokenizer"));
  const std::string input = read_stdin();
  if (args.has("decode")) {
    const json::Json doc = json::parse(input, "<stdin>");
    const json::Where where{"<stdin>", ""};
    json::require_array(doc, where);
    std::vector<uint32_t> ids;
    ids.reserve(doc.size());
    for (size_t i = 0; i < doc.size(); ++i) {
      const int64_t id = json::require_int(doc[i], where.index(i));
      if (id < 0 || static_cast<uint64_t>(id) >= tokenizer.vocab_size()) {
        where.index(i).fail("id " + std::to_string(id) + " is outside the vocabulary [0, " +
                            std::to_string(tokenizer.vocab_size()) + ")");
      }
      ids.push_back(static_cast<uint32_t>(id));
    }
    write_stdout(tokenizer.decode(ids));
    return 0;
  }
  const size_t bad = text::find_invalid_utf8(input);
  if (bad != std::string::npos) {
    throw InputError(
        error_message("<stdin>", "invalid UTF-8 at byte offset " + std::to_string(bad)));
  }
  const std::vector<uint32_t> ids = tokenizer.encode(input);
  std::string out;
  out.reserve(ids.size() * 7 + 2);
  out.push_back('[');
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out.push_back(',');
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  write_stdout(out);
  return 0;
}

int run_compress(int argc, char** argv) {
  const Args args(argc, argv, 2, {"tokenizer", "out"}, {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const auto tokenizer = text::Tokenizer::from_file(args.required("tokenizer"));
  const auto table = text::CompressionTable::build(tokenizer);
  if (auto out = args.optional("out")) write_npy_int32_vector(*out, table.lut);
  char buf[160];
  std::snprintf(buf, sizeof buf, "{\"vocab\": %lld, \"compressed\": %lld, \"reduction\": %.6f}\n",
                static_cast<long long>(table.vocab_size()),
                static_cast<long long>(table.compressed_size()), table.reduction());
  write_stdout(buf);
  return 0;
}

}  // namespace engram::cli
