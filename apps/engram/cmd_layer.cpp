// engram run-layer: one Engram layer, forward and backward, on reference-named weights.
//
// IN.safetensors holds param.<name> for every parameter of the reference module (state_dict
// names, the table as param.multi_head_embedding.embedding.weight), input_ids (B, T),
// hidden_states (B, T, M, d) and grad_output (B, T, M, d). OUT.safetensors gets output,
// grad_hidden_states and grad.<name> for every parameter. Biases and the short conv are used when
// their parameters are present. Computes in float64 when hidden_states is F64, else float32.
#include <string>
#include <type_traits>
#include <vector>

#include "args.h"
#include "commands.h"
#include "engram/hash/hash_config.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/memory/row_store.h"
#include "engram/model/safetensors.h"
#include "engram/nn/engram_layer.h"
#include "engram/text/compressor.h"
#include "engram/text/tokenizer.h"
#include "engram/util/error.h"
#include "engram/util/parallel.h"

namespace engram::cli {
namespace {

constexpr const char* kTableName = "multi_head_embedding.embedding.weight";

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Tensor require_tensor(const SafetensorsFile& f, const std::string& name,
                      const std::vector<int64_t>& shape) {
  if (!f.contains(name))
    throw FormatError(error_message(f.path(), "missing tensor \"" + name + "\""));
  Tensor t = f.get(name);
  if (t.shape() != shape) {
    throw FormatError(error_message(f.path(), "tensor \"" + name + "\" has shape " +
                                                  shape_str(t.shape()) + ", expected " +
                                                  shape_str(shape)));
  }
  return t;
}

template <class T>
std::vector<T> as_vector(const Tensor& t) {
  const DType want = std::is_same_v<T, double> ? DType::kF64 : DType::kF32;
  const Tensor c = t.to(want);
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}

template <class T>
Tensor to_tensor(const std::vector<int64_t>& shape, const T* data) {
  Tensor t(std::is_same_v<T, double> ? DType::kF64 : DType::kF32, shape);
  std::copy(data, data + t.numel(), t.data<T>());
  return t;
}

template <class T>
void run(const SafetensorsFile& in, const std::string& out_path, nn::EngramLayerConfig cfg,
         const hash::NgramHasher& hasher, size_t layer_index) {
  // Hash ids of the layer.
  const Tensor ids_t = in.get("input_ids");
  if (ids_t.rank() != 2)
    throw FormatError(
        error_message(in.path(), "input_ids must be (batch, seq), got " + ids_t.describe()));
  const int64_t B = ids_t.dim(0), T_ = ids_t.dim(1);
  const Tensor ids64 = ids_t.to(DType::kI64);
  const std::vector<int64_t> ids(ids64.data<int64_t>(), ids64.data<int64_t>() + ids64.numel());
  std::vector<int32_t> hash_ids(static_cast<size_t>(B * T_ * hasher.ids_per_token()));
  hasher.hash(ids, static_cast<size_t>(B), static_cast<size_t>(T_), layer_index, hash_ids, 0);

  std::vector<int64_t> head_sizes;
  for (const auto& order : hasher.primes(layer_index))
    head_sizes.insert(head_sizes.end(), order.begin(), order.end());
  nn::EngramLayer<T> layer(cfg, head_sizes);
  const int64_t M = cfg.hc_mult, d = cfg.hidden_size;
  const std::vector<int64_t> hs_shape = {B, T_, M, d};
  const std::vector<T> hidden = as_vector<T>(require_tensor(in, "hidden_states", hs_shape));
  const std::vector<T> grad_out = as_vector<T>(require_tensor(in, "grad_output", hs_shape));

  // Parameters: every reference name must be present with its shape; nothing else under param.
  auto named = layer.params().named(cfg);
  std::vector<std::string> known = {std::string("param.") + kTableName};
  for (auto& p : named) {
    const std::vector<T> v = as_vector<T>(require_tensor(in, "param." + p.name, p.shape));
    std::copy(v.begin(), v.end(), p.data);
    known.push_back("param." + p.name);
  }
  for (const auto& name : in.names()) {
    if (name.rfind("param.", 0) == 0 &&
        std::find(known.begin(), known.end(), name) == known.end()) {
      throw FormatError(
          error_message(in.path(), "unexpected parameter \"" + name + "\" for this layer config"));
    }
  }
  const Tensor table =
      require_tensor(in, std::string("param.") + kTableName, {layer.table_rows(), cfg.row_width()});
  const memory::TensorRowStore store(table.dtype() == DType::kF64 || table.dtype() == DType::kF32 ||
                                             table.dtype() == DType::kBF16
                                         ? table
                                         : table.to(DType::kF32));

  std::vector<T> out(hidden.size());
  nn::EngramSaved<T> saved;
  layer.forward(hidden.data(), hash_ids.data(), B, T_, store, out.data(), saved);
  std::vector<T> d_hidden(hidden.size(), T(0));
  nn::EngramParams<T> grads;
  grads.zeros(cfg);
  nn::SparseRowGrad<T> table_grad;
  layer.backward(grad_out.data(), hidden.data(), saved, d_hidden.data(), grads, table_grad);

  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.emplace_back("output", to_tensor(hs_shape, out.data()));
  tensors.emplace_back("grad_hidden_states", to_tensor(hs_shape, d_hidden.data()));
  // The table's gradient, dense as the reference reports it (zero where no row was read).
  Tensor dense(std::is_same_v<T, double> ? DType::kF64 : DType::kF32,
               {layer.table_rows(), cfg.row_width()});
  T* dt = dense.data<T>();
  for (size_t r = 0; r < table_grad.rows.size(); ++r) {
    std::copy_n(table_grad.values.data() + r * static_cast<size_t>(table_grad.width),
                table_grad.width, dt + table_grad.rows[r] * table_grad.width);
  }
  tensors.emplace_back(std::string("grad.") + kTableName, std::move(dense));
  for (auto& g : grads.named(cfg))
    tensors.emplace_back("grad." + g.name, to_tensor(g.shape, g.data));
  write_safetensors(out_path, tensors, {{"format", "pt"}, {"producer", "engram run-layer"}});
}

}  // namespace

int run_layer(int argc, char** argv) {
  const Args args(argc, argv, 2, {"tokenizer", "config", "layer", "in", "out"}, {});
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const int layer_id = static_cast<int>(args.integer("layer", -1, 0, 1 << 20));
  if (!args.has("layer")) throw UsageError("missing required option --layer");
  const std::string in_path = args.required("in"), out_path = args.required("out");
  const auto config = hash::EngramHashConfig::from_file(args.required("config"));
  if (config.hidden_size < 1) {
    throw ConfigError(error_message(args.required("config"),
                                    "hidden_size: run-layer needs the layer's hidden_size"));
  }
  const SafetensorsFile in = SafetensorsFile::open(in_path);
  const auto tokenizer = text::Tokenizer::from_file(args.required("tokenizer"));
  auto table = text::CompressionTable::build(tokenizer);
  const hash::NgramHasher hasher(config, std::move(table.lut), table.compressed_size());
  const size_t layer_index = hasher.layer_index(layer_id);

  nn::EngramLayerConfig cfg = nn::EngramLayerConfig::from_hash_config(config);
  cfg.bias = in.contains("param.value_proj.bias");
  cfg.short_conv = in.contains("param.short_conv.conv.weight");
  if (!in.contains("hidden_states"))
    throw FormatError(error_message(in_path, "missing tensor \"hidden_states\""));
  if (!in.contains("input_ids"))
    throw FormatError(error_message(in_path, "missing tensor \"input_ids\""));
  if (in.get("hidden_states").dtype() == DType::kF64) {
    run<double>(in, out_path, cfg, hasher, layer_index);
  } else {
    run<float>(in, out_path, cfg, hasher, layer_index);
  }
  return 0;
}

}  // namespace engram::cli
