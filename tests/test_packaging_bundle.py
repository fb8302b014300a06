"""The desktop bundle and the offline wheelhouse, built for real (slow: minutes and GBs).

Set TUCKERSCOPE_BUNDLE (a built dist/tuckerscope folder) or TUCKERSCOPE_WHEELHOUSE to check an existing
build instead of building one here. The bundle is run with no Python on PATH and a fresh HOME, so it proves
it needs neither an installed Python nor anything a previous run left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from conftest import REPO_DIR
from tuckerscope import __version__

pytestmark = pytest.mark.slow

MAX_BUNDLE_BYTES = 2_000_000_000  # CPU torch, Qt, VTK, ITK, Arrow: about 1.7 GB today; the CUDA stack alone is 3 GB


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("TUCKERSCOPE_BUNDLE"):
        return Path(os.environ["TUCKERSCOPE_BUNDLE"])
    build_dir = tmp_path_factory.mktemp("bundle-build")
    subprocess.run(
        ["bash", str(REPO_DIR / "packaging" / "build_bundle.sh")],
        env={**os.environ, "BUILD_DIR": str(build_dir)},
        check=True,
        timeout=3600,
    )
    return build_dir / "dist" / "tuckerscope"


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """No Python reachable, a fresh home: what a clinic workstation gives the bundle."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if os.environ.get("DISPLAY"):
        env["DISPLAY"] = os.environ["DISPLAY"]
    return env


def test_bundle_reports_its_version_without_python(bundle, bare_env):
    env = {**bare_env, "PATH": "/nonexistent"}  # this machine has a Python; the bundle must not find it
    started = time.perf_counter()
    result = subprocess.run([str(bundle / "tuckerscope"), "--version"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(f"bundle --version: {seconds:.2f} s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tuckerscope {__version__}"
    info = json.loads((bundle / "BUNDLE-INFO.json").read_text())
    assert info["version"] == __version__
    assert info["torch"].endswith("+cpu")


def test_bundle_runs_the_cli_offline(bundle, bare_env):
    result = subprocess.run(
        [str(bundle / "tuckerscope"), "compress", "--model", "demo", "--df", "0.3"],
        env={**bare_env, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "organs" in result.stdout
    bad = subprocess.run(
        [str(bundle / "tuckerscope"), "segment", "-i", "/no/such.nii.gz", "-o", "/tmp/x.nii.gz", "--task", "demo"],
        env=bare_env, capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_bundle_leaves_out_cuda_torchvision_and_build_payload(bundle):
    names = {path.name for path in bundle.rglob("*")}
    assert not any(name.startswith(("libcudnn", "libcublas", "libnccl", "libtorch_cuda")) for name in names)
    assert not (bundle / "_internal" / "torchvision").exists()
    assert not (bundle / "_internal" / "torch" / "include").exists()
    size = _size(bundle)
    print(f"bundle size: {size / 1e9:.2f} GB")
    assert size < MAX_BUNDLE_BYTES


@pytest.mark.gui
def test_bundle_opens_the_demo_window(bundle, bare_env, tmp_path):
    if not bare_env.get("DISPLAY") or shutil.which("xwininfo") is None:
        pytest.skip("needs an X display (pytest-xvfb) and xwininfo")
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(bundle / "tuckerscope")], env=bare_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        shown = None
        while time.perf_counter() - started < 180 and process.poll() is None:
            tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True).stdout
            if '"TuckerScope' in tree:
                shown = time.perf_counter() - started
                break
            time.sleep(0.2)
        assert shown is not None, "no TuckerScope window appeared"
        print(f"bundle cold start to window: {shown:.1f} s")
        time.sleep(20)  # the demo phantom loads and segments in the background
        assert process.poll() is None, "the window closed by itself"
        if shutil.which("import"):
            subprocess.run(["import", "-window", "root", str(tmp_path / "bundle-window.png")], timeout=60)
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert "Traceback" not in output, output
    left = {str(p.relative_to(bare_env["HOME"])) for p in Path(bare_env["HOME"]).rglob("*") if p.is_file()}
    assert left <= {".config/TuckerScope/TuckerScope.conf"} | {p for p in left if p.startswith(".cache/fontconfig")}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("TUCKERSCOPE_WHEELHOUSE"):
        return Path(os.environ["TUCKERSCOPE_WHEELHOUSE"])
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        ["bash", str(REPO_DIR / "packaging" / "build_wheelhouse.sh"), str(folder)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        timeout=3600,
    )
    return folder


def test_wheelhouse_installs_into_a_fresh_venv_without_network(wheelhouse, tmp_path):
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    install = subprocess.run(
        [str(target / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheelhouse), "tuckerscope"],
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},  # no find-links, indexes or caps from this machine
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert install.returncode == 0, install.stderr
    result = subprocess.run([str(target / "bin" / "tuckerscope"), "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == f"tuckerscope {__version__}"
