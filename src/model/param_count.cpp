#include "engram/model/param_count.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "engram/hash/primes.h"

namespace engram::model {

ParamCount count_params(const ModelConfig& config) {
  const BackboneConfig& m = config.model;
  const int64_t C = m.hidden_size;
  const int64_t n = m.hc_mult;
  ParamCount p;
  p.embedding = m.vocab_size * C;
  p.lm_head = C * m.vocab_size;

  const int64_t q_width = m.num_heads * m.head_dim;
  const int64_t kv_width = m.num_kv_heads * m.head_dim;
  const int64_t mhc_sublayer = n > 1 ? (n * n + 2 * n) * (n * C) + (n * n + 2 * n) + 3 : 0;
  for (int64_t layer = 0; layer < m.num_layers; ++layer) {
    p.attention += 2 * q_width * C + 2 * kv_width * C;  // wq, wo; wk, wv
    p.norms += 2 * C;
    p.mhc += 2 * mhc_sublayer;
    if (config.is_moe_layer(layer)) {
      const MoeConfig& e = *config.moe;
      const int64_t expert = 3 * C * e.expert_intermediate_size;
      p.router += e.num_experts * C;
      p.routed_experts += e.num_experts * expert;
      p.routed_active += e.top_k * expert;
      p.shared_experts += e.num_shared_experts * expert;
    } else {
      p.dense_ffn += 3 * C * m.dense_intermediate_size;
    }
  }
  if (n > 1) p.mhc += n * (n * C) + n + 1;  // head read-out
  p.norms += C;                             // final norm

  if (config.engram) {
    const hash::EngramHashConfig& h = config.engram->hash;
    const int64_t heads_per_order = h.n_head_per_ngram;
    const int64_t row_width = h.n_embed_per_ngram / h.n_head_per_ngram;
    const int64_t mem_dim = static_cast<int64_t>(h.max_ngram_size - 1) * h.n_embed_per_ngram;
    std::unordered_set<uint64_t> used;
    for (size_t l = 0; l < h.layer_ids.size(); ++l) {
      for (int64_t base : h.engram_vocab_size) {
        uint64_t start = static_cast<uint64_t>(base) - 1;
        for (int64_t head = 0; head < heads_per_order; ++head) {
          start = hash::next_unused_prime(start, used);
          used.insert(start);
          p.engram_table_rows += static_cast<int64_t>(start);
        }
      }
      p.engram_table_active += h.ids_per_token() * row_width;
      p.engram_dense += (1 + n) * C * mem_dim;                 // value_proj, key_projs
      if (config.engram->bias) p.engram_dense += (1 + n) * C;  // their biases
      p.engram_dense += 2 * n * C;                             // norm1, norm2
      if (config.engram->short_conv) p.engram_dense += n * C * h.kernel_size + n * C;
    }
    p.engram_table = p.engram_table_rows * row_width;
  }

  const int64_t dense_part =
      p.attention + p.norms + p.mhc + p.dense_ffn + p.router + p.shared_experts + p.engram_dense;
  p.total = dense_part + p.routed_experts + p.engram_table;
  p.active = dense_part + p.routed_active + p.engram_table_active;
  p.sparse = p.total - p.active;
  p.routed_inactive = p.routed_experts - p.routed_active;
  p.rho =
      p.sparse > 0 ? static_cast<double>(p.routed_inactive) / static_cast<double>(p.sparse) : 0.0;
  return p;
}

TrainFlops train_flops_per_token(const ModelConfig& config, int64_t seq_len) {
  const BackboneConfig& m = config.model;
  const ParamCount p = count_params(config);
  TrainFlops f;
  f.weights_active = p.active - p.engram_table_active + m.hidden_size * m.vocab_size;
  f.weights = 6.0 * static_cast<double>(f.weights_active);
  f.attention = 6.0 * static_cast<double>(m.num_layers) * static_cast<double>(seq_len) *
                static_cast<double>(m.num_heads * m.head_dim);
  f.per_token = f.weights + f.attention;
  return f;
}

std::string render_param_table(const ParamCount& p) {
  std::string out;
  char line[128];
  auto row = [&](const char* name, int64_t total, int64_t active) {
    std::snprintf(line, sizeof(line), "%-24s %16lld %16lld\n", name, static_cast<long long>(total),
                  static_cast<long long>(active));
    out += line;
  };
  auto total_only = [&](const char* name, int64_t total) {
    std::snprintf(line, sizeof(line), "%-24s %16lld %16s\n", name, static_cast<long long>(total),
                  "-");
    out += line;
  };
  std::snprintf(line, sizeof(line), "%-24s %16s %16s\n", "component", "params", "per token");
  out += line;
  total_only("embedding (not in P_tot)", p.embedding);
  row("attention", p.attention, p.attention);
  row("norms", p.norms, p.norms);
  row("mhc", p.mhc, p.mhc);
  row("dense ffn", p.dense_ffn, p.dense_ffn);
  row("router", p.router, p.router);
  row("routed experts", p.routed_experts, p.routed_active);
  row("shared experts", p.shared_experts, p.shared_experts);
  row("engram dense", p.engram_dense, p.engram_dense);
  row("engram table", p.engram_table, p.engram_table_active);
  total_only("lm head (not in P_tot)", p.lm_head);
  row("P_tot / P_act", p.total, p.active);
  total_only("P_sparse", p.sparse);
  total_only("routed inactive", p.routed_inactive);
  std::snprintf(line, sizeof(line), "%-24s %16.4f\n", "rho", p.rho);
  out += line;
  return out;
}

std::string render_param_json(const ParamCount& p) {
  const nlohmann::ordered_json j = {
      {"embedding", p.embedding},
      {"lm_head", p.lm_head},
      {"attention", p.attention},
      {"norms", p.norms},
      {"mhc", p.mhc},
      {"dense_ffn", p.dense_ffn},
      {"router", p.router},
      {"routed_experts", p.routed_experts},
      {"routed_active", p.routed_active},
      {"shared_experts", p.shared_experts},
      {"engram_dense", p.engram_dense},
      {"engram_table", p.engram_table},
      {"engram_table_rows", p.engram_table_rows},
      {"engram_table_active", p.engram_table_active},
      {"total", p.total},
      {"active", p.active},
      {"sparse", p.sparse},
      {"routed_inactive", p.routed_inactive},
      {"rho", p.rho},
  };
  return j.dump(2);
}

}  // namespace engram::model
