#!/usr/bin/env bash
# GPU decode throughput: engram's infer::GpuDecoder (bench/bench_decode) beside the PyTorch
# mirror's KV-cached decoder (tools/torch_ref/decode_ref.py), same config, same GPU, one run.
#
# Usage: tools/bench/decode_gpu.sh BIN_DIR OUT.jsonl [CONFIG.toml]
#   BIN_DIR   the CUDA build folder holding bench/bench_decode (or bench_decode itself)
#   CONFIG    default configs/gpu_120m.toml
# Environment: PYTHON (an interpreter that imports torch; found otherwise), BATCH ("1,64"),
#   PROMPT (128), STEPS (128).
# Variants: engram exact (FP32 GEMMs), engram tf32, engram tf32 with the Engram tables in mapped
# pinned host memory, engram tf32 without CUDA graphs, and with --profile (no graphs; the phase
# breakdown); mirror f32, tf32, bf16
# (autocast) eager, and tf32 and bf16 with regional torch.compile. Each prints one JSON line per
# batch size, appended to OUT.jsonl with "variant" added (a failing variant appends
# {"bench": "error", ...}); then a table of tokens/s and engram / mirror ratios.
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
batch="${BATCH:-1,64}"
prompt="${PROMPT:-128}"
steps="${STEPS:-128}"
bench="$(find_bench bench_decode)"
run_lines="$(mktemp)"
tmp_out="$(mktemp)"
trap 'rm -f "$run_lines" "$tmp_out"' EXIT

# variant NAME CAP_S CMD...: every JSON line of CMD's output, with "variant" added.
variant() {
  local name="$1" cap="$2"
  shift 2
  echo "== $name: $*" >&2
  timeout --kill-after=15 "$cap" "$@" >"$tmp_out" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q '^{' "$tmp_out"; then
    "$jpy" -c 'import json, sys; print(json.dumps({"bench": "error", "variant": sys.argv[1],
      "rc": int(sys.argv[2]), "error": sys.argv[3][-800:]}))' "$name" "$rc" "$(tail -c 1500 "$tmp_out")" \
      | tee -a "$out" "$run_lines" >&2
    return
  fi
  grep '^{' "$tmp_out" | "$jpy" -c 'import json, sys
for l in sys.stdin:
    j = json.loads(l); j["variant"] = sys.argv[1]; print(json.dumps(j))' "$name" \
    | tee -a "$out" "$run_lines" >&2
}

gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
"$jpy" -c 'import json, sys; print(json.dumps({"bench": "machine", "gpu": sys.argv[1],
  "cpu_cores": int(sys.argv[2]), "config": sys.argv[3], "date": sys.argv[4]}))' \
  "$gpu" "$(nproc)" "$cfg" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" | tee -a "$out" "$run_lines" >&2
common=(--config "$cfg" --batch "$batch" --prompt "$prompt" --steps "$steps")
if [ -n "$bench" ]; then
  variant engram-exact 150 "$bench" "${common[@]}" --math exact
  variant engram-tf32 150 "$bench" "${common[@]}" --math tf32
  variant engram-tf32-host-table 150 "$bench" "${common[@]}" --math tf32 --table host
  variant engram-tf32-no-graphs 150 "$bench" "${common[@]}" --math tf32 --no-graphs
  variant engram-tf32-profile 150 "$bench" "${common[@]}" --math tf32 --profile
else
  echo "{\"bench\": \"error\", \"variant\": \"engram\", \"error\": \"no bench_decode under $bin\"}" \
    | tee -a "$out" "$run_lines" >&2
fi
if [ -n "$py" ]; then
  for d in f32 tf32 bf16; do
    variant "torch-eager-$d" 200 "$py" tools/torch_ref/decode_ref.py bench "${common[@]}" --dtype "$d"
  done
  for d in tf32 bf16; do
    variant "torch-compile-$d" 400 "$py" tools/torch_ref/decode_ref.py bench "${common[@]}" \
      --dtype "$d" --compile
  done
fi

"$jpy" - "$run_lines" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
res = {}
for r in rows:
    if r.get("bench") == "decode":
        res[(r["variant"], r["batch"])] = r
batches = sorted({b for (_, b) in res})
variants = []
for (v, _) in res:
    if v not in variants:
        variants.append(v)
print(f"{'variant':28s}" + "".join(f"{'B=' + str(b) + ' tok/s':>16s}{'ms/step':>10s}" for b in batches))
for v in variants:
    line = f"{v:28s}"
    for b in batches:
        r = res.get((v, b))
        line += f"{r['tokens_per_s']:16.1f}{r['ms_per_step']:10.3f}" if r else f"{'-':>16s}{'-':>10s}"
    print(line)
for e in ("engram-exact", "engram-tf32"):
    for t in ("torch-eager-f32", "torch-eager-tf32", "torch-eager-bf16", "torch-compile-tf32",
              "torch-compile-bf16"):
        ratios = []
        for b in batches:
            if (e, b) in res and (t, b) in res:
                ratios.append(f"B={b}: {res[(e, b)]['tokens_per_s'] / res[(t, b)]['tokens_per_s']:.2f}x")
        if ratios:
            print(f"{e} / {t}: " + ", ".join(ratios))
for (v, b), r in res.items():
    if "phases_ms" in r:
        ph = ", ".join(f"{k} {x:.3f}" for k, x in sorted(r["phases_ms"].items(), key=lambda kv: -kv[1]))
        print(f"{v} B={b}: device {r['device_ms']:.3f} ms, host {r['host_ms']:.3f} ms per step; {ph}")
PY
