"""DF sweep view: agreement with the original (Dice or NSD) against parameters and against measured time; its
second tab is the paper's Figure 2 for this scan (figure2_view: Tucker and pruning, zero-shot and distilled).

One curve per expert, a point per DF, labelled with its DF; the original sits at agreement 1.0 as a hollow
marker, so each curve reads from "as trained" to "most compressed". The sweep runs in a JobLane (core's
run_sweep with a cancel event); points appear as they finish, and Cancel keeps the finished ones.

Hook-up (window): ``panel = SweepPanel()``; when a CT and models are loaded call
``panel.set_backend(*session_sweep_backend(session))``; listen to ``sweepFinished`` to keep the result
for exports and the report (``panel.result``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.figure2_view import Figure2View
from tuckerscope.app.style import configure_pyqtgraph
from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.session.api import (
    DEFAULT_GRID,
    DEFAULT_TOLERANCE_MM,
    SweepBackend,
    SweepError,
    SweepPoint,
    SweepResult,
    run_sweep,
)

METRICS: dict[str, str] = {
    "Dice, mean": "mean_dice",
    "Dice, worst class": "worst_dice",
    "NSD, mean": "mean_nsd",
    "NSD, worst class": "worst_nsd",
}
EXPERT_COLOURS = (
    (80, 160, 255),
    (255, 150, 60),
    (90, 210, 120),
    (230, 90, 200),
    (240, 220, 80),
    (160, 120, 255),
)


def parse_grid(text: str) -> tuple[float, ...]:
    """'0.9, 0.5 0.1' -> (0.9, 0.5, 0.1); raises SweepError with the offending entry."""
    values = []
    for token in text.replace(",", " ").split():
        try:
            values.append(float(token))
        except ValueError:
            raise SweepError(f"{token!r} is not a number; give DFs such as 0.9, 0.5, 0.1") from None
    if not values or any(not (0.0 < v <= 1.0) for v in values):
        raise SweepError("give one or more DFs in (0, 1], e.g. 0.9, 0.5, 0.1")
    return tuple(values)


class SweepPanel(QtWidgets.QWidget):
    """Controls, progress and the two plots of a DF sweep."""

    sweepFinished = QtCore.Signal(object)  # SweepResult (also after a cancel, with the finished points)
    pointAdded = QtCore.Signal(object)  # SweepPoint

    def __init__(self, parent: QtWidgets.QWidget | None = None, lane: JobLane | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self.lane = lane or JobLane("sweep", self)
        self._backend: SweepBackend | None = None
        self._experts: list[str] = []
        self._result: SweepResult | None = None
        self.tolerance_mm = DEFAULT_TOLERANCE_MM

        self.grid_edit = QtWidgets.QLineEdit(", ".join(f"{df:g}" for df in DEFAULT_GRID))
        self.grid_edit.setToolTip("Decomposition factors to try for each expert, one after another")
        self.metric_box = QtWidgets.QComboBox()
        self.metric_box.addItems(list(METRICS))
        self.metric_box.currentIndexChanged.connect(self._redraw)
        self.run_button = QtWidgets.QPushButton("Run sweep")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QtWidgets.QLabel("Load a CT and models to run a sweep.")
        self.status.setWordWrap(True)

        self.plots = pg.GraphicsLayoutWidget()
        self.params_plot = self.plots.addPlot(row=0, col=0, title="vs parameters")
        self.time_plot = self.plots.addPlot(row=0, col=1, title="vs measured time")
        self.params_plot.setLabel("bottom", "parameters (millions)")
        self.time_plot.setLabel("bottom", "segmentation time", units="s")
        for plot in (self.params_plot, self.time_plot):
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.setLabel("left", "agreement with original")
            plot.setYRange(0.0, 1.02)
            plot.setMenuEnabled(False)
        self.legend = self.params_plot.addLegend(offset=(8, -8))

        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(QtWidgets.QLabel("DFs"))
        controls.addWidget(self.grid_edit, 1)
        controls.addWidget(self.metric_box)
        controls.addWidget(self.run_button)
        controls.addWidget(self.cancel_button)
        page = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(page)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        progress_row = QtWidgets.QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.status, 2)
        layout.addLayout(progress_row)
        layout.addWidget(self.plots, 1)
        self.figure2 = Figure2View()
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(page, "DF sweep")
        self.tabs.addTab(self.figure2, "Figure 2 (distilled)")
        outer = QtWidgets.QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.tabs)
        self.lane.progressChanged.connect(self._on_progress)
        self._set_running(False)

    @property
    def result(self) -> SweepResult | None:
        """The last sweep shown (complete or cancelled), for exports and the report."""
        return self._result

    def set_backend(self, backend: SweepBackend | None, experts: Sequence[str]) -> None:
        """Models and CT changed: forget the old sweep (it described other networks) and allow a new one."""
        self.cancel()
        self._backend = backend
        self._experts = list(experts)
        self._result = None
        self._redraw()
        ready = backend is not None and bool(self._experts)
        self.status.setText(
            f"Ready: {len(self._experts)} expert(s)." if ready else "Load a CT and models to run a sweep."
        )
        self._set_running(False)

    def start(self) -> None:
        if self._backend is None or not self._experts:
            return
        try:
            grid = parse_grid(self.grid_edit.text())
        except SweepError as exc:
            self.status.setText(str(exc))
            return
        backend, experts = self._backend, list(self._experts)
        tolerance_mm = self.tolerance_mm
        self._result = SweepResult(grid=grid, tolerance_mm=tolerance_mm)
        self._redraw()

        def job(context: JobContext) -> SweepResult:
            return run_sweep(
                backend,
                experts,
                grid,
                tolerance_mm,
                progress=context.progress,
                cancel=context.cancel,
                on_point=context.partial,
            )

        self.lane.submit(
            job,
            JobCallbacks(
                on_result=self._on_finished,
                on_partial=self._on_point,
                on_error=self._on_error,
                on_cancelled=self._on_cancelled,
            ),
        )
        self._set_running(True)
        self.status.setText(f"Sweeping {len(experts)} expert(s) over {len(grid)} DFs…")

    def cancel(self) -> None:
        """Stop after the run in progress; the finished points stay on the plots."""
        if self.lane.busy:
            self.lane.cancel()
            self.status.setText("Cancelling after the current run…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running and self._backend is not None and bool(self._experts))
        self.cancel_button.setEnabled(running)
        self.grid_edit.setEnabled(not running)
        if not running:
            self.progress.setValue(0)

    def _on_progress(self, _lane: str, fraction: float, message: str) -> None:
        self.progress.setValue(int(1000 * min(max(fraction, 0.0), 1.0)))
        if message:
            self.status.setText(message)

    def _on_point(self, point: SweepPoint) -> None:
        if self._result is not None:
            self._result.points.append(point)
            self._redraw()
        self.pointAdded.emit(point)

    def _on_finished(self, result: SweepResult) -> None:
        self._set_running(False)
        self._result = result
        self._redraw()
        done = "cancelled" if result.cancelled else "done"
        self.status.setText(f"Sweep {done}: {len(result.points)} runs.")
        self.sweepFinished.emit(result)

    def _on_cancelled(self) -> None:
        # The lane drops a superseded job's result; keep the points that arrived as partials.
        self._set_running(False)
        self.status.setText(f"Sweep cancelled: {len(self._result.points) if self._result else 0} runs kept.")
        if self._result is not None:
            self._result.cancelled = True
            self.sweepFinished.emit(self._result)

    def _on_error(self, error: Exception, _details: str) -> None:
        self._set_running(False)
        self.status.setText(f"Sweep failed: {error}")

    def _redraw(self) -> None:
        attribute = METRICS[self.metric_box.currentText()]
        for plot in (self.params_plot, self.time_plot):
            plot.clear()
        self.legend.clear()
        if self._result is None:
            return
        for index, expert in enumerate(self._result.experts):
            colour = EXPERT_COLOURS[index % len(EXPERT_COLOURS)]
            self._draw_expert(expert, self._result.curve(expert), attribute, colour)

    def _draw_expert(
        self, expert: str, curve: list[SweepPoint], attribute: str, colour: tuple[int, int, int]
    ) -> None:
        original = self._result.originals.get(expert) if self._result else None
        for plot, x_of in (
            (self.params_plot, lambda c: c.params / 1e6),
            (self.time_plot, lambda c: c.seconds),
        ):
            xs = [float(x_of(p.cost)) for p in curve]
            ys = [getattr(p, attribute) for p in curve]
            keep = [i for i, y in enumerate(ys) if not math.isnan(y)]
            xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
            item = plot.plot(
                xs, ys, pen=pg.mkPen(colour, width=2), symbol="o", symbolBrush=colour, symbolSize=7
            )
            if plot is self.params_plot:
                self.legend.addItem(item, expert)
            for i, x, y in zip(keep, xs, ys, strict=True):
                label = pg.TextItem(f"{curve[i].df:g}", color=colour, anchor=(0.5, 1.3))
                label.setPos(x, y)
                plot.addItem(label)
            if original is not None and math.isfinite(float(x_of(original))):
                plot.plot(
                    [float(x_of(original))],
                    [1.0],
                    pen=None,
                    symbol="o",
                    symbolPen=pg.mkPen(colour, width=2),
                    symbolBrush=None,
                    symbolSize=10,
                )
