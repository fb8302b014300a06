#!/usr/bin/env bash
# Install the TuckerScope bundle for the current user, without root, in the XDG folders:
#   bundle    $XDG_DATA_HOME/tuckerscope/bundle     (XDG_DATA_HOME defaults to ~/.local/share)
#   command   ~/.local/bin/tuckerscope -> the bundle's executable (the window and every CLI subcommand)
#   menu      $XDG_DATA_HOME/applications/, icons/hicolor/, metainfo/
# Every path it writes goes into $XDG_DATA_HOME/tuckerscope/installed-files.txt; uninstall.sh removes
# exactly those. Usage: install.sh [BUNDLE_DIR]  (default: the folder this script is in, as shipped in a
# bundle; from a checkout: packaging/install.sh /tmp/bundle-build/dist/tuckerscope)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUNDLE=$(cd "${1:-$HERE}" && pwd)
APP_ID=io.github.tuckerscope.TuckerScope
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
BIN=$HOME/.local/bin
TARGET=$DATA/tuckerscope
MANIFEST=$TARGET/installed-files.txt

if [ ! -x "$BUNDLE/tuckerscope" ]; then
  echo "no bundle at $BUNDLE (expected an executable $BUNDLE/tuckerscope); build one with packaging/build_bundle.sh" >&2
  exit 2
fi
if [ "$BUNDLE" = "$TARGET/bundle" ]; then
  echo "$BUNDLE is the installed copy already; run install.sh from the bundle you unpacked or built" >&2
  exit 2
fi
# The desktop files travel inside the bundle (share/); from a checkout they are beside this script.
SHARE=$BUNDLE/share; [ -f "$SHARE/$APP_ID.desktop" ] || SHARE=$HERE/linux
if [ -f "$MANIFEST" ]; then
  "$(dirname "$0")/uninstall.sh" --quiet 2>/dev/null || "$TARGET/uninstall.sh" --quiet
fi

mkdir -p "$TARGET" "$BIN" "$DATA/applications" "$DATA/metainfo" \
  "$DATA/icons/hicolor/scalable/apps" "$DATA/icons/hicolor/256x256/apps"
: > "$MANIFEST.new"
record() { echo "$1" >> "$MANIFEST.new"; }

rm -rf "$TARGET/bundle.partial"
cp -a "$BUNDLE" "$TARGET/bundle.partial" && mv "$TARGET/bundle.partial" "$TARGET/bundle"
record "$TARGET/bundle"
cp "$HERE/uninstall.sh" "$TARGET/uninstall.sh"; record "$TARGET/uninstall.sh"
EXE=$TARGET/bundle/tuckerscope

if [ -e "$BIN/tuckerscope" ] && [ ! -L "$BIN/tuckerscope" ]; then
  echo "note: $BIN/tuckerscope exists and is not ours (a pip install?); left as it is, the menu entry still works" >&2
else
  ln -sfn "$EXE" "$BIN/tuckerscope"; record "$BIN/tuckerscope"
fi
sed "s|^Exec=tuckerscope|Exec=\"$EXE\"|" "$SHARE/$APP_ID.desktop" > "$DATA/applications/$APP_ID.desktop"
record "$DATA/applications/$APP_ID.desktop"
cp "$SHARE/$APP_ID.metainfo.xml" "$DATA/metainfo/"; record "$DATA/metainfo/$APP_ID.metainfo.xml"
cp "$SHARE/$APP_ID.svg" "$DATA/icons/hicolor/scalable/apps/"; record "$DATA/icons/hicolor/scalable/apps/$APP_ID.svg"
cp "$SHARE/$APP_ID.png" "$DATA/icons/hicolor/256x256/apps/"; record "$DATA/icons/hicolor/256x256/apps/$APP_ID.png"
mv "$MANIFEST.new" "$MANIFEST"

# No update-desktop-database / gtk-update-icon-cache: menus watch these folders, the entry declares no MIME
# types, and a user-level icon cache would be a file this script leaves that must then be kept up to date.

echo "TuckerScope $("$EXE" --version | cut -d' ' -f2) installed in $TARGET"
echo "start it from the menu or with: $BIN/tuckerscope   (remove it with: $TARGET/uninstall.sh)"
case ":$PATH:" in *":$BIN:"*) ;; *) echo "note: $BIN is not on PATH; add it to run 'tuckerscope' by name" ;; esac
