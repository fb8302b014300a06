"""`tuckerscope segment`: segment a CT exactly as TotalSegmentator would, optionally with Tucker-compressed experts.

Writes a multilabel NIfTI on the input grid (with ITK-SNAP and 3D Slicer label tables in TS colours), or with
--split one mask per class in a folder, like TotalSegmentator without --ml.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from tuckerscope.core.cli.compress import (
    add_df_argument,
    add_method_argument,
    add_target_argument,
    budgeted_runs,
)
from tuckerscope.core.compression.ranks import parse_df_options
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.imaging.volume import Volume, load_volume
from tuckerscope.core.models.model_folder import LoadedExpert, load_expert
from tuckerscope.core.models.model_sources import TASK_NAMES, ModelSource, resolve_source
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.runtime.memory import retain_by_default
from tuckerscope.core.segmentation.profile import StageCallback, StageProfile, timed_stage
from tuckerscope.core.segmentation.runtimes import RUNTIMES
from tuckerscope.core.segmentation.segmenter import (
    DEVICES,
    InferenceOptions,
    Roi,
    Segmenter,
    check_roi,
)

ALL_EXPERTS = "*"


class SegmentArgumentError(UserError):
    """A `segment` option has a value that cannot be used."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a CT as TotalSegmentator does, optionally with compressed experts",
        description="Segment a CT (NIfTI file or DICOM folder) with a TotalSegmentator task, the demo models or "
        "any nnU-Net v2 model; --df compresses the experts with Tucker decomposition first.",
    )
    parser.add_argument(
        "-i", "--input", required=True, type=Path, help="CT as .nii/.nii.gz or a DICOM folder"
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="output .nii.gz (or a folder with --split)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--task", choices=TASK_NAMES, help="TotalSegmentator task or the demo (default: total)"
    )
    source.add_argument("--model", type=Path, help="nnU-Net v2 results folder (or a folder of them)")
    parser.add_argument(
        "--ts-home",
        type=Path,
        help="TotalSegmentator home folder (default: TOTALSEG_HOME_DIR or ~/.totalsegmentator)",
    )
    add_df_argument(parser)
    add_target_argument(parser)
    add_method_argument(parser)
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 is the reference")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last_3d layout (default: on for compressed experts on the CPU, off for the original)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="CPU runtime of the tiles: torch (the reference), openvino (Dice >= 0.999 vs torch, not "
        "voxel-identical) or auto (the faster of the two per network, measured once)",
    )
    parser.add_argument(
        "--roi", help="segment only this box of input voxels: x0:x1,y0:y1,z0:z1 (empty = all)"
    )
    parser.add_argument(
        "--split", action="store_true", help="write one mask per class into the output folder"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--timings", action="store_true", help="print the wall time of each stage")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print the time of each pipeline stage (read ... write) and user vs kernel CPU time",
    )
    parser.add_argument(
        "--release-memory",
        action="store_true",
        help="hand freed memory back to the OS at once (slower: fresh buffers page-fault); also "
        "TUCKERSCOPE_RELEASE_MEMORY=1",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        # nnU-Net warns on every load of TS's (old-format) plans; TotalSegmentator silences it the same way.
        warnings.filterwarnings("ignore", category=UserWarning, module="nnunetv2")
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    options = InferenceOptions(
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        threads=args.threads,
        runtime=args.runtime,
    )
    options.torch_device()
    _check_output(args.output, args.split)
    if not args.release_memory:
        retain_by_default()
    profile = StageProfile() if args.profile else None
    clock = StageClock()
    with timed_stage(profile, "read"):
        volume = load_volume(args.input)
    progress = TerminalProgress(enabled=not args.quiet)
    for warning in volume.warnings:
        progress.note(f"warning: {warning}")
    roi = check_roi(parse_roi(args.roi), volume.shape) if args.roi else None
    if args.model is not None:
        source = resolve_source(model=args.model)
    else:
        source = resolve_source(task=args.task or "total", ts_home=args.ts_home)
    clock.lap("read volume")
    if args.target and args.df:
        raise SegmentArgumentError("use either --target or --df, not both")
    dfs = parse_dfs(args.df, [spec.name for spec in source.experts])
    if args.target:  # the budget is shared out over all experts at once
        with timed_stage(profile, "load experts"):
            experts = source.load()
        clock.lap("load experts")
        with timed_stage(profile, "compress"):
            progress.update(0.0, f"choosing ranks for --target {args.target}")
            setup = ForwardSetup(device=args.device, precision=args.precision, threads=args.threads)
            runs, results = budgeted_runs(experts, args.target, args.expert, setup, args.method)
            for result in results:
                progress.note(f"target: {result.message}")
            networks = {name: run.build() for name, run in runs.items()}
        clock.lap("factorise and compress")
        labels = segment_source(
            volume, source, ((e, networks.get(e.name)) for e in experts), options, roi, progress, profile
        )
    else:
        runs_one_by_one = expert_by_expert(source, dfs, progress, args.method, profile)
        labels = segment_source(volume, source, runs_one_by_one, options, roi, progress, profile)
    clock.lap("segment")
    progress.finish(f"segmented in {clock.total():.1f} s")
    with timed_stage(profile, "write"):
        write_output(args.output, labels, volume, source, split=args.split)
    clock.lap("write output")
    if args.timings:
        print(clock.report(), file=sys.stderr)
    if profile is not None:
        print(profile.report(), file=sys.stderr)
    return 0


class StageClock:
    """Wall time per stage of one run, for --timings."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps.append((stage, now - self.last))
        self.last = now

    def total(self) -> float:
        return self.last - self.start

    def report(self) -> str:
        return "timings: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.laps)


def parse_roi(text: str) -> Roi:
    """'x0:x1,y0:y1,z0:z1' (any bound may be left out) -> three slices."""
    parts = text.split(",")
    if len(parts) != 3:
        raise SegmentArgumentError(f"--roi needs three ranges x0:x1,y0:y1,z0:z1, got {text!r}")
    slices = []
    for axis, part in zip("xyz", parts, strict=True):
        bounds = part.split(":")
        if len(bounds) != 2:
            raise SegmentArgumentError(f"--roi range for {axis} must look like start:stop, got {part!r}")
        try:
            start, stop = (int(b) if b.strip() else None for b in bounds)
        except ValueError:
            raise SegmentArgumentError(f"--roi range for {axis} must be integers, got {part!r}") from None
        slices.append(slice(start, stop))
    return (slices[0], slices[1], slices[2])


def parse_dfs(values: Sequence[str], expert_names: Sequence[str]) -> dict[str, float]:
    """Experts to compress: ``ranks.parse_df_options`` minus those a plain value left at DF 1.0 (named ones stay)."""
    dfs = parse_df_options(values, expert_names)
    named = {value.rpartition("=")[0] for value in values}
    return {name: df for name, df in dfs.items() if df < 1.0 or name in named}


def compress_experts(
    experts: Sequence[LoadedExpert], dfs: Mapping[str, float], progress: TerminalProgress, method: str = "tucker"
) -> dict[str, torch.nn.Module]:
    """Compressed networks for the experts named in ``dfs`` (DF rule: ceil(C x DF), >= 8, <= C), by
    ``method``: Tucker, or pruning to that Tucker network's parameter count (the same ExpertRun as eval)."""
    from tuckerscope.core.segmentation.expert_run import ExpertRun, expert_engine

    networks: dict[str, torch.nn.Module] = {}
    for expert in experts:
        if expert.name not in dfs:
            continue
        df = dfs[expert.name]
        engine = expert_engine(expert, factorise=False)
        progress.update(0.0, f"{expert.name}: factorising for DF {df:g}")
        engine.factorise(
            progress=lambda done, total, _name, e=expert: progress.update(
                done / total, f"{e.name}: factorising"
            )
        )
        network = ExpertRun.at_df(expert, engine, df, method).build()
        if network is not None:
            networks[expert.name] = network
    return networks


def expert_by_expert(
    source: ModelSource,
    dfs: Mapping[str, float],
    progress: TerminalProgress,
    method: str = "tucker",
    profile: StageCallback | None = None,
) -> Iterator[tuple[LoadedExpert, torch.nn.Module | None]]:
    """Each expert loaded, and compressed where ``dfs`` names it, only when its turn comes, and dropped before the
    next one loads: one expert's weights (and Tucker factors) in memory at a time, not five (0.6 GB for 'total')."""
    for spec in source.experts:
        with timed_stage(profile, "load experts"):
            expert = load_expert(spec)
        with timed_stage(profile, "compress"):
            network = compress_experts([expert], dfs, progress, method).get(expert.name)
        yield expert, network
        del expert, network


def segment_source(
    volume: Volume,
    source: ModelSource,
    runs: Iterable[tuple[LoadedExpert, torch.nn.Module | None]],
    options: InferenceOptions,
    roi: Roi | None,
    progress: TerminalProgress,
    profile: StageCallback | None = None,
) -> np.ndarray:
    """Every (expert, network) of ``source``, in its order, through the TS pipeline (network None: the expert's
    own), merged as TS merges. Nothing here keeps an expert once it is done: ``runs`` may load them lazily."""
    segmenter = Segmenter(volume.data, volume.affine, profile=profile)
    outputs = []
    count = len(source.experts)
    for expert, network in runs:  # not enumerate(): its cached result tuple would keep the last expert alive
        share = (len(outputs) / count, (len(outputs) + 1) / count)

        def report(fraction: float, message: str, share: tuple[float, float] = share) -> None:
            progress.update(share[0] + (share[1] - share[0]) * fraction, message)

        if roi is None:
            labels = segmenter.segment(expert, network, options=options, progress=report)
        else:
            results = segmenter.segment_roi_first(
                expert, network, roi=roi, options=options, progress=report, roi_only=True
            )
            labels = next(results).labels
            results.close()  # a suspended run would hold its network
        outputs.append(labels)
        del expert, network, labels  # before the next expert loads
    return source.merge(outputs)


def write_output(output: Path, labels: np.ndarray, volume: Volume, source: ModelSource, split: bool) -> None:
    import nibabel as nib

    from tuckerscope.core.outputs.exports import (
        label_styles,
        segmentation_image,
        write_folder,
        write_segmentation,
    )

    output.parent.mkdir(parents=True, exist_ok=True)
    if not split:
        write_segmentation(output, labels, volume.affine, label_styles(source.class_names), volume.header)
        return

    def fill(folder: Path) -> None:
        for label, name in sorted(source.class_names.items()):
            mask = (labels == label).astype(np.uint8)
            nib.save(segmentation_image(mask, volume.affine, volume.header), folder / f"{name}.nii.gz")

    write_folder(output, fill)


def _check_output(output: Path, split: bool) -> None:
    if split:
        if output.exists() and not output.is_dir():
            raise SegmentArgumentError(f"--split writes a folder, but {output} is a file")
        return
    if not (output.name.endswith(".nii.gz") or output.name.endswith(".nii")):
        raise SegmentArgumentError(
            f"output {output} must end in .nii.gz or .nii (or use --split for a folder)"
        )


class TerminalProgress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per stage otherwise)."""

    WIDTH = 30

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_stage = ""
        self.last_draw = 0.0

    def update(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        stage = message.split(":")[0]
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw < 0.1 and fraction < 1.0:
                return
            filled = int(round(self.WIDTH * min(max(fraction, 0.0), 1.0)))
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            sys.stderr.write(f"\r[{bar}] {fraction * 100:5.1f}% {message[:60]:<60}")
            sys.stderr.flush()
        elif stage != self.last_stage:
            sys.stderr.write(f"{fraction * 100:5.1f}% {message}\n")
        self.last_stage = stage
        self.last_draw = now

    def note(self, text: str) -> None:
        if self.tty and self.last_stage:
            sys.stderr.write("\n")
        sys.stderr.write(f"tuckerscope: {text}\n")
        self.last_stage = ""

    def finish(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\n")
        sys.stderr.write(f"tuckerscope: {text}\n")
