// The Engram layer: finite-difference gradients for every input and parameter over shapes,
// hc_mult, n-gram orders, with and without biases and short conv; the sparse table gradient;
// and parity with the reference module's golden outputs (float64 and float32).
#include "engram/nn/engram_layer.h"

#include <gtest/gtest.h>

#include <set>

#include "engram/model/safetensors.h"
#include "engram/util/error.h"
#include "nn/grad_check.h"
#include "test_paths.h"

namespace engram::nn {
namespace {

using memory::VectorRowStore;  // the checks perturb the table in place

struct Case {
  int64_t hc_mult, max_ngram_size;
  bool bias, short_conv;
};

class EngramLayerGrad : public ::testing::TestWithParam<Case> {};

TEST_P(EngramLayerGrad, EveryGradientMatchesFiniteDifferences) {
  const Case& p = GetParam();
  EngramLayerConfig c;
  c.hidden_size = 8;
  c.hc_mult = p.hc_mult;
  c.max_ngram_size = p.max_ngram_size;
  c.n_head_per_ngram = 2;
  c.n_embed_per_ngram = 4;
  c.kernel_size = 3;
  c.bias = p.bias;
  c.short_conv = p.short_conv;
  const int64_t B = 2, T = 7, H = c.heads(), D = c.row_width(), M = c.hc_mult, d = c.hidden_size;
  std::vector<int64_t> sizes;
  const int64_t primes[] = {5, 7, 11, 13, 17, 19};
  for (int64_t h = 0; h < H; ++h) sizes.push_back(primes[h]);
  EngramLayer<double> layer(c, sizes);
  layer.params().init(c, 42, /*zero_conv=*/false);
  // Make norm weights and biases non-trivial so their gradients are exercised.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd(1.0, 0.3);
  for (auto* v :
       {&layer.params().key_norm, &layer.params().query_norm, &layer.params().conv_norm}) {
    for (double& x : *v) x = nd(rng);
  }
  std::vector<double> table = test::random_vector(static_cast<size_t>(layer.table_rows() * D), 3);
  const VectorRowStore store(&table, D);
  std::vector<int32_t> ids(static_cast<size_t>(B * T * H));
  for (int64_t i = 0; i < B * T * H; ++i)
    ids[static_cast<size_t>(i)] =
        static_cast<int32_t>(rng() % static_cast<uint64_t>(sizes[static_cast<size_t>(i % H)]));
  ids[0] = ids[static_cast<size_t>(H)];  // two tokens read the same row: its gradient must sum
  std::vector<double> hidden = test::random_vector(static_cast<size_t>(B * T * M * d), 4);
  const std::vector<double> r = test::random_vector(hidden.size(), 5);

  auto loss = [&] {
    EngramSaved<double> s;
    std::vector<double> out(hidden.size());
    layer.forward(hidden.data(), ids.data(), B, T, store, out.data(), s);
    return test::dot(out, r);
  };
  EngramSaved<double> saved;
  std::vector<double> out(hidden.size());
  layer.forward(hidden.data(), ids.data(), B, T, store, out.data(), saved);
  std::vector<double> d_hidden(hidden.size(), 0.0);
  EngramParams<double> grads;
  grads.zeros(c);
  SparseRowGrad<double> tg;
  layer.backward(r.data(), hidden.data(), saved, d_hidden.data(), grads, tg);

  test::check_gradient("hidden", hidden, d_hidden, loss, 60);
  auto& P = layer.params();
  test::check_gradient("kv_weight", P.kv_weight, grads.kv_weight, loss, 60);
  if (c.bias) test::check_gradient("kv_bias", P.kv_bias, grads.kv_bias, loss, 40);
  test::check_gradient("key_norm", P.key_norm, grads.key_norm, loss, 40);
  test::check_gradient("query_norm", P.query_norm, grads.query_norm, loss, 40);
  if (c.short_conv) {
    test::check_gradient("conv_weight", P.conv_weight, grads.conv_weight, loss, 40);
    test::check_gradient("conv_norm", P.conv_norm, grads.conv_norm, loss, 40);
  }
  // The table gradient: sorted unique rows, exactly the rows read; dense view for the check.
  std::set<int64_t> read;
  for (int64_t i = 0; i < B * T * H; ++i)
    read.insert(ids[static_cast<size_t>(i)] + layer.head_offsets()[static_cast<size_t>(i % H)]);
  ASSERT_EQ(tg.rows.size(), read.size());
  EXPECT_TRUE(std::equal(tg.rows.begin(), tg.rows.end(), read.begin()));
  EXPECT_EQ(tg.values.size(), tg.rows.size() * static_cast<size_t>(D));
  std::vector<double> dense(table.size(), 0.0);
  for (size_t k = 0; k < tg.rows.size(); ++k) {
    for (int64_t j = 0; j < D; ++j)
      dense[static_cast<size_t>(tg.rows[k] * D + j)] =
          tg.values[k * static_cast<size_t>(D) + static_cast<size_t>(j)];
  }
  test::check_gradient("table", table, dense, loss, 80);
}

INSTANTIATE_TEST_SUITE_P(Configs, EngramLayerGrad,
                         ::testing::Values(Case{1, 2, true, true}, Case{2, 3, true, true},
                                           Case{4, 3, true, true}, Case{4, 4, true, true},
                                           Case{1, 4, false, true}, Case{2, 2, true, false},
                                           Case{4, 3, false, false}, Case{2, 4, true, true}));

TEST(EngramLayer, ZeroConvStartsAsAGatedLookup) {
  EngramLayerConfig c;
  c.hidden_size = 4;
  c.hc_mult = 2;
  c.max_ngram_size = 2;
  c.n_head_per_ngram = 1;
  c.n_embed_per_ngram = 2;
  EngramLayer<double> layer(c, {3});
  layer.params().init(c, 1);  // conv weight zero: ShortConv(x) = SiLU(0) = 0
  std::vector<double> table = test::random_vector(6, 2);
  const VectorRowStore store(&table, 2);
  std::vector<int32_t> ids = {0, 2, 1};
  std::vector<double> hidden = test::random_vector(3 * 2 * 4, 3), out(hidden.size());
  EngramSaved<double> saved;
  layer.forward(hidden.data(), ids.data(), 1, 3, store, out.data(), saved);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], saved.vt[i]);
}

TEST(EngramLayer, RejectsBadIdsAndTables) {
  EngramLayerConfig c;
  c.hidden_size = 4;
  c.max_ngram_size = 2;
  c.n_head_per_ngram = 1;
  c.n_embed_per_ngram = 2;
  EngramLayer<double> layer(c, {3});
  std::vector<double> table(6, 0.0), small(4, 0.0);
  std::vector<int32_t> ids = {0, 3};
  std::vector<double> hidden(8, 1.0), out(8);
  EngramSaved<double> saved;
  const VectorRowStore store(&table, 2), bad_store(&small, 2);
  try {
    layer.forward(hidden.data(), ids.data(), 1, 2, store, out.data(), saved);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("hash_ids[0][1][0] = 3 is outside [0, 3)"),
              std::string::npos)
        << e.what();
  }
  ids[1] = 1;
  EXPECT_THROW(layer.forward(hidden.data(), ids.data(), 1, 2, bad_store, out.data(), saved),
               InputError);
  EXPECT_THROW(EngramLayer<double>(c, {3, 5}), ConfigError);
  c.n_embed_per_ngram = 3;
  c.n_head_per_ngram = 2;
  EXPECT_THROW(EngramLayer<double>(c, {3, 5}), ConfigError);
}

// ---- golden parity (the reference module in float64: layer 3 of cfg_small, hidden 64, M = 4) --

template <class T>
void expect_golden(double tol) {
  const auto g = SafetensorsFile::open(test::golden_dir() + "/engram_module_golden.safetensors");
  EngramLayerConfig c;
  c.hidden_size = 64;
  c.hc_mult = 4;
  c.max_ngram_size = 3;
  c.n_embed_per_ngram = 32;
  c.n_head_per_ngram = 4;
  c.kernel_size = 4;
  // cfg_small's primes of layer 3.
  EngramLayer<T> layer(c, {5023, 5039, 5051, 5059, 4019, 4021, 4027, 4049});
  const DType dt = std::is_same_v<T, double> ? DType::kF64 : DType::kF32;
  auto vec = [&](const std::string& name) {
    const Tensor t = g.get(name).to(dt);
    return std::vector<T>(t.data<T>(), t.data<T>() + t.numel());
  };
  for (auto& p : layer.params().named(c)) {
    const auto v = vec("param." + p.name);
    ASSERT_EQ(static_cast<int64_t>(v.size()), p.size) << p.name;
    std::copy(v.begin(), v.end(), p.data);
  }
  const memory::TensorRowStore store(g.get("param.multi_head_embedding.embedding.weight").to(dt));
  const Tensor ids_t = g.get("hash_ids").to(DType::kI64);
  std::vector<int32_t> ids(static_cast<size_t>(ids_t.numel()));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(ids_t.data<int64_t>()[i]);
  const auto hidden = vec("hidden_states"), grad_out = vec("grad_output");
  std::vector<T> out(hidden.size()), d_hidden(hidden.size(), T(0));
  EngramSaved<T> saved;
  layer.forward(hidden.data(), ids.data(), 2, 12, store, out.data(), saved);
  EngramParams<T> grads;
  grads.zeros(c);
  SparseRowGrad<T> tg;
  layer.backward(grad_out.data(), hidden.data(), saved, d_hidden.data(), grads, tg);

  auto compare = [&](const std::string& name, const T* got, size_t n) {
    const Tensor want_t = g.get(name).to(DType::kF64);
    ASSERT_EQ(static_cast<size_t>(want_t.numel()), n) << name;
    const double* want = want_t.data<double>();
    double max_abs = 0, max_err = 0;
    for (size_t i = 0; i < n; ++i) max_abs = std::max(max_abs, std::abs(want[i]));
    for (size_t i = 0; i < n; ++i)
      max_err = std::max(max_err, std::abs(static_cast<double>(got[i]) - want[i]));
    // Error relative to the tensor's largest magnitude.
    EXPECT_LE(max_err, tol * std::max(max_abs, 1e-300))
        << name << ": max error " << max_err << ", max |value| " << max_abs;
  };
  compare("output", out.data(), out.size());
  compare("grad_hidden_states", d_hidden.data(), d_hidden.size());
  for (auto& p : grads.named(c)) compare("grad." + p.name, p.data, static_cast<size_t>(p.size));
  std::vector<T> dense(static_cast<size_t>(layer.table_rows() * 8), T(0));
  for (size_t k = 0; k < tg.rows.size(); ++k) {
    std::copy_n(tg.values.data() + k * 8, 8, dense.data() + tg.rows[k] * 8);
  }
  compare("grad.multi_head_embedding.embedding.weight", dense.data(), dense.size());
}

TEST(EngramLayerGolden, Float64Within1e9) {
  expect_golden<double>(1e-9);
}
TEST(EngramLayerGolden, Float32Within2e5) {
  expect_golden<float>(2e-5);
}

}  // namespace
}  // namespace engram::nn
