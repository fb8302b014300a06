"""A budget control: the DF slider's alternative, "10x params" or "1.5 s/patch" instead of "DF 0.27".

One per expert beside its slider, and one for all experts together. It only reports what the user asked for
(``requested``: a target spec as `--target` takes it, '' for back to the DF slider); the session solves it and
the status line shows what was achieved against what was asked.
"""

from __future__ import annotations

from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.style import wrapped_label_of_fixed_height

# (combo label, target kind, example value): the kinds of core.compression.budgets' parse_target
KINDS = (
    ("DF (slider)", "", ""),
    ("× params", "params", "10x"),
    ("× FLOPs", "flops", "8x"),
    ("s / patch", "time", "1.5 s"),
    ("energy kept", "energy", "0.9"),
    ("min layer EV", "ev", "0.9"),
    ("VBMF", "vbmf", ""),
)
TOOLTIP = (
    "Per-layer ranks chosen to keep the most kernel energy within a budget: a parameter or FLOP ratio, a "
    "forward time per patch on this machine (fp32, measured; the first time per layer shape takes a while), "
    "an overall energy floor, a per-layer explained-variance floor, or VBMF's automatic ranks. "
    "DF (slider) goes back to the uniform DF."
)


def target_spec(kind: str, value: str, example: str) -> str:
    """'params' + '10' -> 'params=10'; an empty value takes the example; VBMF has no value."""
    if kind in ("", "vbmf"):
        return kind
    amount = (value.strip() or example).replace("/patch", "").replace(" ", "")
    return f"{kind}={amount}"


class TargetControl(QtWidgets.QWidget):
    """Kind, value, Apply, and the achieved-vs-asked line."""

    requested = QtCore.Signal(str)  # a target spec ('params=10x'), or '' for the DF slider

    def __init__(self, label: str = "Target", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind_combo = QtWidgets.QComboBox()
        for text, kind, example in KINDS:
            self.kind_combo.addItem(text, (kind, example))
        self.kind_combo.setToolTip(TOOLTIP)
        self.value_edit = QtWidgets.QLineEdit()
        self.value_edit.setMaximumWidth(70)
        self.apply_button = QtWidgets.QToolButton(text="Apply")
        self.status = QtWidgets.QLabel("")
        wrapped_label_of_fixed_height(self.status, 2)
        row = QtWidgets.QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QtWidgets.QLabel(label))
        row.addWidget(self.kind_combo, 1)
        row.addWidget(self.value_edit)
        row.addWidget(self.apply_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self.kind_combo.currentIndexChanged.connect(lambda _index: self._show_kind())
        self.kind_combo.activated.connect(self._on_kind_chosen)
        self.value_edit.returnPressed.connect(self.apply)
        self.apply_button.clicked.connect(self.apply)
        self._show_kind()

    @property
    def kind(self) -> str:
        return self.kind_combo.currentData()[0]

    def spec(self) -> str:
        kind, example = self.kind_combo.currentData()
        return target_spec(kind, self.value_edit.text(), example)

    def apply(self) -> None:
        self.requested.emit(self.spec())

    def set_target(self, spec: str | None) -> None:
        """Show the target now in force ('params=10x'; None: the DF slider) without emitting."""
        kind, _, value = (spec or "").partition("=")
        index = next((i for i, (_, k, _e) in enumerate(KINDS) if k == kind), 0)
        self.kind_combo.setCurrentIndex(index)
        self.value_edit.setText(value)

    def set_status(self, text: str, warning: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #d9534f;" if warning else "color: palette(mid);")

    def _show_kind(self) -> None:
        kind, example = self.kind_combo.currentData()
        needs_value = kind not in ("", "vbmf")
        self.value_edit.setEnabled(needs_value)
        self.apply_button.setEnabled(kind != "")
        self.value_edit.setPlaceholderText(example)

    def _on_kind_chosen(self, _index: int) -> None:
        if self.kind in ("", "vbmf"):  # nothing to type: applied at once
            self.apply()
        else:
            self.value_edit.setFocus()
