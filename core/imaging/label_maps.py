"""Label maps made by other tools (ground truth): put one on the CT's grid and learn what its values mean.

Grid. A label map on the CT's voxel grid is used as is. One whose voxels are the CT's up to axis flips and
permutations (another orientation on disk, e.g. LPS against RAS) is reoriented losslessly. Any other grid is
resampled onto the CT's by nearest neighbour, with a warning that says so.

Names. A label map's numbers are its maker's, so classes are matched to a model's by name. The names come
from, in this order: the label tables beside the file in the formats outputs/exports.py writes (ITK-SNAP
``NAME_itksnap_labels.txt``, 3D Slicer ``NAME.ctbl``) or one table for the whole folder
(``labels_itksnap.txt``, ``labels.ctbl``); TotalSegmentator's label table in the NIfTI header extension
(what ``TotalSegmentator --ml`` writes); an nnU-Net ``dataset.json`` in the file's folder or the one above
(``DatasetXXX/labelsTr/case.nii.gz``). A model class also takes the ground truth's finer classes that make it
up: those named ``CLASS_*`` (vertebrae = vertebrae_L1, vertebrae_T12 ...) and the phantom's groups
(ribs_left = rib_left_8 ... rib_left_12).
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from tuckerscope.core.imaging.phantom import CLASS_GROUPS
from tuckerscope.core.runtime.errors import UserError

FOLDER_TABLES = ("labels_itksnap.txt", "labels.ctbl")
SAME_GRID_TOLERANCE = 0.01  # voxel centres within 1% of a voxel of the CT's count as the CT's grid


class LabelMapFileError(UserError):
    """A label map or its label table cannot be read or used."""


class UnmatchedClassesError(UserError):
    """No class of the ground truth can be matched to a class of the model by name."""


@dataclass
class LabelMap:
    """A label map on a CT's grid, the names of its values (empty when nothing names them) and their source."""

    data: np.ndarray
    names: dict[int, str]
    names_from: str
    warnings: list[str] = field(default_factory=list)


def sidecar_paths(nifti_path: Path) -> tuple[Path, Path]:
    """'seg.nii.gz' -> ('seg_itksnap_labels.txt', 'seg.ctbl') beside it."""
    name = nifti_path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else nifti_path.stem
    return nifti_path.with_name(f"{stem}_itksnap_labels.txt"), nifti_path.with_name(f"{stem}.ctbl")


def load_label_map(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> LabelMap:
    """The label map at ``path`` on the grid (``shape``, ``affine``) of a CT, with its class names."""
    path = Path(path)
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise LabelMapFileError(f"ground truth {path} does not exist") from None
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise LabelMapFileError(f"cannot read ground truth {path}: {exc}") from None
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LabelMapFileError(f"ground truth {path.name} has shape {data.shape}: a 3D label map is needed")
    data = _as_labels(data, path.name)
    data, warning = onto_grid(data, np.asarray(image.affine, dtype=float), shape, affine, path.name)
    names, names_from = label_names(path, image)
    return LabelMap(data, names, names_from, [warning] if warning else [])


def onto_grid(
    data: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], target: np.ndarray, name: str
) -> tuple[np.ndarray, str | None]:
    """``data`` on the target grid: as is, reoriented (lossless), or nearest-neighbour resampled (warned)."""
    if same_grid(data.shape, affine, shape, target):
        return data, None
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(target)
    )
    reoriented = nib.orientations.apply_orientation(data, transform)
    if same_grid(reoriented.shape, affine @ nib.orientations.inv_ornt_aff(transform, data.shape), shape, target):
        return np.ascontiguousarray(reoriented), None
    from nibabel.processing import resample_from_to

    resampled = resample_from_to(nib.Nifti1Image(data, affine), (shape, target), order=0, mode="constant")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    target_spacing = np.sqrt((target[:3, :3] ** 2).sum(axis=0))
    warning = (
        f"ground truth {name} is on another voxel grid ({_grid(data.shape, spacing)}) than the CT "
        f"({_grid(shape, target_spacing)}): resampled onto the CT's grid by nearest neighbour, so its "
        "borders may shift by up to half a voxel"
    )
    return np.asarray(resampled.dataobj).astype(data.dtype, copy=False), warning


def same_grid(shape: Sequence[int], affine: np.ndarray, target_shape: Sequence[int], target: np.ndarray) -> bool:
    if tuple(shape) != tuple(target_shape):
        return False
    voxel = float(np.sqrt((target[:3, :3] ** 2).sum(axis=0)).min())
    return bool(np.allclose(affine, target, atol=SAME_GRID_TOLERANCE * voxel))


def label_names(path: Path, image: nib.spatialimages.SpatialImage | None = None) -> tuple[dict[int, str], str]:
    """{value: class name} of a label map and where they were read (see the module docstring); ({}, '')."""
    path = Path(path)
    itksnap, slicer = sidecar_paths(path)
    for table in (itksnap, slicer, *(path.parent / name for name in FOLDER_TABLES)):
        if table.is_file():
            return read_label_table(table), f"label table {table.name}"
    if image is not None:
        names = ts_header_names(image)
        if names:
            return names, "TotalSegmentator label table in its header"
    for folder in (path.parent, path.parent.parent):
        dataset_json = folder / "dataset.json"
        if dataset_json.is_file():
            names = dataset_json_names(dataset_json)
            if names:
                return names, f"{dataset_json.parent.name}/dataset.json"
    return {}, ""


def read_label_table(path: Path) -> dict[int, str]:
    """{value: name} from an ITK-SNAP label description or a 3D Slicer colour table (background left out).

    ITK-SNAP rows are ``IDX R G B A VIS MSH "LABEL"``; Slicer rows are ``index name R G B A``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelMapFileError(f"cannot read label table {path}: {exc}") from None
    names: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            fields = shlex.split(line)
            value = int(fields[0])
            name = fields[7] if '"' in line or len(fields) == 8 else fields[1]
        except (ValueError, IndexError):
            raise LabelMapFileError(
                f"{path}, line {number}: not an ITK-SNAP or Slicer label row: {line!r}"
            ) from None
        if value > 0:
            names[value] = name
    return names


def ts_header_names(image: nib.spatialimages.SpatialImage) -> dict[int, str]:
    """TotalSegmentator's label table (nifti_ext_header.add_label_map_to_nifti: a CaretExtension XML)."""
    for extension in getattr(image.header, "extensions", ()):
        content = extension.get_content()
        if not isinstance(content, bytes) or b"<LabelTable>" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.decode("utf-8", errors="replace").strip())
        except ElementTree.ParseError:
            continue
        names = {
            int(label.get("Key", "0")): (label.text or "").strip()
            for label in root.iter("Label")
            if (label.get("Key") or "").isdigit()
        }
        return {value: name for value, name in names.items() if value > 0 and name}
    return {}


def dataset_json_names(path: Path) -> dict[int, str]:
    """{value: name} from an nnU-Net dataset.json's "labels" ({name: value}; region lists left out)."""
    try:
        labels = json.loads(Path(path).read_text(encoding="utf-8")).get("labels", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return {}
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and v > 0}


def normalised(name: str) -> str:
    """Names compare without case and with spaces, dashes and underscores alike (Slicer has no spaces)."""
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


@dataclass(frozen=True)
class NameMatch:
    """Ground-truth values -> model labels by class name, and what matched nothing on either side."""

    table: np.ndarray  # ground-truth value -> model label (0: no model class)
    members: dict[int, tuple[str, ...]]  # model label -> the ground-truth classes it takes
    model_unmatched: tuple[str, ...]
    truth_unmatched: tuple[str, ...]

    def renumber(self, truth: np.ndarray) -> np.ndarray:
        """The ground truth in the model's label values (unmatched classes become background)."""
        table = self.table
        if truth.size and int(truth.max()) >= len(table):
            table = np.pad(table, (0, int(truth.max()) + 1 - len(table)))
        return table[truth]

    def notes(self, model_names: Mapping[int, str]) -> list[str]:
        """What a user should know before reading scores against this ground truth."""
        notes = []
        groups = [
            f"{model_names[label]} = {' + '.join(names) if len(names) <= 4 else f'{len(names)} classes'}"
            for label, names in self.members.items()
            if len(names) > 1 or normalised(names[0]) != normalised(model_names[label])
        ]
        if groups:
            notes.append("ground truth classes merged by name: " + "; ".join(groups))
        if self.model_unmatched:
            notes.append(
                f"{len(self.model_unmatched)} model classes have no ground-truth class of that name and are not "
                f"scored against it: {_listed(self.model_unmatched)}"
            )
        if self.truth_unmatched:
            notes.append(
                f"{len(self.truth_unmatched)} ground-truth classes match no model class and are ignored: "
                f"{_listed(self.truth_unmatched)}"
            )
        return notes


def match_by_name(
    truth_names: Mapping[int, str],
    model_names: Mapping[int, str],
    groups: Mapping[str, Sequence[str]] = CLASS_GROUPS,
    what: str = "the ground truth",
) -> NameMatch:
    """Match ground-truth classes to model classes: the same name first, else the model class they make up.

    A ground-truth class makes up model class M when it is named ``M_*`` or belongs to ``groups[M]``; the
    longest such M wins. Raises UnmatchedClassesError when nothing names the ground truth's values or no
    class matches, so that nothing is scored against numbers that mean something else.
    """
    if not truth_names:
        raise UnmatchedClassesError(
            f"{what} carries no class names, so its values cannot be matched to the model's classes: put its "
            "label table beside it (ITK-SNAP NAME_itksnap_labels.txt or Slicer NAME.ctbl, as `tuckerscope "
            "segment` writes them) or use a file that names its labels (TotalSegmentator --ml output)"
        )
    model = {normalised(name): int(label) for label, name in sorted(model_names.items()) if int(label) > 0}
    grouped = {normalised(m): {normalised(n) for n in names} for m, names in groups.items()}
    table = np.zeros(max(truth_names, default=0) + 1, dtype=np.int32)
    members: dict[int, list[str]] = {}
    unmatched = []
    for value, name in sorted(truth_names.items()):
        key = normalised(name)
        label = model.get(key)
        if label is None:
            owners = [m for m in model if key.startswith(m + "_") or key in grouped.get(m, ())]
            label = model[max(owners, key=len)] if owners else None
        if label is None:
            unmatched.append(name)
            continue
        table[value] = label
        members.setdefault(label, []).append(name)
    if not members:
        raise UnmatchedClassesError(
            f"none of the {len(truth_names)} classes of {what} ({_listed(list(truth_names.values()))}) matches a "
            f"model class by name ({_listed(list(model_names.values()))}): nothing to score against it"
        )
    model_unmatched = tuple(n for v, n in sorted(model_names.items()) if int(v) > 0 and int(v) not in members)
    return NameMatch(
        table, {k: tuple(v) for k, v in sorted(members.items())}, model_unmatched, tuple(unmatched)
    )


def _as_labels(data: np.ndarray, name: str) -> np.ndarray:
    if data.dtype.kind == "f":
        if not (np.all(np.isfinite(data)) and np.array_equal(data, np.round(data))):
            raise LabelMapFileError(f"ground truth {name} holds non-integer values: it is not a label map")
        data = data.astype(np.int32)
    elif data.dtype.kind not in "iub":
        raise LabelMapFileError(f"ground truth {name} has dtype {data.dtype}: it is not a label map")
    if data.size and int(data.min()) < 0:
        raise LabelMapFileError(f"ground truth {name} holds negative values: it is not a label map")
    return data


def _grid(shape: Sequence[int], spacing: np.ndarray) -> str:
    return f"{' x '.join(str(int(n)) for n in shape)} voxels of {' x '.join(f'{s:.3g}' for s in spacing)} mm"


def _listed(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
