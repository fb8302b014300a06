"""Packaging facts that need no build: one version everywhere, the About facts, valid desktop metadata."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import REPO_DIR
from tuckerscope import __version__
from tuckerscope.core.runtime import locations
from tuckerscope.core.session.about import about_info, about_text

PACKAGING = REPO_DIR / "packaging"
DESKTOP_FILE = PACKAGING / "linux" / "io.github.tuckerscope.TuckerScope.desktop"
METAINFO_FILE = PACKAGING / "linux" / "io.github.tuckerscope.TuckerScope.metainfo.xml"


def test_one_version_for_metadata_cli_about_and_metainfo():
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("tuckerscope")), "--version"], capture_output=True, text=True, timeout=120
    )
    releases = ET.parse(METAINFO_FILE).getroot().find("releases")
    assert releases is not None
    newest = releases.find("release")
    assert newest is not None
    assert version("tuckerscope") == __version__
    assert cli.stdout.strip() == f"tuckerscope {__version__}"
    assert about_info()["version"] == __version__
    assert newest.get("version") == __version__


def test_about_names_torch_devices_models_and_where_settings_live(monkeypatch, tmp_path):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = about_info()
    text = about_text()
    assert info["torch"].split("+")[0] in text
    assert info["devices"][0].startswith("cpu (")
    assert any(str(tmp_path / "ts-home") in entry and "absent" in entry for entry in info["ts_search_order"])
    assert Path(info["demo_models"]).is_dir()
    assert info["settings"] == str(tmp_path / "config" / "TuckerScope" / "TuckerScope.conf")
    assert info["cache"] == str(tmp_path / "cache" / "TuckerScope")
    assert not (tmp_path / "cache").exists()  # asking where the cache is creates nothing


@pytest.mark.gui
def test_settings_file_is_where_qsettings_writes(monkeypatch, tmp_path):
    from pyqtgraph.Qt import QtCore

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    QtCore.QSettings.setPath(QtCore.QSettings.Format.NativeFormat, QtCore.QSettings.Scope.UserScope, str(tmp_path))
    settings = QtCore.QSettings(locations.APP_NAME, locations.APP_NAME)
    settings.setValue("probe", 1)
    settings.sync()
    assert settings.fileName() == locations.settings_file()


@pytest.mark.parametrize(
    ("tool", "args", "path"),
    [
        ("desktop-file-validate", [], DESKTOP_FILE),
        ("appstreamcli", ["validate", "--no-net", "--pedantic"], METAINFO_FILE),
    ],
)
def test_desktop_metadata_validates(tool, args, path):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (apt-get install desktop-file-utils appstream)")
    result = subprocess.run([tool, *args, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _fake_bundle(folder: Path) -> Path:
    """A stand-in for a built bundle: an executable that answers --version like the real one."""
    folder.mkdir(parents=True)
    exe = folder / "tuckerscope"
    exe.write_text(f"#!/bin/sh\necho 'tuckerscope {__version__}'\n")
    exe.chmod(0o755)
    (folder / "_internal").mkdir()
    (folder / "_internal" / "payload.bin").write_bytes(b"x" * 10)
    return folder


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()}


def test_install_puts_bundle_entry_and_icon_in_home_and_uninstall_removes_exactly_that(tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "TuckerScope").mkdir(parents=True)
    (home / ".config" / "TuckerScope" / "TuckerScope.conf").write_text("[General]\n")
    (home / ".local" / "share" / "applications").mkdir(parents=True)
    (home / ".local" / "share" / "applications" / "other.desktop").write_text("[Desktop Entry]\n")
    before = _tree(home)
    bundle = _fake_bundle(tmp_path / "dist" / "tuckerscope")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}

    installed = subprocess.run(
        ["bash", str(PACKAGING / "install.sh"), str(bundle)], env=env, capture_output=True, text=True, timeout=60
    )
    assert installed.returncode == 0, installed.stderr
    assert f"TuckerScope {__version__} installed" in installed.stdout
    data = home / ".local" / "share"
    exe = data / "tuckerscope" / "bundle" / "tuckerscope"
    entry = data / "applications" / DESKTOP_FILE.name
    assert (home / ".local" / "bin" / "tuckerscope").resolve() == exe
    assert f'Exec="{exe}" %f' in entry.read_text()
    assert (data / "icons" / "hicolor" / "256x256" / "apps" / "io.github.tuckerscope.TuckerScope.png").is_file()
    assert (data / "metainfo" / METAINFO_FILE.name).is_file()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout

    removed = subprocess.run(
        [str(data / "tuckerscope" / "uninstall.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert removed.returncode == 0, removed.stderr
    assert _tree(home) == before  # the user's settings and other apps' entries stay; nothing of ours does
    assert not (data / "tuckerscope").exists()
    assert f"kept your settings: {home}/.config/TuckerScope" in removed.stdout


def test_uninstall_without_install_says_so(tmp_path):
    result = subprocess.run(
        ["bash", str(PACKAGING / "uninstall.sh")], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "not installed" in result.stderr
