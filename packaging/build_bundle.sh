#!/usr/bin/env bash
# Build the one-folder desktop bundle (PyInstaller) from this checkout, outside the repository:
#   packaging/build_bundle.sh            -> $BUILD_DIR/dist/tuckerscope/tuckerscope  (BUILD_DIR=/tmp/bundle-build)
# It makes a build venv with the pinned dependencies but a CPU-only torch and no torchvision (see
# bundle/runtime_requirements.py), installs this project into it (not editable), and freezes packaging/bundle/tuckerscope.spec.
# Needs Python 3.11 (the CPU torch file is cp311) and the package registry (or its files on disk).
# Environment: BUILD_DIR, PYTHON (default python3.11), BUNDLE_TORCH (a pip requirement or wheel file of a
# CPU-only torch; default torch==2.13.0, which pip here takes from the CPU file in its find-links).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/bundle-build}
PYTHON=${PYTHON:-python3.11}
BUNDLE_TORCH=${BUNDLE_TORCH:-torch==2.13.0}
VENV="$BUILD_DIR/venv"
start=$(date +%s)

case "$BUILD_DIR" in "$REPO"|"$REPO"/*) echo "BUILD_DIR must be outside the repository" >&2; exit 2;; esac
mkdir -p "$BUILD_DIR"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# 1. What the pinned install would be, then the same set less the CUDA torch stack, plus a CPU torch
#    (redone only when the pins or the torch choice change; the project itself is reinstalled every time).
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }  # this machine's pip config is noisy
stamp=$(cat "$REPO/constraints.txt" "$REPO/pyproject.toml" <(echo "$BUNDLE_TORCH") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.tuckerscope-deps" 2>/dev/null)" != "$stamp" ]; then
  quiet "$VENV/bin/pip" install -q --dry-run --ignore-installed --report "$BUILD_DIR/resolved.json" \
    -c "$REPO/constraints.txt" "$REPO[bundle]"
  "$VENV/bin/python" "$REPO/packaging/bundle/runtime_requirements.py" "$BUILD_DIR/resolved.json" \
    > "$BUILD_DIR/requirements.txt"
  quiet "$VENV/bin/pip" install -q --no-deps -r "$BUILD_DIR/requirements.txt" "$BUNDLE_TORCH"
  echo "$stamp" > "$VENV/.tuckerscope-deps"
fi
quiet "$VENV/bin/pip" install -q --no-deps --force-reinstall "$REPO"
if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
  echo "BUNDLE_TORCH=$BUNDLE_TORCH is a CUDA build; the bundle needs a CPU-only torch wheel" >&2
  exit 2
fi

# 2. Freeze. The work folder is kept between builds (PyInstaller caches its analysis there).
"$VENV/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$BUILD_DIR/dist" \
  --workpath "$BUILD_DIR/work" "$REPO/packaging/bundle/tuckerscope.spec"
BUNDLE="$BUILD_DIR/dist/tuckerscope"
"$VENV/bin/python" "$REPO/packaging/bundle/bundle_info.py" "$BUNDLE" "$REPO"
# What a user needs beside the executable: the per-user installer and the desktop files it installs.
cp "$REPO/packaging/install.sh" "$REPO/packaging/uninstall.sh" "$BUNDLE/"
mkdir -p "$BUNDLE/share" && cp "$REPO"/packaging/linux/io.github.tuckerscope.TuckerScope.* "$BUNDLE/share/"

echo "bundle: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1)), built in $(( $(date +%s) - start )) s"
