"""`tuckerscope demo`: segment a fresh phantom with every demo expert and score it against the true labels.

It is the headless first run a new user sees: no TotalSegmentator weights and no patient data are needed,
the phantom and the demo experts ship with the app. It shows that the experts load through the same path
as a TS install and segment the way TS would, and how long one whole-volume segmentation takes here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tuckerscope.core.evaluation.metrics import DEFAULT_TOLERANCE_MM, classes_from_names, compare
from tuckerscope.core.imaging.phantom import Phantom, make_phantom
from tuckerscope.core.models.model_sources import demo_source
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter

DEMO_SEED = 20_250
"""A phantom none of the demo experts saw in training (they train on seeds 0-127)."""


class DemoArgumentError(UserError):
    """A `demo` option has a value that cannot be used."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="segment a fresh CT phantom with the demo experts and print per-class Dice",
        description="Generate a procedural torso CT phantom, segment it with each demo expert as TotalSegmentator "
        "would, and print per-class Dice and NSD against the phantom's true labels plus the segmentation time.",
    )
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--save-phantom",
        type=Path,
        metavar="DIR",
        help="also write the phantom as DIR/phantom_ct.nii.gz and DIR/phantom_labels.nii.gz, with label tables "
        "naming its classes beside it (eval/report --gt match them to the model's classes by name)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise DemoArgumentError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.threads is not None and args.threads < 1:
        raise DemoArgumentError(f"--threads must be at least 1, got {args.threads}")
    source = demo_source()
    start = time.perf_counter()
    phantom = make_phantom(args.seed)
    shape = " x ".join(str(n) for n in phantom.ct.shape)
    print(
        f"phantom seed {args.seed}: {shape} voxels of {phantom.spacing[0]:g} mm, "
        f"generated in {time.perf_counter() - start:.1f} s"
    )
    if args.save_phantom is not None:
        _save_phantom(phantom, args.save_phantom)
    options = InferenceOptions(threads=args.threads)
    segmenter = Segmenter(phantom.ct, phantom.affine)
    for expert in source.load():
        start = time.perf_counter()
        labels = segmenter.segment(expert, options=options)
        seconds = time.perf_counter() - start
        truth = phantom.label_map(expert.class_names)
        classes = classes_from_names(expert.class_names, expert.name)
        comparison = compare(
            truth, labels, phantom.spacing, classes, DEFAULT_TOLERANCE_MM, "truth", expert.name
        )
        threads = args.threads or torch.get_num_threads()
        print(f"\n{expert.name}: whole phantom segmented in {seconds:.1f} s (cpu, fp32, {threads} threads)")
        print(f"  {'class':<20} {'Dice':>6} {'NSD':>6}")
        for score in comparison.scores:
            print(f"  {score.name:<20} {score.dice:>6.3f} {score.nsd:>6.3f}")
        for ref in comparison.excluded:
            print(f"  {ref.name:<20} {'-':>6} {'-':>6}  (absent from phantom and prediction)")
        dices = [s.dice for s in comparison.scores]
        if dices:
            print(f"  {'mean':<20} {np.mean(dices):>6.3f}")
    return 0


def _save_phantom(phantom: Phantom, folder: Path) -> None:
    """The CT and its fine labels, with ITK-SNAP and Slicer tables naming them (for `eval --gt` by name)."""
    import nibabel as nib

    from tuckerscope.core.outputs.exports import label_styles, write_segmentation

    labels = folder / "phantom_labels.nii.gz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ct, _ = phantom.to_nifti()
        nib.save(ct, folder / "phantom_ct.nii.gz")
        files = write_segmentation(labels, phantom.labels, phantom.affine, label_styles(phantom.class_names))
    except OSError as exc:
        raise DemoArgumentError(f"cannot write the phantom to {folder}: {exc.strerror or exc}") from None
    print(
        f"phantom written to {folder / 'phantom_ct.nii.gz'} and {labels} "
        f"(class names in {files.itksnap_labels.name} and {files.slicer_colour_table.name})"
    )
