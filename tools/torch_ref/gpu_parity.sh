#!/usr/bin/env bash
# Whole-model parity of the GPU model (model::GpuTransformer) against the PyTorch mirror, on the
# GPU host (docs/model_parity.md, "The GPU model"):
#
#   tools/torch_ref/gpu_parity.sh BIN_DIR OUT_DIR [--math exact|tf32] [--dump-only]
#                                 [model_ref.py options, e.g. --verbose]
#
# BIN_DIR holds engram_dump_model (built on the dev machine: the GPU host cannot build engram)
# and, in BIN_DIR/lib, the shared libraries the host lacks (see `ldd engram_dump_model`); cuBLAS
# comes from the host's /usr/local/cuda/lib64. For every tools/torch_ref/configs/*.toml this
# dumps one float32 forward + backward of the GPU model (--device cuda) into
# OUT_DIR/NAME.f32.cuda.safetensors. A config the GPU model rejects is skipped with a note naming
# the reason; when the reason is the attention's head_dim (64 or 128 on the GPU; the tiny configs
# have 8 to 16) it is dumped again with --head-dim 64 as OUT_DIR/NAME.hd64.f32.cuda.safetensors
# (same config otherwise; the dump's config_toml carries head_dim, so the mirror builds the same
# model). Then, unless --dump-only:
#   python3 tools/torch_ref/model_ref.py OUT_DIR/*.safetensors --device cuda \
#       --json OUT_DIR/model_parity_gpu.json
# and a one-line-per-dump summary. Exits 1 if a dump failed for another reason than a rejection,
# if nothing was dumped, or if the check fails.
set -euo pipefail
usage() { sed -n '2,21p' "$0"; exit 2; }
[[ $# -ge 2 ]] || usage
bin=$(realpath -m "$1")
out=$(realpath -m "$2")
shift 2
math=exact
dump_only=0
ref_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --math) math=${2:?--math needs exact or tf32}; shift 2 ;;
    --dump-only) dump_only=1; shift ;;
    *) ref_args+=("$1"); shift ;;
  esac
done
cd "$(dirname "$0")/../.."
exe="$bin/engram_dump_model"
[[ -x "$exe" ]] || { echo "gpu_parity.sh: no executable $exe" >&2; exit 2; }
export LD_LIBRARY_PATH="$bin/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out"
suffix=f32.cuda
[[ "$math" == exact ]] || suffix="f32.cuda-$math"

dumped=0
failed=0
# One dump; on failure prints the reason and returns 1 (rejection) or 2 (any other failure).
dump() {
  local dest=$1; shift
  local err
  if err=$("$exe" "$@" --dtype f32 --device cuda --math "$math" --out "$dest" 2>&1); then
    echo "$err"
    dumped=$((dumped + 1))
    return 0
  fi
  rm -f "$dest"
  reason=$(echo "$err" | tail -n 3 | tr '\n' ' ')
  # GpuTransformer's own ConfigError / InputError name it ("GpuTransformer: model.head_dim ...").
  if [[ "$err" == *"GpuTransformer: "* ]]; then return 1; fi
  return 2
}

for config in tools/torch_ref/configs/*.toml; do
  name=$(basename "$config" .toml)
  rc=0
  dump "$out/$name.$suffix.safetensors" --config "$config" || rc=$?
  [[ $rc -eq 0 ]] && continue
  if [[ $rc -eq 2 ]]; then
    echo "FAILED $name: $reason" >&2
    failed=1
    continue
  fi
  echo "note: skipping $name as it is: the GPU model rejects it: $reason"
  if [[ "$reason" == *head_dim* ]]; then
    echo "note: $name dumped with --head-dim 64 instead (the GPU attention's size)"
    rc=0
    dump "$out/$name.hd64.$suffix.safetensors" --config "$config" --head-dim 64 || rc=$?
    if [[ $rc -ne 0 ]]; then
      echo "FAILED $name --head-dim 64: $reason" >&2
      failed=1
    fi
  fi
done
echo "gpu_parity.sh: $dumped dumps in $out"
if [[ $dumped -eq 0 ]]; then
  echo "gpu_parity.sh: nothing dumped" >&2
  exit 1
fi
[[ $dump_only -eq 1 ]] && exit "$failed"

shopt -s nullglob
dumps=("$out"/*."$suffix".safetensors)
check_rc=0
rm -f "$out/model_parity_gpu.json"
PYTHONUNBUFFERED=1 python3 tools/torch_ref/model_ref.py "${dumps[@]}" --device cuda \
  --json "$out/model_parity_gpu.json" "${ref_args[@]}" || check_rc=$?
[[ -f "$out/model_parity_gpu.json" ]] && python3 - "$out/model_parity_gpu.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"\nGPU model vs PyTorch mirror (torch {r['torch']} on {r['device']}): "
      f"{'PASS' if r['pass'] else 'FAIL'}")
print(f"{'dump':<48} {'dump on':<12} {'logits':>9} {'loss':>9} {'max grad':>9}  tensor")
for x in r["results"]:
    on = x.get("dump_device", "cpu") + (f" {x['dump_math']}" if x.get("dump_math") else "")
    print(f"{x['dump']:<48} {on:<12} {x['logits']:9.2e} {x['loss']:9.2e} {x['max_grad']:9.2e}  "
          f"{x['max_grad_tensor']}{'' if x['pass'] else '  FAIL'}")
EOF
[[ $check_rc -ne 0 ]] && exit "$check_rc"
exit "$failed"
