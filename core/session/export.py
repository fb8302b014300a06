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

from tuckerscope.core.compression.explained_variance import all_heatmaps
from tuckerscope.core.evaluation.case_run import ModelSweepBackend
from tuckerscope.core.evaluation.counts import ExpertSize, counts_table
from tuckerscope.core.evaluation.metrics import Evaluation
from tuckerscope.core.evaluation.sweep import SweepResult
from tuckerscope.core.models.compressed_model import save_compressed
from tuckerscope.core.outputs.deliverables import ExportBundle
from tuckerscope.core.outputs.exports import LabelStyle
from tuckerscope.core.outputs.report import LayerHeatmap
from tuckerscope.core.segmentation.segmenter import Segmenter
from tuckerscope.core.session.session import Session, SessionError


def session_bundle(
    session: Session,
    sweep: SweepResult | None = None,
    timings: Sequence[Mapping[str, object]] | None = None,
    include_heatmaps: bool = True,
) -> ExportBundle:
    """Everything the session shows, as an ExportBundle (merged TS label values, input grid)."""
    if session.volume is None or not session.experts:
        raise SessionError("nothing to export yet: open a CT and models first")
    originals = complete_originals(session)
    original = compressed = None
    if len(originals) == len(session.experts) and session.source is not None:
        original = session.source.merge([originals[name] for name in session.experts])
        maps = session.merged_maps()
        compressed = None if maps is None else maps[1]
    counts = counts_table(
        [ExpertSize.of(name, e.df, e.run().costs(), e.method) for name, e in session.experts.items()]
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
        timings=list(timing_rows(session) if timings is None else timings),
        heatmaps=heatmaps,
        sweep=sweep,
        save_models=models_saver(session),
    )


def timing_rows(session: Session) -> list[dict[str, object]]:
    """The forward times the timing panel shows (the session's last measurement), one row per expert."""
    result = session.timing
    if result is None:
        return []
    return [
        {
            "expert": row.expert,
            "DF": row.df,
            "original_ms": round(row.original_seconds * 1000, 1),
            "compressed_ms": None if row.compressed_seconds is None else round(row.compressed_seconds * 1000, 1),
            "speedup": None if row.speedup is None else round(row.speedup, 3),
            "setup": result.setup,
        }
        for row in result.rows
    ]


def models_saver(session: Session) -> Callable[[Path], list[Path]] | None:
    """Saves each compressed expert at the setting chosen now (captured now, built when the export runs)."""
    chosen = [e.run() for e in session.experts.values() if not e.is_full_rank()]
    if not chosen:
        return None

    def save(folder: Path) -> list[Path]:
        return [
            save_compressed(run.expert, run.build(), folder, {"df": run.df, "method": run.method})
            for run in chosen
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
    """The agreement the window shows: the same Comparison `eval` writes (merged label values)."""
    return None if session.agreement is None else Evaluation(session.agreement.comparison)


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
