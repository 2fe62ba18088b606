// Launchers of the kernels in src/cuda/ops.cu, in plain types, called by src/cuda/ops.cpp after
// it has checked the arguments (the .cu file is C++17 and has no argument checks of its own).
#pragma once

#include <cstdint>

namespace engram::cuda::detail {

// The Adam constants of one step, rounded to float as train::AdamW computes them.
struct AdamCoeffsF {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float eps;
};

// n, c >= 1.
void launch_rmsnorm_forward(float* y, int64_t y_stride, float* rstd, const float* x, int64_t n,
                            int64_t c, int64_t x_stride, const float* w, float eps, void* stream);
void launch_rmsnorm_backward(float* dx, int64_t dx_stride, float* dw, const float* dy,
                             int64_t dy_stride, const float* x, int64_t n, int64_t c,
                             int64_t x_stride, const float* w, const float* rstd, void* stream);

// size >= 1.
void launch_swiglu_forward(float* h, const float* a, const float* b, int64_t size, void* stream);
void launch_swiglu_backward(float* da, float* db, const float* dh, const float* a, const float* b,
                            int64_t size, void* stream);

// All sizes >= 1, head_dim even; sign +1 or -1.
void launch_rope(float* x, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                 double theta, double sign, void* stream);

struct CrossEntropyOut {
  double loss_sum = 0;    // sum of counted rows' losses
  int64_t count = 0;      // targets >= 0 (and < v)
  int64_t bad_index = -1; // first position of a target >= v, or -1
};
// n, v >= 1. Synchronizes the stream.
CrossEntropyOut launch_cross_entropy(float* dlogits, const float* logits, const int64_t* targets,
                                     int64_t n, int64_t v, float scale, float* row_loss,
                                     void* stream);

// size >= 1; decay_factor applied first when `decay`.
void launch_adamw(float* p, const float* g, float* m, float* v, int64_t size,
                  const AdamCoeffsF& c, bool decay, float decay_factor, void* stream);
// n_rows >= 1, width >= 0.
void launch_sparse_row_adam(float* table, float* m, float* v, int64_t* last_step,
                            int64_t table_rows, int64_t width, const int64_t* rows,
                            const float* values, int64_t n_rows, const AdamCoeffsF& c, int64_t t,
                            double beta1, double beta2, void* stream);

}  // namespace engram::cuda::detail
