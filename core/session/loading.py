"""Opening things for a session: a CT file or folder, the demo phantom, a model source and its experts.

Each loader is a plain function a worker thread runs (progress and cancel as everywhere in core); the UI
thread then hands the result to Session.set_volume / Session.set_experts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.imaging.phantom import make_phantom
from tuckerscope.core.imaging.volume import load_volume
from tuckerscope.core.models.model_folder import load_expert
from tuckerscope.core.models.model_sources import (
    TS_TASKS,
    ModelSource,
    resolve_source,
    ts_task_source,
    ts_tasks_in,
)
from tuckerscope.core.outputs.exports import label_styles
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.progress import ProgressCallback, no_progress
from tuckerscope.core.segmentation.expert_run import input_shape
from tuckerscope.core.segmentation.original_cache import OriginalCache
from tuckerscope.core.segmentation.segmenter import Segmenter
from tuckerscope.core.session.session import CaseVolume, ClassInfo, ExpertModel

__all__ = ["LoadedCase", "LoadedModels", "load_ct", "load_models", "make_phantom_case", "ts_tasks_in"]


@dataclass(frozen=True)
class LoadedCase:
    """A CT ready for Session.set_volume, with its Segmenter (a float64 copy, built off the UI thread)."""

    volume: CaseVolume
    segmenter: Segmenter
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedModels:
    """A model source and its experts (engines not factorised yet), ready for Session.set_experts."""

    name: str  # what the user named: 'demo', a task, 'TASK@HOME' or a folder
    source: ModelSource
    experts: list[ExpertModel]


def make_phantom_case(
    seed: int, progress: ProgressCallback = no_progress, original_cache: OriginalCache | None = None
) -> LoadedCase:
    """The demo's synthetic CT, with its ground truth (``original_cache``: originals kept on disk)."""
    progress(0.1, f"generating phantom (seed {seed})")
    phantom = make_phantom(seed)
    volume = CaseVolume.from_array(phantom.ct, phantom.affine, f"phantom (seed {seed})", phantom.labels)
    return LoadedCase(volume, Segmenter(volume.data, volume.affine, original_cache=original_cache))


def load_ct(
    path: Path,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    original_cache: OriginalCache | None = None,
) -> LoadedCase:
    """A NIfTI file or DICOM series folder, with the warnings loading it raised (e.g. an MR volume).

    With an ``original_cache`` the case's Segmenter finds originals segmented in an earlier session."""
    progress(0.1, f"reading {path.name}")
    loaded = load_volume(path)
    if cancel is not None and cancel.is_set():
        raise Cancelled("loading cancelled")
    progress(0.8, "preparing the display")
    volume = CaseVolume.from_array(loaded.data, loaded.affine, path.name)
    segmenter = Segmenter(volume.data, volume.affine, original_cache=original_cache)
    return LoadedCase(volume, segmenter, tuple(loaded.warnings))


def resolve_model_source(name: str) -> ModelSource:
    """'demo', a TS task ('total', 'total_fast'), 'TASK@TS_HOME', or a folder of nnU-Net results."""
    task, _, home = name.partition("@")
    if home and task in TS_TASKS:
        return ts_task_source(task, Path(home))
    if name == "demo" or name in TS_TASKS:
        return resolve_source(task=name)
    return resolve_source(model=Path(name))


def is_task_at_home(name: str) -> bool:
    """'TASK@HOME' names one TS task of a TS home."""
    task, _, home = name.partition("@")
    return bool(home) and task in TS_TASKS


def load_models(
    name: str, progress: ProgressCallback = no_progress, cancel: threading.Event | None = None
) -> LoadedModels:
    """Resolve ``name`` and load every expert of it."""
    source = resolve_model_source(name)
    return LoadedModels(name, source, load_expert_models(source, progress, cancel))


def load_expert_models(
    source: ModelSource, progress: ProgressCallback = no_progress, cancel: threading.Event | None = None
) -> list[ExpertModel]:
    """Load every expert of a source with its Tucker engine; classes get the source's merged labels and TS colours."""
    styles = {style.label: style for style in label_styles(source.class_names)}
    experts: list[ExpertModel] = []
    count = len(source.experts)
    for index, spec in enumerate(source.experts):
        if cancel is not None and cancel.is_set():
            raise Cancelled("loading cancelled")
        progress(index / count, f"loading {spec.name}")
        loaded = load_expert(spec)
        # Not factorised here (about 1.3 s of CPU per TS expert, 6 s for 'total'): a reopened CT's cached
        # originals show without waiting for it. jobs.heatmaps_job factorises next, off the UI thread.
        engine = TuckerEngine(loaded.network, input_shape(loaded))
        classes = [
            ClassInfo(merged, styles[merged].name, loaded.name, own, styles[merged].rgb)
            for own, merged in sorted(source.label_maps[index].items())
        ]
        experts.append(ExpertModel(loaded, engine, classes, lookup=source.lookup_table(index)))
    progress(1.0, "models loaded")
    return experts
