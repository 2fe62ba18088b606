// engram hash: tokenizer ids -> Engram n-gram hash ids for every configured layer.
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "engram/hash/hash_config.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/text/compressor.h"
#include "engram/text/tokenizer.h"
#include "util/json.h"

namespace engram::cli {
namespace {

void append_int_list(std::string& out, const int64_t* v, size_t n) {
  out.push_back('[');
  for (size_t i = 0; i < n; ++i) {
    if (i) out.push_back(',');
    out += std::to_string(v[i]);
  }
  out.push_back(']');
}

std::string describe(const hash::NgramHasher& h) {
  std::string out = "{\"compressed_vocab\": " + std::to_string(h.compressed_vocab()) +
                    ", \"pad_id\": " + std::to_string(h.pad_compressed()) + ", \"multipliers\": {";
  for (size_t l = 0; l < h.num_layers(); ++l) {
    if (l) out += ", ";
    out += '"';
    out += std::to_string(h.layer_id(l));
    out += "\": ";
    append_int_list(out, h.multipliers(l).data(), h.multipliers(l).size());
  }
  out += "}, \"primes\": {";
  for (size_t l = 0; l < h.num_layers(); ++l) {
    if (l) out += ", ";
    out += '"';
    out += std::to_string(h.layer_id(l));
    out += "\": [";
    const auto& orders = h.primes(l);
    for (size_t n = 0; n < orders.size(); ++n) {
      if (n) out += ", ";
      append_int_list(out, orders[n].data(), orders[n].size());
    }
    out += "]";
  }
  out += "}}\n";
  return out;
}

// Reads {"input_ids": [[...], ...]} from stdin: rows of equal length, ids in [0, vocab)
// (or the dead token id when the dead-id rule is on).
std::vector<int64_t> read_input_ids(const hash::NgramHasher& h, size_t& batch, size_t& seq_len) {
  const json::Json doc = json::parse(read_stdin(), "<stdin>");
  const json::Where root{"<stdin>", ""};
  const json::Where w = root.field("input_ids");
  const json::Json& rows = json::require_array(json::require(doc, "input_ids", root), w);
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() != "input_ids")
      root.fail("unknown field \"" + it.key() + "\" (expected only \"input_ids\")");
  }
  batch = rows.size();
  seq_len = 0;
  std::vector<int64_t> ids;
  const auto& dead = h.config().dead_token_id;
  for (size_t b = 0; b < rows.size(); ++b) {
    const json::Where wr = w.index(b);
    if (!rows[b].is_array())
      wr.fail(std::string("expected an array of ids (input_ids is a list of rows), found ") +
              json::type_name(rows[b]));
    if (b == 0) {
      seq_len = rows[b].size();
      ids.reserve(batch * seq_len);
    } else if (rows[b].size() != seq_len) {
      wr.fail("ragged rows: this row has " + std::to_string(rows[b].size()) + " ids, row 0 has " +
              std::to_string(seq_len));
    }
    for (size_t t = 0; t < seq_len; ++t) {
      const int64_t id = json::require_int(rows[b][t], wr.index(t));
      if ((id < 0 || id >= h.tokenizer_vocab()) && !(dead && id == *dead)) {
        wr.index(t).fail("id " + std::to_string(id) + " is outside the vocabulary [0, " +
                         std::to_string(h.tokenizer_vocab()) + ")");
      }
      ids.push_back(id);
    }
  }
  return ids;
}

}  // namespace

int run_hash(int argc, char** argv) {
  const Args args(argc, argv, 2, {"tokenizer", "config", "threads"}, {"describe"});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const auto config = hash::EngramHashConfig::from_file(args.required("config"));
  const int threads = static_cast<int>(args.integer("threads", 1, 0, 4096));
  const auto tokenizer = text::Tokenizer::from_file(args.required("tokenizer"));
  auto table = text::CompressionTable::build(tokenizer);
  const hash::NgramHasher hasher(config, std::move(table.lut), table.compressed_size());
  if (args.has("describe")) {
    write_stdout(describe(hasher));
    return 0;
  }
  size_t batch = 0, seq_len = 0;
  const std::vector<int64_t> ids = read_input_ids(hasher, batch, seq_len);
  const size_t per_token = static_cast<size_t>(hasher.ids_per_token());
  const size_t layer_size = batch * seq_len * per_token;
  std::vector<int32_t> out(hasher.num_layers() * layer_size);
  hasher.hash_all_layers(ids, batch, seq_len, out, threads);

  std::string s = "{\"layers\": {";
  s.reserve(out.size() * 8 + 64);
  for (size_t l = 0; l < hasher.num_layers(); ++l) {
    if (l) s += ", ";
    s += '"';
    s += std::to_string(hasher.layer_id(l));
    s += "\": [";
    const int32_t* layer = out.data() + l * layer_size;
    for (size_t b = 0; b < batch; ++b) {
      if (b) s += ", ";
      s.push_back('[');
      for (size_t t = 0; t < seq_len; ++t) {
        if (t) s.push_back(',');
        s.push_back('[');
        const int32_t* v = layer + (b * seq_len + t) * per_token;
        for (size_t k = 0; k < per_token; ++k) {
          if (k) s.push_back(',');
          s += std::to_string(v[k]);
        }
        s.push_back(']');
      }
      s.push_back(']');
    }
    s += "]";
  }
  s += "}}\n";
  write_stdout(s);
  return 0;
}

}  // namespace engram::cli
