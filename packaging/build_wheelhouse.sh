#!/usr/bin/env bash
# Build an offline wheelhouse for Python users: this project's wheel plus every pinned dependency
# (constraints.txt), all as wheels, so the offline machine needs neither a network nor a compiler.
#   packaging/build_wheelhouse.sh [WHEELHOUSE]          (default /tmp/tuckerscope-wheelhouse)
# On the offline machine (same OS, CPU architecture and Python minor version as the builder's):
#   python3 -m venv venv && venv/bin/pip install --no-index --find-links WHEELHOUSE tuckerscope
# PYTHON picks the interpreter whose pip builds it (default python3); its version is the one served.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELHOUSE=${1:-/tmp/tuckerscope-wheelhouse}
PYTHON=${PYTHON:-python3}
start=$(date +%s)

case "$WHEELHOUSE" in "$REPO"|"$REPO"/*) echo "the wheelhouse must be outside the repository" >&2; exit 2;; esac
mkdir -p "$WHEELHOUSE"
# pip wheel builds the project's wheel and fetches (or builds, for sdist-only packages) every dependency
# at exactly its pinned version; the CUDA torch stack is taken from the local disk where pip finds it.
"$PYTHON" -m pip wheel -q -c "$REPO/constraints.txt" -w "$WHEELHOUSE" "$REPO" 2> >(grep -v "is ignored" >&2)
cp "$REPO/constraints.txt" "$WHEELHOUSE/constraints.txt"
echo "wheelhouse: $WHEELHOUSE ($(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)), built in $(( $(date +%s) - start )) s"
echo "install offline with: pip install --no-index --find-links $WHEELHOUSE tuckerscope"
