// The non-GEMM ops on the GPU (include/engram/cuda/ops.h): argument checks and the Adam
// constants here; the kernels are in src/cuda/ops.cu. src/cuda/ops_stub.cpp stands in for both
// in builds without CUDA.
#include "engram/cuda/ops.h"

#include <cmath>
#include <string>

#include "cuda/ops_kernel.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

void require_non_negative(const char* where, const char* what, int64_t value) {
  if (value < 0) {
    throw InputError(error_message(where, std::string(what) + " " + std::to_string(value) +
                                              " (expected >= 0)"));
  }
}

void require_stride(const char* where, const char* what, int64_t stride, int64_t c) {
  if (stride < c) {
    throw InputError(error_message(where, std::string(what) + " " + std::to_string(stride) +
                                              " is less than the row length " +
                                              std::to_string(c)));
  }
}

void check_layout(const char* where, const nn::RowLayout& l) {
  require_non_negative(where, "rows", l.n);
  require_non_negative(where, "columns", l.c);
  require_stride(where, "x stride", l.stride, l.c);
}

void check_step(const char* where, double lr, int64_t t) {
  if (!(lr >= 0) || !std::isfinite(lr)) {
    throw InputError(error_message(
        where, "learning rate " + std::to_string(lr) + " (expected finite and >= 0)"));
  }
  if (t < 1) throw InputError(error_message(where, "step " + std::to_string(t) + " (< 1)"));
}

void check_hyper(const char* where, const AdamHyper& h) {
  if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1) || !(h.eps >= 0) ||
      !std::isfinite(h.eps)) {
    throw ConfigError(error_message(where, "betas (" + std::to_string(h.beta1) + ", " +
                                               std::to_string(h.beta2) + ") or eps " +
                                               std::to_string(h.eps) + " out of range"));
  }
}

// train's adam_coeffs: constants in double, rounded to float.
detail::AdamCoeffsF adam_coeffs(const AdamHyper& o, int64_t t, double lr) {
  const double td = static_cast<double>(t);
  const double bc1 = 1.0 - std::pow(o.beta1, td);
  const double bc2 = 1.0 - std::pow(o.beta2, td);
  return {static_cast<float>(o.beta1),  static_cast<float>(1.0 - o.beta1),
          static_cast<float>(o.beta2),  static_cast<float>(1.0 - o.beta2),
          static_cast<float>(lr / bc1), static_cast<float>(std::sqrt(bc2)),
          static_cast<float>(o.eps)};
}

}  // namespace

void rmsnorm_forward(float* y, int64_t y_stride, float* rstd, const float* x, nn::RowLayout xl,
                     const float* w, float eps, void* stream) {
  const char* where = "cuda::rmsnorm_forward";
  check_layout(where, xl);
  require_stride(where, "y stride", y_stride, xl.c);
  if (xl.n == 0) return;
  if (xl.c == 0) {
    throw InputError(error_message(where, "rows of 0 columns (the RMS is undefined)"));
  }
  detail::launch_rmsnorm_forward(y, y_stride, rstd, x, xl.n, xl.c, xl.stride, w, eps, stream);
}

void rmsnorm_backward(float* dx, int64_t dx_stride, float* dw, const float* dy, int64_t dy_stride,
                      const float* x, nn::RowLayout xl, const float* w, const float* rstd,
                      void* stream) {
  const char* where = "cuda::rmsnorm_backward";
  check_layout(where, xl);
  require_stride(where, "dx stride", dx_stride, xl.c);
  require_stride(where, "dy stride", dy_stride, xl.c);
  if (xl.n == 0 || xl.c == 0) return;
  detail::launch_rmsnorm_backward(dx, dx_stride, dw, dy, dy_stride, x, xl.n, xl.c, xl.stride, w,
                                  rstd, stream);
}

void swiglu_gate_forward(float* h, const float* a, const float* b, int64_t size, void* stream) {
  require_non_negative("cuda::swiglu_gate_forward", "size", size);
  if (size > 0) detail::launch_swiglu_forward(h, a, b, size, stream);
}

void swiglu_gate_backward(float* da, float* db, const float* dh, const float* a, const float* b,
                          int64_t size, void* stream) {
  require_non_negative("cuda::swiglu_gate_backward", "size", size);
  if (size > 0) detail::launch_swiglu_backward(da, db, dh, a, b, size, stream);
}

namespace {

void rope(const char* where, float* x, int64_t batch, int64_t seq, int64_t heads,
          int64_t head_dim, double theta, double sign, void* stream) {
  require_non_negative(where, "batch", batch);
  require_non_negative(where, "seq", seq);
  require_non_negative(where, "heads", heads);
  require_non_negative(where, "head_dim", head_dim);
  if (head_dim % 2 != 0) {
    throw ConfigError(error_message(where, "head_dim " + std::to_string(head_dim) + " is odd"));
  }
  if (!(theta > 0) || !std::isfinite(theta)) {
    throw ConfigError(error_message(where, "theta " + std::to_string(theta) + " (expected > 0)"));
  }
  if (batch == 0 || seq == 0 || heads == 0 || head_dim == 0) return;
  detail::launch_rope(x, batch, seq, heads, head_dim, theta, sign, stream);
}

}  // namespace

void rope_forward(float* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                  double theta, void* stream) {
  rope("cuda::rope_forward", x, batch, seq, heads, head_dim, theta, 1.0, stream);
}

void rope_backward(float* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                   double theta, void* stream) {
  rope("cuda::rope_backward", x, batch, seq, heads, head_dim, theta, -1.0, stream);
}

double cross_entropy_forward_backward(float* dlogits, const float* logits, const int64_t* targets,
                                      int64_t n, int64_t v, float scale, float* row_loss,
                                      int64_t* counted, void* stream) {
  const char* where = "cuda::cross_entropy_forward_backward";
  require_non_negative(where, "rows", n);
  if (v < 1) throw InputError(error_message(where, "vocabulary " + std::to_string(v) + " (< 1)"));
  if (n == 0) {
    if (counted != nullptr) *counted = 0;
    return 0.0;
  }
  const detail::CrossEntropyOut out =
      detail::launch_cross_entropy(dlogits, logits, targets, n, v, scale, row_loss, stream);
  if (out.bad_index >= 0) {
    throw InputError(error_message("cross entropy: targets[" + std::to_string(out.bad_index) + "]",
                                   "target out of range [0, " + std::to_string(v) + ")"));
  }
  if (counted != nullptr) *counted = out.count;
  if (out.count == 0) return 0.0;
  return out.loss_sum / static_cast<double>(out.count);
}

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t size, double lr,
                int64_t t, const AdamHyper& hyper, double weight_decay, void* stream) {
  const char* where = "cuda::adamw_step";
  check_step(where, lr, t);
  check_hyper(where, hyper);
  require_non_negative(where, "size", size);
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) {
    throw InputError(error_message(where, "weight_decay " + std::to_string(weight_decay)));
  }
  if (size == 0) return;
  const auto decay_factor = static_cast<float>(1.0 - lr * weight_decay);
  detail::launch_adamw(param, grad, m, v, size, adam_coeffs(hyper, t, lr), weight_decay != 0,
                       decay_factor, stream);
}

void sparse_row_adam_step(float* table, float* m, float* v, int64_t* last_step, int64_t table_rows,
                          int64_t width, const int64_t* rows, const float* values, int64_t n_rows,
                          double lr, int64_t t, const AdamHyper& hyper, void* stream) {
  const char* where = "cuda::sparse_row_adam_step";
  check_step(where, lr, t);
  check_hyper(where, hyper);
  require_non_negative(where, "table rows", table_rows);
  require_non_negative(where, "width", width);
  require_non_negative(where, "gradient rows", n_rows);
  if (n_rows == 0) return;
  detail::launch_sparse_row_adam(table, m, v, last_step, table_rows, width, rows, values, n_rows,
                                 adam_coeffs(hyper, t, lr), t, hyper.beta1, hyper.beta2, stream);
}

}  // namespace engram::cuda
