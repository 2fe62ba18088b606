#include "engram/train/optimizer.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numbers>
#include <string>
#include <utility>

#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::train {
namespace {

constexpr size_t kElementGrain = size_t{1} << 14;  // elements per parallel piece, at least

[[noreturn]] void config_fail(const std::string& field, const std::string& what) {
  throw ConfigError(error_message("optimizer", field + ": " + what));
}

void check_lr(const char* where, double lr) {
  if (!(lr >= 0) || !std::isfinite(lr)) {
    throw InputError(error_message(
        where, "learning rate " + std::to_string(lr) + " (expected finite and >= 0)"));
  }
}

// The per-step constants of the Adam update at step t (after increment), in float.
struct AdamCoeffs {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float eps;
};

AdamCoeffs adam_coeffs(const AdamOptions& o, int64_t t, double lr) {
  const double td = static_cast<double>(t);
  const double bc1 = 1.0 - std::pow(o.beta1, td);
  const double bc2 = 1.0 - std::pow(o.beta2, td);
  return {static_cast<float>(o.beta1),  static_cast<float>(1.0 - o.beta1),
          static_cast<float>(o.beta2),  static_cast<float>(1.0 - o.beta2),
          static_cast<float>(lr / bc1), static_cast<float>(std::sqrt(bc2)),
          static_cast<float>(o.eps)};
}

// The Adam update of n elements (no weight decay), shared by AdamW and SparseRowAdam so that
// the two agree bit for bit when every row is touched.
inline void adam_update(float* p, float* m, float* v, const float* g, int64_t n,
                        const AdamCoeffs& c) {
  for (int64_t i = 0; i < n; ++i) {
    m[i] = c.beta1 * m[i] + c.one_minus_beta1 * g[i];
    v[i] = c.beta2 * v[i] + c.one_minus_beta2 * g[i] * g[i];
    p[i] -= c.step_size * m[i] / (std::sqrt(v[i]) / c.bc2_sqrt + c.eps);
  }
}

}  // namespace

// ---- LrSchedule -------------------------------------------------------------------------------

double LrSchedule::lr(int64_t step) const {
  const double floor = min_lr_ratio * base_lr;
  if (step < warmup_steps) {
    return base_lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  }
  if (step >= total_steps) return floor;
  const double progress =
      static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return floor + (base_lr - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

void LrSchedule::validate() const {
  if (!(base_lr >= 0) || !std::isfinite(base_lr)) {
    config_fail("base_lr", std::to_string(base_lr) + " (expected finite and >= 0)");
  }
  if (warmup_steps < 0) config_fail("warmup_steps", std::to_string(warmup_steps) + " (< 0)");
  if (total_steps < warmup_steps) {
    config_fail("total_steps", std::to_string(total_steps) + " (< warmup_steps " +
                                   std::to_string(warmup_steps) + ")");
  }
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) {
    config_fail("min_lr_ratio", std::to_string(min_lr_ratio) + " (expected in [0, 1])");
  }
}

void AdamOptions::validate() const {
  if (!(beta1 >= 0 && beta1 < 1)) config_fail("beta1", std::to_string(beta1) + " (not in [0, 1))");
  if (!(beta2 >= 0 && beta2 < 1)) config_fail("beta2", std::to_string(beta2) + " (not in [0, 1))");
  if (!(eps >= 0) || !std::isfinite(eps)) config_fail("eps", std::to_string(eps) + " (< 0)");
}

void AdamWOptions::validate() const {
  adam.validate();
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) {
    config_fail("weight_decay", std::to_string(weight_decay) + " (expected finite and >= 0)");
  }
}

// ---- AdamW ------------------------------------------------------------------------------------

AdamW::AdamW(AdamWOptions options) : options_(options) {
  options_.validate();
}

void AdamW::add_group(std::string name, float* param, const float* grad, int64_t size, bool decay) {
  const std::string where = "AdamW group \"" + name + "\"";
  if (size < 0) throw InputError(error_message(where, "size " + std::to_string(size) + " (< 0)"));
  if (size > 0 && (param == nullptr || grad == nullptr)) {
    throw InputError(error_message(where, "null parameter or gradient buffer"));
  }
  for (const Group& g : groups_) {
    if (g.name == name) throw InputError(error_message(where, "name already registered"));
  }
  groups_.push_back({std::move(name), param, grad, size, decay,
                     std::vector<float>(static_cast<size_t>(size), 0.0f),
                     std::vector<float>(static_cast<size_t>(size), 0.0f)});
}

void AdamW::step(double lr) {
  check_lr("AdamW::step", lr);
  ++step_;
  const AdamCoeffs c = adam_coeffs(options_.adam, step_, lr);
  const float decay_factor = static_cast<float>(1.0 - lr * options_.weight_decay);
  for (Group& g : groups_) {
    const bool decay = g.decay && options_.weight_decay != 0;
    parallel_for(static_cast<size_t>(g.size), 0, kElementGrain, [&](size_t begin, size_t end) {
      float* p = g.param + begin;
      const int64_t n = static_cast<int64_t>(end - begin);
      if (decay) {
        for (int64_t i = 0; i < n; ++i) p[i] *= decay_factor;
      }
      adam_update(p, g.m.data() + begin, g.v.data() + begin, g.grad + begin, n, c);
    });
  }
}

std::vector<NamedState<float>> AdamW::state() {
  std::vector<NamedState<float>> out;
  for (Group& g : groups_) {
    out.push_back({g.name + ".exp_avg", g.m});
    out.push_back({g.name + ".exp_avg_sq", g.v});
  }
  return out;
}

// ---- SparseRowAdam ----------------------------------------------------------------------------

SparseRowAdam::SparseRowAdam(float* table, int64_t rows, int64_t width, AdamOptions options)
    : table_(table), rows_(rows), width_(width), options_(options) {
  options_.validate();
  if (rows < 0 || width < 0) {
    throw InputError(error_message("SparseRowAdam", "table shape (" + std::to_string(rows) + ", " +
                                                        std::to_string(width) + ")"));
  }
  if (rows * width > 0 && table == nullptr) {
    throw InputError(error_message("SparseRowAdam", "null table"));
  }
  m_.assign(static_cast<size_t>(rows * width), 0.0f);
  v_.assign(static_cast<size_t>(rows * width), 0.0f);
  last_step_.assign(static_cast<size_t>(rows), 0);
}

void SparseRowAdam::step(const nn::SparseRowGrad<float>& grad, double lr) {
  const char* where = "SparseRowAdam::step";
  check_lr(where, lr);
  if (grad.width != width_) {
    throw InputError(error_message(where, "gradient width " + std::to_string(grad.width) +
                                              " (table width " + std::to_string(width_) + ")"));
  }
  const size_t n_rows = grad.rows.size();
  if (grad.values.size() != n_rows * static_cast<size_t>(width_)) {
    throw InputError(error_message(where, std::to_string(grad.values.size()) + " values for " +
                                              std::to_string(n_rows) + " rows of width " +
                                              std::to_string(width_)));
  }
  for (size_t i = 0; i < n_rows; ++i) {
    const int64_t r = grad.rows[i];
    if (r < 0 || r >= rows_) {
      throw InputError(error_message(
          where, "row " + std::to_string(r) + " out of range [0, " + std::to_string(rows_) + ")"));
    }
    if (i > 0 && r <= grad.rows[i - 1]) {
      throw InputError(error_message(where, "rows not strictly increasing at index " +
                                                std::to_string(i) + " (row " + std::to_string(r) +
                                                ")"));
    }
  }

  ++step_;
  const int64_t t = step_;
  const AdamCoeffs c = adam_coeffs(options_, t, lr);
  const size_t grain = std::max<size_t>(1, kElementGrain / std::max<size_t>(1, width_));
  parallel_for(n_rows, 0, grain, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const int64_t r = grad.rows[i];
      const size_t off = static_cast<size_t>(r * width_);
      float* m = m_.data() + off;
      float* v = v_.data() + off;
      // Steps since this row's last update whose zero gradient the moments have not seen.
      const int64_t skipped = t - 1 - last_step_[r];
      assert(skipped >= 0);
      if (skipped > 0) {
        const double k = static_cast<double>(skipped);
        const float m_decay = static_cast<float>(std::pow(options_.beta1, k));
        const float v_decay = static_cast<float>(std::pow(options_.beta2, k));
        for (int64_t j = 0; j < width_; ++j) {
          m[j] *= m_decay;
          v[j] *= v_decay;
        }
      }
      adam_update(table_ + off, m, v, grad.values.data() + i * static_cast<size_t>(width_), width_,
                  c);
      last_step_[r] = t;
    }
  });
}

std::vector<NamedState<float>> SparseRowAdam::state() {
  return {{"exp_avg", m_}, {"exp_avg_sq", v_}};
}

// ---- Gradient clipping ------------------------------------------------------------------------

double clip_grad_norm(std::span<const std::span<float>> dense,
                      std::span<nn::SparseRowGrad<float>* const> sparse, double max_norm) {
  const char* where = "clip_grad_norm";
  if (!(max_norm > 0)) {
    throw InputError(
        error_message(where, "max_norm " + std::to_string(max_norm) + " (expected > 0)"));
  }
  std::vector<std::span<float>> buffers(dense.begin(), dense.end());
  for (nn::SparseRowGrad<float>* g : sparse) {
    assert(g != nullptr);
    if (g->values.size() != g->rows.size() * static_cast<size_t>(g->width)) {
      throw InputError(error_message(where, "sparse gradient with " +
                                                std::to_string(g->values.size()) + " values for " +
                                                std::to_string(g->rows.size()) + " rows of width " +
                                                std::to_string(g->width)));
    }
    buffers.emplace_back(g->values);
  }

  // Fixed chunks, each summed in order, then the chunk sums in order: the same result for any
  // thread count.
  constexpr size_t kChunk = size_t{1} << 15;
  struct Chunk {
    float* data;
    size_t size;
  };
  std::vector<Chunk> chunks;
  for (const std::span<float>& b : buffers) {
    for (size_t at = 0; at < b.size(); at += kChunk) {
      chunks.push_back({b.data() + at, std::min(kChunk, b.size() - at)});
    }
  }
  std::vector<double> sums(chunks.size(), 0.0);
  parallel_for(chunks.size(), 0, 1, [&](size_t begin, size_t end) {
    for (size_t c = begin; c < end; ++c) {
      double s = 0;
      for (size_t i = 0; i < chunks[c].size; ++i) {
        const double x = chunks[c].data[i];
        s += x * x;
      }
      sums[c] = s;
    }
  });
  double total = 0;
  for (double s : sums) total += s;
  const double norm = std::sqrt(total);

  const double coef = max_norm / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1.0) {
    const float scale = static_cast<float>(coef);
    parallel_for(chunks.size(), 0, 1, [&](size_t begin, size_t end) {
      for (size_t c = begin; c < end; ++c) {
        float* d = chunks[c].data;
        for (size_t i = 0; i < chunks[c].size; ++i) d[i] *= scale;
      }
    });
  }
  return norm;
}

void add_sparse_grad(nn::SparseRowGrad<float>& acc, const nn::SparseRowGrad<float>& g) {
  if (acc.rows.empty()) {
    acc = g;
    return;
  }
  if (g.rows.empty()) return;
  if (g.width != acc.width) {
    throw InputError(error_message("add_sparse_grad", "rows of " + std::to_string(g.width) +
                                                          " values added to rows of " +
                                                          std::to_string(acc.width)));
  }
  const auto w = static_cast<size_t>(g.width);
  nn::SparseRowGrad<float> out;
  out.width = g.width;
  out.rows.reserve(acc.rows.size() + g.rows.size());
  out.values.reserve((acc.rows.size() + g.rows.size()) * w);
  size_t i = 0, j = 0;
  while (i < acc.rows.size() || j < g.rows.size()) {
    const bool take_a = j == g.rows.size() || (i < acc.rows.size() && acc.rows[i] <= g.rows[j]);
    const bool take_b = i == acc.rows.size() || (j < g.rows.size() && g.rows[j] <= acc.rows[i]);
    const int64_t row = take_a ? acc.rows[i] : g.rows[j];
    out.rows.push_back(row);
    const size_t at = out.values.size();
    out.values.resize(at + w, 0.0f);
    if (take_a) {
      for (size_t c = 0; c < w; ++c) out.values[at + c] += acc.values[i * w + c];
      ++i;
    }
    if (take_b) {
      for (size_t c = 0; c < w; ++c) out.values[at + c] += g.values[j * w + c];
      ++j;
    }
  }
  acc = std::move(out);
}

}  // namespace engram::train
