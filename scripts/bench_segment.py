"""End-to-end time of `tuckerscope segment` against TotalSegmentator's CLI on a real-size CT, with the network floor.

Why: compression only shrinks the network; this shows what the user waits for end to end. In one run, per task:
    TotalSegmentator -i CT -o ts.nii.gz --ml [--fast] -d cpu
    tuckerscope segment -i CT -o app.nii.gz --task T --profile [--df DF] [--precision P] [--runtime R]
for every DF (1.0 = uncompressed), precision and runtime asked for, each from a cold process, one after the
other. It prints per run: wall and CPU time (user + kernel), TS/run, the network-only floor (the sum of the tile
forwards, from the run's own --profile) and wall/floor, the peak RSS of the largest process beside TS's, and
agreement: the uncompressed fp32 PyTorch run against TS voxel for voxel, every other run against the fp32
PyTorch run at the same DF (lowest per-class Dice and voxel agreement). The full stage profile of every run is
printed too. The machine may be shared: the load average is printed before and after every run.

Targets (issue 12): uncompressed >= 2x faster than TS and voxel-identical; DF 0.3 >= 6x faster than TS; every
run within 1.3x of its floor; peak RSS no higher than TS's.

Without --ct it generates the phantom at 1.5 mm (240x200x220 voxels, the size of an ordinary abdominal CT at
the 'total' model spacing). Without --ts-home it builds a TS home with seeded random weights from
../shared/ts_plans (tests/ts_home.py): the real architectures, so the real compute.

Usage (from the repository root):
    python scripts/bench_segment.py --tasks total                                  # DF 1.0 0.5 0.3 0.1, fp32
    python scripts/bench_segment.py --tasks total_fast --precisions fp32 bf16 --runtimes torch openvino
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TASK_IDS = {"total_fast": (297,), "total": (291, 292, 293, 294, 295)}
OFFLINE_PROXY = "http://127.0.0.1:9"


@dataclass
class Run:
    name: str
    wall: float
    user: float
    kernel: float
    peak_kb: int
    output: Path
    floor: float | None = None
    note: str = ""
    failed: bool = False
    profile: list[str] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ct", type=Path, help="CT to segment (default: a generated 1.5 mm phantom)")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 200, 220], help="phantom voxels")
    parser.add_argument("--spacing", type=float, default=1.5, help="phantom spacing in mm")
    parser.add_argument(
        "--ts-home", type=Path, help="existing TS home (default: build one with random weights)"
    )
    parser.add_argument("--tasks", nargs="+", default=["total"], choices=sorted(TASK_IDS))
    parser.add_argument("--df", nargs="+", type=float, default=[1.0, 0.5, 0.3, 0.1])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16"))
    parser.add_argument("--runtimes", nargs="+", default=["torch"], choices=("torch", "openvino", "auto"))
    parser.add_argument("--threads", type=int, help="torch/OpenVINO threads of the app (default: theirs)")
    parser.add_argument("--skip-ts", action="store_true", help="do not run TotalSegmentator")
    parser.add_argument("--work", type=Path, help="folder for outputs (default: a temporary folder)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_segment_"))
    work.mkdir(parents=True, exist_ok=True)
    ct = args.ct or make_ct(work / "phantom.nii.gz", tuple(args.shape), args.spacing)
    home = args.ts_home or build_home(work / "ts_home", args.tasks)
    env = offline_env(home, work / "cache")
    image = nib.load(ct)
    print(
        f"CT {ct} {image.shape} at {tuple(round(float(z), 2) for z in image.header.get_zooms()[:3])} mm, "
        f"TS home {home}, {os.cpu_count()} CPUs, outputs in {work}"
    )

    for task in args.tasks:
        runs: list[Run] = []
        ts_run = None
        if not args.skip_ts:
            fast = ["--fast"] if task == "total_fast" else []
            out = work / f"ts_{task}.nii.gz"
            command = [ts_cli(), "-i", str(ct), "-o", str(out), "--ml", "-d", "cpu", *fast]
            ts_run = timed("TotalSegmentator CLI", command, env, out)
            runs.append(ts_run)
        references: dict[float, Path] = {}
        for runtime in args.runtimes:
            for precision in args.precisions:
                for df in args.df:
                    label = f"app {runtime} {precision} " + ("uncompressed" if df >= 1.0 else f"DF {df:g}")
                    out = work / f"app_{task}_{runtime}_{precision}_{df:g}.nii.gz"
                    command = [*app_cli(), "segment", "-i", str(ct), "-o", str(out), "--task", task]
                    command += ["--quiet", "--profile", "--precision", precision, "--runtime", runtime]
                    command += ["--df", str(df)] if df < 1.0 else []
                    command += ["--threads", str(args.threads)] if args.threads else []
                    run = timed(label, command, env, out)
                    runs.append(run)
                    if run.failed:
                        continue
                    if runtime == "torch" and precision == "fp32":
                        references[df] = out
                        if df >= 1.0 and ts_run is not None and not ts_run.failed:
                            run.note = identical(out, ts_run.output)
                    elif df in references:
                        run.note = "vs app torch fp32: " + agreement(out, references[df])
        report(task, runs, ts_run)
    return 0


def make_ct(path: Path, shape: tuple[int, int, int], spacing: float) -> Path:
    from tuckerscope.core.imaging.phantom import make_phantom

    print(f"generating a {shape} phantom at {spacing} mm ...", flush=True)
    phantom = make_phantom(0, shape, spacing)
    nib.save(nib.Nifti1Image(np.round(phantom.ct).astype(np.int16), phantom.affine), path)
    return path


def build_home(dest: Path, tasks: list[str]) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from ts_home import build_random_ts_home

    ids = tuple(sorted({i for task in tasks for i in TASK_IDS[task]}))
    print(f"building a random-weight TS home with datasets {ids} ...", flush=True)
    return build_random_ts_home(dest, ids, seed=0)


def offline_env(home: Path, cache: Path) -> dict[str, str]:
    """TS offline on the given home; the app's disk caches (OpenVINO exports, auto choices) in the work folder."""
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(home), XDG_CACHE_HOME=str(cache))
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = OFFLINE_PROXY
    env["no_proxy"] = env["NO_PROXY"] = ""
    return env


def ts_cli() -> str:
    return shutil.which("TotalSegmentator") or str(Path(sys.executable).parent / "TotalSegmentator")


def app_cli() -> list[str]:
    found = shutil.which("tuckerscope") or str(Path(sys.executable).parent / "tuckerscope")
    return [found] if Path(found).exists() else [sys.executable, "-m", "tuckerscope.launcher"]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def timed(name: str, command: list[str], env: dict[str, str], output: Path) -> Run:
    """One run from a cold process: wall, user and kernel CPU and peak RSS of it and its descendants (wait4)."""
    print(f"$ {' '.join(command)}    [{load()}]", flush=True)
    logs = output.with_name(output.name.replace(".nii.gz", ".log"))
    start = time.perf_counter()
    with logs.open("w") as stream:
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    text = logs.read_text()
    run = Run(name, wall, usage.ru_utime, usage.ru_stime, int(usage.ru_maxrss), output)
    if process.returncode != 0:  # reported in the table; the other runs still go ahead
        print(f"  failed ({process.returncode}):\n{text[-2000:]}", flush=True)
        run.failed = True
        run.note = f"FAILED (exit {process.returncode}; -9: killed, e.g. out of memory)"
        return run
    lines = text.splitlines()
    if "stage profile" in text:
        run.profile = lines[next(i for i, line in enumerate(lines) if line.startswith("stage profile")) :]
        match = re.search(r"tiles \(network\)\s+([\d.]+) s", text)
        run.floor = float(match.group(1)) if match else None
    print(
        f"  {wall:.1f} s wall, CPU user {run.user:.1f} s kernel {run.kernel:.1f} s, peak RSS "
        f"{run.peak_kb / 1024**2:.2f} GB    [{load()}]",
        flush=True,
    )
    for line in run.profile:
        print("  " + line, flush=True)
    return run


def identical(ours: Path, theirs: Path) -> str:
    a, b = (np.asanyarray(nib.load(p).dataobj) for p in (ours, theirs))
    differing = int((a != b).sum())
    classes = len(np.unique(b)) - 1
    return f"identical to TS ({classes} classes)" if differing == 0 else f"{differing} voxels differ from TS"


def agreement(ours: Path, reference: Path) -> str:
    """Lowest per-class Dice (classes in either map) and the share of voxels with the same label."""
    a, b = (np.asanyarray(nib.load(p).dataobj) for p in (ours, reference))
    classes = [c for c in np.union1d(np.unique(a), np.unique(b)) if c != 0]
    counts_a = np.bincount(a.ravel(), minlength=int(max(a.max(), b.max())) + 1)
    counts_b = np.bincount(b.ravel(), minlength=counts_a.size)
    same = a == b
    both = np.bincount(a[same].ravel(), minlength=counts_a.size)
    dice = {int(c): 2 * both[c] / (counts_a[c] + counts_b[c]) for c in classes}
    worst = min(dice, key=dice.get) if dice else None
    text = f"voxels {100 * same.mean():.4f}% equal"
    if worst is not None:
        text += f", min Dice {dice[worst]:.4f} (class {worst}), {sum(d < 0.999 for d in dice.values())} classes < 0.999"
    return text


def report(task: str, runs: list[Run], ts_run: Run | None) -> None:
    print()
    print(f"task {task}  [{load()}]")
    header = f"{'run':<34} {'wall s':>8} {'TS/run':>7} {'floor s':>8} {'wall/floor':>10} {'user s':>8} {'kernel s':>8} {'peak GB':>8}  note"
    print(header)
    for run in runs:
        ratio = f"{ts_run.wall / run.wall:6.2f}x" if ts_run is not None and not run.failed else "     -"
        floor = f"{run.floor:8.1f}" if run.floor else "       -"
        over = f"{run.wall / run.floor:9.2f}x" if run.floor else "         -"
        print(
            f"{run.name:<34} {run.wall:8.1f} {ratio:>7} {floor} {over:>10} {run.user:8.1f} {run.kernel:8.1f} "
            f"{run.peak_kb / 1024**2:8.2f}  {run.note}"
        )


if __name__ == "__main__":
    sys.exit(main())
