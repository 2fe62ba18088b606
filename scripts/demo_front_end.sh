#!/usr/bin/env bash
# Front-end demo: set up (idempotent), then run engram's text front end on a sample text:
# tokenize it with the DeepSeek-V3 tokenizer, build the Engram compression table, and hash the
# ids with the reference's default Engram config. Usage: bash scripts/demo_front_end.sh [TEXT_FILE]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
engram="$root/build/engram"
tok="$root/data/tokenizers/deepseek-v3"
config="$root/configs/engram_default.json"
sample="${1:-$root/docs/sample.txt}"

section() { printf '\n== %s ==\n' "$*"; }
section "sample text ($sample)"
cat "$sample"
section "engram tokenize --tokenizer $tok"
ids="$("$engram" tokenize --tokenizer "$tok" <"$sample")"
echo "$ids"
section "engram tokenize --decode (round trip)"
if [ "$(printf '%s' "$ids" | "$engram" tokenize --decode --tokenizer "$tok")" = "$(cat "$sample")" ]; then
  echo "decode(encode(text)) == text"
else
  echo "round trip FAILED" >&2
  exit 1
fi
section "engram compress --tokenizer $tok"
"$engram" compress --tokenizer "$tok"
section "engram hash --describe --config $config"
"$engram" hash --describe --tokenizer "$tok" --config "$config"
section "engram hash --config $config (per layer, per token: 2 orders x 8 heads)"
printf '{"input_ids": [%s]}' "$ids" | "$engram" hash --tokenizer "$tok" --config "$config"
