"""Where TuckerScope's per-user files live: the platform's standard config and cache folders.

Why one place: Help > About shows them and the uninstall note names them, so a user removing the app
knows exactly what stays behind. The window's settings are Qt's QSettings(organisation, application),
which on Linux is ``$XDG_CONFIG_HOME/TuckerScope/TuckerScope.conf``; platformdirs gives the same folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs

APP_NAME = "TuckerScope"  # QSettings' organisation and application name, and the config/cache folder name


def config_dir() -> Path:
    """The folder holding the window's settings (QSettings' native file on Linux and macOS)."""
    return platformdirs.user_config_path(APP_NAME, appauthor=False)


def settings_file() -> str:
    """Where QSettings keeps the window's settings: a file on Linux, the registry on Windows."""
    if sys.platform == "win32":
        return rf"HKEY_CURRENT_USER\Software\{APP_NAME}\{APP_NAME}"
    if sys.platform == "darwin":
        return str(Path.home() / "Library" / "Preferences" / f"com.{APP_NAME.lower()}.{APP_NAME}.plist")
    return str(config_dir() / f"{APP_NAME}.conf")


def cache_dir() -> Path:
    """The per-user cache folder (created by whoever first writes a cache file there, never eagerly)."""
    return platformdirs.user_cache_path(APP_NAME, appauthor=False)
