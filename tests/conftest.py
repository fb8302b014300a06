"""Shared test fixtures: paths to the ../shared material beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_DIR.parent / "shared"


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
