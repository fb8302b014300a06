"""A 512 x 512 x 600 CT through the window's pipeline with the 3 mm model: peak RSS within 8 GB, progress all along,
cancel within 2 s. Runs scripts/bench_large_volume.py in its own process (so VmHWM is this run's alone) and checks
the figures it writes. Slow: about 10 minutes on an idle 2-core CPU, far more on a busy one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_large_volume_fits_in_memory_reports_progress_and_cancels_fast(tmp_path):
    figures_path = tmp_path / "figures.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_large_volume.py"),
            "--work-dir",
            str(tmp_path),
            "--json",
            str(figures_path),
        ],
        capture_output=True,
        text=True,
        timeout=6 * 3600,
    )
    print(completed.stdout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["shape"] == [512, 512, 600]
    assert figures["peak_rss_gb"] <= 8.0
    assert figures["progress_calls"] >= 20
    for where, latency in figures["cancel_latency_s"].items():
        assert latency <= 2.0, f"cancel {where} took {latency:.2f} s"
