// The model configuration: backbone (BACKBONE_SPEC), MoE, Engram (ENGRAM_SPEC §2-3) and training
// settings, read from a TOML file such as configs/tiny.toml:
//
//   [model]   vocab_size, hidden_size, num_layers, num_heads, ...   (required)
//   [moe]     num_experts, top_k, expert_intermediate_size, ...     (optional: absent = all dense)
//   [engram]  engram_vocab_size, max_ngram_size, ... (reference names; optional: absent = none)
//   [train]   batch_size, lr, steps, ...                            (optional: defaults below)
//
// Loading is strict: an unknown section or key (usually a typo), a missing required key or a value
// of the wrong TOML type throws FormatError ("file: section.key: what"); a value that makes no
// sense throws ConfigError naming the field and the value. Integer values are accepted where a
// float is expected. Every default below is the value a key takes when it is absent.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engram/hash/hash_config.h"

namespace engram::model {

// [model] — the backbone. Required: hidden_size, num_layers, num_heads, dense_intermediate_size.
struct BackboneConfig {
  int64_t vocab_size = 128815;  // tokenizer ids (DeepSeek-V3 tokenizer incl. added tokens)
  int64_t hidden_size = 0;      // C
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // query heads Hq
  int64_t num_kv_heads = 0;  // Hkv; absent in the file = num_heads (filled in when loading)
  int64_t head_dim = 0;      // hd; absent in the file = hidden_size / num_heads (filled in)
  int64_t hc_mult = 1;       // n residual streams (mHC); 1 = plain pre-norm Transformer
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  int64_t max_seq_len = 1024;
  int64_t dense_intermediate_size = 0;  // SwiGLU width of the dense layers
  int64_t first_dense_layers = 1;       // layers [0, first_dense_layers) are dense when MoE is on

  bool operator==(const BackboneConfig&) const = default;
};

// [moe] — DeepSeek-V3 MoE in layers >= first_dense_layers. Required: num_experts, top_k,
// expert_intermediate_size.
struct MoeConfig {
  int64_t num_experts = 0;         // routed experts E
  int64_t num_shared_experts = 0;  // one SwiGLU of width num_shared_experts * expert width
  int64_t top_k = 0;
  int64_t expert_intermediate_size = 0;  // H, SwiGLU width of one expert
  double route_scale = 1.0;
  double bias_update_gamma = 0.001;  // auxiliary-loss-free balance step
  double seq_aux_alpha = 0.0;        // sequence-wise balance loss weight; 0 = off

  bool operator==(const MoeConfig&) const = default;
};

// [engram] — the reference names of ENGRAM_SPEC §2 go into `hash` (its hidden_size and hc_mult
// are taken from [model]; they are not keys of this section). Required: engram_vocab_size,
// max_ngram_size, n_embed_per_ngram, n_head_per_ngram, layer_ids. Optional: pad_id (2),
// seed (0), kernel_size (4), dead_token_id (unset), bias (true), short_conv (true).
struct EngramConfig {
  hash::EngramHashConfig hash;
  bool bias = true;        // biases on the value and key projections
  bool short_conv = true;  // false: Y = alpha * v (DeepSeek-V4.1)

  bool operator==(const EngramConfig& other) const;  // every field of hash, bias, short_conv
};

// [train] — settings for the trainer; every key is optional.
struct TrainConfig {
  int64_t batch_size = 8;     // sequences per micro-batch
  int64_t seq_len = 256;      // tokens per sequence, <= model.max_seq_len
  int64_t steps = 1000;       // optimizer steps
  double lr = 3e-4;           // peak learning rate
  double min_lr_ratio = 0.1;  // final lr = lr * min_lr_ratio (cosine decay), in [0, 1]
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  double engram_lr_multiplier = 5.0;  // Engram tables: lr * this, no weight decay (paper recipe)
  double grad_clip = 1.0;             // global gradient-norm clip; 0 = off
  int64_t grad_accum = 1;             // micro-batches per optimizer step
  uint64_t seed = 0;
  int64_t eval_every = 100;     // steps between evaluations; 0 = never
  int64_t eval_tokens = 65536;  // tokens per evaluation
  std::string data;             // folder of a prepared shard set; empty = given elsewhere

  bool operator==(const TrainConfig&) const = default;
};

struct ModelConfig {
  BackboneConfig model;
  std::optional<MoeConfig> moe;
  std::optional<EngramConfig> engram;
  TrainConfig train;

  // Whether layer `layer` uses MoE (MoE on and layer >= first_dense_layers).
  bool is_moe_layer(int64_t layer) const;
  // The hashing config with hidden_size and hc_mult from [model]. Requires engram.
  hash::EngramHashConfig engram_hash_config() const;

  // Throws ConfigError ("source: section.field: value ...") for values that make no sense:
  // sizes < 1, num_kv_heads not dividing num_heads, odd head_dim (RoPE), hc_mult < 1,
  // first_dense_layers outside [0, num_layers], top_k outside [1, num_experts], an Engram layer
  // id >= num_layers, anything EngramHashConfig::validate rejects, seq_len > max_seq_len, ...
  void validate(const std::string& source = "config") const;

  // Parse, fill in derived defaults (num_kv_heads, head_dim) and validate. See the file comment.
  static ModelConfig from_toml(const std::string& toml_text, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  // Every field written out explicitly; from_toml(to_toml()) gives back an equal config.
  std::string to_toml() const;

  bool operator==(const ModelConfig&) const = default;
};

}  // namespace engram::model
