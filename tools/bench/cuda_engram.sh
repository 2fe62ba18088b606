#!/usr/bin/env bash
# The CUDA Engram layer (bench_cuda_engram) beside the PyTorch reference module
# (tools/torch_ref/engram_layer_ref.py bench) at issue 5's shape (B=4, T=4096, hidden 1024,
# hc_mult 4, 16 heads x 64, tables of ~646,400 rows a head), in one run on one GPU machine.
# Usage: tools/bench/cuda_engram.sh BIN_DIR OUT.jsonl [COMPILE_TIMEOUT_S=180]
#   BIN_DIR holds bench_cuda_engram (or is a build dir with bench/bench_cuda_engram).
# Torch: eager f32 and bf16, then torch.compile bf16 (and f32 with COMPILE_F32=1), cut off after
# COMPILE_TIMEOUT_S seconds (a cut-off run records {"torch_layer": null, ...}).
set -euo pipefail
bin="$1" out="$2" compile_timeout="${3:-180}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exe="$bin/bench_cuda_engram"
[ -x "$exe" ] || exe="$bin/bench/bench_cuda_engram"
: >"$out"
record() { echo "$1" | tee -a "$out"; }
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
record "{\"machine\": \"$gpu\", \"cores\": $(nproc), \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
"$exe" | while read -r line; do record "{\"engram_cuda\": $line}"; done
torch_run() {  # label timeout args...
  local label="$1" limit="$2"
  shift 2
  local line
  if line="$(timeout "$limit" python3 "$root/tools/torch_ref/engram_layer_ref.py" bench \
      --tokens 16384 --device cuda "$@")"; then
    record "{\"torch_layer\": $line}"
  else
    record "{\"torch_layer\": null, \"run\": \"$label\", \"status\": $?}"
  fi
}
torch_run eager_f32 300 --dtype f32
torch_run eager_bf16 300 --dtype bf16
torch_run compile_bf16 "$compile_timeout" --dtype bf16 --compile
[ "${COMPILE_F32:-0}" = 1 ] && torch_run compile_f32 "$compile_timeout" --dtype f32 --compile
true
