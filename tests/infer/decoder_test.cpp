// Decoder: incremental logits (prefill, then one token at a time; all at once; one at a time from
// the start) equal Transformer::forward's on the whole sequence, for dense, GQA, MoE + Engram +
// mHC and conv-less Engram models with every parameter moved away from its init; reset and the
// input errors.
#include "engram/infer/decoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engram/model/config.h"
#include "engram/model/transformer.h"
#include "engram/util/error.h"
#include "error_of.h"

namespace engram::infer {
namespace {

constexpr int64_t kVocab = 300, kSeq = 20;

const char* kDense = R"([model]
vocab_size = 300
hidden_size = 32
num_layers = 2
num_heads = 4
max_seq_len = 24
dense_intermediate_size = 48
)";

const char* kDenseGqa = R"([model]
vocab_size = 300
hidden_size = 32
num_layers = 3
num_heads = 4
num_kv_heads = 2
max_seq_len = 24
dense_intermediate_size = 48
rope_theta = 500.0
)";

const char* kMoeEngram = R"([model]
vocab_size = 300
hidden_size = 32
num_layers = 3
num_heads = 4
num_kv_heads = 2
hc_mult = 2
max_seq_len = 24
dense_intermediate_size = 48
first_dense_layers = 1

[moe]
num_experts = 4
num_shared_experts = 1
top_k = 2
expert_intermediate_size = 16
route_scale = 1.5

[engram]
engram_vocab_size = [101, 103]
max_ngram_size = 3
n_embed_per_ngram = 8
n_head_per_ngram = 2
layer_ids = [1]
kernel_size = 4
)";

const char* kEngramNoConv = R"([model]
vocab_size = 300
hidden_size = 32
num_layers = 2
num_heads = 4
max_seq_len = 24
dense_intermediate_size = 48

[engram]
engram_vocab_size = [101, 103]
max_ngram_size = 3
n_embed_per_ngram = 8
n_head_per_ngram = 2
layer_ids = [0, 1]
short_conv = false
)";

struct TestModel {
  model::ModelConfig config;
  std::unique_ptr<hash::NgramHasher> hasher;
  std::unique_ptr<model::Transformer<float>> model;
};

// A seeded model with every parameter and buffer perturbed: init leaves norms at 1, the Engram
// conv and the MoE biases at 0, which would hide a wrong look-back or a missing bias.
TestModel make_model(const std::string& toml, uint64_t seed) {
  TestModel t;
  t.config = model::ModelConfig::from_toml(toml + "\n[train]\nseq_len = 16\n", "decoder_test");
  std::vector<std::vector<int64_t>> head_sizes;
  if (t.config.engram) {
    std::vector<int32_t> lut(kVocab);
    for (int32_t i = 0; i < kVocab; ++i) lut[static_cast<size_t>(i)] = i % 97;
    t.hasher = std::make_unique<hash::NgramHasher>(t.config.engram_hash_config(), lut, 97);
    head_sizes = model::engram_head_sizes(*t.hasher);
  }
  t.model = std::make_unique<model::Transformer<float>>(t.config, head_sizes, seed);
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<double> noise(0.0, 0.1);
  auto& params = t.model->params();
  for (auto list : {params.named(), params.named_buffers()}) {
    for (auto& p : list) {
      for (int64_t i = 0; i < p.size; ++i) p.data[i] += static_cast<float>(noise(rng));
    }
  }
  return t;
}

std::vector<int64_t> random_tokens(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int64_t>(rng() % kVocab);
  return ids;
}

// Transformer::forward's logits (T, V) of the whole sequence.
std::vector<float> full_logits(TestModel& t, const std::vector<int64_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<int32_t> hash_ids;
  if (t.hasher) {
    hash_ids.resize(t.hasher->num_layers() * ids.size() *
                    static_cast<size_t>(t.hasher->ids_per_token()));
    t.hasher->hash_all_layers(ids, 1, ids.size(), hash_ids);
  }
  const std::vector<int64_t> targets(ids.size(), -1);
  t.model->forward(ids.data(), targets.data(), 1, T, hash_ids);
  return t.model->logits();
}

// Pushes ids in pieces of the given sizes and compares each returned row with the reference.
void expect_matches(TestModel& t, const std::vector<int64_t>& ids, const std::vector<float>& ref,
                    const std::vector<int64_t>& pieces, const std::string& what) {
  Decoder dec(*t.model, t.hasher.get());
  const auto V = static_cast<size_t>(t.config.model.vocab_size);
  float scale = 0;
  for (float v : ref) scale = std::max(scale, std::abs(v));
  ASSERT_GT(scale, 0.1f);
  const float tol = 1e-4f * std::max(1.0f, scale);
  size_t at = 0;
  for (int64_t piece : pieces) {
    const std::span<const int64_t> tokens(ids.data() + at, static_cast<size_t>(piece));
    const std::span<const float> logits = dec.push(tokens);
    at += static_cast<size_t>(piece);
    ASSERT_EQ(dec.position(), static_cast<int64_t>(at));
    ASSERT_EQ(logits.size(), V);
    float worst = 0;
    for (size_t v = 0; v < V; ++v)
      worst = std::max(worst, std::abs(logits[v] - ref[(at - 1) * V + v]));
    EXPECT_LE(worst, tol) << what << ": position " << at - 1 << " (logit scale " << scale << ")";
  }
}

void check_config(const char* toml, uint64_t seed) {
  TestModel t = make_model(toml, seed);
  const std::vector<int64_t> ids = random_tokens(kSeq, seed + 7);
  const std::vector<float> ref = full_logits(t, ids);
  std::vector<int64_t> prefill = {5}, ones;
  prefill.resize(kSeq - 4, 1);
  ones.assign(kSeq, 1);
  expect_matches(t, ids, ref, prefill, "prefill 5, then 1 at a time");
  expect_matches(t, ids, ref, {kSeq}, "all at once");
  expect_matches(t, ids, ref, ones, "1 at a time");
  expect_matches(t, ids, ref, {3, 7, 2, 8}, "uneven pieces");
}

TEST(Decoder, MatchesForwardDense) {
  check_config(kDense, 1);
}

TEST(Decoder, MatchesForwardGroupedQueryAttention) {
  check_config(kDenseGqa, 2);
}

TEST(Decoder, MatchesForwardMoeEngramHc2) {
  check_config(kMoeEngram, 3);
}

TEST(Decoder, MatchesForwardEngramWithoutShortConv) {
  check_config(kEngramNoConv, 4);
}

TEST(Decoder, ResetStartsANewSequence) {
  TestModel t = make_model(kMoeEngram, 5);
  const std::vector<int64_t> a = random_tokens(12, 21), b = random_tokens(kSeq, 22);
  const std::vector<float> ref = full_logits(t, b);
  Decoder dec(*t.model, t.hasher.get());
  dec.push(a);
  dec.reset();
  EXPECT_EQ(dec.position(), 0);
  std::span<const float> logits;
  for (size_t i = 0; i < b.size(); ++i) logits = dec.push({b.data() + i, 1});
  const auto V = static_cast<size_t>(t.config.model.vocab_size);
  for (size_t v = 0; v < V; ++v) ASSERT_NEAR(logits[v], ref[(b.size() - 1) * V + v], 1e-4f);
}

using test::error_of;

TEST(Decoder, InputErrorsLeaveTheSequenceUnchanged) {
  TestModel t = make_model(kMoeEngram, 6);
  Decoder dec(*t.model, t.hasher.get());
  const std::vector<int64_t> ids = random_tokens(24, 9);
  dec.push({ids.data(), 20});
  const std::vector<int64_t> five = random_tokens(5, 10);
  EXPECT_NE(error_of<InputError>([&] { dec.push(five); }).find("max_seq_len = 24"),
            std::string::npos);
  EXPECT_EQ(dec.position(), 20);
  const std::vector<int64_t> bad = {1, kVocab};
  EXPECT_NE(error_of<InputError>([&] { dec.push(bad); }).find("tokens[1] = 300"),
            std::string::npos);
  const std::vector<int64_t> negative = {-1};
  EXPECT_NE(error_of<InputError>([&] { dec.push(negative); }).find("outside [0, 300)"),
            std::string::npos);
  EXPECT_NE(error_of<InputError>([&] { dec.push({}); }).find("no tokens"), std::string::npos);
  EXPECT_EQ(dec.position(), 20);
  // The sequence goes on as if the failed pushes never happened, up to max_seq_len exactly.
  const std::vector<float> ref = full_logits(t, ids);
  const std::span<const float> logits = dec.push({ids.data() + 20, 4});
  EXPECT_EQ(dec.position(), 24);
  const auto V = static_cast<size_t>(t.config.model.vocab_size);
  for (size_t v = 0; v < V; ++v) ASSERT_NEAR(logits[v], ref[23 * V + v], 1e-4f);
  const std::vector<int64_t> one = {1};
  EXPECT_THROW(dec.push(one), InputError);
}

TEST(Decoder, HasherMustMatchTheModel) {
  TestModel engram = make_model(kEngramNoConv, 7);
  TestModel dense = make_model(kDense, 8);
  EXPECT_NE(error_of<ConfigError>([&] { Decoder(*engram.model, nullptr); }).find("none given"),
            std::string::npos);
  EXPECT_NE(error_of<ConfigError>([&] {
              Decoder(*dense.model, engram.hasher.get());
            }).find("no [engram]"),
            std::string::npos);
  TestModel moe = make_model(kMoeEngram, 9);
  EXPECT_THROW(Decoder(*moe.model, engram.hasher.get()), ConfigError);  // 2 Engram layers vs 1
}

}  // namespace
}  // namespace engram::infer
