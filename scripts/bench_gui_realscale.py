"""The window at real scale (issue 12): a real-size CT with TS's five 'total' experts, against the window targets.

Measures, in one run, with a fresh on-disk original cache:
(a) open -> the first expert's original on screen (its slab, or its whole volume when the slab needs every
    tile), and when each expert's original arrived (target: first <= 60 s);
(b) once every original exists, a slider dragged 1.0 -> 0.3 in five steps and released -> the visible slice
    of that expert's compressed labels on screen (the 'slab' update, or 'volume' when the slab needs every
    tile) and -> its whole volume (target: slice <= 8 s): (b1) organs at the slice the window opened on (the
    middle one: at 240x200x220 voxels it lies where the tiles overlap, so its slab needs all 12 tiles), (b2)
    vertebrae at axial slice 60 (outside the overlap: 6 tiles, slab first);
(c) the window closed and a new one opened on the same CT and model (its saved DFs come back, as for a
    user) -> every original on screen from the persistent cache (target: <= 5 s).
Each figure is printed with the process's CPU seconds so far in its phase (what a loaded machine inflates
least) and the load average; each phase ends with the segmenter's stage profile and the event-loop stalls;
--trace-stalls adds the stacks seen during stalls in (b). The window waits for its agreement scoring (all
classes, NSD) before each next step: minutes on a loaded machine, not part of any figure.

The CT (the 1.5 mm phantom of scripts/bench_segment.py, 240x200x220 voxels) and the random-weight TS home
(tests/ts_home.py) are built once in --work and reused by later runs; the original cache (XDG_CACHE_HOME,
which platformdirs and so OriginalCache() honour) is a fresh temporary folder per run, so runs repeat.
--runtime openvino|auto runs the networks as the Run menu's choice does; their exports are kept in
--work/openvino-exports (converted on the first such run, read back on later ones, as a user's cache does).

Run from the repository root (about 10 minutes on a quiet 2-core machine):
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/bench_gui_realscale.py \
        --work /tmp/tuckerscope-realscale --screenshot /tmp/realscale.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tuckerscope.core.runtime.memory import relaunch_retaining_memory

if __name__ == "__main__":  # not in the window's spawned worker processes, which import this module again
    relaunch_retaining_memory()  # as the `tuckerscope` launcher does for the window, before any other import

from bench_gui_latency import StallProbe, StallTracer, networks_built, pump  # noqa: E402
from bench_segment import build_home, make_ct  # noqa: E402

from tuckerscope.app.slice_views import PLANES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"first original": 60.0, "slice at DF 0.3": 8.0, "reopen originals": 5.0}


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def cpu_seconds() -> float:
    """User + kernel CPU of this process (all threads) and its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


CPU_AT_START = [cpu_seconds()]  # reset at the start of each phase: CPU is what a loaded machine cannot inflate


def report(name: str, seconds: float, extra: str = "") -> None:
    target = TARGETS.get(name)
    verdict = "" if target is None else f" (target <= {target:g} s: {'met' if seconds <= target else 'MISSED'})"
    cpu = cpu_seconds() - CPU_AT_START[0]
    print(f"{name}: {seconds:.1f} s{verdict}{extra}  [process CPU {cpu:.1f} s so far; {load()}]", flush=True)


class PhaseProfile:
    """Stage seconds of the window's Segmenters (passed in by patching the loader), one StageProfile per phase."""

    def __init__(self) -> None:
        from tuckerscope.core.segmentation.profile import StageProfile

        self.make = StageProfile
        self.current = StageProfile()

    def __call__(self, stage: str, seconds: float) -> None:
        self.current(stage, seconds)

    def print_and_reset(self, phase: str) -> None:
        print(f"{phase}, {self.current.report()}", flush=True)
        self.current = self.make()

    def install(self) -> None:
        """The window builds its Segmenter in core.session.loading: give it this profile."""
        import functools

        from tuckerscope.core.session import loading

        loading.Segmenter = functools.partial(loading.Segmenter, profile=self)


class Timeline:
    """Every segmentation update of a window, stamped: what arrived when, from the moment ``start`` was called."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.updates: list[tuple[float, object]] = []

    def record(self, update: object) -> None:
        self.updates.append((time.perf_counter() - self.start, update))

    def first(self, condition: Callable[[object], bool]) -> float | None:
        return next((t for t, update in self.updates if condition(update)), None)

    def print_originals(self, experts: list[str]) -> None:
        for name in experts:
            shown = self.first(lambda u, n=name: n in u.originals)
            whole = self.first(lambda u, n=name: n in u.complete_originals)
            stage = next((u.stage for _, u in self.updates if name in u.originals), "-")
            print(f"  {name:<10} original first shown {fmt(shown)} ({stage}), whole volume {fmt(whole)}")

    def print_updates(self) -> None:
        for seconds, update in self.updates:
            print(f"  {seconds:7.1f} s  {update.stage:<6} {update.description}")


def print_stalls(probe: StallProbe, phase: str) -> None:
    """The longest gaps between the probe's 10 ms ticks since the last call, then start afresh."""
    gaps = sorted(probe.gaps) or [0.0]
    over = sum(gap > 0.2 for gap in gaps)
    print(
        f"event loop during {phase}: longest stall {gaps[-1] * 1000:.0f} ms, 99th percentile "
        f"{gaps[int(0.99 * (len(gaps) - 1))] * 1000:.0f} ms, {over} stalls > 200 ms over {len(gaps)} ticks",
        flush=True,
    )
    probe.gaps = []


def fmt(seconds: float | None) -> str:
    return "   -   " if seconds is None else f"{seconds:6.1f} s"


def open_window(settings_file: Path, ct: Path, model: str) -> tuple[object, Timeline]:
    from pyqtgraph.Qt import QtCore

    from tuckerscope.app.launch_args import LaunchRequest
    from tuckerscope.app.main_window import MainWindow

    CPU_AT_START[0] = cpu_seconds()
    settings = QtCore.QSettings(str(settings_file), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1900, 1040)
    window.show()
    timeline = Timeline()
    window.session.events.segmentation_changed.connect(timeline.record)
    window.open_request(LaunchRequest(ct=ct, model=model, phantom_seed=7))
    return window, timeline


def release(
    app: object, window: object, expert: str, df: float, timeout: float, probe: StallProbe, phases: PhaseProfile,
    phase: str,
) -> None:
    """Drag ``expert``'s slider to ``df`` in five steps, release, and report release -> visible slice, volume."""
    view = window.slice_view
    plan = window.session.plan_segmentation(PLANES[view.plane].slice_axis, view.slice_index)
    loaded = window.session.experts[expert].loaded
    whole = window.session.segmenter.roi_needs_every_tile(loaded, plan.roi)
    print(
        f"{phase} {expert} to DF {df:g} at {plan.roi_description}: the slab needs "
        f"{'every tile (no slab pass)' if whole else 'part of the tiles (slab first)'}",
        flush=True,
    )
    row = window.experts_panel.rows[expert]
    current = row.slider.value()
    for step in range(1, 6):
        row.slider.setValue(round(current + (df - current) * step / 5, 2))
        deadline = time.perf_counter() + 0.03
        while time.perf_counter() < deadline:
            app.processEvents()
    released = time.perf_counter()
    CPU_AT_START[0] = cpu_seconds()
    seen: dict[str, float] = {}

    def stamp(update: object) -> None:
        if expert in update.compressed_keys:
            seen.setdefault(update.stage, time.perf_counter() - released)

    window.session.events.segmentation_changed.connect(stamp)
    network = pump(app, lambda: networks_built(window), timeout) - released
    pump(app, lambda: bool(seen), timeout)
    stage = "slab" if "slab" in seen else "volume"
    report(f"slice at DF {df:g}", seen[stage], f" ({stage}; network built {network * 1000:.0f} ms)")
    pump(app, lambda: "volume" in seen, timeout)
    report("whole volume at DF", seen["volume"])
    window.session.events.segmentation_changed.disconnect(stamp)
    phases.print_and_reset(f"{phase} {expert} at DF {df:g}, release -> whole volume")
    pump(app, window.is_idle, timeout)
    report(f"{phase} window idle (3D, agreement)", time.perf_counter() - released)
    print_stalls(probe, phase)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tuckerscope-realscale")
    parser.add_argument("--expert", default="organs", help="expert whose slider is moved in (b)")
    parser.add_argument("--df", type=float, default=0.3, help="DF released at in (b)")
    parser.add_argument("--other-expert", default="vertebrae", help="expert moved in (b2), at --other-slice")
    parser.add_argument(
        "--other-slice", type=int, default=60, help="axial slice of (b2) (60: outside the tiles' overlap)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each step")
    parser.add_argument("--screenshot", type=Path, help="X root-window screenshot once the originals are shown")
    parser.add_argument(
        "--cache", type=Path, help="original-cache folder to use (default: a fresh one; a filled one makes (a) a reopen)"
    )
    parser.add_argument("--trace-stalls", action="store_true", help="print thread stacks seen during stalls in (b)")
    parser.add_argument(
        "--runtime", default="torch", choices=("torch", "openvino", "auto"), help="the Run menu's runtime"
    )
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="the Run menu's precision")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    ct = args.work / "phantom.nii.gz"
    if not ct.exists():
        make_ct(ct, (240, 200, 220), 1.5)
    home = args.work / "ts_home"
    if not (home / "config.json").exists():
        build_home(home, ["total"])
    cache = args.cache or Path(tempfile.mkdtemp(prefix="tuckerscope-realscale-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(cache)  # before any window: OriginalCache() reads it via platformdirs
    if args.runtime != "torch":  # exports converted once and kept, as a user's cache keeps them; originals fresh
        from tuckerscope.core.segmentation.runtimes import default_export_folder

        exports = args.work / "openvino-exports"
        exports.mkdir(exist_ok=True)
        default_export_folder().parent.mkdir(parents=True, exist_ok=True)
        if not default_export_folder().exists():
            default_export_folder().symlink_to(exports)
    model = f"total@{home}"
    print(f"CT {ct}, model {model}, original cache {cache}{'' if args.cache else ' (fresh)'}, {os.cpu_count()} CPUs  [{load()}]", flush=True)

    from pyqtgraph.Qt import QtWidgets

    from tuckerscope.core.runtime.memory import process_memory_kb, retain_for_interactive_use

    retain_for_interactive_use()  # as run_app does
    phases = PhaseProfile()
    phases.install()
    app = QtWidgets.QApplication(sys.argv[:1])
    settings_file = Path(tempfile.mkdtemp(prefix="tuckerscope-realscale-settings-")) / "settings.ini"
    from pyqtgraph.Qt import QtCore

    chosen = QtCore.QSettings(str(settings_file), QtCore.QSettings.Format.IniFormat)
    chosen.setValue("run/runtime", args.runtime)  # what the Run menu would have left there
    chosen.setValue("run/precision", args.precision)
    chosen.sync()
    print(f"networks run with {args.runtime} {args.precision}", flush=True)

    probe = StallProbe()  # event-loop stalls per phase: the window must stay responsive while it computes
    probe.start()
    tracer = StallTracer(probe)

    # (a) first open: nothing cached
    window, timeline = open_window(settings_file, ct, model)
    pump(app, lambda: bool(window.session.experts) and window.session.volume is not None, args.timeout)
    report("models and CT loaded", time.perf_counter() - timeline.start)
    experts = list(window.session.experts)
    pump(app, lambda: timeline.first(lambda u: bool(u.originals)) is not None, args.timeout)
    first = timeline.first(lambda u: bool(u.originals))
    stage = next(u.stage for _, u in timeline.updates if u.originals)
    report("first original", first, f" ({stage})")
    pump(app, lambda: len(window.session.complete_originals) == len(experts), args.timeout)
    report("all originals", time.perf_counter() - timeline.start)
    timeline.print_originals(experts)
    timeline.print_updates()
    if args.screenshot is not None:
        app.processEvents()
        os.system(f"import -window root {args.screenshot}")
        print(f"screenshot {args.screenshot}", flush=True)
    pump(app, window.is_idle, args.timeout)
    report("window idle after open", time.perf_counter() - timeline.start)
    phases.print_and_reset("(a) open")
    print_stalls(probe, "(a)")

    # (b) one expert's slider to the DF and released: at the slice the window opened on, then at another one
    if args.trace_stalls:
        tracer.start()  # not during (a): sampling other threads' stacks while the models load crashed Python 3.11
    release(app, window, args.expert, args.df, args.timeout, probe, phases, "(b1)")
    window.slice_view.slice_slider.setValue(args.other_slice)
    pump(app, window.is_idle, args.timeout)
    release(app, window, args.other_expert, args.df, args.timeout, probe, phases, "(b2)")
    if args.trace_stalls:
        tracer.report()
        tracer.samples.clear()

    # (c) close, reopen the same CT and model in a new window: originals from the disk cache
    window.close()
    window.deleteLater()
    app.processEvents()
    window, timeline = open_window(settings_file, ct, model)
    pump(app, lambda: bool(window.session.experts) and window.session.volume is not None, args.timeout)
    report("reopen: models and CT loaded", time.perf_counter() - timeline.start)
    pump(app, lambda: len(window.session.complete_originals) == len(experts), args.timeout)
    report("reopen originals", timeline.first(lambda u: len(u.complete_originals) == len(experts)))
    pump(app, window.is_idle, args.timeout)
    report("reopen: window idle", time.perf_counter() - timeline.start)
    timeline.print_updates()
    phases.print_and_reset("(c) reopen")
    print_stalls(probe, "(c)")
    if args.trace_stalls:
        tracer.report()
    peak_gb = process_memory_kb("VmHWM") / 1024**2
    print(f"peak RSS {peak_gb:.2f} GB  [{load()}]", flush=True)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
