"""Screenshots of the window on the demo after a short Recover (and, with --figure2, the Figure 2 tab).

Run on an X display (e.g. Xvfb :57 -screen 0 1700x1000x24 &; DISPLAY=:57 python scripts/screenshot_recover.py
OUT_DIR): opens the demo, sets organs to DF 0.2, presses its Recover button with a --minutes budget, waits for
the distilled re-segmentation and agreement, and saves OUT_DIR/recover.png with `import -window root` (VTK views
read back correctly that way). Prints the run's steps and the longest UI-thread stall while it ran (a 20 ms
timer's largest gap), so the lead can rerun it on a quiet machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.main_window import MainWindow
from tuckerscope.core.session.recovery import agreement_pair


def wait(app: QtWidgets.QApplication, done: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the window did not finish in time")
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.01)


def shoot(app: QtWidgets.QApplication, path: Path) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    subprocess.run(["import", "-window", "root", str(path)], check=True)
    print(f"saved {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=0.5)
    parser.add_argument("--figure2", type=int, metavar="STEPS", help="also run Figure 2 at STEPS per point")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    settings = QtCore.QSettings(str(Path(tempfile.mkdtemp()) / "s.ini"), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1680, 980)
    window.move(0, 0)
    window.show()
    idle = lambda: window.is_idle() and window.session.compressed_is_current()  # noqa: E731
    window.open_demo()
    wait(app, idle, 600)
    window.experts_panel.rows["organs"].slider.setValue(0.2)
    wait(app, idle, 600)
    window.recovery.panel.minutes_spin.setValue(args.minutes)
    gaps, last = [0.0], [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QtCore.QTimer(interval=20)
    timer.timeout.connect(tick)
    timer.start()
    start = time.perf_counter()
    window.experts_panel.rows["organs"].recover_button.click()
    wait(app, lambda: not window.recovery.lane.busy, 60 * args.minutes + 600)
    seconds = time.perf_counter() - start
    timer.stop()
    result = window.session.recoveries["organs"]
    print(f"Recover organs: {result.describe}; {seconds:.0f} s wall; longest UI stall {max(gaps) * 1000:.0f} ms")
    wait(app, idle, 600)
    window.docks["recover"].raise_()
    zero_shot, distilled = agreement_pair(window.session)
    for name, result in (("zero-shot", zero_shot), ("distilled", distilled)):
        organs = [score.dice for info, score in result.rows if info.expert == "organs"]
        print(f"{name}: organs mean Dice vs original {sum(organs) / len(organs):.4f} over {len(organs)} classes")
    shoot(app, args.out / "recover.png")
    window.docks["agreement"].raise_()
    shoot(app, args.out / "recover_agreement.png")
    if args.figure2:
        window.docks["sweep"].raise_()
        window.resizeDocks([window.docks["sweep"]], [520], QtCore.Qt.Orientation.Vertical)
        window.sweep_panel.tabs.setCurrentWidget(window.sweep_panel.figure2)
        window.sweep_panel.figure2.steps_spin.setValue(args.figure2)
        window.sweep_panel.figure2.run_button.click()
        wait(app, lambda: not window.sweep_panel.figure2.lane.busy, 1800)
        for point in window.sweep_panel.figure2.points:
            print(f"{point.curve:18s} DF {point.df:g} ratio {point.compression_ratio:.1f}x Dice {point.mean_dice:.3f}")
        shoot(app, args.out / "figure2.png")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
