"""Files a user takes away: segmentation (NIfTI + ITK-SNAP and 3D Slicer label tables), CSV tables, folders.

Every write is atomic. Files are written to hidden temporary names in the destination folder and moved
into place with os.replace only once all of them are complete. A failure (full disk, no permission, a
bug halfway through) leaves the destination as it was and raises ExportError saying why.

Label tables follow the readers of the two viewers:
- ITK-SNAP (ColorLabelTable::LoadFromFile): '#' lines are comments; each row is
  `IDX R G B A VIS MSH "LABEL"` with A a float in 0..1 and the label in double quotes.
- 3D Slicer (vtkMRMLColorTableStorageNode): header `# Color table file <name>` and `# N values`; each row is
  `index name R G B A`, all colour components 0..255, names without whitespace.
"""

from __future__ import annotations

import colorsys
import csv
import functools
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tuckerscope.core.imaging.label_maps import sidecar_paths
from tuckerscope.core.runtime.errors import UserError

RGB = tuple[int, int, int]


class ExportError(UserError):
    """An export could not be written; nothing was left behind."""


@dataclass(frozen=True)
class LabelStyle:
    """How one label value is named and coloured in the exported tables."""

    label: int
    name: str
    rgb: RGB


@functools.lru_cache(maxsize=1)
def ts_colours() -> dict[str, RGB]:
    """TotalSegmentator's own colour per structure (its SNOMED mapping CSV, column DicomRGBColor)."""
    try:
        from totalsegmentator.dicom_utils import load_color_mapping
    except ImportError:
        return {}
    return {name: (int(r), int(g), int(b)) for name, (r, g, b) in load_color_mapping().items()}


def fallback_colour(label: int) -> RGB:
    """A distinct, stable colour for a class TS has no colour for (golden-angle hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def label_styles(names: Mapping[int, str], colours: Mapping[str, RGB] | None = None) -> list[LabelStyle]:
    """Styles for {label: name}, coloured as TS colours them unless `colours` says otherwise."""
    palette = ts_colours() if colours is None else colours
    styles = []
    for label, name in sorted(names.items()):
        if int(label) > 0:
            r, g, b = palette.get(name) or fallback_colour(int(label))
            styles.append(LabelStyle(int(label), name, (int(r), int(g), int(b))))
    return styles


def itksnap_label_text(styles: Sequence[LabelStyle]) -> str:
    """An ITK-SNAP label description file (background row 'Clear Label' first, as ITK-SNAP writes it)."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields:",
        "#    IDX:   Zero-based index",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description",
        "################################################",
        f'{0:5d} {0:5d} {0:4d} {0:4d} {0.0:8.2f} {0:2d} {0:2d}    "Clear Label"',
    ]
    for style in styles:
        r, g, b = style.rgb
        name = style.name.replace('"', "'")
        lines.append(f'{style.label:5d} {r:5d} {g:4d} {b:4d} {1.0:8.2f} {1:2d} {1:2d}    "{name}"')
    return "\n".join(lines) + "\n"


def slicer_colour_table_text(styles: Sequence[LabelStyle], table_name: str) -> str:
    """A 3D Slicer colour table (.ctbl): `index name R G B A`, with Background at 0 fully transparent."""
    rows = ["0 Background 0 0 0 0"] + [
        f"{s.label} {'_'.join(s.name.split())} {s.rgb[0]} {s.rgb[1]} {s.rgb[2]} 255" for s in styles
    ]
    header = [f"# Color table file {table_name}", f"# {len(rows)} values"]
    return "\n".join(header + rows) + "\n"


class AtomicOutputs:
    """Temporary names for a set of outputs, committed together with os.replace or discarded together."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def file_for(self, target: Path) -> Path:
        """A temporary path beside `target`, keeping its suffixes (nibabel picks the format from them)."""
        target = Path(target)
        check_destination(target)
        temporary = target.with_name(f".tmp-{secrets.token_hex(6)}-{target.name}")
        temporary.open("xb").close()  # unlike mkstemp, honours the umask (a 0600 export surprises users)
        self._pending.append((temporary, target))
        return temporary

    def folder_for(self, target: Path) -> Path:
        target = Path(target)
        check_destination(target)
        temporary = target.with_name(f".tmp-{secrets.token_hex(6)}-{target.name}")
        temporary.mkdir()
        self._pending.append((temporary, target))
        return temporary

    def commit(self) -> None:
        for temporary, _ in self._pending:
            if temporary.is_file():
                flush_to_disk(temporary)
        for temporary, target in self._pending:
            if temporary.is_dir():
                replace_folder(temporary, target)
            else:
                os.replace(temporary, target)
        self._pending.clear()

    def target_of(self, filename: object) -> str:
        """The user's file name for an OSError's filename, which may be one of our temporary names."""
        for temporary, target in self._pending:
            if filename is not None and str(filename).startswith(str(temporary)):
                return str(target)
        return str(filename) if filename else "the export"

    def discard(self) -> None:
        for temporary, _ in self._pending:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
        self._pending.clear()


@contextmanager
def atomic_outputs() -> Iterator[AtomicOutputs]:
    """`with atomic_outputs() as out:` write to out.file_for(target) ...; all targets appear at the end or none."""
    outputs = AtomicOutputs()
    try:
        yield outputs
        outputs.commit()
    except ExportError:
        outputs.discard()
        raise
    except OSError as exc:
        where = outputs.target_of(exc.filename)
        outputs.discard()
        raise ExportError(f"could not write {where}: {exc.strerror or exc}; nothing was written") from None
    except Exception as exc:
        outputs.discard()
        raise ExportError(f"export failed ({type(exc).__name__}: {exc}); nothing was written") from exc
    except BaseException:
        outputs.discard()
        raise


def check_destination(target: Path) -> None:
    folder = target.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write {target}: folder {folder} is not writable")
    if target.is_dir() and target.suffix:
        raise ExportError(f"cannot write {target}: a folder of that name is in the way")


def flush_to_disk(path: Path) -> None:
    """fsync the finished temporary file so a crash after the rename cannot expose an empty file."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def replace_folder(new: Path, target: Path) -> None:
    """Swap a finished folder into place; an existing folder is kept until the new one is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    if not target.is_dir():
        raise ExportError(f"cannot write folder {target}: a file of that name is in the way")
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old / target.name, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    """Write one text file atomically."""
    with atomic_outputs() as out:
        out.file_for(Path(path)).write_text(text, encoding="utf-8")
    return Path(path)


def csv_text(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """CSV of dict rows; the columns are the union of the rows' keys in first-seen order unless given."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_cell(v) for k, v in row.items()})
    return buffer.getvalue()


def format_cell(value: object) -> object:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.6g}"
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return value


def write_csv(path: Path, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> Path:
    return write_text(path, csv_text(rows, columns))


@dataclass(frozen=True)
class SegmentationFiles:
    nifti: Path
    itksnap_labels: Path
    slicer_colour_table: Path


def segmentation_image(
    labels: np.ndarray, affine: np.ndarray, reference_header: nib.Nifti1Header | None = None
) -> nib.Nifti1Image:
    """A multilabel NIfTI on the input grid: same affine, and the input's qform/sform codes when known."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ExportError(f"a segmentation must be 3D, got shape {labels.shape}")
    if labels.dtype.kind not in "iub" or (labels.size and labels.min() < 0):
        raise ExportError(f"a segmentation must hold non-negative integer labels, got dtype {labels.dtype}")
    dtype = np.uint8 if labels.size == 0 or labels.max() <= 255 else np.uint16
    image = nib.Nifti1Image(labels.astype(dtype), np.asarray(affine, dtype=float))
    if reference_header is not None:
        if tuple(reference_header.get_data_shape()[:3]) != labels.shape:
            raise ExportError(
                f"segmentation shape {labels.shape} is not the input grid {reference_header.get_data_shape()[:3]}"
            )
        qform, qcode = reference_header.get_qform(coded=True)
        sform, scode = reference_header.get_sform(coded=True)
        image.set_qform(qform if qform is not None else affine, code=int(qcode) if qform is not None else 1)
        image.set_sform(sform if sform is not None else affine, code=int(scode) if sform is not None else 1)
        image.header.set_xyzt_units(*reference_header.get_xyzt_units())
    else:
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    image.header.set_intent("label")
    image.header.set_data_dtype(dtype)
    return image


def stage_segmentation(
    out: AtomicOutputs,
    path: Path,
    labels: np.ndarray,
    affine: np.ndarray,
    styles: Sequence[LabelStyle],
    reference_header: nib.Nifti1Header | None = None,
) -> SegmentationFiles:
    """Write the label map as NIfTI plus its ITK-SNAP and Slicer label tables into `out`'s pending files."""
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.suffix == ".nii"):
        raise ExportError(f"segmentation file name must end in .nii.gz or .nii, got {path.name}")
    image = segmentation_image(labels, affine, reference_header)
    itksnap_path, slicer_path = sidecar_paths(path)
    nib.save(image, out.file_for(path))
    out.file_for(itksnap_path).write_text(itksnap_label_text(styles), encoding="utf-8")
    out.file_for(slicer_path).write_text(slicer_colour_table_text(styles, slicer_path.name), encoding="utf-8")
    return SegmentationFiles(path, itksnap_path, slicer_path)


def write_segmentation(
    path: Path,
    labels: np.ndarray,
    affine: np.ndarray,
    styles: Sequence[LabelStyle],
    reference_header: nib.Nifti1Header | None = None,
) -> SegmentationFiles:
    """The segmentation and its two label tables, all three or none."""
    with atomic_outputs() as out:
        files = stage_segmentation(out, path, labels, affine, styles, reference_header)
    return files


def write_folder(target: Path, fill: Callable[[Path], object]) -> Path:
    """Build a folder (e.g. the compressed model) with `fill(temporary_folder)`, then swap it into place."""
    with atomic_outputs() as out:
        fill(out.folder_for(Path(target)))
    return Path(target)
