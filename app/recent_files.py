"""Recently opened CTs and model sources, kept in QSettings and offered in the File menu."""

from __future__ import annotations

from pyqtgraph.Qt import QtCore

MAX_RECENT = 8


class RecentFiles:
    """A most-recent-first list of paths under one QSettings key."""

    def __init__(self, settings: QtCore.QSettings, key: str) -> None:
        self.settings = settings
        self.key = key

    def items(self) -> list[str]:
        value = self.settings.value(self.key, [])
        if isinstance(value, str):  # QSettings gives a bare string for a one-element list
            value = [value]
        return [str(v) for v in (value or [])]

    def add(self, path: str) -> None:
        items = [path] + [p for p in self.items() if p != path]
        self.settings.setValue(self.key, items[:MAX_RECENT])

    def remove(self, path: str) -> None:
        self.settings.setValue(self.key, [p for p in self.items() if p != path])

    def clear(self) -> None:
        self.settings.setValue(self.key, [])
