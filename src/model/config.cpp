#include "engram/model/config.h"

#include <toml++/toml.h>
#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <sstream>

#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram::model {
namespace {

[[noreturn]] void malformed(const std::string& source, const std::string& key,
                            const std::string& what) {
  throw FormatError(error_message(source + ": " + key, what));
}

[[noreturn]] void invalid(const std::string& source, const std::string& field,
                          const std::string& what) {
  throw ConfigError(error_message(source + ": " + field, what));
}

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    default:
      return "a date or time";
  }
}

std::string fmt(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, res.ptr);
  if (s.find_first_not_of("-0123456789") == std::string::npos) s += ".0";
  return s;
}

// One [section] of the file: typed reads that remember the keys they saw, then finish() rejects
// the rest.
class Section {
 public:
  Section(const toml::table& table, std::string source, std::string name)
      : table_(table), source_(std::move(source)), name_(std::move(name)) {}

  void read(const char* key, int64_t& out, bool required = false) {
    if (const toml::node* n = find(key, required)) {
      if (!n->is_integer()) wrong_type(key, "an integer", *n);
      out = n->as_integer()->get();
    }
  }
  void read(const char* key, int& out, bool required = false) {
    int64_t v = out;
    read(key, v, required);
    if (v < INT_MIN || v > INT_MAX) {
      malformed(source_, dotted(key), "integer " + std::to_string(v) + " is out of range");
    }
    out = static_cast<int>(v);
  }
  void read(const char* key, uint64_t& out, bool required = false) {
    int64_t v = static_cast<int64_t>(out);
    const bool present = find(key, required) != nullptr;
    read(key, v, required);
    if (present && v < 0) {
      malformed(source_, dotted(key),
                "expected a non-negative integer, found " + std::to_string(v));
    }
    out = static_cast<uint64_t>(v);
  }
  void read(const char* key, double& out, bool required = false) {
    if (const toml::node* n = find(key, required)) {
      if (n->is_floating_point()) {
        out = n->as_floating_point()->get();
      } else if (n->is_integer()) {
        out = static_cast<double>(n->as_integer()->get());
      } else {
        wrong_type(key, "a number", *n);
      }
    }
  }
  void read(const char* key, bool& out, bool required = false) {
    if (const toml::node* n = find(key, required)) {
      if (!n->is_boolean()) wrong_type(key, "a boolean", *n);
      out = n->as_boolean()->get();
    }
  }
  void read(const char* key, std::string& out, bool required = false) {
    if (const toml::node* n = find(key, required)) {
      if (!n->is_string()) wrong_type(key, "a string", *n);
      out = n->as_string()->get();
    }
  }
  template <class Int>
  void read(const char* key, std::vector<Int>& out, bool required = false) {
    if (const toml::node* n = find(key, required)) {
      if (!n->is_array()) wrong_type(key, "an array of integers", *n);
      out.clear();
      const toml::array& a = *n->as_array();
      for (size_t i = 0; i < a.size(); ++i) {
        const std::string where = dotted(key) + "[" + std::to_string(i) + "]";
        if (!a[i].is_integer())
          malformed(source_, where, "expected an integer, found " + type_name(a[i]));
        const int64_t v = a[i].as_integer()->get();
        if (v < std::numeric_limits<Int>::min() || v > std::numeric_limits<Int>::max()) {
          malformed(source_, where, "integer " + std::to_string(v) + " is out of range");
        }
        out.push_back(static_cast<Int>(v));
      }
    }
  }

  // Throws FormatError for the first key no read() asked for.
  void finish() const {
    for (const auto& [key, node] : table_) {
      if (!seen_.count(std::string(key.str()))) {
        malformed(source_, dotted(std::string(key.str())), "unknown key");
      }
    }
  }

 private:
  std::string dotted(const std::string& key) const { return name_ + "." + key; }
  const toml::node* find(const char* key, bool required) {
    seen_.insert(key);
    const toml::node* n = table_.get(key);
    if (!n && required) malformed(source_, dotted(key), "missing required key");
    return n;
  }
  [[noreturn]] void wrong_type(const char* key, const char* expected, const toml::node& n) const {
    malformed(source_, dotted(key),
              std::string("expected ") + expected + ", found " + type_name(n));
  }

  const toml::table& table_;
  std::string source_, name_;
  std::set<std::string> seen_;
};

void read_model(Section& s, BackboneConfig& m, bool& has_kv_heads, bool& has_head_dim) {
  s.read("vocab_size", m.vocab_size);
  s.read("hidden_size", m.hidden_size, true);
  s.read("num_layers", m.num_layers, true);
  s.read("num_heads", m.num_heads, true);
  m.num_kv_heads = -1;
  s.read("num_kv_heads", m.num_kv_heads);
  has_kv_heads = m.num_kv_heads != -1;
  m.head_dim = -1;
  s.read("head_dim", m.head_dim);
  has_head_dim = m.head_dim != -1;
  s.read("hc_mult", m.hc_mult);
  s.read("rope_theta", m.rope_theta);
  s.read("norm_eps", m.norm_eps);
  s.read("max_seq_len", m.max_seq_len);
  s.read("dense_intermediate_size", m.dense_intermediate_size, true);
  s.read("first_dense_layers", m.first_dense_layers);
  s.finish();
}

void read_moe(Section& s, MoeConfig& m) {
  s.read("num_experts", m.num_experts, true);
  s.read("num_shared_experts", m.num_shared_experts);
  s.read("top_k", m.top_k, true);
  s.read("expert_intermediate_size", m.expert_intermediate_size, true);
  s.read("route_scale", m.route_scale);
  s.read("bias_update_gamma", m.bias_update_gamma);
  s.read("seq_aux_alpha", m.seq_aux_alpha);
  s.finish();
}

void read_engram(Section& s, EngramConfig& e) {
  hash::EngramHashConfig& h = e.hash;
  s.read("engram_vocab_size", h.engram_vocab_size, true);
  s.read("max_ngram_size", h.max_ngram_size, true);
  s.read("n_embed_per_ngram", h.n_embed_per_ngram, true);
  s.read("n_head_per_ngram", h.n_head_per_ngram, true);
  s.read("layer_ids", h.layer_ids, true);
  s.read("pad_id", h.pad_id);
  s.read("seed", h.seed);
  s.read("kernel_size", h.kernel_size);
  int64_t dead = 0;
  bool has_dead = false;
  {
    int64_t sentinel = INT64_MIN;
    s.read("dead_token_id", sentinel);
    has_dead = sentinel != INT64_MIN;
    dead = sentinel;
  }
  if (has_dead) h.dead_token_id = dead;
  s.read("bias", e.bias);
  s.read("short_conv", e.short_conv);
  s.finish();
}

void read_train(Section& s, TrainConfig& t) {
  s.read("batch_size", t.batch_size);
  s.read("seq_len", t.seq_len);
  s.read("steps", t.steps);
  s.read("lr", t.lr);
  s.read("min_lr_ratio", t.min_lr_ratio);
  s.read("warmup_steps", t.warmup_steps);
  s.read("weight_decay", t.weight_decay);
  s.read("engram_lr_multiplier", t.engram_lr_multiplier);
  s.read("grad_clip", t.grad_clip);
  s.read("grad_accum", t.grad_accum);
  s.read("seed", t.seed);
  s.read("eval_every", t.eval_every);
  s.read("eval_tokens", t.eval_tokens);
  s.read("data", t.data);
  s.finish();
}

// Each check throws ConfigError "source: field: value what".
struct Checker {
  const std::string& source;
  void at_least(const char* field, int64_t v, int64_t lo) const {
    if (v < lo) {
      invalid(source, field, std::to_string(v) + " must be >= " + std::to_string(lo));
    }
  }
  void positive(const char* field, double v) const {
    if (!(v > 0) || !std::isfinite(v)) invalid(source, field, fmt(v) + " must be > 0");
  }
  void non_negative(const char* field, double v) const {
    if (!(v >= 0) || !std::isfinite(v)) invalid(source, field, fmt(v) + " must be >= 0");
  }
};

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

template <class Int>
std::string list(const std::vector<Int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

bool EngramConfig::operator==(const EngramConfig& o) const {
  const hash::EngramHashConfig& a = hash;
  const hash::EngramHashConfig& b = o.hash;
  return a.engram_vocab_size == b.engram_vocab_size && a.max_ngram_size == b.max_ngram_size &&
         a.n_embed_per_ngram == b.n_embed_per_ngram && a.n_head_per_ngram == b.n_head_per_ngram &&
         a.layer_ids == b.layer_ids && a.pad_id == b.pad_id && a.seed == b.seed &&
         a.kernel_size == b.kernel_size && a.hidden_size == b.hidden_size &&
         a.hc_mult == b.hc_mult && a.dead_token_id == b.dead_token_id && bias == o.bias &&
         short_conv == o.short_conv;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  return moe.has_value() && layer >= model.first_dense_layers;
}

hash::EngramHashConfig ModelConfig::engram_hash_config() const {
  if (!engram) throw ConfigError("engram_hash_config: the config has no [engram] section");
  hash::EngramHashConfig h = engram->hash;
  h.hidden_size = static_cast<int>(model.hidden_size);
  h.hc_mult = static_cast<int>(model.hc_mult);
  return h;
}

void ModelConfig::validate(const std::string& source) const {
  const Checker c{source};
  const BackboneConfig& m = model;
  c.at_least("model.vocab_size", m.vocab_size, 1);
  c.at_least("model.hidden_size", m.hidden_size, 1);
  c.at_least("model.num_layers", m.num_layers, 1);
  c.at_least("model.num_heads", m.num_heads, 1);
  c.at_least("model.num_kv_heads", m.num_kv_heads, 1);
  if (m.num_heads % m.num_kv_heads != 0) {
    invalid(source, "model.num_kv_heads",
            std::to_string(m.num_kv_heads) + " does not divide num_heads " +
                std::to_string(m.num_heads));
  }
  c.at_least("model.head_dim", m.head_dim, 2);
  if (m.head_dim % 2 != 0) {
    invalid(source, "model.head_dim",
            std::to_string(m.head_dim) + " is odd (RoPE rotates pairs of dimensions)");
  }
  c.at_least("model.hc_mult", m.hc_mult, 1);
  c.positive("model.rope_theta", m.rope_theta);
  c.positive("model.norm_eps", m.norm_eps);
  c.at_least("model.max_seq_len", m.max_seq_len, 1);
  c.at_least("model.dense_intermediate_size", m.dense_intermediate_size, 1);
  c.at_least("model.first_dense_layers", m.first_dense_layers, 0);
  if (m.first_dense_layers > m.num_layers) {
    invalid(source, "model.first_dense_layers",
            std::to_string(m.first_dense_layers) + " is more than num_layers " +
                std::to_string(m.num_layers));
  }
  if (m.hidden_size > INT_MAX || m.hc_mult > INT_MAX) {
    invalid(source, "model.hidden_size", std::to_string(m.hidden_size) + " is too large");
  }
  if (moe) {
    c.at_least("moe.num_experts", moe->num_experts, 1);
    c.at_least("moe.num_shared_experts", moe->num_shared_experts, 0);
    c.at_least("moe.top_k", moe->top_k, 1);
    if (moe->top_k > moe->num_experts) {
      invalid(source, "moe.top_k",
              std::to_string(moe->top_k) + " is more than num_experts " +
                  std::to_string(moe->num_experts));
    }
    c.at_least("moe.expert_intermediate_size", moe->expert_intermediate_size, 1);
    c.positive("moe.route_scale", moe->route_scale);
    c.non_negative("moe.bias_update_gamma", moe->bias_update_gamma);
    c.non_negative("moe.seq_aux_alpha", moe->seq_aux_alpha);
  }
  if (engram) {
    engram_hash_config().validate(source + ": engram");
    for (int id : engram->hash.layer_ids) {
      if (id >= m.num_layers) {
        invalid(source, "engram.layer_ids",
                "layer " + std::to_string(id) + " does not exist (num_layers " +
                    std::to_string(m.num_layers) + ")");
      }
    }
  }
  const TrainConfig& t = train;
  c.at_least("train.batch_size", t.batch_size, 1);
  c.at_least("train.seq_len", t.seq_len, 1);
  if (t.seq_len > m.max_seq_len) {
    invalid(source, "train.seq_len",
            std::to_string(t.seq_len) + " is more than model.max_seq_len " +
                std::to_string(m.max_seq_len));
  }
  c.at_least("train.steps", t.steps, 1);
  c.positive("train.lr", t.lr);
  c.non_negative("train.min_lr_ratio", t.min_lr_ratio);
  if (t.min_lr_ratio > 1) invalid(source, "train.min_lr_ratio", fmt(t.min_lr_ratio) + " is > 1");
  c.at_least("train.warmup_steps", t.warmup_steps, 0);
  c.non_negative("train.weight_decay", t.weight_decay);
  c.positive("train.engram_lr_multiplier", t.engram_lr_multiplier);
  c.non_negative("train.grad_clip", t.grad_clip);
  c.at_least("train.grad_accum", t.grad_accum, 1);
  c.at_least("train.eval_every", t.eval_every, 0);
  c.at_least("train.eval_tokens", t.eval_tokens, 1);
}

ModelConfig ModelConfig::from_toml(const std::string& toml_text, const std::string& source) {
  toml::table doc;
  try {
    doc = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    const auto& pos = e.source().begin;
    malformed(source, "line " + std::to_string(pos.line) + ", column " + std::to_string(pos.column),
              std::string(e.description()));
  }
  if (!doc.contains("model")) malformed(source, "model", "missing required section");
  ModelConfig config;
  bool has_kv_heads = false, has_head_dim = false;
  for (const auto& [key, node] : doc) {
    const std::string name(key.str());
    if (name != "model" && name != "moe" && name != "engram" && name != "train") {
      malformed(source, name, "unknown section");
    }
    if (!node.is_table()) malformed(source, name, "expected a table, found " + type_name(node));
    Section section(*node.as_table(), source, name);
    if (name == "model") {
      read_model(section, config.model, has_kv_heads, has_head_dim);
    } else if (name == "moe") {
      read_moe(section, config.moe.emplace());
    } else if (name == "engram") {
      read_engram(section, config.engram.emplace());
    } else {
      read_train(section, config.train);
    }
  }

  BackboneConfig& m = config.model;
  if (!has_kv_heads) m.num_kv_heads = m.num_heads;
  if (!has_head_dim) {
    if (m.num_heads >= 1 && m.hidden_size % m.num_heads != 0) {
      invalid(source, "model.hidden_size",
              std::to_string(m.hidden_size) + " is not divisible by num_heads " +
                  std::to_string(m.num_heads) + " (set head_dim)");
    }
    m.head_dim = m.num_heads >= 1 ? m.hidden_size / m.num_heads : 0;
  }
  if (config.engram) {
    config.engram->hash.hidden_size =
        static_cast<int>(std::clamp<int64_t>(m.hidden_size, 0, INT_MAX));
    config.engram->hash.hc_mult = static_cast<int>(std::clamp<int64_t>(m.hc_mult, 0, INT_MAX));
  }
  config.validate(source);
  return config;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  return from_toml(read_file(path), path);
}

std::string ModelConfig::to_toml() const {
  std::ostringstream o;
  const BackboneConfig& m = model;
  o << "[model]\n"
    << "vocab_size = " << m.vocab_size << "\n"
    << "hidden_size = " << m.hidden_size << "\n"
    << "num_layers = " << m.num_layers << "\n"
    << "num_heads = " << m.num_heads << "\n"
    << "num_kv_heads = " << m.num_kv_heads << "\n"
    << "head_dim = " << m.head_dim << "\n"
    << "hc_mult = " << m.hc_mult << "\n"
    << "rope_theta = " << fmt(m.rope_theta) << "\n"
    << "norm_eps = " << fmt(m.norm_eps) << "\n"
    << "max_seq_len = " << m.max_seq_len << "\n"
    << "dense_intermediate_size = " << m.dense_intermediate_size << "\n"
    << "first_dense_layers = " << m.first_dense_layers << "\n";
  if (moe) {
    o << "\n[moe]\n"
      << "num_experts = " << moe->num_experts << "\n"
      << "num_shared_experts = " << moe->num_shared_experts << "\n"
      << "top_k = " << moe->top_k << "\n"
      << "expert_intermediate_size = " << moe->expert_intermediate_size << "\n"
      << "route_scale = " << fmt(moe->route_scale) << "\n"
      << "bias_update_gamma = " << fmt(moe->bias_update_gamma) << "\n"
      << "seq_aux_alpha = " << fmt(moe->seq_aux_alpha) << "\n";
  }
  if (engram) {
    const hash::EngramHashConfig& h = engram->hash;
    o << "\n[engram]\n"
      << "engram_vocab_size = " << list(h.engram_vocab_size) << "\n"
      << "max_ngram_size = " << h.max_ngram_size << "\n"
      << "n_embed_per_ngram = " << h.n_embed_per_ngram << "\n"
      << "n_head_per_ngram = " << h.n_head_per_ngram << "\n"
      << "layer_ids = " << list(h.layer_ids) << "\n"
      << "pad_id = " << h.pad_id << "\n"
      << "seed = " << h.seed << "\n"
      << "kernel_size = " << h.kernel_size << "\n";
    if (h.dead_token_id) o << "dead_token_id = " << *h.dead_token_id << "\n";
    o << "bias = " << (engram->bias ? "true" : "false") << "\n"
      << "short_conv = " << (engram->short_conv ? "true" : "false") << "\n";
  }
  const TrainConfig& t = train;
  o << "\n[train]\n"
    << "batch_size = " << t.batch_size << "\n"
    << "seq_len = " << t.seq_len << "\n"
    << "steps = " << t.steps << "\n"
    << "lr = " << fmt(t.lr) << "\n"
    << "min_lr_ratio = " << fmt(t.min_lr_ratio) << "\n"
    << "warmup_steps = " << t.warmup_steps << "\n"
    << "weight_decay = " << fmt(t.weight_decay) << "\n"
    << "engram_lr_multiplier = " << fmt(t.engram_lr_multiplier) << "\n"
    << "grad_clip = " << fmt(t.grad_clip) << "\n"
    << "grad_accum = " << t.grad_accum << "\n"
    << "seed = " << t.seed << "\n"
    << "eval_every = " << t.eval_every << "\n"
    << "eval_tokens = " << t.eval_tokens << "\n"
    << "data = " << quote(t.data) << "\n";
  return o.str();
}

}  // namespace engram::model
