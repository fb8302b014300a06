"""What the window remembers between runs (QSettings): layout, each model source's DFs, the 3D toggle, the runtime."""

from __future__ import annotations

from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.core.session.policy import settings_key
from tuckerscope.core.session.session import Session

DEFAULT_SIZE = (1800, 1000)


class WindowSettings:
    """Reads and writes one QSettings store for the window."""

    def __init__(self, settings: QtCore.QSettings) -> None:
        self.settings = settings

    def saved_dfs(self, source: str) -> dict[str, float]:
        """The DFs the user left each expert of ``source`` at (the session starts them there)."""
        value = self.settings.value(f"dfs/{settings_key(source)}", {})
        return {str(k): float(v) for k, v in dict(value or {}).items()}

    def save_dfs(self, session: Session) -> None:
        if session.experts:
            dfs = {n: e.df for n, e in session.experts.items()}
            self.settings.setValue(f"dfs/{settings_key(session.model_source)}", dfs)

    def show_body_wall(self) -> bool:
        return bool(self.settings.value("view/body_wall_in_3d", False, type=bool))

    def set_show_body_wall(self, shown: bool) -> None:
        self.settings.setValue("view/body_wall_in_3d", shown)

    def inference(self) -> tuple[str, str]:
        """(runtime, precision) the networks ran with last time; the PyTorch fp32 reference by default."""
        return (
            str(self.settings.value("run/runtime", "torch")),
            str(self.settings.value("run/precision", "fp32")),
        )

    def set_inference(self, runtime: str, precision: str) -> None:
        self.settings.setValue("run/runtime", runtime)
        self.settings.setValue("run/precision", precision)

    def restore_layout(self, window: QtWidgets.QMainWindow) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            window.restoreGeometry(geometry)
        else:
            window.resize(*DEFAULT_SIZE)
        if state is not None:
            window.restoreState(state)

    def save(self, window: QtWidgets.QMainWindow, session: Session) -> None:
        self.settings.setValue("window/geometry", window.saveGeometry())
        self.settings.setValue("window/state", window.saveState())
        self.save_dfs(session)
        self.settings.sync()
