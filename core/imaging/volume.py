"""Load a CT volume (NIfTI file or DICOM series folder) and refuse what cannot be segmented, saying why.

Arrays are nibabel-ordered (x, y, z) with a voxel-to-RAS+ world affine. A NIfTI file keeps its own grid; a
DICOM series is put in the voxel order TotalSegmentator gives it (dicom2nifti's LAS: x right to left, y
posterior to anterior, z inferior to superior), so what is written for it lines up voxel by voxel with TS's
output. The segmenter reorients as TotalSegmentator does and returns labels on this very grid. Every rejection is a specific
``VolumeError`` subclass with a one-line message, so the CLI and the GUI can show it as is.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from warnings import catch_warnings, simplefilter

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from tuckerscope.core.runtime.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_SPACING_MM = 50.0
# A label map has a handful of non-negative integer values; even a heavily quantised CT has hundreds.
LABEL_MAP_MAX_VALUES = 256
# CT air is about -1000 HU; an image whose minimum stays above this is unlikely to be in Hounsfield units.
CT_MIN_BELOW_HU = -500.0
UNIQUE_SAMPLE_VOXELS = 2_000_000
# Beyond this the float32 copy alone takes 4 GB and segmentation needs several times that (8 GB budget).
MAX_VOXELS = 2**30
# Deflate cannot compress better than about 1032:1, so a .gz file holds at most this many bytes per byte.
DEFLATE_MAX_RATIO = 1100
# Leading bytes of files people save under a NIfTI name by mistake (offset, signature, what it is).
OTHER_FORMATS = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (128, b"DICM", "a single DICOM file"),
)
# Slice steps may differ from their median by this fraction before a series counts as having gaps.
SLICE_STEP_TOLERANCE = 0.1
# Columns of the affine whose angle departs from 90 degrees by more than this are reported as sheared.
SHEAR_TOLERANCE_DEGREES = 0.5


class VolumeError(UserError):
    """The input cannot be used as a CT volume."""


class NotAnImageError(VolumeError):
    """The path is not a NIfTI file or a DICOM series folder."""


class CorruptVolumeError(VolumeError):
    """The file is truncated or damaged."""


class NotThreeDError(VolumeError):
    """The image is 2D or 4D (or more)."""


class EmptyVolumeError(VolumeError):
    """The image has no voxels or holds one value everywhere."""


class NonFiniteError(VolumeError):
    """The image holds NaN or infinite values."""


class SpacingError(VolumeError):
    """The voxel spacing is zero, negative, not finite or implausibly large."""


class VolumeTooLargeError(VolumeError):
    """The image has more voxels than can be held in memory."""


class LabelMapError(VolumeError):
    """The image is a segmentation (few integer values), not a CT."""


@dataclass
class Volume:
    """A loaded scan: float32 intensities (x, y, z), affine, where it came from and what it probably is."""

    data: np.ndarray
    affine: np.ndarray
    path: Path
    modality: str  # "CT", "MR" or "unknown"
    header: nib.Nifti1Header | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(zooms[0]), float(zooms[1]), float(zooms[2]))

    @property
    def axis_codes(self) -> tuple[str, str, str]:
        codes = nib.aff2axcodes(self.affine)
        return (str(codes[0]), str(codes[1]), str(codes[2]))


def load_volume(path: Path | str) -> Volume:
    """Read a NIfTI file or the largest DICOM series in a folder, and validate it as a CT volume.

    Readers warn (on stderr) about the broken headers they repair; the checks here report what matters instead.
    """
    with catch_warnings(), np.errstate(all="ignore"):
        simplefilter("ignore")
        return _load_volume(Path(path))


def _load_volume(path: Path) -> Volume:
    if not path.exists():
        raise NotAnImageError(f"{path} does not exist")
    if path.is_dir():
        data, affine, modality, warnings = _read_dicom_folder(path)
        header = None
    elif path.name.lower().endswith(NIFTI_SUFFIXES):
        data, affine, header = _read_nifti(path)
        modality, warnings = "unknown", []
    else:
        raise NotAnImageError(
            f"{path.name} is not a NIfTI file (.nii/.nii.gz) or a DICOM folder; "
            "convert other formats to NIfTI first or pass the folder holding the DICOM series"
        )
    if data.size == 0:
        raise EmptyVolumeError(f"{path.name} has no voxels (shape {data.shape})")
    data = _as_three_d(data, path)
    _check_values(data, path)
    _check_spacing(affine, path)
    warnings.extend(_shear_warnings(affine, path))
    guessed, modality_warning = _guess_modality(data, modality)
    if modality_warning:
        warnings.append(modality_warning)
    return Volume(data=data, affine=affine, path=path, modality=guessed, header=header, warnings=warnings)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    _check_not_other_format(path)
    try:
        with _nibabel_log_silenced():
            image = nib.load(path)
    except nib.filebasedimages.ImageFileError:
        raise NotAnImageError(f"{path.name} is not a NIfTI image (its header cannot be read)") from None
    except HeaderDataError as exc:
        raise NotAnImageError(f"{path.name} has an invalid NIfTI header ({_first_line(exc)})") from None
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise CorruptVolumeError(f"{path.name} is damaged or truncated ({_first_line(exc)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise NotAnImageError(f"{path.name} is not a NIfTI-1/2 image")
    _check_raw_pixdim(path, type(image.header))
    dtype = image.header.get_data_dtype()
    if dtype.fields is not None:
        raise NotAnImageError(f"{path.name} holds structured (e.g. RGB) voxels, not intensities")
    if dtype.kind == "c":
        raise NotAnImageError(f"{path.name} holds complex-valued voxels (raw MR data?), not CT intensities")
    _check_data_size(path, image.header)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise CorruptVolumeError(f"{path.name} is damaged or truncated ({_first_line(exc)})") from None
    except MemoryError:
        raise VolumeTooLargeError(
            f"{path.name} (shape {image.shape}) does not fit in the memory left; close other programs or crop it"
        ) from None
    return data, np.asarray(image.affine, dtype=np.float64), image.header


@contextmanager
def _nibabel_log_silenced() -> Iterator[None]:
    """nibabel logs header "fixes" (zero pixdim set to 1) to stderr; _check_raw_pixdim reports them instead.

    nibabel's own LoggingOutputSuppressor leaves Python's last-resort handler printing, so disable the logger.
    """
    logger = nib.imageglobals.logger
    was_disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def _check_data_size(path: Path, header: nib.Nifti1Header) -> None:
    """Refuse, before allocating anything, a header promising more voxels than memory or the file can hold."""
    shape = header.get_data_shape()
    if any(int(n) < 0 for n in shape):
        raise NotAnImageError(f"{path.name} has an invalid NIfTI header (negative image size {shape})")
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    if voxels > MAX_VOXELS:
        raise VolumeTooLargeError(
            f"{path.name} has {voxels:,} voxels (shape {shape}), more than the {MAX_VOXELS:,} TuckerScope can "
            "hold in memory: crop or resample it first"
        )
    needed = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
    if path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        with path.open("rb") as stream:  # gzip's trailer holds the uncompressed size modulo 2**32
            stream.seek(max(size - 4, 0))
            stored = int.from_bytes(stream.read(4), "little")
        if (needed < 2**32 and stored < needed) or needed > size * DEFLATE_MAX_RATIO:
            raise CorruptVolumeError(
                f"{path.name} is damaged or truncated (its header promises {needed:,} bytes of image, "
                f"more than its {size:,} compressed bytes can hold)"
            )
    elif path.stat().st_size < needed:
        raise CorruptVolumeError(
            f"{path.name} is damaged or truncated (its header promises {needed:,} bytes, "
            f"the file has {path.stat().st_size:,})"
        )


def _check_not_other_format(path: Path) -> None:
    """Name what a mis-named file really is (an empty copy, a PNG screenshot...) instead of 'bad header'."""
    with path.open("rb") as stream:
        head = stream.read(132)
    if not head:
        raise CorruptVolumeError(
            f"{path.name} is an empty file (0 bytes): the copy or download did not finish; copy it again"
        )
    for offset, signature, kind in OTHER_FORMATS:
        if head[offset : offset + len(signature)] == signature:
            raise NotAnImageError(
                f"{path.name} is {kind}, not a NIfTI file: open the CT itself (.nii/.nii.gz or a DICOM folder)"
            )


def _check_raw_pixdim(path: Path, header_class: type[nib.Nifti1Header]) -> None:
    """nibabel silently replaces zero pixdim by 1 on load; without an sform that would invent a geometry."""
    with nib.openers.ImageOpener(path) as stream:
        raw = header_class.from_fileobj(stream, check=False)
    if int(raw["sform_code"]) == 0:
        zooms = np.asarray(raw["pixdim"][1:4], dtype=float)
        if np.any(zooms == 0) or not np.all(np.isfinite(zooms)):
            raise SpacingError(
                f"{path.name} has zero voxel spacing {_mm(zooms)}: its header geometry is broken"
            )


def _read_dicom_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """The largest DICOM series in ``folder`` (searched recursively) through SimpleITK's GDCM reader."""
    import SimpleITK as sitk

    # ITK prints warnings (no series found, missing slices) straight to stderr; the checks here say it instead.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    series: dict[str, list[str]] = {}
    for directory in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)) or ():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series_id)
            series.setdefault(series_id, []).extend(files)
    if not series:
        raise NotAnImageError(f"{folder} holds no DICOM series (and a folder cannot be read as NIfTI)")
    ranked = sorted(series.items(), key=lambda item: len(item[1]), reverse=True)
    chosen_id, files = ranked[0]
    warnings = []
    if len(ranked) > 1:
        others = ", ".join(f"{len(f)} files" for _, f in ranked[1:])
        warnings.append(
            f"{folder.name} holds {len(ranked)} DICOM series; using the largest ({len(files)} files), "
            f"ignoring the others ({others}); pass a folder with one series to choose another"
        )
    if len(files) < 2:
        raise NotThreeDError(
            f"the DICOM series in {folder.name} has a single slice: a 3D CT volume is needed"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptVolumeError(
            f"the DICOM series in {folder.name} cannot be read ({_first_line(exc)})"
        ) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NotThreeDError(f"the DICOM series in {folder.name} is not a 3D greyscale volume")
    _check_slice_steps(reader, len(files), folder)
    modality = (
        reader.GetMetaData(0, "0008|0060").strip().upper() if reader.HasMetaDataKey(0, "0008|0060") else ""
    )
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    data, affine = as_dicom2nifti_axes(data, _sitk_affine(image))
    return data, affine, modality or "unknown", warnings


DICOM2NIFTI_AXES = ("L", "A", "S")


def as_dicom2nifti_axes(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in dicom2nifti's axis order (TS converts DICOM with its ``reorient_nifti=True``).

    A lossless flip/permutation of the array (each voxel axis to the world axis it is closest to, as
    dicom2nifti picks each plane's normal component), with the affine changed to match: the physical
    space is unchanged.
    """
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(DICOM2NIFTI_AXES))
    reoriented = np.ascontiguousarray(nib.orientations.apply_orientation(data, transform))
    return reoriented, affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def _check_slice_steps(reader: object, count: int, folder: Path) -> None:
    """Refuse a series with missing or duplicate slices: a reader would close the hole and misplace the anatomy."""
    positions = []
    for index in range(count):
        if not (
            reader.HasMetaDataKey(index, "0020|0032")  # type: ignore[attr-defined]
            and reader.HasMetaDataKey(index, "0020|0037")  # type: ignore[attr-defined]
        ):
            return  # no geometry tags: nothing to check against, SimpleITK's spacing stands
        origin = _decimals(reader.GetMetaData(index, "0020|0032"))  # type: ignore[attr-defined]
        orientation = _decimals(reader.GetMetaData(index, "0020|0037"))  # type: ignore[attr-defined]
        if len(origin) != 3 or len(orientation) != 6:
            return
        normal = np.cross(orientation[:3], orientation[3:])
        positions.append(float(np.dot(normal, origin)))
    steps = np.abs(np.diff(positions))
    typical = float(np.median(steps))
    if typical <= 0:
        raise CorruptVolumeError(
            f"the DICOM series in {folder.name} has several slices at each position: "
            "it mixes acquisitions; export each one to its own folder"
        )
    off = np.flatnonzero(np.abs(steps - typical) > SLICE_STEP_TOLERANCE * typical)
    if off.size:
        first = int(off[0])
        raise CorruptVolumeError(
            f"the DICOM series in {folder.name} has missing slices or uneven slice spacing "
            f"({steps[first]:g} mm between slices {first + 1} and {first + 2}, {typical:g} mm elsewhere): "
            "copy the complete series, or resample it to NIfTI first (e.g. with dcm2niix)"
        )


def _decimals(text: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.strip().split("\\") if v.strip()], dtype=np.float64)
    except ValueError:
        return np.zeros(0)


def _sitk_affine(image: object) -> np.ndarray:
    """SimpleITK's LPS geometry as a nibabel RAS+ voxel-to-world affine."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # type: ignore[attr-defined]
    spacing = np.array(image.GetSpacing(), dtype=np.float64)  # type: ignore[attr-defined]
    origin = np.array(image.GetOrigin(), dtype=np.float64)  # type: ignore[attr-defined]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return affine


def _as_three_d(data: np.ndarray, path: Path) -> np.ndarray:
    """Squeeze trailing singleton axes (x, y, z, 1); refuse 2D and true 4D images."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2 or (data.ndim == 3 and 1 in data.shape[:3] and data.size > 0):
        raise NotThreeDError(f"{path.name} is a 2D image (shape {data.shape}): a 3D CT volume is needed")
    if data.ndim != 3:
        raise NotThreeDError(
            f"{path.name} has {data.ndim} dimensions (shape {data.shape}): a single 3D CT volume is needed; "
            "split a time series or multi-channel image into 3D volumes first"
        )
    return data


def _check_values(data: np.ndarray, path: Path) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise NonFiniteError(
            f"{path.name} holds {bad} NaN or infinite voxel values: the file is not a valid CT"
        )
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise EmptyVolumeError(
            f"{path.name} holds the single value {low:g} everywhere: there is nothing to segment"
        )
    values = _distinct_values(data)
    if (
        values is not None
        and len(values) <= LABEL_MAP_MAX_VALUES
        and low >= 0
        and np.all(values == np.round(values))
    ):
        raise LabelMapError(
            f"{path.name} looks like a label map ({len(values)} integer values from {low:g} to {high:g}), "
            "not a CT: pass the CT image itself"
        )


def _distinct_values(data: np.ndarray) -> np.ndarray | None:
    """The distinct values, or None as soon as a sample shows there are too many for a label map."""
    step = max(1, int(np.ceil((data.size / UNIQUE_SAMPLE_VOXELS) ** (1 / 3))))
    sample = np.unique(data[::step, ::step, ::step])
    if len(sample) > LABEL_MAP_MAX_VALUES:
        return None
    return np.unique(data)


def _check_spacing(affine: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise SpacingError(f"{path.name} has a non-finite affine (voxel-to-world matrix)")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) <= 1e-12:
        raise SpacingError(f"{path.name} has zero voxel spacing {_mm(zooms)}: its header geometry is broken")
    if np.any(zooms > MAX_SPACING_MM):
        raise SpacingError(
            f"{path.name} has voxel spacing {_mm(zooms)}, above {MAX_SPACING_MM:g} mm: "
            "its header geometry is wrong or it is not a CT volume"
        )


def _shear_warnings(affine: np.ndarray, path: Path) -> list[str]:
    """A sheared grid (e.g. uncorrected gantry tilt) is segmented on its voxel axes, as TotalSegmentator does."""
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = [abs(float(columns[:, a] @ columns[:, b])) for a, b in ((0, 1), (0, 2), (1, 2))]
    worst = float(np.degrees(np.arcsin(min(max(cosines), 1.0))))
    if worst <= SHEAR_TOLERANCE_DEGREES:
        return []
    return [
        f"{path.name} has voxel axes that are not orthogonal (sheared by {worst:.1f} degrees, e.g. an uncorrected "
        "gantry tilt): it is segmented on its voxel grid, so anatomy appears slanted to the network"
    ]


def _guess_modality(data: np.ndarray, tagged: str) -> tuple[str, str | None]:
    """CT if tagged so or if it has air-like negative HU; MR if tagged so or non-negative; warn for non-CT."""
    if tagged == "CT":
        return "CT", None
    if tagged in ("MR", "MRI"):
        return "MR", "this is an MR series: TotalSegmentator 'total' is a CT model, expect poor segmentations"
    if tagged not in ("", "unknown"):
        return tagged, f"DICOM modality is {tagged}, not CT: TotalSegmentator 'total' is a CT model"
    if float(data.min()) < CT_MIN_BELOW_HU:
        return "CT", None
    return "MR", (
        "no air-like values below -500 HU: this looks like MR or a non-Hounsfield image; "
        "TotalSegmentator 'total' is a CT model, expect poor segmentations"
    )


def _mm(zooms: np.ndarray) -> str:
    return "x".join(f"{z:g}" for z in zooms) + " mm"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
