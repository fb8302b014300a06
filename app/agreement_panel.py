"""Per-class agreement of compressed vs original (Dice, NSD), worst first; a click jumps to the structure."""

from __future__ import annotations

from dataclasses import dataclass

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.style import wrapped_label_of_fixed_height
from tuckerscope.app.tables import fill_table, read_only_table

COLUMNS = ("class", "expert", "Dice", "NSD", "voxels orig", "voxels comp", "status")


@dataclass(frozen=True)
class AgreementRow:
    """One scored class; ``label`` is its value in the merged label map the views show."""

    label: int
    name: str
    expert: str
    dice: float
    nsd: float
    voxels_original: int
    voxels_compressed: int
    status: str


def quality_colour(value: float) -> QtGui.QColor:
    """Red below 0.7, amber below 0.9, green above: readable at a glance."""
    if value < 0.7:
        return QtGui.QColor(200, 50, 50)
    if value < 0.9:
        return QtGui.QColor(200, 140, 30)
    return QtGui.QColor(40, 150, 60)


class AgreementPanel(QtWidgets.QWidget):
    """Sorted table of per-class scores with a one-line summary."""

    classActivated = QtCore.Signal(int)  # label of the clicked row

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.summary = QtWidgets.QLabel("No comparison yet")
        wrapped_label_of_fixed_height(self.summary, 2)
        self.table = read_only_table(COLUMNS)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.cellClicked.connect(self._on_clicked)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        self.rows: list[AgreementRow] = []

    def set_rows(self, rows: list[AgreementRow], summary: str) -> None:
        """Rows arrive worst first; the order is kept (the table is not user-sortable, on purpose)."""
        self.rows = list(rows)
        self.summary.setText(summary)
        cells = [
            (
                row.name,
                row.expert,
                f"{row.dice:.3f}",
                f"{row.nsd:.3f}",
                str(row.voxels_original),
                str(row.voxels_compressed),
                row.status,
            )
            for row in self.rows
        ]

        def colour(r: int, c: int, item: QtWidgets.QTableWidgetItem) -> None:
            if c in (2, 3):
                item.setForeground(quality_colour(self.rows[r].dice if c == 2 else self.rows[r].nsd))

        fill_table(self.table, cells, colour)

    def set_pending(self, text: str) -> None:
        self.summary.setText(text)

    def _on_clicked(self, row: int, column: int) -> None:
        if 0 <= row < len(self.rows):
            self.classActivated.emit(self.rows[row].label)
