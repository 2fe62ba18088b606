// engram train / engram eval.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <string>

#include "args.h"
#include "commands.h"
#include "engt_tables.h"
#include "engram/train/run.h"
#include "engram/train/trainer.h"
#include "engram/util/file.h"
#include "engram/util/parallel.h"
#include "util/json.h"

namespace engram::cli {
namespace {

std::atomic<bool> g_interrupt{false};

extern "C" void on_sigint(int) {
  g_interrupt.store(true);
}

std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<long long>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, t / 60 % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%llds", t);
  return buf;
}

}  // namespace

int run_train(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"config", "out", "steps", "stop-at", "threads", "tokenizer", "data", "device"},
                  {"resume", "quiet"});
  const std::string config_path = args.required("config");
  train::TrainOptions o;
  o.out_dir = args.required("out");
  if (args.has("steps")) o.steps = args.integer("steps", 0, 1, INT64_MAX);
  if (args.has("stop-at")) o.stop_at = args.integer("stop-at", 0, 0, INT64_MAX);
  o.resume = args.has("resume");
  if (auto t = args.optional("tokenizer")) o.tokenizer = *t;
  o.device = args.optional("device").value_or("cpu");
  set_default_threads(static_cast<int>(args.integer("threads", 0, 0, 4096)));
  model::ModelConfig config = model::ModelConfig::from_file(config_path);
  if (auto d = args.optional("data")) config.train.data = *d;

  const bool tty = ::isatty(2) != 0;
  const bool quiet = args.has("quiet");
  // On a terminal a live bar; otherwise a line per ~5% of the run and at every evaluation.
  o.on_step = [tty, quiet](const train::StepReport& r) {
    if (quiet) return;
    const int64_t done = r.step - r.first_step, left = r.total_steps - r.step;
    const double eta = done > 0 ? r.elapsed_s / static_cast<double>(done) * static_cast<double>(left) : NAN;
    const int64_t every = std::max<int64_t>(1, r.total_steps / 20);
    if (!tty && !r.val_loss && r.step % every != 0 && r.step != r.total_steps) return;
    char bar[41];
    const int width = 20;
    const int filled = static_cast<int>(width * r.step / std::max<int64_t>(1, r.total_steps));
    for (int i = 0; i < width; ++i) bar[i] = i < filled ? '#' : '.';
    bar[width] = 0;
    std::string line = std::string(tty ? "\r\033[K" : "") + "[train] " + bar + " step " +
                       std::to_string(r.step) + "/" + std::to_string(r.total_steps);
    char buf[160];
    std::snprintf(buf, sizeof buf, " | loss %.4f | lr %.2e | %.0f tok/s | %s elapsed, ETA %s",
                  r.train_loss, r.lr, r.tokens_per_s, duration(r.elapsed_s).c_str(),
                  duration(eta).c_str());
    line += buf;
    if (r.val_loss) {
      std::snprintf(buf, sizeof buf, " | val %.4f (%.3f bits/byte)", *r.val_loss,
                    r.val_bits_per_byte.value_or(NAN));
      line += buf;
    }
    if (!tty || r.val_loss) line += "\n";
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  };
  o.on_note = [tty, quiet](const std::string& note) {
    if (!quiet) std::fprintf(stderr, "%s[train] %s\n", tty ? "\r\033[K" : "", note.c_str());
  };
  o.interrupt = &g_interrupt;
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  const train::TrainResult r = train::train(config, o);
  json::Json out = {{"steps", r.steps_done},
                    {"train_loss", r.last_train_loss},
                    {"tokens_per_s", r.tokens_per_s},
                    {"checkpoint", r.checkpoint},
                    {"interrupted", r.interrupted}};
  if (r.last_val_loss) out["val_loss"] = *r.last_val_loss;
  write_stdout(out.dump() + "\n");
  if (r.interrupted) {
    std::fprintf(stderr, "[train] interrupted after step %lld; continue with --resume\n",
                 static_cast<long long>(r.steps_done));
    return 130;
  }
  return 0;
}

int run_eval(int argc, char** argv) {
  const Args args(argc, argv, 2,
                  {"ckpt", "tokens", "tokenizer", "threads", "data", "windows", "device",
                   "engram-tables"},
                  {});
  set_default_threads(static_cast<int>(args.integer("threads", 0, 0, 4096)));
  const std::string device = args.optional("device").value_or("cpu");
  train::check_device(device);
  train::LoadedModel m =
      train::load_model(args.required("ckpt"), args.optional("tokenizer").value_or(""));
  // --engram-tables: the Engram tables as stored in .engt files (any row format), in place of
  // the checkpoint's: the loss of the model as it would run from those files.
  std::vector<std::string> table_paths;
  if (auto t = args.optional("engram-tables")) {
    table_paths = split_commas(*t);
    load_engt_tables(table_paths, *m.model);
  }
  const std::string data = args.optional("data").value_or(m.config.train.data);
  if (data.empty()) throw UsageError("the checkpoint's config has no train.data: pass --data DIR");
  const int64_t tokens = args.integer("tokens", m.config.train.eval_tokens, 0, INT64_MAX);
  train::DataLoader loader = train::open_data_loader(data, "val.bin", m.config, m.text.hasher.get(),
                                                     train::DataLoader::Mode::kSequential);
  std::vector<double> windows;
  const std::vector<int32_t> byte_lengths = train::token_byte_lengths(*m.text.tokenizer);
  train::EvalResult r;
  if (device == "cuda") {
    model::GpuTransformer gpu(*m.model);
    r = train::evaluate(gpu, loader, tokens, byte_lengths, &windows);
  } else {
    r = train::evaluate(*m.model, loader, tokens, byte_lengths, &windows);
  }
  if (auto w = args.optional("windows")) write_file_atomic(*w, json::Json(windows).dump() + "\n");
  json::Json out = {{"val_loss", r.loss},  {"ppl", r.ppl},     {"bits_per_byte", r.bits_per_byte},
                    {"tokens", r.tokens}, {"bytes", r.bytes}, {"step", m.state.step}};
  if (!table_paths.empty()) out["engram_tables"] = json::Json(table_paths);
  write_stdout(out.dump() + "\n");
  return 0;
}

}  // namespace engram::cli

namespace engram::cli {

int run_plot(int argc, char** argv) {
  const Args args(argc, argv, 2, {"out", "title"}, {});
  if (args.positional().empty()) throw UsageError("expected one or more run directories");
  std::vector<train::LossSeries> series;
  for (const std::string& dir : args.positional()) {
    const train::RunDir run{dir};
    std::string label = dir;
    while (label.size() > 1 && label.back() == '/') label.pop_back();
    label = label.substr(label.find_last_of('/') + 1);
    series.push_back({label, train::read_metrics(run.metrics())});
  }
  const std::string out = args.required("out");
  write_file_atomic(out, train::loss_curve_svg(series, args.optional("title").value_or("loss")));
  return 0;
}

}  // namespace engram::cli
