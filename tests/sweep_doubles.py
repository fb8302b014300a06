"""A sweep backend test double: its segmentation erodes as the DF falls, so the answers are known."""

from __future__ import annotations

import threading

import numpy as np

from tuckerscope.core.evaluation.metrics import ClassRef
from tuckerscope.core.evaluation.sweep import RunCost


class ErodingBackend:
    """Original: a 16-voxel cube per expert. Compressed at DF d: the cube loses round(8 * (1 - d)) slices."""

    def __init__(self, cancel_after: int | None = None):
        self.original_runs: dict[str, int] = {}
        self.compressed_runs: list[tuple[str, float]] = []
        self.cancel_after = cancel_after
        self.event = threading.Event()

    def classes(self, expert):
        return [ClassRef(1, f"{expert}_thing", expert)]

    def spacing(self):
        return (1.0, 1.0, 1.0)

    def original(self, expert, progress, cancel):
        self.original_runs[expert] = self.original_runs.get(expert, 0) + 1
        progress(1.0, "cached")
        return self.cube(0), RunCost(params=1000, flops=10**6, seconds=2.0)

    def compressed(self, expert, df, progress, cancel, method="tucker"):
        """Pruning ('prune') erodes half again as fast, at the same parameter count."""
        self.compressed_runs.append((expert, df) if method == "tucker" else (expert, df, method))
        if self.cancel_after is not None and len(self.compressed_runs) >= self.cancel_after:
            self.event.set()
        progress(0.5, "half")
        lost = round((12 if method == "prune" else 8) * (1 - df))
        return self.cube(lost), RunCost(int(1000 * df), int(10**6 * df), 2.0 * df)

    @staticmethod
    def cube(lost):
        labels = np.zeros((24, 24, 24), np.uint8)
        labels[4 : 20 - lost, 4:20, 4:20] = 1
        return labels
