"""The window's session as an export bundle, and as a DF-sweep backend: the GUI's exports and sweeps.

Both are captured on the UI thread (the only thread that mutates the Session) and hold references to arrays
the session replaces rather than mutates, so the files and the sweep can then be produced in a worker.
The sweep gets its own Segmenter for the same CT: the session's segmenter belongs to the live-segmentation
worker and is not thread-safe. The session's complete originals are handed over, so no original re-runs;
their segmentation time was not measured, so the sweep's time axis has no original marker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.explained_variance import all_heatmaps
from tuckerscope.core.evaluation.case_run import ModelSweepBackend
from tuckerscope.core.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    ClassRef,
    ClassScore,
    Comparison,
    Evaluation,
)
from tuckerscope.core.evaluation.sweep import SweepResult
from tuckerscope.core.models.compressed_model import save_compressed
from tuckerscope.core.outputs.deliverables import ExportBundle
from tuckerscope.core.outputs.exports import LabelStyle
from tuckerscope.core.outputs.report import LayerHeatmap
from tuckerscope.core.segmentation.live_segmentation import merge_labels
from tuckerscope.core.segmentation.segmenter import Segmenter
from tuckerscope.core.session.session import Session, SessionError


def session_bundle(
    session: Session,
    sweep: SweepResult | None = None,
    timings: Sequence[Mapping[str, object]] = (),
    include_heatmaps: bool = True,
) -> ExportBundle:
    """Everything the session shows, as an ExportBundle (merged TS label values, input grid)."""
    if session.volume is None or not session.experts:
        raise SessionError("nothing to export yet: open a CT and models first")
    order = list(session.experts)
    label_maps = {name: expert.lookup for name, expert in session.experts.items()}
    originals = complete_originals(session)
    original = merge_labels(originals, label_maps, order) if len(originals) == len(order) else None
    compressed = None
    if original is not None and session.compressed_is_current():
        per_expert = {
            name: originals[name] if expert.is_full_rank() else session.compressed[name]
            for name, expert in session.experts.items()
        }
        compressed = merge_labels(per_expert, label_maps, order)
    counts = []
    for name, expert in session.experts.items():
        before, after = count_network(expert.engine), count_network(expert.engine, expert.ranks())
        counts.append(
            {
                "expert": name,
                "df": expert.df,
                "layer_overrides": len(expert.overrides),
                "params_original": before.params,
                "params_compressed": after.params,
                "params_ratio": before.params / max(after.params, 1),
                "flops_original": before.flops,
                "flops_compressed": after.flops,
                "flops_ratio": before.flops / max(after.flops, 1),
            }
        )
    heatmaps: dict[str, list[LayerHeatmap]] = {}
    if include_heatmaps:
        for name, expert in session.experts.items():
            ranks = expert.ranks()
            heatmaps[name] = [
                LayerHeatmap(layer, grid, ranks[layer]) for layer, grid in all_heatmaps(expert.engine).items()
            ]
    classes = [info for expert in session.experts.values() for info in expert.classes]
    return ExportBundle(
        case_name=session.volume.name,
        settings={
            "CT": session.volume.name,
            "CT grid": " x ".join(str(n) for n in session.volume.data.shape),
            "models": session.model_source,
            "DF per expert": ", ".join(f"{name}={e.df:g}" for name, e in session.experts.items()),
            "per-layer overrides": ", ".join(
                f"{name}: {layer}={r[0]},{r[1]}"
                for name, e in session.experts.items()
                for layer, r in e.overrides.items()
            )
            or "none",
        },
        affine=session.volume.affine,
        styles=[
            LabelStyle(info.label, info.name, info.rgb) for info in sorted(classes, key=lambda c: c.label)
        ],
        original=original,
        compressed=compressed,
        ct=session.volume.data,
        evaluation=agreement_evaluation(session),
        counts=counts,
        timings=list(timings),
        heatmaps=heatmaps,
        sweep=sweep,
        save_models=models_saver(session),
    )


def models_saver(session: Session) -> Callable[[Path], list[Path]] | None:
    """Saves each compressed expert at the ranks chosen now (captured now, built when the export runs)."""
    chosen = [(e.loaded, e.engine, e.ranks(), e.df) for e in session.experts.values() if not e.is_full_rank()]
    if not chosen:
        return None

    def save(folder: Path) -> list[Path]:
        return [
            save_compressed(loaded, engine.compress(ranks).eval(), folder, {"df": df})
            for loaded, engine, ranks, df in chosen
        ]

    return save


def complete_originals(session: Session) -> dict[str, np.ndarray]:
    """Whole-volume original labels per expert: the segmenter's cache (the session may hold a slab only)."""
    if session.segmenter is None:
        return {}
    found = {
        name: session.segmenter.cached_original(expert.loaded) for name, expert in session.experts.items()
    }
    return {name: labels for name, labels in found.items() if labels is not None}


def agreement_evaluation(session: Session) -> Evaluation | None:
    """The agreement the window shows, restated in merged label values (classes empty on both: excluded)."""
    if session.agreement is None:
        return None
    scores = [
        ClassScore(
            info.label,
            info.name,
            info.expert,
            s.dice,
            s.nsd,
            s.reference_voxels,
            s.prediction_voxels,
            s.status,
        )
        for info, s in session.agreement.rows
    ]
    scored = {s.label for s in scores}
    excluded = [
        ClassRef(info.label, info.name, info.expert)
        for expert in session.experts.values()
        for info in expert.classes
        if info.label not in scored
    ]
    return Evaluation(Comparison("original", "compressed", DEFAULT_TOLERANCE_MM, scores, excluded))


def session_sweep_backend(session: Session) -> tuple[ModelSweepBackend, list[str]]:
    """A sweep backend over the session's CT and experts, seeded with its complete originals."""
    if session.volume is None or not session.experts:
        raise SessionError("open a CT and models before running a sweep")
    volume = session.volume
    experts = list(session.experts.values())
    backend = ModelSweepBackend(
        Segmenter(volume.data, volume.affine),
        [e.loaded for e in experts],
        volume.grid.input_spacing,
        engines={e.name: e.engine for e in experts},
        originals={name: (labels, math.nan) for name, labels in complete_originals(session).items()},
    )
    return backend, [e.name for e in experts]
