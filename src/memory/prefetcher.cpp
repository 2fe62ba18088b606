#include "engram/memory/prefetcher.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "engram/util/error.h"

namespace engram::memory {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

Prefetcher::Prefetcher(std::vector<const TieredRowStore*> stores, PrefetcherOptions options)
    : stores_(std::move(stores)), options_(std::move(options)) {
  if (stores_.empty()) throw ConfigError(error_message("Prefetcher", "no store given"));
  for (size_t i = 0; i < stores_.size(); ++i) {
    if (stores_[i] == nullptr)
      throw ConfigError(error_message("Prefetcher", "store " + std::to_string(i) + " is null"));
  }
  if (options_.chunk_rows < 1) {
    throw ConfigError(error_message("PrefetcherOptions",
                                    "chunk_rows " + std::to_string(options_.chunk_rows) + " < 1"));
  }
  worker_ = std::thread([this] { run(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
    cancel_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

const TieredRowStore& Prefetcher::store(size_t layer) const {
  return *stores_[stores_.size() == 1 ? 0 : layer];
}

void Prefetcher::cancel() {
  std::unique_lock<std::mutex> lock(mu_);
  cancel_ = true;
  work_ = false;
  cv_.wait(lock, [&] { return !busy_; });
  for (LayerState& s : state_)
    if (s == LayerState::kPending) s = LayerState::kCancelled;
  cancel_ = false;
  cv_.notify_all();  // wake waiters on cancelled layers
}

void Prefetcher::begin_step(FetchPlan plan) {
  const size_t layers = plan.layers().size();
  if (stores_.size() != 1 && stores_.size() != layers) {
    throw ConfigError(error_message("Prefetcher::begin_step",
                                    "the plan has " + std::to_string(layers) + " layers, but " +
                                        std::to_string(stores_.size()) + " stores were given"));
  }
  for (size_t l = 0; l < layers; ++l) {
    const std::vector<int64_t>& rows = plan.layers()[l].rows;
    if (!rows.empty() && rows.back() >= store(l).num_rows()) {
      throw InputError(error_message(store(l).file().path(),
                                     "layer " + std::to_string(l) + ": row " +
                                         std::to_string(rows.back()) + " is out of range [0, " +
                                         std::to_string(store(l).num_rows()) + ")"));
    }
  }
  cancel();  // the worker is idle from here until work_ is set
  std::lock_guard<std::mutex> lock(mu_);
  plan_ = std::move(plan);
  staging_.assign(layers, {});
  for (size_t l = 0; l < layers; ++l) {
    staging_[l].resize(plan_.layers()[l].rows.size() * static_cast<size_t>(store(l).row_bytes()));
  }
  state_.assign(layers, LayerState::kPending);
  error_.assign(layers, nullptr);
  stats_.assign(layers, LayerPrefetchStats{});
  for (size_t l = 0; l < layers; ++l) {
    stats_[l].layer_id = plan_.layers()[l].layer_id;
    stats_[l].requested = static_cast<int64_t>(plan_.layers()[l].index.size());
    stats_[l].unique = static_cast<int64_t>(plan_.layers()[l].rows.size());
  }
  has_step_ = true;
  work_ = true;
  cv_.notify_all();
}

void Prefetcher::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return shutdown_ || work_; });
    if (shutdown_) return;
    work_ = false;
    busy_ = true;
    const auto step_start = Clock::now();
    for (const int32_t pos : plan_.consumption_order()) {
      const auto l = static_cast<size_t>(pos);
      if (cancel_) break;
      const std::vector<int64_t>& rows = plan_.layers()[l].rows;
      const TieredRowStore& st = store(l);
      const auto rb = static_cast<size_t>(st.row_bytes());
      LayerPrefetchStats acc;
      std::exception_ptr error;
      bool cancelled = false;
      const auto t0 = Clock::now();
      lock.unlock();
      for (size_t first = 0; first < rows.size();) {
        {
          std::lock_guard<std::mutex> check(mu_);
          if (cancel_) {
            cancelled = true;
            break;
          }
        }
        const size_t count =
            std::min(rows.size() - first, static_cast<size_t>(options_.chunk_rows));
        TierStats call;
        try {
          st.gather_encoded(std::span<const int64_t>(rows).subspan(first, count),
                            staging_[l].data() + first * rb, &call);
        } catch (...) {
          error = std::current_exception();
        }
        acc.hits += call.hits;
        acc.blocks_read += call.blocks_read;
        acc.bytes_read += call.bytes_read;
        acc.io_seconds += call.io_seconds;
        if (error) break;
        first += count;
      }
      const auto t1 = Clock::now();
      lock.lock();
      if (cancelled) break;
      LayerPrefetchStats& s = stats_[l];
      s.hits = acc.hits;
      s.blocks_read = acc.blocks_read;
      s.bytes_read = acc.bytes_read;
      s.io_seconds = acc.io_seconds;
      s.fetch_seconds = seconds_between(t0, t1);
      s.ready_seconds = seconds_between(step_start, t1);
      s.done = true;
      s.failed = error != nullptr;
      error_[l] = error;
      state_[l] = error ? LayerState::kFailed : LayerState::kReady;
      cv_.notify_all();
      if (options_.on_layer_done) {
        lock.unlock();
        options_.on_layer_done(l);
        lock.lock();
      }
    }
    busy_ = false;
    cv_.notify_all();
  }
}

void Prefetcher::check_layer(size_t layer) const {
  if (!has_step_) throw InputError(error_message("Prefetcher", "no step has been begun"));
  if (layer >= state_.size()) {
    throw InputError(error_message("Prefetcher", "layer " + std::to_string(layer) +
                                                     " is out of range [0, " +
                                                     std::to_string(state_.size()) + ")"));
  }
}

double Prefetcher::wait_layer(size_t layer) {
  std::unique_lock<std::mutex> lock(mu_);
  check_layer(layer);
  const auto t0 = Clock::now();
  cv_.wait(lock, [&] { return state_[layer] != LayerState::kPending; });
  const double stalled = seconds_between(t0, Clock::now());
  stats_[layer].stall_seconds += stalled;
  if (state_[layer] == LayerState::kFailed) std::rethrow_exception(error_[layer]);
  if (state_[layer] == LayerState::kCancelled) {
    throw InputError(error_message(
        "Prefetcher", "layer " + std::to_string(layer) + " was cancelled before it was fetched"));
  }
  return stalled;
}

template <class Out>
void Prefetcher::gather_as(size_t layer, std::span<const int64_t> rows, Out* out, int64_t stride) {
  wait_layer(layer);
  const TieredRowStore& st = store(layer);
  const std::vector<int64_t>& planned = plan_.layers()[layer].rows;
  const uint8_t* staged = staging_[layer].data();
  const int64_t rb = st.row_bytes();
  std::vector<int64_t> unplanned;
  std::vector<size_t> unplanned_at;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto it = std::lower_bound(planned.begin(), planned.end(), rows[i]);
    if (it == planned.end() || *it != rows[i]) {
      unplanned.push_back(rows[i]);
      unplanned_at.push_back(i);
      continue;
    }
    decode_rows(st.format(), staged + (it - planned.begin()) * rb, 1, st.width(),
                out + static_cast<int64_t>(i) * stride, 0);
  }
  if (!unplanned.empty()) {
    std::vector<Out> tmp(unplanned.size() * static_cast<size_t>(st.width()));
    st.gather(unplanned, tmp.data(), st.width());
    for (size_t k = 0; k < unplanned.size(); ++k) {
      std::copy_n(tmp.data() + k * static_cast<size_t>(st.width()), st.width(),
                  out + static_cast<int64_t>(unplanned_at[k]) * stride);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_[layer].gathered += static_cast<int64_t>(rows.size());
}

template <class Out>
void Prefetcher::gather_layer_as(size_t layer, Out* out, int64_t stride) {
  wait_layer(layer);
  const TieredRowStore& st = store(layer);
  const std::vector<int32_t>& index = plan_.layers()[layer].index;
  const uint8_t* staged = staging_[layer].data();
  const int64_t rb = st.row_bytes();
  for (size_t i = 0; i < index.size(); ++i) {
    decode_rows(st.format(), staged + index[i] * rb, 1, st.width(),
                out + static_cast<int64_t>(i) * stride, 0);
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_[layer].gathered += static_cast<int64_t>(index.size());
}

void Prefetcher::gather(size_t layer, std::span<const int64_t> rows, float* out, int64_t stride) {
  gather_as(layer, rows, out, stride);
}
void Prefetcher::gather(size_t layer, std::span<const int64_t> rows, double* out, int64_t stride) {
  gather_as(layer, rows, out, stride);
}
void Prefetcher::gather_layer(size_t layer, float* out, int64_t stride) {
  gather_layer_as(layer, out, stride);
}
void Prefetcher::gather_layer(size_t layer, double* out, int64_t stride) {
  gather_layer_as(layer, out, stride);
}

StepPrefetchStats Prefetcher::step_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  StepPrefetchStats s;
  s.layers = stats_;
  for (const LayerPrefetchStats& l : stats_) {
    s.requested += l.requested;
    s.unique += l.unique;
    s.hits += l.hits;
    s.blocks_read += l.blocks_read;
    s.bytes_read += l.bytes_read;
    s.stall_seconds += l.stall_seconds;
  }
  return s;
}

}  // namespace engram::memory
