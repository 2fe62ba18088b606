// Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k and
// nucleus (top-p) truncation.
//
//   temperature == 0:  argmax (ties: the lowest id)
//   otherwise:         p = softmax(logits / temperature)                    (in double)
//                      keep the top_k most probable ids (top_k > 0; ties: lower id first)
//                      keep the shortest prefix, by descending p, holding >= top_p of
//                      the mass left (top_p < 1; the nucleus)
//                      renormalise and draw one id
// Logits of -inf are never drawn (at temperature 0 they are chosen only if every logit is -inf).
//
// The draws come from std::mt19937_64(seed) turned into uniform doubles [0, 1) from its top 53
// bits, so a seed gives the same tokens with every standard library.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace engram::infer {

struct SamplingOptions {
  double temperature = 1.0;  // >= 0; 0 = greedy
  int64_t top_k = 0;         // >= 0; 0 = off
  double top_p = 1.0;        // in (0, 1]; 1 = off
  uint64_t seed = 0;
  // Ids never drawn, as if their logits were -inf (engram generate: the tokenizer's special
  // tokens other than EOS). Ids outside the logits are ignored.
  std::vector<int64_t> banned;

  // Throws ConfigError naming the option: temperature negative or not finite, top_k < 0,
  // top_p outside (0, 1].
  void validate() const;
};

class Sampler {
 public:
  // Validates the options (see SamplingOptions::validate).
  explicit Sampler(SamplingOptions options);

  const SamplingOptions& options() const { return options_; }

  // One id in [0, logits.size()). Throws InputError when logits is empty or holds NaN.
  int64_t sample(std::span<const float> logits);

 private:
  double uniform();  // [0, 1), 53 random bits

  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<double, int64_t>> candidates_;  // (probability, id) scratch
  std::vector<float> masked_;                            // logits with banned ids at -inf
};

}  // namespace engram::infer
