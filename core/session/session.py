"""The state behind the TuckerScope window, Qt-free: one CT, its experts, their compression settings, and
everything computed from them (networks, sizes, heatmaps, timings, segmentations, agreement).

Napari style: a plain object that holds state and emits one event per field (core.session.events) when it
changes; views subscribe and redraw. The session is only mutated on one thread (the UI thread). Heavy work
follows plan -> run -> apply: ``plan_*`` (or a ``*_job`` of core.session.jobs) captures immutable inputs on
the UI thread, the run is a plain function a worker thread calls with progress and cancel, and ``apply_*``
stores its result and emits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from tuckerscope.core.compression.budgets import BudgetResult, parse_target
from tuckerscope.core.compression.ranks import check_df, df_ranks, ranks_of, with_overrides
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.evaluation.case_run import class_refs
from tuckerscope.core.evaluation.counts import ExpertSize
from tuckerscope.core.evaluation.metrics import ClassScore, Comparison, compare
from tuckerscope.core.imaging.display_grid import DisplayGrid
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.models.model_sources import ModelSource
from tuckerscope.core.outputs.report import LayerHeatmap
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.runtime.processes import IsolatedRunner
from tuckerscope.core.segmentation.expert_run import ExpertRun, RankKey, check_method
from tuckerscope.core.segmentation.live_segmentation import SegmentationPlan, SegmentationUpdate
from tuckerscope.core.segmentation.original_cache import OriginalCache
from tuckerscope.core.segmentation.runtimes import require_openvino
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter, slab_roi
from tuckerscope.core.session.events import SessionEvents

if TYPE_CHECKING:
    from tuckerscope.core.session.recovery import RecoveryResult

RGB = tuple[int, int, int]
ALL_EXPERTS = "all experts"  # the scope of a target for the whole model (the experts' budgets pooled)
SLAB_HALF_WIDTH = 6  # slices either side of the one on screen that are segmented first
# TS classes (and the demo's) that wrap the trunk: in 3D their shells hide every organ inside them.
BODY_WALL_CLASSES = frozenset(
    {
        "skin",
        "body",
        "body_trunc",
        "body_extremities",
        "subcutaneous_fat",
        "torso_fat",
        "intermuscular_fat",
        "skeletal_muscle",
    }
)


class SessionError(UserError):
    """The session cannot do what was asked (no CT loaded, unknown expert, bad ranks)."""


@dataclass(frozen=True)
class ClassInfo:
    """One class as the views know it."""

    label: int  # value in the merged label map on screen
    name: str
    expert: str
    expert_label: int  # value in the expert's own output
    rgb: RGB  # TS colour, or a stable fallback for classes TS does not colour

    @property
    def wraps_the_body(self) -> bool:
        """A body-wall tissue: shown on slices, left out of 3D unless asked for (it would hide the rest)."""
        return self.name in BODY_WALL_CLASSES


@dataclass(frozen=True)
class CaseVolume:
    """The loaded CT on its input grid, plus its RAS+ display copy."""

    data: np.ndarray
    affine: np.ndarray
    name: str
    grid: DisplayGrid
    display_ct: np.ndarray
    ground_truth: np.ndarray | None = None

    @classmethod
    def from_array(
        cls, data: np.ndarray, affine: np.ndarray, name: str, ground_truth: np.ndarray | None = None
    ) -> CaseVolume:
        grid = DisplayGrid.from_affine(affine, data.shape)
        return cls(
            data=data,
            affine=np.asarray(affine, dtype=float),
            name=name,
            grid=grid,
            display_ct=grid.to_display(np.asarray(data, dtype=np.float32)),
            ground_truth=ground_truth,
        )


@dataclass
class ExpertModel:
    """A loaded expert with its Tucker engine, its classes, and the ranks the user chose."""

    loaded: LoadedExpert
    engine: TuckerEngine
    classes: list[ClassInfo]
    lookup: np.ndarray  # expert label -> merged label (the source's TS merge table)
    df: float = 1.0
    overrides: dict[str, tuple[int, int]] = field(default_factory=dict)
    method: str = "tucker"  # 'tucker' or 'prune' (the paper's baseline at the same parameter budget)
    # A solved budget replaces the DF rule: its spec ('params=10x'), its scope (the expert or ALL) and ranks.
    target: str | None = None
    target_scope: str = ""
    target_ranks: dict[str, tuple[int, int]] | None = None
    distilled_for: RankKey | None = None  # the setting whose distilled network (Recover) the compressed side runs

    @property
    def name(self) -> str:
        return self.loaded.name

    def ranks(self) -> dict[str, tuple[int, int]]:
        """Every layer's (r_out, r_in): the DF rule or the solved budget, then the per-layer overrides."""
        layers = self.engine.layers
        if self.target_ranks is not None:
            return {**self.target_ranks, **self.overrides}
        return ranks_of(with_overrides(df_ranks(layers, self.df), self.overrides, layers))

    def clear_target(self) -> None:
        self.target, self.target_scope, self.target_ranks = None, "", None

    def is_full_rank(self) -> bool:
        return all(
            ranks == (layer.out_channels, layer.in_channels)
            for layer, ranks in zip(self.engine.layers, self.ranks().values(), strict=True)
        )

    def base_key(self) -> RankKey:
        """Identifies the compression setting, zero-shot or distilled alike."""
        overrides = tuple(sorted(self.overrides.items()))
        if self.target is not None:  # the solved ranks too: a time target solved again may land elsewhere
            solved = tuple(sorted(self.target_ranks.items())) if self.target_ranks is not None else None
            return ("target", self.target, self.target_scope, solved, overrides, self.method)
        return (round(self.df, 6), overrides, self.method)

    @property
    def show_distilled(self) -> bool:
        """Distilled is shown at the setting it was chosen at (moving the slider away shows zero-shot)."""
        return self.distilled_for is not None and self.distilled_for == self.base_key()

    def rank_key(self) -> RankKey:
        """Identifies the compressed network: equal keys, equal networks (a distilled one differs)."""
        return (*self.base_key(), "distilled") if self.show_distilled else self.base_key()

    def run(self) -> ExpertRun:
        """The expert at its current setting, as the CLI runs it too (None ranks: full rank)."""
        ranks = None if self.is_full_rank() else self.ranks()
        return ExpertRun(self.loaded, self.engine, ranks, self.rank_key(), self.method, self.df, self.target)


@dataclass(frozen=True)
class AgreementResult:
    """Compressed vs original on the merged maps, scored as `eval` scores them (same classes, same rule)."""

    volume_token: int
    comparison: Comparison
    rows: list[tuple[ClassInfo, ClassScore]]  # worst first
    summary: str
    rank_keys: tuple[tuple[str, RankKey], ...] = ()  # the settings scored (zero-shot and distilled differ)


@dataclass(frozen=True)
class CompressionResult:
    """One expert's compressed network at a setting (None at full rank) and its size figures."""

    expert: str
    rank_key: RankKey
    network: nn.Module | None
    seconds: float  # time to build the network (slicing the cached factors, or pruning)
    size: ExpertSize


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
class BudgetOutcome:
    """A solved target for one scope (an expert, or ALL_EXPERTS), for the model set it was solved on."""

    models_token: int
    scope: str
    spec: str  # the target as parse_target describes it: 'params=10x', 'time=1.5s', 'vbmf'
    result: BudgetResult
    seconds: float  # solver wall time (time targets include the confirming forward timings)

    @property
    def summary(self) -> str:
        """What the target control shows beside the asked value: achieved vs asked, or why it was not met."""
        return self.result.message + ("" if self.result.met else " (nearest reachable ranks shown)")


@dataclass(frozen=True)
class TimingResult:
    rows: list[ExpertTiming]
    setup: str  # device, precision, threads
    runs: int

    def rank_keys(self) -> dict[str, RankKey]:
        """The settings the figures were measured at."""
        return {row.expert: row.rank_key for row in self.rows}


class Session:
    """One CT, a set of experts and everything computed from them; every view of the window reads from here.

    Mutated on one thread (the UI thread) only, through the ``set_*`` and ``apply_*`` methods, each of which
    emits the event of the field it changed.
    """

    def __init__(self, original_cache: OriginalCache | None = None) -> None:
        self.events = SessionEvents()
        # originals on disk (the window's): a reopened CT shows its originals without running the networks
        self.original_cache = original_cache
        self.volume: CaseVolume | None = None
        self.experts: dict[str, ExpertModel] = {}
        self.model_source = ""
        self.source: ModelSource | None = None
        self.segmenter: Segmenter | None = None
        self.volume_token = 0
        self.originals: dict[str, np.ndarray] = {}
        self.compressed: dict[str, np.ndarray] = {}
        self.compressed_keys: dict[str, RankKey] = {}
        self.complete_compressed: frozenset[str] = frozenset()
        self.complete_originals: frozenset[str] = frozenset()
        self.display_original: np.ndarray | None = None
        self.display_compressed: np.ndarray | None = None
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.agreement: AgreementResult | None = None
        self.agreements: dict[tuple[tuple[str, RankKey], ...], AgreementResult] = {}  # by settings scored
        self.recoveries: dict[str, RecoveryResult] = {}  # distilled networks (Recover), one per expert
        self.networks: dict[str, tuple[RankKey, nn.Module]] = {}  # compressed networks built so far
        self.sizes: dict[str, ExpertSize] = {}
        self.build_seconds: dict[str, float] = {}
        self.heatmaps: dict[str, list[LayerHeatmap]] = {}
        self.timing: TimingResult | None = None  # the last forward-time measurement
        self.inference = InferenceOptions()  # how live segmentations run (device, precision, threads)
        self.models_token = 0  # bumped per model set: a budget solved for older experts is dropped
        self.targets: dict[str, str] = {}  # scope -> target asked (being solved, or solved in budgets)
        self.budgets: dict[str, BudgetOutcome] = {}  # scope -> its solved target

    # ----- state changes (UI thread) ------------------------------------------------------------------------
    def set_volume(self, volume: CaseVolume, segmenter: Segmenter | None = None) -> None:
        """Show a new CT. Pass a Segmenter built in a worker: building one copies the CT as float64."""
        self.volume = volume
        self.segmenter = segmenter or Segmenter(volume.data, volume.affine, original_cache=self.original_cache)
        self.volume_token += 1
        self._clear_segmentations()
        self.events.volume_changed.emit()

    def set_experts(
        self,
        experts: list[ExpertModel],
        name: str,
        source: ModelSource | None = None,
        dfs: dict[str, float] | None = None,
    ) -> None:
        """New experts for the same CT, at ``dfs`` (e.g. the ones saved last time; others as they are).

        The Segmenter (and its preprocessing per expert) is kept.
        """
        for expert in experts:
            df = float((dfs or {}).get(expert.name, expert.df))
            check_df(df)
            expert.df = df
        self.experts = {expert.name: expert for expert in experts}
        self.model_source = name
        self.source = source
        self.volume_token += 1
        self.models_token += 1
        self.targets, self.budgets = {}, {}
        self.networks, self.sizes, self.build_seconds, self.heatmaps = {}, {}, {}, {}
        self.recoveries = {}
        self.timing = None
        self._clear_segmentations()
        self.events.experts_changed.emit()

    def set_df(self, name: str, df: float) -> None:
        expert = self.expert(name)
        df = float(df)
        check_df(df)
        if df != expert.df or expert.target is not None or name in self.targets:
            expert.df = df
            expert.overrides.clear()
            self._drop_target(expert)
            self.events.compression_changed.emit(name)

    # ----- budgets ------------------------------------------------------------------------------------------
    def scope_experts(self, scope: str) -> list[str]:
        """The experts a target scope covers: one expert, or every expert for ALL_EXPERTS."""
        if scope == ALL_EXPERTS:
            if not self.experts:
                raise SessionError("load a model first")
            return list(self.experts)
        return [self.expert(scope).name]

    def set_target(self, scope: str, text: str) -> None:
        """Ask for a budget ('params=10x', 'flops=8x', 'time=1.5s', 'energy=0.9', 'vbmf') for one expert or
        ALL_EXPERTS; '' goes back to the DF sliders. A bad target raises BudgetError (a UserError) and nothing
        changes. The solver runs as a job (jobs.budget_job, started on target_changed); apply_budget stores it."""
        names = self.scope_experts(scope)
        if not text.strip():
            self.targets.pop(scope, None)
            self.budgets.pop(scope, None)
            for name in names:
                expert = self.experts[name]
                if expert.target is not None and (scope != ALL_EXPERTS or expert.target_scope == ALL_EXPERTS):
                    self._drop_target(expert)
                    self.events.compression_changed.emit(name)
            self.events.target_changed.emit(scope)
            return
        spec = parse_target(text).describe()
        self.targets[scope] = spec
        self.budgets.pop(scope, None)
        self.events.target_changed.emit(scope)

    def apply_budget(self, outcome: BudgetOutcome) -> bool:
        """Use a solved target's ranks; False if the models or the target asked changed since."""
        if outcome.models_token != self.models_token or self.targets.get(outcome.scope) != outcome.spec:
            return False
        self.budgets[outcome.scope] = outcome
        names = [name for name in outcome.result.experts if name in self.experts]
        for name in names:
            expert = self.experts[name]
            if expert.target is not None and expert.target_scope != outcome.scope:
                self._forget(expert.target_scope)  # its earlier budget no longer describes what is shown
            expert.target, expert.target_scope = outcome.spec, outcome.scope
            expert.target_ranks = dict(outcome.result.experts[name].ranks)
            expert.overrides.clear()
        self.events.target_changed.emit(outcome.scope)
        for name in names:
            self.events.compression_changed.emit(name)
        return True

    def forget_target(self, scope: str) -> None:
        """A target whose solve failed: nothing was applied, the control goes back to what is shown."""
        self._forget(scope)

    def _drop_target(self, expert: ExpertModel) -> None:
        """The expert goes back to its DF; the target it was under (its own, or the pooled one) is forgotten."""
        if expert.target is not None and expert.target_scope != expert.name:
            self._forget(expert.target_scope)
        self._forget(expert.name)
        expert.clear_target()

    def _forget(self, scope: str) -> None:
        if scope in self.targets or scope in self.budgets:
            self.targets.pop(scope, None)
            self.budgets.pop(scope, None)
            self.events.target_changed.emit(scope)

    def set_layer_ranks(self, name: str, layer: str, r_out: int, r_in: int) -> None:
        expert = self.expert(name)
        # with_overrides raises a RankPolicyError naming the layer when the ranks do not fit it
        with_overrides({}, {layer: (int(r_out), int(r_in))}, expert.engine.layers)
        expert.overrides[layer] = (int(r_out), int(r_in))
        self.events.compression_changed.emit(name)

    def set_method(self, name: str, method: str) -> None:
        """'tucker' or 'prune' for one expert (pruning keeps the parameter count of the Tucker setting)."""
        expert = self.expert(name)
        if check_method(method) != expert.method:
            expert.method = method
            self.events.compression_changed.emit(name)

    def set_distilled(self, name: str, shown: bool) -> None:
        """Compressed side of one expert: its distilled network (Recover's, at this setting) or zero-shot."""
        expert = self.expert(name)
        if shown and self.distilled_network(name, required=False) is None:
            raise SessionError(f"{name} has no distilled network at this setting: press Recover first")
        if bool(shown) != expert.show_distilled:
            expert.distilled_for = expert.base_key() if shown else None
            self.events.compression_changed.emit(name)

    def set_inference(self, runtime: str, precision: str) -> None:
        """Run every network with another CPU runtime or precision ('torch' fp32 is the reference).

        Every segmentation is redone under the new options (originals cached for them on disk come back at
        once); a choice that cannot run here raises a UserError and nothing changes.
        """
        options = replace(self.inference, runtime=runtime, precision=precision)  # checks the combination
        if options == self.inference:
            return
        if runtime != "torch":
            require_openvino()
        self.inference = options
        self.volume_token += 1  # a refresh still running under the old options is dropped when it reports
        self._clear_segmentations()
        self.events.inference_changed.emit()

    def distilled_network(self, name: str, required: bool = True) -> nn.Module | None:
        """The distilled network of ``name``'s current setting; with ``required``, only while it is shown."""
        expert, recovery = self.expert(name), self.recoveries.get(name)
        if recovery is None or recovery.rank_key != expert.base_key():
            return None
        if required and not expert.show_distilled:
            return None
        return recovery.network

    def expert(self, name: str) -> ExpertModel:
        if name not in self.experts:
            raise SessionError(f"no expert named {name!r}; loaded: {', '.join(self.experts) or 'none'}")
        return self.experts[name]

    @property
    def classes(self) -> list[ClassInfo]:
        return [info for expert in self.experts.values() for info in expert.classes]

    def rank_keys(self) -> dict[str, RankKey]:
        return {name: expert.rank_key() for name, expert in self.experts.items()}

    def _clear_segmentations(self) -> None:
        self.originals, self.compressed, self.compressed_keys = {}, {}, {}
        self.complete_originals = frozenset()
        self.complete_compressed = frozenset()
        self.display_original = self.display_compressed = None
        self.positions = {}
        self.agreement = None
        self.agreements = {}

    # ----- results of background jobs (UI thread) -----------------------------------------------------------
    def apply_compression(self, result: CompressionResult) -> bool:
        """Keep a freshly built network and its figures; False if the expert's setting moved on since."""
        expert = self.experts.get(result.expert)
        if expert is None or expert.rank_key() != result.rank_key:
            return False
        if result.network is None:
            self.networks.pop(result.expert, None)
        else:
            self.networks[result.expert] = (result.rank_key, result.network)
        self.sizes[result.expert] = result.size
        self.build_seconds[result.expert] = result.seconds
        self.events.network_changed.emit(result.expert)
        self.events.sizes_changed.emit(result.expert)
        return True

    def apply_recovery(self, result: RecoveryResult) -> bool:
        """Keep a distilled network and show it; False if the expert's setting moved on since it started."""
        expert = self.experts.get(result.expert)
        if expert is None or expert.base_key() != result.rank_key:
            return False
        self.recoveries[result.expert] = result
        self.events.recovery_changed.emit(result.expert)
        self.set_distilled(result.expert, True)
        return True

    def apply_heatmaps(self, heatmaps: dict[str, list[LayerHeatmap]]) -> None:
        self.heatmaps = {name: grids for name, grids in heatmaps.items() if name in self.experts}
        self.events.heatmaps_changed.emit()

    def apply_timing(self, result: TimingResult | None) -> None:
        self.timing = result
        self.events.timing_changed.emit(result)

    # ----- segmentation refresh ------------------------------------------------------------------------------
    def plan_segmentation(
        self, display_axis: int | None = None, display_index: int | None = None
    ) -> SegmentationPlan:
        """What to segment now: missing originals, and compressed labels whose setting changed.

        With a display axis and slice, the slab around it comes first. Compressed networks already built
        (during the drag) are handed over so the worker need not build them again.
        """
        if self.volume is None or self.segmenter is None:
            raise SessionError("open a CT first")
        runs = tuple(expert.run() for expert in self.experts.values())
        need_compressed = frozenset(
            name
            for name, expert in self.experts.items()
            if not expert.is_full_rank()
            and (self.compressed_keys.get(name) != expert.rank_key() or name not in self.complete_compressed)
        )
        roi, description = None, ""
        if display_axis is not None and display_index is not None:
            axis, index = self.volume.grid.input_index(display_axis, display_index)
            roi = slab_roi(self.volume.data.shape, axis, index, SLAB_HALF_WIDTH)
            plane = ("sagittal", "coronal", "axial")[display_axis]
            description = (
                f"{plane} slices {max(display_index - SLAB_HALF_WIDTH, 0)}-{display_index + SLAB_HALF_WIDTH}"
            )
        return SegmentationPlan(
            volume_token=self.volume_token,
            segmenter=self.segmenter,
            grid=self.volume.grid,
            runs=runs,
            need_original=frozenset(self.experts) - self.complete_originals,
            need_compressed=need_compressed,
            label_maps={name: expert.lookup for name, expert in self.experts.items()},
            originals=dict(self.originals),
            compressed={
                n: a
                for n, a in self.compressed.items()
                if self.compressed_keys.get(n) == self.experts[n].rank_key()
            },
            roi=roi,
            roi_description=description,
            networks={
                **{
                    run.name: self.networks[run.name][1]
                    for run in runs
                    if run.name in self.networks and self.networks[run.name][0] == run.rank_key
                },
                **{n: net for n in self.experts if (net := self.distilled_network(n)) is not None},
            },
            options=self.inference,
        )

    def apply_segmentation(self, update: SegmentationUpdate) -> bool:
        """Store a refresh step; False (and nothing changes) if it belongs to an older volume or model set."""
        if update.volume_token != self.volume_token:
            return False
        self.originals = update.originals
        self.complete_originals = update.complete_originals
        self.compressed.update(update.compressed)
        self.compressed_keys.update(update.compressed_keys)
        self.complete_compressed = frozenset(
            name
            for name in self.experts
            if self.compressed_keys.get(name) == self.experts[name].rank_key()
            and (name in update.complete_experts or name in self.complete_compressed)
        )
        self.display_original = update.display_original
        self.display_compressed = update.display_compressed
        if update.positions is not None:
            self.positions = update.positions
        self.events.segmentation_changed.emit(update)
        return True

    def compressed_is_current(self) -> bool:
        """True when every expert's compressed labels cover the volume at the ranks now chosen."""
        return all(
            expert.is_full_rank() or name in self.complete_compressed for name, expert in self.experts.items()
        ) and len(self.complete_originals) == len(self.experts)


    def merged_maps(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(original, compressed) whole-volume maps merged as `eval` merges them, or None until both exist."""
        per_expert = self._expert_maps()
        if per_expert is None or self.source is None:
            return None
        return self.source.merge(per_expert[0]), self.source.merge(per_expert[1])

    def _expert_maps(self) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Every expert's whole-volume (original, compressed) labels, in expert order, or None until both exist."""
        if self.source is None or not self.compressed_is_current():
            return None
        originals = [self.originals[name] for name in self.experts]
        compressed = [
            self.originals[name] if expert.is_full_rank() else self.compressed[name]
            for name, expert in self.experts.items()
        ]
        return originals, compressed

    # ----- agreement ----------------------------------------------------------------------------------------
    def plan_agreement(
        self, runner: IsolatedRunner | None = None
    ) -> Callable[[threading.Event], AgreementResult] | None:
        """A job scoring compressed against original class by class, or None until both cover the volume.

        The same maps, classes and scores as `tuckerscope eval` (class_refs, metrics.compare). With a
        ``runner`` the scoring runs in its process (surface-distance holds the GIL for seconds).
        """
        # merged in the job: merging five TS experts' maps twice stalled the UI thread for about a second
        per_expert, source = self._expert_maps(), self.source
        if self.volume is None or per_expert is None or source is None:
            return None
        token, keys = self.volume_token, tuple(self.rank_keys().items())
        spacing = self.volume.grid.input_spacing
        refs = class_refs(self.source, list(self.experts))
        infos = {(c.label, c.expert): c for c in self.classes}

        def run(cancel: threading.Event) -> AgreementResult:
            maps = source.merge(per_expert[0]), source.merge(per_expert[1])
            if runner is None:
                comparison = compare(*maps, spacing, refs)
            else:
                comparison = runner.run(compare, *maps, spacing, refs, cancel=cancel)
            rows = [(infos[(s.label, s.expert)], s) for s in comparison.scores]
            rows.sort(key=lambda row: (row[1].dice, row[1].nsd, row[0].name))
            return AgreementResult(token, comparison, rows, summarise_agreement(rows), keys)

        return run

    def apply_agreement(self, result: AgreementResult) -> bool:
        if result.volume_token != self.volume_token:
            return False
        self.agreement = result
        self.agreements[result.rank_keys] = result
        self.events.agreement_changed.emit(result)
        return True


def summarise_agreement(rows: list[tuple[ClassInfo, ClassScore]]) -> str:
    if not rows:
        return "No class present in either segmentation"
    dice = np.array([score.dice for _, score in rows])
    nsd = np.array([score.nsd for _, score in rows])
    worst = rows[0]
    return (
        f"{len(rows)} classes · mean Dice {dice.mean():.3f}, mean NSD {nsd.mean():.3f} · "
        f"worst: {worst[0].name} (Dice {worst[1].dice:.3f})"
    )
