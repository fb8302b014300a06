"""End-to-end wall time of `tuckerscope segment` against TotalSegmentator's CLI on the same weights and CT.

Why: the app claims its uncompressed pipeline is TS's, at no extra cost, and that compression buys time on a
CPU. This runs, per task, one after the other from a cold process each time:
    TotalSegmentator -i CT -o ts.nii.gz --ml [--fast] -d cpu
    tuckerscope segment -i CT -o app.nii.gz --task T                   (uncompressed, fp32)
    tuckerscope segment -i CT -o app_df.nii.gz --task T --df 0.3       (Tucker-compressed, fp32)
    [--extra-precision] the two app runs again with --precision bf16 --channels-last
and prints the wall and CPU times (CPU: user + system of the process and its children, less sensitive to other
jobs on a shared machine), the ratios TS / app, and whether the uncompressed output equals TS's voxel for
voxel. Every figure comes from one run; the machine is shared, so rerun before trusting a small difference.

Without --ts-home it builds a TS home with seeded random weights from ../shared/ts_plans (tests/ts_home.py):
same architectures, so the same compute; TS runs offline (weights present, usage statistics off, HTTP(S)
proxied to a closed port).

Usage (from the repository root):
    python scripts/bench_segment.py                                  # total_fast and total, DF 0.3
    python scripts/bench_segment.py --tasks total_fast --df 0.3 0.1 --extra-precision
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CT = REPO.parent / "shared" / "data" / "example_ct_sm.nii.gz"
TASK_IDS = {"total_fast": (297,), "total": (291, 292, 293, 294, 295)}
OFFLINE_PROXY = "http://127.0.0.1:9"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT)
    parser.add_argument(
        "--ts-home", type=Path, help="existing TS home (default: build one with random weights)"
    )
    parser.add_argument("--tasks", nargs="+", default=["total_fast", "total"], choices=sorted(TASK_IDS))
    parser.add_argument("--df", nargs="+", type=float, default=[0.3])
    parser.add_argument("--extra-precision", action="store_true", help="also time bf16 + channels_last")
    parser.add_argument("--work", type=Path, help="folder for outputs (default: a temporary folder)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_segment_"))
    work.mkdir(parents=True, exist_ok=True)
    home = args.ts_home or build_home(work / "ts_home", args.tasks)
    env = offline_env(home)
    print(f"CT {args.ct} {nib.load(args.ct).shape}, TS home {home}, {os.cpu_count()} CPUs, outputs in {work}")

    rows = []
    for task in args.tasks:
        fast = ["--fast"] if task == "total_fast" else []
        ts_out = work / f"ts_{task}.nii.gz"
        ts_seconds, ts_cpu = timed(
            [ts_cli(), "-i", str(args.ct), "-o", str(ts_out), "--ml", "-d", "cpu", *fast], env
        )
        rows.append((task, "TotalSegmentator CLI", ts_seconds, ts_cpu, ts_seconds, ts_cpu, ""))
        variants = [("fp32", [], [])]
        if args.extra_precision:
            variants.append(("bf16+cl", [], ["--precision", "bf16", "--channels-last"]))
        for precision, _, precision_args in variants:
            for df in [None, *args.df]:
                name = f"app {precision}" + (f" DF {df:g}" if df is not None else " uncompressed")
                out = work / f"app_{task}_{precision}_{df or 'orig'}.nii.gz"
                command = [
                    *app_cli(),
                    "segment",
                    "-i",
                    str(args.ct),
                    "-o",
                    str(out),
                    "--task",
                    task,
                    "--quiet",
                ]
                command += precision_args + (["--df", str(df)] if df is not None else [])
                seconds, cpu = timed(command, env)
                note = ""
                if df is None and precision == "fp32":
                    note = agreement(out, ts_out)
                rows.append((task, name, seconds, cpu, ts_seconds, ts_cpu, note))
    print()
    print(f"{'task':<11} {'run':<28} {'wall s':>8} {'TS/run':>7} {'CPU s':>8} {'TS/run':>7}  note")
    for task, name, seconds, cpu, ts_seconds, ts_cpu, note in rows:
        print(
            f"{task:<11} {name:<28} {seconds:8.1f} {ts_seconds / seconds:6.2f}x {cpu:8.1f} {ts_cpu / cpu:6.2f}x  {note}"
        )
    return 0


def build_home(dest: Path, tasks: list[str]) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from ts_home import build_random_ts_home

    ids = tuple(sorted({i for task in tasks for i in TASK_IDS[task]}))
    print(f"building a random-weight TS home with datasets {ids} ...", flush=True)
    return build_random_ts_home(dest, ids, seed=0)


def offline_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(home))
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = OFFLINE_PROXY
    return env


def ts_cli() -> str:
    return shutil.which("TotalSegmentator") or str(Path(sys.executable).parent / "TotalSegmentator")


def app_cli() -> list[str]:
    found = shutil.which("tuckerscope") or str(Path(sys.executable).parent / "tuckerscope")
    return [found] if Path(found).exists() else [sys.executable, "-m", "tuckerscope.launcher"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the process and all its children) of one run."""
    print("$ " + " ".join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"  {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return seconds, cpu


def agreement(ours: Path, theirs: Path) -> str:
    a, b = (np.asanyarray(nib.load(p).dataobj) for p in (ours, theirs))
    differing = int((a != b).sum())
    classes = len(np.unique(b)) - 1
    return f"identical to TS ({classes} classes)" if differing == 0 else f"{differing} voxels differ from TS"


if __name__ == "__main__":
    sys.exit(main())
