"""Refresh the original and compressed segmentations of a session: visible slab first, then the whole volume.

A plan is captured on the UI thread (immutable inputs: the experts' runs, the labels on screen); the run
happens in one worker thread (the Segmenter is not thread-safe) and reports a partial update as soon as any
expert's labels change, each one ready to draw: per-expert labels on the input grid plus the merged RAS+
display maps (merged by TS's rule, model_sources.merge_labels, as the CLI merges). Originals are cached by the
Segmenter and are only stopped by the user's cancel; compressed runs also stop when a newer request
supersedes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from torch import nn

from tuckerscope.core.imaging.display_grid import DisplayGrid
from tuckerscope.core.models.model_sources import merge_labels
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.expert_run import ExpertRun, RankKey
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Roi, SegmentationResult, Segmenter


@dataclass(frozen=True)
class SegmentationPlan:
    volume_token: int
    segmenter: Segmenter
    grid: DisplayGrid
    runs: tuple[ExpertRun, ...]  # every expert, in merge order
    need_original: frozenset[str]
    need_compressed: frozenset[str]
    label_maps: Mapping[str, np.ndarray]  # expert -> lookup table expert label -> merged label
    originals: Mapping[str, np.ndarray]
    compressed: Mapping[str, np.ndarray]
    roi: Roi | None
    roi_description: str
    networks: Mapping[str, nn.Module] = field(default_factory=dict)  # compressed networks built already
    options: InferenceOptions = field(default_factory=InferenceOptions)

    @property
    def is_empty(self) -> bool:
        return not (self.need_original or self.work_compressed)

    @property
    def work_compressed(self) -> frozenset[str]:
        return frozenset(run.name for run in self.runs if run.name in self.need_compressed and run.ranks)


@dataclass(frozen=True)
class SegmentationUpdate:
    """One step of a refresh, ready to apply: labels per expert (input grid) and merged display maps."""

    volume_token: int
    originals: dict[str, np.ndarray]
    compressed: dict[str, np.ndarray]
    compressed_keys: dict[str, RankKey]
    complete_experts: frozenset[str]  # experts whose compressed labels cover the whole volume
    complete_originals: frozenset[str]  # experts whose original labels cover the whole volume
    display_original: np.ndarray | None
    display_compressed: np.ndarray | None
    stage: str  # 'slab' or 'volume'
    done: bool
    description: str
    positions: dict[int, tuple[int, int, int]] | None = None  # where each class is, once originals are whole


def merge_for_display(
    per_expert: Mapping[str, np.ndarray], label_maps: Mapping[str, np.ndarray], order: list[str]
) -> np.ndarray | None:
    """The experts that have labels so far, merged by TS's rule in expert order (None: none yet)."""
    return merge_labels([(per_expert[name], label_maps[name]) for name in order if name in per_expert])


def class_positions(display_labels: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """A voxel to jump to for each label: inside the structure, on its fullest axial slice."""
    positions: dict[int, tuple[int, int, int]] = {}
    for index, box in enumerate(ndimage.find_objects(display_labels)):
        if box is None:
            continue
        label = index + 1
        mask = display_labels[box] == label
        k = int(np.argmax(mask.sum(axis=(0, 1))))
        plane = mask[:, :, k]
        i_idx, j_idx = np.nonzero(plane)
        centre = np.array([i_idx.mean(), j_idx.mean()])
        nearest = int(np.argmin((i_idx - centre[0]) ** 2 + (j_idx - centre[1]) ** 2))
        positions[label] = (
            box[0].start + int(i_idx[nearest]),
            box[1].start + int(j_idx[nearest]),
            box[2].start + k,
        )
    return positions


def run_segmentation(
    plan: SegmentationPlan,
    progress: ProgressCallback,
    superseded: threading.Event,
    user_cancel: threading.Event,
    partial: Callable[[SegmentationUpdate], None],
) -> SegmentationUpdate:
    """Run a plan: the slab (if any) for every expert, then the whole volume; originals before compressed.

    Each expert's labels are reported (``partial``) as soon as they exist, so a view shows the first expert
    while the others still run. When superseded, the compressed work is dropped but the originals still
    finish (and are reported): they are cached, and the request that superseded this one needs them too.
    Raises Cancelled at the end.
    """
    order = [run.name for run in plan.runs]
    originals = dict(plan.originals)
    compressed = dict(plan.compressed)
    keys: dict[str, RankKey] = {}
    complete: set[str] = set()
    complete_originals = {
        run.name for run in plan.runs if run.name not in plan.need_original and run.name in originals
    }
    located = not plan.need_original  # class positions already known
    networks: dict[str, nn.Module] = dict(plan.networks)
    # Originals the Segmenter holds (in memory, or on disk from an earlier session) need no pass, not even
    # the slab's preprocessing: a reopened CT shows them at once.
    for run in plan.runs:
        if run.name in plan.need_original:
            cached = plan.segmenter.cached_original(run.expert, plan.options)
            if cached is not None:
                originals[run.name] = cached
                complete_originals.add(run.name)
    need_original = plan.need_original - complete_originals
    work = [
        (run, side)
        for side in ("original", "compressed")
        for run in plan.runs
        if run.name in (need_original if side == "original" else plan.work_compressed)
    ]
    stages = (["slab"] if plan.roi is not None else []) + ["volume"]
    steps = max(len(work) * len(stages), 1)
    done_steps = 0
    # A slab that needs every tile of an expert costs a whole pass; that expert goes straight to the volume.
    # Decided when the slab stage reaches the expert (it needs the preprocessed input, which a cancel interrupts).
    slab_is_whole: dict[str, bool] = {}
    # With one expert to refresh (a slider released), its slab and its whole volume come from one sliding
    # window: the volume reuses the slab's tile outputs instead of computing them again (12 tiles instead of
    # 18 for a 1.5 mm expert at 240x200x220 voxels). With several, each would hold its slab's tiles (up to
    # tile_cache_bytes each) until the volume stage reaches it, so they run apart.
    one_pass = len(work) == 1 and plan.roi is not None
    rest_of_pass: dict[tuple[str, str], Iterator[SegmentationResult]] = {}
    reporting: list[ProgressCallback] = []

    def original_cancel() -> bool:
        return user_cancel.is_set()

    def compressed_cancel() -> bool:
        return user_cancel.is_set() or superseded.is_set()

    def report_for(label: str) -> ProgressCallback:
        start = done_steps

        def forward(fraction: float, message: str) -> None:
            progress(
                (start + min(max(fraction, 0.0), 1.0)) / steps, f"{label}: {message}" if message else label
            )

        return forward

    def update(stage: str, done: bool, description: str) -> SegmentationUpdate:
        nonlocal located
        shown_compressed = {**originals, **compressed}
        for run in plan.runs:  # full-rank experts show their original on the compressed side
            if run.ranks is None and run.name in originals:
                shown_compressed[run.name] = originals[run.name]
        display_original = _display(originals, plan, order)
        positions = None
        if not located and len(complete_originals) == len(plan.runs) and display_original is not None:
            positions, located = class_positions(display_original), True
        return SegmentationUpdate(
            volume_token=plan.volume_token,
            originals=dict(originals),
            compressed=dict(compressed),
            compressed_keys=dict(keys),
            complete_experts=frozenset(complete),
            complete_originals=frozenset(complete_originals),
            display_original=display_original,
            display_compressed=_display(shown_compressed, plan, order),
            stage=stage,
            done=done,
            description=description,
            positions=positions,
        )

    def segment(
        run: ExpertRun, side: str, network: nn.Module | None, roi: Roi | None, cancel: Callable[[], bool]
    ) -> np.ndarray:
        if roi is None and (run.name, side) in rest_of_pass:
            return next(r for r in rest_of_pass.pop((run.name, side)) if r.complete).labels
        if roi is None or not one_pass:
            return _segment(plan, run, network, roi, reporting[0], cancel)
        results = plan.segmenter.segment_roi_first(
            run.expert, network, roi=roi, options=plan.options, cancel=cancel,
            progress=lambda fraction, message: reporting[0](fraction, message),
        )  # fmt: skip
        rest_of_pass[(run.name, side)] = results
        return next(results).labels

    last_step = (len(stages) - 1, len(work) - 1)
    if work and len(need_original) < len(plan.need_original):
        partial(update("volume", False, "originals from the cache, the rest filling in"))
    for stage_index, stage in enumerate(stages):
        if stage == "slab" and compressed_cancel():
            continue  # superseded: nobody will see this slab, go straight to the cached originals
        roi = plan.roi if stage == "slab" else None
        for step, (run, side) in enumerate(work):
            if side == "compressed" and compressed_cancel():
                continue  # dropped; the originals still finish, they are cached for the next request
            if roi is not None:
                cancel = original_cancel if side == "original" else compressed_cancel
                if run.name not in slab_is_whole:
                    slab_is_whole[run.name] = plan.segmenter.roi_needs_every_tile(
                        run.expert, roi, cancel=cancel
                    )
                if slab_is_whole[run.name]:
                    done_steps += 1
                    continue
            label = f"{run.name} {side}" + (f" ({plan.roi_description})" if roi is not None else "")
            reporting[:] = [report_for(label)]
            if side == "original":
                labels = segment(run, side, None, roi, original_cancel)
                originals[run.name] = _paste(originals.get(run.name), labels, roi)
                if roi is None:
                    complete_originals.add(run.name)
            else:
                network = networks.get(run.name) or run.build()
                networks[run.name] = network
                labels = segment(run, side, network, roi, compressed_cancel)
                base = compressed.get(run.name, originals.get(run.name))
                compressed[run.name] = _paste(base, labels, roi)
                keys[run.name] = run.rank_key
                if roi is None:
                    complete.add(run.name)
            done_steps += 1
            if (stage_index, step) != last_step and not (side == "compressed" and compressed_cancel()):
                where = plan.roi_description if roi is not None else "whole volume"
                partial(update(stage, False, f"{run.name} {side} ({where}) updated, the rest filling in"))
    if compressed_cancel():
        raise Cancelled("superseded by a newer request")
    return update("volume", True, "whole volume updated")


def _segment(
    plan: SegmentationPlan,
    run: ExpertRun,
    network: nn.Module | None,
    roi: Roi | None,
    progress: ProgressCallback,
    cancel: Callable[[], bool],
) -> np.ndarray:
    if roi is None:
        return plan.segmenter.segment(
            run.expert, network, options=plan.options, progress=progress, cancel=cancel
        )
    results = plan.segmenter.segment_roi_first(
        run.expert, network, roi=roi, roi_only=True, options=plan.options, progress=progress, cancel=cancel
    )
    return next(iter(results)).labels


def _paste(base: np.ndarray | None, labels: np.ndarray, roi: Roi | None) -> np.ndarray:
    """Whole-volume labels replace; slab labels are pasted over the previous labels (never in place)."""
    if roi is None or base is None:
        return labels
    pasted = base.copy()
    pasted[roi] = labels[roi]
    return pasted


def _display(
    per_expert: Mapping[str, np.ndarray], plan: SegmentationPlan, order: list[str]
) -> np.ndarray | None:
    merged = merge_for_display(per_expert, plan.label_maps, order)
    return None if merged is None else plan.grid.to_display(merged)
