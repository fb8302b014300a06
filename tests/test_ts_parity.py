"""Parity with TotalSegmentator itself: the app's uncompressed segmentation of the example CT equals what
TS's own CLI writes with the same weights (a TS home with seeded random weights built from the real plans).

What is compared: the multilabel NIfTI of `TotalSegmentator -i CT -o OUT --ml [--fast] -d cpu` against the
one `tuckerscope segment` writes, voxel for voxel. Random weights still give a varied label map (the seeded
networks put over 100 of the 117 classes somewhere in the example CT with the seeds used here); the test
checks that, so a comparison of two all-background maps cannot pass. TS runs offline: its home already holds
the weights (so it never downloads), usage statistics are off in its config.json, and any HTTP(S) request it
might make goes to a closed local port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ts_home import build_random_ts_home
from tuckerscope.core.cli import main as cli

MIN_CLASSES_PRESENT = 20
OFFLINE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, requests fail at once


def totalsegmentator_cli() -> str:
    found = shutil.which("TotalSegmentator") or str(Path(sys.executable).parent / "TotalSegmentator")
    if not Path(found).exists():
        pytest.skip("TotalSegmentator CLI not installed")
    return found


def offline_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(home))
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = OFFLINE_PROXY
    env["no_proxy"] = env["NO_PROXY"] = ""
    return env


def run_ts(home: Path, ct: Path, out: Path, fast: bool) -> np.ndarray:
    command = [totalsegmentator_cli(), "-i", str(ct), "-o", str(out), "--ml", "-d", "cpu"]
    result = subprocess.run(
        command + (["--fast"] if fast else []), env=offline_env(home), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Downloading" not in result.stdout
    assert json.loads((home / "config.json").read_text())["send_usage_stats"] is False
    return np.asanyarray(nib.load(out).dataobj)


def run_app(home: Path, ct: Path, out: Path, task: str, monkeypatch) -> np.ndarray:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setattr(cli, "COMMANDS", ("segment",))
    assert cli.main(["segment", "-i", str(ct), "-o", str(out), "--task", task, "--quiet"]) == 0
    return np.asanyarray(nib.load(out).dataobj)


def assert_same_segmentation(ours: np.ndarray, theirs: np.ndarray) -> None:
    present = [int(c) for c in np.unique(theirs) if c != 0]
    assert len(present) >= MIN_CLASSES_PRESENT, f"only {len(present)} classes present: weights too uniform"
    differing = int((ours != theirs).sum())
    if differing:
        low = {
            c: 2 * ((ours == c) & (theirs == c)).sum() / ((ours == c).sum() + (theirs == c).sum())
            for c in present
        }
        worst = sorted(low.items(), key=lambda item: item[1])[:5]
        pytest.fail(f"{differing} voxels differ from TotalSegmentator; lowest Dice {worst}")


def test_total_fast_equals_totalsegmentator(tmp_path, example_ct, ts_plans_dir, monkeypatch):
    home = build_random_ts_home(tmp_path / "home", (297,), seed=0)
    theirs = run_ts(home, example_ct, tmp_path / "ts.nii.gz", fast=True)
    ours = run_app(home, example_ct, tmp_path / "app.nii.gz", "total_fast", monkeypatch)
    assert ours.shape == theirs.shape == nib.load(example_ct).shape
    np.testing.assert_allclose(nib.load(tmp_path / "app.nii.gz").affine, nib.load(example_ct).affine)
    assert_same_segmentation(ours, theirs)


@pytest.mark.slow
def test_total_equals_totalsegmentator(tmp_path, example_ct, ts_plans_dir, monkeypatch):
    home = build_random_ts_home(tmp_path / "home", (291, 292, 293, 294, 295), seed=0)
    theirs = run_ts(home, example_ct, tmp_path / "ts.nii.gz", fast=False)
    ours = run_app(home, example_ct, tmp_path / "app.nii.gz", "total", monkeypatch)
    assert ours.shape == theirs.shape
    assert_same_segmentation(ours, theirs)
