"""Where the time of a segmentation goes: wall seconds per pipeline stage, and user vs kernel CPU time.

Why: compression only shrinks the network; the user waits for everything around it too (reading, TS's
resampling, nnU-Net's preprocessing, the sliding-window aggregation, the argmax, resampling back, writing).
The segmenter reports each stage into a plain callback ``record(stage, seconds)``; ``StageProfile`` is the
recorder `tuckerscope segment --profile` and the benchmarks use. Kernel time is shown beside user time
because page faults on freshly allocated buffers show up as kernel time, not as any one stage.

Stages may overlap (resampling one expert back while the next one's tiles run), so their sum can exceed the
wall time; the report says both. Beside each stage it shows the process's peak RSS when that stage last ended
(Linux): the first stage that shows the final peak is where the peak happened.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tuckerscope.core.runtime.memory import process_memory_kb

StageCallback = Callable[[str, float], None]

# The pipeline's stages in the order a volume passes them (the report lists them in this order).
STAGES: tuple[str, ...] = (
    "read",
    "load experts",
    "compress",
    "reorient",
    "resample",
    "normalise",
    "runtime setup",
    "tiles (network)",
    "aggregation",
    "argmax",
    "resample back",
    "write",
)


@contextmanager
def timed_stage(record: StageCallback | None, stage: str) -> Iterator[None]:
    """Report the wall time of the block to ``record`` (nothing when it is None)."""
    if record is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        record(stage, time.perf_counter() - start)


class StageProfile:
    """Accumulates stage seconds from any thread; CPU times are the process's, from its creation to report()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.peak_kb: dict[str, int] = {}  # the process's peak RSS when the stage last ended
        self._has_status = os.path.exists("/proc/self/status")
        self._start_wall = time.perf_counter()
        self._start_cpu = os.times()

    def __call__(self, stage: str, seconds: float) -> None:
        peak = process_memory_kb("VmHWM") if self._has_status else None
        with self._lock:
            if peak is not None:
                self.peak_kb[stage] = peak
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.counts[stage] = self.counts.get(stage, 0) + 1

    def stage(self, name: str) -> Iterator[None]:
        return timed_stage(self, name)

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, kernel) CPU seconds of this process and its finished children since the profile began."""
        now = os.times()
        user = (now.user - self._start_cpu.user) + (now.children_user - self._start_cpu.children_user)
        kernel = (now.system - self._start_cpu.system) + (
            now.children_system - self._start_cpu.children_system
        )
        return user, kernel

    def report(self) -> str:
        """A table of stages (known ones in pipeline order, then any others), wall total, user and kernel CPU."""
        wall = time.perf_counter() - self._start_wall
        user, kernel = self.cpu_seconds()
        with self._lock:
            names = [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES))
            rows = [(name, self.seconds[name], self.counts[name], self.peak_kb.get(name)) for name in names]
        total = sum(seconds for _, seconds, _, _ in rows)
        lines = ["stage profile (wall seconds; stages may overlap; peak RSS of the process when the stage last ended):"]
        for name, seconds, count, peak in rows:
            share = 100 * seconds / wall if wall > 0 else 0.0
            memory = f"  peak {peak / 1024**2:5.2f} GB" if peak is not None else ""
            lines.append(f"  {name:<16} {seconds:8.2f} s  {share:5.1f}%  ({count}x){memory}")
        lines.append(f"  {'sum of stages':<16} {total:8.2f} s")
        lines.append(f"  {'wall':<16} {wall:8.2f} s")
        lines.append(f"  CPU: user {user:.2f} s, kernel {kernel:.2f} s")
        return "\n".join(lines)
