"""One self-contained HTML report of a compression session, to send to a colleague.

Everything is inline: the figures are PNGs drawn with matplotlib's Agg backend and embedded as base64 data
URIs, the style sheet is in the page, and nothing refers to a network address, so the file opens the same
anywhere, offline, and nothing leaks when it is opened.

Figures are drawn on matplotlib Figure objects directly, never through pyplot, so rendering is
thread-safe and never touches the host's GUI backend (the window renders reports in a worker thread).

The report takes plain data (`ReportContent`), so the CLI, the window and scripts fill it the same way.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuckerscope.core.evaluation.metrics import Comparison, Evaluation
from tuckerscope.core.evaluation.sweep import SweepResult
from tuckerscope.core.outputs.exports import RGB, fallback_colour, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class LayerHeatmap:
    """Explained variance of one layer over (r_out, r_in): grid[i, j] is the value at ranks (i + 1, j + 1).

    The one heatmap type of the project: the report draws it, the window's heatmap panel shows it.
    """

    layer: str
    grid: np.ndarray
    chosen: tuple[int, int] | None = None  # the ranks in use, when a report marks them

    @property
    def channels(self) -> tuple[int, int]:
        """(C_out, C_in)."""
        return int(self.grid.shape[0]), int(self.grid.shape[1])


@dataclass(frozen=True)
class Snapshot:
    """One slice of the CT with the original and compressed labels, already in display orientation."""

    title: str
    ct: np.ndarray
    original: np.ndarray
    compressed: np.ndarray
    aspect: float = 1.0


@dataclass
class ReportContent:
    """What the report shows; every part but the title and settings is optional."""

    title: str
    settings: Mapping[str, object]
    counts: Sequence[Mapping[str, object]] = ()
    timings: Sequence[Mapping[str, object]] = ()
    evaluation: Evaluation | None = None
    heatmaps: Mapping[str, Sequence[LayerHeatmap]] = field(default_factory=dict)
    sweep: SweepResult | None = None
    snapshots: Sequence[Snapshot] = ()
    colours: Mapping[int, RGB] = field(default_factory=dict)
    notes: Sequence[str] = ()


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot: no global state and no GUI backend, so a worker thread can draw safely."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def figure_png(figure: Figure) -> str:
    """A matplotlib figure as a base64 PNG data URI (rendered by Agg, matplotlib's PNG writer)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_figure(expert: str, layers: Sequence[LayerHeatmap]) -> str:
    """Small multiples of every layer's explained-variance map, chosen ranks marked with a cross."""
    columns = min(6, max(1, len(layers)))
    rows = math.ceil(len(layers) / columns)
    figure = new_figure(2.2 * columns + 1.0, 2.5 * rows + 0.6)
    axes = figure.subplots(rows, columns, squeeze=False)
    image = None
    for ax, layer in zip(axes.flat, layers, strict=False):
        grid = np.asarray(layer.grid, dtype=float)
        image = ax.imshow(
            grid,
            origin="lower",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            extent=(0.5, grid.shape[1] + 0.5, 0.5, grid.shape[0] + 0.5),
            aspect="auto",
        )
        r_out, r_in = layer.chosen or layer.channels
        ax.plot([r_in], [r_out], marker="x", color="red", markersize=8, markeredgewidth=2)
        ev = (
            float(grid[r_out - 1, r_in - 1])
            if 0 < r_out <= grid.shape[0] and 0 < r_in <= grid.shape[1]
            else 1.0
        )
        ax.set_title(f"{short_layer_name(layer.layer)}\n({r_out}, {r_in}) EV {ev:.3f}", fontsize=6.5)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    figure.supxlabel("r_in (input-channel rank)", fontsize=8)
    figure.supylabel("r_out (output-channel rank)", fontsize=8)
    figure.suptitle(f"{expert}: explained variance per layer (red x = chosen ranks)", fontsize=10)
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.6, label="explained variance")
    return figure_png(figure)


def short_layer_name(name: str) -> str:
    """'encoder.stages.3.0.convs.1.conv' -> 'enc 3.0 conv 1': readable under a thumbnail."""
    short = name.replace("encoder.stages.", "enc ").replace("decoder.stages.", "dec ")
    short = short.replace("decoder.transpconvs.", "dec up ").replace("decoder.seg_layers.", "dec seg ")
    return short.replace(".convs.", " conv ").replace(".conv", "").replace(".all_modules.0", "")


def sweep_figure(sweep: SweepResult, expert: str) -> str:
    """Dice and NSD (mean and worst class) against parameters and against measured time, for one expert;
    the pruning baseline's means beside them when the sweep ran it."""
    curve = sweep.curve(expert)
    original = sweep.originals.get(expert)
    figure = new_figure(11, 3.8)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, x_of, label in (
        (axes[0], lambda c: c.params / 1e6, "parameters (millions)"),
        (axes[1], lambda c: c.seconds, "measured segmentation time (s)"),
    ):
        xs = [x_of(p.cost) for p in curve]
        ax.plot(xs, [p.mean_dice for p in curve], "o-", color="tab:blue", label="Dice, mean")
        ax.plot(
            xs, [p.worst_dice for p in curve], "o--", color="tab:blue", alpha=0.6, label="Dice, worst class"
        )
        ax.plot(xs, [p.mean_nsd for p in curve], "s-", color="tab:orange", label="NSD, mean")
        ax.plot(
            xs, [p.worst_nsd for p in curve], "s--", color="tab:orange", alpha=0.6, label="NSD, worst class"
        )
        for point, x in zip(curve, xs, strict=True):
            ax.annotate(
                f"{point.df:g}", (x, point.mean_dice), textcoords="offset points", xytext=(0, 6), fontsize=7
            )
        pruned = sweep.curve(expert, "prune")  # the paper's baseline at the same parameter count
        if pruned:
            pruned_xs = [x_of(p.cost) for p in pruned]
            ax.plot(pruned_xs, [p.mean_dice for p in pruned], "^-", color="tab:green", label="Dice, mean (pruned)")
            ax.plot(pruned_xs, [p.mean_nsd for p in pruned], "v-", color="tab:red", label="NSD, mean (pruned)")
        if original is not None and math.isfinite(x_of(original)):
            ax.axvline(x_of(original), color="grey", linestyle=":", label="original")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("agreement with original")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7, loc="lower right")
    figure.suptitle(f"{expert}: quality vs compression (labels = DF, tolerance {sweep.tolerance_mm:g} mm)")
    return figure_png(figure)


def label_overlay(labels: np.ndarray, colours: Mapping[int, RGB], alpha: float = 0.55) -> np.ndarray:
    """RGBA image of a label slice in the classes' colours, background transparent."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    lut = np.zeros((top + 1, 4))
    for value in range(1, top + 1):
        lut[value, :3] = np.asarray(colours.get(value, fallback_colour(value))) / 255.0
        lut[value, 3] = alpha
    return lut[labels]


def snapshot_figure(snapshot: Snapshot, colours: Mapping[int, RGB]) -> str:
    """CT | original | compressed | disagreement, one slice."""
    rows, columns = snapshot.ct.shape
    panel_height = 3.1 * rows * snapshot.aspect / max(columns, 1)  # keeps thin coronal slabs thin
    figure = new_figure(13, min(max(panel_height, 1.0), 6.0) + 0.7)
    axes = figure.subplots(1, 4)
    ct = np.clip((snapshot.ct + 160.0) / 400.0, 0.0, 1.0)  # soft-tissue window (W 400, L 40)
    disagree = snapshot.original != snapshot.compressed
    panels = (
        ("CT", None),
        ("original", snapshot.original),
        ("compressed", snapshot.compressed),
        (f"disagreement ({int(disagree.sum())} voxels)", None),
    )
    for ax, (title, labels) in zip(axes, panels, strict=True):
        ax.imshow(ct, cmap="gray", vmin=0, vmax=1, aspect=snapshot.aspect, interpolation="nearest")
        if labels is not None:
            ax.imshow(label_overlay(labels, colours), aspect=snapshot.aspect, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    difference = np.zeros((*disagree.shape, 4))
    difference[disagree & (snapshot.original > 0)] = (1.0, 0.2, 0.2, 0.9)  # label lost by compression
    difference[disagree & (snapshot.original == 0)] = (0.2, 0.6, 1.0, 0.9)  # label invented by compression
    axes[3].imshow(difference, aspect=snapshot.aspect, interpolation="nearest")
    figure.suptitle(f"{snapshot.title}   (red: lost, blue: gained by the compressed experts)", fontsize=10)
    return figure_png(figure)


def table_html(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell_text(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def comparison_html(comparison: Comparison) -> str:
    """Per-expert summary then every class, worst NSD first."""
    summary = [
        {
            "expert": s.expert,
            "classes": s.classes,
            "mean Dice": s.mean_dice,
            "worst Dice": f"{s.worst_dice:.3f} ({s.worst_dice_class})",
            "mean NSD": s.mean_nsd,
            "worst NSD": f"{s.worst_nsd:.3f} ({s.worst_nsd_class})",
        }
        for s in comparison.by_expert().values()
    ]
    classes = [
        {
            "class": s.name,
            "expert": s.expert,
            "Dice": s.dice,
            "NSD": s.nsd,
            f"voxels ({comparison.reference})": s.reference_voxels,
            f"voxels ({comparison.prediction})": s.prediction_voxels,
            "note": {"scored": "", "missed": "missed entirely", "invented": "not in reference"}[s.status],
        }
        for s in comparison.worst_first()
    ]
    excluded = ", ".join(c.name for c in comparison.excluded) or "none"
    return (
        f"<h3>{html.escape(comparison.prediction)} vs {html.escape(comparison.reference)}</h3>"
        f"<p>NSD tolerance {comparison.tolerance_mm:g} mm. {len(comparison.scores)} classes scored; "
        f"{len(comparison.excluded)} empty on both sides and excluded.</p>"
        + table_html(summary)
        + "<details open><summary>per class, worst first</summary>"
        + table_html(classes)
        + f"</details><details><summary>excluded classes</summary><p>{html.escape(excluded)}</p></details>"
    )


STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1300px;
       color: #1d232a; padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #d7dde3; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d7dde3; padding: 3px 8px; text-align: right; }
th { background: #eef2f5; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 8px 0 18px; }
.muted { color: #6b7680; } details summary { cursor: pointer; margin: 6px 0; }
"""


def render_html(content: ReportContent) -> str:
    """The whole report as one HTML string."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(content.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(content.title)}</h1>",
        f"<p class='muted'>Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by TuckerScope.</p>",
        "<h2>Settings</h2>",
        table_html([{"setting": k, "value": v} for k, v in content.settings.items()]),
    ]
    parts += [f"<p>{html.escape(note)}</p>" for note in content.notes]
    parts += ["<h2>Parameters and FLOPs</h2>", table_html(content.counts)]
    parts += ["<h2>Measured times</h2>", table_html(content.timings)]
    if content.evaluation is not None:
        parts.append("<h2>Agreement per class</h2>")
        parts += [comparison_html(c) for c in content.evaluation.comparisons()]
    if content.sweep is not None and content.sweep.points:
        parts.append("<h2>DF sweep</h2>")
        if content.sweep.cancelled:
            parts.append("<p class='muted'>The sweep was cancelled; the curves show the points finished.</p>")
        for expert in content.sweep.experts:
            if content.sweep.curve(expert) or content.sweep.curve(expert, "prune"):
                parts.append(
                    f"<img alt='sweep curves of {html.escape(expert)}' src='{sweep_figure(content.sweep, expert)}'>"
                )
    if content.snapshots:
        parts.append("<h2>Slices: original vs compressed</h2>")
        parts += [
            f"<img alt='{html.escape(s.title)}' src='{snapshot_figure(s, content.colours)}'>"
            for s in content.snapshots
        ]
    if content.heatmaps:
        parts.append("<h2>Explained variance per layer</h2>")
        for expert, layers in content.heatmaps.items():
            if layers:
                parts.append(
                    f"<img alt='heatmaps of {html.escape(expert)}' src='{heatmap_figure(expert, layers)}'>"
                )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, content: ReportContent) -> Path:
    """Render and write the report atomically."""
    return write_text(Path(path), render_html(content))


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume with its axes reordered and flipped to R, A, S, and the voxel size along each (mm)."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(orientation, nib.orientations.axcodes2ornt("RAS"))
    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return nib.orientations.apply_orientation(volume, transform), zooms[np.argsort(orientation[:, 0])]


PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def display_slice(ras: np.ndarray, spacing: np.ndarray, plane: str, index: int) -> tuple[np.ndarray, float]:
    """Slice `index` of a RAS volume in radiological display orientation, and its imshow aspect ratio.

    Axial and coronal: patient right on screen left; coronal and sagittal: head up; axial: anterior up.
    """
    axis = PLANE_AXES[plane]
    image = np.take(ras, index, axis=axis).T  # rows: the later of the two remaining axes
    row_axis, col_axis = [a for a in range(3) if a != axis][::-1]
    return image[::-1, ::-1], float(spacing[row_axis] / spacing[col_axis])


def pick_snapshots(
    ct: np.ndarray, original: np.ndarray, compressed: np.ndarray, affine: np.ndarray, count: int = 3
) -> list[Snapshot]:
    """Slices worth looking at: where the experts disagree most (axial, coronal), then the busiest axial."""
    ct_ras, spacing = to_ras(ct, affine)
    original_ras, _ = to_ras(original, affine)
    compressed_ras, _ = to_ras(compressed, affine)
    disagree = original_ras != compressed_ras
    candidates: list[tuple[str, int, str]] = []
    for plane in ("axial", "coronal"):
        other = tuple(a for a in range(3) if a != PLANE_AXES[plane])
        per_slice = disagree.sum(axis=other)
        if per_slice.max() > 0:
            candidates.append((plane, int(per_slice.argmax()), "most disagreement"))
    candidates.append(("axial", int((original_ras > 0).sum(axis=(0, 1)).argmax()), "most labelled"))
    candidates.append(("coronal", ct_ras.shape[1] // 2, "middle"))
    chosen: dict[tuple[str, int], str] = {}
    for plane, index, why in candidates:
        chosen.setdefault((plane, index), why)
    snapshots = []
    for (plane, index), why in list(chosen.items())[:count]:
        ct_slice, aspect = display_slice(ct_ras, spacing, plane, index)
        snapshots.append(
            Snapshot(
                title=f"{plane} slice {index} ({why})",
                ct=ct_slice.astype(float),
                original=display_slice(original_ras, spacing, plane, index)[0],
                compressed=display_slice(compressed_ras, spacing, plane, index)[0],
                aspect=aspect,
            )
        )
    return snapshots
