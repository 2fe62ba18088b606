#!/usr/bin/env bash
# The model parity check (docs/model_parity.md) in two steps, run where each can run:
#
#   tools/torch_ref/model_parity.sh dump [BUILD_DIR] [DUMP_DIR]
#       On the CPU machine: builds engram_dump_model in BUILD_DIR (default build-dump) and dumps
#       every tools/torch_ref/configs/*.toml in f32 and f64 into DUMP_DIR (default .gpu/parity,
#       git-ignored, so it travels to the GPU host only when named in `carry`).
#   tools/torch_ref/model_parity.sh dump-cuda [BUILD_DIR] [DUMP_DIR]
#       On a machine that can both build engram and run CUDA (the GPU host cannot build it: no
#       ICU headers; there, carry the binary and use tools/torch_ref/gpu_parity.sh): builds
#       engram_dump_model in BUILD_DIR and dumps every config in f32 with --device cuda through
#       gpu_parity.sh --dump-only (configs the GPU model rejects are skipped with a note; a
#       head_dim it rejects is replaced by --head-dim 64) into DUMP_DIR/NAME[.hd64].f32.cuda.*.
#   tools/torch_ref/model_parity.sh check [DUMP_DIR] [RESULT_DIR] [model_ref.py options]
#       Where torch is installed: runs tools/torch_ref/model_ref.py over every dump, prints the
#       tables and writes RESULT_DIR/model_parity.json (default RESULT_DIR: DUMP_DIR). Exits 1 if
#       any dump fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-}
case "$mode" in
  dump)
    build=${2:-build-dump}
    out=${3:-.gpu/parity}
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    make -C "$build" -j"$(nproc)" engram_dump_model >/dev/null
    mkdir -p "$out"
    for config in tools/torch_ref/configs/*.toml; do
      name=$(basename "$config" .toml)
      for dtype in f32 f64; do
        "$build/engram_dump_model" --config "$config" --dtype "$dtype" \
          --out "$out/$name.$dtype.safetensors"
      done
    done
    ;;
  dump-cuda)
    build=${2:-build-dump}
    out=${3:-.gpu/parity}
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    make -C "$build" -j"$(nproc)" engram_dump_model >/dev/null
    tools/torch_ref/gpu_parity.sh "$build" "$out" --dump-only
    ;;
  check)
    dumps=${2:-.gpu/parity}
    results=${3:-$dumps}
    shift $(($# < 3 ? $# : 3))
    mkdir -p "$results"
    PYTHONUNBUFFERED=1 python3 tools/torch_ref/model_ref.py "$dumps"/*.safetensors \
      --json "$results/model_parity.json" "$@"
    ;;
  *)
    sed -n '2,19p' "$0"
    exit 2
    ;;
esac
