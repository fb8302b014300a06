"""Export actions for the window: everything to a folder (with a choice of parts), or just the HTML report.

The window gives a `bundle_provider` that captures the session's results as a core ExportBundle on the UI
thread; the files are then written in a JobLane (rendering a report takes seconds), atomically by core, and
the outcome is shown in a message box: the files written, or the one-line reason nothing was.

Hook-up (window): ``exports = ExportActions(window, provider)`` then ``exports.add_to_menu(file_menu)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.session.api import (
    PARTS,
    ExportBundle,
    report_content,
    safe_stem,
    write_bundle,
    write_report,
)

PART_LABELS = {
    "segmentation": "Segmentations (NIfTI + ITK-SNAP labels + Slicer colour table)",
    "tables": "Tables (CSV: metrics, counts, timings, sweep)",
    "models": "Compressed model folder",
    "report": "HTML report",
}


class ExportDialog(QtWidgets.QDialog):
    """Choose a folder and the parts to write."""

    def __init__(self, parent: QtWidgets.QWidget | None, folder: str, available: Sequence[str]) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export results")
        self.folder_edit = QtWidgets.QLineEdit(folder)
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.checks: dict[str, QtWidgets.QCheckBox] = {}
        layout = QtWidgets.QVBoxLayout(self)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Folder"))
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        for part in PARTS:
            check = QtWidgets.QCheckBox(PART_LABELS[part])
            check.setChecked(part in available)
            check.setEnabled(part in available)
            self.checks[part] = check
            layout.addWidget(check)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    @property
    def folder(self) -> Path:
        return Path(self.folder_edit.text()).expanduser()

    @property
    def parts(self) -> list[str]:
        return [part for part, check in self.checks.items() if check.isChecked()]

    def _browse(self) -> None:
        chosen = QtWidgets.QFileDialog.getExistingDirectory(self, "Export folder", self.folder_edit.text())
        if chosen:
            self.folder_edit.setText(chosen)


def available_parts(bundle: ExportBundle) -> list[str]:
    parts = ["tables", "report"]
    if bundle.original is not None or bundle.compressed is not None:
        parts.insert(0, "segmentation")
    if bundle.save_models is not None:
        parts.insert(-1, "models")
    return parts


class ExportActions(QtCore.QObject):
    """'Export results…' and 'Save report…' for a menu or toolbar."""

    exported = QtCore.Signal(list)  # paths written
    failed = QtCore.Signal(str)  # one-line reason

    def __init__(
        self,
        window: QtWidgets.QWidget,
        bundle_provider: Callable[[], ExportBundle | None],
        lane: JobLane | None = None,
        ask: bool = True,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.bundle_provider = bundle_provider
        self.lane = lane or JobLane("export", self)
        self.ask = ask  # False in tests: no dialogs, results only through the signals
        self.last_folder = str(Path.home())
        self.export_action = QtGui.QAction("Export results…", self)
        self.export_action.setShortcut(QtGui.QKeySequence("Ctrl+E"))
        self.export_action.triggered.connect(self.export_interactively)
        self.report_action = QtGui.QAction("Save report…", self)
        self.report_action.triggered.connect(self.save_report_interactively)

    @property
    def actions(self) -> list[QtGui.QAction]:
        return [self.export_action, self.report_action]

    def add_to_menu(self, menu: QtWidgets.QMenu) -> None:
        menu.addSeparator()
        for action in self.actions:
            menu.addAction(action)

    def export_interactively(self) -> None:
        bundle = self._bundle()
        if bundle is None:
            return
        dialog = ExportDialog(self.window, self.last_folder, available_parts(bundle))
        if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return
        self.last_folder = str(dialog.folder)
        self.export(bundle, dialog.folder, dialog.parts)

    def save_report_interactively(self) -> None:
        bundle = self._bundle()
        if bundle is None:
            return
        suggested = str(Path(self.last_folder) / f"{safe_stem(bundle.case_name)}_report.html")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self.window, "Save report", suggested, "HTML (*.html)"
        )
        if path:
            self.last_folder = str(Path(path).parent)
            self.save_report(bundle, Path(path))

    def export(self, bundle: ExportBundle, folder: Path, parts: Sequence[str]) -> None:
        """Write the parts in the background; `exported` or `failed` follows."""
        parts = list(parts)
        self._run(lambda context: write_bundle(bundle, folder, parts), f"Exporting to {folder}…")

    def save_report(self, bundle: ExportBundle, path: Path) -> None:
        self._run(lambda context: [write_report(path, report_content(bundle))], f"Writing {path.name}…")

    def _bundle(self) -> ExportBundle | None:
        try:
            bundle = self.bundle_provider()
        except UserError as exc:
            self._fail(str(exc))
            return None
        if bundle is None:
            self._fail("Nothing to export yet: open a CT and models first.")
        return bundle

    def _run(self, write: Callable[[JobContext], list[Path]], message: str) -> None:
        for action in self.actions:
            action.setEnabled(False)
        self.lane.progressChanged.emit(self.lane.name, 0.0, message)
        self.lane.submit(
            write,
            JobCallbacks(on_result=self._done, on_error=self._error, on_cancelled=self._enable),
        )

    def _enable(self) -> None:
        for action in self.actions:
            action.setEnabled(True)

    def _done(self, paths: list[Path]) -> None:
        self._enable()
        self.exported.emit(list(paths))
        if self.ask:
            listing = "\n".join(str(p) for p in paths) or "(nothing selected)"
            QtWidgets.QMessageBox.information(self.window, "Export finished", f"Written:\n{listing}")

    def _error(self, error: Exception, _details: str) -> None:
        self._enable()
        reason = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.failed.emit(reason)
        if self.ask:
            QtWidgets.QMessageBox.warning(self.window, "Export failed", reason)
