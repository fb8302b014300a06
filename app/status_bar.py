"""Status bar widget: what long work is running, how far it is, and a button to cancel it."""

from __future__ import annotations

from pyqtgraph.Qt import QtWidgets

from tuckerscope.app.workers import JobLane


class ProgressStatus(QtWidgets.QWidget):
    """Shows the progress of the most recently active lane; Cancel stops every busy lane."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.message = QtWidgets.QLabel("")
        self.bar = QtWidgets.QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setMaximumWidth(220)
        self.bar.setTextVisible(False)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_all)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.message)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        for widget in (
            self.bar,
            self.cancel_button,
        ):  # showing them must not relayout (and repaint) the window
            policy = widget.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            widget.setSizePolicy(policy)
        self.lanes: list[JobLane] = []
        self._busy: set[str] = set()
        self._refresh()

    def watch(self, lane: JobLane, cancellable: bool = True) -> None:
        lane.progressChanged.connect(self._on_progress)
        lane.busyChanged.connect(self._on_busy)
        if cancellable:
            self.lanes.append(lane)

    def cancel_all(self) -> None:
        for lane in self.lanes:
            if lane.busy:
                lane.cancel()
        self.message.setText("Cancelling…")

    def _on_progress(self, lane: str, fraction: float, message: str) -> None:
        self.bar.setValue(int(1000 * min(max(fraction, 0.0), 1.0)))
        self.message.setText(message)

    def _on_busy(self, lane: str, busy: bool) -> None:
        if busy:
            self._busy.add(lane)
        else:
            self._busy.discard(lane)
        self._refresh()

    def _refresh(self) -> None:
        active = bool(self._busy)
        self.bar.setVisible(active)
        self.cancel_button.setVisible(active and any(lane.busy for lane in self.lanes))
        if not active:
            self.message.setText("Ready")
            self.bar.setValue(0)
