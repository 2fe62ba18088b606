// engram: the command-line front end. See `engram --help` and DESIGN.md's CLI contract.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "args.h"
#include "commands.h"
#include "engram/util/error.h"

namespace engram::cli {

std::string read_stdin() {
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(0, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(error_message("<stdin>", std::string("read failed: ") + std::strerror(errno)));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void write_stdout(const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(1, s.data() + done, s.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(
          error_message("<stdout>", std::string("write failed: ") + std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
}

}  // namespace engram::cli

namespace {

constexpr const char* kUsage =
    R"(engram — Engram conditional memory: text front end, n-gram hashing, and a language model
with Engram layers (train, eval, generate, serve)

Usage: engram <command> [options]

Commands:
  tokenize --tokenizer DIR [--decode]
      stdin UTF-8 text -> JSON array of token ids (no special tokens added).
      With --decode: stdin JSON array of ids -> text.
  compress --tokenizer DIR [--out FILE.npy]
      Builds the Engram tokenizer-compression table; prints
      {"vocab": N, "compressed": N', "reduction": r}; --out writes the int32 table.
  hash --tokenizer DIR --config CFG.json [--describe]
      stdin {"input_ids": [[ids...], ...]} -> {"layers": {"<layer_id>": [[[ids per token]
      per position] per row]}}. --describe prints the multipliers and primes instead.
  run-layer --tokenizer DIR --config CFG.json --layer L --in IN.safetensors --out OUT.safetensors
      One Engram layer forward and backward on reference-named weights (param.<name>),
      input_ids, hidden_states and grad_output; writes output, grad_hidden_states and
      grad.<name>. float64 when hidden_states is F64, else float32.
  prepare --tokenizer DIR --out DIR [--val-fraction F] [--seed S] [--no-bos]
          [--invalid-utf8 error|latin1|replace] INPUT...
      Tokenizes text corpora (.txt/.md/.rst files, .jsonl with a "text" field; folders are
      searched) into uint32 token shards train.bin / val.bin with a document-level split and
      a manifest.json; prints the split sizes.
  params --config MODEL.toml [--json]
      Parameter accounting of a model config: per component, total (without embedding and
      head), activated per token, Engram table, and the allocation ratio rho.
  train --config FILE.toml --out DIR [--steps N] [--resume] [--stop-at N] [--data DIR]
        [--threads N] [--device cpu|cuda] [--quiet]
      Trains a model on the prepared data named by the config's train.data (or --data);
      progress on stderr, DIR/metrics.jsonl, DIR/loss.svg, DIR/checkpoint.safetensors.
      Ctrl-C stops after the current step with a checkpoint; --resume continues exactly.
      --device cuda: forward, backward and the optimizer on the GPU.
  eval --ckpt DIR [--tokens N] [--data DIR] [--tokenizer DIR] [--threads N] [--windows FILE]
       [--device cpu|cuda] [--engram-tables F.engt[,...]]
      Validation loss of a checkpoint: {"val_loss", "ppl", "bits_per_byte", "tokens"};
      --windows writes the mean loss of every window scored (a JSON array).
      --engram-tables evaluates with the Engram tables of .engt files (one per Engram layer,
      layer_ids order; any row format, e.g. from `engram table convert --format fp8`).
  generate --ckpt DIR --prompt TEXT --max-tokens N [--seed S] [--temperature T] [--top-k K]
           [--top-p P] [--tokenizer DIR] [--threads N] [--device cpu|cuda]
           [--engram-tables F.engt[,...] [--tier host|file] [--cache-rows N] [--table-stats FILE]]
      Continues the prompt (KV cache; greedy at temperature 0) and prints the text.
      --device cuda decodes on the GPU (CUDA graphs; the checkpoint's tables in GPU memory, or
      .engt tables in pinned host memory that the GPU reads, fp8 and int8 rows dequantized as
      the GPU gathers them (--tier host, the default there), or with --tier file each step's
      rows gathered through the file tier into pinned staging before the step runs).
      --engram-tables reads the Engram tables (one .engt per Engram layer, layer_ids order,
      each with the model's table rows and width) from the memory tier instead of the
      checkpoint, whose tables then stay on disk (memory holds the dense weights only).
      --tier file (default on the CPU) prefetches each step's rows on a background thread as
      soon as the step's tokens are hashed; each Engram layer waits only for its own rows (on
      the GPU the rows are gathered before the step). --tier host
      loads the tables into memory. --table-stats (file tier) writes one JSON line per step:
      rows, unique, hits, blocks and bytes read, I/O wait, and stall_ms (time the layers
      waited for their rows).
  serve --ckpt DIR [--host 127.0.0.1] [--port 8080] [--tokenizer DIR] [--device cpu|cuda]
        [--threads N] [--max-batch 8] [--max-queue 64]
        [--engram-tables F.engt[,...] [--tier host|file] [--cache-rows N]]
        [--max-requests N] [--timeout S]
      HTTP/1.1 JSON API over the generate decoder, prompts decoded in batches of --max-batch
      (continuous batching; more than --max-queue waiting: 503):
        GET /health -> {"status": "ok", "device", "model", "requests"}
        POST /generate {"prompt", "max_tokens", "temperature", "top_k", "top_p", "seed"}
          -> {"text", "completion", "prompt_tokens", "tokens", "stop", "prefill_ms",
              "decode_ms", "tokens_per_s"[, "tables": per-request file-tier statistics,
              CPU only]}
      Errors are {"error": MESSAGE} with 400/404/405/408/411/413/503; --port 0 picks a free port
      (printed on stderr); --max-requests stops after N requests, Ctrl-C after the current one.
  plot --out FILE.svg [--title T] RUN_DIR...
      One SVG of the loss curves of several runs (their metrics.jsonl).
  table convert --in FILE.safetensors --tensor NAME --format f32|bf16|fp8|int8 --out FILE.engt
      Writes a 2-D tensor (F32, BF16 or F64) as an .engt table; prints {"out", "format",
      "rows", "width", "row_bytes", "bytes", "max_abs_error", "rms_error"}.
  table gather --table FILE.engt --rows 3,17,42 [--tier host|file]
      Prints the rows, dequantized, as one JSON array of arrays (--tier file, the default,
      reads only the blocks holding the rows; host loads the whole table first).
  bench tokenize --tokenizer DIR FILE [--threads N]
  bench hash --tokenizer DIR --config CFG.json [--tokens N] [--threads N]
      Print one JSON object of throughput figures.

DIR is a folder holding tokenizer.json (or the file itself). CFG.json uses the reference's names:
  {"engram_vocab_size": [646400, 646400], "max_ngram_size": 3, "n_embed_per_ngram": 512,
   "n_head_per_ngram": 8, "layer_ids": [1, 15], "pad_id": 2, "seed": 0}
)";

}  // namespace

int main(int argc, char** argv) {
  using namespace engram;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "tokenize") return cli::run_tokenize(argc, argv);
    if (cmd == "compress") return cli::run_compress(argc, argv);
    if (cmd == "hash") return cli::run_hash(argc, argv);
    if (cmd == "bench") return cli::run_bench(argc, argv);
    if (cmd == "run-layer") return cli::run_layer(argc, argv);
    if (cmd == "prepare") return cli::run_prepare(argc, argv);
    if (cmd == "params") return cli::run_params(argc, argv);
    if (cmd == "train") return cli::run_train(argc, argv);
    if (cmd == "eval") return cli::run_eval(argc, argv);
    if (cmd == "table") return cli::run_table(argc, argv);
    if (cmd == "plot") return cli::run_plot(argc, argv);
    if (cmd == "generate") return cli::run_generate(argc, argv);
    if (cmd == "serve") return cli::run_serve(argc, argv);
    std::cerr << "engram: unknown command \"" << cmd << "\"\n\n" << kUsage;
    return 2;
  } catch (const cli::UsageError& e) {
    std::cerr << "engram " << cmd << ": " << e.what() << "\n(see engram --help)\n";
    return 2;
  } catch (const Error& e) {
    std::cerr << "engram " << cmd << ": " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "engram " << cmd << ": out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "engram " << cmd << ": internal error: " << e.what() << "\n";
    return 1;
  }
}
