// Hit rate of the hot-row cache (RowCache) on real n-gram traffic, against its size.
//
// The corpus (every *.txt of --corpus, in name order; a file that is not UTF-8 is read as
// Latin-1) is tokenized with the DeepSeek-V3 tokenizer, cut into steps of --step-tokens tokens
// (one sequence each, hashed from a padded history as the model sees it), hashed with the
// reference Engram configuration (EngramHashConfig defaults = configs/engram_default.json, or
// --config), and one layer's table rows (head_offsets[h] + id) form the trace. Each step is
// deduplicated by FetchPlan, as the memory tier would, and its unique rows go to one
// RowCache::plan() call.
//
// Output, JSON lines: first the trace (distinct rows, how concentrated the requests are), then
// one line per (cache size, policy). Cache sizes are fractions of the layer's table; each line
// also gives the size as a fraction of the distinct rows the trace touches. Hit rates:
//   hit_rate_fetches   hits / unique rows per step: the share of row fetches the cache saves
//   hit_rate_requests  the same weighted by the (token, head) reads each row serves
//   *_second_half      over the second half of the steps only (the cache warm)
//   static_top         fetch share of the `capacity` rows used in the most steps: what a cache
//                      preloaded with the trace's own most popular rows would hit (an offline
//                      yardstick, not a bound)
//
//   build/bench/bench_row_cache [--corpus DIR] [--tokenizer PATH] [--config CFG.json]
//       [--layer ID] [--max-tokens N] [--step-tokens N] [--fractions 0.001,0.01,...]
//       [--threads N] [--sketch-counters N] [--window F]   (the last two: kFrequency options)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engram/hash/hash_config.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/memory/fetch_plan.h"
#include "engram/memory/row_cache.h"
#include "engram/text/compressor.h"
#include "engram/text/tokenizer.h"
#include "engram/text/utf8.h"
#include "engram/util/error.h"
#include "engram/util/file.h"

namespace {

using namespace engram;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string corpus = "data/corpora/gutenberg";
  std::string tokenizer = "data/tokenizers/deepseek-v3/tokenizer.json";
  std::string config;  // empty: EngramHashConfig defaults
  int layer = -1;      // -1: the first of layer_ids
  int64_t max_tokens = 4'000'000;
  int64_t step_tokens = 4096;
  std::vector<double> fractions = {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2};
  int threads = 2;
  int64_t sketch_counters = memory::FrequencyOptions{}.sketch_counters_per_row;
  double window = memory::FrequencyOptions{}.window_fraction;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_row_cache: %s\nusage: bench_row_cache [--corpus DIR] [--tokenizer PATH] "
               "[--config CFG.json] [--layer ID] [--max-tokens N] [--step-tokens N] "
               "[--fractions F,F,...] [--threads N] [--sketch-counters N] [--window F]\n",
               why.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage("missing value after " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--corpus")
        o.corpus = v;
      else if (a == "--tokenizer")
        o.tokenizer = v;
      else if (a == "--config")
        o.config = v;
      else if (a == "--layer")
        o.layer = std::stoi(v);
      else if (a == "--max-tokens")
        o.max_tokens = std::stoll(v);
      else if (a == "--step-tokens")
        o.step_tokens = std::stoll(v);
      else if (a == "--threads")
        o.threads = std::stoi(v);
      else if (a == "--sketch-counters")
        o.sketch_counters = std::stoll(v);
      else if (a == "--window")
        o.window = std::stod(v);
      else if (a == "--fractions") {
        o.fractions.clear();
        size_t pos = 0;
        while (pos < v.size()) {
          size_t end = v.find(',', pos);
          if (end == std::string::npos) end = v.size();
          o.fractions.push_back(std::stod(v.substr(pos, end - pos)));
          pos = end + 1;
        }
      } else {
        usage("unknown option " + a);
      }
    } catch (const std::logic_error&) {
      usage("bad value \"" + v + "\" for " + a);
    }
  }
  if (o.max_tokens < 1 || o.step_tokens < 1 || o.threads < 1) usage("values must be positive");
  return o;
}

std::string latin1_to_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + bytes.size() / 8);
  for (unsigned char c : bytes) text::append_utf8(out, c);
  return out;
}

std::vector<int64_t> tokenize_corpus(const Options& o, const text::Tokenizer& tok) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(o.corpus)) {
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw InputError(o.corpus + ": no .txt files");
  std::vector<std::string> texts;
  for (const std::string& f : files) {
    std::string t = read_file(f);
    texts.push_back(text::is_valid_utf8(t) ? std::move(t) : latin1_to_utf8(t));
  }
  const auto encoded = tok.encode_batch(texts, o.threads);
  std::vector<int64_t> ids;
  for (const auto& doc : encoded) {
    for (uint32_t id : doc) {
      if (static_cast<int64_t>(ids.size()) == o.max_tokens) return ids;
      ids.push_back(id);
    }
  }
  return ids;
}

// The trace: per step, the unique rows (ascending) and the reads each serves.
struct Trace {
  std::vector<int64_t> rows;
  std::vector<int32_t> requests;
  std::vector<size_t> step_begin;  // steps + 1 offsets into rows
  size_t steps() const { return step_begin.size() - 1; }
};

struct Result {
  std::string line;
};

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Share of `total` held by the `k` largest values of `sorted_desc` (prefix sums).
double top_share(const std::vector<int64_t>& prefix, int64_t k, int64_t total) {
  k = std::clamp<int64_t>(k, 0, static_cast<int64_t>(prefix.size()) - 1);
  return total ? static_cast<double>(prefix[static_cast<size_t>(k)]) / static_cast<double>(total)
               : 0.0;
}

std::string simulate(const Trace& trace, int64_t capacity, memory::CachePolicy policy,
                     const Options& o) {
  memory::FrequencyOptions fo;
  fo.sketch_counters_per_row = o.sketch_counters;
  fo.window_fraction = o.window;
  memory::RowCache cache(capacity, policy, fo);
  memory::CachePlan plan;
  const size_t half = trace.steps() / 2;
  int64_t req = 0, req_hit = 0, fetch = 0, fetch_hit = 0;
  int64_t req2 = 0, req_hit2 = 0, fetch2 = 0, fetch_hit2 = 0;
  const auto t0 = Clock::now();
  for (size_t s = 0; s < trace.steps(); ++s) {
    const size_t b = trace.step_begin[s], e = trace.step_begin[s + 1];
    const std::span<const int64_t> rows(trace.rows.data() + b, e - b);
    cache.plan(rows, plan);
    int64_t sr = 0, srh = 0;
    size_t k = 0;  // plan.hits is in input order
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t n = trace.requests[b + i];
      sr += n;
      if (k < plan.hits.size() && plan.hits[k].row == rows[i]) {
        srh += n;
        ++k;
      }
    }
    req += sr;
    req_hit += srh;
    fetch += static_cast<int64_t>(rows.size());
    fetch_hit += static_cast<int64_t>(plan.hits.size());
    if (s >= half) {
      req2 += sr;
      req_hit2 += srh;
      fetch2 += static_cast<int64_t>(rows.size());
      fetch_hit2 += static_cast<int64_t>(plan.hits.size());
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const memory::CacheStats& st = cache.stats();
  const auto ratio = [](int64_t a, int64_t b) {
    return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
  };
  return std::string("\"policy\": \"") +
         (policy == memory::CachePolicy::kLru ? "lru" : "frequency") +
         "\", \"hit_rate_fetches\": " + fmt(ratio(fetch_hit, fetch)) +
         ", \"hit_rate_requests\": " + fmt(ratio(req_hit, req)) +
         ", \"hit_rate_fetches_second_half\": " + fmt(ratio(fetch_hit2, fetch2)) +
         ", \"hit_rate_requests_second_half\": " + fmt(ratio(req_hit2, req2)) +
         ", \"bypass_share\": " + fmt(ratio(st.bypassed, st.lookups)) +
         ", \"evictions\": " + std::to_string(st.evictions) +
         ", \"admissions_refused\": " + std::to_string(st.admissions_refused) +
         ", \"bookkeeping_bytes\": " + std::to_string(cache.memory_bytes()) +
         ", \"plan_ns_per_row\": " +
         fmt(seconds * 1e9 / static_cast<double>(std::max<int64_t>(fetch, 1)));
}

int run(const Options& o) {
  std::string tok_path = o.tokenizer;
  if (is_directory(tok_path)) tok_path += "/tokenizer.json";
  const auto t0 = Clock::now();
  const text::Tokenizer tok = text::Tokenizer::from_file(tok_path);
  const std::vector<int64_t> ids = tokenize_corpus(o, tok);
  auto table = text::CompressionTable::build(tok, o.threads);
  const hash::EngramHashConfig config =
      o.config.empty() ? hash::EngramHashConfig{} : hash::EngramHashConfig::from_file(o.config);
  const hash::NgramHasher hasher(config, std::move(table.lut), table.compressed_size());
  const size_t layer = o.layer < 0 ? 0 : hasher.layer_index(o.layer);
  const int layer_id = hasher.layer_id(layer);
  const std::vector<int64_t> offsets = hasher.head_offsets(layer);
  const int64_t table_rows = hasher.table_rows(layer);
  const size_t heads = static_cast<size_t>(hasher.ids_per_token());
  const size_t step_tokens = static_cast<size_t>(o.step_tokens);
  const size_t steps = ids.size() / step_tokens;
  if (steps < 2) throw InputError("fewer than two steps of tokens: lower --step-tokens");

  std::vector<int32_t> hashed(steps * step_tokens * heads);
  hasher.hash(std::span(ids).first(steps * step_tokens), steps, step_tokens, layer, hashed,
              o.threads);
  Trace trace;
  trace.step_begin.push_back(0);
  std::vector<int64_t> request_count(static_cast<size_t>(table_rows), 0);
  std::vector<int64_t> step_count(static_cast<size_t>(table_rows), 0);
  int64_t blocks16 = 0;
  for (size_t s = 0; s < steps; ++s) {
    const memory::FetchPlan fp = memory::FetchPlan::build(
        std::span(hashed).subspan(s * step_tokens * heads, step_tokens * heads), step_tokens,
        {layer_id}, {offsets});
    const memory::LayerFetch& l = fp.layers()[0];
    for (size_t i = 0; i < l.rows.size(); ++i) {
      request_count[static_cast<size_t>(l.rows[i])] += l.requests[i];
      ++step_count[static_cast<size_t>(l.rows[i])];
    }
    blocks16 += static_cast<int64_t>(memory::group_by_block(l.rows, {16, 1}).size());
    trace.rows.insert(trace.rows.end(), l.rows.begin(), l.rows.end());
    trace.requests.insert(trace.requests.end(), l.requests.begin(), l.requests.end());
    trace.step_begin.push_back(trace.rows.size());
  }
  const double prep_seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  // Concentration of the traffic.
  const auto sorted_prefix = [](std::vector<int64_t> counts, int64_t& distinct, int64_t& total) {
    std::sort(counts.begin(), counts.end(), std::greater<>());
    distinct = std::find(counts.begin(), counts.end(), 0) - counts.begin();
    std::vector<int64_t> prefix(counts.size() + 1, 0);
    for (size_t i = 0; i < counts.size(); ++i) prefix[i + 1] = prefix[i] + counts[i];
    total = prefix.back();
    return prefix;
  };
  int64_t distinct = 0, requests = 0, fetches = 0;
  const std::vector<int64_t> req_prefix = sorted_prefix(request_count, distinct, requests);
  const std::vector<int64_t> fetch_prefix = sorted_prefix(step_count, distinct, fetches);
  const auto top = [&](double f) {
    return static_cast<int64_t>(f * static_cast<double>(distinct));
  };
  std::printf(
      "{\"trace\": {\"tokens\": %zu, \"steps\": %zu, \"step_tokens\": %zu, \"layer\": %d, "
      "\"table_rows\": %lld, \"requests\": %lld, \"fetches\": %lld, \"distinct_rows\": %lld, "
      "\"distinct_of_table\": %s, \"fetches_per_step\": %s, \"dedup_ratio\": %s, "
      "\"blocks_per_step_16_rows_a_block\": %s, "
      "\"top1pct_request_share\": %s, \"top10pct_request_share\": %s, "
      "\"top1pct_fetch_share\": %s, \"top10pct_fetch_share\": %s, "
      "\"rows_used_in_one_step_only\": %lld, \"prepare_seconds\": %s}}\n",
      steps * step_tokens, steps, step_tokens, layer_id, static_cast<long long>(table_rows),
      static_cast<long long>(requests), static_cast<long long>(fetches),
      static_cast<long long>(distinct),
      fmt(static_cast<double>(distinct) / static_cast<double>(table_rows)).c_str(),
      fmt(static_cast<double>(fetches) / static_cast<double>(steps)).c_str(),
      fmt(static_cast<double>(requests) / static_cast<double>(fetches)).c_str(),
      fmt(static_cast<double>(blocks16) / static_cast<double>(steps)).c_str(),
      fmt(top_share(req_prefix, top(0.01), requests)).c_str(),
      fmt(top_share(req_prefix, top(0.10), requests)).c_str(),
      fmt(top_share(fetch_prefix, top(0.01), fetches)).c_str(),
      fmt(top_share(fetch_prefix, top(0.10), fetches)).c_str(),
      static_cast<long long>(std::count(step_count.begin(), step_count.end(), 1)),
      fmt(prep_seconds).c_str());
  std::fflush(stdout);

  // One job per (size, policy), spread over the threads; printed in order.
  struct Job {
    int64_t capacity;
    double fraction;
    memory::CachePolicy policy;
    std::string line;
  };
  std::vector<Job> jobs;
  for (double f : o.fractions) {
    const auto cap = static_cast<int64_t>(f * static_cast<double>(table_rows) + 0.5);
    for (auto p : {memory::CachePolicy::kLru, memory::CachePolicy::kFrequency}) {
      jobs.push_back({cap, f, p, {}});
    }
  }
  std::atomic<size_t> next{0};
  const auto worker = [&] {
    for (size_t j; (j = next.fetch_add(1)) < jobs.size();) {
      Job& job = jobs[j];
      job.line = "{\"capacity\": " + std::to_string(job.capacity) +
                 ", \"of_table\": " + fmt(job.fraction) + ", \"of_distinct\": " +
                 fmt(static_cast<double>(job.capacity) / static_cast<double>(distinct)) +
                 ", \"static_top\": " + fmt(top_share(fetch_prefix, job.capacity, fetches)) + ", " +
                 simulate(trace, job.capacity, job.policy, o) + "}\n";
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < o.threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  for (const Job& job : jobs) std::fputs(job.line.c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_row_cache: %s\n", e.what());
    return 1;
  }
}
