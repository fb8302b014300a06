"""Size figures: parameters, FLOPs and compression ratio per expert and in total, as a table and bar charts.

The rows are core's counts table (the session's sizes, with_total), the same rows `tuckerscope eval` exports.
FLOPs count one multiply-add as one FLOP, on the plans' patch size, as fvcore counts them (norms included);
the conv-only figure stands beside them.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.style import configure_pyqtgraph
from tuckerscope.app.tables import fill_table, read_only_table
from tuckerscope.core.session.api import ExpertSize, with_total
from tuckerscope.core.session.policy import human

ORIGINAL_BRUSH = (120, 160, 230)
COMPRESSED_BRUSH = (240, 150, 60)


COLUMNS = (
    "expert", "params orig", "params comp", "params ×", "FLOPs orig", "FLOPs comp", "FLOPs ×", "conv FLOPs comp",
)  # fmt: skip


class FiguresPanel(QtWidgets.QWidget):
    """Table and grouped bar charts (original vs compressed) of parameters and FLOPs."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self.table = read_only_table(COLUMNS)
        self.charts = pg.GraphicsLayoutWidget()
        self.params_plot = self.charts.addPlot(row=0, col=0, title="Parameters (M)")
        self.flops_plot = self.charts.addPlot(row=0, col=1, title="FLOPs per patch (G)")
        for plot in (self.params_plot, self.flops_plot):
            plot.setMenuEnabled(False)
            plot.setMouseEnabled(x=False, y=False)
            plot.showGrid(y=True, alpha=0.3)
        legend = self.params_plot.addLegend(offset=(-4, 4))
        legend.addItem(pg.BarGraphItem(x=[0], height=[0], width=0, brush=ORIGINAL_BRUSH), "original")
        legend.addItem(pg.BarGraphItem(x=[0], height=[0], width=0, brush=COMPRESSED_BRUSH), "compressed")
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.charts)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(splitter)
        self.rows: list[ExpertSize] = []

    def set_figures(self, rows: list[ExpertSize]) -> None:
        """One row per expert; the total row is added here, as the counts table adds it."""
        self.rows = list(rows)
        shown = with_total(self.rows)
        cells = [
            (
                fig.name,
                human(fig.params_original),
                human(fig.params_compressed),
                f"{fig.params_ratio:.2f}",
                human(fig.flops_original),
                human(fig.flops_compressed),
                f"{fig.flops_ratio:.2f}",
                human(fig.conv_flops_compressed),
            )
            for fig in shown
        ]
        total_row = len(shown) - 1 if len(self.rows) > 1 else -1

        def style(r: int, c: int, item: QtWidgets.QTableWidgetItem) -> None:
            if c:
                item.setTextAlignment(
                    QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter
                )
            if r == total_row:
                font = item.font()
                font.setBold(True)
                item.setFont(font)

        fill_table(self.table, cells, style)
        self._draw_bars(
            self.params_plot, [(f.params_original / 1e6, f.params_compressed / 1e6) for f in self.rows]
        )
        self._draw_bars(
            self.flops_plot, [(f.flops_original / 1e9, f.flops_compressed / 1e9) for f in self.rows]
        )

    def _draw_bars(self, plot: pg.PlotItem, values: list[tuple[float, float]]) -> None:
        for item in [i for i in plot.items if isinstance(i, pg.BarGraphItem)]:
            plot.removeItem(item)
        if not values:
            return
        x = np.arange(len(values), dtype=float)
        original = np.array([v[0] for v in values])
        compressed = np.array([v[1] for v in values])
        plot.addItem(pg.BarGraphItem(x=x - 0.2, height=original, width=0.38, brush=ORIGINAL_BRUSH))
        plot.addItem(pg.BarGraphItem(x=x + 0.2, height=compressed, width=0.38, brush=COMPRESSED_BRUSH))
        plot.getAxis("bottom").setTicks([[(i, f.name) for i, f in enumerate(self.rows)]])
        plot.setXRange(-0.6, len(values) - 0.4, padding=0)
        plot.setYRange(0, float(max(original.max(), compressed.max(), 1e-9)) * 1.1, padding=0)
