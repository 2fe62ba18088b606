// Training metrics: the JSON-lines log of a run and its loss-curve plot.
//
// metrics.jsonl holds one object per optimizer step:
//   {"step": 120, "train_loss": 5.12, "lr": 0.00099, "grad_norm": 0.83, "tokens_per_s": 2310.5,
//    "elapsed_s": 61.2}
// and, on evaluation steps, also "val_loss", "val_ppl" and "val_bits_per_byte".
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace engram::train {

// What the loop reports after every optimizer step.
struct StepReport {
  int64_t step = 0;         // steps done (1-based: the step just finished)
  int64_t total_steps = 0;  // the run's last step
  int64_t first_step = 0;   // steps done when this process started (resume)
  double train_loss = 0;
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_s = 0;  // this step
  double elapsed_s = 0;     // since this process started training
  std::optional<double> val_loss, val_bits_per_byte;  // set on evaluation steps
};

struct MetricPoint {
  int64_t step = 0;
  double train_loss = 0;
  std::optional<double> val_loss;
};

class MetricsLog {
 public:
  // Opens `path` for appending. keep_until < 0: the file starts empty. Otherwise the lines of
  // steps <= keep_until are kept (and read back into points()) and later ones dropped: a
  // resumed run continues the log of the checkpoint it resumes. Throws IoError / FormatError
  // naming the file (and line) when it cannot be read or written.
  MetricsLog(std::string path, int64_t keep_until);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Appends one line (flushed) and records the point.
  void append(const StepReport& report);
  const std::vector<MetricPoint>& points() const { return points_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  std::vector<MetricPoint> points_;
};

// Reads the points of a metrics.jsonl with step <= keep_until, without changing the file; the
// kept lines are appended to *kept when given. A partial last line (a run killed mid-write) is
// ignored; any other bad line throws FormatError naming the file and line.
std::vector<MetricPoint> read_metrics(const std::string& path, int64_t keep_until = INT64_MAX,
                                      std::string* kept = nullptr);

// A self-contained SVG (no scripts, no external fonts) of training loss (raw, faint, and a
// moving average) and validation loss against step, with axes, ticks and a legend. `series`
// holds one or more runs (the first's train loss drawn in full, every run's validation loss).
struct LossSeries {
  std::string label;
  std::vector<MetricPoint> points;
};
std::string loss_curve_svg(const std::vector<LossSeries>& series, const std::string& title);

}  // namespace engram::train
