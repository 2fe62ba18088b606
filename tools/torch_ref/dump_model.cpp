// Dumps one forward + backward of the CPU Transformer (or, with --device cuda, of
// model::GpuTransformer built from it) for the PyTorch mirror (tools/torch_ref/model_ref.py),
// which loads the parameters, recomputes everything with torch autograd and compares.
//
//   engram_dump_model --config FILE.toml --out OUT.safetensors [--dtype f32|f64] [--batch B]
//                     [--seq T] [--seed S] [--device cpu|cuda] [--math exact|tf32]
//                     [--head-dim D]
//
// --device cuda (needs a GPU and a CUDA build; float32 only): the CPU model is built and perturbed
// exactly as for cpu, then uploaded into a GpuTransformer (Math::kExact FP32 GEMMs, or kTf32 with
// --math tf32), which runs forward and backward on the same inputs and hash ids; logits, loss,
// gradients (sparse ones scattered to dense as on the CPU) and expert loads are the GPU's. The
// parameters written are the CPU model's, i.e. what was uploaded. The GPU attention takes
// head_dim 64 or 128 only: --head-dim D overrides [model] head_dim (the written config_toml
// carries it, so the mirror builds the same model).
//
// The model is built with its seeded init, then every parameter and buffer is perturbed with
// small deterministic noise: the init leaves the Engram conv weights at 0, the norm weights at 1,
// the mHC parameters at special values and the MoE biases at 0, where a bug could hide. Inputs
// and targets are uniform in [0, vocab) (a few targets -1, not counted); Engram hash ids come from
// an NgramHasher over a synthetic compression table lut[id] = id % V', V' = 3/4 of the vocabulary.
//
// Written (dtype F32 or F64 as --dtype; ids I64/I32):
//   param.<name>   every TransformerParams::named() entry, embed and Engram tables included
//   buffer.<name>  every named_buffers() entry (MoE selection biases)
//   inputs, targets (B, T) I64;  hash_ids (L_engram, B, T, H) I32 (only with Engram)
//   logits (B*T, V);  loss (1)
//   grad.<name>    every dense gradient, and grad.embed / grad.layers.{l}.engram.table scattered
//                  from the sparse row gradients to dense
//   moe_counts.{l} (E) I64, the expert loads of every MoE layer
// Metadata: config_toml, dtype, batch, seq, seed, engram_head_sizes (JSON list of lists); with
// --device cuda also device ("cuda"), math ("exact" or "tf32") and gpu (the device's name). A cpu
// dump has no device key (its bytes are those of the tool before --device existed).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engram/cuda/device.h"
#include "engram/hash/ngram_hasher.h"
#include "engram/model/config.h"
#include "engram/model/gpu_transformer.h"
#include "engram/model/safetensors.h"
#include "engram/model/transformer.h"
#include "engram/tensor/tensor.h"
#include "engram/util/error.h"

namespace {

using engram::DType;
using engram::Tensor;
using engram::model::ModelConfig;
using engram::model::Transformer;
using engram::model::TransformerParams;

struct Args {
  std::string config, out, dtype = "f32", device = "cpu", math;
  int64_t batch = 0, seq = 0, head_dim = 0;
  uint64_t seed = 1;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "engram_dump_model: %s\nusage: engram_dump_model --config FILE.toml --out "
               "OUT.safetensors [--dtype f32|f64] [--batch B] [--seq T] [--seed S]\n"
               "                         [--device cpu|cuda] [--math exact|tf32] "
               "[--head-dim D]\n",
               why.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) usage("missing value for " + k);
    const std::string v = argv[++i];
    if (k == "--config") {
      a.config = v;
    } else if (k == "--out") {
      a.out = v;
    } else if (k == "--dtype") {
      a.dtype = v;
    } else if (k == "--batch") {
      a.batch = std::stoll(v);
    } else if (k == "--seq") {
      a.seq = std::stoll(v);
    } else if (k == "--seed") {
      a.seed = std::stoull(v);
    } else if (k == "--device") {
      a.device = v;
    } else if (k == "--math") {
      a.math = v;
    } else if (k == "--head-dim") {
      a.head_dim = std::stoll(v);
      if (a.head_dim < 1) usage("--head-dim must be >= 1");
    } else {
      usage("unknown option " + k);
    }
  }
  if (a.config.empty() || a.out.empty()) usage("--config and --out are required");
  if (a.dtype != "f32" && a.dtype != "f64") usage("--dtype must be f32 or f64");
  if (a.device != "cpu" && a.device != "cuda") usage("--device must be cpu or cuda");
  if (a.device == "cpu" && !a.math.empty()) usage("--math applies to --device cuda only");
  if (a.device == "cuda") {
    if (a.math.empty()) a.math = "exact";
    if (a.math != "exact" && a.math != "tf32") usage("--math must be exact or tf32");
    if (a.dtype != "f32") {
      usage("--device cuda runs model::GpuTransformer, which computes in float32 only: use "
            "--dtype f32 (f64 dumps come from --device cpu)");
    }
  }
  return a;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Standard deviation of the noise added to a parameter: large enough that every path (conv,
// mHC dynamics, norm weights) carries weight in the result, small enough to stay near init.
double noise_std(const std::string& name) {
  if (contains(name, "short_conv.conv.weight")) return 0.3;  // init 0
  if (contains(name, ".hc_") || name.rfind("hc_head.", 0) == 0) {
    if (ends_with(name, ".alpha")) return 0.3;  // init 0.01: give the dynamic part weight
    if (ends_with(name, ".b")) return 0.2;
    return 0.02;  // phi (init std 0.002)
  }
  if (contains(name, "norm")) return 0.1;  // norm weights, init 1
  return 0.02;
}

template <class T>
constexpr DType dtype_of() {
  return sizeof(T) == 8 ? DType::kF64 : DType::kF32;
}

std::string json_list(const std::vector<std::vector<int64_t>>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    s += i ? ",[" : "[";
    for (size_t j = 0; j < v[i].size(); ++j) s += (j ? "," : "") + std::to_string(v[i][j]);
    s += "]";
  }
  return s + "]";
}

template <class T>
std::vector<T> densify(const engram::nn::SparseRowGrad<T>& g, int64_t size) {
  std::vector<T> out(static_cast<size_t>(size), T(0));
  for (size_t r = 0; r < g.rows.size(); ++r) {
    for (int64_t j = 0; j < g.width; ++j) {
      out[static_cast<size_t>(g.rows[r] * g.width + j)] +=
          g.values[r * static_cast<size_t>(g.width) + static_cast<size_t>(j)];
    }
  }
  return out;
}

template <class T>
int run(const Args& a) {
  ModelConfig config = ModelConfig::from_file(a.config);
  if (a.head_dim > 0) {
    config.model.head_dim = a.head_dim;
    config.validate(a.config + " with --head-dim " + std::to_string(a.head_dim));
  }
  const int64_t B = a.batch > 0 ? a.batch : config.train.batch_size;
  const int64_t Tn = a.seq > 0 ? a.seq : config.train.seq_len;
  const int64_t N = B * Tn, V = config.model.vocab_size;

  std::mt19937_64 rng(a.seed * 7919ULL + 17);
  std::vector<int64_t> inputs(static_cast<size_t>(N)), targets(static_cast<size_t>(N));
  std::uniform_int_distribution<int64_t> tok(0, V - 1);
  for (auto& x : inputs) x = tok(rng);
  for (auto& x : targets) x = tok(rng);
  for (int64_t i = 3; i < N; i += 11) targets[static_cast<size_t>(i)] = -1;

  std::vector<std::vector<int64_t>> head_sizes;
  std::vector<int32_t> hash_ids;
  int64_t n_engram = 0, H = 0;
  if (config.engram) {
    const auto hasher = engram::hash::NgramHasher::synthetic(config.engram_hash_config(), V);
    head_sizes = engram::model::engram_head_sizes(hasher);
    n_engram = static_cast<int64_t>(hasher.num_layers());
    H = hasher.ids_per_token();
    hash_ids.resize(static_cast<size_t>(n_engram * N * H));
    hasher.hash_all_layers(inputs, static_cast<size_t>(B), static_cast<size_t>(Tn), hash_ids);
  }

  Transformer<T> model(config, head_sizes, a.seed);
  std::mt19937_64 noise(a.seed * 1000003ULL + 99);
  for (auto& p : model.params().named()) {
    std::normal_distribution<double> d(0.0, noise_std(p.name));
    for (int64_t i = 0; i < p.size; ++i) p.data[i] += static_cast<T>(d(noise));
  }
  for (auto& p : model.params().named_buffers()) {
    std::normal_distribution<double> d(0.0, 0.01);
    for (int64_t i = 0; i < p.size; ++i) p.data[i] += static_cast<T>(d(noise));
  }

  // The results written: the CPU model's, or (--device cuda) the GPU model's in the same layouts.
  double loss = 0;
  std::vector<T> logits;
  TransformerParams<T> gpu_grads;  // cuda: dense gradients (the layout of model.grads())
  engram::nn::SparseRowGrad<T> gpu_embed_grad;
  std::vector<engram::nn::SparseRowGrad<T>> gpu_table_grads;
  std::vector<std::vector<int64_t>> counts;
  std::string gpu_name;
  if (a.device == "cuda") {
    if constexpr (std::is_same_v<T, float>) {
      if (!engram::cuda::compiled_with_cuda()) {
        throw engram::Error("--device cuda: this engram_dump_model was built without CUDA "
                            "(ENGRAM_ENABLE_CUDA=OFF)");
      }
      if (engram::cuda::device_count() < 1) {
        throw engram::Error("--device cuda: no usable CUDA device (no GPU, no driver, or "
                            "CUDA_VISIBLE_DEVICES hides it); run it on the GPU host");
      }
      gpu_name = engram::cuda::device_name(0);
      engram::model::GpuTransformerOptions options;
      options.math = a.math == "tf32" ? engram::cuda::Math::kTf32 : engram::cuda::Math::kExact;
      engram::model::GpuTransformer gpu(model, options);
      loss = gpu.forward(inputs.data(), targets.data(), B, Tn, hash_ids);
      gpu.backward();
      logits = gpu.logits();
      gpu.download_grads(gpu_grads, gpu_embed_grad, gpu_table_grads);
      counts = gpu.moe_expert_counts();
    } else {
      throw engram::Error("--device cuda needs --dtype f32");  // parse() already rejects it
    }
  } else {
    loss = model.forward(inputs.data(), targets.data(), B, Tn, hash_ids);
    model.backward();
    logits = model.logits();
    counts = model.moe_expert_counts();
  }
  const bool on_gpu = a.device == "cuda";

  // Everything written must outlive write_safetensors: owned vectors live here.
  std::vector<std::vector<T>> owned;
  owned.reserve(64);
  std::vector<std::pair<std::string, Tensor>> tensors;
  const DType dt = dtype_of<T>();
  std::vector<engram::nn::NamedParam<T>> params = model.params().named();
  for (auto& p : params)
    tensors.emplace_back("param." + p.name, Tensor::view(dt, p.shape, p.data, nullptr));
  std::vector<engram::nn::NamedParam<T>> buffers = model.params().named_buffers();
  for (auto& p : buffers)
    tensors.emplace_back("buffer." + p.name, Tensor::view(dt, p.shape, p.data, nullptr));
  tensors.emplace_back("inputs", Tensor::view(DType::kI64, {B, Tn}, inputs.data(), nullptr));
  tensors.emplace_back("targets", Tensor::view(DType::kI64, {B, Tn}, targets.data(), nullptr));
  if (n_engram > 0) {
    tensors.emplace_back("hash_ids",
                         Tensor::view(DType::kI32, {n_engram, B, Tn, H}, hash_ids.data(), nullptr));
  }
  tensors.emplace_back("logits", Tensor::view(dt, {N, V}, logits.data(), nullptr));
  std::vector<T> loss_v{static_cast<T>(loss)};
  tensors.emplace_back("loss", Tensor::view(dt, {1}, loss_v.data(), nullptr));
  std::vector<double> loss_d{loss};  // the double the C++ forward returned, before rounding
  tensors.emplace_back("loss_f64", Tensor::view(DType::kF64, {1}, loss_d.data(), nullptr));

  // The dense gradients in the order and shapes of the CPU model's grads(); on the GPU the
  // downloaded tensor of the same name (which must exist with the same size).
  std::vector<engram::nn::NamedParam<T>> grads = model.grads().named();
  std::vector<engram::nn::NamedParam<T>> gpu_named;
  if (on_gpu) gpu_named = gpu_grads.named();
  for (auto& g : grads) {
    T* data = g.data;
    if (on_gpu) {
      auto it = std::find_if(gpu_named.begin(), gpu_named.end(),
                             [&](const auto& x) { return x.name == g.name; });
      if (it == gpu_named.end() || it->size != g.size) {
        throw engram::Error("GPU gradient " + g.name + " missing or of another size");
      }
      data = it->data;
    }
    tensors.emplace_back("grad." + g.name, Tensor::view(dt, g.shape, data, nullptr));
  }
  const engram::nn::SparseRowGrad<T>& embed_grad = on_gpu ? gpu_embed_grad : model.embed_grad();
  const std::vector<engram::nn::SparseRowGrad<T>>& table_grads =
      on_gpu ? gpu_table_grads : model.engram_table_grads();
  size_t engram_index = 0;
  for (auto& p : params) {
    const engram::nn::SparseRowGrad<T>* sparse = nullptr;
    if (p.name == "embed") {
      sparse = &embed_grad;
    } else if (ends_with(p.name, "engram.table")) {
      sparse = &table_grads.at(engram_index++);
    }
    if (sparse == nullptr) continue;
    owned.push_back(densify(*sparse, p.size));
    tensors.emplace_back("grad." + p.name, Tensor::view(dt, p.shape, owned.back().data(), nullptr));
  }
  for (size_t l = 0; l < counts.size(); ++l) {
    if (counts[l].empty()) continue;
    tensors.emplace_back("moe_counts." + std::to_string(l),
                         Tensor::view(DType::kI64, {static_cast<int64_t>(counts[l].size())},
                                      counts[l].data(), nullptr));
  }

  std::map<std::string, std::string> meta;
  meta["config_toml"] = config.to_toml();
  meta["dtype"] = a.dtype;
  meta["batch"] = std::to_string(B);
  meta["seq"] = std::to_string(Tn);
  meta["seed"] = std::to_string(a.seed);
  meta["engram_head_sizes"] = json_list(head_sizes);
  if (on_gpu) {
    meta["device"] = "cuda";
    meta["math"] = a.math;
    meta["gpu"] = gpu_name;
  }
  engram::write_safetensors(a.out, tensors, meta);
  std::printf("%s: %s%s, B=%lld T=%lld, %zu tensors, loss %.10g\n", a.out.c_str(),
              a.dtype.c_str(), on_gpu ? (", cuda " + a.math).c_str() : "",
              static_cast<long long>(B), static_cast<long long>(Tn), tensors.size(), loss);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    return a.dtype == "f64" ? run<double>(a) : run<float>(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engram_dump_model: %s\n", e.what());
    return 1;
  }
}
