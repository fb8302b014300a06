"""Measured forward-pass times, original vs compressed, per expert, with device and precision named.

Times are measured in a worker (one patch at the plans' patch size, warm-up then median) and can go stale
when a DF moves; the panel says so instead of showing numbers for a network that is no longer on screen.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.figures_panel import COMPRESSED_BRUSH, ORIGINAL_BRUSH
from tuckerscope.app.style import configure_pyqtgraph
from tuckerscope.app.tables import fill_table, read_only_table
from tuckerscope.core.session.session import ExpertTiming

PRECISIONS = ("fp32", "bf16")
COLUMNS = ("expert", "DF", "original", "compressed", "speed-up")


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class TimingPanel(QtWidgets.QWidget):
    """Table + bar chart of forward times and a re-measure button."""

    remeasureRequested = QtCore.Signal(str)  # precision

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self.setup_label = QtWidgets.QLabel("Not measured yet")
        self.setup_label.setWordWrap(True)
        self.precision_combo = QtWidgets.QComboBox()
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip("fp32 is the reference; bf16 uses CPU autocast")
        self.measure_button = QtWidgets.QPushButton("Re-measure")
        self.measure_button.clicked.connect(
            lambda: self.remeasureRequested.emit(self.precision_combo.currentText())
        )
        self.table = read_only_table(COLUMNS)
        self.chart = pg.PlotWidget(title="Forward pass per patch (ms)")
        self.chart.setMenuEnabled(False)
        self.chart.setMouseEnabled(x=False, y=False)
        self.chart.showGrid(y=True, alpha=0.3)
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(QtWidgets.QLabel("Precision"))
        controls.addWidget(self.precision_combo)
        controls.addWidget(self.measure_button)
        controls.addStretch(1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.setup_label)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.chart, 1)
        self.timings: list[ExpertTiming] = []
        self.setup_text = ""

    def set_measuring(self, measuring: bool) -> None:
        self.measure_button.setEnabled(not measuring)
        if measuring:
            self.setup_label.setText(self.setup_label.text().split(" — ")[0] + " — measuring…")

    def set_timings(self, timings: list[ExpertTiming], setup: str, repeats: int) -> None:
        """``setup`` names device, precision and threads, e.g. 'fp32 on cpu, 2 threads'."""
        self.timings = list(timings)
        self.setup_text = setup
        patches = sorted({" x ".join(str(p) for p in t.patch_size) for t in timings})
        self.measure_button.setEnabled(True)
        self.setup_label.setText(
            f"<b>{setup}</b> · one patch per expert ({', '.join(patches)}) · median of {repeats} runs "
            "after a warm-up, original and compressed interleaved"
        )
        fill_table(
            self.table,
            [
                (
                    timing.expert,
                    f"{timing.df:.2f}",
                    format_seconds(timing.original_seconds),
                    "uncompressed"
                    if timing.compressed_seconds is None
                    else format_seconds(timing.compressed_seconds),
                    "—" if timing.speedup is None else f"{timing.speedup:.2f}x",
                )
                for timing in timings
            ],
        )
        self.chart.clear()
        if timings:
            x = np.arange(len(timings), dtype=float)
            original = np.array([t.original_seconds * 1000 for t in timings])
            compressed = np.array([(t.compressed_seconds or t.original_seconds) * 1000 for t in timings])
            self.chart.addItem(pg.BarGraphItem(x=x - 0.2, height=original, width=0.38, brush=ORIGINAL_BRUSH))
            self.chart.addItem(
                pg.BarGraphItem(x=x + 0.2, height=compressed, width=0.38, brush=COMPRESSED_BRUSH)
            )
            self.chart.getAxis("bottom").setTicks([[(i, t.expert) for i, t in enumerate(timings)]])
            self.chart.setXRange(-0.6, len(timings) - 0.4, padding=0)
            self.chart.setYRange(0, float(max(original.max(), compressed.max())) * 1.1, padding=0)

    def mark_stale(self, rank_keys: dict[str, object]) -> None:
        """Grey out rows measured at other ranks than the ones now chosen."""
        for row, timing in enumerate(self.timings):
            stale = rank_keys.get(timing.expert, timing.rank_key) != timing.rank_key
            for col in range(self.table.columnCount()):
                item = self.table.item(row, col)
                if item is not None:
                    item.setForeground(pg.mkColor(130, 130, 130) if stale else self.palette().text().color())
                    item.setToolTip("measured at other ranks: press Re-measure" if stale else "")
