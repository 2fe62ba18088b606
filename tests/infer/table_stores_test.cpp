// Inference with the Engram tables outside the model: infer::load_model leaving the checkpoint's
// tables on disk (empty tables, the rest as a full load; the skipped tensors still checked), the
// Decoder's errors without a table, and the prefetched file tier: logits bit for bit those of the
// model's own tables (f32 .engt, host and file tier, prefilled and step by step), per-step
// statistics, each Engram layer waiting only for its own rows, and a damaged block.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engram/infer/decoder.h"
#include "engram/infer/model_loader.h"
#include "engram/memory/engt_file.h"
#include "engram/memory/tiered_store.h"
#include "engram/model/safetensors.h"
#include "engram/train/checkpoint.h"
#include "engram/train/run.h"
#include "memory/memory_test_util.h"
#include "temp_dir_test.h"
#include "test_paths.h"

namespace engram::infer {
namespace {

using memory::test_util::error_of;

// Two Engram layers (1 and 2), mHC and MoE, with the synthetic GPT-2 tokenizer's vocabulary.
const char* kConfig = R"([model]
vocab_size = 2005
hidden_size = 32
num_layers = 3
num_heads = 4
num_kv_heads = 2
hc_mult = 2
max_seq_len = 40
dense_intermediate_size = 48
first_dense_layers = 1

[moe]
num_experts = 4
num_shared_experts = 1
top_k = 2
expert_intermediate_size = 16

[engram]
engram_vocab_size = [101, 103]
max_ngram_size = 3
n_embed_per_ngram = 8
n_head_per_ngram = 2
layer_ids = [1, 2]

[train]
seq_len = 16
)";

constexpr int64_t kHeads = 4;  // (max_ngram_size - 1) * n_head_per_ngram

std::string tokenizer_path() {
  return test::fixture_dir() + "/tokenize/synthetic/gpt2.tokenizer.json";
}

std::string table_name(int layer) {
  return "param.layers." + std::to_string(layer) + ".engram.table";
}

class TableStoresTest : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    config_ = model::ModelConfig::from_toml(kConfig, "table_stores_test");
    const train::TextContext text = train::make_text_context(config_, tokenizer_path());
    // Every value moved off its init (norms 1, conv and biases 0 would hide a wrong read).
    model::Transformer<float> m(config_, text.head_sizes, 11);
    std::mt19937_64 rng(12);
    std::normal_distribution<double> noise(0.0, 0.1);
    for (auto list : {m.params().named(), m.params().named_buffers()}) {
      for (auto& p : list) {
        for (int64_t i = 0; i < p.size; ++i) p.data[i] += static_cast<float>(noise(rng));
      }
    }
    ckpt_ = dir_ + "/checkpoint.safetensors";
    train::CheckpointState state;
    state.config_toml = config_.to_toml();
    train::save_checkpoint(ckpt_, m.params(), {}, state);
  }

  // The checkpoint's table of Engram layer `layer` as an f32 .engt file.
  std::string write_table(int layer) {
    const SafetensorsFile f = SafetensorsFile::open(ckpt_);
    const Tensor t = f.get(table_name(layer));
    const std::string path = dir_ + "/layer" + std::to_string(layer) + ".engt";
    memory::write_engt(path, memory::RowFormat::kF32, static_cast<const float*>(t.raw()), t.dim(0),
                       t.dim(1), table_name(layer));
    return path;
  }

  model::ModelConfig config_;
  std::string ckpt_;
};

std::vector<int64_t> prompt_ids(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int64_t>(rng() % 2000);
  return ids;
}

// The logits of every push: ids pushed in pieces of the given sizes.
std::vector<std::vector<float>> decode(Decoder& dec, const std::vector<int64_t>& ids,
                                       const std::vector<int64_t>& pieces) {
  std::vector<std::vector<float>> out;
  size_t at = 0;
  for (const int64_t piece : pieces) {
    const std::span<const float> logits =
        dec.push(std::span<const int64_t>(ids.data() + at, static_cast<size_t>(piece)));
    out.emplace_back(logits.begin(), logits.end());
    at += static_cast<size_t>(piece);
  }
  return out;
}

TEST_F(TableStoresTest, LoaderLeavesTheTablesOnDisk) {
  const train::LoadedModel full = load_model(ckpt_, tokenizer_path());
  const train::LoadedModel lean = load_model(ckpt_, tokenizer_path(), {.engram_tables = false});
  auto& fp = full.model->params();
  auto& lp = lean.model->params();
  for (const int l : {1, 2}) {
    const auto& el = *fp.layers[static_cast<size_t>(l)].engram;
    EXPECT_EQ(fp.layers[static_cast<size_t>(l)].engram_table.size(),
              static_cast<size_t>(el.table_rows() * el.config().row_width()));
    EXPECT_GT(el.table_rows(), 400);
    EXPECT_TRUE(lp.layers[static_cast<size_t>(l)].engram_table.empty()) << "layer " << l;
    EXPECT_EQ(lp.layers[static_cast<size_t>(l)].engram_table.capacity(), 0u) << "layer " << l;
    EXPECT_EQ(lp.layers[static_cast<size_t>(l)].engram->table_rows(), el.table_rows());
  }
  // Everything else is the same, value for value.
  std::map<std::string, std::vector<float>> lean_values;
  for (auto list : {lp.named(), lp.named_buffers()})
    for (auto& p : list) lean_values[p.name].assign(p.data, p.data + p.size);
  size_t compared = 0;
  for (auto list : {fp.named(), fp.named_buffers()}) {
    for (auto& p : list) {
      if (p.name.find("engram.table") != std::string::npos) {
        EXPECT_EQ(lean_values.count(p.name), 0u) << p.name;
        continue;
      }
      ASSERT_EQ(lean_values.count(p.name), 1u) << p.name;
      EXPECT_EQ(lean_values[p.name], std::vector<float>(p.data, p.data + p.size)) << p.name;
      ++compared;
    }
  }
  EXPECT_EQ(compared, lean_values.size());
  EXPECT_GT(compared, 20u);
  EXPECT_EQ(lean.config.to_toml(), full.config.to_toml());
  EXPECT_EQ(lean.text.head_sizes, full.text.head_sizes);
}

TEST_F(TableStoresTest, LoaderStillChecksTheTablesItSkips) {
  const SafetensorsFile f = SafetensorsFile::open(ckpt_);
  auto rewrite = [&](const std::string& path, const std::string& table, const Tensor* replace) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : f.names()) {
      if (name != table) {
        tensors.emplace_back(name, f.get(name));
      } else if (replace != nullptr) {
        tensors.emplace_back(name, *replace);
      }
    }
    write_safetensors(path, tensors, f.metadata());
  };
  // Layer 2's table missing.
  const std::string missing = dir_ + "/missing.safetensors";
  rewrite(missing, table_name(2), nullptr);
  std::string err =
      error_of([&] { load_model(missing, tokenizer_path(), {.engram_tables = false}); });
  EXPECT_NE(err.find(missing), std::string::npos) << err;
  EXPECT_NE(err.find(table_name(2) + ": missing tensor (expected F32["), std::string::npos) << err;

  // Layer 1's table one row short.
  const Tensor t = f.get(table_name(1));
  Tensor short_table(DType::kF32, {t.dim(0) - 1, t.dim(1)});
  std::memcpy(short_table.raw(), t.raw(), short_table.nbytes());
  const std::string shorter = dir_ + "/short.safetensors";
  rewrite(shorter, table_name(1), &short_table);
  err = error_of([&] { load_model(shorter, tokenizer_path(), {.engram_tables = false}); });
  const std::string rows = std::to_string(t.dim(0)), cols = std::to_string(t.dim(1));
  EXPECT_NE(err.find(shorter), std::string::npos) << err;
  EXPECT_NE(err.find(table_name(1) + ": checkpoint has F32[" + std::to_string(t.dim(0) - 1) + ", " +
                     cols + "] but the model expects F32[" + rows + ", " + cols + "]"),
            std::string::npos)
      << err;
  // The full load refuses both too.
  EXPECT_NE(error_of([&] { load_model(missing, tokenizer_path()); }), "(no error)");
  EXPECT_NE(error_of([&] { load_model(shorter, tokenizer_path()); }), "(no error)");

  // A tensor the model does not have.
  const std::string extra = dir_ + "/extra.safetensors";
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : f.names()) tensors.emplace_back(name, f.get(name));
  tensors.emplace_back("param.layers.0.engram.table", t);
  write_safetensors(extra, tensors, f.metadata());
  err = error_of([&] { load_model(extra, tokenizer_path(), {.engram_tables = false}); });
  EXPECT_NE(err.find("param.layers.0.engram.table: unexpected tensor"), std::string::npos) << err;
}

TEST_F(TableStoresTest, DecoderWithoutTablesNeedsAStoreForEveryEngramLayer) {
  const train::LoadedModel lean = load_model(ckpt_, tokenizer_path(), {.engram_tables = false});
  Decoder dec(*lean.model, lean.text.hasher.get());
  const std::vector<int64_t> ids = prompt_ids(5, 1);
  std::string err = error_of([&] { dec.push(ids); });
  EXPECT_NE(err.find("Engram layer 1: no table store given, and the model was loaded without "
                     "its Engram tables"),
            std::string::npos)
      << err;
  EXPECT_EQ(dec.position(), 0);

  const memory::EngtRowStore layer2(write_table(2), memory::EngtTier::kHost);
  err = error_of([&] { dec.set_table_stores({nullptr, &layer2}); });
  EXPECT_NE(err.find("Engram layer 1: no table store given"), std::string::npos) << err;
  err = error_of([&] { dec.set_table_stores({&layer2}); });
  EXPECT_NE(err.find("1 given, the model has 2 Engram layers"), std::string::npos) << err;
  // Layer 2's table as layer 1's: the shapes differ.
  err = error_of([&] { dec.set_table_stores({&layer2, &layer2}); });
  EXPECT_NE(err.find("table store of Engram layer 1"), std::string::npos) << err;
  err = error_of([&] { dec.set_prefetched_table_stores({nullptr, nullptr}); });
  EXPECT_NE(err.find("store 0 is null"), std::string::npos) << err;
  EXPECT_EQ(dec.prefetcher(), nullptr);
  EXPECT_EQ(dec.position(), 0);

  const memory::EngtRowStore layer1(write_table(1), memory::EngtTier::kHost);
  dec.set_table_stores({&layer1, &layer2});
  EXPECT_EQ(dec.push(ids).size(), 2005u);
  EXPECT_EQ(dec.position(), 5);
}

TEST_F(TableStoresTest, PrefetchedFileTierGivesTheSameLogitsAsTheModelsTables) {
  const train::LoadedModel full = load_model(ckpt_, tokenizer_path());
  const train::LoadedModel lean = load_model(ckpt_, tokenizer_path(), {.engram_tables = false});
  const std::string f1 = write_table(1), f2 = write_table(2);
  const std::vector<int64_t> ids = prompt_ids(30, 2);
  std::vector<int64_t> pieces = {9};  // a prefill, then one token at a time
  pieces.resize(22, 1);

  Decoder own(*full.model, full.text.hasher.get());
  const auto ref = decode(own, ids, pieces);

  const memory::EngtRowStore h1(f1, memory::EngtTier::kHost), h2(f2, memory::EngtTier::kHost);
  Decoder host(*lean.model, lean.text.hasher.get());
  host.set_table_stores({&h1, &h2});
  EXPECT_EQ(decode(host, ids, pieces), ref) << "host tier";

  for (const int64_t cache_rows : {0, 64, 100000}) {
    memory::TieredStoreOptions o;
    o.cache_rows = cache_rows;
    const memory::TieredRowStore t1(f1, o), t2(f2, o);
    Decoder file(*lean.model, lean.text.hasher.get());
    file.set_table_stores({&t1, &t2});
    EXPECT_EQ(decode(file, ids, pieces), ref) << "file tier, cache " << cache_rows;

    const memory::TieredRowStore p1(f1, o), p2(f2, o);
    Decoder pre(*lean.model, lean.text.hasher.get());
    memory::PrefetcherOptions po;
    po.chunk_rows = 7;  // several store calls per layer
    pre.set_prefetched_table_stores({&p1, &p2}, po);
    ASSERT_NE(pre.prefetcher(), nullptr);
    size_t at = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      const auto n = static_cast<size_t>(pieces[i]);
      const std::span<const float> logits = pre.push(std::span<const int64_t>(ids.data() + at, n));
      at += n;
      ASSERT_EQ(std::vector<float>(logits.begin(), logits.end()), ref[i])
          << "prefetched file tier, cache " << cache_rows << ", push " << i;
      // This push's statistics: both layers fetched, every (token, head) read served from the
      // staging, nothing read twice.
      const memory::StepPrefetchStats s = pre.prefetcher()->step_stats();
      ASSERT_EQ(s.layers.size(), 2u);
      EXPECT_EQ(s.requested, static_cast<int64_t>(2 * n * kHeads));
      for (size_t l = 0; l < 2; ++l) {
        const memory::LayerPrefetchStats& ls = s.layers[l];
        EXPECT_EQ(ls.layer_id, static_cast<int>(l) + 1);
        EXPECT_TRUE(ls.done && !ls.failed);
        EXPECT_EQ(ls.requested, static_cast<int64_t>(n * kHeads));
        EXPECT_EQ(ls.gathered, ls.requested) << "push " << i << ", layer " << l;
        EXPECT_LE(ls.unique, ls.requested);
        EXPECT_GE(ls.unique, 1);
        EXPECT_GE(ls.stall_seconds, 0.0);
        EXPECT_EQ(ls.bytes_read, 4096 * ls.blocks_read);
        if (cache_rows == 0) {
          EXPECT_EQ(ls.hits, 0);
        }
      }
      EXPECT_DOUBLE_EQ(s.stall_seconds, s.layers[0].stall_seconds + s.layers[1].stall_seconds);
    }
    // With a cache as large as the tables, the prefetched rows are admitted: a second sequence
    // through the same stores reads nothing from the files.
    if (cache_rows == 100000) {
      pre.reset();
      decode(pre, ids, {9});
      const memory::StepPrefetchStats s = pre.prefetcher()->step_stats();
      EXPECT_EQ(s.hits, s.unique);
      EXPECT_EQ(s.blocks_read, 0);
    }
  }
}

TEST_F(TableStoresTest, EachEngramLayerWaitsOnlyForItsOwnRows) {
  const train::LoadedModel full = load_model(ckpt_, tokenizer_path());
  const train::LoadedModel lean = load_model(ckpt_, tokenizer_path(), {.engram_tables = false});
  const std::string f1 = write_table(1), f2 = write_table(2);
  const std::vector<int64_t> ids = prompt_ids(12, 3);
  const std::vector<int64_t> pieces = {6, 1, 1, 1, 1, 1, 1};
  Decoder own(*full.model, full.text.hasher.get());
  const auto ref = decode(own, ids, pieces);

  // Layer 2's (position 1's) rows are fetched only once the model has read layer 1's: a decoder
  // that waited for every layer before running its blocks would never get there (the hook gives
  // up after 10 s and the test fails). Layer 1 then runs while layer 2 is still being fetched.
  const memory::TieredRowStore t1(f1), t2(f2);
  Decoder dec(*lean.model, lean.text.hasher.get());
  std::atomic<int> consumed_first{0}, timed_out{0};
  memory::PrefetcherOptions po;
  po.on_layer_done = [&](size_t layer) {
    if (layer != 0) return;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (dec.prefetcher()->step_stats().layers[0].gathered == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ++timed_out;
        return;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    ++consumed_first;
  };
  dec.set_prefetched_table_stores({&t1, &t2}, po);
  EXPECT_EQ(decode(dec, ids, pieces), ref);
  EXPECT_EQ(timed_out.load(), 0);
  EXPECT_EQ(consumed_first.load(), static_cast<int>(pieces.size()));
}

TEST_F(TableStoresTest, DamagedBlockFailsThePushAndNeverGivesWrongRows) {
  const train::LoadedModel lean = load_model(ckpt_, tokenizer_path(), {.engram_tables = false});
  const std::string f1 = write_table(1), f2 = write_table(2);
  const int64_t blocks = memory::EngtFile::open(f2).layout().data_blocks;
  for (int64_t b = 0; b < blocks; ++b) memory::test_util::flip_byte(f2, 4096 + 4096 * b + 3);
  const memory::TieredRowStore t1(f1), t2(f2);
  Decoder dec(*lean.model, lean.text.hasher.get());
  dec.set_prefetched_table_stores({&t1, &t2});
  const std::vector<int64_t> ids = prompt_ids(6, 4);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const std::string err = error_of([&] { dec.push(ids); });
    EXPECT_NE(err.find(f2), std::string::npos) << err;
    EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
    const memory::StepPrefetchStats s = dec.prefetcher()->step_stats();
    EXPECT_FALSE(s.layers[0].failed);
    EXPECT_TRUE(s.layers[1].failed);
    EXPECT_EQ(s.layers[1].gathered, 0);
    EXPECT_EQ(dec.position(), 0);
    dec.reset();
  }
}

}  // namespace
}  // namespace engram::infer
