"""The sweep panel runs a sweep off the UI thread, plots it as it grows, and can be cancelled."""

from __future__ import annotations

import threading

import pytest
from sweep_doubles import ErodingBackend

pytestmark = pytest.mark.gui


class SlowBackend(ErodingBackend):
    """Each compressed run waits until the test lets it go, so cancel can land mid-sweep."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Semaphore(0)

    def compressed(self, expert, df, progress, cancel, method="tucker"):
        self.gate.acquire(timeout=10)
        return super().compressed(expert, df, progress, cancel)


def curve_points(plot):
    return [item for item in plot.listDataItems() if item.opts.get("pen") is not None]


def test_sweep_runs_and_plots_every_expert(qtbot):
    from tuckerscope.app.sweep_panel import SweepPanel

    panel = SweepPanel()
    qtbot.addWidget(panel)
    assert not panel.run_button.isEnabled()
    panel.set_backend(ErodingBackend(), ["organs", "ribs"])
    panel.grid_edit.setText("0.9, 0.5, 0.1")
    with qtbot.waitSignal(panel.sweepFinished, timeout=20_000) as finished:
        panel.run_button.click()
    result = finished.args[0]
    assert not result.cancelled and len(result.points) == 6
    assert panel.result is result
    for plot in (panel.params_plot, panel.time_plot):
        lines = curve_points(plot)
        assert len(lines) == 2  # one curve per expert
        assert all(len(line.xData) == 3 for line in lines)
    panel.metric_box.setCurrentText("NSD, worst class")
    assert len(curve_points(panel.params_plot)) == 2


def test_cancel_keeps_finished_points(qtbot):
    from tuckerscope.app.sweep_panel import SweepPanel

    backend = SlowBackend()
    panel = SweepPanel()
    qtbot.addWidget(panel)
    panel.set_backend(backend, ["organs"])
    panel.grid_edit.setText("0.9, 0.5, 0.1")
    with qtbot.waitSignal(panel.pointAdded, timeout=10_000):
        panel.run_button.click()
        assert panel.cancel_button.isEnabled()
        backend.gate.release()
    with qtbot.waitSignal(panel.sweepFinished, timeout=10_000) as finished:
        panel.cancel_button.click()
        backend.gate.release()
    assert finished.args[0].cancelled
    assert 1 <= len(panel.result.points) < 3
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    panel.lane.wait(5000)


def test_bad_grid_text_is_reported_not_run(qtbot):
    from tuckerscope.app.sweep_panel import SweepPanel

    panel = SweepPanel()
    qtbot.addWidget(panel)
    backend = ErodingBackend()
    panel.set_backend(backend, ["organs"])
    panel.grid_edit.setText("0.5, lots")
    panel.run_button.click()
    assert "'lots' is not a number" in panel.status.text()
    assert not panel.lane.busy and backend.compressed_runs == []
