#include "engram/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "engram/util/error.h"

namespace engram::infer {
namespace {

// Descending probability, then ascending id: a strict total order, so every sort and selection
// below has one result whatever the standard library.
bool more_probable(const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

using Candidates = std::vector<std::pair<double, int64_t>>;

// Quickselect's partition of c[lo, hi) around a median-of-three pivot: returns m with c[lo, m)
// more probable than c[m] and c[m + 1, hi) less.
size_t partition(Candidates& c, size_t lo, size_t hi) {
  const size_t mid = lo + (hi - lo) / 2, last = hi - 1;
  if (more_probable(c[mid], c[lo])) std::swap(c[mid], c[lo]);
  if (more_probable(c[last], c[lo])) std::swap(c[last], c[lo]);
  if (more_probable(c[mid], c[last])) std::swap(c[mid], c[last]);  // median now at `last`
  size_t m = lo;
  for (size_t i = lo; i < last; ++i) {
    if (more_probable(c[i], c[last])) std::swap(c[i], c[m++]);
  }
  std::swap(c[m], c[last]);
  return m;
}

// The nucleus of c[0, n): reorders c so that c[0, end) holds the `end` most probable candidates
// (in no particular order) for the smallest `end` whose mass reaches `target`; returns end and
// sets `mass` to theirs. A quickselect on mass, expected O(n): sorting 10^5 candidates of a
// flat distribution would cost more than a decode step. Own code rather than std::nth_element,
// so that the order (and so the draw) is the same with every standard library.
size_t nucleus_end(Candidates& c, size_t n, double target, double& mass) {
  size_t lo = 0, hi = n;
  double below = 0;  // mass of c[0, lo), all in the nucleus
  while (hi - lo > 16) {
    const size_t m = partition(c, lo, hi);
    double left = 0;
    for (size_t i = lo; i < m; ++i) left += c[i].first;
    if (below + left >= target) {
      hi = m;
      continue;
    }
    below += left + c[m].first;
    lo = m + 1;
    if (below >= target) {
      mass = below;
      return lo;
    }
  }
  std::sort(c.begin() + static_cast<ptrdiff_t>(lo), c.begin() + static_cast<ptrdiff_t>(hi),
            more_probable);
  for (size_t i = lo; i < hi; ++i) {
    below += c[i].first;
    if (below >= target) {
      mass = below;
      return i + 1;
    }
  }
  mass = below;
  return hi;  // reached only through rounding
}

}  // namespace

void SamplingOptions::validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    throw ConfigError(error_message("sampling: temperature",
                                    std::to_string(temperature) + " must be a number >= 0"));
  }
  if (top_k < 0) {
    throw ConfigError(
        error_message("sampling: top_k", std::to_string(top_k) + " must be >= 0 (0 = off)"));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    throw ConfigError(
        error_message("sampling: top_p", std::to_string(top_p) + " must lie in (0, 1]"));
  }
}

Sampler::Sampler(SamplingOptions options) : options_(options), rng_(options.seed) {
  options_.validate();
}

double Sampler::uniform() {
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

int64_t Sampler::sample(std::span<const float> logits) {
  if (logits.empty()) throw InputError("sampler: no logits given");
  if (!options_.banned.empty()) {
    masked_.assign(logits.begin(), logits.end());
    for (const int64_t id : options_.banned) {
      if (id >= 0 && static_cast<size_t>(id) < masked_.size())
        masked_[static_cast<size_t>(id)] = -std::numeric_limits<float>::infinity();
    }
    logits = masked_;
  }
  int64_t best = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) {
      throw InputError(error_message("sampler", "logits[" + std::to_string(i) + "] is NaN"));
    }
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int64_t>(i);
  }
  if (options_.temperature == 0) return best;
  const double top = logits[static_cast<size_t>(best)];
  if (top == -std::numeric_limits<double>::infinity())
    throw InputError("sampler: every logit is -inf");

  // p = exp((logit - max) / T), unnormalised; +inf logits (if any) share all the mass.
  candidates_.clear();
  const bool infinite = std::isinf(top);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double l = logits[i];
    const double p = infinite ? (l == top ? 1.0 : 0.0) : std::exp((l - top) / options_.temperature);
    if (p > 0) candidates_.emplace_back(p, static_cast<int64_t>(i));
  }
  auto& c = candidates_;
  size_t kept = c.size();
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < kept) {
    kept = static_cast<size_t>(options_.top_k);
    std::partial_sort(c.begin(), c.begin() + static_cast<ptrdiff_t>(kept), c.end(), more_probable);
  }
  double mass = 0;
  for (size_t i = 0; i < kept; ++i) mass += c[i].first;
  if (options_.top_p < 1) kept = nucleus_end(c, kept, options_.top_p * mass, mass);
  const double r = uniform() * mass;
  double acc = 0;
  for (size_t i = 0; i < kept; ++i) {
    acc += c[i].first;
    if (r < acc) return c[i].second;
  }
  return c[kept - 1].second;  // r within rounding of the total
}

}  // namespace engram::infer
