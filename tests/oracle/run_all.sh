#!/bin/sh
# Regenerate every oracle output: runs tests/oracle/gen_*.py in sorted filename
# order with the project virtual environment (.venv, see tests/oracle/README.md).
# Usage (from anywhere): sh tests/oracle/run_all.sh      (or: make oracle)
# CI never runs this; the generated files are committed.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$py" ]; then
    echo "run_all.sh: $py not found; create the venv first (see tests/oracle/README.md)" >&2
    exit 1
fi
cd "$root"
# LC_ALL=C: byte-wise sort, so gen_10 < gen_20 < gen_30_a < gen_30_b on any locale; unnumbered
# scripts (gen_eval_models.py, which needs models/tiny/tokenizer from gen_10) sort after them all.
scripts=$(ls tests/oracle/gen_*.py 2>/dev/null | LC_ALL=C sort)
if [ -z "$scripts" ]; then
    echo "run_all.sh: no tests/oracle/gen_*.py" >&2
    exit 1
fi
for s in $scripts; do
    echo "== $s"
    "$py" "$s"
done
echo "run_all.sh: all oracle scripts done"
