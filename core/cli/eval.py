"""`tuckerscope eval`: how much do compressed experts change the segmentation of this CT?

Segments the CT with the original and the Tucker-compressed (or pruned) experts (TS pipeline for both), then
prints per-class Dice and NSD of compressed vs original, and of both vs a ground truth with --gt, grouped per
expert with mean and worst. The ground truth's classes are matched to the model's by name (its label table,
see imaging.label_maps); classes it does not name are not scored against it. --json prints one JSON object instead; --export DIR also writes the
segmentations (NIfTI + ITK-SNAP + Slicer tables), the CSV tables and the compressed models.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tuckerscope.core.cli.compress import (
    add_df_argument,
    add_method_argument,
    add_target_argument,
    budgeted_runs,
)
from tuckerscope.core.cli.segment import TerminalProgress, parse_dfs
from tuckerscope.core.evaluation.case_run import CaseResult, run_case
from tuckerscope.core.evaluation.metrics import DEFAULT_TOLERANCE_MM, Comparison, GroundTruth
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.imaging.label_maps import load_label_map, match_by_name
from tuckerscope.core.imaging.volume import Volume, load_volume
from tuckerscope.core.models.model_sources import TASK_NAMES, ModelSource, resolve_source
from tuckerscope.core.outputs.deliverables import ExportBundle, write_bundle
from tuckerscope.core.outputs.exports import label_styles
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation.segmenter import DEVICES, InferenceOptions


class EvalArgumentError(UserError):
    """An `eval` or `report` option has a value that cannot be used."""


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `eval` and `report`: the CT, the models, the DFs, the ground truth and the device."""
    parser.add_argument(
        "-i", "--input", required=True, type=Path, help="CT as .nii/.nii.gz or a DICOM folder"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--task", choices=TASK_NAMES, help="TotalSegmentator task or the demo (default: total)"
    )
    source.add_argument(
        "--model", help="nnU-Net v2 results folder (or a folder of them), or 'demo' for the demo models"
    )
    parser.add_argument("--ts-home", type=Path, help="TotalSegmentator home (default: TOTALSEG_HOME_DIR)")
    add_df_argument(parser)
    add_target_argument(parser)
    add_method_argument(parser)
    parser.add_argument(
        "--gt",
        type=Path,
        metavar="LABELS",
        help="ground-truth label map (any grid: reoriented or resampled onto the CT's); its classes are "
        "matched to the model's by name, from its label table (NAME_itksnap_labels.txt or NAME.ctbl beside "
        "it, TotalSegmentator's header table, or dataset.json)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_MM,
        metavar="MM",
        help=f"NSD tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 is the reference")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Dice and NSD of compressed vs original experts (and vs ground truth) on one CT",
        description="Segment a CT with the original and the Tucker-compressed experts and score every class: "
        "compressed vs original, and both vs --gt. Empty on both sides: excluded; missing on one side: 0.",
    )
    add_case_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="also write segmentations, label tables, CSVs and the compressed model folders into DIR",
    )
    parser.set_defaults(func=run)


def resolve_models(args: argparse.Namespace) -> ModelSource:
    if args.model == "demo":
        return resolve_source(task="demo")
    if args.model is not None:
        return resolve_source(model=Path(args.model))
    return resolve_source(task=args.task or "total", ts_home=args.ts_home)


def run_case_from_args(args: argparse.Namespace, progress: TerminalProgress) -> CaseResult:
    """Load the CT, models and ground truth named on the command line and run the case."""
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise EvalArgumentError(f"--tolerance must be a non-negative number of mm, got {args.tolerance}")
    if not args.df and not args.target:
        raise EvalArgumentError("give at least one --df (e.g. --df 0.3 or --df organs=0.3) or a --target")
    if args.df and args.target:
        raise EvalArgumentError("use either --target or --df, not both")
    options = InferenceOptions(device=args.device, precision=args.precision, threads=args.threads)
    options.torch_device()
    volume = load_volume(args.input)
    for warning in volume.warnings:
        progress.note(f"warning: {warning}")
    source = resolve_models(args)
    ground_truth = ground_truth_for(args.gt, volume, source, progress) if args.gt is not None else None
    experts = source.load()
    dfs = parse_dfs(args.df, [e.name for e in experts])
    runs = {}
    if args.target:
        setup = ForwardSetup(device=args.device, precision=args.precision, threads=args.threads)
        runs, results = budgeted_runs(experts, args.target, args.expert, setup, args.method)
        for result in results:
            progress.note(f"target: {result.message}")
    elif not dfs:
        raise EvalArgumentError("every --df is 1.0: nothing is compressed, so there is nothing to compare")
    return run_case(
        volume,
        source,
        experts,
        dfs,
        options,
        ground_truth=ground_truth,
        tolerance_mm=args.tolerance,
        progress=progress.update,
        method=args.method,
        runs=runs,
    )


def ground_truth_for(path: Path, volume: Volume, source: ModelSource, progress: TerminalProgress) -> GroundTruth:
    """The --gt label map on the CT's grid, renumbered into the model's classes by name."""
    truth = load_label_map(path, volume.shape, volume.affine)
    for warning in truth.warnings:
        progress.note(f"warning: {warning}")
    match = match_by_name(truth.names, source.class_names, what=f"ground truth {path.name}")
    progress.note(f"ground truth {path.name}: classes named by its {truth.names_from}")
    for note in match.notes(source.class_names):
        progress.note(note)
    return GroundTruth(match.renumber(truth.data), frozenset(match.members))


def case_bundle(case: CaseResult, settings: dict[str, object], **extra: object) -> ExportBundle:
    """The export bundle of a case (the report adds heatmaps and the sweep)."""
    return ExportBundle(
        case_name=case.volume.path.name,
        settings=settings,
        affine=case.volume.affine,
        styles=label_styles(case.source.class_names),
        original=case.original,
        compressed=case.compressed,
        ct=case.volume.data,
        reference_header=case.volume.header,
        evaluation=case.evaluation,
        counts=case.counts_rows(),
        timings=case.timings_rows(),
        **extra,  # type: ignore[arg-type]
    )


def case_settings(case: CaseResult, args: argparse.Namespace) -> dict[str, object]:
    return {
        "CT": str(case.volume.path),
        "CT grid": f"{' x '.join(map(str, case.volume.shape))} voxels of "
        f"{' x '.join(f'{s:g}' for s in case.volume.spacing)} mm ({''.join(case.volume.axis_codes)})",
        "models": case.source.name,
        "setting per expert": ", ".join(f"{e.name}: {e.run.setting}" for e in case.experts),
        "method": "Tucker" if args.method == "tucker" else "channel pruning at the Tucker parameter count",
        "device / precision": f"{case.options.device} / {case.options.precision}",
        "NSD tolerance": f"{args.tolerance:g} mm",
        "ground truth": str(args.gt) if args.gt else "none",
    }


def run(args: argparse.Namespace) -> int:
    progress = TerminalProgress(enabled=not args.quiet)
    if args.export is not None and not args.export.is_dir():
        raise EvalArgumentError(f"--export folder {args.export} does not exist")
    case = run_case_from_args(args, progress)
    progress.finish("evaluation done")
    if args.export is not None:
        bundle = case_bundle(case, case_settings(case, args), save_models=case.save_models)
        written = write_bundle(bundle, args.export, ("segmentation", "tables", "models"))
        progress.note(f"wrote {len(written)} files to {args.export}")
    if args.json:
        print(json.dumps(case.to_dict(), indent=2, allow_nan=False, default=json_default))
    else:
        print(text_summary(case))
    return 0


def json_default(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def text_summary(case: CaseResult) -> str:
    lines = []
    for e in case.experts:
        speedup = e.original_seconds / e.compressed_seconds if e.compressed_seconds > 0 else math.nan
        size = e.size
        lines.append(
            f"{e.name}: {e.run.setting}{' pruned' if size.method == 'prune' else ''}, params {e.params_original:,} -> "
            f"{e.params_compressed:,} ({size.params_ratio:.2f}x), GFLOPs {e.flops_original / 1e9:.2f} -> "
            f"{e.flops_compressed / 1e9:.2f} (conv only {size.conv_flops_original / 1e9:.2f} -> "
            f"{size.conv_flops_compressed / 1e9:.2f}), segmentation {e.original_seconds:.1f} s -> "
            f"{e.compressed_seconds:.1f} s ({speedup:.2f}x, {case.options.device} {case.options.precision})"
        )
    for comparison in case.evaluation.comparisons():
        lines += ["", *comparison_lines(comparison)]
    return "\n".join(lines)


def comparison_lines(comparison: Comparison, worst: int = 5) -> list[str]:
    lines = [
        f"{comparison.prediction} vs {comparison.reference} (NSD tolerance {comparison.tolerance_mm:g} mm; "
        f"{len(comparison.scores)} classes scored, {len(comparison.excluded)} empty on both sides excluded"
        + (
            f", {len(comparison.not_in_reference)} not named by the {comparison.reference} not scored)"
            if comparison.not_in_reference
            else ")"
        ),
        f"  {'expert':<16}{'classes':>8}{'mean Dice':>11}{'mean NSD':>10}  worst Dice / worst NSD",
    ]
    for s in comparison.by_expert().values():
        lines.append(
            f"  {s.expert:<16}{s.classes:>8}{s.mean_dice:>11.3f}{s.mean_nsd:>10.3f}  "
            f"{s.worst_dice:.3f} ({s.worst_dice_class}) / {s.worst_nsd:.3f} ({s.worst_nsd_class})"
        )
    if comparison.scores:
        lines.append(f"  worst {min(worst, len(comparison.scores))} classes by NSD:")
        for s in comparison.worst_first()[:worst]:
            note = {"scored": "", "missed": "  (missed)", "invented": "  (not in reference)"}[s.status]
            lines.append(f"    {s.name:<32} Dice {s.dice:.3f}  NSD {s.nsd:.3f}{note}")
    return lines
