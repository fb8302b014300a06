"""The paper's Figure 2 for this scan: agreement with the original vs compression ratio, four curves (Tucker and
pruning, zero-shot and distilled), for one expert.

Expensive (eight short distillations), so it runs only when asked, in its own JobLane with progress and
cancel; points are drawn as they are scored. ``set_source(factory, experts)``: the factory turns
(expert, steps per point) into the worker function (core.session.recovery.figure2_job).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.style import configure_pyqtgraph
from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.session.recovery import Figure2, Figure2Point, Figure2Run

CURVES = {  # curve name -> (colour, dashed)
    "tucker zero-shot": ((80, 160, 255), True),
    "tucker distilled": ((80, 160, 255), False),
    "prune zero-shot": ((255, 150, 60), True),
    "prune distilled": ((255, 150, 60), False),
}
DEFAULT_STEPS_PER_POINT = 5
Figure2Factory = Callable[[str, int], Figure2Run]


class Figure2View(QtWidgets.QWidget):
    """Controls and the plot of one Figure 2 run."""

    finished = QtCore.Signal(object)  # Figure2

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self.lane = JobLane("figure 2", self)
        self._factory: Figure2Factory | None = None
        self.points: list[Figure2Point] = []
        self.expert_combo = QtWidgets.QComboBox()
        self.steps_spin = QtWidgets.QSpinBox(minimum=1, maximum=500, value=DEFAULT_STEPS_PER_POINT)
        self.steps_spin.setSuffix(" steps/point")
        self.steps_spin.setToolTip("Distillation steps per distilled point: few show the direction, not the end")
        self.run_button = QtWidgets.QPushButton("Run Figure 2")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.lane.cancel)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QtWidgets.QLabel("Load a CT and models to draw Figure 2.")
        self.status.setWordWrap(True)
        self.plots = pg.GraphicsLayoutWidget()
        self.plot = self.plots.addPlot(row=0, col=0, title="Figure 2 · agreement vs compression")
        self.plot.setLogMode(x=True, y=False)
        self.plot.setYRange(0.0, 1.02)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.setLabel("bottom", "compression ratio (parameters, original / compressed)")
        self.plot.setLabel("left", "mean Dice vs original")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.setMenuEnabled(False)
        self.legend = pg.LegendItem(colCount=len(CURVES))  # below the plot: it never hides a curve
        self.plots.addItem(self.legend, row=1, col=0)
        self.curves = {}
        for name, (colour, dashed) in CURVES.items():
            style = QtCore.Qt.PenStyle.DashLine if dashed else QtCore.Qt.PenStyle.SolidLine
            self.curves[name] = self.plot.plot(
                [], [], pen=pg.mkPen(colour, width=2, style=style), symbol="o" if dashed else "s",
                symbolBrush=None if dashed else colour, symbolPen=colour, symbolSize=7,
            )  # fmt: skip
            self.legend.addItem(self.curves[name], name)
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(self.expert_combo)
        controls.addWidget(self.steps_spin)
        controls.addWidget(self.run_button)
        controls.addWidget(self.cancel_button)
        progress_row = QtWidgets.QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.status, 2)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addLayout(progress_row)
        layout.addWidget(self.plots, 1)
        self.lane.progressChanged.connect(self._on_progress)
        self._set_running(False)

    def set_source(self, factory: Figure2Factory | None, experts: list[str]) -> None:
        """A new CT or model set: the old figure described other networks."""
        self.lane.cancel()
        self._factory = factory
        self.expert_combo.clear()
        self.expert_combo.addItems(experts)
        self._clear()
        ready = factory is not None and bool(experts)
        self.status.setText("Ready." if ready else "Load a CT and models to draw Figure 2.")
        self._set_running(False)

    def start(self) -> None:
        if self._factory is None or not self.expert_combo.currentText():
            return
        expert, steps = self.expert_combo.currentText(), int(self.steps_spin.value())
        try:
            run = self._factory(expert, steps)
        except UserError as error:
            self.status.setText(str(error))
            return
        self._clear()

        def job(context: JobContext) -> Figure2:
            return run(context.progress, context.partial, context.cancel)

        self.lane.submit(
            job,
            JobCallbacks(
                on_result=self._on_finished, on_partial=self.add_point,
                on_error=lambda error, _details: self._stopped(f"Figure 2 failed: {error}"),
                on_cancelled=lambda: self._stopped(f"Figure 2 cancelled: {len(self.points)} points kept."),
            ),
        )  # fmt: skip
        self._set_running(True)
        self.status.setText(f"Figure 2 of {expert}, {steps} steps per distilled point…")

    def add_point(self, point: Figure2Point) -> None:
        self.points.append(point)
        for name, curve in self.curves.items():
            points = sorted((p for p in self.points if p.curve == name), key=lambda p: p.compression_ratio)
            keep = [p for p in points if math.isfinite(p.mean_dice)]
            curve.setData([p.compression_ratio for p in keep], [p.mean_dice for p in keep])

    def drawn_curves(self) -> dict[str, int]:
        """Curve name -> points drawn (tests, screenshots)."""
        counts = {}
        for name, curve in self.curves.items():
            xs, _ = curve.getData()
            counts[name] = 0 if xs is None else len(xs)
        return counts

    def _on_finished(self, figure: Figure2) -> None:
        self._stopped(f"Figure 2 of {figure.expert} on {figure.scans}: {len(figure.points)} points.")
        self.finished.emit(figure)

    def _stopped(self, text: str) -> None:
        self._set_running(False)
        self.status.setText(text)

    def _clear(self) -> None:
        self.points = []
        for curve in self.curves.values():
            curve.setData([], [])

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running and self._factory is not None and self.expert_combo.count() > 0)
        self.cancel_button.setEnabled(running)
        if not running:
            self.progress.setValue(0)

    def _on_progress(self, _lane: str, fraction: float, message: str) -> None:
        self.progress.setValue(int(1000 * min(max(fraction, 0.0), 1.0)))
        if message:
            self.status.setText(message)
