#!/usr/bin/env bash
# Front-end benchmarks, engram beside the references, in one run on one machine:
#   tokenizer: engram bench tokenize vs Hugging Face tokenizers (tools/hf/encode_reference.py)
#   hashing:   engram bench hash     vs the reference numpy code (tools/reference/engram_hash_numpy.py)
# Usage: tools/bench/front_end.sh ENGRAM_BINARY TOKENIZER_DIR LUT.npy OUT.jsonl DOC.txt...
# Needs python3 with `tokenizers` (for the tokenizer comparison) and numpy.
set -euo pipefail
engram="$1" tok="$2" lut="$3" out="$4"
shift 4
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
threads="$(nproc)"
: >"$out"
record() { echo "$1" | tee -a "$out"; }
record "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"cores\": $threads}"
for doc in "$@"; do
  record "{\"engram_tokenize\": $("$engram" bench tokenize --tokenizer "$tok" "$doc" --threads "$threads")}"
  if python3 -c "import tokenizers" 2>/dev/null; then
    record "{\"hf_tokenize\": $(python3 "$root/tools/hf/encode_reference.py" bench "$tok/tokenizer.json" "$doc" --threads "$threads")}"
  fi
done
for tokens in 32768 1048576; do
  record "{\"engram_hash\": $("$engram" bench hash --tokenizer "$tok" --config "$root/configs/engram_default.json" --tokens $tokens --threads "$threads")}"
done
record "{\"numpy_hash\": $(python3 "$root/tools/reference/engram_hash_numpy.py" "$lut" --batch 8 --seq-len 4096 --min-seconds 3)}"
