// infer::GpuDecoder (include/engram/infer/gpu_decoder.h): infer::Decoder's computation over rows
// of many sequences, with model::GpuTransformer's parameters and the engram::cuda pieces. Only
// public engram::cuda headers are used, so this file compiles without CUDA.
#include "engram/infer/gpu_decoder.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <optional>
#include <string>
#include <utility>

#include "engram/cuda/attention.h"
#include "engram/cuda/buffer.h"
#include "engram/cuda/decode.h"
#include "engram/cuda/device.h"
#include "engram/cuda/graph.h"
#include "engram/cuda/hyper_connection.h"
#include "engram/cuda/model_ops.h"
#include "engram/cuda/ops.h"
#include "engram/cuda/phase_timer.h"
#include "engram/memory/cached_lookups.h"
#include "engram/util/error.h"

namespace engram::infer {
namespace {

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

ConfigError config_error(const std::string& field, const std::string& what) {
  return ConfigError(error_message("GpuDecoder: " + field, what));
}

cuda::Matrix mat(const float* p, int64_t ld) {
  return {p, DType::kF32, ld};
}
cuda::MutMatrix mut(float* p, int64_t ld) {
  return {p, DType::kF32, ld};
}

}  // namespace

struct GpuDecoder::Impl {
  model::GpuTransformer* model = nullptr;
  model::ModelConfig config;
  model::GpuModelWeights w;
  GpuDecoderOptions options;
  const hash::NgramHasher* hasher = nullptr;
  std::vector<int> engram_index;  // per layer: index into layer_ids, or -1
  std::vector<cuda::DeviceTable> tables;  // per Engram layer: set_tables' or the model's
  // set_table_stores: per Engram layer the store (or null), its pinned staging of one step's
  // rows, and the host head offsets; the staged layers read row r * heads + h of the staging
  // (ids r * heads, offsets h).
  std::vector<const memory::RowStore*> stores;
  std::vector<cuda::MappedHostBuffer<float>> staging;
  std::vector<std::vector<int64_t>> host_offsets;  // per Engram layer: the hasher's head offsets
  cuda::DeviceBuffer<int32_t> staged_ids;
  cuda::DeviceBuffer<int64_t> staged_offsets;
  std::vector<int64_t> layer_rows;  // scratch: one layer's rows of a step (step_rows)
  // The staged layers' rows are gathered on the host while the step's device work starts: the
  // first staged layer's gather (on the side stream with prefetch_rows, else in the layer) waits
  // at this gate until they are in the staging.
  std::unique_ptr<cuda::HostGate> gate;  // made by set_table_stores
  // Hot rows (GpuDecoderOptions::hot_rows), per Engram layer given to set_tables: the cache's
  // bookkeeping and slots, the step's rows read through it (the layer reads row r * heads + h,
  // as from a staging), and the step's plan on the device.
  struct HotRows {
    memory::RowCache cache;
    memory::CachedLookups step;
    std::vector<int64_t> plan;                 // the step's plan (host)
    cuda::DeviceBuffer<uint8_t> slab, out;     // (capacity, row), (S * heads, row) bytes
    cuda::DeviceBuffer<int64_t> d_plan;        // cuda::cached_rows' plan: 1 + 3 S * heads
  };
  std::vector<std::unique_ptr<HotRows>> hot;  // per Engram layer, null: none
  // A step that planned fills did not run: the caches start again empty at the next plan.
  bool hot_stale = false;
  bool is_hot(size_t e) const { return e < hot.size() && hot[e] != nullptr; }
  // The table layer e's gather reads this step: its staging, its hot rows' output, or tables[e].
  cuda::DeviceTable layer_table(size_t e) const {
    const int64_t rows = options.max_step_rows * ids_per_token;
    if (staged(e)) return {staging[e].device(), DType::kF32, rows, stores[e]->width()};
    if (is_hot(e)) return {hot[e]->out.data(), tables[e].dtype, rows, tables[e].width};
    return tables[e];
  }
  // Drops the table stores and the hot rows (set_tables, set_table_stores), and the captured
  // steps, which hold their addresses.
  void drop_step_sources() {
    stores.clear();
    staging.clear();
    hot.clear();
    graphs.clear();
  }
  // Plans the hot layers' lookups of the uploaded step (N rows) and uploads the plans.
  void plan_hot(int64_t N);
  // After a step that planned fills did not run: the caches are emptied at the next plan.
  void forget_hot_rows() noexcept { hot_stale = true; }
  // Enqueues hot layer e's fills and lookups of a step of N rows on `stream`.
  void hot_rows_step(size_t e, int64_t N, void* on) {
    HotRows& hr = *hot[e];
    cuda::cached_rows(hr.out.data(), hr.slab.data(), tables[e], hr.d_plan.data(),
                      N * ids_per_token, on);
  }
  // The ids and head offsets a staged or hot layer reads its step's rows with (row r * H + h).
  void ensure_staged_ids();
  bool staged(size_t e) const { return e < stores.size() && stores[e] != nullptr; }
  // Layer e reads its step's rows from a step buffer (the staging or the hot rows' output).
  bool reads_step_rows(size_t e) const { return staged(e) || is_hot(e); }
  // Engram layer e's table rows of the uploaded step (N rows, heads each) into layer_rows.
  void step_rows(size_t e, int64_t N);
  bool any_staged() const {
    return std::any_of(stores.begin(), stores.end(), [](const auto* p) { return p != nullptr; });
  }
  // The staged layers' rows of the uploaded step (N rows) into their staging.
  void gather_staged(int64_t N);
  // A step of N rows runs the routed MoE (which waits for its routing counts on the host).
  bool routed(int64_t N) const { return config.moe.has_value() && N > options.dense_moe_rows; }
  // run_step(N, R) will only launch an already captured graph: it then neither allocates nor
  // waits for the device (an eager step may, growing a buffer), so the host may gather the
  // staged rows after it, while the device waits at the gate.
  bool will_replay(int64_t N, int64_t R) const {
    const std::pair<int64_t, int64_t> key{N, R};
    return options.cuda_graphs && !profiling && !routed(N) && no_graph.count(key) == 0 &&
           graphs.count(key) > 0 && graph_addresses() == captured_addresses;
  }
  // Waits for the decoder's work on both of its streams.
  void synchronize() const {
    stream.synchronize();
    side.synchronize();
  }
  // Engram layer e's ids and head offsets for a step of N rows (device).
  const int32_t* step_ids(size_t e, int64_t N) const {
    return reads_step_rows(e) ? staged_ids.data() : d_hash.data() + e * sz(N * ids_per_token);
  }
  const int64_t* step_offsets(size_t e, const model::GpuLayerWeights& L) const {
    return reads_step_rows(e) ? staged_offsets.data() : L.head_offsets;
  }
  int64_t token_limit = 0;
  int64_t ring_len = 0;
  int64_t ids_per_token = 0;

  // Per sequence.
  std::vector<int64_t> length;
  std::vector<hash::StreamingHasher> streams;
  // Per layer: the key/value caches; per Engram layer: the conv ring.
  std::vector<cuda::DeviceBuffer<float>> k_cache, v_cache, rings;
  cuda::DeviceBuffer<float> rope_cos, rope_sin;  // (max_len, hd/2)

  // The step's inputs, host and device.
  std::vector<int64_t> h_tokens;
  std::vector<int32_t> h_seq, h_pos, h_logit_rows, h_hash, chunk_hash;
  std::vector<int64_t> logit_seqs;
  cuda::DeviceBuffer<int64_t> d_tokens, d_argmax;
  cuda::DeviceBuffer<int32_t> d_seq, d_pos, d_logit_rows, d_hash;

  // Scratch, sized for max_step_rows rows.
  cuda::DeviceBuffer<float> x, x_next, y, h, f, rstd, pre, post, comb, q, k, v, ctx, h1, h3, g;
  cuda::DeviceBuffer<float> engram_out, sel, z, head_pre, hn, logits;
  cuda::GpuHcSaved coeff, head_coeff;
  cuda::GpuMoeSaved<float> moe;
  std::vector<float> host_logits;

  bool profiling = false;
  cuda::PhaseTimer timer;
  void mark(const char* phase) {
    if (profiling) timer.mark(phase);
  }

  // Everything runs on the decoder's own stream (a blocking one: ordered with the default
  // stream's copies), with its own cuBLAS handle on it, so that steps can be captured.
  cuda::Stream stream;
  cuda::Blas own_blas;
  // The Engram rows' prefetch: a side stream forked from the step's start, joined before each
  // Engram layer.
  cuda::Stream side;
  cuda::Event step_start;
  std::vector<std::unique_ptr<cuda::Event>> rows_ready;  // per Engram layer
  void* st() const { return stream.get(); }
  // CUDA graphs of the device part of a step, per (rows, logits rows): a shape is run eagerly
  // once (seen), captured the next time and replayed from then on; at most kMaxGraphs are kept
  // (the least recently used goes). A shape whose capture failed runs eagerly (no_graph).
  static constexpr size_t kMaxGraphs = 64;
  struct Captured {
    cuda::Graph graph;
    uint64_t last_use = 0;
  };
  std::map<std::pair<int64_t, int64_t>, Captured> graphs;
  std::set<std::pair<int64_t, int64_t>> seen, no_graph;
  uint64_t clock = 0;
  std::vector<const void*> captured_addresses;
  // The addresses a captured step holds that can change under it: the MoE scratch (a routed
  // step may grow it) and each Engram layer's step buffers and parameters.
  std::vector<const void*> graph_addresses() const {
    std::vector<const void*> a = {
        moe.scores.data(),    moe.selected.data(),  moe.weights.data(), moe.row_of.data(),
        moe.h1.data(),        moe.h3.data(),        moe.g.data(),       moe.routed_out.data(),
        moe.shared_h1.data(), moe.shared_h3.data(), moe.shared_g.data(), moe.shared_out.data()};
    for (const model::GpuLayerWeights& layer : w.layers) {
      if (layer.engram == nullptr) continue;
      const std::vector<const void*> e = layer.engram->step_addresses();
      a.insert(a.end(), e.begin(), e.end());
    }
    return a;
  }
  // InputError naming `where` for a sequence outside [0, max_sequences).
  void check_sequence(const char* where, int64_t sequence) const {
    if (sequence < 0 || sequence >= options.max_sequences) {
      throw InputError(error_message(where, "sequence " + std::to_string(sequence) +
                                                " is outside [0, " +
                                                std::to_string(options.max_sequences) + ")"));
    }
  }
  void run_step(int64_t N, int64_t R);
  // Drops the captured graphs when an address they hold has changed (graph_addresses()).
  void drop_graphs_if_moved() {
    std::vector<const void*> now = graph_addresses();
    if (now != captured_addresses) {
      graphs.clear();
      captured_addresses = std::move(now);
    }
  }
  // Launches the captured graph of the shape (will_replay(N, R)): nothing that could wait for the
  // device.
  void replay(int64_t N, int64_t R);
  void run_device(int64_t N, int64_t R);

  cuda::Blas& blas() { return own_blas; }
  void gemm(int64_t m, int64_t n, int64_t kk, const float* a, int64_t lda, const float* b,
            int64_t ldb, float* c, int64_t ldc) {
    blas().gemm(false, true, m, n, kk, 1.0f, mat(a, lda), mat(b, ldb), 0.0f, mut(c, ldc),
                model->options().math);
  }
  void sublayer(int64_t l, bool is_attn, int64_t N);
  void attention(int64_t l, int64_t N);
  void engram(int64_t l, int64_t N);
};

GpuDecoder::GpuDecoder(model::GpuTransformer& model, const hash::NgramHasher* hasher,
                       GpuDecoderOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.model = &model;
  I.config = model.config();
  const model::ModelConfig& c = I.config;
  const model::BackboneConfig& m = c.model;
  if (options.max_len == 0) options.max_len = m.max_seq_len;
  auto positive = [](int64_t v, const char* name) {
    if (v < 1) throw config_error(std::string("options.") + name, std::to_string(v) + " (>= 1)");
  };
  positive(options.max_sequences, "max_sequences");
  positive(options.max_len, "max_len");
  positive(options.max_step_rows, "max_step_rows");
  positive(options.max_rows_per_sequence, "max_rows_per_sequence");
  if (options.hot_rows < 0 || options.hot_rows >= 2147483647) {
    throw config_error("options.hot_rows", std::to_string(options.hot_rows) + " (0 .. 2^31 - 2)");
  }
  if (options.dense_moe_rows < 0) {
    throw config_error("options.dense_moe_rows", std::to_string(options.dense_moe_rows) + " (>= 0)");
  }
  if (options.max_len > m.max_seq_len) {
    throw config_error("options.max_len", std::to_string(options.max_len) +
                                              " exceeds model.max_seq_len = " +
                                              std::to_string(m.max_seq_len));
  }
  if (options.max_sequences > 2147483647 / std::max<int64_t>(options.max_len, 1)) {
    throw config_error("options.max_sequences", std::to_string(options.max_sequences) +
                                                    " sequences of " +
                                                    std::to_string(options.max_len) +
                                                    " positions exceed int32 positions");
  }
  options.max_rows_per_sequence = std::min(options.max_rows_per_sequence, options.max_step_rows);
  I.options = options;
  I.own_blas.set_stream(I.stream.get());
  I.timer.set_stream(I.stream.get());
  if (c.engram) {
    for (size_t e = 0; e < c.engram->hash.layer_ids.size(); ++e)
      I.rows_ready.push_back(std::make_unique<cuda::Event>());
  }
  I.hasher = hasher;
  I.w = model.weights();
  I.engram_index.assign(sz(m.num_layers), -1);
  I.token_limit = m.vocab_size;
  if (c.engram) {
    if (hasher == nullptr) {
      throw config_error("hasher", "none given, but the model has [engram] layers");
    }
    const auto& ids = c.engram->hash.layer_ids;
    if (hasher->num_layers() != ids.size() ||
        hasher->ids_per_token() != c.engram->hash.ids_per_token()) {
      throw config_error("hasher", "has " + std::to_string(hasher->num_layers()) + " layers of " +
                                       std::to_string(hasher->ids_per_token()) +
                                       " ids per token, the model " + std::to_string(ids.size()) +
                                       " of " + std::to_string(c.engram->hash.ids_per_token()));
    }
    for (size_t e = 0; e < ids.size(); ++e) {
      const cuda::DeviceTable& t = I.w.layers[sz(ids[e])].table;
      if (hasher->layer_id(e) != ids[e] || hasher->table_rows(e) != t.rows) {
        throw config_error("hasher", "Engram layer " + std::to_string(ids[e]) +
                                         ": the hasher's table has " +
                                         std::to_string(hasher->table_rows(e)) +
                                         " rows, the model's " + std::to_string(t.rows));
      }
      I.engram_index[sz(ids[e])] = static_cast<int>(e);
      I.tables.push_back(t);
      I.host_offsets.push_back(hasher->head_offsets(e));
    }
    I.token_limit = std::min(I.token_limit, hasher->tokenizer_vocab());
    I.ids_per_token = hasher->ids_per_token();
    const int64_t reach = c.engram->short_conv ? static_cast<int64_t>(c.engram->hash.max_ngram_size) *
                                                     (c.engram->hash.kernel_size - 1)
                                               : 0;
    I.ring_len = reach + options.max_rows_per_sequence;
    for (int64_t s = 0; s < options.max_sequences; ++s) I.streams.emplace_back(*hasher);
  } else if (hasher != nullptr) {
    throw config_error("hasher", "given, but the model has no [engram] layers");
  }

  const int64_t S = options.max_sequences, L = options.max_len, N = options.max_step_rows;
  const int64_t n = m.hc_mult, C = m.hidden_size, hd = m.head_dim, V = m.vocab_size;
  const int64_t QD = m.num_heads * hd, KD = m.num_kv_heads * hd;
  I.length.assign(sz(S), 0);
  for (int64_t l = 0; l < m.num_layers; ++l) {
    I.k_cache.emplace_back(sz(S * L * KD));
    I.v_cache.emplace_back(sz(S * L * KD));
    if (I.engram_index[sz(l)] >= 0 && c.engram->short_conv)
      I.rings.emplace_back(sz(S * I.ring_len * n * C));
  }
  // cos/sin of every position, as the CPU decoder computes them (in double, then rounded).
  const int64_t half = hd / 2;
  std::vector<float> cs(sz(L * half)), sn(sz(L * half));
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq =
          std::pow(m.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
      const double angle = static_cast<double>(t) * inv_freq;
      cs[sz(t * half + i)] = static_cast<float>(std::cos(angle));
      sn[sz(t * half + i)] = static_cast<float>(std::sin(angle));
    }
  }
  I.rope_cos = cuda::DeviceBuffer<float>(std::span<const float>(cs));
  I.rope_sin = cuda::DeviceBuffer<float>(std::span<const float>(sn));

  const int64_t F = m.dense_intermediate_size, R = std::min(N, S);
  I.d_tokens = cuda::DeviceBuffer<int64_t>(sz(N));
  I.d_argmax = cuda::DeviceBuffer<int64_t>(sz(R));
  I.d_seq = cuda::DeviceBuffer<int32_t>(sz(N));
  I.d_pos = cuda::DeviceBuffer<int32_t>(sz(N));
  I.d_logit_rows = cuda::DeviceBuffer<int32_t>(sz(R));
  if (c.engram) {
    I.d_hash = cuda::DeviceBuffer<int32_t>(sz(static_cast<int64_t>(I.tables.size()) * N *
                                              I.ids_per_token));
  }
  for (auto* b : {&I.x, &I.x_next, &I.engram_out}) *b = cuda::DeviceBuffer<float>(sz(N * n * C));
  for (auto* b : {&I.y, &I.h, &I.f}) *b = cuda::DeviceBuffer<float>(sz(N * C));
  I.rstd = cuda::DeviceBuffer<float>(sz(N));
  I.pre = cuda::DeviceBuffer<float>(sz(N * n));
  I.post = cuda::DeviceBuffer<float>(sz(N * n));
  I.comb = cuda::DeviceBuffer<float>(sz(N * n * n));
  I.q = cuda::DeviceBuffer<float>(sz(N * QD));
  I.ctx = cuda::DeviceBuffer<float>(sz(N * QD));
  I.k = cuda::DeviceBuffer<float>(sz(N * KD));
  I.v = cuda::DeviceBuffer<float>(sz(N * KD));
  if (F > 0) {
    for (auto* b : {&I.h1, &I.h3, &I.g}) *b = cuda::DeviceBuffer<float>(sz(N * F));
  }
  I.sel = cuda::DeviceBuffer<float>(sz(R * n * C));
  I.z = cuda::DeviceBuffer<float>(sz(R * C));
  I.head_pre = cuda::DeviceBuffer<float>(sz(R * n));
  I.hn = cuda::DeviceBuffer<float>(sz(R * C));
  I.logits = cuda::DeviceBuffer<float>(sz(R * V));
  // Scratch the steps would otherwise grow: sized now, so that captured steps keep addresses.
  if (n > 1) {
    const int64_t K = n * n + 2 * n;
    I.coeff.proj = cuda::DeviceBuffer<float>(sz(N * K));
    I.coeff.rstd = cuda::DeviceBuffer<float>(sz(N));
    I.head_coeff.proj = cuda::DeviceBuffer<float>(sz(R * n));
    I.head_coeff.rstd = cuda::DeviceBuffer<float>(sz(R));
  }
  for (const model::GpuLayerWeights& layer : I.w.layers) {
    if (layer.engram != nullptr) layer.engram->reserve_step(N);
  }
  if (c.moe) {
    const model::MoeConfig& e = *c.moe;
    const int64_t D = std::max<int64_t>(1, std::min(N, options.dense_moe_rows));
    const int64_t E = e.num_experts, K = e.top_k, H = e.expert_intermediate_size;
    if (options.dense_moe_rows > 0 && D * E * std::max(C, H) > 2147483647) {
      throw config_error("options.dense_moe_rows",
                         std::to_string(D) + " rows x " + std::to_string(E) +
                             " experts x max(C, H) exceeds 2^31 - 1 elements; lower it");
    }
    const int64_t HS = e.num_shared_experts * H;
    I.moe.scores = cuda::DeviceBuffer<float>(sz(N * E));
    I.moe.selected = cuda::DeviceBuffer<int32_t>(sz(N * K));
    I.moe.weights = cuda::DeviceBuffer<float>(sz(N * K));
    I.moe.row_of = cuda::DeviceBuffer<int32_t>(sz(N * K));
    for (auto* b : {&I.moe.h1, &I.moe.h3, &I.moe.g})
      *b = cuda::DeviceBuffer<float>(sz(std::max(E * D, N * K) * H));
    I.moe.routed_out = cuda::DeviceBuffer<float>(sz(std::max(E * D, N * K) * C));
    if (HS > 0) {
      for (auto* b : {&I.moe.shared_h1, &I.moe.shared_h3, &I.moe.shared_g})
        *b = cuda::DeviceBuffer<float>(sz(N * HS));
      I.moe.shared_out = cuda::DeviceBuffer<float>(sz(N * C));
    }
  }
  cuda::device_synchronize();
}

GpuDecoder::~GpuDecoder() = default;

const GpuDecoderOptions& GpuDecoder::options() const {
  return impl_->options;
}

int64_t GpuDecoder::vocab_size() const {
  return impl_->config.model.vocab_size;
}

void GpuDecoder::reset(int64_t sequence) {
  Impl& I = *impl_;
  I.check_sequence("GpuDecoder::reset", sequence);
  I.length[sz(sequence)] = 0;
  if (!I.streams.empty()) I.streams[sz(sequence)].reset();
}

int64_t GpuDecoder::position(int64_t sequence) const {
  const Impl& I = *impl_;
  I.check_sequence("GpuDecoder::position", sequence);
  return I.length[sz(sequence)];
}

void GpuDecoder::set_tables(std::vector<cuda::DeviceTable> tables) {
  Impl& I = *impl_;
  I.synchronize();  // a step in flight may still read the old tables
  const model::ModelConfig& c = I.config;
  const size_t n = c.engram ? c.engram->hash.layer_ids.size() : 0;
  if (tables.empty()) {
    I.tables.clear();
    for (size_t e = 0; e < n; ++e) I.tables.push_back(I.w.layers[sz(c.engram->hash.layer_ids[e])].table);
    I.drop_step_sources();
    return;
  }
  if (tables.size() != n) {
    throw config_error("set_tables", std::to_string(tables.size()) + " tables given, the model has " +
                                         std::to_string(n) + " Engram layers");
  }
  for (size_t e = 0; e < n; ++e) {
    const int64_t layer = c.engram->hash.layer_ids[e];
    const cuda::DeviceTable& own = I.w.layers[sz(layer)].table;
    const cuda::DeviceTable& t = tables[e];
    const bool quant = t.dtype == DType::kF8E4M3 || t.dtype == DType::kI8;
    if (t.data == nullptr || t.rows != own.rows || t.width != own.width ||
        (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && !quant) ||
        (quant && t.width % 32 != 0) ||
        (t.dtype == DType::kI8 && reinterpret_cast<uintptr_t>(t.data) % 4 != 0)) {
      throw config_error("set_tables: Engram layer " + std::to_string(layer),
                         std::to_string(t.rows) + " rows of " + std::to_string(t.width) + " (" +
                             std::string(dtype_name(t.dtype)) + (t.data ? "" : ", no data") +
                             "), the model's table " + std::to_string(own.rows) + " rows of " +
                             std::to_string(own.width) +
                             " (f32 or bf16; fp8 or int8 rows of a width that is a multiple of "
                             "32, int8 data 4-byte aligned)");
    }
  }
  // The hot rows' caches, all made before anything changes: for tables outside GPU memory, of at
  // most the table's rows; slots and step rows set to 0xFF bytes (NaN rows) until filled.
  std::vector<std::unique_ptr<Impl::HotRows>> hot;
  if (I.options.hot_rows > 0) {
    const int64_t H = I.ids_per_token, S = I.options.max_step_rows;
    for (size_t e = 0; e < n; ++e) {
      if (cuda::is_device_memory(tables[e].data)) {
        hot.push_back(nullptr);
        continue;
      }
      const int64_t rb = cuda::table_row_bytes(tables[e]);
      const int64_t cap = std::min(I.options.hot_rows, tables[e].rows);
      auto h = std::make_unique<Impl::HotRows>(Impl::HotRows{
          memory::RowCache(cap, I.options.hot_policy), {}, {},
          cuda::DeviceBuffer<uint8_t>(sz(cap * rb)), cuda::DeviceBuffer<uint8_t>(sz(S * H * rb)),
          cuda::DeviceBuffer<int64_t>(sz(1 + 3 * S * H))});
      cuda::fill_device_bytes(h->slab.data(), 0xFF, h->slab.bytes());
      cuda::fill_device_bytes(h->out.data(), 0xFF, h->out.bytes());
      hot.push_back(std::move(h));
    }
    I.ensure_staged_ids();
  }
  I.tables = std::move(tables);
  I.drop_step_sources();  // the captured steps read the old tables' addresses
  I.hot = std::move(hot);
  I.hot_stale = false;
}

void GpuDecoder::set_table_stores(std::vector<const memory::RowStore*> stores) {
  Impl& I = *impl_;
  I.synchronize();  // a step in flight may still read the old staging
  const model::ModelConfig& c = I.config;
  const size_t n = c.engram ? c.engram->hash.layer_ids.size() : 0;
  if (stores.empty()) {  // the layers' own tables again (set_tables' or the model's)
    I.drop_step_sources();
    return;
  }
  if (stores.size() != n) {
    throw config_error("set_table_stores", std::to_string(stores.size()) +
                                               " stores given, the model has " +
                                               std::to_string(n) + " Engram layers");
  }
  const int64_t H = I.ids_per_token, S = I.options.max_step_rows;
  for (size_t e = 0; e < n; ++e) {
    const int64_t layer = c.engram->hash.layer_ids[e];
    const cuda::DeviceTable& own = I.w.layers[sz(layer)].table;
    const memory::RowStore* st = stores[e];
    if (st != nullptr && (st->num_rows() != own.rows || st->width() != own.width)) {
      throw config_error("set_table_stores: Engram layer " + std::to_string(layer),
                         std::to_string(st->num_rows()) + " rows of " +
                             std::to_string(st->width()) + ", the model's table " +
                             std::to_string(own.rows) + " rows of " + std::to_string(own.width));
    }
  }
  if (!I.gate) I.gate = std::make_unique<cuda::HostGate>();  // before anything changes
  std::vector<cuda::MappedHostBuffer<float>> staging(n);
  for (size_t e = 0; e < n; ++e) {
    if (stores[e] == nullptr) continue;
    staging[e] = cuda::MappedHostBuffer<float>(sz(S * H * stores[e]->width()));
  }
  I.ensure_staged_ids();
  I.drop_step_sources();  // the captured steps read the old tables' addresses
  I.stores = std::move(stores);
  I.staging = std::move(staging);
}

void GpuDecoder::step(std::span<const int64_t> seqs, std::span<const int64_t> tokens) {
  Impl& I = *impl_;
  const model::BackboneConfig& m = I.config.model;
  const int64_t N = static_cast<int64_t>(tokens.size()), S = I.options.max_sequences;
  const int64_t V = m.vocab_size;
  const char* where = "GpuDecoder::step";
  if (seqs.size() != tokens.size()) {
    throw InputError(error_message(where, std::to_string(seqs.size()) + " sequences for " +
                                              std::to_string(tokens.size()) + " tokens"));
  }
  if (N == 0 || N > I.options.max_step_rows) {
    throw InputError(error_message(where, std::to_string(N) + " tokens (1 .. max_step_rows = " +
                                              std::to_string(I.options.max_step_rows) + ")"));
  }
  // Check everything before changing anything.
  std::vector<int64_t> count(sz(S), 0), last(sz(S), -1);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t s = seqs[sz(r)], id = tokens[sz(r)];
    if (s < 0 || s >= S) {
      throw InputError(error_message(where, "seqs[" + std::to_string(r) + "] = " +
                                                std::to_string(s) + " is outside [0, " +
                                                std::to_string(S) + ")"));
    }
    if (id < 0 || id >= I.token_limit) {
      throw InputError(error_message(
          where, "tokens[" + std::to_string(r) + "] = " + std::to_string(id) + " is outside [0, " +
                     std::to_string(I.token_limit) + ")" +
                     (I.token_limit < V ? " (the hasher's tokenizer vocabulary)" : "")));
    }
    ++count[sz(s)];
    last[sz(s)] = r;
  }
  for (int64_t s = 0; s < S; ++s) {
    if (count[sz(s)] > I.options.max_rows_per_sequence) {
      throw InputError(error_message(where, "sequence " + std::to_string(s) + " has " +
                                                std::to_string(count[sz(s)]) +
                                                " tokens in one step (max_rows_per_sequence = " +
                                                std::to_string(I.options.max_rows_per_sequence) +
                                                ")"));
    }
    if (I.length[sz(s)] + count[sz(s)] > I.options.max_len) {
      throw InputError(error_message(
          where, "sequence " + std::to_string(s) + ": " + std::to_string(count[sz(s)]) +
                     " token(s) after " + std::to_string(I.length[sz(s)]) +
                     " would exceed max_len = " + std::to_string(I.options.max_len)));
    }
  }
  for (size_t e = 0; e < I.tables.size(); ++e) {
    if (I.layer_table(e).data == nullptr) {
      throw ConfigError(error_message(
          "GpuDecoder: Engram layer " + std::to_string(I.config.engram->hash.layer_ids[e]),
          "no table: the model was loaded without its Engram tables and set_tables gave none"));
    }
  }

  // Positions, logits rows, hash ids; the host state (positions, hashers) is committed only
  // once the device work is enqueued, so that a failure leaves every sequence as it was.
  I.h_tokens.assign(tokens.begin(), tokens.end());
  I.h_seq.resize(sz(N));
  I.h_pos.resize(sz(N));
  std::vector<int64_t> next(I.length);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t s = seqs[sz(r)];
    I.h_seq[sz(r)] = static_cast<int32_t>(s);
    I.h_pos[sz(r)] = static_cast<int32_t>(next[sz(s)]++);
  }
  I.h_logit_rows.clear();
  std::vector<int64_t> logit_seqs;
  for (int64_t r = 0; r < N; ++r) {
    if (last[sz(seqs[sz(r)])] == r) {
      I.h_logit_rows.push_back(static_cast<int32_t>(r));
      logit_seqs.push_back(seqs[sz(r)]);
    }
  }
  const auto R = static_cast<int64_t>(I.h_logit_rows.size());
  const size_t n_engram = I.tables.size();
  const auto H = static_cast<size_t>(I.ids_per_token);
  // The rows grouped by sequence (stable: each sequence's rows in position order).
  std::vector<int64_t> order(sz(N));
  for (int64_t r = 0; r < N; ++r) order[sz(r)] = r;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return seqs[sz(a)] < seqs[sz(b)]; });
  std::vector<std::pair<int64_t, hash::StreamingHasher>> hashers_before;
  if (n_engram > 0) {
    I.h_hash.resize(n_engram * sz(N) * H);
    std::vector<int64_t> mine, at;
    for (size_t g = 0; g < order.size();) {
      const int64_t s = seqs[sz(order[g])];
      mine.clear();
      at.clear();
      for (; g < order.size() && seqs[sz(order[g])] == s; ++g) {
        mine.push_back(tokens[sz(order[g])]);
        at.push_back(order[g]);
      }
      hashers_before.emplace_back(s, I.streams[sz(s)]);
      I.chunk_hash.resize(n_engram * mine.size() * H);
      I.streams[sz(s)].push(mine, I.chunk_hash);
      for (size_t e = 0; e < n_engram; ++e) {
        for (size_t i = 0; i < mine.size(); ++i) {
          std::copy_n(I.chunk_hash.data() + (e * mine.size() + i) * H, H,
                      I.h_hash.data() + (e * sz(N) + sz(at[i])) * H);
        }
      }
    }
  }
  try {
    if (I.profiling) I.timer.start();
    cuda::copy_to_device(I.d_tokens.data(), I.h_tokens.data(), sz(N) * sizeof(int64_t));
    cuda::copy_to_device(I.d_seq.data(), I.h_seq.data(), sz(N) * sizeof(int32_t));
    cuda::copy_to_device(I.d_pos.data(), I.h_pos.data(), sz(N) * sizeof(int32_t));
    cuda::copy_to_device(I.d_logit_rows.data(), I.h_logit_rows.data(), sz(R) * sizeof(int32_t));
    if (n_engram > 0)
      cuda::copy_to_device(I.d_hash.data(), I.h_hash.data(), I.h_hash.size() * sizeof(int32_t));
    // The hot rows' caches believe this step's fills done once it is planned: if the step does
    // not run, they start again empty (a slot planned but never filled must not be read).
    struct ForgetUnlessRun {
      Impl& impl;
      bool run = false;
      ~ForgetUnlessRun() {
        if (!run) impl.forget_hot_rows();
      }
    } forget{I};
    if (!I.hot.empty()) I.plan_hot(N);
    I.mark("upload");
    if (I.any_staged() && !I.will_replay(N, R)) {
      // An eager step (its shape's first, a capture, profiling, the routed MoE waiting for its
      // routing counts) may wait for the device inside run_step: the rows first (the gate stays
      // open).
      I.synchronize();  // the previous step is the staging's last reader, on both streams
      I.gather_staged(N);
      I.run_step(N, R);
    } else if (I.any_staged()) {
      // A replayed step: the staged layers' rows are gathered while its first layers run. Once
      // the previous step is done, the gate closes, the graph is launched, the rows are gathered
      // and the gate opens (in every path: the device must never wait for ever).
      I.synchronize();
      I.gate->close();
      struct OpenOnExit {
        cuda::HostGate& gate;
        ~OpenOnExit() { gate.open(); }
      } open_on_exit{*I.gate};
      I.replay(N, R);
      I.gather_staged(N);
    } else {
      I.run_step(N, R);
    }
    forget.run = true;
  } catch (...) {
    for (auto& [seq, hasher] : hashers_before) I.streams[sz(seq)] = std::move(hasher);
    I.logit_seqs.clear();  // the last logits are not this step's
    throw;
  }
  I.length = std::move(next);
  I.logit_seqs = std::move(logit_seqs);
}

void GpuDecoder::Impl::ensure_staged_ids() {
  const int64_t H = ids_per_token, S = options.max_step_rows;
  if (staged_ids.size() >= sz(S * H)) return;
  std::vector<int32_t> ids(sz(S * H));
  for (int64_t r = 0; r < S; ++r)
    for (int64_t hd = 0; hd < H; ++hd) ids[sz(r * H + hd)] = static_cast<int32_t>(r * H);
  std::vector<int64_t> offs(sz(H));
  for (int64_t hd = 0; hd < H; ++hd) offs[sz(hd)] = hd;
  staged_ids = cuda::DeviceBuffer<int32_t>(std::span<const int32_t>(ids));
  staged_offsets = cuda::DeviceBuffer<int64_t>(std::span<const int64_t>(offs));
}

void GpuDecoder::Impl::plan_hot(int64_t N) {
  for (size_t e = 0; e < hot.size(); ++e) {
    if (!is_hot(e)) continue;
    HotRows& hr = *hot[e];
    if (hot_stale) hr.cache = memory::RowCache(hr.cache.capacity(), options.hot_policy);
    step_rows(e, N);
    memory::plan_lookups(hr.cache, layer_rows, hr.step);
    // [c | source (n) | fill rows (c) | fill slots (c)], one upload.
    const memory::CachedLookups& st = hr.step;
    hr.plan.clear();
    hr.plan.push_back(static_cast<int64_t>(st.fill_rows.size()));
    hr.plan.insert(hr.plan.end(), st.source.begin(), st.source.end());
    hr.plan.insert(hr.plan.end(), st.fill_rows.begin(), st.fill_rows.end());
    hr.plan.insert(hr.plan.end(), st.fill_slots.begin(), st.fill_slots.end());
    cuda::copy_to_device(hr.d_plan.data(), hr.plan.data(), hr.plan.size() * sizeof(int64_t));
  }
  hot_stale = false;
}

void GpuDecoder::Impl::step_rows(size_t e, int64_t N) {
  const auto H = static_cast<size_t>(ids_per_token);
  const std::vector<int64_t>& off = host_offsets[e];
  layer_rows.resize(sz(N) * H);
  for (size_t r = 0; r < sz(N); ++r)
    for (size_t hd = 0; hd < H; ++hd)
      layer_rows[r * H + hd] = off[hd] + h_hash[(e * sz(N) + r) * H + hd];
}

void GpuDecoder::Impl::gather_staged(int64_t N) {
  for (size_t e = 0; e < stores.size(); ++e) {
    if (!staged(e)) continue;
    step_rows(e, N);
    stores[e]->gather(layer_rows, staging[e].host().data(), stores[e]->width());
  }
}

// Runs the uploaded step: eagerly, or by replaying (capturing first) a graph of its shape.
void GpuDecoder::Impl::run_step(int64_t N, int64_t R) {
  const std::pair<int64_t, int64_t> key{N, R};
  if (!options.cuda_graphs || profiling || routed(N) || no_graph.count(key) > 0) {
    run_device(N, R);
    return;
  }
  // Captured graphs hold the addresses of the scratch of the MoE and the Engram layers (shared
  // with the model: a routed step, another decoder or the model's own forward may regrow it)
  // and of the Engram layers' parameters: any change drops them.
  drop_graphs_if_moved();
  if (graphs.count(key) > 0) {
    replay(N, R);
    return;
  }
  ++clock;
  if (seen.count(key) == 0) {
    run_device(N, R);  // the first time eagerly: buffers settle, cuBLAS picks its kernels
    seen.insert(key);
    drop_graphs_if_moved();  // it may have grown something the graphs hold
    return;
  }
  if (graphs.size() >= kMaxGraphs) {  // the least recently used goes
    auto oldest = graphs.begin();
    for (auto it = graphs.begin(); it != graphs.end(); ++it)
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    graphs.erase(oldest);
  }
  cuda::Graph graph;
  graph.begin_capture(stream);
  try {
    run_device(N, R);
    graph.end_capture(stream);
  } catch (...) {
    try {
      graph.end_capture(stream);
    } catch (...) {
    }
    no_graph.insert(key);  // this shape runs eagerly from now on
    run_device(N, R);
    return;
  }
  graph.launch(stream);
  graphs.emplace(key, Captured{std::move(graph), clock});
}

void GpuDecoder::Impl::replay(int64_t N, int64_t R) {
  Captured& c = graphs.at({N, R});
  c.last_use = ++clock;
  c.graph.launch(stream);
}

// The device part of a step over the uploaded inputs: N rows, logits for R of them.
void GpuDecoder::Impl::run_device(int64_t N, int64_t R) {
  const model::BackboneConfig& m = config.model;
  const int64_t n = m.hc_mult, C = m.hidden_size, V = m.vocab_size;
  if (options.prefetch_rows && !tables.empty()) {
    step_start.record(stream);
    step_start.wait(side);
    bool gated = false;
    for (size_t e = 0; e < tables.size(); ++e) {
      const model::GpuLayerWeights& L = w.layers[sz(config.engram->hash.layer_ids[e])];
      if (staged(e) && !gated) {
        gate->wait(side.get());  // the host is gathering the staged rows meanwhile
        gated = true;
      }
      if (is_hot(e)) hot_rows_step(e, N, side.get());
      L.engram->prefetch_step(step_ids(e, N), N, layer_table(e), step_offsets(e, L), side.get());
      rows_ready[e]->record(side);
    }
  }
  cuda::embedding_forward(x.data(), d_tokens.data(), w.embed, N, n, C, st());
  mark("embed");
  for (int64_t l = 0; l < m.num_layers; ++l) {
    if (engram_index[sz(l)] >= 0) {
      engram(l, N);
      mark("engram");
    }
    sublayer(l, true, N);
    sublayer(l, false, N);
  }
  // Head, on each sequence's last row.
  cuda::select_rows(sel.data(), x.data(), d_logit_rows.data(), R, n * C, st());
  const float* zp = sel.data();
  if (n > 1) {
    cuda::hc_head_readout_forward(z.data(), head_pre.data(), head_coeff, sel.data(),
                                  w.hc_head.phi, w.hc_head.b, w.hc_head.alpha, R, n, C, blas(),
                                  st());
    zp = z.data();
  }
  cuda::rmsnorm_forward(hn.data(), C, rstd.data(), zp, nn::RowLayout{R, C, C}, w.final_norm,
                        static_cast<float>(m.norm_eps), st());
  gemm(R, V, C, hn.data(), C, w.head, C, logits.data(), V);
  mark("head");
}

void GpuDecoder::set_profiling(bool on) {
  impl_->profiling = on;
}

std::vector<memory::CacheStats> GpuDecoder::hot_row_stats() const {
  const Impl& I = *impl_;
  std::vector<memory::CacheStats> out(I.tables.size());
  for (size_t e = 0; e < out.size(); ++e)
    if (I.is_hot(e)) out[e] = I.hot[e]->cache.stats();
  return out;
}

void GpuDecoder::reset_hot_row_stats() {
  for (auto& layer : impl_->hot)
    if (layer) layer->cache.reset_stats();
}

std::vector<std::pair<std::string, float>> GpuDecoder::phase_times() const {
  return impl_->profiling ? impl_->timer.times() : std::vector<std::pair<std::string, float>>{};
}

void GpuDecoder::Impl::engram(int64_t l, int64_t N) {
  const model::BackboneConfig& m = config.model;
  const int64_t n = m.hc_mult, C = m.hidden_size;
  const auto e = sz(engram_index[sz(l)]);
  const model::GpuLayerWeights& L = w.layers[sz(l)];
  cuda::GpuConvRing ring;
  if (config.engram->short_conv) {
    // The conv rings are in Engram layer order.
    ring.data = rings[e].data();
    ring.length = ring_len;
  }
  ring.seq = d_seq.data();
  ring.pos = d_pos.data();
  if (options.prefetch_rows) {
    rows_ready[e]->wait(stream);
  } else if (staged(e)) {
    gate->wait(st());  // the host is gathering the staged rows meanwhile
  } else if (is_hot(e)) {
    hot_rows_step(e, N, st());
  }
  L.engram->forward_step(x.data(), step_ids(e, N), N, layer_table(e), step_offsets(e, L), ring,
                         engram_out.data(), st());
  cuda::add_inplace(x.data(), engram_out.data(), N * n * C, st());
}

void GpuDecoder::Impl::sublayer(int64_t l, bool is_attn, int64_t N) {
  const model::BackboneConfig& m = config.model;
  const int64_t n = m.hc_mult, C = m.hidden_size;
  const model::GpuLayerWeights& L = w.layers[sz(l)];
  const model::GpuHcWeights& hc = is_attn ? L.hc_attn : L.hc_ffn;
  const float* yp = x.data();
  if (n > 1) {
    cuda::hc_coefficients_forward(pre.data(), post.data(), comb.data(), coeff, x.data(), hc.phi,
                                  hc.b, hc.alpha, N, n, C, blas(), st());
    cuda::hc_readout_forward(y.data(), x.data(), pre.data(), N, n, C, st());
    yp = y.data();
  }
  cuda::rmsnorm_forward(h.data(), C, rstd.data(), yp, nn::RowLayout{N, C, C},
                        is_attn ? L.attn_norm : L.ffn_norm, static_cast<float>(m.norm_eps), st());
  mark("mhc + norm");
  if (is_attn) {
    attention(l, N);
    mark("attention");
  } else if (config.is_moe_layer(l)) {
    const model::MoeConfig& e = *config.moe;
    nn::MoeShape s{N, C, e.num_experts, e.top_k, e.expert_intermediate_size};
    s.n_shared = e.num_shared_experts;
    s.route_scale = e.route_scale;
    if (N <= options.dense_moe_rows) {
      cuda::moe_forward_dense<float>(blas(), f.data(), moe, h.data(), L.moe_bias, L.moe, s);
    } else {
      cuda::moe_forward<float>(blas(), f.data(), moe, h.data(), L.moe_bias, L.moe, s);
    }
    mark("ffn moe");
  } else {
    const int64_t F = m.dense_intermediate_size;
    gemm(N, F, C, h.data(), C, L.w1, C, h1.data(), F);
    gemm(N, F, C, h.data(), C, L.w3, C, h3.data(), F);
    cuda::swiglu_gate_forward(g.data(), h1.data(), h3.data(), N * F, st());
    gemm(N, C, F, g.data(), F, L.w2, F, f.data(), C);
    mark("ffn dense");
  }
  if (n == 1) {
    cuda::add_inplace(x.data(), f.data(), N * C, st());
  } else {
    cuda::hc_write_back_forward(x_next.data(), f.data(), x.data(), post.data(), comb.data(), N, n,
                                C, st());
    std::swap(x, x_next);
  }
  mark("mhc + norm");
}

void GpuDecoder::Impl::attention(int64_t l, int64_t N) {
  const model::BackboneConfig& m = config.model;
  const int64_t C = m.hidden_size, hd = m.head_dim, Hq = m.num_heads, Hkv = m.num_kv_heads;
  const int64_t QD = Hq * hd, KD = Hkv * hd;
  const model::GpuLayerWeights& L = w.layers[sz(l)];
  gemm(N, QD, C, h.data(), C, L.wq, C, q.data(), QD);
  gemm(N, KD, C, h.data(), C, L.wk, C, k.data(), KD);
  gemm(N, KD, C, h.data(), C, L.wv, C, v.data(), KD);
  cuda::rope_at(q.data(), d_pos.data(), N, Hq, hd, rope_cos.data(), rope_sin.data(), st());
  cuda::rope_at(k.data(), d_pos.data(), N, Hkv, hd, rope_cos.data(), rope_sin.data(), st());
  cuda::kv_cache_append(k_cache[sz(l)].data(), v_cache[sz(l)].data(), k.data(), v.data(),
                        d_seq.data(), d_pos.data(), N, KD, options.max_len, st());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cuda::decode_attention(ctx.data(), q.data(), k_cache[sz(l)].data(), v_cache[sz(l)].data(),
                         d_seq.data(), d_pos.data(), N, Hq, Hkv, hd, options.max_len, scale,
                         st());
  gemm(N, C, QD, ctx.data(), QD, L.wo, QD, f.data(), C);
}

const std::vector<int64_t>& GpuDecoder::logit_sequences() const {
  return impl_->logit_seqs;
}

std::vector<float> GpuDecoder::logits() const {
  const Impl& I = *impl_;
  std::vector<float> out(I.logit_seqs.size() * sz(I.config.model.vocab_size));
  if (!out.empty()) cuda::copy_to_host(out.data(), I.logits.data(), out.size() * sizeof(float));
  return out;
}

const float* GpuDecoder::device_logits() const {
  return impl_->logits.data();
}

std::vector<int64_t> GpuDecoder::greedy() {
  Impl& I = *impl_;
  const auto R = static_cast<int64_t>(I.logit_seqs.size());
  std::vector<int64_t> out(sz(R));
  if (R == 0) return out;
  cuda::argmax_rows(I.d_argmax.data(), I.logits.data(), R, I.config.model.vocab_size, I.st());
  cuda::copy_to_host(out.data(), I.d_argmax.data(), sz(R) * sizeof(int64_t));
  return out;
}

std::span<const float> GpuDecoder::push(int64_t sequence, std::span<const int64_t> tokens) {
  Impl& I = *impl_;
  if (tokens.empty()) throw InputError(error_message("GpuDecoder::push", "no tokens given"));
  I.check_sequence("GpuDecoder::push", sequence);
  if (position(sequence) + static_cast<int64_t>(tokens.size()) > I.options.max_len) {
    throw InputError(error_message(
        "GpuDecoder::push", std::to_string(tokens.size()) + " token(s) after " +
                                std::to_string(position(sequence)) + " would exceed max_len = " +
                                std::to_string(I.options.max_len)));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {  // every chunk's ids, before the first step
    if (tokens[i] < 0 || tokens[i] >= I.token_limit) {
      throw InputError(error_message("GpuDecoder::push", "tokens[" + std::to_string(i) + "] = " +
                                                             std::to_string(tokens[i]) +
                                                             " is outside [0, " +
                                                             std::to_string(I.token_limit) + ")"));
    }
  }
  const int64_t chunk = I.options.max_rows_per_sequence;
  std::vector<int64_t> seqs;
  for (size_t at = 0; at < tokens.size(); at += sz(chunk)) {
    const size_t len = std::min(tokens.size() - at, sz(chunk));
    seqs.assign(len, sequence);
    step(seqs, tokens.subspan(at, len));
  }
  I.host_logits = logits();
  return I.host_logits;
}

}  // namespace engram::infer
