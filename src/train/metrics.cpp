#include "engram/train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "engram/util/error.h"
#include "engram/util/file.h"
#include "util/json.h"

namespace engram::train {
namespace {

// Finite numbers as JSON numbers; NaN / inf as null (JSON has no such numbers).
json::Json number(double v) {
  return std::isfinite(v) ? json::Json(v) : json::Json(nullptr);
}

std::string fmt(double v, int precision = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks.
double nice_step(double range, int target) {
  if (!(range > 0)) return 1;
  const double raw = range / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * p) return m * p;
  }
  return 10 * p;
}

std::string escape_xml(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::vector<MetricPoint> read_metrics(const std::string& path, int64_t keep_until,
                                      std::string* kept) {
  std::vector<MetricPoint> points;
  const std::string text = read_file(path);
  std::istringstream in(text);
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    json::Json j;
    try {
      j = json::Json::parse(line);
    } catch (const std::exception&) {
      // A run killed mid-write can leave a partial last line: drop it, keep the rest.
      if (in.peek() == EOF) break;
      throw FormatError(error_message(path, "line " + std::to_string(line_no) +
                                                ": not a JSON object"));
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
      throw FormatError(
          error_message(path, "line " + std::to_string(line_no) + ": no integer \"step\""));
    }
    const int64_t step = j["step"].get<int64_t>();
    if (step > keep_until) continue;
    MetricPoint p;
    p.step = step;
    p.train_loss = j.contains("train_loss") && j["train_loss"].is_number()
                       ? j["train_loss"].get<double>()
                       : NAN;
    if (j.contains("val_loss") && j["val_loss"].is_number()) p.val_loss = j["val_loss"].get<double>();
    points.push_back(p);
    if (kept != nullptr) *kept += line + "\n";
  }
  return points;
}

MetricsLog::MetricsLog(std::string path, int64_t keep_until) : path_(std::move(path)) {
  std::string kept;
  if (keep_until >= 0 && path_exists(path_)) points_ = read_metrics(path_, keep_until, &kept);
  // Rewrite what is kept atomically, then append to it.
  write_file_atomic(path_, kept);
  file_ = std::fopen(path_.c_str(), "ab");
  if (file_ == nullptr) {
    throw IoError(error_message(path_, std::string("cannot open for appending: ") +
                                           std::strerror(errno)));
  }
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::append(const StepReport& r) {
  json::Json j = {{"step", r.step},
                  {"train_loss", number(r.train_loss)},
                  {"lr", r.lr},
                  {"grad_norm", number(r.grad_norm)},
                  {"tokens_per_s", number(r.tokens_per_s)},
                  {"elapsed_s", r.elapsed_s}};
  if (r.val_loss) {
    j["val_loss"] = number(*r.val_loss);
    j["val_ppl"] = number(std::exp(*r.val_loss));
  }
  if (r.val_bits_per_byte) j["val_bits_per_byte"] = number(*r.val_bits_per_byte);
  const std::string line = j.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    throw IoError(error_message(path_, std::string("write failed: ") + std::strerror(errno)));
  }
  points_.push_back({r.step, r.train_loss, r.val_loss});
}

std::string loss_curve_svg(const std::vector<LossSeries>& series, const std::string& title) {
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
  const double W = 760, H = 440, left = 64, right = 24, top = 40, bottom = 52;
  const double pw = W - left - right, ph = H - top - bottom;

  // Moving averages of the training loss (window ~2% of the run, at least 1).
  std::vector<std::vector<std::pair<double, double>>> smooth(series.size());
  double xmax = 1, ymin = INFINITY, ymax = -INFINITY;
  for (size_t s = 0; s < series.size(); ++s) {
    const auto& pts = series[s].points;
    if (pts.empty()) continue;
    xmax = std::max(xmax, static_cast<double>(pts.back().step));
    const size_t win = std::max<size_t>(1, pts.size() / 50);
    double sum = 0;
    size_t n = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      if (std::isfinite(pts[i].train_loss)) {
        sum += pts[i].train_loss;
        ++n;
      }
      if (i >= win && std::isfinite(pts[i - win].train_loss)) {
        sum -= pts[i - win].train_loss;
        --n;
      }
      if (n > 0) smooth[s].push_back({static_cast<double>(pts[i].step), sum / static_cast<double>(n)});
    }
  }
  // The y range: everything after the first 5% of steps (the initial loss would flatten the
  // rest), and every validation point.
  for (size_t s = 0; s < series.size(); ++s) {
    for (const auto& [x, y] : smooth[s]) {
      if (x >= 0.05 * xmax || smooth[s].size() < 20) {
        ymin = std::min(ymin, y);
        ymax = std::max(ymax, y);
      }
    }
    for (const auto& p : series[s].points) {
      if (p.val_loss && std::isfinite(*p.val_loss)) {
        ymin = std::min(ymin, *p.val_loss);
        ymax = std::max(ymax, *p.val_loss);
      }
    }
  }
  if (!std::isfinite(ymin) || !std::isfinite(ymax)) {
    ymin = 0;
    ymax = 1;
  }
  if (ymax - ymin < 1e-6) {
    ymin -= 0.5;
    ymax += 0.5;
  }
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad;
  ymax += pad;
  auto X = [&](double x) { return left + pw * x / xmax; };
  auto Y = [&](double y) { return top + ph * (1 - (std::clamp(y, ymin, ymax) - ymin) / (ymax - ymin)); };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" viewBox=\"0 0 " << W << ' ' << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">"
    << escape_xml(title) << "</text>\n";
  // Grid and ticks.
  const double ys = nice_step(ymax - ymin, 6);
  for (double y = std::ceil(ymin / ys) * ys; y <= ymax; y += ys) {
    o << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << Y(y) << "\" y2=\""
      << Y(y) << "\" stroke=\"#e5e5e5\"/>\n";
    o << "<text x=\"" << left - 6 << "\" y=\"" << Y(y) + 4 << "\" text-anchor=\"end\">" << fmt(y)
      << "</text>\n";
  }
  const double xs = nice_step(xmax, 8);
  for (double x = 0; x <= xmax + 1e-9; x += xs) {
    o << "<line x1=\"" << X(x) << "\" x2=\"" << X(x) << "\" y1=\"" << top << "\" y2=\""
      << top + ph << "\" stroke=\"#f0f0f0\"/>\n";
    o << "<text x=\"" << X(x) << "\" y=\"" << top + ph + 16 << "\" text-anchor=\"middle\">"
      << fmt(x, 6) << "</text>\n";
  }
  o << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#444\"/>\n";
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 12
    << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text transform=\"translate(16," << top + ph / 2
    << ") rotate(-90)\" text-anchor=\"middle\">loss (nats/token)</text>\n";

  auto polyline = [&](const std::vector<std::pair<double, double>>& pts, const char* color,
                      double width, double opacity, const char* dash) {
    if (pts.empty()) return;
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << width
      << "\" stroke-opacity=\"" << opacity << "\"" << (dash[0] ? " stroke-dasharray=\"" : "")
      << dash << (dash[0] ? "\"" : "") << " points=\"";
    for (const auto& [x, y] : pts) o << fmt(X(x), 6) << ',' << fmt(Y(y), 6) << ' ';
    o << "\"/>\n";
  };
  double legend_y = top + 14;
  for (size_t s = 0; s < series.size(); ++s) {
    const char* color = kColors[s % 5];
    if (series.size() == 1) {
      std::vector<std::pair<double, double>> raw;
      for (const auto& p : series[s].points) {
        if (std::isfinite(p.train_loss)) raw.push_back({static_cast<double>(p.step), p.train_loss});
      }
      polyline(raw, color, 1, 0.25, "");
    }
    polyline(smooth[s], color, 1.8, 1, "");
    std::vector<std::pair<double, double>> val;
    for (const auto& p : series[s].points) {
      if (p.val_loss && std::isfinite(*p.val_loss)) val.push_back({static_cast<double>(p.step), *p.val_loss});
    }
    polyline(val, color, 1.5, 1, "5,3");
    for (const auto& [x, y] : val) {
      o << "<circle cx=\"" << fmt(X(x), 6) << "\" cy=\"" << fmt(Y(y), 6) << "\" r=\"3\" fill=\""
        << color << "\"/>\n";
    }
    const std::string label = series[s].label.empty() ? "" : series[s].label + ": ";
    const double lx = left + pw - 230;
    o << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"" << legend_y - 4 << "\" y2=\""
      << legend_y - 4 << "\" stroke=\"" << color << "\" stroke-width=\"1.8\"/>\n";
    o << "<text x=\"" << lx + 28 << "\" y=\"" << legend_y << "\">" << escape_xml(label)
      << "train (moving average)</text>\n";
    legend_y += 16;
    if (!val.empty()) {
      o << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"" << legend_y - 4
        << "\" y2=\"" << legend_y - 4 << "\" stroke=\"" << color
        << "\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"/>\n";
      o << "<text x=\"" << lx + 28 << "\" y=\"" << legend_y << "\">" << escape_xml(label)
        << "validation (last " << fmt(val.back().second) << ")</text>\n";
      legend_y += 16;
    }
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace engram::train
