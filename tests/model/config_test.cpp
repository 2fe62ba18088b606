// ModelConfig: the shipped configs load; every validation error names the field and value;
// unknown keys/sections and wrong types are FormatErrors; to_toml round-trips. ParamCount: hand
// counts from the formulas of BACKBONE_SPEC §5 / ENGRAM_SPEC §4, and the shipped iso-parameter
// pair (small_engram vs small_moe).
#include "engram/model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engram/model/param_count.h"
#include "engram/util/error.h"

namespace engram::model {
namespace {

std::string config_path(const std::string& name) {
  return std::string(ENGRAM_SOURCE_DIR) + "/configs/" + name;
}

const char* kMinimal = R"([model]
vocab_size = 100
hidden_size = 8
num_layers = 1
num_heads = 2
dense_intermediate_size = 16
)";

const char* kFull = R"([model]
vocab_size = 50
hidden_size = 8
num_layers = 3
num_heads = 2
num_kv_heads = 1
head_dim = 4
hc_mult = 2
dense_intermediate_size = 16
first_dense_layers = 1

[moe]
num_experts = 4
num_shared_experts = 1
top_k = 2
expert_intermediate_size = 6

[engram]
engram_vocab_size = [11, 13]
max_ngram_size = 3
n_embed_per_ngram = 4
n_head_per_ngram = 2
layer_ids = [1]
kernel_size = 3
)";

// kFull with `from` replaced by `to` (which must occur).
std::string edited(const std::string& from, const std::string& to) {
  std::string s = kFull;
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

template <class E>
void expect_error(const std::string& text, const std::vector<std::string>& keywords) {
  try {
    ModelConfig::from_toml(text, "test.toml");
    ADD_FAILURE() << "no error for:\n" << text;
  } catch (const E& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("test.toml: ", 0), 0u) << what;
    for (const std::string& k : keywords) EXPECT_NE(what.find(k), std::string::npos) << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(ModelConfig, ShippedConfigsLoad) {
  for (const char* name :
       {"tiny.toml", "small_engram.toml", "small_moe.toml", "main_engram.toml", "main_moe.toml"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = ModelConfig::from_file(config_path(name));
    EXPECT_GE(c.model.num_layers, 2);
    EXPECT_TRUE(c.moe.has_value());
    const ParamCount p = count_params(c);
    std::printf("%s\n%s", name, render_param_table(p).c_str());
  }
  const ModelConfig tiny = ModelConfig::from_file(config_path("tiny.toml"));
  ASSERT_TRUE(tiny.engram.has_value());
  EXPECT_EQ(tiny.model.hidden_size, 64);
  EXPECT_EQ(tiny.model.hc_mult, 2);
  EXPECT_EQ(tiny.engram->hash.layer_ids, std::vector<int>{1});
  const hash::EngramHashConfig h = tiny.engram_hash_config();
  EXPECT_EQ(h.hidden_size, 64);
  EXPECT_EQ(h.hc_mult, 2);
  EXPECT_NO_THROW(h.validate());
}

TEST(ModelConfig, DefaultsAndDerivedValues) {
  const ModelConfig c = ModelConfig::from_toml(kMinimal, "m.toml");
  EXPECT_EQ(c.model.num_kv_heads, 2);
  EXPECT_EQ(c.model.head_dim, 4);
  EXPECT_EQ(c.model.hc_mult, 1);
  EXPECT_EQ(c.model.rope_theta, 10000.0);
  EXPECT_EQ(c.model.norm_eps, 1e-6);
  EXPECT_EQ(c.model.max_seq_len, 1024);
  EXPECT_EQ(c.model.first_dense_layers, 1);
  EXPECT_FALSE(c.moe.has_value());
  EXPECT_FALSE(c.engram.has_value());
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_EQ(c.train, TrainConfig{});
  EXPECT_EQ(c.train.engram_lr_multiplier, 5.0);
  EXPECT_EQ(c.train.grad_clip, 1.0);
  EXPECT_EQ(c.train.grad_accum, 1);

  const ModelConfig f = ModelConfig::from_toml(kFull, "f.toml");
  ASSERT_TRUE(f.moe && f.engram);
  EXPECT_EQ(f.moe->route_scale, 1.0);
  EXPECT_EQ(f.moe->bias_update_gamma, 0.001);
  EXPECT_EQ(f.moe->seq_aux_alpha, 0.0);
  EXPECT_EQ(f.engram->hash.pad_id, 2);
  EXPECT_EQ(f.engram->hash.seed, 0u);
  EXPECT_TRUE(f.engram->bias);
  EXPECT_TRUE(f.engram->short_conv);
  EXPECT_FALSE(f.is_moe_layer(0));
  EXPECT_TRUE(f.is_moe_layer(1));
  EXPECT_EQ(
      ModelConfig::from_toml(edited("vocab_size = 50", "vocab_size = 0x10"), "x").model.vocab_size,
      16);
}

TEST(ModelConfig, ImpossibleValuesAreConfigErrors) {
  // hidden_size not divisible by num_heads when head_dim is unset.
  expect_error<ConfigError>(
      edited("hidden_size = 8\nnum_layers = 3\nnum_heads = 2\nnum_kv_heads = 1\nhead_dim = 4",
             "hidden_size = 9\nnum_layers = 3\nnum_heads = 2\nnum_kv_heads = 1"),
      {"model.hidden_size", "9", "num_heads 2"});
  expect_error<ConfigError>(edited("num_kv_heads = 1", "num_kv_heads = 3"),
                            {"model.num_kv_heads", "3", "num_heads 2"});
  expect_error<ConfigError>(edited("head_dim = 4", "head_dim = 5"), {"model.head_dim", "5", "odd"});
  expect_error<ConfigError>(edited("hc_mult = 2", "hc_mult = 0"), {"model.hc_mult", "0"});
  expect_error<ConfigError>(edited("top_k = 2", "top_k = 5"), {"moe.top_k", "5", "num_experts 4"});
  expect_error<ConfigError>(edited("top_k = 2", "top_k = 0"), {"moe.top_k", "0"});
  expect_error<ConfigError>(edited("first_dense_layers = 1", "first_dense_layers = 4"),
                            {"model.first_dense_layers", "4", "num_layers 3"});
  expect_error<ConfigError>(edited("layer_ids = [1]", "layer_ids = [1, 3]"),
                            {"engram.layer_ids", "3", "num_layers 3"});
  expect_error<ConfigError>(edited("num_layers = 3", "num_layers = 0"), {"model.num_layers", "0"});
  expect_error<ConfigError>(edited("vocab_size = 50", "vocab_size = -1"),
                            {"model.vocab_size", "-1"});
  expect_error<ConfigError>(edited("expert_intermediate_size = 6", "expert_intermediate_size = 0"),
                            {"moe.expert_intermediate_size", "0"});
  expect_error<ConfigError>(edited("dense_intermediate_size = 16", "dense_intermediate_size = 0"),
                            {"model.dense_intermediate_size", "0"});
  expect_error<ConfigError>(
      edited("first_dense_layers = 1", "first_dense_layers = 1\nnorm_eps = 0"),
      {"model.norm_eps", "0"});
  // Engram values are checked by EngramHashConfig::validate.
  expect_error<ConfigError>(edited("max_ngram_size = 3", "max_ngram_size = 1"),
                            {"engram", "max_ngram_size"});
  expect_error<ConfigError>(edited("n_embed_per_ngram = 4", "n_embed_per_ngram = 5"),
                            {"engram", "n_embed_per_ngram"});
  expect_error<ConfigError>(edited("engram_vocab_size = [11, 13]", "engram_vocab_size = [11]"),
                            {"engram", "engram_vocab_size"});
  // [train]
  expect_error<ConfigError>(std::string(kFull) + "\n[train]\nseq_len = 2000\n",
                            {"train.seq_len", "2000", "max_seq_len 1024"});
  expect_error<ConfigError>(std::string(kFull) + "\n[train]\nmin_lr_ratio = 1.5\n",
                            {"train.min_lr_ratio", "1.5"});
  expect_error<ConfigError>(std::string(kFull) + "\n[train]\nlr = -0.1\n", {"train.lr", "-0.1"});
  expect_error<ConfigError>(std::string(kFull) + "\n[train]\ngrad_accum = 0\n",
                            {"train.grad_accum", "0"});
}

TEST(ModelConfig, MalformedFilesAreFormatErrors) {
  expect_error<FormatError>(std::string(kFull) + "\n[optimizer]\nlr = 1\n",
                            {"optimizer", "unknown section"});
  expect_error<FormatError>(edited("hc_mult = 2", "hc_mult = 2\nhidden_sise = 8"),
                            {"model.hidden_sise", "unknown key"});
  expect_error<FormatError>(edited("top_k = 2", "top_k = 2\ntopk = 2"),
                            {"moe.topk", "unknown key"});
  expect_error<FormatError>(edited("kernel_size = 3", "kernel_size = 3\nhidden_size = 8"),
                            {"engram.hidden_size", "unknown key"});
  expect_error<FormatError>(std::string(kFull) + "\n[train]\nbatchsize = 1\n",
                            {"train.batchsize", "unknown key"});
  expect_error<FormatError>(edited("num_layers = 3", "num_layers = \"3\""),
                            {"model.num_layers", "expected an integer", "string"});
  expect_error<FormatError>(edited("num_layers = 3", "num_layers = 3.0"),
                            {"model.num_layers", "expected an integer", "float"});
  expect_error<FormatError>(edited("layer_ids = [1]", "layer_ids = [1.5]"),
                            {"engram.layer_ids[0]", "expected an integer"});
  expect_error<FormatError>(edited("layer_ids = [1]", "layer_ids = 1"),
                            {"engram.layer_ids", "expected an array"});
  expect_error<FormatError>(std::string(kFull) + "bias = 1\n", {"engram.bias", "boolean"});
  expect_error<FormatError>(std::string(kFull) + "\n[train]\nlr = \"fast\"\n",
                            {"train.lr", "expected a number"});
  expect_error<FormatError>(std::string(kFull) + "\n[train]\ndata = 3\n",
                            {"train.data", "expected a string"});
  expect_error<FormatError>(edited("hidden_size = 8\n", ""), {"model.hidden_size", "missing"});
  expect_error<FormatError>(edited("top_k = 2\n", ""), {"moe.top_k", "missing"});
  expect_error<FormatError>(edited("layer_ids = [1]\n", ""), {"engram.layer_ids", "missing"});
  expect_error<FormatError>("[moe]\nnum_experts = 1\n", {"model", "missing required section"});
  expect_error<FormatError>("model = 3\n", {"model", "expected a table"});
  expect_error<FormatError>("[model\nhidden_size = 3\n", {"line 1"});
}

TEST(ModelConfig, RoundTripsThroughToml) {
  std::vector<std::string> texts = {kMinimal, kFull};
  texts.push_back(std::string(kFull) +
                  "bias = false\nshort_conv = false\ndead_token_id = -1\nseed = 7\n"
                  "\n[train]\nlr = 0.00012345678901234\ndata = \"data/with \\\"quotes\\\"\"\n");
  for (const char* name : {"tiny.toml", "small_engram.toml", "small_moe.toml"}) {
    const ModelConfig c = ModelConfig::from_file(config_path(name));
    texts.push_back(c.to_toml());
  }
  for (const std::string& text : texts) {
    const ModelConfig a = ModelConfig::from_toml(text, "a.toml");
    const std::string written = a.to_toml();
    const ModelConfig b = ModelConfig::from_toml(written, "b.toml");
    EXPECT_EQ(a, b) << written;
    EXPECT_EQ(written, b.to_toml());
  }
  const ModelConfig odd = ModelConfig::from_toml(texts[2], "odd.toml");
  ASSERT_TRUE(odd.engram);
  EXPECT_FALSE(odd.engram->bias);
  EXPECT_EQ(odd.engram->hash.dead_token_id, -1);
  EXPECT_EQ(odd.train.lr, 0.00012345678901234);
  EXPECT_EQ(odd.train.data, "data/with \"quotes\"");
}

TEST(ParamCount, MinimalDenseModel) {
  const ParamCount p = count_params(ModelConfig::from_toml(kMinimal, "m.toml"));
  const int64_t C = 8, V = 100, I = 16, q = 2 * 4, kv = 2 * 4;
  EXPECT_EQ(p.embedding, V * C);
  EXPECT_EQ(p.lm_head, C * V);
  EXPECT_EQ(p.attention, q * C + 2 * kv * C + C * q);
  EXPECT_EQ(p.norms, 2 * C + C);
  EXPECT_EQ(p.mhc, 0);
  EXPECT_EQ(p.dense_ffn, 3 * C * I);
  EXPECT_EQ(p.router + p.routed_experts + p.shared_experts + p.engram_dense + p.engram_table, 0);
  EXPECT_EQ(p.total, 256 + 24 + 384);
  EXPECT_EQ(p.active, p.total);
  EXPECT_EQ(p.sparse, 0);
  EXPECT_EQ(p.rho, 0.0);
}

TEST(ParamCount, MoeEngramAndMhc) {
  const ParamCount p = count_params(ModelConfig::from_toml(kFull, "f.toml"));
  const int64_t C = 8, V = 50, L = 3, n = 2, I = 16, E = 4, k = 2, H = 6, shared = 1;
  const int64_t q = 2 * 4, kv = 1 * 4;
  EXPECT_EQ(p.embedding, V * C);
  EXPECT_EQ(p.attention, L * (q * C + 2 * kv * C + C * q));
  EXPECT_EQ(p.norms, L * 2 * C + C);
  const int64_t mhc_sub = (n * n + 2 * n) * (n * C) + (n * n + 2 * n) + 3;
  const int64_t mhc_head = n * (n * C) + n + 1;
  EXPECT_EQ(p.mhc, L * 2 * mhc_sub + mhc_head);
  EXPECT_EQ(p.mhc, 869);
  EXPECT_EQ(p.dense_ffn, 1 * 3 * C * I);
  const int64_t moe_layers = 2, expert = 3 * C * H;
  EXPECT_EQ(p.router, moe_layers * E * C);
  EXPECT_EQ(p.routed_experts, moe_layers * E * expert);
  EXPECT_EQ(p.routed_active, moe_layers * k * expert);
  EXPECT_EQ(p.shared_experts, moe_layers * shared * expert);
  // Prime walk: order 2 from 10 -> 11, 13; order 3 from 12 -> 17 (13 is used), 19.
  const int64_t rows = 11 + 13 + 17 + 19, D = 4 / 2, d_mem = 2 * 4, w = 3;
  EXPECT_EQ(p.engram_table_rows, rows);
  EXPECT_EQ(p.engram_table, rows * D);
  EXPECT_EQ(p.engram_table_active, (3 - 1) * 2 * D);
  EXPECT_EQ(p.engram_dense, (1 + n) * C * d_mem + (1 + n) * C + 2 * n * C + n * C * w + n * C);
  const int64_t dense =
      p.attention + p.norms + p.mhc + p.dense_ffn + p.router + p.shared_experts + p.engram_dense;
  EXPECT_EQ(p.total, dense + p.routed_experts + p.engram_table);
  EXPECT_EQ(p.total, 3821);
  EXPECT_EQ(p.active, 3133);
  EXPECT_EQ(p.sparse, 688);
  EXPECT_EQ(p.routed_inactive, 576);
  EXPECT_DOUBLE_EQ(p.rho, 576.0 / 688.0);

  // Without bias and short conv the Engram dense part loses exactly those parameters.
  const ParamCount lean = count_params(ModelConfig::from_toml(
      std::string(kFull) + "bias = false\nshort_conv = false\n", "lean.toml"));
  EXPECT_EQ(lean.engram_dense, (1 + n) * C * d_mem + 2 * n * C);

  const std::string json = render_param_json(p);
  EXPECT_NE(json.find("\"total\": 3821"), std::string::npos) << json;
  const std::string table = render_param_table(p);
  EXPECT_NE(table.find("3821"), std::string::npos) << table;
  EXPECT_NE(table.find("rho"), std::string::npos) << table;
}

TEST(ParamCount, ShippedIsoParameterPair) {
  const ParamCount e = count_params(ModelConfig::from_file(config_path("small_engram.toml")));
  const ParamCount m = count_params(ModelConfig::from_file(config_path("small_moe.toml")));
  std::printf("small_engram %s\nsmall_moe %s\n", render_param_json(e).c_str(),
              render_param_json(m).c_str());
  EXPECT_GT(e.engram_table, 0);
  EXPECT_EQ(m.engram_table, 0);
  EXPECT_DOUBLE_EQ(m.rho, 1.0);
  EXPECT_GE(e.rho, 0.75);
  EXPECT_LE(e.rho, 0.80);
  auto rel = [](int64_t a, int64_t b) {
    return std::abs(static_cast<double>(a - b)) / static_cast<double>(b);
  };
  EXPECT_LT(rel(e.total, m.total), 0.01) << e.total << " vs " << m.total;
  EXPECT_LT(rel(e.active, m.active), 0.01) << e.active << " vs " << m.active;
}

// The main job's configs are the small pair with another [train] section.
TEST(ParamCount, MainJobConfigsAreTheSmallPair) {
  for (const char* m : {"engram", "moe"}) {
    SCOPED_TRACE(m);
    const ModelConfig small = ModelConfig::from_file(config_path(std::string("small_") + m + ".toml"));
    const ModelConfig main = ModelConfig::from_file(config_path(std::string("main_") + m + ".toml"));
    EXPECT_EQ(small.model, main.model);
    EXPECT_EQ(small.moe, main.moe);
    EXPECT_EQ(small.engram, main.engram);
    EXPECT_EQ(main.train.data, "data/prepared/gutenberg");
  }
}

}  // namespace
}  // namespace engram::model
