"""The window's menu bar: File (open, recent, cohort results, export, screenshot, the originals cache, quit),
View (the docks) and Help (About); the Run menu is app.run_menu's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.opening import Opener
from tuckerscope.app.recent_files import RecentFiles
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.session import policy
from tuckerscope.core.session.about import about_text
from tuckerscope.core.session.api import TS_TASKS
from tuckerscope.core.session.session import Session


def fill_recent(menu: QtWidgets.QMenu, recent: RecentFiles, open_item: Callable[[str], None]) -> None:
    """Rebuild a Recent menu as it opens: one entry per remembered item, or a disabled '(none)'."""
    menu.clear()
    items = recent.items()
    for item in items:
        menu.addAction(item, lambda i=item: open_item(i))
    if not items:
        menu.addAction("(none)").setEnabled(False)


class FileDialogs:
    """The File menu's dialogs; each ends in the Opener (or the screenshot writer)."""

    def __init__(self, window: QtWidgets.QMainWindow, opener: Opener, recent_cts: RecentFiles) -> None:
        self.window, self.opener, self.recent_cts = window, opener, recent_cts

    def last_dir(self) -> str:
        recent = self.recent_cts.items()
        return str(Path(recent[0]).parent) if recent else str(Path.home())

    def choose_ct_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self.window, "Open CT", self.last_dir(), "NIfTI (*.nii *.nii.gz);;All files (*)"
        )
        if path:
            self.opener.open_ct(path)

    def choose_dicom_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self.window, "Open DICOM series folder", self.last_dir())
        if path:
            self.opener.open_ct(path)

    def choose_model_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self.window, "Open a TotalSegmentator home or nnU-Net results folder", self.last_dir()
        )
        if path:
            self.opener.open_model_folder(Path(path))

    def choose_results_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self.window, "Open cohort results", self.last_dir())
        if path:
            self.open_results(path)

    def open_results(self, folder: str) -> None:
        """Figure 2 and the per-class table of a cohort results folder; a wrong folder says why, no traceback."""
        from tuckerscope.app.cohort_view import open_results_dialog

        try:
            self.results_dialog = open_results_dialog(self.window, folder)
        except UserError as error:
            self.window.show_error("Could not open the cohort results", error, "")

    def choose_screenshot_path(self) -> None:
        from tuckerscope.app.screenshot import save_window

        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self.window, "Save screenshot", "tuckerscope.png", "PNG (*.png)"
        )
        if path:
            save_window(self.window, Path(path))


def build_menus(
    window: QtWidgets.QMainWindow,
    opener: Opener,
    dialogs: FileDialogs,
    recent_cts: RecentFiles,
    recent_models: RecentFiles,
    add_exports: Callable[[QtWidgets.QMenu], None],
    docks: Iterable[QtWidgets.QDockWidget],
    open_demo: Callable[[], None],
    session: Session,
) -> dict[str, QtWidgets.QMenu]:
    """File, View and Help menus; returns the submenus tests and the window need by name."""
    file_menu = window.menuBar().addMenu("&File")
    file_menu.addAction("Open CT (NIfTI)…", dialogs.choose_ct_file, QtGui.QKeySequence.StandardKey.Open)
    file_menu.addAction("Open CT (DICOM folder)…", dialogs.choose_dicom_folder)
    file_menu.addAction("Open model folder / TS home…", dialogs.choose_model_folder)
    file_menu.addAction("Open demo", open_demo)
    for task in TS_TASKS:
        file_menu.addAction(f"Open TS task '{task}' (TOTALSEG_HOME_DIR)", lambda t=task: opener.open_models(t))
    recent_ct_menu = file_menu.addMenu("Recent CTs")
    recent_model_menu = file_menu.addMenu("Recent models")
    recent_ct_menu.aboutToShow.connect(lambda: fill_recent(recent_ct_menu, recent_cts, opener.open_ct))
    recent_model_menu.aboutToShow.connect(
        lambda: fill_recent(recent_model_menu, recent_models, opener.open_models)
    )
    file_menu.addAction("Open cohort results…", dialogs.choose_results_folder)
    file_menu.addSeparator()
    add_exports(file_menu)
    file_menu.addAction("Save screenshot…", dialogs.choose_screenshot_path)
    if session.original_cache is not None:
        clear = file_menu.addAction("Clear cached originals", lambda: clear_original_cache(window, session))
        file_menu.aboutToShow.connect(lambda: clear.setText(original_cache_label(session)))
    file_menu.addSeparator()
    file_menu.addAction("Quit", window.close, QtGui.QKeySequence.StandardKey.Quit)
    view_menu = window.menuBar().addMenu("&View")
    for dock in docks:
        view_menu.addAction(dock.toggleViewAction())
    help_menu = window.menuBar().addMenu("&Help")
    help_menu.addAction("About TuckerScope…", lambda: show_about(window, session))
    return {
        "file": file_menu, "recent_cts": recent_ct_menu, "recent_models": recent_model_menu, "view": view_menu,
        "help": help_menu,
    }  # fmt: skip


def original_cache_label(session: Session) -> str:
    """'Clear cached originals (12.3 MB)': what clearing would free, read when the menu opens."""
    cache = session.original_cache
    size = cache.size_bytes() if cache is not None else 0
    return f"Clear cached originals ({policy.human(size, 'B')})"


def clear_original_cache(window: QtWidgets.QMainWindow, session: Session) -> None:
    """Remove every original segmentation kept on disk; the ones in memory stay until the CT is reopened."""
    cache = session.original_cache
    if cache is None:
        return
    size = cache.size_bytes()
    cache.clear()
    window.statusBar().showMessage(f"Cleared {policy.human(size, 'B')} of cached originals in {cache.folder}", 8000)


def show_about(window: QtWidgets.QMainWindow, session: Session) -> QtWidgets.QMessageBox:
    """Version, torch, devices, where the models were found and where settings and caches live."""
    box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Information, "About TuckerScope", "", parent=window)
    text = about_text(session)
    box.setText(text.splitlines()[0])
    box.setInformativeText("\n".join(text.splitlines()[1:]))
    box.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setModal(False)
    box.open()
    window.about_box = box  # type: ignore[attr-defined]  # tests read it
    return box
