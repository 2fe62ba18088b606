// NgramHasher: parity with the reference's outputs (golden json), a plain-loop reference on
// random configs, streaming == batch, threads, the dead-id rule and errors.
#include "engram/hash/ngram_hasher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/util/error.h"
#include "engram/util/file.h"
#include "engram/util/npy.h"
#include "test_paths.h"

namespace engram::hash {
namespace {

using nlohmann::json;
__extension__ typedef __int128 Int128;

constexpr int64_t kGoldenCompressedVocab = 98627;

// ---- Golden data ---------------------------------------------------------------------------

const json& golden() {
  static const json doc = json::parse(read_file(test::golden_dir() + "/engram_hash_golden.json"));
  return doc;
}

const std::vector<int32_t>& golden_lut() {
  static const std::vector<int32_t> lut =
      read_npy_int32_vector(test::golden_dir() + "/dsv3_compress_lut.npy");
  return lut;
}

EngramHashConfig golden_config(const json& g) {
  EngramHashConfig c;
  c.engram_vocab_size = g["vocab_sizes"].get<std::vector<int64_t>>();
  c.max_ngram_size = g["max_ngram_size"].get<int>();
  c.n_embed_per_ngram = g["n_embed_per_ngram"].get<int>();
  c.n_head_per_ngram = g["n_head_per_ngram"].get<int>();
  c.layer_ids = g["layer_ids"].get<std::vector<int>>();
  c.pad_id = g["pad_id_in"].get<int64_t>();
  c.seed = g["seed"].get<uint64_t>();
  return c;
}

// Flattens a nested json array of integers.
template <typename T>
void flatten(const json& j, std::vector<T>& out) {
  if (j.is_array()) {
    for (const json& e : j) flatten(e, out);
  } else {
    out.push_back(j.get<T>());
  }
}

template <typename T>
std::vector<T> flat(const json& j) {
  std::vector<T> out;
  flatten(j, out);
  return out;
}

class GoldenParity : public testing::TestWithParam<const char*> {
 protected:
  const json& cfg() const { return golden()[GetParam()]; }
  NgramHasher make() const {
    return NgramHasher(golden_config(cfg()), golden_lut(), kGoldenCompressedVocab);
  }
};

TEST_P(GoldenParity, LutHasTheSpecVocabulary) {
  ASSERT_EQ(golden_lut().size(), 128815u);
  EXPECT_EQ(*std::max_element(golden_lut().begin(), golden_lut().end()) + 1,
            kGoldenCompressedVocab);
}

TEST_P(GoldenParity, MultipliersPrimesAndPad) {
  const NgramHasher h = make();
  EXPECT_EQ(h.pad_compressed(), cfg()["pad_id_compressed"].get<int64_t>());
  for (size_t l = 0; l < h.num_layers(); ++l) {
    const std::string key = std::to_string(h.layer_id(l));
    EXPECT_EQ(h.multipliers(l), cfg()["multipliers"][key].get<std::vector<int64_t>>()) << key;
    EXPECT_EQ(h.primes(l), cfg()["primes"][key].get<std::vector<std::vector<int64_t>>>()) << key;
  }
}

TEST_P(GoldenParity, PerTextHashes) {
  const NgramHasher h = make();
  const json& texts = golden()["token_ids"];
  const json& hashes = cfg()["hashes"];
  ASSERT_EQ(texts.size(), 13u);
  size_t checked = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int64_t> ids = texts[i].get<std::vector<int64_t>>();
    for (size_t l = 0; l < h.num_layers(); ++l) {
      const std::vector<int32_t> want = flat<int32_t>(hashes[i][std::to_string(h.layer_id(l))]);
      ASSERT_EQ(want.size(), ids.size() * static_cast<size_t>(h.ids_per_token()));
      std::vector<int32_t> got(want.size());
      h.hash(ids, 1, ids.size(), l, got);
      EXPECT_EQ(got, want) << "text " << i << ", layer " << h.layer_id(l);
      checked += want.size();
    }
  }
  EXPECT_GT(checked, 5000u);
}

TEST_P(GoldenParity, BatchHashesAllWays) {
  const NgramHasher h = make();
  const std::vector<int64_t> ids = flat<int64_t>(cfg()["batch_input"]);
  const size_t batch = 3, seq = 64, ipt = static_cast<size_t>(h.ids_per_token());
  ASSERT_EQ(ids.size(), batch * seq);
  std::vector<int32_t> all_want;
  for (size_t l = 0; l < h.num_layers(); ++l) {
    const std::vector<int32_t> want =
        flat<int32_t>(cfg()["batch_hashes"][std::to_string(h.layer_id(l))]);
    ASSERT_EQ(want.size(), batch * seq * ipt);
    for (int threads : {1, 2, 0}) {
      std::vector<int32_t> got(want.size());
      h.hash(ids, batch, seq, l, got, threads);
      EXPECT_EQ(got, want) << "layer " << h.layer_id(l) << ", threads " << threads;
    }
    all_want.insert(all_want.end(), want.begin(), want.end());
  }
  std::vector<int32_t> all(all_want.size());
  h.hash_all_layers(ids, batch, seq, all);
  EXPECT_EQ(all, all_want);
  // Streaming one token at a time gives the same ids, row by row.
  StreamingHasher stream(h);
  std::vector<int32_t> step(h.num_layers() * ipt);
  for (size_t b = 0; b < batch; ++b) {
    stream.reset();
    for (size_t t = 0; t < seq; ++t) {
      stream.push(std::span(ids).subspan(b * seq + t, 1), step);
      for (size_t l = 0; l < h.num_layers(); ++l) {
        const auto* want = all_want.data() + ((l * batch + b) * seq + t) * ipt;
        ASSERT_TRUE(std::equal(step.begin() + static_cast<ptrdiff_t>(l * ipt),
                               step.begin() + static_cast<ptrdiff_t>((l + 1) * ipt), want))
            << "row " << b << ", t " << t;
      }
    }
    EXPECT_EQ(stream.position(), seq);
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenParity, testing::Values("cfg_default", "cfg_small"));

TEST(NgramHasher, DefaultTableLayout) {
  const NgramHasher h(golden_config(golden()["cfg_default"]), golden_lut(), kGoldenCompressedVocab);
  EXPECT_EQ(h.layer_index(15), 1u);
  const std::vector<int64_t> offsets = h.head_offsets(0);
  ASSERT_EQ(offsets.size(), 16u);
  EXPECT_EQ(offsets[0], 0);
  EXPECT_EQ(offsets[1], 646403);
  EXPECT_EQ(offsets[8], 646403 + 646411 + 646421 + 646423 + 646433 + 646453 + 646519 + 646523);
  EXPECT_EQ(h.table_rows(0), offsets[15] + 646619);
  EXPECT_EQ(h.table_rows(0), 10344164);
  EXPECT_EQ(h.table_rows(1), 10348242);
}

TEST(NgramHasher, MultipliersForSeedsBeyond64Bits) {
  // seed + 10007 * layer overflows uint64: numpy takes the wider integer (three entropy words).
  // Expected values from numpy: 2 * default_rng(2**64 - 1 + 10007 * l).integers(0, half, 4) + 1.
  EngramHashConfig c;
  c.max_ngram_size = 4;
  c.engram_vocab_size = {1000, 1000, 1000};
  c.layer_ids = {0, 3};
  c.seed = UINT64_MAX;
  std::vector<int32_t> lut(700);
  for (size_t i = 0; i < lut.size(); ++i) lut[i] = static_cast<int32_t>(i);
  const NgramHasher h(c, lut, 700);
  EXPECT_EQ(h.multipliers(0), (std::vector<int64_t>{8960198650072145, 11138035480499517,
                                                    97544822584529, 11787049489229141}));
  EXPECT_EQ(h.multipliers(1), (std::vector<int64_t>{11864058672311901, 5359641695486231,
                                                    6970742934615513, 5115313986059117}));
}

TEST(NgramHasher, MultipliersForACompressedVocabularyOfOne) {
  // V' = 1: half = (2^63 - 1) // 2, the largest range.
  EngramHashConfig c;
  c.layer_ids = {0};
  c.seed = 5;
  c.pad_id = 0;
  const NgramHasher h(c, {0, 0, 0}, 1);
  EXPECT_EQ(h.multipliers(0),
            (std::vector<int64_t>{7424841456459477715, 7451938487489940729, 4753039369592592095}));
}

// ---- Plain-loop reference ------------------------------------------------------------------

// A random tokenizer compression table: `vocab` ids onto [0, compressed), every value used.
std::vector<int32_t> random_lut(size_t vocab, int32_t compressed, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> lut(vocab);
  for (size_t i = 0; i < vocab; ++i) {
    lut[i] = i < static_cast<size_t>(compressed)
                 ? static_cast<int32_t>(i)
                 : static_cast<int32_t>(rng() % static_cast<uint64_t>(compressed));
  }
  std::shuffle(lut.begin(), lut.end(), rng);
  return lut;
}

bool is_prime_slow(int64_t n) {
  if (n < 2) return false;
  for (int64_t d = 2; d * d <= n; ++d) {
    if (n % d == 0) return false;
  }
  return true;
}

// The reference's prime walk, by trial division: primes[layer][n-2][head].
std::vector<std::vector<std::vector<int64_t>>> reference_primes(const EngramHashConfig& c) {
  std::vector<int64_t> used;
  std::vector<std::vector<std::vector<int64_t>>> out;
  for (size_t l = 0; l < c.layer_ids.size(); ++l) {
    auto& layer = out.emplace_back();
    for (int64_t base : c.engram_vocab_size) {
      auto& order = layer.emplace_back();
      int64_t p = base - 1;
      for (int j = 0; j < c.n_head_per_ngram; ++j) {
        do {
          ++p;
        } while (!is_prime_slow(p) || std::find(used.begin(), used.end(), p) != used.end());
        used.push_back(p);
        order.push_back(p);
      }
    }
  }
  return out;
}

// ENGRAM_SPEC §2 (and the dead-id rule) written as directly as possible: out is
// (batch, seq_len, ids_per_token) for one layer.
// `primes` is reference_primes(config)[layer].
std::vector<int32_t> reference_hash(const NgramHasher& h, const std::vector<int32_t>& lut,
                                    const std::vector<std::vector<int64_t>>& primes,
                                    const std::vector<int64_t>& ids, size_t batch, size_t seq_len,
                                    size_t layer) {
  const EngramHashConfig& c = h.config();
  const int max_n = c.max_ngram_size;
  const std::vector<int64_t>& m = h.multipliers(layer);
  const int64_t pad = lut[static_cast<size_t>(c.pad_id)];
  auto dead = [&](int64_t id) { return c.dead_token_id && id == *c.dead_token_id; };
  std::vector<int32_t> out;
  for (size_t b = 0; b < batch; ++b) {
    const int64_t* x = ids.data() + b * seq_len;
    for (size_t t = 0; t < seq_len; ++t) {
      std::vector<int64_t> s(static_cast<size_t>(max_n));
      for (size_t k = 0; k < s.size(); ++k) {
        bool pad_here = t < k;
        for (size_t j = 1; j <= k && !pad_here; ++j) pad_here = dead(x[t - j]);
        if (pad_here) {
          s[k] = pad;
        } else {
          s[k] = dead(x[t - k]) ? x[t - k] : lut[static_cast<size_t>(x[t - k])];
        }
      }
      for (int n = 2; n <= max_n; ++n) {
        uint64_t mix = 0;
        for (int k = 0; k < n; ++k) {
          mix ^= static_cast<uint64_t>(s[static_cast<size_t>(k)]) *
                 static_cast<uint64_t>(m[static_cast<size_t>(k)]);
        }
        for (int64_t p : primes[static_cast<size_t>(n - 2)]) {
          Int128 z = static_cast<Int128>(static_cast<int64_t>(mix)) % p;
          out.push_back(static_cast<int32_t>(z < 0 ? z + p : z));
        }
      }
    }
  }
  return out;
}

struct RandomSetup {
  std::vector<int32_t> lut;
  int64_t compressed = 0;
  EngramHashConfig config;
};

// A random config: N in [2, 5], K in [1, 20], bases up to near 2^31, small or large V' (a
// small V' gives multipliers near 2^62, so the mixes cover the whole int64 range).
RandomSetup random_setup(std::mt19937_64& rng, bool dead_rule) {
  RandomSetup s;
  const size_t vocab = 500 + rng() % 2000;
  s.compressed = std::max<int64_t>(2, static_cast<int64_t>(rng() % 2 ? rng() % 20 : rng() % vocab));
  s.lut = random_lut(vocab, static_cast<int32_t>(s.compressed), rng());
  EngramHashConfig& c = s.config;
  c.max_ngram_size = 2 + static_cast<int>(rng() % 4);
  c.n_head_per_ngram = 1 + static_cast<int>(rng() % 20);
  c.n_embed_per_ngram = c.n_head_per_ngram * 4;
  c.engram_vocab_size.clear();
  for (int n = 2; n <= c.max_ngram_size; ++n) {
    switch (rng() % 4) {
      case 0:
        c.engram_vocab_size.push_back(2 + static_cast<int64_t>(rng() % 100));
        break;
      case 1:
        c.engram_vocab_size.push_back(1000 + static_cast<int64_t>(rng() % 1000000));
        break;
      case 2:
        c.engram_vocab_size.push_back(int64_t{1} << (20 + rng() % 8));
        break;
      default:
        c.engram_vocab_size.push_back(2147000000 + static_cast<int64_t>(rng() % 100000));
    }
  }
  c.layer_ids = {static_cast<int>(rng() % 5), 5 + static_cast<int>(rng() % 30)};
  c.pad_id = static_cast<int64_t>(rng() % vocab);
  c.seed = rng();
  if (dead_rule) c.dead_token_id = -1;
  return s;
}

// Random tokenizer ids; with the dead-id rule about 1 in 8 is dead, sometimes in runs.
std::vector<int64_t> random_ids(std::mt19937_64& rng, size_t n, size_t vocab, bool dead_rule) {
  std::vector<int64_t> ids(n);
  for (size_t i = 0; i < n; ++i) {
    const bool dead = dead_rule && (rng() % 8 == 0 || (i > 0 && ids[i - 1] == -1 && rng() % 2));
    ids[i] = dead ? -1 : static_cast<int64_t>(rng() % vocab);
  }
  return ids;
}

TEST(NgramHasher, MatchesPlainLoopReferenceOnRandomConfigs) {
  std::mt19937_64 rng(2024);
  for (int trial = 0; trial < 40; ++trial) {
    const bool dead_rule = trial % 2 == 1;
    const RandomSetup s = random_setup(rng, dead_rule);
    SCOPED_TRACE("trial " + std::to_string(trial) + ": " + s.config.to_json());
    const NgramHasher h(s.config, s.lut, s.compressed);
    const size_t batch = 1 + rng() % 3, seq = 1 + rng() % 70;
    const std::vector<int64_t> ids = random_ids(rng, batch * seq, s.lut.size(), dead_rule);
    const size_t ipt = static_cast<size_t>(h.ids_per_token());
    const auto primes = reference_primes(s.config);
    for (size_t l = 0; l < h.num_layers(); ++l) {
      EXPECT_EQ(h.primes(l), primes[l]);
      std::vector<int32_t> got(batch * seq * ipt);
      h.hash(ids, batch, seq, l, got);
      ASSERT_EQ(got, reference_hash(h, s.lut, primes[l], ids, batch, seq, l)) << "layer " << l;
    }
  }
}

TEST(NgramHasher, DeadIdRuleByHand) {
  // N = 3: the look-back that reaches or crosses a dead position reads pad'.
  EngramHashConfig c;
  c.engram_vocab_size = {1000, 1000};
  c.n_head_per_ngram = 1;
  c.n_embed_per_ngram = 1;
  c.layer_ids = {0};
  c.pad_id = 0;
  c.dead_token_id = -1;
  std::vector<int32_t> lut(10);
  for (int i = 0; i < 10; ++i) lut[static_cast<size_t>(i)] = i;
  const NgramHasher h(c, lut, 10);
  const std::vector<int64_t> ids = {5, -1, 7, 8, 9};
  std::vector<int32_t> got(ids.size() * 2);
  h.hash(ids, 1, ids.size(), 0, got);
  // Equivalent windows (s_0, s_1, s_2) with pad' = 0: (5,0,0) (-1,5,0) (7,0,0) (8,7,0) (9,8,7).
  const std::vector<std::vector<int64_t>> windows = {
      {5, 0, 0}, {-1, 5, 0}, {7, 0, 0}, {8, 7, 0}, {9, 8, 7}};
  const std::vector<int64_t>& m = h.multipliers(0);
  const int64_t p2 = h.primes(0)[0][0], p3 = h.primes(0)[1][0];
  for (size_t t = 0; t < windows.size(); ++t) {
    const auto& w = windows[t];
    const uint64_t mix2 = static_cast<uint64_t>(w[0]) * static_cast<uint64_t>(m[0]) ^
                          static_cast<uint64_t>(w[1]) * static_cast<uint64_t>(m[1]);
    const uint64_t mix3 = mix2 ^ static_cast<uint64_t>(w[2]) * static_cast<uint64_t>(m[2]);
    const Int128 z2 = static_cast<Int128>(static_cast<int64_t>(mix2)) % p2;
    const Int128 z3 = static_cast<Int128>(static_cast<int64_t>(mix3)) % p3;
    EXPECT_EQ(got[2 * t], static_cast<int32_t>(z2 < 0 ? z2 + p2 : z2)) << t;
    EXPECT_EQ(got[2 * t + 1], static_cast<int32_t>(z3 < 0 ? z3 + p3 : z3)) << t;
  }
}

// ---- Streaming, threads, layers ------------------------------------------------------------

TEST(NgramHasher, StreamingEqualsBatchOverRandomChunkings) {
  std::mt19937_64 rng(99);
  for (int max_n = 2; max_n <= 5; ++max_n) {
    for (int heads : {1, 3, 8, 11, 16}) {
      for (bool dead_rule : {false, true}) {
        SCOPED_TRACE("N " + std::to_string(max_n) + ", K " + std::to_string(heads) +
                     (dead_rule ? ", dead rule" : ""));
        EngramHashConfig c;
        c.max_ngram_size = max_n;
        c.n_head_per_ngram = heads;
        c.n_embed_per_ngram = heads * 2;
        c.engram_vocab_size.assign(static_cast<size_t>(max_n - 1), 0);
        for (auto& v : c.engram_vocab_size) v = 10000 + static_cast<int64_t>(rng() % 100000);
        c.layer_ids = {2, 9, 4};
        c.seed = rng();
        if (dead_rule) c.dead_token_id = -1;
        const std::vector<int32_t> lut = random_lut(3000, 2500, rng());
        const NgramHasher h(c, lut, 2500);
        const size_t seq = 700, layers = h.num_layers(),
                     ipt = static_cast<size_t>(h.ids_per_token());
        const std::vector<int64_t> ids = random_ids(rng, seq, lut.size(), dead_rule);
        std::vector<int32_t> want(layers * seq * ipt);
        h.hash_all_layers(ids, 1, seq, want);

        for (int round = 0; round < 3; ++round) {
          // Prefill in random chunks (sometimes empty), then 1-token decode steps.
          StreamingHasher stream(h);
          std::vector<int32_t> got(want.size());
          const size_t prefill = rng() % seq;
          size_t pos = 0;
          while (pos < seq) {
            const size_t n = pos < prefill ? std::min<size_t>(rng() % 90, seq - pos) : 1;
            std::vector<int32_t> out(layers * n * ipt);
            stream.push(std::span(ids).subspan(pos, n), out);
            for (size_t l = 0; l < layers; ++l) {
              std::copy_n(out.begin() + static_cast<ptrdiff_t>(l * n * ipt), n * ipt,
                          got.begin() + static_cast<ptrdiff_t>((l * seq + pos) * ipt));
            }
            pos += n;
            ASSERT_EQ(stream.position(), pos);
          }
          ASSERT_EQ(got, want) << "prefill " << prefill;
        }
      }
    }
  }
}

TEST(NgramHasher, HashCompressedWithSeparateHistory) {
  std::mt19937_64 rng(5);
  EngramHashConfig c;
  c.max_ngram_size = 4;
  c.engram_vocab_size = {50000, 60000, 70000};
  c.dead_token_id = -1;
  const std::vector<int32_t> lut = random_lut(1000, 800, 1);
  const NgramHasher h(c, lut, 800);
  const size_t ipt = static_cast<size_t>(h.ids_per_token());
  std::vector<int64_t> window(3 + 40);
  for (auto& v : window)
    v = rng() % 9 == 0 ? NgramHasher::kDeadMarker : static_cast<int64_t>(rng() % 800);
  for (size_t count : {0u, 1u, 2u, 3u, 4u, 40u}) {
    std::vector<int32_t> contiguous(count * ipt), separate(count * ipt);
    h.hash_compressed(window.data(), window.data() + 3, count, 1, contiguous.data());
    const std::vector<int64_t> history(window.begin(), window.begin() + 3);
    const std::vector<int64_t> x(window.begin() + 3,
                                 window.begin() + 3 + static_cast<ptrdiff_t>(count));
    h.hash_compressed(history.data(), x.data(), count, 1, separate.data());
    EXPECT_EQ(separate, contiguous) << count;
  }
}

TEST(NgramHasher, ThreadsGiveTheSameIds) {
  const NgramHasher h(golden_config(golden()["cfg_default"]), golden_lut(), kGoldenCompressedVocab);
  std::mt19937_64 rng(11);
  const size_t ipt = static_cast<size_t>(h.ids_per_token());
  // Long rows (pieces start mid-row) and many short rows (pieces span rows).
  for (auto [batch, seq] : {std::pair<size_t, size_t>{3, 50001}, {4000, 17}}) {
    const std::vector<int64_t> ids = random_ids(rng, batch * seq, golden_lut().size(), false);
    std::vector<int32_t> one(h.num_layers() * batch * seq * ipt);
    h.hash_all_layers(ids, batch, seq, one, 1);
    for (int threads : {2, 3, 7, 0}) {
      std::vector<int32_t> many(one.size());
      h.hash_all_layers(ids, batch, seq, many, threads);
      EXPECT_EQ(many, one) << batch << "x" << seq << ", threads " << threads;
    }
    // hash_all_layers == hash per layer.
    for (size_t l = 0; l < h.num_layers(); ++l) {
      std::vector<int32_t> layer(batch * seq * ipt);
      h.hash(ids, batch, seq, l, layer, 2);
      EXPECT_TRUE(std::equal(layer.begin(), layer.end(),
                             one.begin() + static_cast<ptrdiff_t>(l * layer.size())));
    }
  }
}

// ---- Compression and errors ----------------------------------------------------------------

template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

EngramHashConfig tiny_config() {
  EngramHashConfig c;
  c.engram_vocab_size = {100, 200};
  c.layer_ids = {0, 3};
  return c;
}

TEST(NgramHasher, CompressMapsThroughTheTable) {
  const std::vector<int32_t> lut = {3, 1, 2, 0, 1};
  EngramHashConfig c = tiny_config();
  c.dead_token_id = -1;
  const NgramHasher h(c, lut, 4);
  const std::vector<int64_t> ids = {0, 4, -1, 3};
  std::vector<int64_t> out(4);
  h.compress(ids, out);
  EXPECT_EQ(out, (std::vector<int64_t>{3, 1, -1, 0}));
  EXPECT_EQ(h.pad_compressed(), 2);
  EXPECT_EQ(h.tokenizer_vocab(), 5);
  EXPECT_EQ(h.compressed_vocab(), 4);
  const std::vector<int64_t> bad = {0, -2, 1, 1};
  EXPECT_EQ(error_of<InputError>([&] { h.compress(bad, out); }),
            "compress: ids[1] = -2 is outside the tokenizer vocabulary [0, 5)");
}

TEST(NgramHasher, BadIdsAreInputErrors) {
  const std::vector<int32_t> lut = random_lut(1000, 700, 3);
  const NgramHasher h(tiny_config(), lut, 700);
  std::vector<int64_t> ids(2 * 10, 5);
  std::vector<int32_t> out(2 * 10 * 16);
  ids[13] = 1000;
  EXPECT_EQ(error_of<InputError>([&] { h.hash(ids, 2, 10, 0, out); }),
            "hash: ids[1][3] = 1000 is outside the tokenizer vocabulary [0, 1000)");
  ids[13] = -1;  // negative ids are bad without the dead-id rule
  EXPECT_EQ(error_of<InputError>([&] { h.hash(ids, 2, 10, 0, out); }),
            "hash: ids[1][3] = -1 is outside the tokenizer vocabulary [0, 1000)");
  std::vector<int32_t> all(2 * out.size());
  EXPECT_EQ(error_of<InputError>([&] { h.hash_all_layers(ids, 2, 10, all); }),
            "hash_all_layers: ids[1][3] = -1 is outside the tokenizer vocabulary [0, 1000)");
  StreamingHasher stream(h);
  std::vector<int32_t> step(2 * 3 * 16);
  const std::vector<int64_t> chunk = {1, 2, 3};
  stream.push(chunk, step);
  const std::vector<int64_t> bad_chunk = {1, 2000, 3};
  EXPECT_EQ(error_of<InputError>([&] { stream.push(bad_chunk, step); }),
            "push: ids[1] (position 4) = 2000 is outside the tokenizer vocabulary [0, 1000)");
  EXPECT_EQ(stream.position(), 3u);  // a failed push changes nothing
}

TEST(NgramHasher, FirstBadIdIsReportedWithThreads) {
  const std::vector<int32_t> lut = random_lut(1000, 700, 3);
  const NgramHasher h(tiny_config(), lut, 700);
  const size_t batch = 3, seq = 50000;
  std::vector<int64_t> ids(batch * seq, 7);
  ids[2 * seq + 10] = 5000;
  ids[1 * seq + 49999] = -3;
  ids[0 * seq + 45000] = 1001;
  std::vector<int32_t> out(batch * seq * 16);
  for (int threads : {1, 4}) {
    EXPECT_EQ(error_of<InputError>([&] { h.hash(ids, batch, seq, 1, out, threads); }),
              "hash: ids[0][45000] = 1001 is outside the tokenizer vocabulary [0, 1000)");
  }
}

TEST(NgramHasher, BadShapesAndLayersAreInputErrors) {
  const std::vector<int32_t> lut = random_lut(1000, 700, 3);
  const NgramHasher h(tiny_config(), lut, 700);
  std::vector<int64_t> ids(20, 5);
  std::vector<int32_t> out(20 * 16);
  EXPECT_EQ(error_of<InputError>([&] { h.hash(ids, 3, 7, 0, out); }),
            "hash: ids has 20 elements, batch x seq_len = 21");
  EXPECT_EQ(error_of<InputError>([&] { h.hash(ids, 2, 10, 0, std::span(out).first(10)); }),
            "hash: out has 10 elements, expected 320");
  EXPECT_EQ(error_of<InputError>([&] { h.hash(ids, 2, 10, 2, out); }),
            "NgramHasher: layer index 2 is out of range (2 layers)");
  EXPECT_EQ(error_of<InputError>([&] { h.layer_index(1); }),
            "NgramHasher: layer 1 has no Engram (Engram layers: 0, 3)");
  StreamingHasher stream(h);
  EXPECT_EQ(error_of<InputError>([&] { stream.push(std::span(ids).first(2), out); }),
            "push: out has 320 elements, expected 64");
}

TEST(NgramHasher, ConstructorRejectsBadSetups) {
  const std::vector<int32_t> lut = random_lut(1000, 700, 3);
  EngramHashConfig c = tiny_config();
  c.pad_id = 1000;
  EXPECT_EQ(error_of<ConfigError>([&] { NgramHasher(c, lut, 700); }),
            "config: pad_id: 1000 is outside the tokenizer vocabulary [0, 1000)");
  c = tiny_config();
  c.dead_token_id = 999;
  EXPECT_EQ(error_of<ConfigError>([&] { NgramHasher(c, lut, 700); }),
            "config: dead_token_id: 999 is a tokenizer id; the dead id must lie outside [0, 1000), "
            "e.g. -1");
  EXPECT_EQ(error_of<ConfigError>([&] {
              NgramHasher(tiny_config(), lut, 600);
            }).rfind("compress_lut[", 0),
            0u);
  EXPECT_EQ(error_of<ConfigError>([&] { NgramHasher(tiny_config(), {}, 700); }),
            "compress_lut: is empty");
  c = tiny_config();
  c.max_ngram_size = 1;
  EXPECT_EQ(error_of<ConfigError>([&] { NgramHasher(c, lut, 700); }),
            "config: max_ngram_size: 1 is less than 2");
}

TEST(NgramHasher, SyntheticCompressionIsIdModThreeQuarters) {
  const NgramHasher h = NgramHasher::synthetic(tiny_config(), 300);
  EXPECT_EQ(h.tokenizer_vocab(), 300);
  EXPECT_EQ(h.compressed_vocab(), 225);
  EXPECT_EQ(h.compress_lut()[0], 0);
  EXPECT_EQ(h.compress_lut()[224], 224);
  EXPECT_EQ(h.compress_lut()[225], 0);
  EXPECT_EQ(h.compress_lut()[299], 74);
  EXPECT_EQ(NgramHasher::synthetic(tiny_config(), 3).compressed_vocab(), 2);
}

}  // namespace
}  // namespace engram::hash
