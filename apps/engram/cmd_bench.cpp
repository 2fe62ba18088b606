// engram bench tokenize | hash: throughput figures as one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "engram/hash/hash_config.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/text/compressor.h"
#include "engram/text/tokenizer.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "engram/util/parallel.h"
#include "util/json.h"

namespace engram::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs fn at least `min_reps` times and for at least `min_seconds`; returns the fastest time.
template <class Fn>
double best_time(Fn&& fn, int min_reps, double min_seconds) {
  double best = 1e300, total = 0;
  for (int rep = 0; rep < min_reps || total < min_seconds; ++rep) {
    const auto t0 = Clock::now();
    fn();
    const double dt = seconds_since(t0);
    best = std::min(best, dt);
    total += dt;
  }
  return best;
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Cuts text into about `pieces` documents at line breaks (as tools/hf/encode_reference.py does).
std::vector<std::string> split_documents(const std::string& text, size_t pieces) {
  std::vector<std::string> docs;
  const size_t target = std::max<size_t>(text.size() / std::max<size_t>(pieces, 1), 1);
  size_t start = 0;
  while (start < text.size()) {
    size_t cut = std::min(text.size(), start + target);
    if (cut < text.size()) {
      const size_t eol = text.find('\n', cut);
      cut = eol == std::string::npos ? text.size() : eol + 1;
    }
    docs.push_back(text.substr(start, cut - start));
    start = cut;
  }
  return docs;
}

int bench_tokenize(int argc, char** argv) {
  const Args args(argc, argv, 3, {"tokenizer", "threads"}, {});
  if (args.positional().size() != 1) throw UsageError("expected one FILE to encode");
  const int threads = static_cast<int>(args.integer("threads", hardware_threads(), 1, 4096));
  const std::string& path = args.positional()[0];
  auto t0 = Clock::now();
  auto tokenizer = text::Tokenizer::from_file(args.required("tokenizer"));
  const double load_s = seconds_since(t0);
  const std::string data = read_file(path);
  const double mb = static_cast<double>(data.size()) / 1e6;

  std::vector<uint32_t> ids;
  t0 = Clock::now();
  tokenizer.encode(data, ids);  // first pass: cold BPE cache
  const double cold_s = seconds_since(t0);
  const size_t n_tokens = ids.size();
  const double warm_s = best_time(
      [&] {
        ids.clear();
        tokenizer.encode(data, ids);
      },
      3, 1.0);

  tokenizer.set_reference_pretokenizer(true);
  const double icu_s = best_time(
      [&] {
        ids.clear();
        tokenizer.encode(data, ids);
      },
      1, 0.0);
  tokenizer.set_reference_pretokenizer(false);

  const auto docs = split_documents(data, static_cast<size_t>(threads) * 16);
  const double batch_s = best_time([&] { (void)tokenizer.encode_batch(docs, threads); }, 3, 1.0);

  const std::string description = tokenizer.describe();
  std::string out =
      "{\"file\": " + json::Json(path).dump() + ", \"bytes\": " + std::to_string(data.size()) +
      ", \"tokens\": " + std::to_string(n_tokens) + ", \"load_s\": " + fmt(load_s) +
      ", \"single_thread\": {\"mb_per_s\": " + fmt(mb / warm_s) +
      ", \"tokens_per_s\": " + fmt(static_cast<double>(n_tokens) / warm_s) +
      ", \"first_pass_mb_per_s\": " + fmt(mb / cold_s) +
      ", \"icu_regex_mb_per_s\": " + fmt(mb / icu_s) +
      "}, \"threads\": " + std::to_string(threads) +
      ", \"documents\": " + std::to_string(docs.size()) +
      ", \"multi_thread\": {\"mb_per_s\": " + fmt(mb / batch_s) + "}, \"pretokenizer\": " +
      json::Json(description.substr(description.find("pre-tokenizer: ") + 15)).dump() + "}\n";
  write_stdout(out);
  return 0;
}

int bench_hash(int argc, char** argv) {
  const Args args(argc, argv, 3, {"tokenizer", "config", "tokens", "threads"}, {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const int threads = static_cast<int>(args.integer("threads", hardware_threads(), 1, 4096));
  const int64_t tokens = args.integer("tokens", 8 * 4096, 1, int64_t{1} << 34);
  const auto config = hash::EngramHashConfig::from_file(args.required("config"));
  auto t0 = Clock::now();
  const auto tokenizer = text::Tokenizer::from_file(args.required("tokenizer"));
  const double load_s = seconds_since(t0);
  t0 = Clock::now();
  auto table = text::CompressionTable::build(tokenizer);
  const double compress_s = seconds_since(t0);
  const hash::NgramHasher hasher(config, std::move(table.lut), table.compressed_size());

  const size_t seq_len = static_cast<size_t>(std::min<int64_t>(tokens, 4096));
  const size_t batch = static_cast<size_t>((tokens + static_cast<int64_t>(seq_len) - 1) /
                                           static_cast<int64_t>(seq_len));
  const size_t n = batch * seq_len;
  std::vector<int64_t> ids(n);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& id : ids) {  // xorshift64*: uniform ids over the vocabulary
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    id = static_cast<int64_t>((x * 0x2545F4914F6CDD1Dull) %
                              static_cast<uint64_t>(hasher.tokenizer_vocab()));
  }
  const size_t per_token = static_cast<size_t>(hasher.ids_per_token());
  std::vector<int32_t> out(hasher.num_layers() * n * per_token);
  const double nd = static_cast<double>(n);
  const std::span<int32_t> one_layer = std::span<int32_t>(out).first(n * per_token);
  const double one_1t =
      best_time([&] { hasher.hash(ids, batch, seq_len, 0, one_layer, 1); }, 3, 1.0);
  const double all_1t =
      best_time([&] { hasher.hash_all_layers(ids, batch, seq_len, out, 1); }, 3, 1.0);
  const double one_nt =
      best_time([&] { hasher.hash(ids, batch, seq_len, 0, one_layer, threads); }, 3, 1.0);
  const double all_nt =
      best_time([&] { hasher.hash_all_layers(ids, batch, seq_len, out, threads); }, 3, 1.0);
  const std::string out_json =
      "{\"tokens\": " + std::to_string(n) + ", \"layers\": " + std::to_string(hasher.num_layers()) +
      ", \"ids_per_token\": " + std::to_string(per_token) +
      ", \"threads\": " + std::to_string(threads) + ", \"tokenizer_load_s\": " + fmt(load_s) +
      ", \"compress_build_s\": " + fmt(compress_s) +
      ", \"one_layer_tokens_per_s\": {\"1\": " + fmt(nd / one_1t) + ", \"" +
      std::to_string(threads) + "\": " + fmt(nd / one_nt) +
      "}, \"all_layers_tokens_per_s\": {\"1\": " + fmt(nd / all_1t) + ", \"" +
      std::to_string(threads) + "\": " + fmt(nd / all_nt) + "}}\n";
  write_stdout(out_json);
  return 0;
}

}  // namespace

int run_bench(int argc, char** argv) {
  if (argc < 3) throw UsageError("expected `bench tokenize` or `bench hash`");
  const std::string what = argv[2];
  if (what == "tokenize") return bench_tokenize(argc, argv);
  if (what == "hash") return bench_hash(argc, argv);
  throw UsageError("unknown benchmark \"" + what + "\" (expected tokenize or hash)");
}

}  // namespace engram::cli
