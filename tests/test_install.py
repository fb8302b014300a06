"""The distribution installs as one namespaced package with its console script and demo files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_DIR


def _console_script() -> Path:
    return Path(sys.executable).with_name("tuckerscope")


def test_console_script_reports_version():
    result = subprocess.run(
        [str(_console_script()), "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tuckerscope ")


def test_version_answers_without_importing_torch():
    """Install checks run --version first: it must not pay seconds of torch import (the bundle's cold start)."""
    code = (
        "import sys; from tuckerscope.launcher import main; main(['--version']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tuckerscope ")


def test_unknown_subcommand_is_one_line_error():
    result = subprocess.run(
        [sys.executable, "-m", "tuckerscope.core.cli.main", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO_DIR),
        ],
        check=True,
        timeout=300,
    )
    return next(out.glob("tuckerscope-*.whl"))


def test_wheel_holds_only_the_namespaced_package(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_levels == {"tuckerscope"}
    assert "tuckerscope/launcher.py" in names


def test_wheel_holds_every_module_of_the_repository(wheel: Path):
    """A subpackage missing from the wheel breaks every non-editable install (core/commands/ once was)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    in_repo = {
        f"tuckerscope/{source.relative_to(REPO_DIR).as_posix()}"
        for folder in ("core", "app", "resources")
        for source in (REPO_DIR / folder).rglob("*.py")
    }
    assert in_repo and not in_repo - names, sorted(in_repo - names)


def test_wheel_ships_the_demo_models(wheel: Path):
    demo_dir = REPO_DIR / "resources" / "demo_models"
    in_repo = {
        p.relative_to(demo_dir).as_posix() for p in demo_dir.rglob("*") if p.suffix in (".json", ".pth")
    }
    assert any(n.endswith("checkpoint_final.pth") for n in in_repo), "no demo models in resources/demo_models"
    prefix = "tuckerscope/resources/demo_models/"
    in_wheel = {n[len(prefix) :] for n in zipfile.ZipFile(wheel).namelist() if n.startswith(prefix)}
    assert in_repo <= in_wheel
