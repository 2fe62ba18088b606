// Parameter accounting (BACKBONE_SPEC §5, ENGRAM_SPEC §4) for the architecture a ModelConfig
// describes:
//
//   embedding       vocab x C                      (outside P_tot)
//   per layer       attention wq (Hq*hd, C), wk, wv (Hkv*hd, C), wo (C, Hq*hd); two RMSNorms (C)
//                   mHC (n > 1), per sublayer: Phi (n^2+2n, n*C), b (n^2+2n), alpha (3)
//                   dense SwiGLU 3*C*I, or MoE: router E*C, routed E*3*C*H, shared n_s*3*C*H
//                   Engram: table (sum of the layer's primes) x D, projections (1+n)*C*d_mem
//                   (+ (1+n)*C biases), key/query norms 2*n*C, short conv n*C*w + n*C norm
//   head read-out   (n > 1) Phi_h (n, n*C), b_h (n), alpha_h (1);  final RMSNorm C
//   LM head         C x vocab, untied               (outside P_tot)
//
// P_act counts what one token uses: everything dense, top_k routed experts of each MoE layer and
// the (N-1)*K table rows each Engram layer reads. P_sparse = P_tot - P_act, and
// rho = (routed-expert parameters not activated) / P_sparse.
#pragma once

#include <cstdint>
#include <string>

#include "engram/model/config.h"

namespace engram::model {

struct ParamCount {
  // Components (all layers summed).
  int64_t embedding = 0;       // vocab x C
  int64_t lm_head = 0;         // C x vocab
  int64_t attention = 0;       // wq, wk, wv, wo
  int64_t norms = 0;           // two block RMSNorms per layer + the final RMSNorm
  int64_t mhc = 0;             // mHC of every sublayer + the head read-out (0 when hc_mult = 1)
  int64_t dense_ffn = 0;       // SwiGLU of the dense layers
  int64_t router = 0;          // MoE routers
  int64_t routed_experts = 0;  // all routed experts
  int64_t routed_active = 0;   // top_k routed experts per MoE layer
  int64_t shared_experts = 0;
  int64_t engram_dense = 0;         // Engram projections, biases, norms and short conv
  int64_t engram_table = 0;         // Engram table rows x row width, all Engram layers
  int64_t engram_table_rows = 0;    // table rows, all Engram layers
  int64_t engram_table_active = 0;  // (N-1)*K rows read per token x row width, all layers

  // Totals.
  int64_t total = 0;            // P_tot: everything but embedding and LM head
  int64_t active = 0;           // P_act: used per token
  int64_t sparse = 0;           // P_sparse = P_tot - P_act
  int64_t routed_inactive = 0;  // routed_experts - routed_active
  double rho = 0.0;             // routed_inactive / sparse; 0 when sparse = 0 (a dense model)
};

// Counts `config` (which should be valid; see ModelConfig::validate). The Engram table sizes come
// from the reference prime walk over engram.layer_ids, orders and heads, as hash::NgramHasher.
ParamCount count_params(const ModelConfig& config);

// Model FLOPs of training on one token (forward + backward = 3 x forward), the numerator of the
// model FLOP utilisation (MFU) that bench/bench_train and tools/torch_ref/model_ref.py bench
// report (the mirror computes the same sum from its modules: keep the two in step):
//
//   flops_per_token = 6 * (P_act - engram_table_active + C * V)  +  6 * L * T * Hq * hd
//
// First term: 2 FLOPs per multiply-add, x3 for forward + backward, of every weight one token
// uses: P_act (attention, mHC, dense FFN or router + top_k routed + shared experts, Engram
// projections; norms and biases, a rounding error, included) without the Engram table rows it
// reads (gathers, not multiply-adds; the token embedding is outside P_act already), plus the
// untied LM head (C x V). Second term: causal attention, per layer and query head QK^T and AV
// over T/2 keys on average (2 x 2 x hd x T/2 forward), x3. (The non-causal convention,
// 6N + 12 L T Hq hd, would count the second term twice.)
struct TrainFlops {
  int64_t weights_active = 0;  // P_act - engram_table_active + C * V
  double weights = 0;          // 6 * weights_active
  double attention = 0;        // 6 * L * T * Hq * hd
  double per_token = 0;        // weights + attention
};
TrainFlops train_flops_per_token(const ModelConfig& config, int64_t seq_len);
// The formula above in one line, for JSON output.
inline constexpr const char* kTrainFlopsFormula =
    "6*(P_act - engram_table_active + C*V) + 6*L*T*Hq*hd (causal attention)";

// A human-readable table: one line per component (total and per-token), then the totals and rho.
std::string render_param_table(const ParamCount& count);
// A JSON object with every field of ParamCount under its name.
std::string render_param_json(const ParamCount& count);

}  // namespace engram::model
