"""Segment a large synthetic CT (512 x 512 x 600) with the 3 mm TotalSegmentator model through the app's pipeline,
and report peak memory, wall time and how fast a cancel takes effect.

Why: clinic CTs are large; the window must segment them within a peak RSS of 8 GB, show progress all along, and
stop within 2 s when the user cancels. The pipeline measured is the one the window runs, minus Qt: load_volume ->
Session.set_volume -> load_models (load + factorise) -> plan_segmentation (the visible slab first) ->
run_segmentation (original, then compressed at --df) -> apply_segmentation.

Weights are seeded random ones in a TS home built from ../shared/ts_plans (tests/ts_home.py): the same
architecture, so the same compute and memory; the labels are meaningless. Figures are from one run on a shared
machine: rerun before trusting small differences.

Usage (from the repository root):
    python scripts/bench_large_volume.py                       # 512x512x600, DF 0.3, cancel checks
    python scripts/bench_large_volume.py --df 1.0 --shape 512 512 300 --no-cancel
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from tuckerscope.core.runtime.memory import process_memory_kb

REPO = Path(__file__).resolve().parents[1]
RSS_LIMIT_GB = 8.0
CANCEL_LIMIT_S = 2.0


def gb(kb: int) -> float:
    return kb / 1024**2


def synthetic_ct(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0
) -> np.ndarray:
    """A torso-like CT in HU (int16), built slice by slice so the generator never holds float copies of it all."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = (np.arange(nx) - nx / 2) * spacing[0]
    y = (np.arange(ny) - ny / 2) * spacing[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    ct = np.empty(shape, dtype=np.int16)
    half_height = nz * spacing[2] / 2
    for k in range(nz):
        z = k * spacing[2] - half_height  # mm from the middle slice, superior positive
        width = 170 + 20 * np.cos(z / 300)
        body = (xx / width) ** 2 + (yy / 120) ** 2 < 1
        slice_hu = np.where(body, 40.0, -1000.0)
        if z > -50:  # lungs above the diaphragm
            for side in (-1, 1):
                lung = ((xx - side * 80) / 60) ** 2 + ((yy + 10) / 75) ** 2 < 1
                slice_hu[lung & body] = -820.0
        else:  # liver on the patient's right, kidneys behind
            slice_hu[body & (((xx + 70) / 75) ** 2 + ((yy + 5) / 60) ** 2 < 1)] = 60.0
            for side in (-1, 1):
                slice_hu[((xx - side * 60) / 25) ** 2 + ((yy + 70) / 35) ** 2 < 1] = 30.0
        slice_hu[(xx / 22) ** 2 + ((yy + 85) / 22) ** 2 < 1] = 700.0  # vertebral body
        slice_hu[((xx - 20) / 12) ** 2 + ((yy + 40) / 12) ** 2 < 1] = 200.0  # aorta with contrast
        slice_hu += rng.normal(0.0, 15.0, size=slice_hu.shape)
        ct[:, :, k] = np.clip(np.round(slice_hu), -1024, 3071)
    return ct


def write_ct(folder: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    """An uncompressed NIfTI (nibabel memory-maps it on load, as it does a CT a user opens)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.array(shape) * np.array(spacing) / 2
    path = folder / "large_ct.nii"
    nib.save(nib.Nifti1Image(synthetic_ct(shape, spacing), affine), path)
    return path


class ProgressLog:
    """Prints progress every ``step`` of the way and remembers when a message containing 'tile' first arrived."""

    def __init__(self, step: float = 0.05, quiet: bool = False) -> None:
        self.step = step
        self.quiet = quiet
        self.next = 0.0
        self.started = time.perf_counter()
        self.calls = 0
        self.last_fraction = 0.0
        self.last_message = ""
        self.last_call = self.started
        self.longest_gap = (0.0, "")  # seconds without a progress report, and the message before them
        self.first_tile: float | None = None

    def __call__(self, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - self.last_call > self.longest_gap[0]:
            self.longest_gap = (now - self.last_call, self.last_message)
        self.calls += 1
        self.last_call = now
        self.last_fraction = fraction
        self.last_message = message
        if self.first_tile is None and "tile" in message:
            self.first_tile = time.perf_counter()
        if fraction >= self.next and not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(
                f"  {fraction * 100:5.1f}%  {elapsed:7.1f} s  RSS {gb(process_memory_kb('VmRSS')):5.2f} GB  {message}"
            )
            self.next = fraction + self.step


class RssSampler:
    """Samples VmRSS every ``interval`` s in a thread, remembering the highest value per progress stage."""

    def __init__(self, progress: ProgressLog, interval: float = 0.1) -> None:
        self.progress = progress
        self.interval = interval
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            stage = self.progress.last_message.split(": ")[-1].split(" ")[0] or "start"
            label = f"{self.progress.last_message.split(':')[0]} / {stage}"
            self.peaks[label] = max(self.peaks.get(label, 0.0), gb(process_memory_kb("VmRSS")))

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()


def build_session(ct_path: Path, ts_home: Path, df: float, timings: dict[str, float]) -> object:
    """The window's steps up to the first segmentation request, each one timed."""
    from tuckerscope.core.imaging.volume import load_volume
    from tuckerscope.core.session.loading import load_models
    from tuckerscope.core.session.session import CaseVolume, Session

    start = time.perf_counter()
    volume = load_volume(ct_path)
    timings["load_volume"] = time.perf_counter() - start
    start = time.perf_counter()
    session = Session()
    session.set_volume(CaseVolume.from_array(volume.data, volume.affine, ct_path.name))
    timings["set_volume"] = time.perf_counter() - start
    start = time.perf_counter()
    models = load_models(f"total_fast@{ts_home}")
    session.set_experts(models.experts, "total_fast", models.source)
    timings["load_and_factorise"] = time.perf_counter() - start
    if df < 1.0:
        for name in session.experts:
            session.set_df(name, df)
    return session


def segment_whole(session: object, progress: Callable[[float, str], None]) -> float:
    """plan (slab around the middle axial slice first) -> run -> apply, as MainWindow.refresh_segmentation does."""
    from tuckerscope.core.segmentation.live_segmentation import run_segmentation

    start = time.perf_counter()
    axial = 2
    plan = session.plan_segmentation(axial, session.volume.grid.display_shape[axial] // 2)
    update = run_segmentation(
        plan, progress, threading.Event(), threading.Event(), session.apply_segmentation
    )
    session.apply_segmentation(update)
    assert session.compressed_is_current(), "the whole volume was not segmented"
    return time.perf_counter() - start


def measure_cancel(session: object, wait_for_tiles: bool, delay: float) -> tuple[float, str]:
    """Start a fresh refresh in a worker thread, cancel it after ``delay`` s (counted from the first tile if
    ``wait_for_tiles``), and return how long the worker took to stop and where it was."""
    from tuckerscope.core.runtime.errors import Cancelled
    from tuckerscope.core.segmentation.live_segmentation import run_segmentation

    session.set_volume(session.volume)  # a new Segmenter: nothing cached, the full pipeline runs again
    progress = ProgressLog(quiet=True)
    plan = session.plan_segmentation(2, session.volume.grid.display_shape[2] // 2)
    user_cancel = threading.Event()
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            run_segmentation(plan, progress, threading.Event(), user_cancel, lambda _update: None)
            outcome["result"] = "finished"
        except Cancelled:
            outcome["result"] = "cancelled"
        except Exception as error:  # reported below, the bench must still print its figures
            outcome["result"] = f"failed: {error!r}"
        outcome["ended"] = time.perf_counter()

    worker = threading.Thread(target=work, daemon=True)
    started = time.perf_counter()
    worker.start()
    while wait_for_tiles and progress.first_tile is None and worker.is_alive():
        time.sleep(0.05)
    anchor = progress.first_tile if wait_for_tiles and progress.first_tile else started
    time.sleep(max(0.0, anchor + delay - time.perf_counter()))
    where = f"{progress.last_fraction * 100:.1f}% done, {time.perf_counter() - started:.1f} s after start"
    cancelled_at = time.perf_counter()
    user_cancel.set()
    worker.join(timeout=600)
    latency = float(outcome.get("ended", time.perf_counter())) - cancelled_at
    return latency, f"{outcome.get('result', 'still running')} ({where})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 600))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0))
    parser.add_argument(
        "--df", type=float, default=0.3, help="DF of the compressed side (1.0: original only)"
    )
    parser.add_argument("--cancel-delay", type=float, default=3.0, help="seconds before cancelling")
    parser.add_argument("--no-cancel", action="store_true", help="skip the cancel-latency runs")
    parser.add_argument(
        "--work-dir", type=Path, help="where the CT and TS home go (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    from ts_home import build_random_ts_home

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        shape, spacing = tuple(args.shape), tuple(args.spacing)
        print(f"writing a synthetic {shape} CT at {spacing} mm and a random-weight TS home (task 297)")
        ct_path = write_ct(work, shape, spacing)
        home = build_random_ts_home(work / "ts_home", task_ids=(297,))
        baseline = process_memory_kb("VmRSS")
        print(
            f"RSS before the pipeline: {gb(baseline):.2f} GB (peak so far {gb(process_memory_kb('VmHWM')):.2f} GB)"
        )

        timings: dict[str, float] = {}
        session = build_session(ct_path, home, args.df, timings)
        print(f"loaded and factorised; peak RSS so far {gb(process_memory_kb('VmHWM')):.2f} GB")
        progress = ProgressLog()
        with RssSampler(progress) as sampler:
            timings["segment (slab, then whole volume; original + compressed)"] = segment_whole(
                session, progress
            )
        peak = gb(process_memory_kb("VmHWM"))

        print("\n== large volume ==")
        print(f"CT {shape} at {spacing} mm ({np.prod(shape) / 1e6:.0f} M voxels), DF {args.df}")
        for stage, seconds in timings.items():
            print(f"  {stage:58s} {seconds:8.1f} s")
        print(f"  {'total':58s} {sum(timings.values()):8.1f} s")
        gap, before = progress.longest_gap
        print(f"  progress callbacks: {progress.calls}; longest silence {gap:.1f} s, after '{before}'")
        verdict = "OK" if peak <= RSS_LIMIT_GB else "OVER BUDGET"
        print(f"  peak RSS (VmHWM): {peak:.2f} GB  [{verdict}: limit {RSS_LIMIT_GB:g} GB]")
        print("  highest sampled RSS per stage:")
        for label, value in sorted(sampler.peaks.items(), key=lambda item: -item[1])[:8]:
            print(f"    {value:5.2f} GB  {label}")

        figures = {
            "shape": list(shape),
            "df": args.df,
            "seconds": timings,
            "peak_rss_gb": peak,
            "progress_calls": progress.calls,
            "longest_progress_gap_s": gap,
            "cancel_latency_s": {},
        }
        if not args.no_cancel:
            print("\n== cancel latency ==")
            for label, wait_for_tiles, delay in (
                ("during the tiles", True, args.cancel_delay),
                ("early (preparing the input)", False, 1.0),
            ):
                latency, where = measure_cancel(session, wait_for_tiles, delay)
                figures["cancel_latency_s"][label] = latency
                verdict = "OK" if latency <= CANCEL_LIMIT_S else "TOO SLOW"
                print(f"  cancel {label}: {latency:.2f} s [{verdict}: limit {CANCEL_LIMIT_S:g} s] -> {where}")
            print(f"  peak RSS after the cancel runs: {gb(process_memory_kb('VmHWM')):.2f} GB")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
