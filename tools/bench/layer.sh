#!/usr/bin/env bash
# Engram layer on CPU, engram beside the PyTorch reference module (tools/torch_ref), and the
# GEMM rates and machine peak (bench_gemm), in one run on one machine.
# Usage: tools/bench/layer.sh BUILD_DIR OUT.jsonl [THREADS...]   (default: 1 and all cores)
set -euo pipefail
build="$1" out="$2"
shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(1 "$(nproc)")
: >"$out"
record() { echo "$1" | tee -a "$out"; }
record "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"cores\": $(nproc)}"
for t in "${threads[@]}"; do
  record "{\"engram_layer\": $("$build/bench/bench_engram_layer" --tokens 4096 --threads "$t" --dtype f32)}"
  if python3 -c "import torch" 2>/dev/null; then
    record "{\"torch_layer\": $(python3 "$root/tools/torch_ref/engram_layer_ref.py" bench --tokens 4096 --threads "$t")}"
  fi
done
"$build/bench/bench_gemm" | while read -r line; do record "{\"gemm\": $line}"; done
