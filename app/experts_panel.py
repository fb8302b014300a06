"""Experts panel: one DF slider and method choice per expert (plus "link all"), its size figures, and its
classes' visibility.

The panel only reports what the user asked for (``dfChanged`` on every slider step, ``methodChanged``,
``visibilityChanged`` with the full set of shown labels); the session decides what changes, and its events
decide what is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets
from superqt import QLabeledDoubleSlider

from tuckerscope.app.style import wrapped_label_of_fixed_height
from tuckerscope.app.target_control import TargetControl
from tuckerscope.core.session.session import ALL_EXPERTS

DF_MIN, DF_MAX, DF_STEP = 0.05, 1.0, 0.01
METHOD_LABELS = {"tucker": "Tucker", "prune": "Pruning"}


@dataclass(frozen=True)
class ClassEntry:
    """One class as the views know it: its label in the merged map, its name and its colour."""

    label: int
    name: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class ExpertEntry:
    name: str
    classes: tuple[ClassEntry, ...]


class ExpertRow(QtWidgets.QWidget):
    """Name, DF slider and the expert's figures (parameters, FLOPs, compressed-network build time)."""

    def __init__(self, name: str, df: float, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = name
        title = QtWidgets.QLabel(f"<b>{name}</b>")
        self.slider = QLabeledDoubleSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(DF_MIN, DF_MAX)
        self.slider.setSingleStep(DF_STEP)
        self.slider.setPageStep(0.1)
        self.slider.setDecimals(2)
        self.slider.setValue(df)
        self.slider.setToolTip(
            f"Downsampling factor of {name}: ranks are ceil(C x DF), at least 8, at most C"
        )
        self.method_combo = QtWidgets.QComboBox()
        for method, label in METHOD_LABELS.items():
            self.method_combo.addItem(label, method)
        self.method_combo.setToolTip(
            "Tucker: the paper's decomposition at this DF. Pruning: the paper's baseline, output channels of "
            "smallest L2 norm zeroed until the parameters match Tucker's at this DF"
        )
        self.recover_button = QtWidgets.QToolButton(text="Recover")
        self.recover_button.setToolTip(
            f"Distil {name}'s compressed network from its original on this CT, in the background (Recover panel)"
        )
        self.distilled_check = QtWidgets.QCheckBox("distilled")
        self.distilled_check.setToolTip("Compressed side: the distilled network (ticked) or zero-shot")
        self.distilled_check.setVisible(False)  # shown once a distilled network exists at this setting
        self.target = TargetControl()  # a budget instead of the DF (issue 14)
        self.figures = QtWidgets.QLabel("…")
        wrapped_label_of_fixed_height(self.figures, 2)
        self.figures.setStyleSheet("color: palette(mid);")
        layout = QtWidgets.QGridLayout(self)
        layout.setContentsMargins(2, 4, 2, 4)
        layout.addWidget(title, 0, 0)
        layout.addWidget(self.method_combo, 0, 1, QtCore.Qt.AlignmentFlag.AlignRight)
        layout.addWidget(self.slider, 1, 0, 1, 2)
        recovery = QtWidgets.QHBoxLayout()
        recovery.addWidget(self.recover_button)
        recovery.addWidget(self.distilled_check)
        recovery.addStretch(1)
        layout.addLayout(recovery, 4, 0, 1, 2)
        layout.addWidget(self.target, 2, 0, 1, 2)
        layout.addWidget(self.figures, 3, 0, 1, 2)

    @property
    def method(self) -> str:
        return str(self.method_combo.currentData())

    def set_method(self, method: str) -> None:
        self.method_combo.setCurrentIndex(max(self.method_combo.findData(method), 0))


class ExpertsPanel(QtWidgets.QWidget):
    """DF sliders and class visibility for every loaded expert."""

    dfChanged = QtCore.Signal(dict)  # {expert: df} for every slider that moved (several when linked)
    methodChanged = QtCore.Signal(dict)  # {expert: 'tucker' | 'prune'} (every expert when linked)
    visibilityChanged = QtCore.Signal(set)  # labels to show
    classActivated = QtCore.Signal(int)  # label double-clicked: jump the views to it
    targetRequested = QtCore.Signal(str, str)  # scope (an expert or ALL_EXPERTS), target spec ('' = the DF)
    recoverRequested = QtCore.Signal(str)  # expert: distil its compressed network (Recover)
    distilledToggled = QtCore.Signal(str, bool)  # expert, show its distilled network

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: dict[str, ExpertRow] = {}
        self._class_items: dict[int, QtWidgets.QTreeWidgetItem] = {}
        # A parent tick changes every child; one coalesced signal instead of one per class.
        self._visibility_timer = QtCore.QTimer(self, singleShot=True, interval=0)
        self._visibility_timer.timeout.connect(lambda: self.visibilityChanged.emit(self.visible_labels()))
        self.link_check = QtWidgets.QCheckBox("Link all sliders")
        self.link_check.setToolTip("Move every expert's DF together")
        self.all_target = TargetControl("All experts")
        self.all_target.setToolTip("One budget for the whole model: the experts share it")
        self.all_target.requested.connect(lambda spec: self.targetRequested.emit(ALL_EXPERTS, spec))
        self.rows_box = QtWidgets.QVBoxLayout()
        self.rows_box.setSpacing(0)
        self.class_tree = QtWidgets.QTreeWidget()
        self.class_tree.setHeaderLabels(["Classes (tick to show)"])
        self.class_tree.itemChanged.connect(self._on_item_changed)
        self.class_tree.itemDoubleClicked.connect(self._on_item_double_clicked)
        show_all = QtWidgets.QPushButton("Show all")
        show_all.clicked.connect(lambda: self.set_all_visible(True))
        hide_all = QtWidgets.QPushButton("Hide all")
        hide_all.clicked.connect(lambda: self.set_all_visible(False))
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(show_all)
        buttons.addWidget(hide_all)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.link_check)
        layout.addWidget(self.all_target)
        layout.addLayout(self.rows_box)
        layout.addWidget(self.class_tree, 1)
        layout.addLayout(buttons)

    def set_experts(self, experts: list[ExpertEntry], dfs: dict[str, float]) -> None:
        """Rebuild the panel for a new set of experts (sliders start at ``dfs``)."""
        for row in self.rows.values():
            self.rows_box.removeWidget(row)
            row.deleteLater()
        self.rows = {}
        for expert in experts:
            row = ExpertRow(expert.name, dfs.get(expert.name, DF_MAX))
            row.slider.valueChanged.connect(lambda value, n=expert.name: self._on_slider(n, value))
            row.method_combo.activated.connect(lambda _index, n=expert.name: self._on_method(n))
            row.target.requested.connect(lambda spec, n=expert.name: self.targetRequested.emit(n, spec))
            row.recover_button.clicked.connect(lambda _checked=False, n=expert.name: self.recoverRequested.emit(n))
            row.distilled_check.clicked.connect(lambda shown, n=expert.name: self.distilledToggled.emit(n, shown))
            self.rows_box.addWidget(row)
            self.rows[expert.name] = row
        self.class_tree.blockSignals(True)
        self.class_tree.clear()
        self._class_items = {}
        for expert in experts:
            parent = QtWidgets.QTreeWidgetItem([f"{expert.name} ({len(expert.classes)})"])
            parent.setFlags(
                parent.flags()
                | QtCore.Qt.ItemFlag.ItemIsAutoTristate
                | QtCore.Qt.ItemFlag.ItemIsUserCheckable
            )
            parent.setCheckState(0, QtCore.Qt.CheckState.Checked)
            self.class_tree.addTopLevelItem(parent)
            for entry in expert.classes:
                item = QtWidgets.QTreeWidgetItem([entry.name])
                item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(0, QtCore.Qt.CheckState.Checked)
                item.setIcon(0, _swatch(entry.rgb))
                item.setData(0, QtCore.Qt.ItemDataRole.UserRole, entry.label)
                item.setToolTip(0, f"label {entry.label} · double-click to jump to it")
                parent.addChild(item)
                self._class_items[entry.label] = item
        self.class_tree.blockSignals(False)

    def set_df(self, expert: str, df: float) -> None:
        """Move a slider without emitting ``dfChanged`` (restoring settings, applying links)."""
        row = self.rows.get(expert)
        if row is not None:
            row.slider.blockSignals(True)
            row.slider.setValue(df)
            row.slider.blockSignals(False)

    def dfs(self) -> dict[str, float]:
        return {name: round(float(row.slider.value()), 4) for name, row in self.rows.items()}

    def set_recovery(self, expert: str, available: bool, shown: bool) -> None:
        """The distilled toggle: visible when a distilled network exists at the expert's setting."""
        row = self.rows.get(expert)
        if row is not None:
            row.distilled_check.setVisible(available)
            row.distilled_check.setChecked(shown)

    def set_figures(self, expert: str, text: str) -> None:
        if expert in self.rows:
            self.rows[expert].figures.setText(text)

    def visible_labels(self) -> set[int]:
        return {
            label
            for label, item in self._class_items.items()
            if item.checkState(0) == QtCore.Qt.CheckState.Checked
        }

    def set_all_visible(self, visible: bool) -> None:
        state = QtCore.Qt.CheckState.Checked if visible else QtCore.Qt.CheckState.Unchecked
        self.class_tree.blockSignals(True)
        for index in range(self.class_tree.topLevelItemCount()):
            self.class_tree.topLevelItem(index).setCheckState(0, state)
        self.class_tree.blockSignals(False)
        self.visibilityChanged.emit(self.visible_labels())

    def set_class_visible(self, label: int, visible: bool) -> None:
        item = self._class_items.get(label)
        if item is not None:
            item.setCheckState(0, QtCore.Qt.CheckState.Checked if visible else QtCore.Qt.CheckState.Unchecked)

    def _on_slider(self, expert: str, value: float) -> None:
        changed = {expert: round(float(value), 4)}
        if self.link_check.isChecked():
            for name in self.rows:
                if name != expert:
                    self.set_df(name, value)
                    changed[name] = round(float(value), 4)
        self.dfChanged.emit(changed)

    def _on_method(self, expert: str) -> None:
        method = self.rows[expert].method
        names = list(self.rows) if self.link_check.isChecked() else [expert]
        for name in names:
            self.rows[name].set_method(method)
        self.methodChanged.emit({name: method for name in names})

    def _on_item_changed(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        self._visibility_timer.start()

    def _on_item_double_clicked(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        label = item.data(0, QtCore.Qt.ItemDataRole.UserRole)
        if label is not None:
            self.classActivated.emit(int(label))


def _swatch(rgb: tuple[int, int, int]) -> QtGui.QIcon:
    pixmap = QtGui.QPixmap(12, 12)
    pixmap.fill(QtGui.QColor(*rgb))
    return QtGui.QIcon(pixmap)
