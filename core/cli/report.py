"""`tuckerscope report`: one self-contained HTML file to show a colleague what compression did to this CT.

Runs the same case as `eval`, optionally a DF sweep (--sweep; Tucker and the pruning baseline), and writes the report: settings, parameter
counts, measured times, per-class agreement, sweep curves, slice snapshots and per-layer heatmaps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tuckerscope.core.cli.eval import (
    EvalArgumentError,
    add_case_arguments,
    case_bundle,
    case_settings,
    run_case_from_args,
)
from tuckerscope.core.cli.segment import TerminalProgress
from tuckerscope.core.compression.explained_variance import all_heatmaps
from tuckerscope.core.evaluation.case_run import CaseResult, ModelSweepBackend
from tuckerscope.core.evaluation.sweep import DEFAULT_GRID, SweepResult, check_grid, check_methods, run_sweep
from tuckerscope.core.outputs.deliverables import report_content
from tuckerscope.core.outputs.report import LayerHeatmap, write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of compressed vs original experts on one CT",
        description="Segment a CT with the original and the Tucker-compressed experts and write one HTML file "
        "(figures embedded, no external assets) with settings, counts, times, per-class Dice/NSD, slice "
        "snapshots, per-layer heatmaps and, with --sweep, Dice/NSD against parameters and time.",
    )
    add_case_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, help="report file (.html)")
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="default",
        metavar="DFS",
        help="also run a DF sweep per expert: comma-separated DFs, or no value for "
        + ", ".join(f"{df:g}" for df in DEFAULT_GRID),
    )
    parser.add_argument(
        "--sweep-methods",
        default="tucker,prune",
        metavar="METHODS",
        help="methods the sweep runs at each DF: tucker, prune or both (default tucker,prune: the paper's "
        "comparison, pruning at the Tucker parameter count)",
    )
    parser.add_argument("--snapshots", type=int, default=3, help="slice snapshots to include (default 3)")
    parser.set_defaults(func=run)


def parse_sweep(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    if text == "default":
        return DEFAULT_GRID
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise EvalArgumentError(f"--sweep {text!r}: give comma-separated DFs such as 0.9,0.5,0.1") from None
    return check_grid(values)


def heatmaps_of(case: CaseResult) -> dict[str, list[LayerHeatmap]]:
    """Explained variance over every (r_out, r_in) of every layer, from the cached factors (no new solve)."""
    heatmaps: dict[str, list[LayerHeatmap]] = {}
    for run in case.experts:
        if run.engine is None:
            continue
        heatmaps[run.name] = [
            LayerHeatmap(name, grid, run.ranks.get(name, grid.shape))
            for name, grid in all_heatmaps(run.engine).items()
        ]
    return heatmaps


def run(args: argparse.Namespace) -> int:
    if not args.output.name.lower().endswith((".html", ".htm")):
        raise EvalArgumentError(f"report file {args.output} must end in .html")
    if not args.output.parent.is_dir():
        raise EvalArgumentError(f"folder {args.output.parent} for the report does not exist")
    if args.snapshots < 0:
        raise EvalArgumentError(f"--snapshots must be 0 or more, got {args.snapshots}")
    grid = parse_sweep(args.sweep)
    methods = check_methods([m.strip() for m in args.sweep_methods.split(",") if m.strip()])
    progress = TerminalProgress(enabled=not args.quiet)
    case = run_case_from_args(args, progress)
    sweep: SweepResult | None = None
    if grid is not None:
        backend = ModelSweepBackend.from_case(case)
        sweep = run_sweep(
            backend,
            [e.name for e in case.experts],
            grid,
            args.tolerance,
            progress=progress.update,
            methods=methods,
        )
    progress.update(1.0, "writing the report")
    settings = case_settings(case, args)
    if grid is not None:
        settings["DF sweep"] = ", ".join(f"{df:g}" for df in grid) + f" ({', '.join(methods)})"
    bundle = case_bundle(case, settings, heatmaps=heatmaps_of(case), sweep=sweep)
    write_report(args.output, report_content(bundle, snapshot_count=args.snapshots))
    progress.finish(f"report written to {args.output}")
    return 0
