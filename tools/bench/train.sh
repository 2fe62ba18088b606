#!/usr/bin/env bash
# CPU training throughput: engram's trainer (build/bench/bench_train) beside the PyTorch mirror of
# the same model (tools/torch_ref/model_ref.py bench), in one run on one machine, at 1 and 2
# threads. Appends every JSON line to OUT.jsonl and prints a table of tokens/s and the ratio.
# Usage: tools/bench/train.sh OUT.jsonl [CONFIG.toml ...]
#        (default configs/small_engram.toml configs/small_moe.toml; BUILD=dir overrides build,
#         PYTHON=python3 overrides the interpreter, which must import torch)
# What differs in the torch step: see model_ref.py's bench (dense AdamW on the embedding, LM head
# and Engram tables; random tokens and random per-head hash ids, no data loader; its GEMMs are
# the system OpenBLAS's when torch is Debian's python3-torch).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT.jsonl [CONFIG.toml ...]" >&2; exit 2; }
out="$1"
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${BUILD:-$root/build}"
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/small_engram.toml configs/small_moe.toml)
# shellcheck source=tools/bench/common.sh
. "$root/tools/bench/common.sh"
find_pythons  # py (with torch, or empty), jpy
[ -n "$py" ] || { echo "$0: no python3 with torch (set PYTHON)" >&2; exit 1; }
[ -x "$build/bench/bench_train" ] || { echo "$0: $build/bench/bench_train not built" >&2; exit 1; }

# Debian's torch multiplies through the system OpenBLAS, which in a VM may not recognise the CPU
# and fall back to its SSE3 (Prescott) kernels (3x slower here): name the core from the CPU flags
# unless OPENBLAS_CORETYPE is set. model_ref.py sets OpenBLAS's threads to --threads.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi

run_lines="$(mktemp)"
trap 'rm -f "$run_lines"' EXIT
record() { echo "$1" | tee -a "$out" >>"$run_lines"; echo "$1" >&2; }
record "{\"bench\": \"machine\", \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"cores\": $(nproc), \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
for cfg in "${configs[@]}"; do
  for t in 1 2; do
    record "$("$build/bench/bench_train" --config "$cfg" --threads "$t" --steps 6 | tail -1)"
    record "$("$py" "$root/tools/torch_ref/model_ref.py" bench --config "$cfg" --threads "$t" \
               --steps 4 --warmup 1 | tail -1)"
  done
done

"$py" - "$run_lines" <<'EOF'
import json, sys
rows = {}
torch_version = None
for line in open(sys.argv[1]):
    j = json.loads(line)
    if j.get("bench") not in ("train", "train_torch"):
        continue
    r = rows.setdefault((j["config"], j["threads"]), {})
    r[j["bench"]] = j["tokens_per_s"]
    if j["bench"] == "train_torch":
        torch_version = j["torch"]
print(f"\n{'config':<28} {'threads':>7} {'engram tok/s':>13} {'torch tok/s':>12} {'ratio':>7}")
for (cfg, t), r in rows.items():
    e, p = r.get("train"), r.get("train_torch")
    ratio = f"{e / p:.2f}x" if e and p else "-"
    print(f"{cfg:<28} {t:>7} {e or '-':>13} {p or '-':>12} {ratio:>7}")
print(f"(torch {torch_version}; ratio = engram / torch tokens/s)")
EOF
