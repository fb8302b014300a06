"""DF sweep for one CT: how quality falls as each expert is compressed harder, against size and measured time.

For every expert, every method (Tucker, or the paper's pruning baseline at the Tucker setting's parameter
count) and every DF of the grid, the expert alone is compressed, the CT is segmented with it, and its classes
are scored against the expert's original segmentation (computed once and cached). Each point records the
parameters, FLOPs and measured segmentation time of that run, with Dice and NSD per class: the paper's
quality-vs-compression curves (Figure 2), for one scan.

The sweep reaches models through a small `SweepBackend` protocol, so it runs the same for TS experts, the
demo models or a test double; `case_run.ModelSweepBackend` is the real one (segmenter, Tucker engine,
counting).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tuckerscope.core.evaluation.metrics import DEFAULT_TOLERANCE_MM, ClassRef, Comparison, compare
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.runtime.progress import ProgressCallback

DEFAULT_GRID: tuple[float, ...] = (0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
METHODS: tuple[str, ...] = ("tucker", "prune")

CancelSignal = Callable[[], bool] | threading.Event | None


class SweepError(UserError):
    """A sweep was asked for with an unusable grid or expert list."""


@dataclass(frozen=True)
class RunCost:
    """Size and measured time of one network on this CT: the x-axes of the sweep plots."""

    params: int
    flops: int
    seconds: float


@dataclass(frozen=True)
class SweepPoint:
    """One (expert, method, DF) run: its cost and the per-class agreement with the expert's original output."""

    expert: str
    df: float
    cost: RunCost
    comparison: Comparison
    method: str = "tucker"

    @property
    def mean_dice(self) -> float:
        summary = self.comparison.overall()
        return summary.mean_dice if summary else math.nan

    @property
    def worst_dice(self) -> float:
        summary = self.comparison.overall()
        return summary.worst_dice if summary else math.nan

    @property
    def mean_nsd(self) -> float:
        summary = self.comparison.overall()
        return summary.mean_nsd if summary else math.nan

    @property
    def worst_nsd(self) -> float:
        summary = self.comparison.overall()
        return summary.worst_nsd if summary else math.nan


@dataclass
class SweepResult:
    """All points so far, the originals' costs, and whether the user stopped the sweep early."""

    grid: tuple[float, ...]
    tolerance_mm: float
    originals: dict[str, RunCost] = field(default_factory=dict)
    points: list[SweepPoint] = field(default_factory=list)
    cancelled: bool = False
    methods: tuple[str, ...] = ("tucker",)

    @property
    def experts(self) -> list[str]:
        return list(dict.fromkeys([*self.originals, *(p.expert for p in self.points)]))

    def curve(self, expert: str, method: str = "tucker") -> list[SweepPoint]:
        """The expert's points for one method ordered from the least to the most compressed."""
        return sorted((p for p in self.points if p.expert == expert and p.method == method), key=lambda p: -p.df)

    def rows(self) -> list[dict[str, object]]:
        """One CSV row per (expert, method, DF, class), plus the original's cost on DF 1.0 rows without scores."""
        rows: list[dict[str, object]] = []
        for expert, cost in self.originals.items():
            rows.append(
                {
                    "expert": expert,
                    "df": 1.0,
                    "network": "original",
                    "method": "",
                    "params": cost.params,
                    "flops": cost.flops,
                }
                | {"seconds": cost.seconds}
            )
        for point in self.points:
            base = {
                "expert": point.expert,
                "df": point.df,
                "network": "compressed",
                "method": point.method,
                "params": point.cost.params,
                "flops": point.cost.flops,
                "seconds": point.cost.seconds,
            }
            for score in point.comparison.scores:
                rows.append(base | {"class": score.name, "dice": score.dice, "nsd": score.nsd})
        return rows

    def to_dict(self) -> dict[str, object]:
        return {
            "grid": list(self.grid),
            "tolerance_mm": self.tolerance_mm,
            "cancelled": self.cancelled,
            "methods": list(self.methods),
            "originals": {k: vars(v) for k, v in self.originals.items()},
            "points": [
                {
                    "expert": p.expert,
                    "method": p.method,
                    "df": p.df,
                    **vars(p.cost),
                    "mean_dice": p.mean_dice,
                    "worst_dice": p.worst_dice,
                    "mean_nsd": p.mean_nsd,
                    "worst_nsd": p.worst_nsd,
                    "classes": {s.name: {"dice": s.dice, "nsd": s.nsd} for s in p.comparison.scores},
                }
                for p in self.points
            ],
        }


class SweepBackend(Protocol):
    """What a sweep needs from the models; the original run must be cached by the backend.

    ``compressed`` runs the expert compressed at ``df`` by ``method`` ('tucker', or 'prune': the paper's
    baseline at the parameter count of the Tucker network at that DF).
    """

    def classes(self, expert: str) -> list[ClassRef]: ...

    def spacing(self) -> tuple[float, float, float]: ...

    def original(
        self, expert: str, progress: ProgressCallback, cancel: CancelSignal
    ) -> tuple[np.ndarray, RunCost]: ...

    def compressed(
        self, expert: str, df: float, progress: ProgressCallback, cancel: CancelSignal, method: str = "tucker"
    ) -> tuple[np.ndarray, RunCost]: ...


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(methods))
    unknown = [m for m in values if m not in METHODS]
    if not values or unknown:
        raise SweepError(f"sweep methods must be among {', '.join(METHODS)}, got {', '.join(methods) or 'none'}")
    return values


def check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(df) for df in grid)
    if not values:
        raise SweepError("the DF grid is empty; give at least one DF in (0, 1]")
    bad = [df for df in values if not (0.0 < df <= 1.0)]
    if bad:
        raise SweepError(f"DF values must lie in (0, 1], got {', '.join(f'{df:g}' for df in bad)}")
    return values


def is_cancelled(cancel: CancelSignal) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def run_sweep(
    backend: SweepBackend,
    experts: Sequence[str],
    grid: Sequence[float] = DEFAULT_GRID,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    progress: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    on_point: Callable[[SweepPoint], None] | None = None,
    methods: Sequence[str] = ("tucker",),
) -> SweepResult:
    """Run every (expert, method, DF); `on_point` sees each point as it lands so a plot can grow live.

    Cancelling returns the points finished so far with `cancelled=True` rather than raising: a half sweep
    is still worth plotting.
    """
    grid = check_grid(grid)
    methods = check_methods(methods)
    if not experts:
        raise SweepError("no experts to sweep")
    result = SweepResult(grid=grid, tolerance_mm=tolerance_mm, methods=methods)
    report = progress or (lambda _fraction, _message: None)
    runs = [(method, df) for method in methods for df in grid]
    steps = len(experts) * (len(runs) + 1)
    spacing = backend.spacing()
    try:
        for e, expert in enumerate(experts):
            step = e * (len(runs) + 1)
            original, cost = backend.original(
                expert, sub_progress(report, step, steps, f"{expert} original"), cancel
            )
            result.originals[expert] = cost
            classes = backend.classes(expert)
            for d, (method, df) in enumerate(runs, start=1):
                if is_cancelled(cancel):
                    raise Cancelled()
                label = f"{expert} DF {df:g}" + (" pruned" if method == "prune" else "")
                labels, cost = backend.compressed(
                    expert, df, sub_progress(report, step + d, steps, label), cancel, method
                )
                comparison = compare(
                    original, labels, spacing, classes, tolerance_mm, "original", "compressed"
                )
                point = SweepPoint(expert, df, cost, comparison, method)
                result.points.append(point)
                if on_point is not None:
                    on_point(point)
    except Cancelled:
        result.cancelled = True
        report(len(result.points) / steps, "sweep cancelled")
        return result
    report(1.0, "sweep done")
    return result


def sub_progress(report: ProgressCallback, step: int, steps: int, label: str) -> ProgressCallback:
    """Map one run's own 0..1 progress onto its slice of the whole sweep."""

    def forward(fraction: float, message: str) -> None:
        report((step + min(max(fraction, 0.0), 1.0)) / steps, f"{label}: {message}" if message else label)

    return forward


def timed(run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    labels = run()
    return labels, time.perf_counter() - start
