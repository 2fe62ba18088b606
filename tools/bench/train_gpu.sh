#!/usr/bin/env bash
# GPU training throughput and MFU: engram's trainer (bench_train --device cuda) beside the PyTorch
# mirror of the same model (tools/torch_ref/model_ref.py bench --device cuda), one GPU, one run.
#
# Usage: tools/bench/train_gpu.sh BIN_DIR OUT.jsonl [CONFIG.toml]
#   BIN_DIR   the CUDA build folder holding bench/bench_train (or bench_train itself)
#   CONFIG    default configs/gpu_120m.toml
# Environment: DATA (default data/prepared/gutenberg: a prepared corpus; its manifest names the
#   tokenizer, data/tokenizers/deepseek-v3/tokenizer.json, relative to the repository root, where
#   this script runs), PYTHON (an interpreter that imports torch; found otherwise),
#   BUDGET_S (default 345: the whole run's wall-clock budget; each variant's timeout is the
#   smaller of its own cap and what is left, and a variant with under 20 s left is skipped),
#   ENGRAM_STEPS (4), TORCH_STEPS (5).
#
# Variants, in this order (the most important first, so that a short budget loses the least):
#   engram f32 (math exact: FP32 GEMMs), engram tf32 (dense GEMMs on TF32 tensor cores);
#   mirror eager f32, eager tf32, eager bf16 (autocast), compile tf32, compile bf16.
# Every result is one JSON line appended to OUT.jsonl (a variant that fails or times out appends
# {"bench": "error", "variant", "rc", "error"} and the script goes on), then a table of tokens/s,
# TFLOP/s, MFU and the ratios engram / mirror is printed. MFU = tokens/s x flops_per_token /
# peak: flops_per_token = 6 (P_act - engram_table_active + C V) + 6 L T Hq hd (both sides, see
# engram::model::train_flops_per_token); peaks: H200 SXM datasheet dense 67 (FP32), 494 (TF32),
# 989 (BF16) TFLOP/s.
# What differs between the two steps: engram's step is whatever engram::train::train does with
# device "cuda" in the build given (real batches: data loader + n-gram hashing, timed; clipping
# and the optimizers where that trainer runs them, sparse row updates for the embedding and the
# Engram tables); the mirror uses random tokens and hash ids made before the clock, and torch's
# fused AdamW on the GPU with the embedding, LM head and Engram tables dense. bench_train also
# writes (untimed) one evaluation and a checkpoint at the end into a temporary folder under /tmp
# (a few GB for this config), part of its wall time.
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BIN_DIR OUT.jsonl [CONFIG.toml]" >&2; exit 2; }
bin="$1"
out="$2"
cfg="${3:-configs/gpu_120m.toml}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tools/bench/common.sh
. "$root/tools/bench/common.sh"
absolute_args
find_pythons  # py (with torch, or empty), jpy
data="${DATA:-data/prepared/gutenberg}"
budget="${BUDGET_S:-345}"
engram_steps="${ENGRAM_STEPS:-4}"
torch_steps="${TORCH_STEPS:-5}"

bench_train="$(find_bench bench_train)"

run_lines="$(mktemp)"
tmp_out="$(mktemp)"
tmp_err="$(mktemp)"
trap 'rm -f "$run_lines" "$tmp_out" "$tmp_err"' EXIT
start=$SECONDS

record() { echo "$1" >>"$out"; echo "$1" >>"$run_lines"; echo "$1" >&2; }
# error_line VARIANT RC MESSAGE: a JSON error record.
error_line() {
  "$jpy" -c 'import json, sys; print(json.dumps({"bench": "error", "variant": sys.argv[1],
    "rc": int(sys.argv[2]), "error": sys.argv[3][-600:]}))' "$1" "$2" "$3"
}
# variant NAME CAP_S CMD...: runs CMD under min(CAP_S, budget left); records its last JSON line
# with "variant" added, or an error line.
variant() {
  local name="$1" cap="$2"
  shift 2
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt 20 ]; then
    record "$(error_line "$name" -1 "skipped: ${left}s of the ${budget}s budget left")"
    return
  fi
  local limit=$((cap < left ? cap : left))
  echo "== $name (timeout ${limit}s): $*" >&2
  local t0=$SECONDS rc
  timeout --kill-after=15 "$limit" "$@" >"$tmp_out" 2>"$tmp_err"
  rc=$?
  local line
  line="$(grep '^{' "$tmp_out" | tail -1)"
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
    record "$("$jpy" -c 'import json, sys; j = json.loads(sys.argv[1]); j["variant"] = sys.argv[2]
j["wall_s"] = int(sys.argv[3]); print(json.dumps(j))' "$line" "$name" "$((SECONDS - t0))" 2>/dev/null \
      || error_line "$name" 0 "unparsable output: $line")"
  else
    local msg
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then msg="timed out after ${limit}s; "; else msg=""; fi
    msg+="$(tail -c 1500 "$tmp_err" | tr '\n' ' ')"
    record "$(error_line "$name" "$rc" "$msg")"
  fi
}

gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
torch_v="$([ -n "$py" ] && "$py" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null)"
record "$("$jpy" -c 'import json, sys; print(json.dumps({"bench": "machine", "gpu": sys.argv[1],
  "cpu_cores": int(sys.argv[2]), "torch": sys.argv[3], "config": sys.argv[4], "data": sys.argv[5],
  "date": sys.argv[6]}))' "$gpu" "$(nproc)" "$torch_v" "$cfg" "$data" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"

if [ -n "$bench_train" ]; then
  variant engram-f32 120 "$bench_train" --device cuda --math exact --config "$cfg" --data "$data" \
    --steps "$engram_steps"
  variant engram-tf32 120 "$bench_train" --device cuda --math tf32 --config "$cfg" --data "$data" \
    --steps "$engram_steps"
else
  record "$(error_line engram-f32 -1 "no bench_train under $bin (bench/bench_train)")"
  record "$(error_line engram-tf32 -1 "no bench_train under $bin (bench/bench_train)")"
fi

ref="$root/tools/torch_ref/model_ref.py"
if [ -n "$py" ]; then
  variant torch-eager-f32 60 "$py" "$ref" bench --config "$cfg" --device cuda --dtype f32 \
    --steps "$torch_steps" --warmup 1
  variant torch-eager-tf32 60 "$py" "$ref" bench --config "$cfg" --device cuda --dtype tf32 \
    --steps "$torch_steps" --warmup 1
  variant torch-eager-bf16 60 "$py" "$ref" bench --config "$cfg" --device cuda --dtype bf16 \
    --steps "$torch_steps" --warmup 1
  variant torch-compile-tf32 150 "$py" "$ref" bench --config "$cfg" --device cuda --dtype tf32 \
    --compile --steps "$torch_steps" --warmup 3
  variant torch-compile-bf16 150 "$py" "$ref" bench --config "$cfg" --device cuda --dtype bf16 \
    --compile --steps "$torch_steps" --warmup 3
else
  for v in torch-eager-f32 torch-eager-tf32 torch-eager-bf16 torch-compile-tf32 torch-compile-bf16; do
    record "$(error_line "$v" -1 "no python with torch (set PYTHON)")"
  done
fi
echo "total ${SECONDS}s" >&2

"$jpy" - "$run_lines" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
machine = next((r for r in rows if r.get("bench") == "machine"), {})
res = [r for r in rows if "variant" in r]
print(f"\n{machine.get('config')} on {machine.get('gpu') or '?'} (torch {machine.get('torch')})")
print(f"{'variant':<20} {'tokens/s':>10} {'s/step':>8} {'TFLOP/s':>8} {'peak':>6} {'MFU':>7} "
      f"{'GiB':>6}  note")
for r in res:
    if r.get("bench") == "error":
        print(f"{r['variant']:<20} {'-':>10} {'-':>8} {'-':>8} {'-':>6} {'-':>7} {'-':>6}  "
              f"ERROR rc={r['rc']}: {r['error'][:90]}")
        continue
    tflops = r.get("tflops")
    mfu = r.get("mfu")
    mem = r.get("max_memory_gib")
    sps = r.get("seconds_per_step")
    print(f"{r['variant']:<20} {r['tokens_per_s']:>10.0f} "
          f"{f'{sps:.3f}' if sps is not None else '-':>8} "
          f"{tflops if tflops is not None else '-':>8} {r.get('peak_tflops') or '-':>6} "
          f"{f'{100 * mfu:.2f}%' if mfu is not None else '-':>7} {mem if mem is not None else '-':>6}  "
          f"{r.get('wall_s', '?')}s wall")
ok = {r["variant"]: r for r in res if r.get("bench") != "error"}
fl = {r["flops_per_token"] for r in ok.values() if "flops_per_token" in r}
if len(fl) > 1:
    print(f"WARNING: flops_per_token differs between variants: {sorted(fl)}")
elif fl:
    print(f"flops_per_token {fl.pop():.4g} ({next(iter(ok.values())).get('flops_formula')})")
eng = [v for v in ok if v.startswith("engram")]
tor = [v for v in ok if v.startswith("torch")]
if eng and tor:
    print(f"\nratio engram / mirror tokens/s")
    print(f"{'':<14}" + "".join(f"{t[6:]:>14}" for t in tor))
    for e in eng:
        print(f"{e:<14}" + "".join(f"{ok[e]['tokens_per_s'] / ok[t]['tokens_per_s']:>13.2f}x"
                                   for t in tor))
    print("(same arithmetic: engram-f32 vs eager-f32; engram-tf32 vs the tf32 columns)")
EOF
