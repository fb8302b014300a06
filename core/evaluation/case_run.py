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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.ranks import df_ranks, ranks_of
from tuckerscope.core.compression.tucker import TuckerEngine
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
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter

ProgressCallback = Callable[[float, str], None]
CancelSignal = Callable[[], bool] | threading.Event | None


def ranks_for_df(engine: TuckerEngine, df: float) -> dict[str, tuple[int, int]]:
    """Every layer's ranks under the paper's DF rule (ceil(C x DF), at least 8, at most C)."""
    return ranks_of(df_ranks(engine.layers, df))


def engine_for(expert: LoadedExpert, factorise: bool = True) -> TuckerEngine:
    """An engine for the network as nnU-Net runs it (one patch of the plans' size); factorised unless told."""
    channels = len(expert.dataset_json.get("channel_names", {"0": "CT"}))
    engine = TuckerEngine(expert.network, (1, channels, *expert.patch_size))
    if factorise:
        engine.factorise()
    return engine


@dataclass
class ExpertRun:
    """One expert's original and compressed outputs on the input grid (its own label values) and costs."""

    expert: LoadedExpert
    df: float
    original: np.ndarray
    compressed: np.ndarray
    original_seconds: float
    compressed_seconds: float
    params_original: int
    params_compressed: int
    flops_original: int
    flops_compressed: int
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)
    engine: TuckerEngine | None = None
    network: nn.Module | None = None

    @property
    def name(self) -> str:
        return self.expert.name

    @property
    def compressed_is_original(self) -> bool:
        return self.network is None


@dataclass
class CaseResult:
    """The experts' runs, the merged maps and their evaluation."""

    volume: Volume
    source: ModelSource
    options: InferenceOptions
    experts: list[ExpertRun]
    original: np.ndarray
    compressed: np.ndarray
    classes: list[ClassRef]
    evaluation: Evaluation
    segmenter: Segmenter

    def save_models(self, folder: Path) -> list[Path]:
        """Every compressed expert as an nnU-Net-style results folder under `folder` (see compressed_model)."""
        return [
            save_compressed(run.expert, run.network, folder, {"df": run.df})
            for run in self.experts
            if run.network is not None
        ]

    def counts_rows(self) -> list[dict[str, object]]:
        rows = [
            {
                "expert": e.name,
                "df": e.df,
                "params_original": e.params_original,
                "params_compressed": e.params_compressed,
                "params_ratio": e.params_original / max(e.params_compressed, 1),
                "flops_original": e.flops_original,
                "flops_compressed": e.flops_compressed,
                "flops_ratio": e.flops_original / max(e.flops_compressed, 1),
            }
            for e in self.experts
        ]
        if len(rows) > 1:
            original = sum(e.params_original for e in self.experts)
            compressed = sum(e.params_compressed for e in self.experts)
            flops_original = sum(e.flops_original for e in self.experts)
            flops_compressed = sum(e.flops_compressed for e in self.experts)
            rows.append(
                {
                    "expert": "total",
                    "df": "",
                    "params_original": original,
                    "params_compressed": compressed,
                    "params_ratio": original / max(compressed, 1),
                    "flops_original": flops_original,
                    "flops_compressed": flops_compressed,
                    "flops_ratio": flops_original / max(flops_compressed, 1),
                }
            )
        return rows

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
                    "params_original": e.params_original,
                    "params_compressed": e.params_compressed,
                    "flops_original": e.flops_original,
                    "flops_compressed": e.flops_compressed,
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
) -> CaseResult:
    """Segment with every expert, original and at its DF (experts absent from `dfs` stay uncompressed)."""
    options = options or InferenceOptions()
    report = progress or (lambda _fraction, _message: None)
    segmenter = segmenter or Segmenter(volume.data, volume.affine)
    runs: list[ExpertRun] = []
    for index, expert in enumerate(experts):
        if cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel()):
            raise Cancelled("evaluation cancelled")
        start, stop = index / len(experts), (index + 1) / len(experts)

        def part(lo: float, hi: float, start: float = start, stop: float = stop) -> ProgressCallback:
            return lambda f, m: report(start + (stop - start) * (lo + (hi - lo) * f), m)

        runs.append(run_expert(expert, dfs.get(expert.name), segmenter, options, part, cancel))
    report(1.0, "scoring")
    original = source.merge([r.original for r in runs])
    compressed = source.merge([r.compressed for r in runs])
    classes = class_refs(source, [e.name for e in experts])
    evaluation = evaluate(original, compressed, volume.spacing, classes, ground_truth, tolerance_mm)
    return CaseResult(volume, source, options, runs, original, compressed, classes, evaluation, segmenter)


def run_expert(
    expert: LoadedExpert,
    df: float | None,
    segmenter: Segmenter,
    options: InferenceOptions,
    part: Callable[[float, float], ProgressCallback],
    cancel: CancelSignal,
) -> ExpertRun:
    started = time.perf_counter()
    original = segmenter.segment(expert, options=options, progress=part(0.0, 0.45), cancel=cancel)
    original_seconds = time.perf_counter() - started
    if df is None or df >= 1.0:
        cost = count_network(engine_for(expert, factorise=False))
        return ExpertRun(
            expert, 1.0, original, original, original_seconds, original_seconds,
            cost.params, cost.params, cost.flops, cost.flops,
        )  # fmt: skip
    part(0.45, 0.55)(0.0, f"{expert.name}: factorising")
    engine = engine_for(expert)
    ranks = ranks_for_df(engine, df)
    network = engine.compress(ranks).eval()
    started = time.perf_counter()
    compressed = segmenter.segment(expert, network, options=options, progress=part(0.55, 1.0), cancel=cancel)
    seconds = time.perf_counter() - started
    original_cost, compressed_cost = count_network(engine), count_network(engine, ranks)
    return ExpertRun(
        expert=expert,
        df=df,
        original=original,
        compressed=compressed,
        original_seconds=original_seconds,
        compressed_seconds=seconds,
        params_original=original_cost.params,
        params_compressed=compressed_cost.params,
        flops_original=original_cost.flops,
        flops_compressed=compressed_cost.flops,
        ranks=ranks,
        engine=engine,
        network=network,
    )


class ModelSweepBackend:
    """The real sweep backend: the TS pipeline for segmentation, the Tucker engine for compression.

    Originals come from the case (or the segmenter's cache), so a sweep never re-runs an original network.
    Each expert's classes are scored on its own output, in its own label values.
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
            [run.expert for run in case.experts],
            case.volume.spacing,
            case.options,
            engines={run.name: run.engine for run in case.experts if run.engine is not None},
            originals={run.name: (run.original, run.original_seconds) for run in case.experts},
        )

    def classes(self, expert: str) -> list[ClassRef]:
        return classes_from_names(self.experts[expert].class_names, expert)

    def spacing(self) -> tuple[float, float, float]:
        return self._spacing

    def engine(self, expert: str) -> TuckerEngine:
        if expert not in self.engines:
            self.engines[expert] = engine_for(self.experts[expert])
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
        cost = count_network(self.engine(expert))
        return labels, RunCost(cost.params, cost.flops, seconds)

    def compressed(
        self, expert: str, df: float, progress: ProgressCallback, cancel: CancelSignal
    ) -> tuple[np.ndarray, RunCost]:
        engine = self.engine(expert)
        ranks = ranks_for_df(engine, df)
        network = engine.compress(ranks).eval()
        started = time.perf_counter()
        labels = self.segmenter.segment(
            self.experts[expert], network, options=self.options, progress=progress, cancel=cancel
        )
        seconds = time.perf_counter() - started
        cost = count_network(engine, ranks)
        return labels, RunCost(cost.params, cost.flops, seconds)
