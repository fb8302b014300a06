"""Read-only QTableWidgets that refill fast: a 117-class table must not stall the UI thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyqtgraph.Qt import QtWidgets

CellStyler = Callable[[int, int, QtWidgets.QTableWidgetItem], None]


def read_only_table(columns: Sequence[str]) -> QtWidgets.QTableWidget:
    """A table with fixed headers, no editing, columns sized once per refill (never per cell)."""
    table = QtWidgets.QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Interactive)
    return table


def fill_table(
    table: QtWidgets.QTableWidget, rows: Sequence[Sequence[str]], style: CellStyler | None = None
) -> None:
    """Replace every cell; with updates off and contents cleared first, so Qt lays out once, not per cell."""
    table.setUpdatesEnabled(False)
    try:
        table.clearContents()
        table.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                if style is not None:
                    style(r, c, item)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
    finally:
        table.setUpdatesEnabled(True)
