"""How fast the window answers a slider: release -> compressed network, visible slice, whole volume, 3D.

Opens the window (the demo by default), waits until it is idle, then for each DF of a short schedule moves
every expert's slider there through a few intermediate values (a drag) and measures, from the last value
("release"):
- network: the compressed networks of all experts rebuilt (their figures updated),
- slice:   the visible slab segmented and the slice views redrawn with it,
- volume:  the whole volume segmented,
- 3D:      the compressed surfaces rebuilt and shown.
A 10 ms timer runs throughout; the longest gap between its ticks is the longest event-loop stall.

Run under a display, e.g.:
    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/bench_gui_latency.py [--ct CT] [--model SRC]
Timings depend on the machine's load; the script prints the load average beside them.
The window at real scale (TS 'total' on a 240x200x220 CT, issue 12's targets): scripts/bench_gui_realscale.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.launch_args import LaunchRequest
from tuckerscope.app.main_window import MainWindow
from tuckerscope.core.runtime.memory import (
    RELEASE_MEMORY_VARIABLE,
    process_memory_kb,
    retain_for_interactive_use,
)

SCHEDULE = (0.5, 0.2, 0.8, 0.3, 0.1)
DRAG_STEPS = 5
STEP_PAUSE_S = 0.03


class StallTracer:
    """While the event loop is stalled (> 0.3 s since the probe's last tick), sample every thread's stack."""

    def __init__(self, probe: StallProbe) -> None:
        self.probe = probe
        self.samples: collections.Counter[str] = collections.Counter()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        main = threading.main_thread().ident
        while self.running:
            time.sleep(0.05)
            if time.perf_counter() - self.probe.last > 0.3:
                frames = sys._current_frames()
                for ident, frame in frames.items():
                    if ident == threading.get_ident():
                        continue
                    who = "UI thread" if ident == main else "worker"
                    stack = "".join(traceback.format_stack(frame)[-4:])
                    self.samples[f"[{who}]\n{stack}"] += 1

    def report(self) -> None:
        self.running = False
        for stack, count in self.samples.most_common(8):
            print(f"--- {count} samples (x 50 ms) while stalled\n{stack}")


class StallProbe:
    """A 10 ms timer recording the gaps between its ticks."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.timer = QtCore.QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()


def pump(app: QtWidgets.QApplication, condition: object, timeout: float) -> float:
    """Process events until ``condition()``; return when it became true (perf_counter), or raise."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 5)
        if condition():
            return time.perf_counter()
        time.sleep(0.001)
    raise TimeoutError("the window did not get there in time")


def networks_built(window: MainWindow) -> bool:
    """Every compressed expert's network is built for the ranks now chosen."""
    return all(
        expert.is_full_rank() or window.session.networks.get(name, (None,))[0] == expert.rank_key()
        for name, expert in window.session.experts.items()
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ct", type=Path, help="CT to open (default: the demo phantom)")
    parser.add_argument("--model", default="demo", help="model source (default: demo)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each step")
    parser.add_argument("--schedule", type=float, nargs="+", default=SCHEDULE, help="DFs to release at")
    parser.add_argument("--trace-stalls", action="store_true", help="print thread stacks seen during stalls")
    args = parser.parse_args()

    retained = retain_for_interactive_use()  # as run_app does
    app = QtWidgets.QApplication(sys.argv[:1])
    settings_dir = tempfile.mkdtemp(prefix="tuckerscope-bench-")
    settings = QtCore.QSettings(str(Path(settings_dir) / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1900, 1040)
    window.show()
    start = time.perf_counter()
    window.open_request(LaunchRequest(ct=args.ct, model=args.model, phantom_seed=7))
    pump(app, lambda: window.is_idle() and window.session.compressed_is_current(), args.timeout)
    print(
        f"opened {window.session.volume.name} with {', '.join(window.session.experts)} and segmented "
        f"it in {time.perf_counter() - start:.1f} s (load average {os.getloadavg()[0]:.1f})"
    )

    events: dict[str, float] = {}
    window.session.events.segmentation_changed.connect(
        lambda update: events.setdefault(update.stage, time.perf_counter())
    )
    probe = StallProbe()
    probe.start()
    tracer = StallTracer(probe)
    if args.trace_stalls:
        tracer.start()
    rows = []
    sliders = [row.slider for row in window.experts_panel.rows.values()]
    current = sliders[0].value()
    for target in args.schedule:
        for step in range(1, DRAG_STEPS + 1):
            value = round(current + (target - current) * step / DRAG_STEPS, 2)
            for slider in sliders:
                slider.setValue(value)
            if step < DRAG_STEPS:
                deadline = time.perf_counter() + STEP_PAUSE_S
                while time.perf_counter() < deadline:
                    app.processEvents()
        current = target
        released = time.perf_counter()
        events.clear()
        network = pump(app, lambda: networks_built(window), args.timeout)
        slice_time = pump(app, lambda: "slab" in events or "volume" in events, args.timeout)
        volume = pump(app, lambda: "volume" in events, args.timeout)
        shown_3d = pump(app, lambda: not window.lanes["surfaces_compressed"].busy, args.timeout)
        pump(app, window.is_idle, args.timeout)
        rows.append(
            (target, network - released, slice_time - released, volume - released, shown_3d - released)
        )
        print(
            f"DF {target:.2f}: network {rows[-1][1] * 1000:6.0f} ms · slice {rows[-1][2]:6.2f} s · "
            f"volume {rows[-1][3]:6.2f} s · 3D {rows[-1][4]:6.2f} s"
        )
    probe.timer.stop()
    for column, name in ((2, "slice"), (3, "volume"), (4, "3D")):
        values = [row[column] for row in rows]
        print(f"release -> {name}: median {statistics.median(values):.2f} s, max {max(values):.2f} s")
    gaps = sorted(probe.gaps)
    print(
        f"event loop: longest stall {gaps[-1] * 1000:.0f} ms, 99th percentile "
        f"{gaps[int(0.99 * (len(gaps) - 1))] * 1000:.0f} ms over {len(gaps)} ticks "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    peak_gb, now_gb = (process_memory_kb(field) / 1024**2 for field in ("VmHWM", "VmRSS"))
    print(
        f"memory: peak RSS {peak_gb:.2f} GB, now {now_gb:.2f} GB "
        f"(freed memory {'kept for reuse' if retained else 'handed back'}; {RELEASE_MEMORY_VARIABLE}=1 hands it back)"
    )
    if args.trace_stalls:
        tracer.report()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
