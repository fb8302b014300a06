"""The cohort's analysis written beside its results: Figure 2 (PNG), the curve, per-class and test tables
(CSV), and one self-contained HTML report (figures inline, no network address, as outputs/report.py)."""

from __future__ import annotations

import datetime as dt
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tuckerscope.core.cohorts.analysis import class_tests, curves, metrics_of, per_class
from tuckerscope.core.cohorts.plan import ORIGINAL
from tuckerscope.core.cohorts.results import CohortResults
from tuckerscope.core.outputs.exports import atomic_outputs, write_text
from tuckerscope.core.outputs.report import STYLE, figure_png, new_figure, table_html

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRIC_TITLES = {
    "dice": "Dice vs original",
    "nsd": "NSD vs original",
    "dice_gt": "Dice vs ground truth",
    "nsd_gt": "NSD vs ground truth",
}
METHOD_COLOURS = {
    "tucker": "#1f77b4",
    "prune": "#d62728",
    "tucker-distilled": "#2ca02c",
    "prune-distilled": "#ff7f0e",
    ORIGINAL: "#444444",
}


def figure2(curve_table: pd.DataFrame, metrics: list[str]) -> Figure:
    """Mean metric vs compression ratio with 95% CIs: one row of panels per expert, one line per method."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    experts = list(dict.fromkeys(curve_table["expert"]))
    figure = new_figure(3.4 * len(metrics), 2.6 * len(experts) + 0.4)
    axes = figure.subplots(len(experts), len(metrics), squeeze=False)
    for row, expert in enumerate(experts):
        part = curve_table[curve_table["expert"] == expert]
        for column, metric in enumerate(metrics):
            ax = axes[row, column]
            for method, points in part.groupby("method", sort=False):
                if method == ORIGINAL and not metric.endswith("_gt"):
                    continue
                points = points.sort_values("params_ratio")
                mean = points[metric].to_numpy(dtype=float)
                errors = np.abs(np.vstack([mean - points[f"{metric}_low"], points[f"{metric}_high"] - mean]))
                ax.errorbar(
                    points["params_ratio"], mean, yerr=np.nan_to_num(errors), marker="o", markersize=4,
                    capsize=3, label=method, color=METHOD_COLOURS.get(method),
                )  # fmt: skip
            if not metric.endswith("_gt"):
                ax.plot([1.0], [1.0], marker="*", color="#444444", markersize=9, label="original")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(top=1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{expert}: {METRIC_TITLES[metric]}", fontsize=8.5)
            ax.tick_params(labelsize=7)
            if row == len(experts) - 1:
                ax.set_xlabel("compression ratio (parameters, original / compressed)", fontsize=7.5)
            if row == 0 and column == 0:
                ax.legend(fontsize=7)
    figure.suptitle("Mean over cases with 95% confidence intervals", fontsize=10)
    return figure


def write_analysis(results: CohortResults) -> dict[str, Path]:
    """Write figure2.png, curves.csv, per_class.csv, class_tests.csv and report.html into the results folder."""
    folder = results.folder
    curve_table = curves(results.scores)
    class_table = per_class(results.scores)
    tests = class_tests(results.scores)
    written = {}
    for name, table in (("curves", curve_table), ("per_class", class_table), ("class_tests", tests)):
        written[name] = write_text(folder / f"{name}.csv", table.to_csv(index=False))
    figure_uri = ""
    if not curve_table.empty:
        figure = figure2(curve_table, metrics_of(results.scores))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        with atomic_outputs() as out:
            out.file_for(folder / "figure2.png").write_bytes(buffer.getvalue())
        written["figure2"] = folder / "figure2.png"
        figure_uri = figure_png(figure)
    written["report"] = write_text(folder / "report.html", render(results, curve_table, class_table, tests, figure_uri))
    return written


def render(
    results: CohortResults,
    curve_table: pd.DataFrame,
    class_table: pd.DataFrame,
    tests: pd.DataFrame,
    figure_uri: str,
) -> str:
    plan = results.plan
    scores = results.scores
    cases = sorted(set(scores["case"]) | set(results.failures["case"].dropna()))
    title = f"TuckerScope cohort: {len(cases)} cases, model {plan.get('model', '?')}"
    settings = {
        "model": plan.get("model", "?"),
        "experts": ", ".join(plan.get("experts", [])),
        "settings": ", ".join(plan.get("settings", [])) or "-",
        "device / precision": f"{plan.get('device', '?')} / {plan.get('precision', '?')}",
        "NSD tolerance": f"{plan.get('tolerance_mm', '?')} mm",
        "cases scored": scores["case"].nunique() if len(scores) else 0,
        "tasks failed": len(results.failures),
        "ground truth": "yes" if results.has_ground_truth else "no",
    }
    tested = "NSD vs ground truth, compressed vs original expert" if results.has_ground_truth else (
        "NSD vs the original, against 1 (identical)"
    )
    differing = tests[tests["differs"]] if len(tests) else tests
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by TuckerScope.</p>",
        "<h2>Settings</h2>",
        table_html([{"setting": k, "value": v} for k, v in settings.items()]),
        "<h2 id='figure2'>Figure 2: quality vs compression ratio</h2>",
        f"<img alt='Figure 2: mean Dice and NSD vs compression ratio' src='{figure_uri}'>" if figure_uri else
        "<p class='muted'>no scores yet</p>",
        table_html(curve_table.to_dict("records")) if len(curve_table) else "",
        "<h2 id='tests'>Per-class test: no difference from the original</h2>",
        f"<p>Two-sided Wilcoxon signed-rank test paired by case on {html.escape(tested)}, Holm-corrected over the "
        f"classes of each setting; a class differs when p<sub>Holm</sub> &lt; 0.05. With n cases the smallest "
        f"possible p is 2/2<sup>n</sup>. {len(differing)} of {len(tests)} class-settings differ.</p>",
        table_html(tests.to_dict("records")) if len(tests) else "<p class='muted'>nothing to test</p>",
        "<h2 id='per-class'>Per-class means</h2>",
        table_html(class_table.to_dict("records")) if len(class_table) else "",
        "<h2 id='failures'>Failed tasks</h2>",
        table_html(results.failures.to_dict("records")),
        "</body></html>",
    ]
    return "\n".join(parts)

