#include "engram/text/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <unordered_map>

#include "engram/text/normalizer.h"
#include "engram/text/utf8.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "engram/util/parallel.h"
#include "text/added_vocabulary.h"
#include "text/bpe.h"
#include "text/byte_level.h"
#include "text/pretokenizer.h"
#include "text/unicode_props.h"
#include "util/json.h"

namespace engram::text {

using json::Json;
using json::Where;

struct Tokenizer::Impl {
  std::string source;
  std::vector<std::string> id_to_token;  // "" where an id has no token
  std::vector<uint8_t> id_present;
  std::vector<std::string> id_bytes;  // what each id decodes to (ByteLevel decoder, per token)
  std::unordered_map<std::string, uint32_t> token_to_id;
  std::vector<AddedToken> added;
  Normalizer normalizer;
  PreTokenizer pretokenizer;
  std::unique_ptr<BpeModel> bpe;
  std::unique_ptr<AddedTokenMatcher> raw_matcher;         // non-normalized added tokens
  std::unique_ptr<AddedTokenMatcher> normalized_matcher;  // normalized added tokens
  size_t merges = 0;

  void encode(std::string_view text, std::vector<uint32_t>& out) const;
  void encode_text_segment(std::string_view text, std::vector<uint32_t>& out) const;
};

namespace {

// ---- tokenizer.json parsing ------------------------------------------------------------------

std::string require_type(const Json& j, const Where& w) {
  json::require_object(j, w);
  return json::require_string(json::require(j, "type", w), w.field("type"));
}

bool optional_bool(const Json& j, std::string_view key, bool fallback, const Where& w) {
  const Json* v = json::optional(j, key);
  return v ? json::require_bool(*v, w.field(key)) : fallback;
}

// {"String": s} or {"Regex": r}
std::pair<std::string, bool> parse_pattern(const Json& j, const Where& w) {
  json::require_object(j, w);
  if (const Json* s = json::optional(j, "String"))
    return {json::require_string(*s, w.field("String")), false};
  if (const Json* r = json::optional(j, "Regex"))
    return {json::require_string(*r, w.field("Regex")), true};
  w.fail("expected {\"String\": ...} or {\"Regex\": ...}, found " + json::brief(j));
}

void parse_normalizer(const Json& j, const Where& w, std::vector<NormalizerStep>& steps) {
  using Kind = NormalizerStep::Kind;
  const std::string type = require_type(j, w);
  NormalizerStep step{};
  if (type == "Sequence") {
    const Json& list =
        json::require_array(json::require(j, "normalizers", w), w.field("normalizers"));
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(list[i], w.field("normalizers").index(i), steps);
    return;
  }
  if (type == "NFC")
    step.kind = Kind::kNfc;
  else if (type == "NFD")
    step.kind = Kind::kNfd;
  else if (type == "NFKC")
    step.kind = Kind::kNfkc;
  else if (type == "NFKD")
    step.kind = Kind::kNfkd;
  else if (type == "Lowercase")
    step.kind = Kind::kLowercase;
  else if (type == "StripAccents")
    step.kind = Kind::kStripAccents;
  else if (type == "Strip") {
    step.kind = Kind::kStrip;
    step.strip_left = optional_bool(j, "strip_left", true, w);
    step.strip_right = optional_bool(j, "strip_right", true, w);
  } else if (type == "Replace") {
    step.kind = Kind::kReplace;
    std::tie(step.pattern, step.pattern_is_regex) =
        parse_pattern(json::require(j, "pattern", w), w.field("pattern"));
    step.content = json::require_string(json::require(j, "content", w), w.field("content"));
  } else if (type == "Prepend") {
    step.kind = Kind::kPrepend;
    step.content = json::require_string(json::require(j, "prepend", w), w.field("prepend"));
  } else {
    w.field("type").fail("unsupported normalizer \"" + type +
                         "\" (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, "
                         "Strip, Replace, Prepend)");
  }
  steps.push_back(std::move(step));
}

SplitBehavior parse_behavior(const Json& j, const Where& w) {
  const std::string b = json::require_string(j, w);
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  w.fail("unknown split behavior \"" + b + "\"");
}

PreTokenizerStep split_step(std::string_view pattern, bool is_regex, SplitBehavior behavior,
                            bool invert, const Where& w) {
  PreTokenizerStep step;
  step.behavior = behavior;
  step.invert = invert;
  if (!is_regex) {
    step.matcher = make_literal_matcher(std::string(pattern));
  } else {
    step.reference_matcher = make_regex_matcher(pattern, w.str());
    step.matcher = make_fast_matcher(pattern);
    if (!step.matcher) step.matcher = std::move(step.reference_matcher);
  }
  return step;
}

// Appends the steps of a pre-tokenizer; returns true if it ended with ByteLevel.
bool parse_pretokenizer(const Json& j, const Where& w, std::vector<PreTokenizerStep>& steps,
                        bool& byte_level_seen) {
  const std::string type = require_type(j, w);
  if (byte_level_seen) w.fail("a pre-tokenizer after ByteLevel is not supported");
  if (type == "Sequence") {
    const Json& list =
        json::require_array(json::require(j, "pretokenizers", w), w.field("pretokenizers"));
    for (size_t i = 0; i < list.size(); ++i) {
      parse_pretokenizer(list[i], w.field("pretokenizers").index(i), steps, byte_level_seen);
    }
  } else if (type == "Split") {
    const auto [pattern, is_regex] =
        parse_pattern(json::require(j, "pattern", w), w.field("pattern"));
    const SplitBehavior behavior =
        parse_behavior(json::require(j, "behavior", w), w.field("behavior"));
    const bool invert = optional_bool(j, "invert", false, w);
    steps.push_back(split_step(pattern, is_regex, behavior, invert, w.field("pattern")));
  } else if (type == "Digits") {
    const bool individual = optional_bool(j, "individual_digits", false, w);
    steps.push_back(split_step(individual ? "\\p{N}" : "\\p{N}+", true,
                               individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                               false, w));
  } else if (type == "ByteLevel") {
    if (optional_bool(j, "add_prefix_space", true, w)) {
      PreTokenizerStep prefix;
      prefix.kind = PreTokenizerStep::Kind::kPrefixSpace;
      steps.push_back(std::move(prefix));
    }
    if (optional_bool(j, "use_regex", true, w)) {
      steps.push_back(split_step(kGpt2Pattern, true, SplitBehavior::kIsolated, false, w));
    }
    byte_level_seen = true;
  } else {
    w.field("type").fail("unsupported pre-tokenizer \"" + type +
                         "\" (supported: Sequence, Split, Digits, ByteLevel)");
  }
  return byte_level_seen;
}

void parse_decoder(const Json& j, const Where& w) {
  const std::string type = require_type(j, w);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const Json& list = json::require_array(json::require(j, "decoders", w), w.field("decoders"));
    if (list.size() == 1) return parse_decoder(list[0], w.field("decoders").index(0));
  }
  w.fail("unsupported decoder " + json::brief(j) +
         " (a byte-level BPE tokenizer decodes with ByteLevel)");
}

uint32_t parse_id(const Json& j, const Where& w) {
  const int64_t id = json::require_int(j, w);
  if (id < 0 || id > INT32_MAX) w.fail("token id " + std::to_string(id) + " is out of range");
  return static_cast<uint32_t>(id);
}

std::string directory_or_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    const std::string file = path + (path.ends_with('/') ? "" : "/") + "tokenizer.json";
    if (::stat(file.c_str(), &st) != 0)
      throw IoError(error_message(path, "directory holds no tokenizer.json"));
    return file;
  }
  return path;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  const std::string file = directory_or_file(path);
  return from_json(read_file(file), file);
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  const Json doc = json::parse(json_text, source);
  const Where root{source, ""};
  json::require_object(doc, root);
  auto impl = std::make_unique<Impl>();
  impl->source = source;

  // ---- model ----
  const Where wm = root.field("model");
  const Json& model = json::require_object(json::require(doc, "model", root), wm);
  if (const Json* t = json::optional(model, "type")) {
    const std::string type = json::require_string(*t, wm.field("type"));
    if (type != "BPE")
      wm.field("type").fail("unsupported model \"" + type + "\" (expected \"BPE\")");
  }
  if (const Json* d = json::optional(model, "dropout");
      d && !(d->is_number() && d->get<double>() == 0.0)) {
    wm.field("dropout").fail("BPE dropout " + json::brief(*d) + " is not supported (must be null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const Json* v = json::optional(model, key);
        v && !(v->is_string() && v->get<std::string>().empty())) {
      wm.field(key).fail(json::brief(*v) + " is not supported by a byte-level BPE (must be null)");
    }
  }
  if (optional_bool(model, "byte_fallback", false, wm)) {
    wm.field("byte_fallback").fail("true is not supported (byte-level BPE covers every byte)");
  }
  const Where wv = wm.field("vocab");
  const Json& vocab = json::require_object(json::require(model, "vocab", wm), wv);
  size_t vocab_size = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const uint32_t id = parse_id(it.value(), wv.field(it.key()));
    vocab_size = std::max<size_t>(vocab_size, id + 1ull);
  }
  const Json& added_json =
      json::optional(doc, "added_tokens") ? doc["added_tokens"] : Json::array();
  const Where wa = root.field("added_tokens");
  json::require_array(added_json, wa);
  for (size_t i = 0; i < added_json.size(); ++i) {
    const Where w = wa.index(i);
    const Json& t = json::require_object(added_json[i], w);
    AddedToken tok;
    tok.id = parse_id(json::require(t, "id", w), w.field("id"));
    tok.content = json::require_string(json::require(t, "content", w), w.field("content"));
    if (tok.content.empty()) w.field("content").fail("an added token cannot be empty");
    if (!is_valid_utf8(tok.content)) w.field("content").fail("invalid UTF-8");
    tok.single_word = optional_bool(t, "single_word", false, w);
    tok.lstrip = optional_bool(t, "lstrip", false, w);
    tok.rstrip = optional_bool(t, "rstrip", false, w);
    tok.special = optional_bool(t, "special", false, w);
    tok.normalized = optional_bool(t, "normalized", !tok.special, w);
    vocab_size = std::max<size_t>(vocab_size, tok.id + 1ull);
    impl->added.push_back(std::move(tok));
  }

  impl->id_to_token.assign(vocab_size, std::string());
  impl->id_present.assign(vocab_size, 0);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = static_cast<uint32_t>(it.value().get<int64_t>());
    if (impl->id_present[id])
      wv.field(it.key()).fail("id " + std::to_string(id) + " is used by two tokens");
    if (!is_valid_utf8(it.key())) wv.fail("a token is not valid UTF-8");
    impl->id_to_token[id] = it.key();
    impl->id_present[id] = 1;
    impl->token_to_id.emplace(it.key(), id);
  }
  // Added tokens take precedence over the model's vocabulary for their id.
  for (const AddedToken& tok : impl->added) {
    impl->id_to_token[tok.id] = tok.content;
    impl->id_present[tok.id] = 1;
    impl->token_to_id[tok.content] = tok.id;
  }

  // Merges: "a b" strings or ["a", "b"] pairs, in rank order.
  const Where wmg = wm.field("merges");
  const Json& merges_json = json::require_array(json::require(model, "merges", wm), wmg);
  std::vector<BpeModel::Merge> merges;
  merges.reserve(merges_json.size());
  std::unordered_map<std::string, uint32_t> model_vocab;
  model_vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    model_vocab.emplace(it.key(), it.value().get<uint32_t>());
  auto lookup = [&](const std::string& token, const Where& w) -> uint32_t {
    auto it = model_vocab.find(token);
    if (it == model_vocab.end()) w.fail("token \"" + token + "\" is not in the vocabulary");
    return it->second;
  };
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const Where w = wmg.index(i);
    const Json& m = merges_json[i];
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        w.fail("expected \"left right\" (one space), found " + json::brief(m));
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      w.fail("expected \"left right\" or [\"left\", \"right\"], found " + json::brief(m));
    }
    merges.push_back({lookup(a, w), lookup(b, w), lookup(a + b, w)});
  }
  impl->merges = merges.size();

  BpeModel::Options options;
  if (const Json* unk = json::optional(model, "unk_token")) {
    options.unk_id =
        lookup(json::require_string(*unk, wm.field("unk_token")), wm.field("unk_token"));
  }
  options.fuse_unk = optional_bool(model, "fuse_unk", false, wm);
  options.ignore_merges = optional_bool(model, "ignore_merges", false, wm);
  std::vector<int64_t> byte_ids(256, -1);
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, byte_level::byte_to_char(static_cast<uint8_t>(b)));
    if (auto it = model_vocab.find(ch); it != model_vocab.end())
      byte_ids[static_cast<size_t>(b)] = it->second;
  }
  std::vector<std::pair<std::string, uint32_t>> whole_tokens;
  impl->id_bytes.assign(vocab_size, std::string());
  for (size_t id = 0; id < vocab_size; ++id) {
    if (!impl->id_present[id]) continue;
    // ByteLevel decoder, per token: byte characters back to bytes; a token with any other
    // character contributes its UTF-8 text as is.
    auto raw = byte_level::decode(impl->id_to_token[id]);
    impl->id_bytes[id] = raw ? *raw : impl->id_to_token[id];
  }
  if (options.ignore_merges) {
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (auto raw = byte_level::decode(it.key()))
        whole_tokens.emplace_back(*raw, static_cast<uint32_t>(it.value().get<int64_t>()));
    }
  }
  impl->bpe =
      std::make_unique<BpeModel>(std::move(byte_ids), merges, options, std::move(whole_tokens));

  // ---- normalizer, pre-tokenizer, decoder ----
  if (const Json* n = json::optional(doc, "normalizer")) {
    std::vector<NormalizerStep> steps;
    parse_normalizer(*n, root.field("normalizer"), steps);
    impl->normalizer = Normalizer(std::move(steps), root.field("normalizer").str());
  }
  const Json* pt = json::optional(doc, "pre_tokenizer");
  if (!pt)
    root.fail(
        "missing \"pre_tokenizer\": not a byte-level BPE tokenizer (expected a ByteLevel "
        "pre-tokenizer)");
  std::vector<PreTokenizerStep> steps;
  bool byte_level_seen = false;
  parse_pretokenizer(*pt, root.field("pre_tokenizer"), steps, byte_level_seen);
  if (!byte_level_seen) {
    root.field("pre_tokenizer").fail("no ByteLevel step: not a byte-level BPE tokenizer");
  }
  impl->pretokenizer = PreTokenizer(std::move(steps));
  const Json* dec = json::optional(doc, "decoder");
  if (!dec) root.fail("missing \"decoder\" (a byte-level BPE tokenizer decodes with ByteLevel)");
  parse_decoder(*dec, root.field("decoder"));

  // ---- added-token matchers ----
  std::vector<std::string> raw_patterns, norm_patterns;
  std::vector<const AddedToken*> raw_tokens, norm_tokens;
  for (const AddedToken& tok : impl->added) {
    if (tok.normalized) {
      norm_patterns.push_back(impl->normalizer.normalize(tok.content));
      norm_tokens.push_back(&tok);
    } else {
      raw_patterns.push_back(tok.content);
      raw_tokens.push_back(&tok);
    }
  }
  impl->raw_matcher = std::make_unique<AddedTokenMatcher>(raw_patterns, raw_tokens);
  (void)unicode::flags(0);  // build the code point table now rather than in the first encode
  impl->normalized_matcher = std::make_unique<AddedTokenMatcher>(norm_patterns, norm_tokens);
  return Tokenizer(std::move(impl));
}

// ---- encoding -------------------------------------------------------------------------------

void Tokenizer::Impl::encode_text_segment(std::string_view text, std::vector<uint32_t>& out) const {
  thread_local Pieces pieces;
  pieces.clear();
  pretokenizer.split(text, pieces);
  for (std::string_view piece : pieces.items) bpe->encode_word(piece, out);
}

void Tokenizer::Impl::encode(std::string_view text, std::vector<uint32_t>& out) const {
  std::vector<Segment> segments;
  raw_matcher->split(text, segments);
  std::vector<Segment> inner;
  for (const Segment& seg : segments) {
    if (seg.id >= 0) {
      out.push_back(static_cast<uint32_t>(seg.id));
      continue;
    }
    std::string_view piece = text.substr(seg.begin, seg.end - seg.begin);
    std::string normalized;
    if (!normalizer.is_identity()) {
      normalized = normalizer.normalize(piece);
      piece = normalized;
    }
    if (normalized_matcher->empty()) {
      if (!piece.empty()) encode_text_segment(piece, out);
      continue;
    }
    inner.clear();
    normalized_matcher->split(piece, inner);
    for (const Segment& s : inner) {
      if (s.id >= 0) {
        out.push_back(static_cast<uint32_t>(s.id));
      } else if (s.end > s.begin) {
        encode_text_segment(piece.substr(s.begin, s.end - s.begin), out);
      }
    }
  }
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> out;
  encode(text, out);
  return out;
}

void Tokenizer::encode(std::string_view text, std::vector<uint32_t>& out) const {
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    throw InputError(
        error_message("input text", "invalid UTF-8 at byte offset " + std::to_string(bad)));
  }
  out.reserve(out.size() + text.size() / 4);
  impl_->encode(text, out);
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                           int threads) const {
  std::vector<std::vector<uint32_t>> out(texts.size());
  parallel_for(texts.size(), threads, 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) encode(texts[i], out[i]);
  });
  return out;
}

// ---- decoding and lookups -------------------------------------------------------------------

std::string Tokenizer::decode_bytes(std::span<const uint32_t> ids) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t id = ids[i];
    if (id >= impl_->id_present.size() || !impl_->id_present[id]) {
      throw InputError(error_message("decode", "id " + std::to_string(id) + " at position " +
                                                   std::to_string(i) +
                                                   " has no token (vocabulary size " +
                                                   std::to_string(impl_->id_present.size()) + ")"));
    }
    bytes += impl_->id_bytes[id];
  }
  return bytes;
}

std::string Tokenizer::decode(std::span<const uint32_t> ids) const {
  return from_utf8_lossy(decode_bytes(ids));
}

size_t Tokenizer::vocab_size() const {
  return impl_->id_to_token.size();
}

std::optional<std::string> Tokenizer::id_to_token(uint32_t id) const {
  if (id >= impl_->id_present.size() || !impl_->id_present[id]) return std::nullopt;
  return impl_->id_to_token[id];
}

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_to_id.find(std::string(token));
  if (it == impl_->token_to_id.end()) return std::nullopt;
  return it->second;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}

std::string Tokenizer::describe() const {
  return impl_->source + ": byte-level BPE, " + std::to_string(vocab_size()) + " ids, " +
         std::to_string(impl_->merges) + " merges, " + std::to_string(impl_->added.size()) +
         " added tokens; pre-tokenizer: " + impl_->pretokenizer.describe();
}

void Tokenizer::set_reference_pretokenizer(bool on) {
  impl_->pretokenizer.set_reference_only(on);
}

}  // namespace engram::text
