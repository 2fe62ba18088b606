#include "engram/train/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engram/text/utf8.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "util/json.h"

namespace engram::train {
namespace {

namespace fs = std::filesystem;

struct Document {
  std::string text;
  uint64_t hash;  // decides the split
};

struct Source {
  std::string path;      // as found
  std::string relative;  // relative to the input it was found under
  bool jsonl;
};

using InvalidUtf8 = PrepareOptions::InvalidUtf8;

std::string latin1_to_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + bytes.size() / 8);
  for (char c : bytes) text::append_utf8(out, static_cast<unsigned char>(c));
  return out;
}

// The file's text as valid UTF-8 per the policy; `encoding` says how it was read.
std::string read_text(const Source& s, InvalidUtf8 policy, std::string& encoding) {
  std::string bytes = read_file(s.path);
  const size_t bad = text::find_invalid_utf8(bytes);
  encoding = "utf-8";
  if (bad == std::string::npos) return bytes;
  switch (policy) {
    case InvalidUtf8::kLatin1:
      encoding = "latin-1";
      return latin1_to_utf8(bytes);
    case InvalidUtf8::kReplace:
      encoding = "utf-8-replaced";
      return text::from_utf8_lossy(bytes);
    case InvalidUtf8::kError:
      break;
  }
  throw InputError(
      error_message(s.path, "invalid UTF-8 at byte offset " + std::to_string(bad) +
                                " (--invalid-utf8 latin1 or replace reads such files)"));
}

bool has_text_extension(const fs::path& p, bool& jsonl) {
  const std::string ext = p.extension().string();
  jsonl = ext == ".jsonl";
  return jsonl || ext == ".txt" || ext == ".text" || ext == ".md" || ext == ".rst";
}

uint64_t fnv1a64(std::string_view bytes, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// A well-mixed 64-bit hash of a document's identity.
uint64_t document_hash(const std::string& relative, size_t index, uint64_t seed) {
  uint64_t h = fnv1a64(relative);
  h = fnv1a64(std::to_string(index), h ^ 0x9E3779B97F4A7C15ull);
  h ^= seed + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  return h;
}

std::vector<Source> find_sources(const std::vector<std::string>& inputs) {
  std::vector<Source> sources;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (ec || !fs::exists(st)) throw IoError(error_message(input, "no such file or folder"));
    bool jsonl = false;
    if (fs::is_regular_file(st)) {
      if (!has_text_extension(input, jsonl)) {
        throw InputError(
            error_message(input, "not a text input (expected .txt, .text, .md, .rst or .jsonl)"));
      }
      sources.push_back({input, fs::path(input).filename().string(), jsonl});
      continue;
    }
    std::vector<Source> found;
    for (auto it = fs::recursive_directory_iterator(
             input, fs::directory_options::follow_directory_symlink, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file() && has_text_extension(it->path(), jsonl)) {
        found.push_back({it->path().string(), fs::relative(it->path(), input).string(), jsonl});
      }
    }
    if (ec) throw IoError(error_message(input, "cannot list folder: " + ec.message()));
    std::sort(found.begin(), found.end(),
              [](const Source& a, const Source& b) { return a.relative < b.relative; });
    sources.insert(sources.end(), found.begin(), found.end());
  }
  return sources;
}

std::vector<Document> read_documents(const Source& s, uint64_t seed, InvalidUtf8 policy,
                                     std::string& encoding) {
  const std::string bytes = read_text(s, policy, encoding);
  std::vector<Document> docs;
  if (!s.jsonl) {
    if (!bytes.empty()) docs.push_back({bytes, document_hash(s.relative, 0, seed)});
    return docs;
  }
  size_t line_no = 0, start = 0;
  while (start < bytes.size()) {
    size_t end = bytes.find('\n', start);
    if (end == std::string::npos) end = bytes.size();
    ++line_no;
    const std::string_view line(bytes.data() + start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = s.path + ":" + std::to_string(line_no);
    const json::Json obj = json::parse(line, where);
    const json::Where w{where, ""};
    std::string text = json::require_string(json::require(obj, "text", w), w.field("text"));
    if (!text.empty()) docs.push_back({std::move(text), document_hash(s.relative, line_no, seed)});
  }
  return docs;
}

class SplitWriter {
 public:
  explicit SplitWriter(const std::string& dir, const std::string& split)
      : tokens_(dir + "/" + split + ".bin"), docs_(dir + "/" + split + ".docs") {}
  void add(const std::vector<uint32_t>& ids) {
    const uint64_t start = count_;
    docs_.write(&start, sizeof start);
    tokens_.write(ids.data(), ids.size() * sizeof(uint32_t));
    count_ += ids.size();
  }
  void commit() {
    tokens_.commit();
    docs_.commit();
  }

 private:
  AtomicFileWriter tokens_, docs_;
  uint64_t count_ = 0;
};

json::Json stats_json(const SplitStats& s) {
  return {{"documents", s.documents}, {"tokens", s.tokens}, {"bytes", s.bytes}};
}

}  // namespace

std::string fnv1a64_hex(std::string_view bytes) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fnv1a64(bytes)));
  return buf;
}

PrepareResult prepare_dataset(const text::Tokenizer& tokenizer, const std::string& tokenizer_path,
                              const PrepareOptions& o) {
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0)) {
    throw InputError(error_message(
        "prepare", "val_fraction " + std::to_string(o.val_fraction) + " is outside [0, 1)"));
  }
  if (o.inputs.empty()) throw InputError(error_message("prepare", "no inputs given"));
  const std::vector<Source> sources = find_sources(o.inputs);
  if (sources.empty())
    throw InputError(
        error_message("prepare", "the inputs hold no .txt, .text, .md, .rst or .jsonl files"));
  make_directories(o.out_dir);

  // The BOS token of DeepSeek-style vocabularies, if this tokenizer has it (-1: none).
  int64_t bos = -1;
  if (o.add_bos) {
    if (const auto id = tokenizer.token_to_id("<｜begin▁of▁sentence｜>")) bos = *id;
  }
  const uint64_t threshold = static_cast<uint64_t>(o.val_fraction * 18446744073709551616.0);

  // Pass 1 reads every document's identity only to find the validation fallback; the corpus is
  // read again in pass 2, so memory holds one file at a time.
  uint64_t min_hash = UINT64_MAX;
  size_t docs_total = 0, val_total = 0;
  std::string encoding;
  for (const Source& s : sources) {
    for (const Document& d : read_documents(s, o.seed, o.invalid_utf8, encoding)) {
      ++docs_total;
      val_total += d.hash < threshold;
      min_hash = std::min(min_hash, d.hash);
    }
  }
  if (docs_total == 0)
    throw InputError(error_message("prepare", "the corpus is empty (no non-empty documents)"));
  const bool force_min_to_val = o.val_fraction > 0 && val_total == 0 && docs_total >= 2;

  PrepareResult result;
  SplitWriter train(o.out_dir, "train"), val(o.out_dir, "val");
  for (size_t f = 0; f < sources.size(); ++f) {
    std::vector<Document> docs = read_documents(sources[f], o.seed, o.invalid_utf8, encoding);
    std::vector<std::string> texts;
    texts.reserve(docs.size());
    for (auto& d : docs) texts.push_back(std::move(d.text));
    const auto encoded = tokenizer.encode_batch(texts, o.threads);
    SourceStats st{sources[f].path, encoding, {}, {}};
    for (size_t i = 0; i < docs.size(); ++i) {
      const bool to_val =
          docs[i].hash < threshold || (force_min_to_val && docs[i].hash == min_hash);
      std::vector<uint32_t> ids;
      ids.reserve(encoded[i].size() + 1);
      if (bos >= 0) ids.push_back(static_cast<uint32_t>(bos));
      ids.insert(ids.end(), encoded[i].begin(), encoded[i].end());
      (to_val ? val : train).add(ids);
      SplitStats& s = to_val ? st.val : st.train;
      s.documents += 1;
      s.tokens += static_cast<int64_t>(ids.size());
      s.bytes += static_cast<int64_t>(texts[i].size());
    }
    for (auto [total, part] : {std::pair{&result.train, &st.train}, {&result.val, &st.val}}) {
      total->documents += part->documents;
      total->tokens += part->tokens;
      total->bytes += part->bytes;
    }
    result.sources.push_back(std::move(st));
    if (o.progress) o.progress(f + 1, sources.size(), result.train.tokens + result.val.tokens);
  }
  train.commit();
  val.commit();

  json::Json manifest = {
      {"format", "engram-token-shards-v1"},
      {"tokenizer",
       {{"path", tokenizer_path},
        {"vocab_size", tokenizer.vocab_size()},
        {"fnv1a64", fnv1a64_hex(read_file(tokenizer_path))}}},
      {"dtype", "uint32"},
      {"bos_id", bos >= 0 ? json::Json(bos) : json::Json(nullptr)},
      {"val_fraction", o.val_fraction},
      {"seed", o.seed},
      {"train", stats_json(result.train)},
      {"val", stats_json(result.val)},
      {"sources", json::Json::array()},
  };
  for (const auto& s : result.sources) {
    manifest["sources"].push_back({{"path", s.path},
                                   {"encoding", s.encoding},
                                   {"train", stats_json(s.train)},
                                   {"val", stats_json(s.val)}});
  }
  result.manifest_path = o.out_dir + "/manifest.json";
  write_file_atomic(result.manifest_path, manifest.dump(1) + "\n");
  return result;
}

TokenShard TokenShard::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw IoError(error_message(path, std::string("cannot open: ") + std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(error_message(path, "not a regular file"));
  }
  const auto bytes = static_cast<size_t>(st.st_size);
  if (bytes % sizeof(uint32_t) != 0) {
    ::close(fd);
    throw FormatError(error_message(
        path, std::to_string(bytes) + " bytes is not a whole number of uint32 tokens"));
  }
  TokenShard shard;
  shard.size_ = bytes / sizeof(uint32_t);
  if (bytes > 0) {
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw IoError(error_message(path, std::string("cannot map: ") + std::strerror(errno)));
    }
    shard.mapping_ = std::shared_ptr<void>(p, [bytes](void* q) { ::munmap(q, bytes); });
    shard.data_ = static_cast<const uint32_t*>(p);
  }
  ::close(fd);
  return shard;
}

}  // namespace engram::train
