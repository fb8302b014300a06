"""The Run menu: which CPU runtime and precision every network uses, remembered between runs.

PyTorch fp32 is the default and the reference (voxel-identical to TotalSegmentator); the other choices agree
with it to rounding, and the session names them in the views' titles (policy.runtime_label).
"""

from __future__ import annotations

from collections.abc import Callable

from pyqtgraph.Qt import QtGui, QtWidgets

from tuckerscope.app.window_settings import WindowSettings
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.session import policy
from tuckerscope.core.session.api import openvino_available
from tuckerscope.core.session.session import Session


class RunChoice:
    """Applies a choice to the session (every segmentation is redone) and keeps it in the settings."""

    def __init__(
        self,
        session: Session,
        stored: WindowSettings,
        show_error: Callable[[str, Exception, str], None],
        menu_bar: QtWidgets.QMenuBar,
    ) -> None:
        """Adds the menu and restores the last choice (call once the views listen to the session)."""
        self.session, self.stored, self.show_error = session, stored, show_error
        self.menu = self.add_menu(menu_bar)
        self.restore()

    def choose(self, runtime: str, precision: str) -> None:
        try:
            self.session.set_inference(runtime, precision)
        except UserError as exc:
            self.show_error("Cannot run the networks this way", exc, "")
            return
        self.stored.set_inference(runtime, precision)

    def restore(self) -> None:
        """Last run's choice, before anything is segmented; one that cannot run here falls back to the
        reference without a dialog (e.g. OpenVINO uninstalled since)."""
        try:
            self.session.set_inference(*self.stored.inference())
        except UserError:
            self.stored.set_inference("torch", "fp32")

    def add_menu(self, menu_bar: QtWidgets.QMenuBar) -> QtWidgets.QMenu:
        """The choices, one checked, placed before the Help menu."""
        menu = QtWidgets.QMenu("&Run", menu_bar)
        help_action = next((a for a in menu_bar.actions() if a.text() == "&Help"), None)
        if help_action is not None:
            menu_bar.insertMenu(help_action, menu)
        else:
            menu_bar.addMenu(menu)
        group = QtGui.QActionGroup(menu)
        group.setExclusive(True)
        installed = openvino_available()
        for runtime, precision, label in policy.INFERENCE_CHOICES:
            action = menu.addAction(label)
            action.setCheckable(True)
            action.setData(f"{runtime}/{precision}")
            group.addAction(action)
            if runtime != "torch" and not installed:
                action.setEnabled(False)
                action.setToolTip("OpenVINO is not installed: pip install 'tuckerscope[openvino]'")
            action.triggered.connect(lambda _checked=False, r=runtime, p=precision: self.choose(r, p))
        menu.setToolTipsVisible(True)

        def check_current() -> None:
            current = f"{self.session.inference.runtime}/{self.session.inference.precision}"
            for action in group.actions():
                action.setChecked(action.data() == current)

        menu.aboutToShow.connect(check_current)
        check_current()
        return menu
