"""Shared test fixtures: paths to the ../shared material beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_DIR.parent / "shared"


@pytest.fixture(autouse=True)
def private_cache_folder(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own per-user cache folder (XDG_CACHE_HOME, read by platformdirs on each call): the
    window keeps originals on disk, and one test's entries must never answer another's segmentation."""
    folder = tmp_path_factory.mktemp("xdg_cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared material not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def ts_plans_dir(shared_dir: Path) -> Path:
    return shared_dir / "ts_plans"


@pytest.fixture(scope="session")
def example_ct(shared_dir: Path) -> Path:
    return shared_dir / "data" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a loaded 2-core CI machine two threads spin against each other
    (5x slower), and results must not depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
