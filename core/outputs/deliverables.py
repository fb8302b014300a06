"""What a session hands over: the results gathered in one bundle, written to a folder or into a report.

The window and the CLI both fill an `ExportBundle` (plain arrays and rows, captured at one moment) and call
`write_bundle` or `report_content`, so a file exported from the GUI and one written by `tuckerscope eval
--export` are the same files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from tuckerscope.core.evaluation.metrics import Evaluation
from tuckerscope.core.evaluation.sweep import SweepResult
from tuckerscope.core.outputs.exports import (
    ExportError,
    LabelStyle,
    atomic_outputs,
    csv_text,
    stage_segmentation,
    write_folder,
)
from tuckerscope.core.outputs.report import LayerHeatmap, ReportContent, pick_snapshots, render_html

PARTS = ("segmentation", "tables", "models", "report")


@dataclass
class ExportBundle:
    """Results of one CT and one set of ranks, on the CT's input grid; labels use the merged label values."""

    case_name: str
    settings: Mapping[str, object]
    affine: np.ndarray
    styles: Sequence[LabelStyle]
    original: np.ndarray | None = None
    compressed: np.ndarray | None = None
    ct: np.ndarray | None = None
    reference_header: nib.Nifti1Header | None = None
    evaluation: Evaluation | None = None
    counts: Sequence[Mapping[str, object]] = ()
    timings: Sequence[Mapping[str, object]] = ()
    heatmaps: Mapping[str, Sequence[LayerHeatmap]] = field(default_factory=dict)
    sweep: SweepResult | None = None
    save_models: Callable[[Path], object] | None = None
    notes: Sequence[str] = ()


def safe_stem(name: str) -> str:
    """'example_ct_sm.nii.gz' -> 'example_ct_sm'; anything odd in a file name becomes '_'."""
    stem = re.sub(r"(\.nii(\.gz)?|\.dcm)$", "", Path(name).name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "case"


def metrics_rows(evaluation: Evaluation) -> list[dict[str, object]]:
    """One row per (comparison, class), excluded classes included with their reason."""
    rows: list[dict[str, object]] = []
    for comparison in evaluation.comparisons():
        base = {
            "comparison": f"{comparison.prediction} vs {comparison.reference}",
            "tolerance_mm": comparison.tolerance_mm,
        }
        for s in comparison.scores:
            rows.append(
                base
                | {
                    "expert": s.expert,
                    "label": s.label,
                    "class": s.name,
                    "dice": s.dice,
                    "nsd": s.nsd,
                    "voxels_reference": s.reference_voxels,
                    "voxels_prediction": s.prediction_voxels,
                    "status": s.status,
                }
            )
        for c in comparison.excluded:
            rows.append(
                base
                | {
                    "expert": c.expert,
                    "label": c.label,
                    "class": c.name,
                    "status": "excluded (empty on both)",
                }
            )
    return rows


def report_content(bundle: ExportBundle, snapshot_count: int = 3) -> ReportContent:
    """The report of a bundle: settings, counts, timings, agreement, sweep, snapshots, heatmaps."""
    snapshots = []
    if bundle.ct is not None and bundle.original is not None and bundle.compressed is not None:
        snapshots = pick_snapshots(
            bundle.ct, bundle.original, bundle.compressed, bundle.affine, snapshot_count
        )
    return ReportContent(
        title=f"TuckerScope report: {bundle.case_name}",
        settings=bundle.settings,
        counts=bundle.counts,
        timings=bundle.timings,
        evaluation=bundle.evaluation,
        heatmaps=bundle.heatmaps,
        sweep=bundle.sweep,
        snapshots=snapshots,
        colours={s.label: s.rgb for s in bundle.styles},
        notes=bundle.notes,
    )


def write_bundle(bundle: ExportBundle, folder: Path, parts: Sequence[str] = PARTS) -> list[Path]:
    """Write the chosen parts into `folder`; files appear together at the end, or none of them do.

    The model folder is swapped in on its own (it is a folder, written by the Tucker engine's saver).
    """
    folder = Path(folder)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ExportError(f"unknown export part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if not folder.is_dir():
        raise ExportError(f"export folder {folder} does not exist")
    stem = safe_stem(bundle.case_name)
    written: list[Path] = []
    with atomic_outputs() as out:
        if "segmentation" in parts:
            for side, labels in (("original", bundle.original), ("compressed", bundle.compressed)):
                if labels is not None:
                    files = stage_segmentation(
                        out,
                        folder / f"{stem}_{side}.nii.gz",
                        labels,
                        bundle.affine,
                        bundle.styles,
                        bundle.reference_header,
                    )
                    written += [files.nifti, files.itksnap_labels, files.slicer_colour_table]
        if "tables" in parts:
            tables = {
                "metrics": metrics_rows(bundle.evaluation) if bundle.evaluation else [],
                "counts": list(bundle.counts),
                "timings": list(bundle.timings),
                "sweep": bundle.sweep.rows() if bundle.sweep else [],
            }
            for name, rows in tables.items():
                if rows:
                    path = folder / f"{stem}_{name}.csv"
                    out.file_for(path).write_text(csv_text(rows), encoding="utf-8")
                    written.append(path)
        if "report" in parts:
            path = folder / f"{stem}_report.html"
            out.file_for(path).write_text(render_html(report_content(bundle)), encoding="utf-8")
            written.append(path)
    if "models" in parts and bundle.save_models is not None:
        written.append(write_folder(folder / f"{stem}_compressed_models", bundle.save_models))
    return written
