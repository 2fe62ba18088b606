#include "engram/train/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "engram/model/safetensors.h"
#include "engram/model/transformer.h"
#include "engram/train/optimizer.h"
#include "engram/util/error.h"

namespace engram::train {
namespace {

namespace fs = std::filesystem;
using model::ModelConfig;
using model::Transformer;

ModelConfig tiny_config(int64_t hidden = 8, int64_t layers = 2) {
  ModelConfig c;
  c.model.vocab_size = 50;
  c.model.hidden_size = hidden;
  c.model.num_layers = layers;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.head_dim = 4;
  c.model.hc_mult = 1;
  c.model.max_seq_len = 16;
  c.model.dense_intermediate_size = 12;
  c.model.first_dense_layers = 1;
  c.train.seq_len = 5;
  c.train.batch_size = 2;
  model::MoeConfig m;  // MoE layers give a buffer (the selection bias) to save too
  m.num_experts = 4;
  m.num_shared_experts = 1;
  m.top_k = 2;
  m.expert_intermediate_size = 6;
  c.moe = m;
  return c;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("engram_checkpoint_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

void randomize(std::span<float> values, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (float& v : values) v = d(rng);
}

// A model, an AdamW over all its parameters and a SparseRowAdam over a side table, each with a
// few steps of state behind them.
struct Rig {
  explicit Rig(const ModelConfig& c, uint64_t seed)
      : model(c, {}, seed), adamw(AdamWOptions{}), table(6 * 3), sparse(table.data(), 6, 3) {
    std::mt19937_64 rng(seed);
    for (auto& p : model.params().named()) randomize({p.data, static_cast<size_t>(p.size)}, rng);
    for (auto& p : model.params().named_buffers()) {
      randomize({p.data, static_cast<size_t>(p.size)}, rng);
    }
    for (auto& p : model.params().named()) {
      grads.emplace_back(static_cast<size_t>(p.size));
      adamw.add_group(p.name, p.data, grads.back().data(), p.size);
    }
    for (int s = 0; s < 2; ++s) {
      for (auto& g : grads) randomize(g, rng);
      adamw.step(1e-3);
    }
    randomize(table, rng);
    nn::SparseRowGrad<float> g;
    g.width = 3;
    g.rows = {1, 4};
    g.values.resize(6);
    randomize(g.values, rng);
    sparse.step(g, 1e-3);
    g.rows = {4};
    g.values.resize(3);
    sparse.step(g, 1e-3);
    sparse.step(g, 1e-3);
  }
  std::vector<OptimizerCheckpoint> optimizers() {
    return {optimizer_checkpoint("dense", adamw), optimizer_checkpoint("engram", sparse)};
  }
  // Every value (params, buffers, optimizer state, counters) flattened, for comparison.
  std::vector<double> snapshot() {
    std::vector<double> out;
    for (auto& p : model.params().named()) out.insert(out.end(), p.data, p.data + p.size);
    for (auto& p : model.params().named_buffers()) {
      out.insert(out.end(), p.data, p.data + p.size);
    }
    for (auto& o : optimizers()) {
      for (auto& s : o.state) out.insert(out.end(), s.values.begin(), s.values.end());
      for (auto& c : o.counters) out.insert(out.end(), c.values.begin(), c.values.end());
    }
    return out;
  }
  void perturb(uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (auto& p : model.params().named()) randomize({p.data, static_cast<size_t>(p.size)}, rng);
    for (auto& p : model.params().named_buffers()) {
      randomize({p.data, static_cast<size_t>(p.size)}, rng);
    }
    for (auto& o : optimizers()) {
      for (auto& s : o.state) randomize(s.values, rng);
      for (auto& c : o.counters) {
        for (auto& v : c.values) v += 7;
      }
    }
    adamw.set_steps(99);
    sparse.set_steps(77);
  }

  Transformer<float> model;
  AdamW adamw;
  std::vector<std::vector<float>> grads;
  std::vector<float> table;
  SparseRowAdam sparse;
};

CheckpointState sample_state() {
  CheckpointState s;
  s.step = 1234;
  s.data_seed = 0xfedcba9876543210ULL;
  s.data_position = 987654321;
  s.config_toml = "[model]\nhidden_size = 8\nname = \"tiny \\\"q\\\"\"\n";
  s.extra = {{"note", "hello"}, {"loss", "3.25"}};
  return s;
}

std::string read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <class F>
std::string format_error_of(F&& f) {
  try {
    f();
  } catch (const FormatError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception: ") + e.what();
  }
  return "no exception";
}

TEST_F(CheckpointTest, RoundTripRestoresEverythingExactly) {
  Rig s(tiny_config(), 1);
  ASSERT_FALSE(s.model.params().named_buffers().empty());
  const std::vector<double> before = s.snapshot();
  const CheckpointState state = sample_state();
  save_checkpoint(path("ckpt.safetensors"), s.model.params(), s.optimizers(), state);

  s.perturb(2);
  ASSERT_NE(s.snapshot(), before);

  auto opts = s.optimizers();
  const CheckpointState loaded = load_checkpoint(path("ckpt.safetensors"), s.model.params(), opts);
  EXPECT_EQ(s.snapshot(), before);
  EXPECT_EQ(s.adamw.steps(), 2);
  EXPECT_EQ(s.sparse.steps(), 3);
  EXPECT_EQ(opts[0].steps, 2);
  EXPECT_EQ(opts[1].steps, 3);
  EXPECT_EQ(s.sparse.last_step()[4], 3);
  EXPECT_EQ(s.sparse.last_step()[1], 1);
  EXPECT_EQ(s.sparse.last_step()[0], 0);
  EXPECT_EQ(loaded.step, state.step);
  EXPECT_EQ(loaded.data_seed, state.data_seed);
  EXPECT_EQ(loaded.data_position, state.data_position);
  EXPECT_EQ(loaded.config_toml, state.config_toml);
  EXPECT_EQ(loaded.extra, state.extra);
}

TEST_F(CheckpointTest, FileLayout) {
  Rig s(tiny_config(), 3);
  save_checkpoint(path("c.safetensors"), s.model.params(), s.optimizers(), sample_state());
  const SafetensorsFile f = SafetensorsFile::open(path("c.safetensors"));
  EXPECT_EQ(f.metadata().at("format"), "engram-checkpoint-v1");
  EXPECT_EQ(f.metadata().at("step"), "1234");
  EXPECT_EQ(f.metadata().at("optim.dense.steps"), "2");
  EXPECT_EQ(f.metadata().at("optim.engram.steps"), "3");
  EXPECT_EQ(f.get("param.embed").dtype(), DType::kF32);
  EXPECT_EQ(f.get("param.embed").shape(), (std::vector<int64_t>{50, 8}));
  EXPECT_TRUE(f.contains("buffer.layers.1.moe.bias"));
  EXPECT_EQ(f.get("optim.engram.last_step").dtype(), DType::kI64);
  EXPECT_EQ(f.get("optim.engram.exp_avg").shape(), (std::vector<int64_t>{18}));
  EXPECT_TRUE(f.contains("optim.dense.embed.exp_avg_sq"));
}

TEST_F(CheckpointTest, HiddenSizeMismatchNamesTensorAndShapes) {
  Rig s(tiny_config(8), 1);
  save_checkpoint(path("c.safetensors"), s.model.params(), {}, sample_state());
  Transformer<float> other(tiny_config(12), {}, 5);
  const std::vector<double> before = [&] {
    std::vector<double> v;
    for (auto& p : other.params().named()) v.insert(v.end(), p.data, p.data + p.size);
    return v;
  }();
  std::vector<OptimizerCheckpoint> none;
  const std::string msg =
      format_error_of([&] { load_checkpoint(path("c.safetensors"), other.params(), none); });
  EXPECT_NE(msg.find(path("c.safetensors")), std::string::npos) << msg;
  EXPECT_NE(msg.find("param.embed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[50, 8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[50, 12]"), std::string::npos) << msg;
  std::vector<double> after;
  for (auto& p : other.params().named()) after.insert(after.end(), p.data, p.data + p.size);
  EXPECT_EQ(after, before);  // nothing restored from a rejected file
}

TEST_F(CheckpointTest, LayerCountMismatch) {
  Rig s(tiny_config(8, 3), 1);
  save_checkpoint(path("c.safetensors"), s.model.params(), {}, sample_state());
  std::vector<OptimizerCheckpoint> none;
  Transformer<float> fewer(tiny_config(8, 2), {}, 5);
  std::string msg =
      format_error_of([&] { load_checkpoint(path("c.safetensors"), fewer.params(), none); });
  EXPECT_NE(msg.find("unexpected tensor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layers.2."), std::string::npos) << msg;

  Transformer<float> more(tiny_config(8, 4), {}, 5);
  msg = format_error_of([&] { load_checkpoint(path("c.safetensors"), more.params(), none); });
  EXPECT_NE(msg.find("missing tensor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("param.layers.3."), std::string::npos) << msg;
}

TEST_F(CheckpointTest, OptimizerMismatch) {
  Rig s(tiny_config(), 1);
  save_checkpoint(path("c.safetensors"), s.model.params(), s.optimizers(), sample_state());
  std::vector<OptimizerCheckpoint> only_dense = {optimizer_checkpoint("dense", s.adamw)};
  const std::string msg = format_error_of(
      [&] { load_checkpoint(path("c.safetensors"), s.model.params(), only_dense); });
  EXPECT_NE(msg.find("optim.engram."), std::string::npos) << msg;
}

TEST_F(CheckpointTest, TruncatedFileIsFormatError) {
  Rig s(tiny_config(), 1);
  save_checkpoint(path("c.safetensors"), s.model.params(), s.optimizers(), sample_state());
  const std::string bytes = read_all(path("c.safetensors"));
  for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t{20}, size_t{4}}) {
    {
      std::ofstream out(path("t.safetensors"), std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(keep));
    }
    auto opts = s.optimizers();
    const std::string msg =
        format_error_of([&] { load_checkpoint(path("t.safetensors"), s.model.params(), opts); });
    EXPECT_NE(msg.find(path("t.safetensors")), std::string::npos) << keep << ": " << msg;
  }
}

TEST_F(CheckpointTest, NotACheckpointIsFormatError) {
  write_safetensors(path("w.safetensors"), {{"x", Tensor(DType::kF32, {2})}});
  Rig s(tiny_config(), 1);
  auto opts = s.optimizers();
  const std::string msg =
      format_error_of([&] { load_checkpoint(path("w.safetensors"), s.model.params(), opts); });
  EXPECT_NE(msg.find("format"), std::string::npos) << msg;
}

TEST_F(CheckpointTest, SaveIntoMissingDirectoryIsIoError) {
  Rig s(tiny_config(), 1);
  EXPECT_THROW(save_checkpoint(path("no/such/dir/c.safetensors"), s.model.params(), s.optimizers(),
                               sample_state()),
               IoError);
  EXPECT_FALSE(fs::exists(dir_ / "no"));
}

TEST_F(CheckpointTest, FailedSaveLeavesExistingCheckpointIntact) {
  Rig s(tiny_config(), 1);
  const std::string target = path("c.safetensors");
  save_checkpoint(target, s.model.params(), s.optimizers(), sample_state());
  const std::string original = read_all(target);
  s.perturb(9);

  // Rejected before writing: duplicate optimizer prefix.
  std::vector<OptimizerCheckpoint> dup = {optimizer_checkpoint("dense", s.adamw),
                                          optimizer_checkpoint("dense", s.adamw)};
  EXPECT_THROW(save_checkpoint(target, s.model.params(), dup, sample_state()), InputError);
  EXPECT_EQ(read_all(target), original);

  // Fails while writing: the directory is not writable (root ignores permissions; skip then).
  if (::geteuid() != 0) {
    fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_THROW(save_checkpoint(target, s.model.params(), s.optimizers(), sample_state()),
                 IoError);
    fs::permissions(dir_, fs::perms::owner_all);
    EXPECT_EQ(read_all(target), original);
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

}  // namespace
}  // namespace engram::train
