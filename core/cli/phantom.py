"""`tuckerscope phantom`: write a cohort of CT phantoms with their true labels, to try cohorts without data.

DIR/ct/NAME.nii.gz is the CT in HU, DIR/labels/NAME.nii.gz its label map, and beside each label map its
ITK-SNAP and 3D Slicer label tables (NAME_itksnap_labels.txt, NAME.ctbl) name the classes, as `segment`
writes them; `cohort --gt DIR/labels` and `eval --gt` match classes through those names.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import nibabel as nib

from tuckerscope.core.imaging.phantom import CLASS_NAMES, DEFAULT_SHAPE, DEFAULT_SPACING, make_phantom
from tuckerscope.core.outputs.exports import atomic_outputs, label_styles, write_segmentation
from tuckerscope.core.runtime.errors import UserError

DEFAULT_SEED = 10_000
"""Far from the demo experts' training seeds (0-127), so a phantom cohort is held-out data for them."""
SPACING_RANGE = (0.75, 8.0)


class PhantomArgumentError(UserError):
    """A `phantom` option has a value that cannot be used."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a cohort of CT phantoms with true labels (DIR/ct, DIR/labels)",
        description="Generate COUNT procedural torso CT phantoms (seeds SEED, SEED+1, ...) and write each CT "
        "and its true label map, with ITK-SNAP and Slicer label tables naming the classes.",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="cohort folder")
    parser.add_argument("--count", required=True, type=int, metavar="N", help="number of phantoms")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"first seed (default {DEFAULT_SEED})")
    parser.add_argument(
        "--spacing",
        type=float,
        default=DEFAULT_SPACING,
        metavar="MM",
        help=f"isotropic voxel size in mm (default {DEFAULT_SPACING:g}; larger is smaller files and faster "
        "scoring, the same torso)",
    )
    parser.set_defaults(func=run)


def phantom_shape(spacing: float) -> tuple[int, int, int]:
    """The grid that covers the default torso extent at `spacing` mm."""
    return tuple(math.ceil(n * DEFAULT_SPACING / spacing - 1e-9) for n in DEFAULT_SHAPE)  # type: ignore[return-value]


def write_phantom_cohort(folder: Path, count: int, seed: int, spacing: float) -> list[str]:
    """Write the phantoms; returns their names (phantom_SEED)."""
    ct_folder, label_folder = Path(folder) / "ct", Path(folder) / "labels"
    try:
        ct_folder.mkdir(parents=True, exist_ok=True)
        label_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhantomArgumentError(f"cannot create {folder}: {exc.strerror or exc}") from None
    styles = label_styles(CLASS_NAMES)
    names = []
    for index in range(count):
        phantom = make_phantom(seed + index, phantom_shape(spacing), spacing)
        name = f"phantom_{seed + index}"
        ct, labels = phantom.to_nifti()
        with atomic_outputs() as out:
            nib.save(ct, out.file_for(ct_folder / f"{name}.nii.gz"))
        write_segmentation(label_folder / f"{name}.nii.gz", phantom.labels, phantom.affine, styles, labels.header)
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise PhantomArgumentError(f"--count must be at least 1, got {args.count}")
    if args.seed < 0:
        raise PhantomArgumentError(f"--seed must be a non-negative integer, got {args.seed}")
    low, high = SPACING_RANGE
    if not (math.isfinite(args.spacing) and low <= args.spacing <= high):
        raise PhantomArgumentError(f"--spacing must be between {low:g} and {high:g} mm, got {args.spacing:g}")
    names = write_phantom_cohort(args.output, args.count, args.seed, args.spacing)
    shape = " x ".join(map(str, phantom_shape(args.spacing)))
    print(
        f"wrote {len(names)} phantoms ({shape} voxels of {args.spacing:g} mm) to {args.output / 'ct'}, "
        f"their labels and label tables to {args.output / 'labels'}"
    )
    return 0
