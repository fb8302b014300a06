"""Recover: distil one expert's compressed network from its original, label-free, on the loaded CT.

The window's Recover action, Qt-free (plan on the UI thread, run in a worker, apply on the UI thread):
``recovery_job`` captures the expert's current setting (Tucker at its DF or at its solved target's ranks, or
the pruning baseline at the same parameter count) and returns a function that runs core.distillation's
Distiller with progress, a per-step callback (loss curve, ETA) and a cancel event; ``Session.apply_recovery``
keeps the distilled network and shows it (``Session.set_distilled`` switches back to zero-shot). The data: the
loaded CT's patches (the scan the user wants segmented: distilling on it is legitimate, the teacher supplies
the targets), plus a few phantoms when the model is the demo (its experts were trained on phantoms).

Each run writes its checkpoint under ``checkpoint_dir``, keyed by expert, setting, seed, patch and data; Recover
pressed again at the same setting resumes from it and trains for the budget again.

``figure2_job`` is the sweep panel's Figure 2 for this scan (core.distillation.figure2): agreement vs compression
ratio for Tucker and pruning, zero-shot and briefly distilled.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from tuckerscope.core.distillation.data import Scan, ScanSource, phantom_source, single_scan_source
from tuckerscope.core.distillation.distiller import (
    DEFAULT_LEARNING_RATE,
    DistilConfig,
    Distiller,
    StepReport,
    training_precision,
)
from tuckerscope.core.distillation.figure2 import DEFAULT_DFS, Figure2, Figure2Point, figure2
from tuckerscope.core.distillation.pool import PoolError, PoolLayout, check_patch_size
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.expert_run import RankKey
from tuckerscope.core.session.session import AgreementResult, Session, SessionError

__all__ = [
    "DEFAULT_DFS",
    "Figure2",
    "Figure2Point",
    "RecoveryPlan",
    "RecoveryResult",
    "RecoverySettings",
    "StepReport",
    "agreement_pair",
    "figure2_job",
    "recovery_job",
]

DEMO_SOURCE = "demo"
DEMO_PHANTOMS = 2  # phantoms added to the loaded CT for the demo model (seeds from 10,000: not its training ones)
PATCH_CAP = 64  # voxels per axis: small patches keep the teacher pool and the activations small (memory)
MAX_MEMORY_GIB = 8.0  # a run estimated above this is refused before anything is built
POOL_BUDGET_GIB = 1.0  # the teacher pool's share: bounds how many crops cover the loaded CT
COVERAGE = 1.0  # crops per scan: as many voxels as the loaded CT has at the model's spacing (random places)


@dataclass(frozen=True)
class RecoverySettings:
    """What the Recover control sets: a budget (minutes, or steps for tests and scripts), the seed, the data."""

    minutes: float | None = 2.0
    steps: int | None = None
    seed: int = 0
    phantoms: int | None = None  # None: DEMO_PHANTOMS for the demo model, none otherwise
    patch_cap: int = PATCH_CAP
    coverage: float = COVERAGE  # 0: two crops per scan (tests)
    learning_rate: float = DEFAULT_LEARNING_RATE
    precision: str = "auto"  # bf16 where the CPU has native bf16 (distiller.training_precision), else fp32
    max_memory_gib: float = MAX_MEMORY_GIB


@dataclass(frozen=True)
class RecoveryResult:
    """One expert's distilled network at one setting (``rank_key``: the setting's base key) and its run."""

    expert: str
    rank_key: RankKey
    network: nn.Module = field(repr=False)
    losses: tuple[float, ...]  # every step's loss, resumed runs' earlier steps included
    data: str
    resumed_steps: int  # steps done before this run (0: a fresh run)
    summary: dict[str, Any]

    @property
    def describe(self) -> str:
        first, last = (self.losses[0], self.losses[-1]) if self.losses else (float("nan"),) * 2
        resumed = f", resumed after {self.resumed_steps}" if self.resumed_steps else ""
        return f"{len(self.losses)} steps{resumed}, loss {first:.4f} → {last:.4f}, on {self.data}"


RecoveryRun = Callable[[ProgressCallback, Callable[[StepReport], None], threading.Event], RecoveryResult]


class RecoveryPlan(NamedTuple):
    run: RecoveryRun  # for a worker thread: (progress, on_step, cancel) -> RecoveryResult
    earlier: list[float]  # the losses of the checkpoint it resumes from (empty: a fresh run)
    data: str  # what it distils on, in words


def recovery_job(
    session: Session, name: str, settings: RecoverySettings, checkpoint_dir: Path
) -> RecoveryPlan:
    """A worker function distilling ``name`` at its current setting (resuming its checkpoint if any)."""
    expert = session.expert(name)
    if session.volume is None:
        raise SessionError("open a CT first: Recover distils on the loaded CT")
    if expert.is_full_rank():
        raise SessionError(f"{name} is not compressed (DF 1.0): there is nothing to recover")
    if expert.overrides:
        raise SessionError(
            f"Recover distils the DF rule's or a target's network: clear {name}'s per-layer ranks first"
        )
    loaded, engine, base_key = expert.loaded, expert.engine, expert.base_key()
    data = recovery_data(session, settings)
    patch = small_patch(loaded, settings.patch_cap)
    config = DistilConfig(
        method=expert.method,  # type: ignore[arg-type]
        df=expert.df if expert.target is None else None,
        target=expert.target,
        ranks=expert.target_ranks if expert.target is not None else None,
        steps=settings.steps,
        minutes=settings.minutes if settings.steps is None else None,
        patch_size=patch,
        patches_per_scan=covering_patches(loaded, data.loader(0), patch, len(data), settings.coverage),
        learning_rate=settings.learning_rate,
        precision=training_precision(settings.precision, "cpu"),
        seed=settings.seed,
        max_memory_bytes=int(settings.max_memory_gib * 1024**3),
        checkpoint_path=checkpoint_dir / checkpoint_name(loaded, config_key(expert, settings), data),
    )
    path = config.checkpoint_path
    done_steps, done_seconds, earlier = checkpoint_progress(path)
    if done_steps:  # the same budget again, on top of what the checkpoint did
        if config.steps is not None:
            config = replace(config, steps=done_steps + config.steps)
        else:
            config = replace(config, minutes=done_seconds / 60 + float(config.minutes or 0))

    def run(
        progress: ProgressCallback, on_step: Callable[[StepReport], None], cancel: threading.Event
    ) -> RecoveryResult:
        distiller = Distiller(loaded, data, config, engine=engine)
        result = distiller.run(progress, on_step, cancel, resume=path if done_steps else None)
        return RecoveryResult(
            name,
            base_key,
            result.network.eval(),
            tuple(result.loss_curve()),
            data.description,
            done_steps,
            result.summary(),
        )

    return RecoveryPlan(run, earlier, data.description)


def recovery_data(session: Session, settings: RecoverySettings) -> ScanSource:
    """The loaded CT, plus ``settings.phantoms`` phantoms (by default a few for the demo model only)."""
    volume = session.volume
    if volume is None:
        raise SessionError("open a CT first")
    scan = Scan(volume.name, volume.data, volume.affine)
    count = settings.phantoms if settings.phantoms is not None else (
        DEMO_PHANTOMS if session.model_source == DEMO_SOURCE else 0
    )  # fmt: skip
    if not count:
        return single_scan_source(scan)
    phantoms = phantom_source(count)
    return ScanSource(
        f"the loaded CT ({volume.name}) and {phantoms.description}",
        (scan.name, *phantoms.names),
        lambda index: scan if index == 0 else phantoms.loader(index - 1),
    )


def small_patch(expert: LoadedExpert, cap: int) -> tuple[int, int, int]:
    """The plans' patch capped at ``cap`` voxels per axis, or the plans' patch when the cap does not fit it."""
    capped = tuple(min(int(p), cap) for p in expert.patch_size)
    try:
        return check_patch_size(expert, capped)
    except PoolError:
        return check_patch_size(expert, expert.patch_size)


def covering_patches(
    expert: LoadedExpert, scan: Scan, patch: tuple[int, int, int], scans: int, coverage: float = COVERAGE
) -> int:
    """Crops per scan holding ``coverage`` times the loaded CT's voxels at the model's spacing, within the
    pool budget. Why: two crops of the loaded CT alone taught the student two places only; a cover of it raised
    a 40-step Recover's foreground agreement with the original from 0.39 to 0.59 (demo organs, DF 0.2)."""
    physical = float(scan.ct.size) * abs(float(np.linalg.det(scan.affine[:3, :3])))
    model_voxels = physical / float(np.prod(expert.spacing))
    patch_voxels = int(np.prod(patch))
    wanted = math.ceil(coverage * model_voxels / patch_voxels)
    entry_bytes = PoolLayout(patch, 1, len(expert.labels), (), 0).entry_bytes  # one CT channel, no features
    affordable = int(POOL_BUDGET_GIB * 1024**3) // (entry_bytes * max(scans, 1))
    return max(2, min(wanted, affordable))


def config_key(expert: Any, settings: RecoverySettings) -> str:
    setting = round(expert.df, 6) if expert.target is None else (expert.target, sorted(expert.ranks().items()))
    return repr((expert.method, setting, settings.seed, settings.patch_cap, settings.learning_rate, settings.precision))


def checkpoint_name(expert: LoadedExpert, key: str, data: ScanSource) -> str:
    """One file per (expert, setting, data): the loaded CT is identified by a sample of its voxels too."""
    digest = hashlib.sha1(f"{expert.spec.folder}|{key}|{data.names}".encode())
    first = data.loader(0)
    digest.update(np.ascontiguousarray(first.ct[::7, ::7, ::7]).tobytes())
    return f"{expert.name}-{digest.hexdigest()[:16]}.pt"


def checkpoint_progress(path: Path | None) -> tuple[int, float, list[float]]:
    """(steps, seconds, losses) a checkpoint holds; zeros when there is none or it cannot be read."""
    if path is None or not path.exists():
        return 0, 0.0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        records = state["records"]
        return int(state["step"]), float(state["elapsed"]), [float(r["loss"]) for r in records]
    except Exception:  # a damaged or foreign file: start afresh (the Distiller would refuse it)
        path.unlink(missing_ok=True)
        return 0, 0.0, []


def agreement_pair(session: Session) -> tuple[AgreementResult | None, AgreementResult | None]:
    """(zero-shot, distilled) agreement at the current settings, each None until it was scored.

    Zero-shot: every expert's zero-shot network; distilled: the distilled network of every expert that has
    one at its setting (the others zero-shot). Both exist once the user has looked at both sides.
    """
    if not any(session.distilled_network(n, required=False) is not None for n in session.experts):
        return session.agreement, None
    zero_shot = tuple((n, e.base_key()) for n, e in session.experts.items())
    distilled = tuple(
        (n, (*e.base_key(), "distilled") if session.distilled_network(n, required=False) is not None else e.base_key())
        for n, e in session.experts.items()
    )
    return session.agreements.get(zero_shot), session.agreements.get(distilled)


Figure2Run = Callable[[ProgressCallback, Callable[[Figure2Point], None], threading.Event], Figure2]


def figure2_job(
    session: Session, name: str, steps_per_point: int, seed: int = 0, dfs: tuple[float, ...] = DEFAULT_DFS
) -> Figure2Run:
    """Figure 2 of ``name`` on the loaded CT (distilled on it and scored on it; see figure2's caveat)."""
    expert = session.expert(name)
    if session.volume is None:
        raise SessionError("open a CT first")
    if steps_per_point < 1:
        raise SessionError("Figure 2 needs at least one distillation step per point")
    loaded = expert.loaded
    data = recovery_data(session, RecoverySettings(phantoms=0))
    base = DistilConfig(patch_size=small_patch(loaded, PATCH_CAP), seed=seed, steps=steps_per_point)

    def run(
        progress: ProgressCallback, on_point: Callable[[Figure2Point], None], cancel: threading.Event
    ) -> Figure2:
        return figure2(
            loaded, data, dfs=dfs, steps_per_point=steps_per_point, base=base, progress=progress,
            on_point=on_point, cancel=cancel,
        )  # fmt: skip

    return run
