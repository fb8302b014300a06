"""Unlabelled scans to distil on and to score on: the loaded CT, a folder of CTs, or generated phantoms.

Users have no labels (TS's training set is not public), so the data only has to be CT: the teacher supplies
the targets. A folder is read lazily, one scan at a time, so a cohort never sits in memory at once. Phantoms
for distillation and for held-out scoring come from disjoint seed ranges, both disjoint from the seeds the
demo experts were trained on (0-127).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuckerscope.core.imaging.phantom import Phantom, PhantomError, make_phantom
from tuckerscope.core.imaging.volume import NIFTI_SUFFIXES, Volume, VolumeError, load_volume
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import UserError

TRAIN_PHANTOM_SEED = 10_000
HELD_OUT_PHANTOM_SEED = 100_000
"""The demo experts' own held-out seeds (scripts/train_demo_models.py), never used for distillation."""
PHANTOM_PREFIX = "phantoms:"


class DistillationDataError(UserError):
    """Distillation data that cannot be used: nothing readable, not a CT, a bad phantom count."""


@dataclass(frozen=True, eq=False)
class Scan:
    """One unlabelled scan in nibabel (x, y, z) order; phantoms also carry their true labels."""

    name: str
    ct: np.ndarray
    affine: np.ndarray
    phantom: Phantom | None = None

    def truth_for(self, expert: LoadedExpert) -> np.ndarray | None:
        """The phantom's true labels in ``expert``'s label values, or None (a user CT, or classes it lacks)."""
        if self.phantom is None:
            return None
        try:
            return self.phantom.label_map(expert.class_names)
        except PhantomError:
            return None


@dataclass(frozen=True)
class ScanSource:
    """A named, re-readable sequence of scans: each iteration loads them again, one at a time."""

    description: str
    names: tuple[str, ...]
    loader: Callable[[int], Scan]
    phantoms: bool = False

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Scan]:
        return (self.loader(index) for index in range(len(self.names)))

    def split(self, held_out: int) -> tuple[ScanSource, ScanSource]:
        """(training, held-out): the last ``held_out`` scans are kept for scoring only."""
        if not 0 < held_out < len(self):
            raise DistillationDataError(
                f"cannot hold out {held_out} of {len(self)} scans: at least one must remain for distillation"
            )
        cut = len(self) - held_out
        return self._subset(range(cut), "training"), self._subset(range(cut, len(self)), "held out")

    def _subset(self, indices: range, what: str) -> ScanSource:
        return ScanSource(
            f"{self.description} ({what}: {len(indices)})",
            tuple(self.names[i] for i in indices),
            lambda index: self.loader(indices[index]),
            self.phantoms,
        )


def phantom_source(count: int, first_seed: int = TRAIN_PHANTOM_SEED) -> ScanSource:
    """``count`` procedural torso phantoms with seeds first_seed, first_seed + 1, ..."""
    if count < 1:
        raise DistillationDataError(f"the phantom count must be at least 1, got {count}")
    seeds = [first_seed + i for i in range(count)]

    def load(index: int) -> Scan:
        phantom = make_phantom(seeds[index])
        return Scan(f"phantom {seeds[index]}", phantom.ct, phantom.affine, phantom)

    names = tuple(f"phantom {s}" for s in seeds)
    return ScanSource(f"{count} phantoms (seeds {seeds[0]}-{seeds[-1]})", names, load, phantoms=True)


def held_out_phantoms(count: int) -> ScanSource:
    return phantom_source(count, HELD_OUT_PHANTOM_SEED)


def scan_from_volume(volume: Volume) -> Scan:
    """The loaded CT as a scan (refused when it is not a CT: the teacher's targets would be meaningless)."""
    _check_is_ct(volume)
    return Scan(volume.path.name, volume.data, volume.affine)


def single_scan_source(scan: Scan) -> ScanSource:
    return ScanSource(scan.name, (scan.name,), lambda _index: scan)


def parse_data(text: str, first_phantom_seed: int = TRAIN_PHANTOM_SEED) -> ScanSource:
    """'phantoms:N', a NIfTI file, a DICOM folder, or a folder of NIfTI files and/or DICOM series.

    Phantoms start at ``first_phantom_seed``: HELD_OUT_PHANTOM_SEED for scoring data.
    """
    if text.startswith(PHANTOM_PREFIX):
        count = text.removeprefix(PHANTOM_PREFIX)
        if not count.isdigit():
            raise DistillationDataError(
                f"--data {text!r}: write phantoms:N with a whole number N, e.g. phantoms:12"
            )
        return phantom_source(int(count), first_phantom_seed)
    return ct_source(Path(text))


def ct_source(path: Path) -> ScanSource:
    """One CT (NIfTI file or DICOM series folder) or every CT in a folder; unreadable entries are refused."""
    if not path.exists():
        raise DistillationDataError(f"distillation data {path} does not exist")
    candidates = _ct_candidates(path)
    if not candidates:
        raise DistillationDataError(
            f"{path} holds no CT: give a NIfTI file (.nii/.nii.gz), a DICOM series folder, or a folder of them"
        )
    problems = [problem for problem in (_probe(c) for c in candidates) if problem]
    if len(problems) == len(candidates):
        raise DistillationDataError(f"no readable CT in {path}: {problems[0]}")
    if problems:
        raise DistillationDataError(
            f"{len(problems)} of {len(candidates)} scans in {path} cannot be used: {problems[0]}"
        )

    def load(index: int) -> Scan:
        return scan_from_volume(load_volume(candidates[index]))

    return ScanSource(f"{len(candidates)} CT(s) from {path}", tuple(c.name for c in candidates), load)


def _ct_candidates(path: Path) -> list[Path]:
    if path.is_file() or _is_dicom_folder(path):
        return [path]
    entries = sorted(path.iterdir())
    files = [p for p in entries if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)]
    folders = [p for p in entries if p.is_dir() and _is_dicom_folder(p)]
    return files + folders


def _is_dicom_folder(path: Path) -> bool:
    """A folder of files none of which is NIfTI (load_volume then reads its largest DICOM series)."""
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and not any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in files)


def _probe(path: Path) -> str | None:
    """Why ``path`` cannot be distilled on, or None. Loads it once (headers alone cannot tell CT from MR)."""
    try:
        _check_is_ct(load_volume(path))
    except (VolumeError, DistillationDataError) as exc:
        return str(exc)
    return None


def _check_is_ct(volume: Volume) -> None:
    if volume.modality != "CT":
        raise DistillationDataError(
            f"{volume.path.name} is not a CT ({volume.modality}): the experts are CT models, so their outputs "
            "on it would teach nothing"
        )
