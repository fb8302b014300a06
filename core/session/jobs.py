"""Background jobs of the window, captured from a Session on the UI thread and run in a worker.

Each ``*_job`` function reads what it needs from the session now (immutable values, or objects that are
only read afterwards: networks, engines) and returns a function of (progress, cancel) for a worker thread.
Qt-free, so the CLI, scripts and tests run exactly what the window runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from tuckerscope.core.compression.counting import NetworkCost, count_network
from tuckerscope.core.compression.explained_variance import all_heatmaps
from tuckerscope.core.evaluation.timing import ForwardSetup, compare_forward
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.segmentation.live_segmentation import RankKey
from tuckerscope.core.session.session import ExpertModel, Session

ProgressCallback = Callable[[float, str], None]
Job = Callable[[ProgressCallback, threading.Event], object]


@dataclass(frozen=True)
class CompressionResult:
    """A compressed network for one expert's ranks (None at full rank) and what it costs."""

    expert: str
    rank_key: RankKey
    network: nn.Module | None
    seconds: float  # time to build the network by slicing the cached factors
    original: NetworkCost
    compressed: NetworkCost


@dataclass(frozen=True)
class ExpertTiming:
    """Median forward time of one expert's original and compressed network on one patch."""

    expert: str
    df: float
    rank_key: RankKey
    original_seconds: float
    compressed_seconds: float | None  # None: full rank, nothing to compare
    patch_size: tuple[int, ...]

    @property
    def speedup(self) -> float | None:
        if self.compressed_seconds is None:
            return None
        return self.original_seconds / max(self.compressed_seconds, 1e-12)


@dataclass(frozen=True)
class TimingResult:
    rows: list[ExpertTiming]
    setup: str  # device, precision, threads
    runs: int


def compression_job(session: Session, name: str) -> Callable[[], CompressionResult]:
    """Build one expert's compressed network at its current ranks and count both networks."""
    expert = session.expert(name)
    key, ranks, engine, full = expert.rank_key(), expert.ranks(), expert.engine, expert.is_full_rank()

    def run() -> CompressionResult:
        start = time.perf_counter()
        network = None if full else engine.compress(ranks)
        seconds = time.perf_counter() - start
        return CompressionResult(
            name, key, network, seconds, count_network(engine), count_network(engine, ranks)
        )

    return run


def heatmaps_job(
    session: Session,
) -> Callable[[ProgressCallback, threading.Event], dict[str, dict[str, np.ndarray]]]:
    """Explained-variance grids of every layer of every expert, from the cached factors."""
    engines = {name: expert.engine for name, expert in session.experts.items()}

    def run(progress: ProgressCallback, cancel: threading.Event) -> dict[str, dict[str, np.ndarray]]:
        result = {}
        for index, (name, engine) in enumerate(engines.items()):
            if cancel.is_set():
                raise Cancelled("heatmaps cancelled")
            progress(index / len(engines), f"heatmaps of {name}")
            result[name] = all_heatmaps(engine)
        return result

    return run


def timing_job(
    session: Session,
    setup: ForwardSetup,
    networks: Mapping[str, tuple[RankKey, nn.Module]],
    runs: int = 3,
) -> Callable[[ProgressCallback, threading.Event], TimingResult]:
    """Forward time per expert on one patch of its plans' size, original and compressed interleaved.

    ``networks`` holds compressed networks already built; missing ones are built in the worker.
    """
    plans = []
    for expert in session.experts.values():
        built = networks.get(expert.name)
        key = expert.rank_key()
        network = built[1] if built is not None and built[0] == key else None
        plans.append((expert, key, expert.is_full_rank(), expert.ranks(), network, input_shape(expert)))

    def run(progress: ProgressCallback, cancel: threading.Event) -> TimingResult:
        setup.check()
        rows = []
        for index, (expert, key, full, ranks, network, shape) in enumerate(plans):
            progress(index / len(plans), f"timing {expert.name} ({setup.describe()})")
            pair = {"original": expert.loaded.network}
            if not full:
                pair["compressed"] = network if network is not None else expert.engine.compress(ranks)
            timings = compare_forward(pair, shape, setup, warmup=1, runs=runs, should_cancel=cancel.is_set)
            compressed = timings.get("compressed")
            rows.append(
                ExpertTiming(
                    expert.name,
                    expert.df,
                    key,
                    timings["original"].wall_seconds,
                    None if compressed is None else compressed.wall_seconds,
                    tuple(shape[2:]),
                )
            )
        return TimingResult(rows, setup.describe(), runs)

    return run


def input_shape(expert: ExpertModel) -> tuple[int, ...]:
    """(1, channels, *patch): one patch as nnU-Net feeds the network."""
    channels = len(expert.loaded.dataset_json.get("channel_names", {"0": "CT"}))
    return (1, channels, *expert.loaded.patch_size)
