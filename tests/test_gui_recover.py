"""Recover in the window (demo, organs at DF 0.2; 32-voxel patches, a few steps): the button starts a job, the
loss curve gets points, Cancel stops it and Recover again resumes, the distilled toggle appears and the
agreement table pairs zero-shot with distilled; the sweep panel's Figure 2 draws four curves."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from tuckerscope.app.agreement_panel import PAIRED_COLUMNS  # noqa: E402
from tuckerscope.app.main_window import MainWindow  # noqa: E402
from tuckerscope.core.session.recovery import Figure2, Figure2Point, RecoverySettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_gui_window import IDLE_TIMEOUT_MS, make_settings, wait_idle  # noqa: E402


def fast(steps: int) -> RecoverySettings:
    return RecoverySettings(minutes=None, steps=steps, patch_cap=32, phantoms=0, learning_rate=2e-2, coverage=0.0)


@pytest.fixture
def demo_window(qtbot, tmp_path):
    window = MainWindow(make_settings(tmp_path))
    qtbot.addWidget(window)
    window.resize(1600, 950)
    window.show()
    window.open_demo()
    wait_idle(qtbot, window)
    window.experts_panel.rows["organs"].slider.setValue(0.2)
    wait_idle(qtbot, window)
    yield window
    window.close()


def test_recover_button_runs_a_job_with_a_live_curve_and_the_toggle_switches_sides(qtbot, demo_window):
    window, panel = demo_window, demo_window.recovery.panel
    panel.settings = lambda: fast(3)
    row = window.experts_panel.rows["organs"]
    assert row.distilled_check.isHidden()
    row.recover_button.click()
    assert window.recovery.lane.busy
    qtbot.waitUntil(lambda: not window.recovery.lane.busy, timeout=IDLE_TIMEOUT_MS)
    assert panel.losses and len(panel.losses) == 3
    assert panel.curve.getData()[0] is not None and len(panel.curve.getData()[0]) == 3
    assert "distilled" in panel.status.text()
    assert window.session.experts["organs"].show_distilled
    assert not row.distilled_check.isHidden() and row.distilled_check.isChecked()
    wait_idle(qtbot, window)
    assert "distilled" in window.slice_view._compressed_title
    header = [window.agreement_panel.table.horizontalHeaderItem(c).text() for c in range(len(PAIRED_COLUMNS))]
    assert tuple(header) == PAIRED_COLUMNS  # zero-shot scored before, distilled now: both columns
    menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Distil")
    menu.aboutToShow.emit()
    toggle = next(a for a in menu.actions() if a.text() == "Show distilled organs")
    assert "Recover organs" in [a.text() for a in menu.actions()] and toggle.isChecked()
    row.distilled_check.click()  # back to zero-shot: re-segmented with the zero-shot network
    assert not window.session.experts["organs"].show_distilled
    assert window.session.plan_segmentation().need_compressed == {"organs"}
    wait_idle(qtbot, window)


def test_cancel_stops_recover_and_recover_again_resumes(qtbot, demo_window):
    window, panel = demo_window, demo_window.recovery.panel
    panel.settings = lambda: fast(400)
    window.recovery.recover("organs")
    qtbot.waitUntil(lambda: len(panel.losses) >= 1, timeout=IDLE_TIMEOUT_MS)
    window.progress_status.cancel_button.click()  # the status bar's Cancel stops Recover too
    qtbot.waitUntil(lambda: not window.recovery.lane.busy, timeout=60_000)
    assert "organs" not in window.session.recoveries and "Cancelled" in panel.status.text()
    done = list(panel.losses)
    panel.settings = lambda: fast(2)
    window.recovery.recover("organs")
    assert panel.losses == done  # the curve restarts from the checkpoint's steps
    qtbot.waitUntil(lambda: not window.recovery.lane.busy, timeout=IDLE_TIMEOUT_MS)
    result = window.session.recoveries["organs"]
    assert result.resumed_steps == len(done) and list(result.losses[: len(done)]) == done
    assert len(result.losses) == len(done) + 2


def test_figure2_tab_draws_four_curves_from_a_run(qtbot, demo_window):
    view = demo_window.sweep_panel.figure2
    assert view.run_button.isEnabled()
    started = threading.Event()

    def factory(expert, steps):
        def run(progress, on_point, cancel):
            started.set()
            figure = Figure2(expert, "stub", steps)
            for method in ("tucker", "prune"):
                for df, ratio in ((0.5, 3.0), (0.2, 12.0), (0.1, 30.0)):
                    for distilled in (False, True):
                        point = Figure2Point(method, distilled, df, ratio, 1000, 0.9 - df / 10, 0.8, "liver", steps)
                        figure.points.append(point)
                        on_point(point)
            return figure

        return run

    view.set_source(factory, ["organs"])
    view.run_button.click()
    qtbot.waitUntil(lambda: not view.lane.busy, timeout=30_000)
    assert started.is_set()
    assert view.drawn_curves() == {
        "tucker zero-shot": 3, "tucker distilled": 3, "prune zero-shot": 3, "prune distilled": 3,
    }  # fmt: skip
    assert len(view.legend.items) == 4
