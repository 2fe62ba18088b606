# Sourced by the bench scripts: finds the Python interpreters they need.
#   py   an interpreter that imports torch ($PYTHON if set, else the first of python3, python,
#        /usr/bin/python3 that does; empty when none does)
#   jpy  any Python, for JSON and tables (py when there is one); the script exits when none
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3 python /usr/bin/python3; do
    if "$c" -c "import torch" 2>/dev/null; then py="$c"; break; fi
  done
fi
jpy="$(command -v python3 || command -v python || true)"
[ -n "$py" ] && jpy="$py"
[ -n "$jpy" ] || { echo "$0: no python3 found" >&2; exit 1; }
