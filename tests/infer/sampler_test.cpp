// Sampler: greedy and its limits (top_k = 1, tiny top_p), reproducibility in the seed, empirical
// frequencies against the softmax, the top-k and nucleus supports, and option validation.
#include "engram/infer/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engram/util/error.h"
#include "error_of.h"

namespace engram::infer {
namespace {

const std::vector<float> kLogits = {0.3f, 2.0f, -1.0f, 1.2f, 2.0f, 0.0f};  // argmax: id 1 (tie 4)

std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> out;
  for (double v : p) out.push_back(static_cast<float>(std::log(v)));
  return out;
}

std::vector<int64_t> draws(SamplingOptions o, const std::vector<float>& logits, int n) {
  Sampler s(o);
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.sample(logits));
  return out;
}

TEST(Sampler, GreedyIsArgmaxWithTiesToTheLowestId) {
  SamplingOptions o;
  o.temperature = 0;
  Sampler s(o);
  EXPECT_EQ(s.sample(kLogits), 1);
  const std::vector<float> ninf = {-std::numeric_limits<float>::infinity(), -5.0f, -3.0f};
  EXPECT_EQ(s.sample(ninf), 2);
}

TEST(Sampler, TopKOneAndTinyTopPAreArgmax) {
  for (double temperature : {0.1, 1.0, 5.0}) {
    SamplingOptions k1;
    k1.temperature = temperature;
    k1.top_k = 1;
    k1.seed = 3;
    for (int64_t id : draws(k1, kLogits, 200)) EXPECT_EQ(id, 1);
    SamplingOptions p;
    p.temperature = temperature;
    p.top_p = 1e-6;
    p.seed = 4;
    for (int64_t id : draws(p, kLogits, 200)) EXPECT_EQ(id, 1);
  }
}

TEST(Sampler, SameSeedSameSequenceOtherSeedOtherSequence) {
  SamplingOptions o;
  o.seed = 42;
  const auto a = draws(o, kLogits, 100), b = draws(o, kLogits, 100);
  EXPECT_EQ(a, b);
  o.seed = 43;
  EXPECT_NE(a, draws(o, kLogits, 100));
}

TEST(Sampler, FrequenciesMatchTheSoftmax) {
  const std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f};
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  SamplingOptions o;
  o.seed = 7;
  const int n = 20000;
  std::vector<int> count(logits.size(), 0);
  for (int64_t id : draws(o, logits, n)) ++count[static_cast<size_t>(id)];
  for (size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp(static_cast<double>(logits[i])) / z;
    EXPECT_NEAR(count[i] / static_cast<double>(n), p, 0.02) << "token " << i;
  }
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  const std::vector<float> logits = log_probs({0.6, 0.4});
  SamplingOptions cold, hot;
  cold.temperature = 0.25;  // p ∝ p^4: 0.835 / 0.165
  hot.temperature = 4.0;    // p ∝ p^0.25: 0.525 / 0.475
  const int n = 20000;
  auto share0 = [&](SamplingOptions o) {
    int c = 0;
    for (int64_t id : draws(o, logits, n)) c += id == 0;
    return c / static_cast<double>(n);
  };
  EXPECT_NEAR(share0(cold), 0.1296 / (0.1296 + 0.0256), 0.02);
  EXPECT_NEAR(share0(hot), std::pow(0.6, 0.25) / (std::pow(0.6, 0.25) + std::pow(0.4, 0.25)), 0.02);
}

TEST(Sampler, TopKNeverLeavesTheTopK) {
  SamplingOptions o;
  o.temperature = 3.0;
  o.top_k = 2;
  std::set<int64_t> seen;
  for (int64_t id : draws(o, kLogits, 2000)) seen.insert(id);
  EXPECT_EQ(seen, (std::set<int64_t>{1, 4}));  // the two 2.0 logits
}

TEST(Sampler, NucleusKeepsTheShortestPrefixReachingTopP) {
  SamplingOptions o;
  o.top_p = 0.7;
  std::set<int64_t> seen;
  for (int64_t id : draws(o, log_probs({0.5, 0.3, 0.15, 0.05}), 4000)) seen.insert(id);
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1}));
  // Renormalised within the nucleus: 0.5 / 0.8 and 0.3 / 0.8.
  int zeros = 0;
  const int n = 20000;
  for (int64_t id : draws(o, log_probs({0.5, 0.3, 0.15, 0.05}), n)) zeros += id == 0;
  EXPECT_NEAR(zeros / static_cast<double>(n), 0.625, 0.02);
}

TEST(Sampler, NucleusOverALargeVocabulary) {
  // Flat logits over 5000 ids: the nucleus of 0.5 is the 2500 lowest ids (ties go to the lower
  // id), found by the quickselect rather than the final sort.
  const std::vector<float> flat(5000, 0.0f);
  SamplingOptions o;
  o.top_p = 0.5;
  std::set<int64_t> seen;
  for (int64_t id : draws(o, flat, 1000)) seen.insert(id);
  EXPECT_LT(*seen.rbegin(), 2500);
  EXPECT_GT(*seen.rbegin(), 2400);
}

TEST(Sampler, NucleusMatchesTheSortedDefinition) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<float> logits(3000);
  for (float& l : logits) l = static_cast<float>(normal(rng));
  for (double top_p : {0.3, 0.9, 0.99}) {
    // Brute force: sort by probability, keep the shortest prefix with mass >= top_p.
    std::vector<std::pair<double, int64_t>> p;
    double z = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      p.emplace_back(std::exp(static_cast<double>(logits[i])), static_cast<int64_t>(i));
      z += p.back().first;
    }
    std::sort(p.begin(), p.end(), [](auto& a, auto& b) { return a.first > b.first; });
    std::set<int64_t> nucleus;
    double cum = 0;
    for (size_t i = 0; cum < top_p * z; ++i) {
      cum += p[i].first;
      nucleus.insert(p[i].second);
    }
    SamplingOptions o;
    o.top_p = top_p;
    std::set<int64_t> seen;
    for (int64_t id : draws(o, logits, 2000)) seen.insert(id);
    for (int64_t id : seen) EXPECT_TRUE(nucleus.count(id)) << "top_p " << top_p << " id " << id;
    EXPECT_TRUE(seen.count(p[0].second));
    if (nucleus.size() < 50) {
      EXPECT_EQ(seen, nucleus) << "top_p " << top_p;
    }
  }
}

TEST(Sampler, NegativeInfinityIsNeverDrawn) {
  const float ninf = -std::numeric_limits<float>::infinity();
  SamplingOptions o;
  o.temperature = 10.0;
  for (int64_t id : draws(o, {ninf, 0.0f, ninf, 0.5f}, 1000)) EXPECT_TRUE(id == 1 || id == 3);
}

TEST(Sampler, BannedIdsAreNeverDrawnEvenWhenMostLikely) {
  SamplingOptions o;
  o.banned = {0, 3, 99};  // 99 is outside the logits: ignored
  const std::vector<float> logits = {9.0f, 1.0f, 1.5f, 8.0f};
  for (double t : {0.0, 0.7, 5.0}) {
    o.temperature = t;
    for (int64_t id : draws(o, logits, 500)) EXPECT_TRUE(id == 1 || id == 2) << "T " << t << ": " << id;
  }
  o.temperature = 0;
  EXPECT_EQ(draws(o, logits, 1)[0], 2);  // the best id not banned
}

using test::error_of;

TEST(Sampler, BadOptionsAndLogitsAreErrors) {
  auto with = [](auto edit) {
    SamplingOptions o;
    edit(o);
    return error_of<ConfigError>([&] { Sampler s(o); });
  };
  EXPECT_NE(with([](SamplingOptions& o) { o.temperature = -0.5; }).find("temperature"),
            std::string::npos);
  EXPECT_NE(with([](SamplingOptions& o) { o.temperature = std::nan(""); }).find("temperature"),
            std::string::npos);
  EXPECT_NE(with([](SamplingOptions& o) { o.top_p = 1.5; }).find("top_p"), std::string::npos);
  EXPECT_NE(with([](SamplingOptions& o) { o.top_p = 0; }).find("top_p"), std::string::npos);
  EXPECT_NE(with([](SamplingOptions& o) { o.top_k = -1; }).find("top_k"), std::string::npos);
  Sampler s(SamplingOptions{});
  EXPECT_THROW(s.sample({}), InputError);
  const std::vector<float> nan = {0.0f, std::nanf("")};
  EXPECT_NE(error_of<InputError>([&] { s.sample(nan); }).find("logits[1]"), std::string::npos);
}

}  // namespace
}  // namespace engram::infer
