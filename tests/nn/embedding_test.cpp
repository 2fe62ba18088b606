#include "engram/nn/embedding.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engram/util/error.h"
#include "nn/grad_check.h"

namespace engram::nn {
namespace {

TEST(Embedding, ForwardCopiesTableRows) {
  const int64_t v = 5, c = 3;
  const auto table = test::random_vector(v * c, 1);
  const std::vector<int64_t> ids = {4, 0, 4, 2};
  std::vector<double> out(ids.size() * c);
  embedding_forward(out.data(), ids.data(), table.data(), 4, c, v);
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t j = 0; j < c; ++j) EXPECT_EQ(out[t * c + j], table[ids[t] * c + j]);
  }
  const std::vector<float> table_f(table.begin(), table.end());
  std::vector<float> out_f(out.size());
  embedding_forward(out_f.data(), ids.data(), table_f.data(), 4, c, v);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out_f[i], static_cast<float>(out[i]));
}

TEST(Embedding, SparseGradientSumsRepeatedIdsInTokenOrder) {
  const int64_t c = 2;
  const std::vector<int64_t> ids = {7, 3, 7, 0, 3, 7};
  const std::vector<double> dout = {1, 2, 10, 20, 100, 200, 1000, 2000, 0.5, 0.25, 1e-3, 2e-3};
  SparseRowGrad<double> grad;
  grad.rows = {99};  // overwritten, not appended to
  grad.values = {1, 1};
  embedding_backward(grad, dout.data(), ids.data(), static_cast<int64_t>(ids.size()), c);
  EXPECT_EQ(grad.width, c);
  ASSERT_EQ(grad.rows, (std::vector<int64_t>{0, 3, 7}));
  ASSERT_EQ(grad.values.size(), 6u);
  EXPECT_EQ(grad.values[0], 1000);
  EXPECT_EQ(grad.values[1], 2000);
  EXPECT_EQ(grad.values[2], 10 + 0.5);
  EXPECT_EQ(grad.values[3], 20 + 0.25);
  // Token order: ((0 + 1) + 100) + 1e-3, bit for bit.
  EXPECT_EQ(grad.values[4], (1.0 + 100.0) + 1e-3);
  EXPECT_EQ(grad.values[5], (2.0 + 200.0) + 2e-3);
}

TEST(Embedding, GradientMatchesFiniteDifferences) {
  for (const int64_t c : {1, 4}) {
    const int64_t v = 6;
    const std::vector<int64_t> ids = {5, 1, 1, 3, 5, 5, 0};
    const auto n = static_cast<int64_t>(ids.size());
    auto table = test::random_vector(v * c, 2 + c);
    const auto r = test::random_vector(n * c, 3 + c);
    auto loss = [&] {
      std::vector<double> out(r.size());
      embedding_forward(out.data(), ids.data(), table.data(), n, c, v);
      return test::dot(out, r);
    };
    SparseRowGrad<double> grad;
    embedding_backward(grad, r.data(), ids.data(), n, c);
    std::vector<double> dense(table.size(), 0.0);
    for (size_t k = 0; k < grad.rows.size(); ++k) {
      for (int64_t j = 0; j < c; ++j) dense[grad.rows[k] * c + j] = grad.values[k * c + j];
    }
    test::check_gradient("embedding table (c=" + std::to_string(c) + ")", table, dense, loss, 40);
  }
}

TEST(Embedding, BroadcastAndSumOverStreamsRoundTrip) {
  const int64_t n = 6, m = 4, c = 3;  // (B, T) = (2, 3)
  const auto x = test::random_vector(n * c, 5);
  std::vector<double> streams(n * m * c);
  broadcast_streams_forward(streams.data(), x.data(), n, m, c);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t k = 0; k < m; ++k) {
      for (int64_t j = 0; j < c; ++j) EXPECT_EQ(streams[(t * m + k) * c + j], x[t * c + j]);
    }
  }
  // Summing the broadcast copies back gives M x, added to what dx held.
  std::vector<double> dx(n * c, 1.0);
  broadcast_streams_backward(dx.data(), streams.data(), n, m, c);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], 1.0 + m * x[i], 1e-14);

  // And it is the gradient of the broadcast.
  auto xv = x;
  const auto r = test::random_vector(n * m * c, 6);
  auto loss = [&] {
    std::vector<double> s(r.size());
    broadcast_streams_forward(s.data(), xv.data(), n, m, c);
    return test::dot(s, r);
  };
  std::vector<double> grad(x.size(), 0.0);
  broadcast_streams_backward(grad.data(), r.data(), n, m, c);
  test::check_gradient("broadcast streams dx", xv, grad, loss, 40);
}

TEST(Embedding, OutOfRangeIdsThrow) {
  const int64_t v = 4, c = 2;
  const std::vector<double> table(v * c, 1.0);
  std::vector<double> out(3 * c);
  for (const int64_t bad : {int64_t{4}, int64_t{-1}, int64_t{1} << 40}) {
    const std::vector<int64_t> ids = {0, 3, bad};
    try {
      embedding_forward(out.data(), ids.data(), table.data(), 3, c, v);
      ADD_FAILURE() << "no error for id " << bad;
    } catch (const InputError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("ids[2]"), std::string::npos) << what;
      EXPECT_NE(what.find(std::to_string(bad)), std::string::npos) << what;
    }
  }
}

}  // namespace
}  // namespace engram::nn
