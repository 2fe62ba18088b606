#!/usr/bin/env bash
# The main job: set up (idempotent), then train a small Engram model and its iso-parameter MoE
# baseline on the installed corpus (Project Gutenberg, 18 books), compare their validation
# losses side by side, plot both loss curves and write a sample generation.
#
#   bash scripts/run.sh
#
# About 15 minutes on 2 cores. Outputs in runs/main/ (or $ENGRAM_RUN_DIR): engram/ and moe/ run
# directories (checkpoint, metrics.jsonl, loss.svg), loss.svg (both runs), results.json,
# sample.txt. An interrupted job continues where it stopped when run again (--resume).
# ENGRAM_MAIN_STEPS=N trains N steps instead of the configs' 150 (a quick look: 10).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
engram="$root/build/engram"
out="${ENGRAM_RUN_DIR:-$root/runs/main}"
steps="${ENGRAM_MAIN_STEPS:-}"
mkdir -p "$out"
section() { printf '\n== %s ==\n' "$*"; }

section "data: data/prepared/gutenberg (DeepSeek-V3 tokenizer, document-level split)"
python3 - <<'PY'
import json
m = json.load(open("data/prepared/gutenberg/manifest.json"))
print(f"train {m['train']['tokens']:,} tokens in {m['train']['documents']} documents; "
      f"validation {m['val']['tokens']:,} tokens in {m['val']['documents']} documents")
PY

section "models (parameters without embedding and LM head; rho = ENGRAM_SPEC section 4)"
for m in engram moe; do "$engram" params --config "configs/main_$m.toml" --json >"$out/$m.params.json"; done
python3 - "$out" <<'PY'
import json, sys
for m in ("engram", "moe"):
    p = json.load(open(f"{sys.argv[1]}/{m}.params.json"))
    print(f"{m:7} P_tot {p['total']:,}  P_act {p['active']:,}  Engram table {p['engram_table']:,}  "
          f"rho {p['rho']:.3f}")
PY

for m in engram moe; do
  section "train $m (configs/main_$m.toml)"
  args=(--config "configs/main_$m.toml" --out "$out/$m")
  [ -n "$steps" ] && args+=(--steps "$steps")
  [ -f "$out/$m/checkpoint.safetensors" ] && args+=(--resume)
  "$engram" train "${args[@]}" >"$out/$m.train.json"
done

section "validation (the same 65,536 held-out tokens, 256 windows, for both)"
for m in engram moe; do
  "$engram" eval --ckpt "$out/$m" --tokens 65536 --windows "$out/$m/eval_windows.json" >"$out/$m/eval.json"
done
python3 - "$out" <<'PY'
import json, math, sys
out = sys.argv[1]
rows = {m: json.load(open(f"{out}/{m}/eval.json")) for m in ("engram", "moe")}
print(f"{'model':8} {'step':>5} {'val_loss':>9} {'ppl':>9} {'bits/byte':>10}")
for m, r in rows.items():
    print(f"{m:8} {r['step']:>5} {r['val_loss']:>9.4f} {r['ppl']:>9.1f} {r['bits_per_byte']:>10.4f}")
# The paired difference over the same windows, and its standard error across windows (this
# measures the evaluation sample only; seed-to-seed training noise is not measured here).
a = json.load(open(f"{out}/engram/eval_windows.json"))
b = json.load(open(f"{out}/moe/eval_windows.json"))
d = [x - y for x, y in zip(a, b)]
mean = sum(d) / len(d)
se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
verdict = ("within 2 standard errors of 0: no difference shown" if abs(mean) < 2 * se else
           ("Engram lower" if mean < 0 else "MoE lower") + " by more than 2 standard errors")
print(f"engram - moe: {mean:+.4f} nats/token, standard error {se:.4f} over {len(d)} windows "
      f"({verdict}; one training seed each)")
rows["difference"] = {"engram_minus_moe": mean, "standard_error": se, "windows": len(d)}
json.dump(rows, open(f"{out}/results.json", "w"), indent=1)
PY

"$engram" plot --out "$out/loss.svg" --title "Engram vs iso-parameter MoE (configs/main_*.toml)" \
  "$out/engram" "$out/moe"

section "sample generation (Engram model, temperature 0.8, seed 0)"
"$engram" generate --ckpt "$out/engram" --prompt "It was a dark and stormy night" \
  --max-tokens 60 --seed 0 | tee "$out/sample.txt"

section "outputs"
echo "$out/loss.svg  $out/results.json  $out/sample.txt  $out/{engram,moe}/metrics.jsonl"
