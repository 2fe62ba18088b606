// engram generate: continues a prompt with a checkpoint (KV-cached decoding, through
// cli::Generator: infer::Decoder on the CPU, infer::GpuDecoder with --device cuda) and prints
// the prompt and its continuation; one line of figures on stderr. With --engram-tables, the
// Engram tables are read from .engt files (memory tier: host or file) instead of the checkpoint,
// whose tables are then left on disk; the file tier prefetches every step's rows, with per-step
// table statistics (--table-stats FILE, JSON lines) and a summary line.
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

#include <sys/resource.h>

#include "args.h"
#include "commands.h"
#include "engt_tables.h"
#include "generation.h"
#include "engram/util/error.h"
#include "engram/util/file.h"
#include "engram/util/parallel.h"

namespace engram::cli {
namespace {

double number(const Args& args, const std::string& name, double fallback) {
  const auto v = args.optional(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    const double d = std::stod(*v, &used);
    if (used != v->size()) throw std::invalid_argument(*v);
    return d;
  } catch (const std::exception&) {
    throw UsageError("--" + name + ": expected a number, got \"" + *v + "\"");
  }
}

// The process's peak resident set so far, in MiB.
double peak_rss_mib() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

}  // namespace

int run_generate(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"ckpt", "prompt", "max-tokens", "seed", "temperature", "top-k", "top-p",
                   "tokenizer", "threads", "engram-tables", "tier", "cache-rows", "table-stats",
                   "device"},
                  {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional().front() + "\"");
  const std::string ckpt = args.required("ckpt");
  GenerateRequest request;
  request.prompt = args.required("prompt");
  if (!args.has("max-tokens")) throw UsageError("missing required option --max-tokens");
  request.max_tokens = args.integer("max-tokens", 0, 0, INT32_MAX);
  infer::SamplingOptions& o = request.sampling;
  o.temperature = number(args, "temperature", 0.8);
  o.top_k = args.integer("top-k", 0, 0, INT64_MAX);
  o.top_p = number(args, "top-p", 0.95);
  o.seed = static_cast<uint64_t>(args.integer("seed", 0, 0, INT64_MAX));
  if (!std::isfinite(o.temperature) || o.temperature < 0)
    throw UsageError("--temperature: " + *args.optional("temperature") + " must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1))
    throw UsageError("--top-p: " + *args.optional("top-p") + " must lie in (0, 1]");
  set_default_threads(static_cast<int>(args.integer("threads", 0, 0, 4096)));

  GeneratorOptions go;
  const std::optional<std::string> table_paths = args.optional("engram-tables");
  go.tier = args.optional("tier").value_or("");
  if (!table_paths && (args.has("tier") || args.has("cache-rows") || args.has("table-stats")))
    throw UsageError("--tier, --cache-rows and --table-stats need --engram-tables");
  go.cache_rows = args.integer("cache-rows", 0, 0, INT64_MAX);
  go.device = args.optional("device").value_or("cpu");
  if (args.has("table-stats") && (go.tier == "host" || go.device == "cuda"))
    throw UsageError("--table-stats: per-step statistics come from the CPU's file tier (--tier "
                     "file on --device cpu); on the GPU the summary line gives the totals");
  if (table_paths) go.table_paths = split_commas(*table_paths);
  request.step_stats = args.has("table-stats");

  Generator generator(ckpt, args.optional("tokenizer").value_or(""), go);
  Generation g;
  try {
    g = generator.run(request);
  } catch (const InputError& e) {
    throw InputError(std::string("--") + e.what());  // "--prompt: ..." as the option is named
  }
  write_stdout(g.text + "\n");
  if (g.stop == "max_seq_len") {
    std::fprintf(stderr, "[generate] note: stopped at model.max_seq_len = %lld tokens\n",
                 static_cast<long long>(generator.loaded().config.model.max_seq_len));
  }
  std::fprintf(stderr,
               "[generate] %lld tokens (stop: %s) | %s | prefill %lld tokens in %.1f ms | decode "
               "%.1f tokens/s | peak RSS %.1f MiB\n",
               static_cast<long long>(g.tokens), g.stop.c_str(), generator.device().c_str(),
               static_cast<long long>(g.prompt_tokens), g.prefill_seconds * 1e3,
               g.decode_steps > 0 ? static_cast<double>(g.decode_steps) / g.decode_seconds : 0.0,
               peak_rss_mib());
  const std::string tables = generator.tables_summary();
  if (!tables.empty()) {
    char stall[64] = "";
    if (generator.tier() == "file")
      std::snprintf(stall, sizeof stall, " | layers stalled %.1f ms", g.stall_seconds * 1e3);
    std::fprintf(stderr, "[generate] %s%s\n", tables.c_str(), stall);
    if (request.step_stats) write_file_atomic(*args.optional("table-stats"), g.step_lines);
  }
  return 0;
}

}  // namespace engram::cli
