"""Per-class agreement of compressed vs original (Dice, NSD), worst first; a click jumps to the structure."""

from __future__ import annotations

from dataclasses import dataclass

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.style import wrapped_label_of_fixed_height
from tuckerscope.app.tables import fill_table, read_only_table

COLUMNS = ("class", "expert", "Dice", "NSD", "voxels orig", "voxels comp", "status")
# once an expert has been distilled (Recover) and both sides were scored: zero-shot beside distilled
PAIRED_COLUMNS = (
    "class", "expert", "Dice zero-shot", "NSD zero-shot", "Dice distilled", "NSD distilled",
    "voxels orig", "voxels comp", "status",
)  # fmt: skip


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
    zero_shot: tuple[float, float] | None = None  # (Dice, NSD) of the zero-shot network, beside distilled ones


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
        paired = any(row.zero_shot is not None for row in self.rows)
        columns = PAIRED_COLUMNS if paired else COLUMNS
        if self.table.columnCount() != len(columns):
            self.table.setColumnCount(len(columns))
            self.table.setHorizontalHeaderLabels(list(columns))
        scores = [(*(row.zero_shot or (float("nan"),) * 2), row.dice, row.nsd) if paired else (row.dice, row.nsd)
                  for row in self.rows]  # fmt: skip
        cells = [
            (row.name, row.expert, *(f"{v:.3f}" for v in values), str(row.voxels_original),
             str(row.voxels_compressed), row.status)
            for row, values in zip(self.rows, scores, strict=True)
        ]  # fmt: skip

        def colour(r: int, c: int, item: QtWidgets.QTableWidgetItem) -> None:
            if 2 <= c < 2 + len(scores[r]):
                item.setForeground(quality_colour(scores[r][c - 2]))

        fill_table(self.table, cells, colour)

    def set_pending(self, text: str) -> None:
        self.summary.setText(text)

    def _on_clicked(self, row: int, column: int) -> None:
        if 0 <= row < len(self.rows):
            self.classActivated.emit(self.rows[row].label)
