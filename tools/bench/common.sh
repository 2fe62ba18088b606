# Sourced by the bench scripts (after setting root, and bin, out and cfg where they take them).
#
# find_pythons   sets py, an interpreter that imports torch ($PYTHON if set, else the first of
#                python3, python, /usr/bin/python3 that does; empty when none does), and jpy, any
#                Python, for JSON and tables (py when there is one); exits when there is none
# absolute_args  makes $bin, $out and $cfg absolute ($cfg as given, else under $root) and changes
#                to $root
# find_bench N   prints the benchmark program N under $bin ($bin/bench/N or $bin/N), or nothing

find_pythons() {
  py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for c in python3 python /usr/bin/python3; do
      if "$c" -c "import torch" 2>/dev/null; then py="$c"; break; fi
    done
  fi
  jpy="$(command -v python3 || command -v python || true)"
  [ -n "$py" ] && jpy="$py"
  [ -n "$jpy" ] || { echo "$0: no python3 found" >&2; exit 1; }
}

absolute_args() {
  case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
  case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
  case "$cfg" in /*) ;; *) [ -f "$cfg" ] || cfg="$root/$cfg" ;; esac
  [ -f "$cfg" ] && cfg="$(cd "$(dirname "$cfg")" && pwd)/$(basename "$cfg")"
  cd "$root" || exit 1
}

find_bench() {
  local c
  for c in "$bin/bench/$1" "$bin/$1"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}
