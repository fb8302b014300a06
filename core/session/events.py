"""Events of the Qt-free session (napari style: models emit, views subscribe), one per field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Event:
    """A list of callbacks called in order with the emitted arguments; no threads, no queues."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[..., Any]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            callback(*args)

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {len(self._callbacks)} listeners)"


class SessionEvents:
    """What views subscribe to, one event per field of the session (napari style)."""

    def __init__(self) -> None:
        self.volume_changed = Event("volume_changed")  # ()
        self.experts_changed = Event("experts_changed")  # ()
        self.compression_changed = Event("compression_changed")  # (expert): its DF, layer ranks or method
        self.target_changed = Event("target_changed")  # (scope): a target asked, solved, or dropped
        self.network_changed = Event("network_changed")  # (expert): its compressed network was rebuilt
        self.recovery_changed = Event("recovery_changed")  # (expert): a distilled network arrived (Recover)
        self.sizes_changed = Event("sizes_changed")  # (expert): its parameter and FLOP figures
        self.heatmaps_changed = Event("heatmaps_changed")  # (): explained-variance grids of every expert
        self.timing_changed = Event("timing_changed")  # (TimingResult | None)
        self.inference_changed = Event("inference_changed")  # (): runtime or precision of every network
        self.segmentation_changed = Event("segmentation_changed")  # (SegmentationUpdate)
        self.agreement_changed = Event("agreement_changed")  # (AgreementResult | None)
