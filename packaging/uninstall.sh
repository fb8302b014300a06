#!/usr/bin/env bash
# Remove what install.sh installed: exactly the paths in $XDG_DATA_HOME/tuckerscope/installed-files.txt.
# The user's own files stay unless --purge is given, and this script says where they are:
#   settings  $XDG_CONFIG_HOME/TuckerScope/TuckerScope.conf   (the window's QSettings; XDG_CONFIG_HOME=~/.config)
#   cache     $XDG_CACHE_HOME/TuckerScope                      (XDG_CACHE_HOME=~/.cache)
# Exported segmentations, reports and meshes are wherever the user saved them; TS weights are never touched.
# Usage: uninstall.sh [--purge] [--quiet]
set -euo pipefail
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
TARGET=$DATA/tuckerscope
MANIFEST=$TARGET/installed-files.txt
SETTINGS=${XDG_CONFIG_HOME:-$HOME/.config}/TuckerScope
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/TuckerScope
PURGE=0; QUIET=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    --quiet) QUIET=1 ;;
    *) echo "usage: uninstall.sh [--purge] [--quiet]" >&2; exit 2 ;;
  esac
done
say() { [ "$QUIET" = 1 ] || echo "$@"; }

if [ ! -f "$MANIFEST" ]; then
  echo "TuckerScope is not installed here (no $MANIFEST)" >&2
  exit 2
fi
while IFS= read -r path; do
  case "$path" in
    "$TARGET"/*|"$HOME/.local/bin/tuckerscope"|"$DATA"/applications/*|"$DATA"/metainfo/*|"$DATA"/icons/hicolor/*) ;;
    *) echo "skipping $path: not a place install.sh writes to" >&2; continue ;;
  esac
  rm -rf -- "$path"
done < "$MANIFEST"
rm -f -- "$MANIFEST"
rmdir -- "$TARGET" 2>/dev/null || true
say "TuckerScope removed."

if [ "$PURGE" = 1 ]; then
  rm -rf -- "$SETTINGS" "$CACHE"
  say "settings ($SETTINGS) and cache ($CACHE) removed too."
else
  for left in "$SETTINGS" "$CACHE"; do
    [ -e "$left" ] && say "kept your $( [ "$left" = "$SETTINGS" ] && echo settings || echo cache ): $left (uninstall.sh --purge removes it)"
  done
fi
exit 0
