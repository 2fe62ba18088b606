#include "engram/tensor/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "engram/util/error.h"

namespace engram {
namespace {

using Shape = std::vector<int64_t>;

// Expects `fn` to throw an Error (or subclass E) whose message contains `needle`.
template <class E = Error, class Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning \"" << needle << "\"";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Tensor, NewTensorIsZeroFilledAlignedAndContiguous) {
  Tensor t(DType::kF32, {2, 3, 5});
  EXPECT_EQ(t.dtype(), DType::kF32);
  EXPECT_EQ(t.shape(), (Shape{2, 3, 5}));
  EXPECT_EQ(t.strides(), (Shape{15, 5, 1}));
  EXPECT_EQ(t.rank(), 3u);
  EXPECT_EQ(t.dim(1), 3);
  EXPECT_EQ(t.numel(), 30);
  EXPECT_EQ(t.nbytes(), 120u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_FALSE(t.empty());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  const float* p = t.data<float>();
  for (int i = 0; i < 30; ++i) EXPECT_EQ(p[i], 0.0f);
  EXPECT_EQ(t.describe(), "F32[2, 3, 5]");
  EXPECT_THROW((void)t.dim(3), std::out_of_range);

  Tensor big(DType::kBF16, {1000, 3});  // odd byte count, still aligned and zero
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.raw()) % 64, 0u);
  for (int64_t i = 0; i < big.numel(); ++i) EXPECT_EQ(big.data<bf16>()[i].bits, 0);
}

TEST(Tensor, ScalarsZeroSizedAndDefault) {
  Tensor s(DType::kF64, {});
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.rank(), 0u);
  EXPECT_TRUE(s.is_contiguous());
  EXPECT_EQ(s.describe(), "F64[]");
  s.data<double>()[0] = 2.5;
  EXPECT_EQ(s.contiguous().data<double>()[0], 2.5);

  Tensor z(DType::kI32, {4, 0, 3});
  EXPECT_EQ(z.numel(), 0);
  EXPECT_EQ(z.nbytes(), 0u);
  EXPECT_TRUE(z.is_contiguous());
  EXPECT_FALSE(z.empty());
  EXPECT_EQ(z.contiguous().shape(), (Shape{4, 0, 3}));
  EXPECT_EQ(z.to(DType::kI64).describe(), "I64[4, 0, 3]");

  Tensor d;
  EXPECT_TRUE(d.empty());
  EXPECT_TRUE(d.contiguous().empty());
}

TEST(Tensor, BadShapesThrow) {
  expect_error([] { Tensor(DType::kF32, {2, -1}); }, "negative dimension in shape [2, -1]");
  expect_error([] { Tensor(DType::kF64, {int64_t{1} << 40, int64_t{1} << 40}); }, "too large");
  float x = 0;
  expect_error(
      [&] {
        (void)Tensor::view(DType::kF32, {2, 2}, &x, nullptr, {1});
      },
      "1 strides for shape [2, 2]");
  expect_error([] { (void)Tensor::view(DType::kF32, {2}, nullptr, nullptr); }, "null data");
}

TEST(Tensor, TypedAccessChecksTheDType) {
  EXPECT_NO_THROW((void)Tensor(DType::kF64, {1}).data<double>());
  EXPECT_NO_THROW((void)Tensor(DType::kF32, {1}).data<float>());
  EXPECT_NO_THROW((void)Tensor(DType::kBF16, {1}).data<bf16>());
  EXPECT_NO_THROW((void)Tensor(DType::kI64, {1}).data<int64_t>());
  EXPECT_NO_THROW((void)Tensor(DType::kI32, {1}).data<int32_t>());
  EXPECT_NO_THROW((void)Tensor(DType::kI16, {1}).data<int16_t>());
  EXPECT_NO_THROW((void)Tensor(DType::kI8, {1}).data<int8_t>());
  EXPECT_NO_THROW((void)Tensor(DType::kU8, {1}).data<uint8_t>());
  const Tensor t(DType::kBF16, {2, 3});
  expect_error([&] { (void)t.data<float>(); }, "Tensor::data<F32>: tensor is BF16[2, 3]");
  Tensor u(DType::kI32, {4});
  expect_error([&] { (void)u.data<int64_t>(); }, "Tensor::data<I64>: tensor is I32[4]");
  expect_error([&] { (void)Tensor(DType::kBool, {1}).data<uint8_t>(); }, "is BOOL[1]");
}

TEST(Tensor, ViewsShareTheBufferAndKeepItsOwnerAlive) {
  auto storage = std::make_shared<std::vector<float>>(12);
  std::iota(storage->begin(), storage->end(), 0.0f);
  std::weak_ptr<std::vector<float>> watch = storage;
  Tensor v = Tensor::view(DType::kF32, {3, 4}, storage->data(), storage);
  storage.reset();
  EXPECT_FALSE(watch.expired());  // the view holds the owner
  EXPECT_EQ(v.strides(), (Shape{4, 1}));
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.data<float>()[7], 7.0f);
  v.data<float>()[7] = -1.0f;
  EXPECT_EQ((*watch.lock())[7], -1.0f);  // a view, not a copy
  Tensor copy = v;                       // copies share too
  v = Tensor();
  EXPECT_FALSE(watch.expired());
  copy = Tensor();
  EXPECT_TRUE(watch.expired());
}

// A (3, 4) float matrix 0..11 viewed transposed, reversed, broadcast and sliced.
TEST(Tensor, StridedViewsAndContiguous) {
  std::vector<float> m(12);
  std::iota(m.begin(), m.end(), 0.0f);
  auto expect_values = [](const Tensor& t, const std::vector<float>& want) {
    const Tensor c = t.contiguous();
    EXPECT_TRUE(c.is_contiguous());
    EXPECT_EQ(c.shape(), t.shape());
    ASSERT_EQ(c.numel(), static_cast<int64_t>(want.size()));
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(c.data<float>()[i], want[i]) << i;
  };

  const Tensor tr = Tensor::view(DType::kF32, {4, 3}, m.data(), nullptr, {1, 4});
  EXPECT_FALSE(tr.is_contiguous());
  expect_values(tr, {0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});

  // Rows reversed: a negative stride from the last row.
  const Tensor rev = Tensor::view(DType::kF32, {3, 4}, m.data() + 8, nullptr, {-4, 1});
  EXPECT_FALSE(rev.is_contiguous());
  expect_values(rev, {8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3});

  // Row 1 broadcast three times (stride 0).
  const Tensor bc = Tensor::view(DType::kF32, {3, 4}, m.data() + 4, nullptr, {0, 1});
  expect_values(bc, {4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7});

  // Columns 1..2 of every row: rows are not adjacent.
  const Tensor cols = Tensor::view(DType::kF32, {3, 2}, m.data() + 1, nullptr, {4, 1});
  EXPECT_FALSE(cols.is_contiguous());
  expect_values(cols, {1, 2, 5, 6, 9, 10});

  // Every other column.
  const Tensor step = Tensor::view(DType::kF32, {3, 2}, m.data(), nullptr, {4, 2});
  expect_values(step, {0, 2, 4, 6, 8, 10});

  // A size-1 dimension's stride does not matter for contiguity.
  const Tensor one = Tensor::view(DType::kF32, {3, 1, 4}, m.data(), nullptr, {4, 99, 1});
  EXPECT_TRUE(one.is_contiguous());
  expect_values(one, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
}

TEST(Tensor, ContiguousOfAPermutedRank4View) {
  // (2, 3, 4, 5) int16 permuted to (5, 2, 4, 3): out[a][b][c][d] = in[b][d][c][a].
  Tensor in(DType::kI16, {2, 3, 4, 5});
  for (int i = 0; i < 120; ++i) in.data<int16_t>()[i] = static_cast<int16_t>(i);
  const Tensor p = Tensor::view(DType::kI16, {5, 2, 4, 3}, in.raw(), nullptr, {1, 60, 5, 20});
  const Tensor c = p.contiguous();
  const int16_t* out = c.data<int16_t>();
  for (int a = 0; a < 5; ++a)
    for (int b = 0; b < 2; ++b)
      for (int cc = 0; cc < 4; ++cc)
        for (int d = 0; d < 3; ++d)
          ASSERT_EQ(out[((a * 2 + b) * 4 + cc) * 3 + d], b * 60 + d * 20 + cc * 5 + a);
  // A contiguous tensor's contiguous() is a copy, not the same buffer.
  const Tensor again = c.contiguous();
  EXPECT_NE(again.raw(), c.raw());
  EXPECT_EQ(std::memcmp(again.raw(), c.raw(), c.nbytes()), 0);
}

TEST(Tensor, FloatConversions) {
  Tensor f(DType::kF32, {2, 3});
  const float values[] = {1.0f, -2.5f, 1.0f + 0x1p-8f, 65520.0f, 0x1p-24f, 3.14159274f};
  std::copy(std::begin(values), std::end(values), f.data<float>());

  const Tensor b = f.to(DType::kBF16);
  EXPECT_EQ(b.describe(), "BF16[2, 3]");
  const float want_bf16[] = {1.0f, -2.5f, 1.0f, 65536.0f, 0x1p-24f, 3.140625f};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(bf16_to_float(b.data<bf16>()[i]), want_bf16[i]) << i;

  const Tensor h = f.to(DType::kF16);
  const auto* hb = static_cast<const uint16_t*>(h.raw());
  const float want_f16[] = {
      1.0f, -2.5f, 1.0f + 0x1p-8f, std::numeric_limits<float>::infinity(), 0x1p-24f, 3.140625f};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f16_to_float(hb[i]), want_f16[i]) << i;

  const Tensor d = f.to(DType::kF64);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(d.data<double>()[i], static_cast<double>(values[i]));
  const Tensor back = d.to(DType::kF32);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back.data<float>()[i], values[i]);
  // F16 -> F64 -> BF16 -> F32 chains.
  const Tensor h64 = h.to(DType::kF64);
  EXPECT_EQ(h64.data<double>()[5], 3.140625);
  EXPECT_TRUE(std::isinf(h64.data<double>()[3]));
  EXPECT_EQ(h.to(DType::kBF16).to(DType::kF32).data<float>()[1], -2.5f);

  // F64 -> F32 rounds to nearest; F64 -> F16 rounds once.
  Tensor dd(DType::kF64, {2});
  dd.data<double>()[0] = 0.1;
  dd.data<double>()[1] = 1.0 + 0x1p-11 + 0x1p-40;  // just above a half-way point
  EXPECT_EQ(dd.to(DType::kF32).data<float>()[0], 0.1f);
  EXPECT_EQ(static_cast<const uint16_t*>(dd.to(DType::kF16).raw())[1], 0x3c01);

  // Same dtype: a contiguous copy.
  const Tensor same = f.to(DType::kF32);
  EXPECT_NE(same.raw(), f.raw());
  EXPECT_EQ(same.data<float>()[1], -2.5f);
}

TEST(Tensor, ConversionOfAStridedView) {
  std::vector<double> m = {1, 2, 3, 4, 5, 6};  // (2, 3)
  const Tensor tr = Tensor::view(DType::kF64, {3, 2}, m.data(), nullptr, {1, 3});
  const Tensor f = tr.to(DType::kF32);
  EXPECT_TRUE(f.is_contiguous());
  const float want[] = {1, 4, 2, 5, 3, 6};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f.data<float>()[i], want[i]);
}

TEST(Tensor, IntegerConversions) {
  Tensor a(DType::kI64, {5});
  const int64_t v[] = {0, -128, 127, 255, -1};
  std::copy(std::begin(v), std::end(v), a.data<int64_t>());
  const Tensor i32 = a.to(DType::kI32);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(i32.data<int32_t>()[i], v[i]);
  const Tensor i16 = i32.to(DType::kI16);
  EXPECT_EQ(i16.data<int16_t>()[3], 255);
  const Tensor back = i16.to(DType::kI64);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(back.data<int64_t>()[i], v[i]);
  const Tensor flags = a.to(DType::kBool);
  const auto* fb = static_cast<const uint8_t*>(flags.raw());
  EXPECT_EQ(std::vector<int>(fb, fb + 5), (std::vector<int>{0, 1, 1, 1, 1}));
  EXPECT_EQ(flags.to(DType::kI32).data<int32_t>()[1], 1);

  Tensor small(DType::kU8, {2});
  small.data<uint8_t>()[0] = 200;
  small.data<uint8_t>()[1] = 7;
  EXPECT_EQ(small.to(DType::kI16).data<int16_t>()[0], 200);
  expect_error<InputError>([&] { (void)small.to(DType::kI8); },
                           "Tensor::to(I8): element 0 = 200 is out of range");
  expect_error<InputError>([&] { (void)a.to(DType::kU8); }, "element 1 = -128 is out of range");
  expect_error<InputError>([&] { (void)a.to(DType::kI8); }, "element 3 = 255 is out of range");
}

TEST(Tensor, UnsupportedConversionsThrow) {
  const Tensor f(DType::kF32, {2});
  const Tensor i(DType::kI32, {2});
  expect_error([&] { (void)f.to(DType::kI32); },
               "Tensor::to: unsupported conversion from F32[2] to I32");
  expect_error([&] { (void)i.to(DType::kF64); }, "from I32[2] to F64");
  expect_error([&] { (void)f.to(DType::kF8E4M3); }, "to F8_E4M3");
  expect_error([&] { (void)Tensor(DType::kF8E5M2, {1}).to(DType::kF32); }, "from F8_E5M2[1]");
  EXPECT_NO_THROW((void)Tensor(DType::kF8E4M3, {3}).to(DType::kF8E4M3));  // a plain copy
}

TEST(Tensor, ContiguousStrides) {
  EXPECT_EQ(contiguous_strides({}), Shape{});
  EXPECT_EQ(contiguous_strides({7}), Shape{1});
  EXPECT_EQ(contiguous_strides({2, 12, 4, 64}), (Shape{3072, 256, 64, 1}));
}

}  // namespace
}  // namespace engram
