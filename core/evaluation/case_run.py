"""One CT through the original and the Tucker-compressed experts, with everything `eval` and `report` need.

Each expert runs through the TS pipeline (Segmenter) twice: with its own network (cached by the segmenter)
and with the network compressed at its DF. Both runs are timed end to end on this machine. The experts'
outputs are merged as TS merges them (ModelSource.merge), and the merged maps are scored class by class,
each class attributed to the expert that predicts it; with a ground truth, both are scored against it too.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.evaluation.counts import ExpertSize, counts_table
from tuckerscope.core.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    ClassRef,
    Evaluation,
    GroundTruth,
    classes_from_names,
    evaluate,
)
from tuckerscope.core.evaluation.sweep import RunCost
from tuckerscope.core.imaging.label_maps import load_label_map
from tuckerscope.core.imaging.volume import Volume
from tuckerscope.core.models.compressed_model import save_compressed
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.models.model_sources import ModelSource
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.expert_run import ExpertRun, expert_engine
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter

CancelSignal = Callable[[], bool] | threading.Event | None


@dataclass
class ExpertResult:
    """What one ExpertRun gave on this CT: both outputs on the input grid (its own label values), timed."""

    run: ExpertRun
    original: np.ndarray
    compressed: np.ndarray
    original_seconds: float
    compressed_seconds: float
    size: ExpertSize

    @property
    def expert(self) -> LoadedExpert:
        return self.run.expert

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def df(self) -> float:
        return self.run.df

    @property
    def engine(self) -> TuckerEngine | None:
        """The factorised engine; None for an expert left at full rank (never factorised)."""
        return self.run.engine if self.run.engine.is_factorised else None

    @property
    def ranks(self) -> dict[str, tuple[int, int]]:
        return dict(self.run.ranks or {})

    @property
    def params_original(self) -> int:
        return self.size.params_original

    @property
    def params_compressed(self) -> int:
        return self.size.params_compressed

    @property
    def flops_original(self) -> int:
        return self.size.flops_original

    @property
    def flops_compressed(self) -> int:
        return self.size.flops_compressed


@dataclass
class CaseResult:
    """The experts' runs, the merged maps and their evaluation."""

    volume: Volume
    source: ModelSource
    options: InferenceOptions
    experts: list[ExpertResult]
    networks: dict[str, object]  # expert -> its compressed network (absent at full rank)
    original: np.ndarray
    compressed: np.ndarray
    classes: list[ClassRef]
    evaluation: Evaluation
    segmenter: Segmenter

    def save_models(self, folder: Path) -> list[Path]:
        """Every compressed expert as an nnU-Net-style results folder under `folder` (see compressed_model)."""
        return [
            save_compressed(result.expert, self.networks[result.name], folder, {"df": result.df})
            for result in self.experts
            if result.name in self.networks
        ]

    def counts_rows(self) -> list[dict[str, object]]:
        """The counts table (evaluation.counts): what the window's figures panel shows for the same setting."""
        return counts_table([result.size for result in self.experts])

    def timings_rows(self) -> list[dict[str, object]]:
        """Measured end-to-end segmentation time per expert (preprocessing, sliding window, export)."""
        return [
            {
                "expert": e.name,
                "df": e.df,
                "original_s": e.original_seconds,
                "compressed_s": e.compressed_seconds,
                "speedup": e.original_seconds / e.compressed_seconds
                if e.compressed_seconds > 0
                else math.nan,
                "device": self.options.device,
                "precision": self.options.precision,
            }
            for e in self.experts
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "ct": str(self.volume.path),
            "models": self.source.name,
            "device": self.options.device,
            "precision": self.options.precision,
            "experts": {
                e.name: {
                    "df": e.df,
                    "method": e.size.method,
                    "params_original": e.params_original,
                    "params_compressed": e.params_compressed,
                    "flops_original": e.flops_original,  # as fvcore counts: convs and norms
                    "flops_compressed": e.flops_compressed,
                    "conv_flops_original": e.size.conv_flops_original,
                    "conv_flops_compressed": e.size.conv_flops_compressed,
                    "original_seconds": e.original_seconds,
                    "compressed_seconds": e.compressed_seconds,
                }
                for e in self.experts
            },
            "metrics": self.evaluation.to_dict(),
        }


def class_refs(source: ModelSource, expert_names: Sequence[str]) -> list[ClassRef]:
    """Every merged class with the expert that predicts it (the last one, as later experts win the merge)."""
    owner: dict[int, str] = {}
    for name, mapping in zip(expert_names, source.label_maps, strict=True):
        for merged in mapping.values():
            owner[merged] = name
    return [
        ClassRef(label, class_name, owner.get(label, ""))
        for label, class_name in sorted(source.class_names.items())
    ]


def load_ground_truth(path: Path, volume: Volume) -> np.ndarray:
    """A label map on the CT's voxel grid, as integers: reoriented or resampled (imaging.label_maps).

    The values stay the file's own; match them to a model's classes by name with label_maps.match_by_name.
    """
    return load_label_map(path, volume.shape, volume.affine).data


def run_case(
    volume: Volume,
    source: ModelSource,
    experts: Sequence[LoadedExpert],
    dfs: Mapping[str, float],
    options: InferenceOptions | None = None,
    ground_truth: GroundTruth | np.ndarray | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    progress: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    segmenter: Segmenter | None = None,
    method: str = "tucker",
    runs: Mapping[str, ExpertRun] | None = None,
) -> CaseResult:
    """Segment with every expert, original and at its DF (experts absent from `dfs` stay uncompressed).

    ``runs`` gives some experts a prepared setting instead (budgeted ranks: compress --target).
    """
    options = options or InferenceOptions()
    report = progress or (lambda _fraction, _message: None)
    segmenter = segmenter or Segmenter(volume.data, volume.affine)
    results: list[ExpertResult] = []
    networks = {}
    for index, expert in enumerate(experts):
        if cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel()):
            raise Cancelled("evaluation cancelled")
        start, stop = index / len(experts), (index + 1) / len(experts)

        def part(lo: float, hi: float, start: float = start, stop: float = stop) -> ProgressCallback:
            return lambda f, m: report(start + (stop - start) * (lo + (hi - lo) * f), m)

        run = (runs or {}).get(expert.name)
        if run is None:
            df = dfs.get(expert.name, 1.0)
            part(0.0, 0.05)(0.0, f"{expert.name}: factorising")
            run = ExpertRun.at_df(expert, expert_engine(expert, factorise=df < 1.0), df, method)
        result, network = run_expert(run, segmenter, options, part, cancel)
        results.append(result)
        if network is not None:
            networks[expert.name] = network
    report(1.0, "scoring")
    original = source.merge([r.original for r in results])
    compressed = source.merge([r.compressed for r in results])
    classes = class_refs(source, [e.name for e in experts])
    evaluation = evaluate(original, compressed, volume.spacing, classes, ground_truth, tolerance_mm)
    return CaseResult(
        volume, source, options, results, networks, original, compressed, classes, evaluation, segmenter
    )


def run_expert(
    run: ExpertRun,
    segmenter: Segmenter,
    options: InferenceOptions,
    part: Callable[[float, float], ProgressCallback],
    cancel: CancelSignal,
) -> tuple[ExpertResult, object]:
    """Both sides of one expert, timed end to end; the compressed network comes back for --export."""
    size = ExpertSize.of(run.name, run.df, run.costs(), run.method)
    started = time.perf_counter()
    original = segmenter.segment(run.expert, options=options, progress=part(0.05, 0.5), cancel=cancel)
    original_seconds = time.perf_counter() - started
    network = run.build()
    if network is None:
        return ExpertResult(run, original, original, original_seconds, original_seconds, size), None
    started = time.perf_counter()
    compressed = segmenter.segment(run.expert, network, options=options, progress=part(0.5, 1.0), cancel=cancel)
    seconds = time.perf_counter() - started
    return ExpertResult(run, original, compressed, original_seconds, seconds, size), network


class ModelSweepBackend:
    """The real sweep backend: the TS pipeline for segmentation, an ExpertRun per (expert, DF) for compression.

    Originals come from the case (or the segmenter's cache), so a sweep never re-runs an original network.
    Each expert's classes are scored on its own output, in its own label values. Each compressed run says
    its method: 'tucker' or 'prune' (the paper's baseline at the same parameter budget).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        experts: Sequence[LoadedExpert],
        spacing: tuple[float, float, float],
        options: InferenceOptions | None = None,
        engines: Mapping[str, TuckerEngine] | None = None,
        originals: Mapping[str, tuple[np.ndarray, float]] | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.experts = {expert.name: expert for expert in experts}
        self._spacing = spacing
        self.options = options or InferenceOptions()
        self.engines: dict[str, TuckerEngine] = dict(engines or {})
        self.originals: dict[str, tuple[np.ndarray, float]] = dict(originals or {})

    @classmethod
    def from_case(cls, case: CaseResult) -> ModelSweepBackend:
        return cls(
            case.segmenter,
            [result.expert for result in case.experts],
            case.volume.spacing,
            case.options,
            engines={r.name: r.engine for r in case.experts if r.engine is not None},
            originals={r.name: (r.original, r.original_seconds) for r in case.experts},
        )

    def classes(self, expert: str) -> list[ClassRef]:
        return classes_from_names(self.experts[expert].class_names, expert)

    def spacing(self) -> tuple[float, float, float]:
        return self._spacing

    def engine(self, expert: str) -> TuckerEngine:
        if expert not in self.engines:
            self.engines[expert] = expert_engine(self.experts[expert])
        return self.engines[expert]

    def original(
        self, expert: str, progress: ProgressCallback, cancel: CancelSignal
    ) -> tuple[np.ndarray, RunCost]:
        if expert not in self.originals:
            started = time.perf_counter()
            labels = self.segmenter.segment(
                self.experts[expert], options=self.options, progress=progress, cancel=cancel
            )
            self.originals[expert] = (labels, time.perf_counter() - started)
        labels, seconds = self.originals[expert]
        cost = ExpertRun(self.experts[expert], self.engine(expert), None).costs()[0]
        return labels, RunCost(cost.params, cost.flops, seconds)

    def compressed(
        self, expert: str, df: float, progress: ProgressCallback, cancel: CancelSignal, method: str = "tucker"
    ) -> tuple[np.ndarray, RunCost]:
        run = ExpertRun.at_df(self.experts[expert], self.engine(expert), df, method)
        network = run.build()
        if network is None:  # DF 1.0: the compressed network is the original, as in run_case
            return self.original(expert, progress, cancel)
        started = time.perf_counter()
        labels = self.segmenter.segment(
            run.expert, network, options=self.options, progress=progress, cancel=cancel
        )
        seconds = time.perf_counter() - started
        cost = run.costs()[1]
        return labels, RunCost(cost.params, cost.flops, seconds)
