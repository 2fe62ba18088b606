#!/usr/bin/env bash
# The paper's offload experiment at our scale (bench_offload_decode, issue 6): a 4 B dense
# backbone decoding with its Engram table in GPU memory, in pinned host memory (with and without
# hot rows in GPU memory) and on disk (the file tier, cold and warm).
# Usage: tools/bench/offload_gpu.sh BIN_DIR OUT.jsonl [CONFIG] [bench_offload_decode flags...]
#   BIN_DIR holds bench_offload_decode (or is a build dir with bench/bench_offload_decode).
#   CONFIG: configs/offload_4b.toml (40 B-parameter table, 74.6 GiB of pinned host memory) by
#   default. With configs/offload_4b_file.toml (15.4 B, 28.6 GiB) and no --tiers flag the file
#   tiers run too, the table written to $ENGRAM_ENGT (default /tmp/offload.engt, removed after).
#   Default tiers, interleaved so that run order does not favour one: host,gpu,host-hot,gpu,...
#   128 sequences; about 4-9 minutes on an H200 host (the set-up alone is 1.5-2 minutes).
# OUT.jsonl: a machine line, then one JSON line per tier run; a table on stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$1" out="$2"
shift 2
cfg="configs/offload_4b.toml"
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then cfg="$1"; shift; fi
source "$root/tools/bench/common.sh"
absolute_args
exe="$(find_bench bench_offload_decode)"
[ -n "$exe" ] || { echo "$0: no bench_offload_decode under $bin" >&2; exit 1; }
extra=()
if [[ " $* " != *" --tiers "* ]]; then
  if [[ "$cfg" == *file* ]]; then
    extra=(--tiers gpu,file,file-warm,host,host-hot,gpu --engt "${ENGRAM_ENGT:-/tmp/offload.engt}")
  else
    extra=(--tiers host,gpu,host-hot,gpu,host,gpu)
  fi
fi
[[ " $* " == *" --sequences "* ]] || extra+=(--sequences 128)
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
echo "{\"machine\": \"$gpu\", \"cores\": $(nproc), \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"config\": \"$cfg\"}" >"$out"
"$exe" --config "$cfg" "${extra[@]}" "$@" | tee -a "$out"
find_pythons
"$jpy" - "$out" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][1:]
if not runs:
    sys.exit(0)
r0 = runs[0]
print(f"\n{r0['gpu']}: backbone {r0['backbone_params'] / 1e9:.2f} B, table "
      f"{r0['table_params'] / 1e9:.2f} B parameters ({r0['table_gib']:.1f} GiB), "
      f"{r0['sequences']} sequences, {r0['tokens']} tokens, {r0['steps']} steps")
gpu = [r["tokens_per_s"] for r in runs if r["tier"] == "gpu"]
ref = sum(gpu) / len(gpu) if gpu else None
print(f"{'tier':<12}{'tokens/s':>11}{'ms/step':>9}{'vs gpu mean':>13}  cache")
for r in runs:
    vs = f"{100 * (r['tokens_per_s'] / ref - 1):+.2f} %" if ref and r["tier"] != "gpu" else ""
    cache = ""
    if "hot_hit_rate" in r:
        cache = f"hot rows {r['hot_rows']}: hit rate {100 * r['hot_hit_rate']:.1f} %"
    elif "hit_rate" in r:
        cache = f"DRAM {r['cache_gib']:.1f} GiB: hit rate {100 * r['hit_rate']:.1f} %, I/O {r['io_s']:.1f} s"
    print(f"{r['tier']:<12}{r['tokens_per_s']:>11.1f}{r['ms_per_step']:>9.3f}{vs:>13}  {cache}")
PY
