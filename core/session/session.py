"""The state behind the TuckerScope window, Qt-free: one CT, its experts and their ranks, the segmentations.

Napari style: a plain object that holds state and emits events (tuckerscope.core.session.events.Event) when a field
changes; views subscribe and redraw. The session is only mutated on one thread (the UI thread). Heavy work
follows plan -> run -> apply: ``plan_*`` captures immutable inputs on the UI thread, ``run_*`` is a plain
function a worker thread calls with progress and cancel, and ``apply_*`` stores its result and emits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from tuckerscope.core.compression.ranks import check_df, df_ranks, ranks_of, with_overrides
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.evaluation.metrics import ClassRef, ClassScore, compare
from tuckerscope.core.imaging.display_grid import DisplayGrid
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.models.model_sources import ModelSource
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.runtime.processes import IsolatedRunner
from tuckerscope.core.segmentation.live_segmentation import (
    ExpertRun,
    RankKey,
    SegmentationPlan,
    SegmentationUpdate,
)
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter, slab_roi
from tuckerscope.core.session.events import Event

ProgressCallback = Callable[[float, str], None]
RGB = tuple[int, int, int]
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

    @property
    def name(self) -> str:
        return self.loaded.name

    def ranks(self) -> dict[str, tuple[int, int]]:
        """Every layer's (r_out, r_in): the DF rule, then the per-layer overrides."""
        layers = self.engine.layers
        return ranks_of(with_overrides(df_ranks(layers, self.df), self.overrides, layers))

    def is_full_rank(self) -> bool:
        return all(
            ranks == (layer.out_channels, layer.in_channels)
            for layer, ranks in zip(self.engine.layers, self.ranks().values(), strict=True)
        )

    def rank_key(self) -> RankKey:
        """Identifies the compressed network: equal keys, equal networks."""
        return (round(self.df, 6), tuple(sorted(self.overrides.items())))


@dataclass(frozen=True)
class AgreementResult:
    volume_token: int
    rows: list[tuple[ClassInfo, ClassScore]]  # worst first
    summary: str


class SessionEvents:
    """What views can subscribe to."""

    def __init__(self) -> None:
        self.volume_changed = Event("volume_changed")  # ()
        self.experts_changed = Event("experts_changed")  # ()
        self.ranks_changed = Event("ranks_changed")  # (expert name)
        self.segmentation_changed = Event("segmentation_changed")  # (SegmentationUpdate)
        self.agreement_changed = Event("agreement_changed")  # (AgreementResult | None)


class Session:
    """One CT and a set of experts; every view of the window reads from here."""

    def __init__(self) -> None:
        self.events = SessionEvents()
        self.volume: CaseVolume | None = None
        self.experts: dict[str, ExpertModel] = {}
        self.model_source = ""
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
        self.status = ""
        self.inference = InferenceOptions()  # how live segmentations run (device, precision, threads)

    # ----- state changes (UI thread) ------------------------------------------------------------------------
    def set_volume(self, volume: CaseVolume, segmenter: Segmenter | None = None) -> None:
        """Show a new CT. Pass a Segmenter built in a worker: building one copies the CT as float64."""
        self.volume = volume
        self.segmenter = segmenter or Segmenter(volume.data, volume.affine)
        self.volume_token += 1
        self._clear_segmentations()
        self.events.volume_changed.emit()

    def set_experts(self, experts: list[ExpertModel], source: str) -> None:
        """New experts for the same CT; the Segmenter (and its preprocessing per expert) is kept."""
        self.experts = {expert.name: expert for expert in experts}
        self.model_source = source
        self.volume_token += 1
        self._clear_segmentations()
        self.events.experts_changed.emit()

    def set_df(self, name: str, df: float) -> None:
        expert = self.expert(name)
        df = float(df)
        check_df(df)
        if df != expert.df:
            expert.df = df
            expert.overrides.clear()
            self.events.ranks_changed.emit(name)

    def set_layer_ranks(self, name: str, layer: str, r_out: int, r_in: int) -> None:
        expert = self.expert(name)
        # with_overrides raises a RankPolicyError naming the layer when the ranks do not fit it
        with_overrides({}, {layer: (int(r_out), int(r_in))}, expert.engine.layers)
        expert.overrides[layer] = (int(r_out), int(r_in))
        self.events.ranks_changed.emit(name)

    def expert(self, name: str) -> ExpertModel:
        if name not in self.experts:
            raise SessionError(f"no expert named {name!r}; loaded: {', '.join(self.experts) or 'none'}")
        return self.experts[name]

    @property
    def classes(self) -> list[ClassInfo]:
        return [info for expert in self.experts.values() for info in expert.classes]

    def _clear_segmentations(self) -> None:
        self.originals, self.compressed, self.compressed_keys = {}, {}, {}
        self.complete_originals = frozenset()
        self.complete_compressed = frozenset()
        self.display_original = self.display_compressed = None
        self.positions = {}
        self.agreement = None

    # ----- segmentation refresh ------------------------------------------------------------------------------
    def plan_segmentation(
        self,
        display_axis: int | None = None,
        display_index: int | None = None,
        networks: Mapping[str, tuple[RankKey, nn.Module]] | None = None,
    ) -> SegmentationPlan:
        """What to segment now: missing originals, and compressed labels whose ranks changed.

        With a display axis and slice, the slab around it comes first. ``networks`` holds compressed
        networks already built (during the drag) so the worker need not build them again.
        """
        if self.volume is None or self.segmenter is None:
            raise SessionError("open a CT first")
        runs = []
        for name, expert in self.experts.items():
            full = expert.is_full_rank()
            key = expert.rank_key()
            runs.append(
                ExpertRun(
                    name=name,
                    expert=expert.loaded,
                    engine=expert.engine,
                    ranks=None if full else expert.ranks(),
                    rank_key=key,
                    network=_built_network(networks, name, key),
                    need_original=name not in self.complete_originals,
                    need_compressed=not full
                    and (self.compressed_keys.get(name) != key or name not in self.complete_compressed),
                )
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
            runs=tuple(runs),
            label_maps={name: expert.lookup for name, expert in self.experts.items()},
            originals=dict(self.originals),
            compressed={
                n: a
                for n, a in self.compressed.items()
                if self.compressed_keys.get(n) == self.experts[n].rank_key()
            },
            roi=roi,
            roi_description=description,
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
        self.status = update.description
        self.events.segmentation_changed.emit(update)
        return True

    def compressed_is_current(self) -> bool:
        """True when every expert's compressed labels cover the volume at the ranks now chosen."""
        return all(
            expert.is_full_rank() or name in self.complete_compressed for name, expert in self.experts.items()
        ) and len(self.complete_originals) == len(self.experts)

    # ----- agreement ----------------------------------------------------------------------------------------
    def plan_agreement(
        self, runner: IsolatedRunner | None = None
    ) -> Callable[[threading.Event], AgreementResult] | None:
        """A job comparing compressed with original per class, or None until both cover the volume.

        With a ``runner`` the scoring runs in its process (surface-distance holds the GIL for seconds).
        """
        if self.volume is None or not self.compressed_is_current():
            return None
        token = self.volume_token
        spacing = self.volume.grid.input_spacing
        infos = {(c.expert, c.expert_label): c for c in self.classes}
        pairs = []
        for name, expert in self.experts.items():
            refs = [ClassRef(c.expert_label, c.name, c.expert) for c in expert.classes]
            compressed = None if expert.is_full_rank() else self.compressed[name]
            pairs.append((refs, self.originals[name], compressed))

        def run(cancel: threading.Event) -> AgreementResult:
            if runner is None:
                scores = score_pairs(pairs, spacing)
            else:
                scores = runner.run(score_pairs, pairs, spacing, cancel=cancel)
            rows = [(infos[(s.expert, s.label)], s) for s in scores]
            rows.sort(key=lambda row: (row[1].dice, row[1].nsd, row[0].name))
            return AgreementResult(token, rows, summarise_agreement(rows))

        return run

    def apply_agreement(self, result: AgreementResult) -> bool:
        if result.volume_token != self.volume_token:
            return False
        self.agreement = result
        self.events.agreement_changed.emit(result)
        return True


def score_pairs(
    pairs: list[tuple[list[ClassRef], np.ndarray, np.ndarray | None]], spacing: tuple[float, float, float]
) -> list[ClassScore]:
    """Per-class scores of each expert's compressed labels against its original (None: identical)."""
    scores: list[ClassScore] = []
    for refs, original, compressed in pairs:
        if compressed is None:  # full rank: the same labels, so every present class agrees perfectly
            counts = np.bincount(original.ravel(), minlength=max((r.label for r in refs), default=0) + 1)
            scores += [
                ClassScore(r.label, r.name, r.expert, 1.0, 1.0, int(counts[r.label]), int(counts[r.label]))
                for r in refs
                if counts[r.label] > 0
            ]
        else:
            scores += compare(original, compressed, spacing, refs).scores
    return scores


def _built_network(
    networks: Mapping[str, tuple[RankKey, nn.Module]] | None, name: str, key: RankKey
) -> nn.Module | None:
    built = (networks or {}).get(name)
    return built[1] if built is not None and built[0] == key else None


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


def ts_tasks_in(folder: Path) -> list[str]:
    """TS tasks with at least one expert under ``folder`` (a TS home or its results folder), in TS order."""
    from tuckerscope.core.models.model_folder import find_result_folders
    from tuckerscope.core.models.model_sources import TS_TASKS, dataset_id

    folder = Path(folder)
    root = folder / "nnunet" / "results" if (folder / "nnunet" / "results").is_dir() else folder
    ids = {dataset_id(f) for f in find_result_folders(root)} if root.is_dir() else set()
    return [name for name, task in TS_TASKS.items() if ids & set(task.dataset_ids)]


def resolve_model_source(source: str) -> ModelSource:
    """'demo', a TS task ('total', 'total_fast'), 'TASK@TS_HOME', or a folder of nnU-Net results."""
    from tuckerscope.core.models.model_sources import TS_TASKS, resolve_source, ts_task_source

    task, _, home = source.partition("@")
    if home and task in TS_TASKS:
        return ts_task_source(task, Path(home))
    if source == "demo" or source in TS_TASKS:
        return resolve_source(task=source)
    return resolve_source(model=Path(source))


def load_expert_models(
    source: ModelSource,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> list[ExpertModel]:
    """Load and factorise every expert of a source; classes get the source's merged labels and TS colours."""
    from tuckerscope.core.models.model_folder import load_expert
    from tuckerscope.core.outputs.exports import label_styles

    report = progress or (lambda _f, _m: None)
    styles = {style.label: style for style in label_styles(source.class_names)}
    experts: list[ExpertModel] = []
    count = len(source.experts)
    for index, spec in enumerate(source.experts):
        if cancel is not None and cancel.is_set():
            raise Cancelled("loading cancelled")
        report(index / count, f"loading {spec.name}")
        loaded = load_expert(spec)
        channels = len(loaded.dataset_json.get("channel_names", {"0": "CT"}))
        engine = TuckerEngine(loaded.network, (1, channels, *loaded.patch_size))
        report((index + 0.5) / count, f"factorising {loaded.name}")
        engine.factorise(should_cancel=(lambda: cancel.is_set()) if cancel is not None else None)
        classes = [
            ClassInfo(merged, styles[merged].name, loaded.name, own, styles[merged].rgb)
            for own, merged in sorted(source.label_maps[index].items())
        ]
        experts.append(ExpertModel(loaded, engine, classes, lookup=source.lookup_table(index)))
    report(1.0, "models loaded")
    return experts
