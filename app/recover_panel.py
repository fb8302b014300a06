"""Recover panel: the budget and seed of a distillation, its live loss curve, ETA and result.

The panel only shows and asks: ``recoverRequested(expert)`` and ``cancelRequested``; the RecoveryController
runs the job. Steps arrive as fast as the worker makes them; the curve is redrawn by a timer at most a few
times a second, so a fast run (tiny patches) cannot flood the UI thread with plot updates.
"""

from __future__ import annotations

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.style import configure_pyqtgraph, wrapped_label_of_fixed_height
from tuckerscope.core.session.recovery import RecoverySettings, StepReport

REDRAW_MS = 250


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class RecoverPanel(QtWidgets.QWidget):
    """Controls of the next Recover and the curve of the current (or last) one."""

    recoverRequested = QtCore.Signal(str)  # expert
    cancelRequested = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self.expert_combo = QtWidgets.QComboBox()
        self.minutes_spin = QtWidgets.QDoubleSpinBox(decimals=1, minimum=0.1, maximum=120.0, singleStep=0.5)
        self.minutes_spin.setValue(RecoverySettings().minutes or 2.0)
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Training time of one Recover (pressed again: that much more, resumed)")
        self.seed_spin = QtWidgets.QSpinBox(minimum=0, maximum=2**31 - 1)
        self.seed_spin.setToolTip("Seed of the patches and the batch order: a run is reproducible from it")
        self.recover_button = QtWidgets.QPushButton("Recover")
        self.recover_button.clicked.connect(lambda: self.recoverRequested.emit(self.expert_combo.currentText()))
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelRequested.emit)
        self.status = QtWidgets.QLabel("Load a CT and models, compress an expert, then Recover it.")
        wrapped_label_of_fixed_height(self.status, 2)
        self.plot = pg.PlotWidget(title="distillation loss")
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.setMenuEnabled(False)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.curve = self.plot.plot([], [], pen=pg.mkPen((80, 160, 255), width=2))
        controls = QtWidgets.QHBoxLayout()
        for widget in (self.expert_combo, self.minutes_spin, QtWidgets.QLabel("seed"), self.seed_spin):
            controls.addWidget(widget)
        controls.addWidget(self.recover_button)
        controls.addWidget(self.cancel_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self._dirty = False
        self._timer = QtCore.QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self.set_running(False)

    def settings(self) -> RecoverySettings:
        return RecoverySettings(minutes=float(self.minutes_spin.value()), seed=int(self.seed_spin.value()))

    def set_experts(self, names: list[str]) -> None:
        self.expert_combo.clear()
        self.expert_combo.addItems(names)

    def set_running(self, running: bool) -> None:
        self.recover_button.setEnabled(not running and self.expert_combo.count() > 0)
        self.cancel_button.setEnabled(running)
        if running:
            self._timer.start()
        else:
            self._timer.stop()
            self._redraw()

    def start_curve(self, expert: str, earlier: list[float], data: str) -> None:
        """A new run: the curve restarts from the checkpoint's losses (empty for a fresh run)."""
        self.expert_combo.setCurrentText(expert)
        self.steps, self.losses = list(range(1, len(earlier) + 1)), list(earlier)
        resumed = f", resuming after {len(earlier)} steps" if earlier else ""
        self.plot.setTitle(f"distillation loss · {expert}")
        self.status.setText(f"Preparing {expert} on {data}{resumed}…")
        self._dirty = True
        self.set_running(True)

    def add_step(self, report: StepReport) -> None:
        """One finished step (cheap: the curve is redrawn by the timer)."""
        self.steps.append(len(self.steps) + 1)
        self.losses.append(report.record.loss)
        self._dirty = True
        self.status.setText(
            f"step {report.record.step} · loss {report.record.loss:.4f} · {report.seconds_per_step:.2f} s/step · "
            f"ETA {clock(report.eta_seconds)}"
        )

    def set_message(self, text: str) -> None:
        self.status.setText(text)

    def _redraw(self) -> None:
        if self._dirty:
            self.curve.setData(self.steps, self.losses)
            self._dirty = False
