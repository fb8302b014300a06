"""File > Open results…: a cohort results folder as the paper's Figure 2 and its per-class table.

The curves are mean Dice or NSD over the cases against the compression ratio (parameters), one per method,
with the 95% confidence band across cases; the table lists each class and setting with its mean scores and
the per-class test of "no difference from the original" (Holm-adjusted p, differs at 0.05). Everything is
computed by core (core.session.api.open_results, as the cohort report computes it); this only draws it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.core.session.api import CohortView, open_results

METRIC_LABELS = {"dice": "Dice vs original", "nsd": "NSD vs original", "dice_gt": "Dice vs ground truth",
                 "nsd_gt": "NSD vs ground truth"}  # fmt: skip
METHOD_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
TABLE_COLUMNS = ("expert", "class", "method", "setting", "cases", "dice", "nsd", "p_holm", "differs")


class CohortResultsDialog(QtWidgets.QDialog):
    """Curves (metric and expert chosen above them) and the per-class table with its tests."""

    def __init__(self, view: CohortView, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        folder = view.results.folder
        self.setWindowTitle(f"Cohort results — {folder.name}")
        self.resize(1100, 820)
        curves = view.curves
        self.metric_combo = QtWidgets.QComboBox()
        for metric, label in METRIC_LABELS.items():
            if not curves.empty and metric in curves:
                self.metric_combo.addItem(label, metric)
        self.expert_combo = QtWidgets.QComboBox()
        for expert in ([] if curves.empty else list(dict.fromkeys(curves["expert"]))):
            self.expert_combo.addItem(expert, expert)
        self.metric_combo.currentIndexChanged.connect(self.draw_curves)
        self.expert_combo.currentIndexChanged.connect(self.draw_curves)
        self.plot = pg.PlotWidget()
        self.plot.setLogMode(x=True, y=False)
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.setLabel("bottom", "compression ratio (parameters, original / compressed)")
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.table = QtWidgets.QTableWidget()
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        summary = QtWidgets.QLabel(self.summary())
        summary.setWordWrap(True)
        choices = QtWidgets.QHBoxLayout()
        choices.addWidget(QtWidgets.QLabel("Metric"))
        choices.addWidget(self.metric_combo)
        choices.addWidget(QtWidgets.QLabel("Expert"))
        choices.addWidget(self.expert_combo)
        choices.addStretch(1)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        splitter.addWidget(self.plot)
        splitter.addWidget(self.table)
        splitter.setSizes([460, 360])
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(summary)
        layout.addLayout(choices)
        layout.addWidget(splitter, 1)
        self.draw_curves()
        self.fill_table()

    def summary(self) -> str:
        results = self.view.results
        scores, failures = results.scores, results.failures
        cases = scores["case"].nunique() if len(scores) else 0
        text = f"{results.folder} · {cases} cases · {len(scores)} scores"
        if len(failures):
            text += f" · {len(failures)} failed tasks: " + ", ".join(sorted(map(str, set(failures["case"]))))
        return text + " · test: Wilcoxon signed-rank per class, paired by case, Holm-corrected per setting"

    def draw_curves(self) -> None:
        """One line per method with its 95% CI band, for the chosen metric and expert."""
        self.plot.clear()
        self.legend.clear()
        curves, metric, expert = self.view.curves, self.metric_combo.currentData(), self.expert_combo.currentData()
        if curves.empty or metric is None:
            return
        self.plot.setLabel("left", f"mean {METRIC_LABELS[metric]}")
        part = curves[curves["expert"] == expert]
        for index, (method, points) in enumerate(part.groupby("method", sort=False)):
            points = points.sort_values("params_ratio")
            colour = QtGui.QColor(METHOD_COLOURS[index % len(METHOD_COLOURS)])
            x = points["params_ratio"].to_numpy(float)
            line = self.plot.plot(x, points[metric].to_numpy(float), pen=pg.mkPen(colour, width=2), symbol="o",
                                  symbolBrush=colour, symbolSize=7, name=str(method))  # fmt: skip
            low, high = points[f"{metric}_low"].to_numpy(float), points[f"{metric}_high"].to_numpy(float)
            if len(x) > 1 and not any(map(math.isnan, [*low, *high])):
                band_colour = QtGui.QColor(colour)
                band_colour.setAlpha(50)
                lower, upper = self.plot.plot(x, low, pen=None), self.plot.plot(x, high, pen=None)
                band = pg.FillBetweenItem(lower, upper, brush=band_colour)
                band.setZValue(line.zValue() - 1)
                self.plot.addItem(band)

    def fill_table(self) -> None:
        """Per class and setting: mean scores and the test (a class that differs is marked)."""
        table = self.view.per_class
        if not table.empty and not self.view.tests.empty:
            tests = self.view.tests[["expert", "class", "method", "setting", "p_holm", "differs"]]
            table = table.merge(tests, on=["expert", "class", "method", "setting"], how="left")
        columns = [c for c in TABLE_COLUMNS if c in table]
        self.table.setSortingEnabled(False)
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(table))
        for row, record in enumerate(table[columns].itertuples(index=False)):
            differs = "differs" in columns and record[columns.index("differs")] is True
            for column, value in enumerate(record):
                item = QtWidgets.QTableWidgetItem()
                if isinstance(value, float):
                    item.setData(QtCore.Qt.ItemDataRole.DisplayRole, "" if math.isnan(value) else round(value, 4))
                elif isinstance(value, int) and not isinstance(value, bool):
                    item.setData(QtCore.Qt.ItemDataRole.DisplayRole, int(value))
                else:
                    item.setText("yes" if value is True else "no" if value is False else str(value))
                if differs:
                    item.setBackground(QtGui.QColor(255, 220, 220))
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()


def open_results_dialog(parent: QtWidgets.QWidget, folder: Path | str) -> CohortResultsDialog:
    """Open a results folder in a non-modal dialog; a folder that is not one raises CohortError (a UserError)."""
    dialog = CohortResultsDialog(open_results(folder), parent)
    dialog.setModal(False)
    dialog.show()
    return dialog
