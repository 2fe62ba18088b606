#include "engram/train/trainer.h"

#include <chrono>
#include <cmath>
#include <map>

#include "engram/cuda/device.h"
#include "engram/nn/loss.h"
#include "engram/train/checkpoint.h"
#include "engram/train/gpu_optimizer.h"
#include "engram/train/optimizer.h"
#include "engram/util/error.h"
#include "engram/util/file.h"

namespace engram::train {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void scale_sparse(nn::SparseRowGrad<float>& g, float s) {
  for (auto& v : g.values) v *= s;
}

bool is_table(const std::string& name) {
  return name == "embed" || name.ends_with(".engram.table");
}

std::string describe_difference(const model::ModelConfig& a, const model::ModelConfig& b) {
  std::string d;
  if (!(a.model == b.model)) d += " [model]";
  if (a.moe.has_value() != b.moe.has_value() || (a.moe && !(*a.moe == *b.moe))) d += " [moe]";
  if (a.engram.has_value() != b.engram.has_value() || (a.engram && !(*a.engram == *b.engram)))
    d += " [engram]";
  return d;
}

}  // namespace

std::vector<int32_t> token_byte_lengths(const text::Tokenizer& tokenizer) {
  const auto V = static_cast<uint32_t>(tokenizer.vocab_size());
  std::vector<int32_t> out(V, 0);
  for (uint32_t id = 0; id < V; ++id) {
    if (!tokenizer.id_to_token(id)) continue;  // a hole in the vocabulary
    const uint32_t ids[1] = {id};
    out[id] = static_cast<int32_t>(tokenizer.decode_bytes(ids).size());
  }
  for (const auto& t : tokenizer.added_tokens()) {
    if (t.special && t.id < V) out[t.id] = 0;
  }
  return out;
}

void check_device(const std::string& device) {
  if (device == "cpu") return;
  if (device != "cuda") {
    throw ConfigError("--device: '" + device + "' (expected cpu or cuda)");
  }
  if (!cuda::compiled_with_cuda()) {
    throw Error("--device cuda: this engram was built without CUDA");
  }
  if (cuda::device_count() == 0) throw Error("--device cuda: no CUDA device on this machine");
}

namespace {

// Model: model::Transformer<float> or model::GpuTransformer (forward, logits, config).
template <class Model>
EvalResult evaluate_model(Model& model, DataLoader& loader, int64_t max_tokens,
                          const std::vector<int32_t>& byte_lengths,
                          std::vector<double>* window_losses) {
  loader.reset();
  EvalResult r;
  double nll = 0;
  Batch b;
  while ((max_tokens <= 0 || r.tokens < max_tokens) && loader.next(b)) {
    const double loss = model.forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, b.hash_ids);
    const int64_t n = b.batch * b.seq;  // every target of a window is counted
    nll += loss * static_cast<double>(n);
    if (window_losses != nullptr) {
      const int64_t V = model.config().model.vocab_size;
      const auto& logits = model.logits();
      for (int64_t w = 0; w < b.batch; ++w) {
        window_losses->push_back(nn::cross_entropy_forward(
            logits.data() + w * b.seq * V, b.targets.data() + w * b.seq, b.seq, V));
      }
    }
    r.tokens += n;
    for (const int64_t t : b.targets) {
      if (t >= 0 && static_cast<size_t>(t) < byte_lengths.size()) r.bytes += byte_lengths[static_cast<size_t>(t)];
    }
  }
  if (r.tokens == 0) {
    throw InputError("evaluate: the validation shard holds no full window of seq_len + 1 tokens");
  }
  r.loss = nll / static_cast<double>(r.tokens);
  r.ppl = std::exp(r.loss);
  r.bits_per_byte = r.bytes > 0 ? nll / std::log(2.0) / static_cast<double>(r.bytes) : NAN;
  return r;
}

}  // namespace

EvalResult evaluate(model::Transformer<float>& model, DataLoader& loader, int64_t max_tokens,
                    const std::vector<int32_t>& byte_lengths, std::vector<double>* window_losses) {
  return evaluate_model(model, loader, max_tokens, byte_lengths, window_losses);
}

EvalResult evaluate(model::GpuTransformer& model, DataLoader& loader, int64_t max_tokens,
                    const std::vector<int32_t>& byte_lengths, std::vector<double>* window_losses) {
  return evaluate_model(model, loader, max_tokens, byte_lengths, window_losses);
}

TrainResult train(const model::ModelConfig& config_in, const TrainOptions& opt) {
  model::ModelConfig config = config_in;
  if (opt.steps) {
    if (*opt.steps < 1) throw ConfigError("--steps: " + std::to_string(*opt.steps) + " (must be >= 1)");
    config.train.steps = *opt.steps;
    if (config.train.warmup_steps > config.train.steps) config.train.warmup_steps = config.train.steps;
  }
  config.validate("config");
  check_device(opt.device);
  const bool on_gpu = opt.device == "cuda";
  const model::TrainConfig& tc = config.train;
  if (config.moe && config.moe->seq_aux_alpha != 0) {
    throw ConfigError("config: moe.seq_aux_alpha = " + std::to_string(config.moe->seq_aux_alpha) +
                      ": the sequence-wise balance loss is not implemented yet (set it to 0; "
                      "balance comes from the auxiliary-loss-free bias update)");
  }
  if (tc.data.empty()) {
    throw ConfigError("config: train.data: empty (the folder written by `engram prepare`)");
  }
  if (opt.out_dir.empty()) throw ConfigError("train: no output directory given");
  const RunDir run{opt.out_dir};

  if (!opt.resume && path_exists(run.checkpoint())) {
    throw InputError(error_message(run.checkpoint(),
                                   "a checkpoint exists already: pass --resume to continue this "
                                   "run, or choose another --out"));
  }
  if (opt.resume && !path_exists(run.checkpoint())) {
    throw IoError(error_message(run.checkpoint(), "--resume: no checkpoint to resume from"));
  }

  // Data and text context.
  const DataManifest manifest = read_manifest(tc.data);
  if (manifest.vocab_size > config.model.vocab_size) {
    throw ConfigError(error_message(
        tc.data + "/manifest.json",
        "tokenizer.vocab_size = " + std::to_string(manifest.vocab_size) +
            " does not fit model.vocab_size = " + std::to_string(config.model.vocab_size)));
  }
  const TextContext text = make_text_context(config, opt.tokenizer);
  const hash::NgramHasher* hasher = text.hasher.get();
  DataLoader train_loader =
      open_data_loader(tc.data, "train.bin", config, hasher, DataLoader::Mode::kRandom);
  DataLoader val_loader =
      open_data_loader(tc.data, "val.bin", config, hasher, DataLoader::Mode::kSequential);

  // Model and optimizers.
  model::Transformer<float> model(config, text.head_sizes, tc.seed);
  model::TransformerParams<float>& P = model.params();
  const int64_t accum = tc.grad_accum;
  model::TransformerParams<float> acc;  // summed gradients when accumulating
  if (accum > 1) acc.zeros(config, text.head_sizes, false);
  model::TransformerParams<float>& G = accum > 1 ? acc : model.grads();

  AdamWOptions aw;
  aw.weight_decay = tc.weight_decay;
  AdamW dense(aw);
  std::map<std::string, nn::NamedParam<float>> grad_by_name;
  for (auto& g : G.named()) grad_by_name.emplace(g.name, g);
  std::vector<std::span<float>> dense_grads;
  std::unique_ptr<SparseRowAdam> embed_opt;
  std::vector<std::unique_ptr<SparseRowAdam>> table_opts;
  std::map<std::string, SparseRowAdam*> sparse_by_name;  // the embedding's and the tables'
  for (auto& p : P.named()) {
    if (p.name == "embed") {
      embed_opt = std::make_unique<SparseRowAdam>(p.data, p.shape[0], p.shape[1]);
      sparse_by_name.emplace(p.name, embed_opt.get());
      continue;
    }
    if (is_table(p.name)) {
      table_opts.push_back(std::make_unique<SparseRowAdam>(p.data, p.shape[0], p.shape[1]));
      sparse_by_name.emplace(p.name, table_opts.back().get());
      continue;
    }
    auto it = grad_by_name.find(p.name);
    if (it == grad_by_name.end() || it->second.size != p.size) {
      throw Error("train: no gradient buffer for parameter " + p.name);
    }
    dense.add_group(p.name, p.data, it->second.data, p.size, p.shape.size() >= 2);
    dense_grads.emplace_back(it->second.data, static_cast<size_t>(p.size));
  }
  // The optimizers' checkpoint groups, made afresh for every save (they carry the step count
  // as of their making).
  auto optimizer_groups = [&] {
    std::vector<OptimizerCheckpoint> g;
    g.push_back(optimizer_checkpoint("dense", dense));
    g.push_back(optimizer_checkpoint("embed", *embed_opt));
    for (size_t i = 0; i < table_opts.size(); ++i) {
      g.push_back(optimizer_checkpoint("engram." + std::to_string(i), *table_opts[i]));
    }
    return g;
  };

  make_directories(opt.out_dir);
  int64_t start = 0;
  if (opt.resume) {
    const CheckpointState prev_state = read_checkpoint_metadata(run.checkpoint());
    const model::ModelConfig prev =
        model::ModelConfig::from_toml(prev_state.config_toml, run.checkpoint() + " (config_toml)");
    const std::string diff = describe_difference(prev, config);
    if (!diff.empty()) {
      throw ConfigError(error_message(run.checkpoint(),
                                      "--resume: the config's" + diff +
                                          " differ from the checkpoint's (see " + run.config() + ")"));
    }
    if (prev_state.data_seed != tc.seed) {
      throw ConfigError(error_message(
          run.checkpoint(), "--resume: train.seed = " + std::to_string(tc.seed) +
                                " but the run was started with seed " +
                                std::to_string(prev_state.data_seed)));
    }
    std::vector<OptimizerCheckpoint> groups = optimizer_groups();
    const CheckpointState st = load_checkpoint(run.checkpoint(), P, groups);
    start = st.step;
  }
  write_file_atomic(run.config(), config.to_toml());
  // On the GPU: the model (after a resume has loaded the parameters and biases) and its
  // optimizers, whose state starts from the host optimizers' (zeros, or the checkpoint's). The
  // host optimizers above then only carry the state to and from checkpoints.
  std::unique_ptr<model::GpuTransformer> gpu;
  std::unique_ptr<GpuOptimizer> gpu_opt;
  std::unique_ptr<GpuGradAccumulator> gpu_acc;  // accum > 1
  std::vector<SparseRowAdam*> gpu_sparse_hosts;  // host optimizers, gpu_opt's table order
  if (on_gpu) {
    gpu = std::make_unique<model::GpuTransformer>(model, opt.gpu);
    gpu_opt = std::make_unique<GpuOptimizer>(*gpu, aw);
    for (const std::string& name : gpu_opt->sparse_names()) {
      auto it = sparse_by_name.find(name);
      if (it == sparse_by_name.end()) throw Error("train: no host optimizer for table " + name);
      gpu_sparse_hosts.push_back(it->second);
    }
    if (opt.resume) gpu_opt->upload_state(dense, gpu_sparse_hosts);
    if (accum > 1) gpu_acc = std::make_unique<GpuGradAccumulator>(*gpu);
  }

  const int64_t total = tc.steps;
  const int64_t end = std::min(total, opt.stop_at ? std::max<int64_t>(*opt.stop_at, start) : total);
  if (start >= end && opt.on_note) {
    opt.on_note("nothing to train: the checkpoint is at step " + std::to_string(start) +
                " and the run ends at step " + std::to_string(end) +
                " (a larger --steps continues it)");
  }
  MetricsLog log(run.metrics(), opt.resume ? start : -1);
  const std::vector<int32_t> byte_lengths = token_byte_lengths(*text.tokenizer);
  const LrSchedule schedule{tc.lr, tc.warmup_steps, total, tc.min_lr_ratio};
  schedule.validate();

  auto save = [&](int64_t step) {
    if (on_gpu) {
      // The host copies the checkpoint is written from: parameters (downloaded beside P, whose
      // buffers the host optimizers point into) and optimizer state. The MoE biases on the host
      // are current already.
      model::TransformerParams<float> now;
      gpu->download_params(now);
      auto dst = P.named();
      auto src = now.named();
      if (dst.size() != src.size()) throw Error("train: the GPU model's parameters differ");
      for (size_t i = 0; i < dst.size(); ++i) {
        if (dst[i].size != src[i].size) throw Error("train: GPU parameter " + src[i].name);
        std::copy(src[i].data, src[i].data + src[i].size, dst[i].data);
      }
      gpu_opt->download_state(dense, gpu_sparse_hosts);
    }
    CheckpointState st;
    st.step = step;
    st.data_seed = tc.seed;
    st.data_position = step * accum;  // the next training batch
    st.config_toml = config.to_toml();
    save_checkpoint(run.checkpoint(), P, optimizer_groups(), st);
    if (opt.on_note) opt.on_note("checkpoint: " + run.checkpoint() + " (step " + std::to_string(step) + ")");
  };
  auto draw = [&]() {
    write_file_atomic(run.loss_svg(),
                      loss_curve_svg({{"", log.points()}}, "engram train: " + opt.out_dir));
  };

  TrainResult result;
  result.checkpoint = run.checkpoint();
  const auto t_start = Clock::now();
  double tokens_done = 0;
  const double tokens_per_step = static_cast<double>(tc.batch_size * tc.seq_len * accum);
  std::vector<nn::SparseRowGrad<float>> table_acc(table_opts.size());
  // accum > 1: (summed gradient, the model's gradient) buffer pairs, fixed for the whole run.
  std::vector<std::pair<std::span<float>, std::span<const float>>> accum_pairs;
  if (accum > 1) {
    auto dst = acc.named();
    auto src = model.grads().named();
    for (size_t i = 0; i < dst.size(); ++i) {
      accum_pairs.emplace_back(std::span<float>(dst[i].data, static_cast<size_t>(dst[i].size)),
                               std::span<const float>(src[i].data, static_cast<size_t>(src[i].size)));
    }
  }
  nn::SparseRowGrad<float> embed_acc;
  int64_t step = start;
  for (; step < end; ++step) {
    const auto t0 = Clock::now();
    double loss_sum = 0;
    if (accum > 1 && on_gpu) gpu_acc->clear();
    if (accum > 1 && !on_gpu) {
      for (auto& [dst, src] : accum_pairs) std::fill(dst.begin(), dst.end(), 0.0f);
      embed_acc = {};
      for (auto& t : table_acc) t = {};
    }
    for (int64_t k = 0; k < accum; ++k) {
      const Batch b = train_loader.batch_at(step * accum + k);
      const double loss =
          on_gpu ? gpu->forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, b.hash_ids)
                 : model.forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, b.hash_ids);
      if (!std::isfinite(loss)) {
        throw Error("train: the loss is " + std::to_string(loss) + " at step " +
                    std::to_string(step + 1) + " (lr " + std::to_string(schedule.lr(step + 1)) +
                    "); lower train.lr or train.grad_clip");
      }
      loss_sum += loss;
      if (on_gpu) {
        gpu->backward();
        // The bias update on both copies: the GPU's for the next micro-batch, the host's (the
        // same arithmetic on the same loads) for checkpoints.
        const auto counts = gpu->moe_expert_counts();
        gpu->update_moe_bias();
        for (size_t l = 0; l < counts.size(); ++l) {
          if (counts[l].empty()) continue;
          nn::aux_free_bias_update(P.layers[l].moe_bias.data(), counts[l].data(),
                                   config.moe->num_experts, config.moe->bias_update_gamma);
        }
        if (accum > 1) gpu_acc->add();
        continue;
      }
      model.backward();
      model.update_moe_bias();
      if (accum > 1) {
        for (const auto& [dst, src] : accum_pairs) {
          for (size_t j = 0; j < dst.size(); ++j) dst[j] += src[j];
        }
        add_sparse_grad(embed_acc, model.embed_grad());
        for (size_t i = 0; i < table_acc.size(); ++i) {
          add_sparse_grad(table_acc[i], model.engram_table_grads()[i]);
        }
      }
    }
    const double lr = schedule.lr(step + 1);
    const double max_norm = tc.grad_clip > 0 ? tc.grad_clip : INFINITY;
    auto check_norm = [&](double value) {
      if (!std::isfinite(value)) {
        throw Error("train: the gradient norm is " + std::to_string(value) + " at step " +
                    std::to_string(step + 1) + "; lower train.lr");
      }
    };
    double norm = 0;
    if (on_gpu) {
      // Clipping and every optimizer step on the device (GpuOptimizer): nothing crosses PCIe
      // but the norm (and the Engram layers' small dense parameters, sync_engram_params).
      GpuGradients g = accum > 1 ? gpu_acc->mean() : gpu_opt->model_gradients();
      norm = gpu_opt->clip_grad_norm(g, max_norm);
      check_norm(norm);
      gpu_opt->step(g, lr, tc.engram_lr_multiplier * lr);
    } else {
      nn::SparseRowGrad<float>* embed_g = nullptr;
      std::vector<nn::SparseRowGrad<float>*> sparse;
      std::vector<nn::SparseRowGrad<float>> single;  // accum == 1: copies of the model's grads
      if (accum > 1) {
        const float s = 1.0f / static_cast<float>(accum);
        for (auto& g : dense_grads)
          for (float& v : g) v *= s;
        scale_sparse(embed_acc, s);
        for (auto& t : table_acc) scale_sparse(t, s);
        embed_g = &embed_acc;
        for (auto& t : table_acc) sparse.push_back(&t);
      } else {
        single.reserve(1 + table_opts.size());
        single.push_back(model.embed_grad());
        for (const auto& t : model.engram_table_grads()) single.push_back(t);
        embed_g = &single[0];
        for (size_t i = 1; i < single.size(); ++i) sparse.push_back(&single[i]);
      }
      std::vector<nn::SparseRowGrad<float>*> all_sparse = sparse;
      all_sparse.push_back(embed_g);
      norm = clip_grad_norm(dense_grads, all_sparse, max_norm);
      check_norm(norm);
      dense.step(lr);
      embed_opt->step(*embed_g, lr);
      for (size_t i = 0; i < table_opts.size(); ++i) {
        table_opts[i]->step(*sparse[i], tc.engram_lr_multiplier * lr);
      }
    }

    StepReport r;
    r.step = step + 1;
    r.total_steps = total;
    r.first_step = start;
    r.train_loss = loss_sum / static_cast<double>(accum);
    r.lr = lr;
    r.grad_norm = norm;
    r.tokens_per_s = tokens_per_step / std::max(seconds_since(t0), 1e-9);
    tokens_done += tokens_per_step;
    const bool interrupted = opt.interrupt != nullptr && opt.interrupt->load();
    const bool last = r.step == end;
    // Evaluations fall on multiples of eval_every and the schedule's last step; a run stopped
    // early (stop_at, interrupt) only saves, so that its log continues exactly on resume.
    const bool eval_now =
        r.step == total || (tc.eval_every > 0 && r.step % tc.eval_every == 0);
    const bool save_now = eval_now || last || interrupted;
    if (eval_now) {
      const EvalResult e = on_gpu ? evaluate(*gpu, val_loader, tc.eval_tokens, byte_lengths)
                                  : evaluate(model, val_loader, tc.eval_tokens, byte_lengths);
      r.val_loss = e.loss;
      r.val_bits_per_byte = e.bits_per_byte;
      result.last_val_loss = e.loss;
    }
    r.elapsed_s = seconds_since(t_start);
    log.append(r);
    result.last_train_loss = r.train_loss;
    if (opt.on_step) opt.on_step(r);
    if (save_now) {
      save(r.step);
      draw();
    }
    if (interrupted && !last) {
      result.interrupted = true;
      ++step;
      break;
    }
  }
  if (step == start) draw();  // nothing to do (already at the end): still leave a plot
  result.steps_done = step;
  const double elapsed = seconds_since(t_start);
  result.tokens_per_s = elapsed > 0 ? tokens_done / elapsed : 0;
  return result;
}

}  // namespace engram::train
