#include "engram/hash/hash_config.h"

#include <algorithm>
#include <climits>
#include <string>
#include <unordered_set>

#include "engram/hash/primes.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "util/json.h"

namespace engram::hash {
namespace {

using json::Json;
using json::Where;

constexpr const char* kFields[] = {"engram_vocab_size",
                                   "max_ngram_size",
                                   "n_embed_per_ngram",
                                   "n_head_per_ngram",
                                   "layer_ids",
                                   "pad_id",
                                   "seed",
                                   "kernel_size",
                                   "hidden_size",
                                   "hc_mult",
                                   "dead_token_id"};

[[noreturn]] void invalid(const std::string& source, const std::string& field,
                          const std::string& what) {
  throw ConfigError(error_message(source + ": " + field, what));
}

int require_int32(const Json& j, const Where& where) {
  const int64_t v = json::require_int(j, where);
  if (v < INT_MIN || v > INT_MAX) where.fail("integer " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

uint64_t require_uint64(const Json& j, const Where& where) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  const int64_t v = json::require_int(j, where);
  if (v < 0) where.fail("expected a non-negative integer, found " + std::to_string(v));
  return static_cast<uint64_t>(v);
}

// The reference's prime walk, only to check that every head's prime fits in int32 (NgramHasher
// repeats it to keep the primes).
void check_primes_fit(const EngramHashConfig& c, const std::string& source) {
  std::unordered_set<uint64_t> used;
  for (int layer_id : c.layer_ids) {
    for (size_t order = 0; order < c.engram_vocab_size.size(); ++order) {
      uint64_t start = static_cast<uint64_t>(c.engram_vocab_size[order]) - 1;
      for (int head = 0; head < c.n_head_per_ngram; ++head) {
        const uint64_t p = next_unused_prime(start, used);
        if (p > static_cast<uint64_t>(INT32_MAX)) {
          invalid(source, "engram_vocab_size[" + std::to_string(order) + "]",
                  std::to_string(c.engram_vocab_size[order]) + " is too large: layer " +
                      std::to_string(layer_id) + ", n = " + std::to_string(order + 2) + ", head " +
                      std::to_string(head) + " would get prime " + std::to_string(p) +
                      ", beyond int32 (2147483647)");
        }
        used.insert(p);
        start = p;
      }
    }
  }
}

}  // namespace

void EngramHashConfig::validate(const std::string& source) const {
  if (max_ngram_size < 2) {
    invalid(source, "max_ngram_size", std::to_string(max_ngram_size) + " is less than 2");
  }
  const size_t orders = static_cast<size_t>(max_ngram_size) - 1;
  if (engram_vocab_size.size() != orders) {
    invalid(source, "engram_vocab_size",
            "has " + std::to_string(engram_vocab_size.size()) + " sizes, max_ngram_size " +
                std::to_string(max_ngram_size) + " needs " + std::to_string(orders) +
                " (one per order n = 2 .. " + std::to_string(max_ngram_size) + ")");
  }
  for (size_t i = 0; i < orders; ++i) {
    const int64_t size = engram_vocab_size[i];
    const std::string field = "engram_vocab_size[" + std::to_string(i) + "]";
    if (size < 2) invalid(source, field, std::to_string(size) + " is less than 2");
    if (size > INT32_MAX) {
      invalid(source, field, std::to_string(size) + " is too large: table ids must fit in int32");
    }
  }
  if (n_head_per_ngram < 1) {
    invalid(source, "n_head_per_ngram", std::to_string(n_head_per_ngram) + " is less than 1");
  }
  if (n_embed_per_ngram < 1) {
    invalid(source, "n_embed_per_ngram", std::to_string(n_embed_per_ngram) + " is less than 1");
  }
  if (n_embed_per_ngram % n_head_per_ngram != 0) {
    invalid(source, "n_embed_per_ngram",
            std::to_string(n_embed_per_ngram) + " is not divisible by n_head_per_ngram " +
                std::to_string(n_head_per_ngram));
  }
  if (layer_ids.empty()) invalid(source, "layer_ids", "is empty (no Engram layer)");
  for (size_t i = 0; i < layer_ids.size(); ++i) {
    const std::string field = "layer_ids[" + std::to_string(i) + "]";
    if (layer_ids[i] < 0) invalid(source, field, std::to_string(layer_ids[i]) + " is negative");
    if (std::find(layer_ids.begin(), layer_ids.begin() + static_cast<ptrdiff_t>(i), layer_ids[i]) !=
        layer_ids.begin() + static_cast<ptrdiff_t>(i)) {
      invalid(source, field, std::to_string(layer_ids[i]) + " is a duplicate");
    }
  }
  if (pad_id < 0) invalid(source, "pad_id", std::to_string(pad_id) + " is negative");
  if (kernel_size < 1) {
    invalid(source, "kernel_size", std::to_string(kernel_size) + " is less than 1");
  }
  if (hidden_size < 0) {
    invalid(source, "hidden_size", std::to_string(hidden_size) + " is negative (0 = not given)");
  }
  if (hc_mult < 1) invalid(source, "hc_mult", std::to_string(hc_mult) + " is less than 1");
  check_primes_fit(*this, source);
}

EngramHashConfig EngramHashConfig::from_json(const std::string& json_text,
                                             const std::string& source) {
  const Json doc = json::parse(json_text, source);
  const Where root{source, ""};
  json::require_object(doc, root);
  for (const auto& [key, value] : doc.items()) {
    if (std::find_if(std::begin(kFields), std::end(kFields),
                     [&](const char* f) { return key == f; }) == std::end(kFields)) {
      std::string known;
      for (const char* f : kFields) known += (known.empty() ? "" : ", ") + std::string(f);
      root.field(key).fail("unknown field (known fields: " + known + ")");
    }
  }

  EngramHashConfig c;
  const Where sizes_where = root.field("engram_vocab_size");
  const Json& sizes =
      json::require_array(json::require(doc, "engram_vocab_size", root), sizes_where);
  c.engram_vocab_size.clear();
  for (size_t i = 0; i < sizes.size(); ++i) {
    c.engram_vocab_size.push_back(json::require_int(sizes[i], sizes_where.index(i)));
  }
  c.max_ngram_size =
      require_int32(json::require(doc, "max_ngram_size", root), root.field("max_ngram_size"));
  c.n_embed_per_ngram =
      require_int32(json::require(doc, "n_embed_per_ngram", root), root.field("n_embed_per_ngram"));
  c.n_head_per_ngram =
      require_int32(json::require(doc, "n_head_per_ngram", root), root.field("n_head_per_ngram"));
  const Where layers_where = root.field("layer_ids");
  const Json& layers = json::require_array(json::require(doc, "layer_ids", root), layers_where);
  c.layer_ids.clear();
  for (size_t i = 0; i < layers.size(); ++i) {
    c.layer_ids.push_back(require_int32(layers[i], layers_where.index(i)));
  }
  c.pad_id = json::require_int(json::require(doc, "pad_id", root), root.field("pad_id"));
  c.seed = require_uint64(json::require(doc, "seed", root), root.field("seed"));
  if (const Json* v = json::optional(doc, "kernel_size")) {
    c.kernel_size = require_int32(*v, root.field("kernel_size"));
  }
  if (const Json* v = json::optional(doc, "hidden_size")) {
    c.hidden_size = require_int32(*v, root.field("hidden_size"));
  }
  if (const Json* v = json::optional(doc, "hc_mult")) {
    c.hc_mult = require_int32(*v, root.field("hc_mult"));
  }
  if (const Json* v = json::optional(doc, "dead_token_id")) {
    c.dead_token_id = json::require_int(*v, root.field("dead_token_id"));
  }
  c.validate(source);
  return c;
}

EngramHashConfig EngramHashConfig::from_file(const std::string& path) {
  return from_json(read_file(path), path);
}

std::string EngramHashConfig::to_json() const {
  nlohmann::ordered_json j;
  j["engram_vocab_size"] = engram_vocab_size;
  j["max_ngram_size"] = max_ngram_size;
  j["n_embed_per_ngram"] = n_embed_per_ngram;
  j["n_head_per_ngram"] = n_head_per_ngram;
  j["layer_ids"] = layer_ids;
  j["pad_id"] = pad_id;
  j["seed"] = seed;
  j["kernel_size"] = kernel_size;
  j["hidden_size"] = hidden_size;
  j["hc_mult"] = hc_mult;
  if (dead_token_id) j["dead_token_id"] = *dead_token_id;
  // One field a line, arrays on one line: the layout of the files in configs/.
  std::string out = "{";
  for (const auto& [key, value] : j.items()) {
    out += (out.size() > 1 ? ",\n  \"" : "\n  \"") + key + "\": ";
    if (!value.is_array()) {
      out += value.dump();
      continue;
    }
    out += '[';
    for (size_t i = 0; i < value.size(); ++i) out += (i > 0 ? ", " : "") + value[i].dump();
    out += ']';
  }
  return out + "\n}";
}

}  // namespace engram::hash
