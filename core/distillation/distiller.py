"""One distillation job: teacher = the original network (frozen), student = its compressed copy, no labels.

    distiller = Distiller(expert, data, DistilConfig(method="tucker", df=0.2, steps=200, seed=0))
    result = distiller.run(progress=on_progress, on_step=on_step, cancel=event)   # blocking; run it off the UI
    save_distilled(expert, result, out_dir)                                        # a loadable model folder

What a step does: draw ``batch_size`` patches from the pool (patches + cached teacher outputs, pool.py) with a
numpy Generator keyed by (seed, stage, step), run the student on them (autocast on CUDA, or bf16 when asked),
take the loss (losses.py), clip the gradient norm at 12 (nnU-Net's value), one Adam step (peak lr 1e-3: a 3%
warm-up, then cosine decay to zero over the budget, steps or seconds), and re-zero pruned channels. The batch choice depends only on the key, and nothing else in a step is random, so a
run is deterministic from its seed and a resumed run continues exactly where the checkpoint left it.

The student is the expert at a DF (the paper's rule on every layer) or at a budget's per-layer ranks:
``DistilConfig(target="params=10x", ranks=...)`` with the ranks budgets.py / time_budget.solve_target chose
(a target over several experts together is solved by the caller); without ``ranks`` the Distiller solves the
target for this expert alone.

A teacher-assistant chain (``assistant_dfs``, e.g. (0.5,)) distils DF 0.5 from the original first, then the
student from that assistant (Mirzadeh et al., for large teacher-student gaps). Assistants are DFs also when the
student is a target; each must be larger (Tucker parameters) than the stage after it. The budget is split evenly
over the stages. The budget (``steps`` or ``minutes``) counts training steps; the teacher's pass over the pool
(once per patch per stage) comes before and is reported separately.

Background-job behaviour: ``on_step`` after every step (loss terms, s/step, ETA: a live loss curve),
``progress(fraction, message)`` for a status bar, ``cancel`` (a threading.Event or a callable) checked before
every module's forward, so a cancel lands within one layer of the current pass; the state after the last
finished step is then written to ``checkpoint_path`` and Cancelled is raised. Checkpoints are also written
every ``checkpoint_every_seconds`` and at the end of every stage (atomically, weights_only-loadable).
Memory: the pool, parameter and activation bytes are estimated before anything is built and a run over
``max_memory_bytes`` is refused with the breakdown; the result reports the estimate and the process's peak RSS.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuckerscope.core.compression.budgets import BudgetError, parse_target
from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.ranks import check_df
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.distillation.data import ScanSource
from tuckerscope.core.distillation.losses import DistillationLoss, LossWeights
from tuckerscope.core.distillation.pool import (
    PatchPool,
    build_pool,
    check_patch_size,
    stage_outputs,
    trace_layout,
)
from tuckerscope.core.distillation.students import METHODS, Method, Student, make_student
from tuckerscope.core.evaluation.time_budget import solve_target
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.runtime.memory import process_memory_kb
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.expert_run import expert_engine, ranks_for_df

CancelSignal = Callable[[], bool] | threading.Event | None
CHECKPOINT_FORMAT = "tuckerscope-distillation-checkpoint/1"
GRADIENT_CLIP = 12.0
ETA_WINDOW = 10
PRECISIONS = ("fp32", "bf16")
LOSS_TEMPORARIES = 6
LR_SCHEDULES = ("cosine", "constant")
DEFAULT_LEARNING_RATE = 1e-3  # peak; demo organs DF 0.2, 214 steps: 0.968 -> 0.971 Dice vs constant 3e-4
WARMUP_FRACTION = 0.03


class DistillationError(UserError):
    """A distillation setting, budget, device or checkpoint that cannot be used."""


@dataclass(frozen=True)
class DistilConfig:
    """Everything that defines a run. Exactly one of ``df`` and ``target`` is the compression, exactly one of
    ``steps`` and ``minutes`` the budget."""

    method: Method = "tucker"
    df: float | None = None
    target: str | None = None  # a budget as budgets.parse_target reads it: 'params=10x', 'time=1.5s', 'vbmf'
    ranks: Mapping[str, tuple[int, int]] | None = None  # the target's per-layer ranks (None: solved here)
    assistant_dfs: tuple[float, ...] = ()
    steps: int | None = None
    minutes: float | None = None
    patch_size: tuple[int, int, int] | None = None
    patches_per_scan: int = 2
    batch_size: int = 1
    learning_rate: float = DEFAULT_LEARNING_RATE
    lr_schedule: str = "cosine"
    losses: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    max_memory_bytes: int | None = None
    checkpoint_path: Path | None = None
    checkpoint_every_seconds: float = 60.0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise DistillationError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if (self.df is None) == (self.target is None):
            raise DistillationError("give exactly one compression: a DF or a target (e.g. params=10x)")
        if self.target is not None:
            parse_target(self.target)
        elif self.ranks is not None:
            raise DistillationError("per-layer ranks come with the target they were chosen for")
        else:
            check_df(float(self.df or 0.0))
        previous = 1.0
        for df in self.assistant_dfs:
            check_df(df)
            if not (self.df or 0.0) < df < previous:
                lowest = f"the student's DF {self.df:g}" if self.df is not None else "0"
                raise DistillationError(
                    f"teacher-assistant DFs must lie between {lowest} and 1, largest first; "
                    f"got {', '.join(f'{d:g}' for d in self.assistant_dfs)}"
                )
            previous = df
        if (self.steps is None) == (self.minutes is None):
            raise DistillationError("give exactly one budget: a number of steps or of minutes")
        if self.steps is not None and self.steps < len(self.stage_settings):
            raise DistillationError(
                f"a budget of {self.steps} steps is too small: at least one step per stage"
            )
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise DistillationError(
                f"a budget of {self.minutes} minutes cannot train anything: give more than 0"
            )
        if self.patches_per_scan < 1 or self.batch_size < 1:
            raise DistillationError("patches per scan and batch size must be at least 1")
        if not self.learning_rate > 0:
            raise DistillationError(f"learning rate must be positive, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DistillationError(
                f"unknown learning-rate schedule {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}"
            )
        if self.precision not in PRECISIONS:
            raise DistillationError(
                f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        if self.losses.temperature <= 0 or min(self.losses.kd, self.losses.dice_ce, self.losses.features) < 0:
            raise DistillationError("loss weights must be non-negative and the temperature positive")
        if not (self.losses.kd or self.losses.dice_ce or self.losses.features):
            raise DistillationError("every loss weight is zero: nothing to train on")

    @property
    def setting(self) -> str:
        """The student's compression in words: 'DF 0.2' or 'target params=10x' (as ExpertRun.setting)."""
        return f"target {self.target}" if self.target is not None else f"DF {self.df:g}"

    @property
    def stage_settings(self) -> tuple[str, ...]:
        """Each stage's student in words: the assistants' DFs, then the student's setting."""
        return (*(f"DF {df:g}" for df in self.assistant_dfs), self.setting)

    def stage_budget(self, stage: int) -> tuple[int | None, float | None]:
        """(steps, seconds) of one stage: the budget split evenly, the first stages taking any remainder."""
        stages = len(self.stage_settings)
        if self.steps is not None:
            return self.steps // stages + (1 if stage < self.steps % stages else 0), None
        return None, float(self.minutes or 0.0) * 60.0 / stages

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (the budget may change)."""
        data = asdict(self)
        for key in (
            "steps",
            "minutes",
            "max_memory_bytes",
            "checkpoint_path",
            "checkpoint_every_seconds",
            "device",
        ):
            data.pop(key)
        data["assistant_dfs"] = list(self.assistant_dfs)
        for key in ("target", "ranks"):  # absent for DF runs, so their checkpoints read as before
            if data[key] is None:
                data.pop(key)
        if self.ranks is not None:
            data["ranks"] = {name: list(pair) for name, pair in self.ranks.items()}
        data["patch_size"] = list(self.patch_size) if self.patch_size else None
        return data


@dataclass(frozen=True)
class StepRecord:
    """One finished step: its stage, index within the stage (1-based), loss terms and timings."""

    stage: int
    step: int
    loss: float
    parts: dict[str, float]
    seconds: float
    elapsed: float


@dataclass(frozen=True)
class StepReport:
    """What ``on_step`` receives: the record, the stage's budget and the expected time left for the whole run."""

    record: StepRecord
    stage_setting: str  # 'DF 0.5' or 'target params=10x'
    stages: int
    stage_steps: int | None
    seconds_per_step: float
    eta_seconds: float


@dataclass(frozen=True)
class StageSummary:
    setting: str
    teacher: str
    steps: int
    train_seconds: float
    pool_patches: int
    pool_bytes: int
    teacher_seconds: float
    stopped_by: str

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / self.steps if self.steps else float("nan")


@dataclass(frozen=True)
class MemoryReport:
    """Bytes: estimated before the run and the process's measured peak.

    The estimate adds to the process's resident memory when it was made (``baseline_bytes``: interpreter,
    libraries, loaded models, in the window everything else it holds) the teacher pool, parameters, training
    activations and the loss's logits-sized temporaries. Measured on TS's 3 mm network (117 classes) the
    loss temporaries were a third of the peak, hence their own term.
    """

    baseline_bytes: int
    pool_bytes: int
    parameter_bytes: int
    activation_bytes: int
    loss_bytes: int
    peak_rss_bytes: int | None = None

    @property
    def estimate_bytes(self) -> int:
        return (
            self.baseline_bytes
            + self.pool_bytes
            + self.parameter_bytes
            + self.activation_bytes
            + self.loss_bytes
        )

    def describe(self) -> str:
        gib = 1024**3
        text = (
            f"estimated peak {self.estimate_bytes / gib:.2f} GiB (process now {self.baseline_bytes / gib:.2f}, "
            f"teacher pool {self.pool_bytes / gib:.2f}, parameters and optimiser {self.parameter_bytes / gib:.2f}, "
            f"activations {self.activation_bytes / gib:.2f}, loss {self.loss_bytes / gib:.2f})"
        )
        if self.peak_rss_bytes is not None:
            text += f"; measured peak RSS {self.peak_rss_bytes / gib:.2f} GiB"
        return text


@dataclass
class DistilResult:
    """The distilled student (eval mode, CPU) and how it got there."""

    student: Student
    config: DistilConfig
    data: str
    records: list[StepRecord]
    stages: list[StageSummary]
    memory: MemoryReport

    @property
    def network(self) -> nn.Module:
        return self.student.network

    @property
    def losses_used(self) -> tuple[str, ...]:
        used = self.config.losses.used()
        return (*used, "teacher-assistants") if self.config.assistant_dfs else used

    def loss_curve(self, stage: int | None = None) -> list[float]:
        return [r.loss for r in self.records if stage is None or r.stage == stage]

    def summary(self) -> dict[str, Any]:
        """Plain data for the saved manifest, --json and the window."""
        final = self.records[-1].loss if self.records else None
        return {
            "student": self.student.describe(),
            "data": self.data,
            "losses_used": list(self.losses_used),
            "seed": self.config.seed,
            "patch_size": list(self.config.patch_size) if self.config.patch_size else None,
            "batch_size": self.config.batch_size,
            "learning_rate": self.config.learning_rate,
            "device": self.config.device,
            "precision": self.config.precision,
            "stages": [{**asdict(s), "seconds_per_step": s.seconds_per_step} for s in self.stages],
            "steps": len(self.records),
            "first_loss": self.records[0].loss if self.records else None,
            "final_loss": final,
            "memory": {**asdict(self.memory), "estimate_bytes": self.memory.estimate_bytes},
        }


class Distiller:
    """Distils ``expert``'s original network into its compressed copy (``config.df`` or ``config.target``) on
    unlabelled ``data``."""

    def __init__(
        self,
        expert: LoadedExpert,
        data: ScanSource,
        config: DistilConfig,
        engine: TuckerEngine | None = None,
        pool: PatchPool | None = None,
    ) -> None:
        """``engine``: a factorised engine of the expert's network (built if None). ``pool``: patches and the
        original's outputs from an earlier run on the same data and settings (figure 2 reuses one pool)."""
        config.validate()
        if not len(data):
            raise DistillationError("no scans to distil on")
        self.expert = expert
        self.data = data
        self.engine = engine or expert_engine(expert)
        self.patch_size = check_patch_size(expert, config.patch_size or expert.patch_size)
        self.config = replace(config, patch_size=self.patch_size, ranks=self._target_ranks(config))
        self._check_assistants_are_larger()
        self.device = _device(config.device)
        self.autocast_dtype = _autocast_dtype(config.precision)
        self._original_pool = pool
        channels = len(expert.dataset_json.get("channel_names", {"0": "CT"}))
        self.layout = trace_layout(expert.network, self.patch_size, channels, bool(config.losses.features))
        self.memory = self._memory_estimate()
        if config.max_memory_bytes is not None and self.memory.estimate_bytes > config.max_memory_bytes:
            raise DistillationError(
                f"this run needs about {self.memory.estimate_bytes / 1024**3:.2f} GiB, over the "
                f"{config.max_memory_bytes / 1024**3:.2f} GiB allowed: {self.memory.describe()}; use a smaller "
                "patch size, fewer patches per scan, fewer scans or no feature matching"
            )

    def run(
        self,
        progress: ProgressCallback | None = None,
        on_step: Callable[[StepReport], None] | None = None,
        cancel: CancelSignal = None,
        resume: Path | None = None,
    ) -> DistilResult:
        """Distil every stage within the budget; raises Cancelled (after a checkpoint) when cancelled."""
        should_cancel = cancel_checker(cancel)
        report = progress or (lambda _fraction, _message: None)
        state = self._load_checkpoint(resume) if resume is not None else None
        records: list[StepRecord] = [StepRecord(**r) for r in state["records"]] if state else []
        stages: list[StageSummary] = [StageSummary(**s) for s in state["stages"]] if state else []
        assistants: list[dict[str, torch.Tensor]] = list(state["assistants"]) if state else []
        first_stage = int(state["stage"]) if state else 0
        teacher, teacher_name = self.expert.network, "original"
        for stage, setting in enumerate(self.config.stage_settings):
            if stage < first_stage:
                teacher = self._student(stage, assistants[stage]).network.eval()
                teacher_name = f"assistant {setting}"
                continue
            resumed = state if stage == first_stage else None
            student = self._student(stage, resumed["student"] if resumed else None)
            with _deterministic(self.device, self.config.seed):
                summary = self._run_stage(
                    stage,
                    student,
                    teacher,
                    teacher_name,
                    records,
                    stages,
                    assistants,
                    resumed,
                    report,
                    on_step,
                    should_cancel,
                )
            stages.append(summary)
            assistants.append(_own_state(student.network))
            teacher, teacher_name = student.network.eval(), f"assistant {setting}"
        student.network.to("cpu").eval()
        peak = process_memory_kb("VmHWM") * 1024 if os.path.exists("/proc/self/status") else None
        memory = replace(self.memory, peak_rss_bytes=peak)
        report(1.0, "distillation done")
        return DistilResult(student, self.config, self.data.description, records, stages, memory)

    # -- one stage --------------------------------------------------------------------------------------------

    def _run_stage(
        self,
        stage: int,
        student: Student,
        teacher: nn.Module,
        teacher_name: str,
        records: list[StepRecord],
        stages: list[StageSummary],
        assistants: list[dict[str, torch.Tensor]],
        resumed: dict[str, Any] | None,
        report: ProgressCallback,
        on_step: Callable[[StepReport], None] | None,
        should_cancel: Callable[[], bool],
    ) -> StageSummary:
        config = self.config
        stage_count = len(config.stage_settings)
        setting = config.stage_settings[stage]
        span = (stage / stage_count, (stage + 1) / stage_count)

        def sub(start: float, stop: float) -> ProgressCallback:
            width = span[1] - span[0]
            return lambda f, message: report(
                span[0] + width * (start + (stop - start) * f), f"{setting}: {message}"
            )

        pool = self._pool(stage, teacher, sub(0.0, 0.1), should_cancel)
        network = student.network.to(self.device).train()
        optimizer = torch.optim.Adam(student.trainable_parameters(), lr=config.learning_rate)
        step = 0
        elapsed = 0.0
        if resumed is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            step, elapsed = int(resumed["step"]), float(resumed["elapsed"])
        loss_fn = DistillationLoss(config.losses)
        max_steps, max_seconds = config.stage_budget(stage)
        training = sub(0.1, 1.0)
        recent: list[float] = [r.seconds for r in records if r.stage == stage][-ETA_WINDOW:]
        last_checkpoint = time.monotonic()

        def save(at_step: int, at_elapsed: float) -> None:
            if config.checkpoint_path is not None:
                self._save_checkpoint(
                    stage, at_step, at_elapsed, student, optimizer, records, stages, assistants
                )

        with (
            stage_outputs(network, bool(config.losses.features), detach=False) as captured,
            _cancel_hooks(network, should_cancel),
        ):
            while (max_steps is None or step < max_steps) and (max_seconds is None or elapsed < max_seconds):
                if should_cancel():
                    save(step, elapsed)
                    raise Cancelled("distillation cancelled")
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_learning_rate(config, _budget_done(step, elapsed, max_steps, max_seconds))
                start = time.perf_counter()
                try:
                    loss, parts = self._step(student, pool, optimizer, loss_fn, captured, stage, step)
                except Cancelled:
                    save(step, elapsed)
                    raise
                seconds = time.perf_counter() - start
                step += 1
                elapsed += seconds
                record = StepRecord(stage, step, loss, parts, seconds, elapsed)
                records.append(record)
                recent = [*recent, seconds][-ETA_WINDOW:]
                per_step = sum(recent) / len(recent)
                eta = self._eta(stage, step, elapsed, per_step)
                training(_budget_done(step, elapsed, max_steps, max_seconds), f"step {step}, loss {loss:.4f}")
                if on_step is not None:
                    on_step(StepReport(record, setting, stage_count, max_steps, per_step, eta))
                if time.monotonic() - last_checkpoint >= config.checkpoint_every_seconds:
                    save(step, elapsed)
                    last_checkpoint = time.monotonic()
        stopped = "steps" if max_steps is not None else "time"
        summary = StageSummary(
            setting, teacher_name, step, elapsed, len(pool), pool.nbytes, pool.teacher_seconds, stopped
        )
        save(step, elapsed)
        return summary

    def _step(
        self,
        student: Student,
        pool: PatchPool,
        optimizer: torch.optim.Optimizer,
        loss_fn: DistillationLoss,
        captured: list[torch.Tensor],
        stage: int,
        step: int,
    ) -> tuple[float, dict[str, float]]:
        rng = np.random.default_rng([self.config.seed, stage, step])
        size = min(self.config.batch_size, len(pool))
        indices = rng.choice(len(pool), size=size, replace=False)
        inputs, teacher_logits, labels, teacher_features = pool.batch(indices.tolist(), self.device)
        captured.clear()
        with _autocast(self.device, self.autocast_dtype):
            output = student.network(inputs)
        loss, parts = loss_fn(output, teacher_logits, labels, list(captured), teacher_features)
        captured.clear()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        student.mask_gradients()
        torch.nn.utils.clip_grad_norm_(student.trainable_parameters(), GRADIENT_CLIP)
        optimizer.step()
        student.apply_masks()
        return float(loss.detach()), parts

    def _eta(self, stage: int, step: int, elapsed: float, per_step: float) -> float:
        """Seconds left: this stage's remaining budget plus every later stage's (pool passes not included)."""
        remaining = 0.0
        for later in range(stage, len(self.config.stage_settings)):
            steps, seconds = self.config.stage_budget(later)
            done_steps, done_seconds = (step, elapsed) if later == stage else (0, 0.0)
            remaining += (
                (steps - done_steps) * per_step
                if steps is not None
                else max(0.0, (seconds or 0) - done_seconds)
            )
        return remaining

    # -- building blocks ----------------------------------------------------------------------------------------

    def zero_shot(self) -> Student:
        """The student before any training (the zero-shot side of a comparison), at the config's DF or ranks."""
        config = self.config
        return make_student(self.engine, config.method, config.df, config.ranks, config.target)

    def _student(self, stage: int, state: dict[str, torch.Tensor] | None) -> Student:
        assistants = self.config.assistant_dfs
        if stage < len(assistants):
            student = make_student(self.engine, self.config.method, assistants[stage])
        else:
            student = self.zero_shot()
        if state is not None:
            student.network.load_state_dict(state)
            student.apply_masks()
        return student

    def _target_ranks(self, config: DistilConfig) -> dict[str, tuple[int, int]] | None:
        """The target's per-layer ranks: as given, or solved for this expert alone (a target that cannot be met
        is a BudgetError naming what can be reached; time targets time forward passes on the run's device)."""
        if config.target is None:
            return None
        if config.ranks is not None:
            missing = sorted({layer.name for layer in self.engine.layers} - set(config.ranks))
            if missing:
                raise DistillationError(f"the target's ranks name no ranks for layer {missing[0]}")
            return {name: (int(r_out), int(r_in)) for name, (r_out, r_in) in config.ranks.items()}
        setup = ForwardSetup(device=config.device, precision=config.precision)
        result = solve_target({self.expert.name: self.engine}, config.target, setup)
        if not result.met:
            raise BudgetError(result.message)
        return result.experts[self.expert.name].ranks

    def _check_assistants_are_larger(self) -> None:
        """With a target, an assistant DF must still sit between the original and the student (in parameters)."""
        config = self.config
        if config.ranks is None or not config.assistant_dfs:
            return
        last = config.assistant_dfs[-1]
        assistant = count_network(self.engine, ranks_for_df(self.engine, last)).params
        student = count_network(self.engine, config.ranks).params
        if assistant <= student:
            raise DistillationError(
                f"teacher-assistant DF {last:g} ({assistant:,} parameters) is no larger than the "
                f"{config.setting} student ({student:,}): give assistants with more parameters than the student"
            )

    def _pool(
        self, stage: int, teacher: nn.Module, report: ProgressCallback, should_cancel: Callable[[], bool]
    ) -> PatchPool:
        if stage == 0 and self._original_pool is not None:
            return self._original_pool
        on_device = teacher if self.device.type == "cpu" else _copy_to(teacher, self.device)
        with _cancel_hooks(on_device, should_cancel):
            pool = build_pool(
                on_device,
                self.expert,
                self.data,
                self.layout,
                self.config.patches_per_scan,
                (self.config.seed, stage),
                self.device,
                self.autocast_dtype,
                report,
                should_cancel,
            )
        if stage == 0:
            self._original_pool = pool
        return pool

    @property
    def original_pool(self) -> PatchPool | None:
        """The pool of the original teacher's outputs, once built: reusable by another Distiller on the same data."""
        return self._original_pool

    def _memory_estimate(self) -> MemoryReport:
        """Pool entries, parameters (student: value, gradient, two Adam moments; teacher: values), activations.

        Activations: the original network's per-layer outputs on one patch, twice (forward values kept for
        the backward pass, and their gradients), times the batch. Loss: LOSS_TEMPORARIES float32 tensors of
        the logits' size per patch (teacher logits, log-softmaxes, softmax, one-hot target, gradients). The
        scan being preprocessed (one at a time) is not included.
        """
        entries = len(self.data) * self.config.patches_per_scan
        teacher_params = sum(p.numel() for p in self.expert.network.parameters())
        logits_bytes = self.layout.classes * self.layout.voxels * 4
        baseline = process_memory_kb("VmRSS") * 1024 if os.path.exists("/proc/self/status") else 0
        return MemoryReport(
            baseline_bytes=baseline,
            pool_bytes=entries * self.layout.entry_bytes,
            parameter_bytes=teacher_params * 4 * (1 + 4),
            activation_bytes=2 * self.layout.activation_bytes * self.config.batch_size,
            loss_bytes=LOSS_TEMPORARIES * logits_bytes * self.config.batch_size,
        )

    # -- checkpoints ------------------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {
            "config": self.config.fingerprint(),
            "expert": str(self.expert.spec.folder),
            "data": list(self.data.names),
        }

    def _save_checkpoint(
        self,
        stage: int,
        step: int,
        elapsed: float,
        student: Student,
        optimizer: torch.optim.Optimizer,
        records: list[StepRecord],
        stages: list[StageSummary],
        assistants: list[dict[str, torch.Tensor]],
    ) -> None:
        path = Path(self.config.checkpoint_path or "")
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "identity": self._identity(),
            "stage": stage,
            "step": step,
            "elapsed": elapsed,
            "student": _own_state(student.network),
            "optimizer": optimizer.state_dict(),
            "records": [asdict(r) for r in records],
            "stages": [asdict(s) for s in stages],
            "assistants": assistants[:stage],
        }
        temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, temporary)
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise DistillationError(
                f"cannot write the distillation checkpoint {path} ({exc.strerror})"
            ) from None

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DistillationError(f"checkpoint {path} does not exist") from None
        except Exception as exc:  # torch raises many types for damaged or foreign files
            raise DistillationError(
                f"{path} is not a readable distillation checkpoint ({type(exc).__name__})"
            ) from None
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise DistillationError(f"{path} is not a TuckerScope distillation checkpoint")
        identity = self._identity()
        if checkpoint.get("identity") != identity:
            saved = checkpoint.get("identity", {})
            differing = sorted(
                key
                for key in identity["config"]
                if saved.get("config", {}).get(key) != identity["config"][key]
            )
            what = ", ".join(differing) or (
                "the model" if saved.get("expert") != identity["expert"] else "the data"
            )
            raise DistillationError(
                f"checkpoint {path} was written for another run (different {what}); resume with "
                "the same model, data and settings, only the budget may change"
            )
        return checkpoint


def checkpoint_ranks(path: Path, target: str) -> dict[str, tuple[int, int]] | None:
    """The per-layer ranks a checkpoint's run distils for ``target``; None without a readable one of it.

    Why: a time target solved again (new timings) can land on other ranks than the run being resumed used.
    """
    if not Path(path).is_file():
        return None
    try:
        config = torch.load(path, map_location="cpu", weights_only=True)["identity"]["config"]
    except Exception:  # damaged or foreign: the Distiller says so when it is asked to resume from it
        return None
    if config.get("target") != target or not isinstance(config.get("ranks"), dict):
        return None
    return {name: (int(pair[0]), int(pair[1])) for name, pair in config["ranks"].items()}


def _own_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


def _copy_to(network: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(network).to(device)


def _device(name: str) -> torch.device:
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise DistillationError(f"unknown device {name!r}; use cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DistillationError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def training_precision(asked: str, device: str) -> str:
    """'auto' resolved: bf16 autocast on CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), fp32
    elsewhere. Why: on this 2-core AVX512-BF16 machine a demo step takes 0.78 s in bf16 vs 1.43 s in fp32, and
    the 5-minute run then ends closer to the original (organs DF 0.2: mean Dice 0.978 vs 0.971); CPUs without
    native bf16 emulate it, slower than fp32."""
    if asked != "auto":
        return asked
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """oneDNN's own answer where torch exposes it, else the CPU's flags."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if probe is not None and not bool(probe()):
            return False
    except RuntimeError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """bf16 autocast when asked; fp32 otherwise (bf16 needs no loss scaling, unlike fp16)."""
    return torch.bfloat16 if precision == "bf16" else None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _budget_done(step: int, elapsed: float, max_steps: int | None, max_seconds: float | None) -> float:
    """The fraction of a stage's budget spent, in steps or in seconds, whichever the budget is (at most 1)."""
    return min(1.0, step / max_steps if max_steps else elapsed / float(max_seconds or 1.0))


def scheduled_learning_rate(config: DistilConfig, fraction_done: float) -> float:
    """The step's learning rate: a short linear warm-up, then cosine decay to zero at the end of the budget.

    Why: a short CPU budget ends with a network still moving at the full rate; decaying it makes the last steps
    settle (the budget is known in steps or seconds, so the schedule follows whichever is given).
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    fraction = min(max(fraction_done, 0.0), 1.0)
    if fraction < WARMUP_FRACTION:
        return config.learning_rate * (0.1 + 0.9 * fraction / WARMUP_FRACTION)
    decay = (fraction - WARMUP_FRACTION) / (1.0 - WARMUP_FRACTION)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * decay))


@contextmanager
def _deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """torch seeded from ``seed`` and cuDNN's deterministic kernels (CPU kernels are deterministic already),
    all restored afterwards: the caller's process (the window) keeps its own random state and settings."""
    cuda = device.type == "cuda"
    previous = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):
        torch.manual_seed(seed)
        if cuda:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous


@contextmanager
def _cancel_hooks(network: nn.Module, should_cancel: Callable[[], bool]) -> Iterator[None]:
    """Check for a cancel before every module's forward, in the calling thread only (the teacher may be the
    window's network, running elsewhere meanwhile)."""
    thread = threading.get_ident()

    def check(_module: nn.Module, _inputs: Any) -> None:
        if threading.get_ident() == thread and should_cancel():
            raise Cancelled("distillation cancelled")

    hooks = [module.register_forward_pre_hook(check) for module in network.modules()]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def cancel_checker(cancel: CancelSignal) -> Callable[[], bool]:
    """A threading.Event, a callable or None as one callable returning True once cancelled."""
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel
