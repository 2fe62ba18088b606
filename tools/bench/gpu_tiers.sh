#!/usr/bin/env bash
# Engram table tiers on one GPU (bench_gpu_tiers, issue 6): one step's rows gathered from a
# table in GPU memory, in pinned mapped host memory (zero-copy over PCIe) and in host memory
# (CPU threads gather into pinned staging, then one copy), with the PCIe copy reference.
# Usage: tools/bench/gpu_tiers.sh BIN_DIR OUT.jsonl [bench_gpu_tiers flags...]
#   BIN_DIR holds bench_gpu_tiers (or is a build dir with bench/bench_gpu_tiers). Defaults:
#   an 8 GiB table, 20 reps, 8 gather threads; about 30-60 s on an H200 host.
# OUT.jsonl: a machine line, then the bench's JSON lines; a table of ms and GB/s on stdout.
set -euo pipefail
bin="$1" out="$2"
shift 2
exe="$bin/bench_gpu_tiers"
[ -x "$exe" ] || exe="$bin/bench/bench_gpu_tiers"
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
echo "{\"machine\": \"$gpu\", \"cores\": $(nproc), \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}" >"$out"
"$exe" "$@" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
head = next(l for l in lines if "device" in l)
print(f"\n{head['device']}, {head['host_cores']} host cores, table {head['table_bytes'] / 2**30:.2f} GiB, "
      f"{head['threads']} gather threads, median of {head['reps']}")
big = next((l for l in lines if l.get("tier") == "pcie_h2d" and "rows" not in l), None)
if big:
    print(f"PCIe h2d 256 MiB: {big['gb_per_s']:.1f} GB/s (peak {head['peak_pcie_gb_per_s']:.0f}), "
          f"table upload {big['table_upload_gb_per_s']:.1f} GB/s")
print(f"\n{'tier':<24}{'dtype':<6}{'ids':<9}{'rows':>8}{'ms':>10}{'GB/s':>9}{'Mrows/s':>10}"
      f"{'gather_ms':>11}{'copy_ms':>9}")
for l in lines:
    if "tier" not in l or "rows" not in l:
        continue
    g = f"{l['gather_ms']:.4f}" if "gather_ms" in l else ""
    c = f"{l['copy_ms']:.4f}" if "copy_ms" in l else ""
    rps = f"{l['rows_per_s'] / 1e6:.1f}" if "rows_per_s" in l else ""
    print(f"{l['tier']:<24}{l['dtype']:<6}{l.get('ids', ''):<9}{l['rows']:>8}{l['ms']:>10.4f}"
          f"{l['gb_per_s']:>9.1f}{rps:>10}{g:>11}{c:>9}")
PY
