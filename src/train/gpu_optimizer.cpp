#include "engram/train/gpu_optimizer.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <map>
#include <utility>

#include "engram/cuda/device.h"
#include "engram/cuda/ops.h"
#include "engram/util/error.h"

namespace engram::train {
namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

void require_cuda(const char* where) {
  if (!cuda::compiled_with_cuda()) throw Error(error_message(where, "built without CUDA"));
}

cuda::AdamHyper hyper(const AdamOptions& o) {
  return {o.beta1, o.beta2, o.eps};
}

void check_lr(const char* where, double lr) {
  if (!(lr >= 0) || !std::isfinite(lr)) {
    throw InputError(error_message(
        where, "learning rate " + std::to_string(lr) + " (expected finite and >= 0)"));
  }
}

// A run of elements laid out back to back in device memory.
struct Span {
  float* data;
  int64_t size;
};

// Adjacent pieces merged: fewer launches (and fewer read-backs for the norm), the same values.
void push_merged(std::vector<Span>& runs, float* data, int64_t size) {
  if (size == 0) return;
  if (!runs.empty() && runs.back().data + runs.back().size == data) {
    runs.back().size += size;
  } else {
    runs.push_back({data, size});
  }
}

// Appends n elements at src (device) to buf, whose first `used` elements are kept; buf grows
// (doubling) as needed.
template <class T>
void append(cuda::DeviceBuffer<T>& buf, int64_t used, const T* src, int64_t n) {
  if (n == 0) return;
  if (sz(used + n) > buf.size()) {
    cuda::DeviceBuffer<T> grown(std::max(2 * buf.size(), sz(used + n)));
    if (used > 0) cuda::copy_bytes(grown.data(), buf.data(), used, sizeof(T));
    buf = std::move(grown);
  }
  cuda::copy_bytes(buf.data() + used, src, n, sizeof(T));
}

// Calls fn(group, exp_avg, exp_avg_sq) for each of AdamW's groups with elements (its state()
// lists exp_avg then exp_avg_sq per group), paired by name with `groups`.
template <class Group, class Fn>
void for_each_dense_state(const std::vector<Group>& groups, AdamW& dense, Fn fn) {
  std::map<std::string, const Group*> by_name;
  for (const Group& g : groups) by_name.emplace(g.name, &g);
  std::vector<NamedState<float>> st = dense.state();
  for (size_t k = 0; k < st.size(); k += 2) {
    const std::string& n = st[k].name;
    const Group& g = *by_name.at(n.substr(0, n.size() - std::string(".exp_avg").size()));
    if (g.size == 0) continue;
    fn(g, st[k], st[k + 1]);
  }
}

}  // namespace

// ---- GpuOptimizer -----------------------------------------------------------------------------

GpuOptimizer::GpuOptimizer(model::GpuTransformer& model, const AdamWOptions& dense,
                           AdamOptions sparse)
    : model_(&model), dense_options_(dense), sparse_options_(sparse) {
  dense_options_.validate();
  sparse_options_.validate();
  require_cuda("GpuOptimizer");
  size_t total = 0;
  for (const model::GpuParam& p : model.dense_params()) {
    dense_.push_back({p.name, p.param, p.size, p.decay, total});
    total += sz(p.size);
  }
  if (total > 0) {
    m_ = cuda::DeviceBuffer<float>(total);
    v_ = cuda::DeviceBuffer<float>(total);
    cuda::zero(m_.data(), static_cast<int64_t>(total));
    cuda::zero(v_.data(), static_cast<int64_t>(total));
  }
  for (const model::GpuSparseGrad& g : model.sparse_grads()) {
    SparseGroup s;
    s.name = g.name;
    s.table = g.table;
    s.rows = g.table_rows;
    s.width = g.width;
    const int64_t n = g.table_rows * g.width;
    if (n > 0) {
      s.m = cuda::DeviceBuffer<float>(sz(n));
      s.v = cuda::DeviceBuffer<float>(sz(n));
      cuda::zero(s.m.data(), n);
      cuda::zero(s.v.data(), n);
    }
    if (g.table_rows > 0) {
      const std::vector<int64_t> never(sz(g.table_rows), 0);
      s.last_step = cuda::DeviceBuffer<int64_t>(std::span<const int64_t>(never));
    }
    sparse_.push_back(std::move(s));
  }
}

GpuGradients GpuOptimizer::model_gradients() {
  GpuGradients g;
  for (const model::GpuParam& p : model_->dense_params()) g.dense.push_back(p.grad);
  g.sparse = model_->sparse_grads();
  return g;
}

std::vector<std::string> GpuOptimizer::sparse_names() const {
  std::vector<std::string> out;
  for (const SparseGroup& s : sparse_) out.push_back(s.name);
  return out;
}

void GpuOptimizer::check(const GpuGradients& grads, const char* where) const {
  if (grads.dense.size() != dense_.size() || grads.sparse.size() != sparse_.size()) {
    throw InputError(error_message(where, std::to_string(grads.dense.size()) + " dense and " +
                                              std::to_string(grads.sparse.size()) +
                                              " sparse gradients for " +
                                              std::to_string(dense_.size()) + " dense groups and " +
                                              std::to_string(sparse_.size()) + " tables"));
  }
  for (size_t i = 0; i < dense_.size(); ++i) {
    if (dense_[i].size > 0 && grads.dense[i] == nullptr) {
      throw InputError(error_message(where, "no gradient for " + dense_[i].name));
    }
  }
  for (size_t i = 0; i < sparse_.size(); ++i) {
    const model::GpuSparseGrad& g = grads.sparse[i];
    const SparseGroup& s = sparse_[i];
    if (g.table != s.table || g.table_rows != s.rows || g.width != s.width || g.unique < 0 ||
        g.unique > s.rows) {
      throw InputError(error_message(
          where, "sparse gradient " + std::to_string(i) + " (\"" + g.name + "\", " +
                     std::to_string(g.unique) + " rows of width " + std::to_string(g.width) +
                     ") does not belong to table \"" + s.name + "\" (" + std::to_string(s.rows) +
                     ", " + std::to_string(s.width) + ")"));
    }
  }
}

double GpuOptimizer::clip_grad_norm(GpuGradients& grads, double max_norm) {
  const char* where = "GpuOptimizer::clip_grad_norm";
  if (!(max_norm > 0)) {
    throw InputError(
        error_message(where, "max_norm " + std::to_string(max_norm) + " (expected > 0)"));
  }
  check(grads, where);
  // The same buffers as train::clip_grad_norm sums: every dense gradient, then the tables'.
  std::vector<Span> runs;
  for (size_t i = 0; i < dense_.size(); ++i) push_merged(runs, grads.dense[i], dense_[i].size);
  for (const model::GpuSparseGrad& g : grads.sparse) {
    push_merged(runs, g.values, g.unique * g.width);
  }
  double total = 0;
  for (const Span& r : runs) total += cuda::sum_squares(r.data, r.size);
  const double norm = std::sqrt(total);

  const double coef = max_norm / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1.0) {
    const auto scale = static_cast<float>(coef);
    for (const Span& r : runs) cuda::scale_inplace(r.data, scale, r.size);
  }
  return norm;
}

void GpuOptimizer::step(const GpuGradients& grads, double lr, double table_lr) {
  const char* where = "GpuOptimizer::step";
  check_lr(where, lr);
  check_lr(where, table_lr);
  check(grads, where);

  // Dense: AdamW::step. Groups adjacent in parameters, gradients and moments, with the same decay
  // rule, go in one launch (the update is elementwise).
  ++dense_steps_;
  const cuda::AdamHyper dh = hyper(dense_options_.adam);
  for (size_t i = 0; i < dense_.size();) {
    size_t j = i + 1;
    int64_t n = dense_[i].size;
    while (j < dense_.size() && dense_[j].decay == dense_[i].decay &&
           dense_[j].param == dense_[i].param + n && grads.dense[j] == grads.dense[i] + n) {
      n += dense_[j].size;
      ++j;
    }
    const DenseGroup& g = dense_[i];
    cuda::adamw_step(g.param, grads.dense[i], m_.data() + g.offset, v_.data() + g.offset, n, lr,
                     dense_steps_, dh, g.decay ? dense_options_.weight_decay : 0.0);
    i = j;
  }

  // Sparse: SparseRowAdam::step, the embedding (first) at lr, the Engram tables at table_lr.
  const cuda::AdamHyper sh = hyper(sparse_options_);
  for (size_t i = 0; i < sparse_.size(); ++i) {
    SparseGroup& s = sparse_[i];
    const model::GpuSparseGrad& g = grads.sparse[i];
    ++s.steps;
    cuda::sparse_row_adam_step(s.table, s.m.data(), s.v.data(), s.last_step.data(), s.rows, s.width,
                               g.rows, g.values, g.unique, i == 0 ? lr : table_lr, s.steps, sh);
  }
  model_->sync_engram_params();
}

void GpuOptimizer::match(AdamW& dense, std::span<SparseRowAdam* const> sparse,
                         const char* where) const {
  std::vector<NamedState<float>> st = dense.state();
  if (st.size() != 2 * dense_.size()) {
    throw InputError(error_message(where, "the host AdamW has " + std::to_string(st.size() / 2) +
                                              " groups, the GPU optimizer " +
                                              std::to_string(dense_.size())));
  }
  std::map<std::string, const DenseGroup*> by_name;
  for (const DenseGroup& g : dense_) by_name.emplace(g.name + ".exp_avg", &g);
  for (size_t k = 0; k < st.size(); k += 2) {
    auto it = by_name.find(st[k].name);
    if (it == by_name.end() || sz(it->second->size) != st[k].values.size()) {
      throw InputError(error_message(where, "host AdamW state \"" + st[k].name + "\" (" +
                                                std::to_string(st[k].values.size()) +
                                                " values) has no GPU group of its size"));
    }
  }
  if (sparse.size() != sparse_.size()) {
    throw InputError(error_message(where, std::to_string(sparse.size()) +
                                              " host SparseRowAdam for " +
                                              std::to_string(sparse_.size()) + " tables"));
  }
  for (size_t i = 0; i < sparse_.size(); ++i) {
    if (sparse[i] == nullptr || sparse[i]->rows() != sparse_[i].rows ||
        sparse[i]->width() != sparse_[i].width) {
      throw InputError(error_message(where, "host SparseRowAdam " + std::to_string(i) +
                                                " does not have the shape of table \"" +
                                                sparse_[i].name + "\" (" +
                                                std::to_string(sparse_[i].rows) + ", " +
                                                std::to_string(sparse_[i].width) + ")"));
    }
  }
}

void GpuOptimizer::download_state(AdamW& dense, std::span<SparseRowAdam* const> sparse) const {
  match(dense, sparse, "GpuOptimizer::download_state");
  for_each_dense_state(dense_, dense, [&](const DenseGroup& g, NamedState<float>& m,
                                          NamedState<float>& v) {
    cuda::copy_to_host(m.values.data(), m_.data() + g.offset, sz(g.size) * sizeof(float));
    cuda::copy_to_host(v.values.data(), v_.data() + g.offset, sz(g.size) * sizeof(float));
  });
  dense.set_steps(dense_steps_);
  for (size_t i = 0; i < sparse_.size(); ++i) {
    const SparseGroup& s = sparse_[i];
    std::vector<NamedState<float>> ss = sparse[i]->state();  // exp_avg, exp_avg_sq
    if (s.m.size() > 0) {
      s.m.download(ss[0].values);
      s.v.download(ss[1].values);
    }
    if (s.last_step.size() > 0) s.last_step.download(sparse[i]->last_step());
    sparse[i]->set_steps(s.steps);
  }
}

void GpuOptimizer::upload_state(AdamW& dense, std::span<SparseRowAdam* const> sparse) {
  match(dense, sparse, "GpuOptimizer::upload_state");
  for_each_dense_state(dense_, dense, [&](const DenseGroup& g, NamedState<float>& m,
                                          NamedState<float>& v) {
    cuda::copy_to_device(m_.data() + g.offset, m.values.data(), sz(g.size) * sizeof(float));
    cuda::copy_to_device(v_.data() + g.offset, v.values.data(), sz(g.size) * sizeof(float));
  });
  dense_steps_ = dense.steps();
  for (size_t i = 0; i < sparse_.size(); ++i) {
    SparseGroup& s = sparse_[i];
    std::vector<NamedState<float>> ss = sparse[i]->state();
    if (s.m.size() > 0) {
      s.m.upload(ss[0].values);
      s.v.upload(ss[1].values);
    }
    if (s.last_step.size() > 0) s.last_step.upload(sparse[i]->last_step());
    s.steps = sparse[i]->steps();
  }
}

// ---- GpuGradAccumulator -----------------------------------------------------------------------

GpuGradAccumulator::GpuGradAccumulator(model::GpuTransformer& model) : model_(&model) {
  require_cuda("GpuGradAccumulator");
  size_t total = 0;
  for (const model::GpuParam& p : model.dense_params()) {
    offsets_.push_back(total);
    total += sz(p.size);
  }
  if (total > 0) dense_ = cuda::DeviceBuffer<float>(total);
  tables_.resize(model.sparse_grads().size());
  clear();
}

void GpuGradAccumulator::clear() {
  // The CPU trainer's sums start from zeros (0 + g_1 + ...): the same adds here.
  if (dense_.size() > 0) cuda::zero(dense_.data(), static_cast<int64_t>(dense_.size()));
  for (Table& t : tables_) t.count = 0;
  count_ = 0;
  averaged_ = false;
}

void GpuGradAccumulator::add() {
  const std::vector<model::GpuParam> dense = model_->dense_params();
  assert(dense.size() == offsets_.size());
  for (size_t i = 0; i < dense.size(); ++i) {
    cuda::add_inplace(dense_.data() + offsets_[i], dense[i].grad, dense[i].size);
  }
  const std::vector<model::GpuSparseGrad> sparse = model_->sparse_grads();
  assert(sparse.size() == tables_.size());
  for (size_t i = 0; i < sparse.size(); ++i) {
    Table& t = tables_[i];
    const model::GpuSparseGrad& g = sparse[i];
    append(t.rows, t.count, g.rows, g.unique);
    append(t.values, t.count * g.width, g.values, g.unique * g.width);
    t.count += g.unique;
  }
  ++count_;
  averaged_ = false;
}

GpuGradients GpuGradAccumulator::mean() {
  if (count_ == 0) throw InputError(error_message("GpuGradAccumulator::mean", "no gradient added"));
  GpuGradients out;
  const std::vector<model::GpuParam> dense = model_->dense_params();
  for (size_t i = 0; i < dense.size(); ++i) out.dense.push_back(dense_.data() + offsets_[i]);
  out.sparse = model_->sparse_grads();
  const float s = 1.0f / static_cast<float>(count_);
  for (size_t i = 0; i < tables_.size(); ++i) {
    Table& t = tables_[i];
    model::GpuSparseGrad& g = out.sparse[i];
    if (!averaged_) {
      // The union of the micro-batches' rows, each row's values summed in micro-batch order from
      // 0: the concatenation is in micro-batch order and the sort is stable.
      cuda::embedding_backward(t.sum, t.values.data(), t.rows.data(), t.count, g.width,
                               std::max<int64_t>(1, g.table_rows));
      cuda::scale_inplace(t.sum.values.data(), s, t.sum.unique * g.width);
    }
    g.rows = t.sum.rows.data();
    g.values = t.sum.values.data();
    g.unique = t.sum.unique;
  }
  if (!averaged_ && dense_.size() > 0) {
    cuda::scale_inplace(dense_.data(), s, static_cast<int64_t>(dense_.size()));
  }
  averaged_ = true;
  return out;
}

}  // namespace engram::train
