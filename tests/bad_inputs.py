"""A corpus of bad inputs, built at test time into a temporary folder (nothing binary is committed).

Clinic workstations hold every kind of file; each case here is one way a CT or a model folder goes wrong, with the
outcome TuckerScope owes the user: either a refusal (a specific ``UserError`` subclass whose one-line message
matches a pattern) or an acceptance (optionally with a warning; for re-oriented copies of a reference CT, labels
that land on the same anatomy). ``tests/test_bad_inputs.py`` runs every case through the core API, the CLI and
the window. Tests import this module directly (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tiny_model import tiny_dataset_json, tiny_plans, write_tiny_model
from tuckerscope.core.imaging.volume import (
    CorruptVolumeError,
    EmptyVolumeError,
    LabelMapError,
    NonFiniteError,
    NotAnImageError,
    NotThreeDError,
    SpacingError,
)
from tuckerscope.core.models.model_folder import ModelFolderError
from tuckerscope.core.models.model_sources import ModelSourceError
from tuckerscope.core.runtime.errors import UserError

# The tiny model's plans spacing: a CT on this grid reaches the network without any resampling, so a re-oriented
# copy of it must give exactly the same labels once mapped back.
SPACING_MM = 3.0
REFERENCE_SHAPE = (44, 38, 34)
# A hostile checkpoint creates this file beside the model if its pickle is executed.
CODE_RAN_MARKER = "code-ran"
MODEL_ERRORS = (ModelFolderError, ModelSourceError)


@dataclass(frozen=True)
class Refused:
    """The input must be refused with this error type and a message matching ``pattern`` (re.search)."""

    error: type[UserError] | tuple[type[UserError], ...]
    pattern: str


@dataclass(frozen=True)
class Accepted:
    """The input must load; ``warning`` (a pattern) must match one of the volume's warnings, or none is allowed.

    ``to_reference`` maps this case's input-grid array back onto the reference CT's grid: segmenting the case and
    mapping the labels back must give the reference CT's labels (same anatomy, whatever the orientation on disk).
    """

    warning: str | None = None
    to_reference: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: ``build(folder)`` writes it inside ``folder`` and returns the path a user would open."""

    name: str
    target: str  # "volume" (a CT path) or "model" (a model folder)
    build: Callable[[Path], Path]
    expected: Refused | Accepted

    @property
    def refused(self) -> bool:
        return isinstance(self.expected, Refused)


# ----- a small CT with asymmetric anatomy -------------------------------------------------------------------------


def reference_ct(shape: tuple[int, int, int] = REFERENCE_SHAPE, seed: int = 0) -> np.ndarray:
    """Air around an elliptic body with an off-centre lung, a bone block and a bright vessel, in HU (int16).

    Nothing is symmetric, so a labels-on-the-wrong-side bug cannot hide behind a mirror image.
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    ct[body] = 40.0
    ct[body & ((x - 0.35) ** 2 + (y + 0.1) ** 2 < 0.12) & (z > -0.5)] = -820.0  # lung
    ct[body & (np.abs(x + 0.1) < 0.15) & (y < -0.35) & (y > -0.6)] = 700.0  # spine-like bone
    ct[body & ((x + 0.45) ** 2 + (y - 0.25) ** 2 < 0.02)] = 250.0  # contrast vessel
    ct[body & (z > 0.6) & (x < -0.2)] = 90.0  # liver-ish dome, superior and left in voxel space
    ct += rng.normal(0.0, 12.0, size=shape)
    return np.round(ct).astype(np.int16)


def reference_affine() -> np.ndarray:
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    affine[:3, 3] = (-60.0, -50.0, 20.0)
    return affine


def save_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray | None = None, header: nib.Nifti1Header | None = None
) -> Path:
    nib.save(nib.Nifti1Image(data, reference_affine() if affine is None else affine, header), path)
    return path


def write_reference_ct(folder: Path) -> Path:
    return save_nifti(folder / "reference_ct.nii.gz", reference_ct())


def _patch_header_bytes(path: Path, offset: int, fmt: str, values: tuple[float, ...]) -> Path:
    """Overwrite raw header fields of an uncompressed .nii (nibabel would repair them on save)."""
    raw = bytearray(path.read_bytes())
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(raw))
    return path


# ----- damaged files ------------------------------------------------------------------------------------------


def _truncated_gzip(folder: Path) -> Path:
    path = write_reference_ct(folder)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _truncated_uncompressed(folder: Path) -> Path:
    path = save_nifti(folder / "ct.nii", reference_ct())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _zero_byte(folder: Path) -> Path:
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _png_renamed(folder: Path) -> Path:
    """A real (tiny, greyscale) PNG file named like a NIfTI, as a screenshot saved with the wrong name."""
    width, height = 8, 6
    rows = b"".join(b"\x00" + bytes(range(width)) for _ in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    path = folder / "scan.nii.gz"
    path.write_bytes(png)
    return path


def _gzipped_text(folder: Path) -> Path:
    path = folder / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"patient notes, not voxels\n" * 50))
    return path


def _wrong_extension(folder: Path) -> Path:
    path = folder / "scan.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    return path


def _missing_file(folder: Path) -> Path:
    return folder / "no-such-scan.nii.gz"


# ----- wrong shapes and values -----------------------------------------------------------------------------------


def _two_d(folder: Path) -> Path:
    return save_nifti(folder / "slice.nii.gz", reference_ct()[:, :, 10])


def _four_d(folder: Path) -> Path:
    ct = reference_ct()
    return save_nifti(folder / "dynamic.nii.gz", np.stack([ct, ct + 5, ct + 10], axis=-1))


def _all_nan(folder: Path) -> Path:
    return save_nifti(folder / "nan.nii.gz", np.full(REFERENCE_SHAPE, np.nan, np.float32))


def _inf_values(folder: Path) -> Path:
    ct = reference_ct().astype(np.float32)
    ct[10:12, 10:12, 10:12] = np.inf
    ct[0, 0, 0] = -np.inf
    return save_nifti(folder / "inf.nii.gz", ct)


def _int8(folder: Path) -> Path:
    """An int8 volume without scaling: -128..127 cannot be Hounsfield units (no air)."""
    ct = np.clip(reference_ct() // 8, -128, 127).astype(np.int8)
    return save_nifti(folder / "int8.nii.gz", ct)


def _one_slice(folder: Path) -> Path:
    return save_nifti(folder / "one_slice.nii.gz", reference_ct()[:, :, 12:13])


def _huge_single_slice(folder: Path) -> Path:
    rng = np.random.default_rng(4)
    data = rng.integers(-1000, 1500, size=(4000, 4000, 1), dtype=np.int16)
    return save_nifti(folder / "scout.nii.gz", data)


def _constant(folder: Path) -> Path:
    return save_nifti(folder / "constant.nii.gz", np.full(REFERENCE_SHAPE, -1000, np.int16))


def _no_voxels(folder: Path) -> Path:
    return save_nifti(folder / "no_voxels.nii.gz", np.zeros((40, 40, 0), np.int16))


# ----- wrong geometry -------------------------------------------------------------------------------------------


def _spacing_100mm(folder: Path) -> Path:
    return save_nifti(folder / "spacing100.nii.gz", reference_ct(), np.diag([100.0, 100.0, 100.0, 1.0]))


def _zero_pixdim(folder: Path) -> Path:
    """pixdim[3] = 0 with no sform/qform: the file has no usable geometry."""
    path = folder / "zero_pixdim.nii"
    nib.save(nib.Nifti1Image(reference_ct(), None), path)
    return _patch_header_bytes(path, 80, "<3f", (SPACING_MM, SPACING_MM, 0.0))


def _singular_affine(folder: Path) -> Path:
    """An sform whose z column is zero: every slice sits at the same place."""
    path = save_nifti(folder / "singular.nii", reference_ct())
    return _patch_header_bytes(path, 320, "<f", (0.0,))  # srow_z[2]


def _nan_affine(folder: Path) -> Path:
    path = save_nifti(folder / "nan_affine.nii", reference_ct())
    return _patch_header_bytes(path, 280, "<f", (float("nan"),))  # srow_x[0]


def _sheared(folder: Path) -> Path:
    affine = reference_affine()
    affine[0, 2] = 1.5  # x moves half a voxel per slice: uncorrected gantry tilt (about 27 degrees)
    return save_nifti(folder / "sheared.nii.gz", reference_ct(), affine)


def _lps_flip(folder: Path) -> Path:
    """The reference CT stored with x and y reversed (as DICOM-derived LPS files are): same anatomy in mm."""
    affine = reference_affine() @ _flip_matrix(REFERENCE_SHAPE, (0, 1))
    return save_nifti(folder / "lps.nii.gz", np.flip(reference_ct(), (0, 1)), affine)


def _permuted_axes(folder: Path) -> Path:
    """The reference CT stored as (z, x, y) with z reversed: a sagittal-first file (orientation S-R-A order)."""
    ct = np.flip(reference_ct(), 2).transpose(2, 0, 1)
    old_from_new = np.zeros((4, 4))
    old_from_new[0, 1] = old_from_new[1, 2] = 1.0  # x_old = j, y_old = k
    old_from_new[2, 0] = -1.0  # z_old = (nz - 1) - i
    old_from_new[2, 3] = REFERENCE_SHAPE[2] - 1
    old_from_new[3, 3] = 1.0
    return save_nifti(folder / "permuted.nii.gz", ct, reference_affine() @ old_from_new)


def _flip_matrix(shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """Voxel (new) -> voxel (old) for an array flipped along ``axes``."""
    matrix = np.eye(4)
    for axis in axes:
        matrix[axis, axis] = -1.0
        matrix[axis, 3] = shape[axis] - 1
    return matrix


# ----- wrong content ------------------------------------------------------------------------------------------


def _label_map(folder: Path) -> Path:
    ct = reference_ct()
    labels = np.zeros(ct.shape, np.uint8)
    labels[ct > 0] = 1
    labels[ct > 200] = 2
    labels[ct < -500] = 0
    labels[(ct > -900) & (ct < -500)] = 5
    return save_nifti(folder / "segmentation.nii.gz", labels)


def _mr(folder: Path) -> Path:
    """An MR-like image: non-negative arbitrary units, no air at -1000."""
    rng = np.random.default_rng(3)
    ct = reference_ct().astype(np.float32)
    mr = np.where(ct < -500, 5.0, 300.0 + ct) + rng.gamma(2.0, 20.0, size=ct.shape)
    return save_nifti(folder / "t1.nii.gz", mr.astype(np.float32))


# ----- bad DICOM ------------------------------------------------------------------------------------------------


def write_dicom_slices(
    folder: Path,
    data: np.ndarray,
    z_positions: list[float],
    series_uid: str | None = None,
    modality: str = "CT",
) -> None:
    """One file per z slice of ``data`` (x, y, z) at ``z_positions`` mm, written with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    for index, z in enumerate(z_positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{series_uid[-8:]}_{index:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.PatientID = "phantom"
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING_MM, SPACING_MM]
        ds.SliceThickness = SPACING_MM
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(data[:, :, index].T.astype(np.int16)).tobytes()
        ds.save_as(path, enforce_file_format=True)


def _dicom_mixed_series(folder: Path) -> Path:
    ct = reference_ct()
    target = folder / "dicom_mixed"
    write_dicom_slices(target, ct, [SPACING_MM * k for k in range(ct.shape[2])])
    scout = reference_ct((44, 38, 3), seed=5)
    write_dicom_slices(target, scout, [SPACING_MM * k for k in range(3)])
    return target


def _dicom_missing_slices(folder: Path) -> Path:
    """Slices 10-14 of the series were never copied: a 15 mm hole a reader would silently close."""
    ct = reference_ct()
    kept = [k for k in range(ct.shape[2]) if not 10 <= k < 15]
    target = folder / "dicom_gap"
    write_dicom_slices(target, ct[:, :, kept], [SPACING_MM * k for k in kept])
    return target


def _dicom_single_slice(folder: Path) -> Path:
    target = folder / "dicom_single"
    write_dicom_slices(target, reference_ct()[:, :, :1], [0.0])
    return target


def _folder_without_dicom(folder: Path) -> Path:
    target = folder / "downloads"
    target.mkdir()
    (target / "readme.txt").write_text("the CT is on the other disk\n")
    return target


# ----- bad models ----------------------------------------------------------------------------------------------


class _RunsCodeWhenUnpickled:
    """Unpickling this calls Path.touch(marker): the marker file proves that a loader executed the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return (Path.touch, (self.marker,))


def model_folder(folder: Path) -> Path:
    """A good tiny model (nnU-Net results folder) under ``folder``."""
    return write_tiny_model(folder / "model")


def _checkpoint(model: Path) -> Path:
    return model / "fold_0" / "checkpoint_final.pth"


def _model_without_plans(folder: Path) -> Path:
    model = model_folder(folder)
    (model / "plans.json").unlink()
    return model


def _model_without_checkpoint(folder: Path) -> Path:
    model = model_folder(folder)
    _checkpoint(model).unlink()
    return model


def _plans_not_matching(folder: Path) -> Path:
    model = model_folder(folder)
    (model / "plans.json").write_text(json.dumps(tiny_plans(features=(8, 16, 24))))
    return model


def _plans_not_json(folder: Path) -> Path:
    model = model_folder(folder)
    (model / "plans.json").write_text('{"configurations": {"3d_fullres": ')
    return model


def _dataset_json_not_json(folder: Path) -> Path:
    model = model_folder(folder)
    (model / "dataset.json").write_text("labels: liver=1, spleen=2\n")
    return model


def _dataset_json_a_list(folder: Path) -> Path:
    model = model_folder(folder)
    (model / "dataset.json").write_text(json.dumps([{"liver": 1}, {"spleen": 2}]))
    return model


def _plans_naming_a_callable(folder: Path) -> Path:
    model = model_folder(folder)
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (model / "plans.json").write_text(json.dumps(plans))
    return model


def _truncated_checkpoint(folder: Path) -> Path:
    model = model_folder(folder)
    raw = _checkpoint(model).read_bytes()
    _checkpoint(model).write_bytes(raw[: len(raw) // 3])
    return model


def _zero_byte_checkpoint(folder: Path) -> Path:
    model = model_folder(folder)
    _checkpoint(model).write_bytes(b"")
    return model


def _checkpoint_without_weights(folder: Path) -> Path:
    model = model_folder(folder)
    torch.save({"trainer_name": "nnUNetTrainer", "current_epoch": 3}, _checkpoint(model))
    return model


def _hostile_torch_checkpoint(folder: Path) -> Path:
    model = model_folder(folder)
    weights = torch.load(_checkpoint(model), weights_only=True)["network_weights"]
    hostile = {"network_weights": weights, "trainer_name": _RunsCodeWhenUnpickled(folder / CODE_RAN_MARKER)}
    torch.save(hostile, _checkpoint(model))
    return model


def _hostile_plain_pickle(folder: Path) -> Path:
    model = model_folder(folder)
    hostile = {"network_weights": {}, "payload": _RunsCodeWhenUnpickled(folder / CODE_RAN_MARKER)}
    _checkpoint(model).write_bytes(pickle.dumps(hostile))
    return model


def _labels_disagree(folder: Path) -> Path:
    model = model_folder(folder)
    (model / "dataset.json").write_text(json.dumps(tiny_dataset_json({"background": 0, "liver": 1})))
    return model


def _region_labels(folder: Path) -> Path:
    model = model_folder(folder)
    labels = {"background": 0, "liver": 1, "whole_abdomen": [1, 2]}
    (model / "dataset.json").write_text(json.dumps(tiny_dataset_json(labels)))  # type: ignore[arg-type]
    return model


def _missing_model_folder(folder: Path) -> Path:
    return folder / "no-such-model"


# ----- the corpus -----------------------------------------------------------------------------------------------


def _volume(name: str, build: Callable[[Path], Path], expected: Refused | Accepted) -> BadInput:
    return BadInput(name, "volume", build, expected)


def _model(name: str, build: Callable[[Path], Path], expected: Refused | Accepted) -> BadInput:
    return BadInput(name, "model", build, expected)


CASES: tuple[BadInput, ...] = (
    # damaged files
    _volume("truncated_gzip", _truncated_gzip, Refused(CorruptVolumeError, r"damaged or truncated")),
    _volume("truncated_nii", _truncated_uncompressed, Refused(CorruptVolumeError, r"damaged or truncated")),
    _volume("zero_byte", _zero_byte, Refused(CorruptVolumeError, r"empty file \(0 bytes\)")),
    _volume("png_renamed", _png_renamed, Refused(NotAnImageError, r"is a PNG image, not a NIfTI")),
    _volume("gzipped_text", _gzipped_text, Refused(NotAnImageError, r"not a NIfTI image")),
    _volume("wrong_extension", _wrong_extension, Refused(NotAnImageError, r"not a NIfTI file")),
    _volume("missing_file", _missing_file, Refused(NotAnImageError, r"does not exist")),
    # wrong shapes and values
    _volume("two_d", _two_d, Refused(NotThreeDError, r"2D image")),
    _volume("four_d", _four_d, Refused(NotThreeDError, r"4 dimensions")),
    _volume("all_nan", _all_nan, Refused(NonFiniteError, r"NaN or infinite")),
    _volume("inf_values", _inf_values, Refused(NonFiniteError, r"NaN or infinite")),
    _volume("int8", _int8, Accepted(warning=r"no air-like values")),
    _volume("one_slice", _one_slice, Refused(NotThreeDError, r"2D image")),
    _volume("4000x4000x1", _huge_single_slice, Refused(NotThreeDError, r"2D image")),
    _volume("constant", _constant, Refused(EmptyVolumeError, r"single value")),
    _volume("no_voxels", _no_voxels, Refused(EmptyVolumeError, r"no voxels")),
    # wrong geometry
    _volume("spacing_100mm", _spacing_100mm, Refused(SpacingError, r"above 50 mm")),
    _volume("zero_pixdim", _zero_pixdim, Refused(SpacingError, r"zero voxel spacing")),
    _volume("singular_affine", _singular_affine, Refused(SpacingError, r"zero voxel spacing")),
    _volume("nan_affine", _nan_affine, Refused(SpacingError, r"non-finite affine")),
    _volume("sheared_affine", _sheared, Accepted(warning=r"not orthogonal .*gantry tilt")),
    _volume(
        "lps_flip",
        _lps_flip,
        Accepted(to_reference=lambda labels: np.flip(labels, (0, 1))),
    ),
    _volume(
        "permuted_axes",
        _permuted_axes,
        Accepted(to_reference=lambda labels: np.flip(labels.transpose(1, 2, 0), 2)),
    ),
    # wrong content
    _volume("label_map_as_ct", _label_map, Refused(LabelMapError, r"looks like a label map")),
    _volume("mr_volume", _mr, Accepted(warning=r"MR .*CT model")),
    # bad DICOM
    _volume(
        "dicom_mixed_series", _dicom_mixed_series, Accepted(warning=r"2 DICOM series; using the largest")
    ),
    _volume("dicom_missing_slices", _dicom_missing_slices, Refused(CorruptVolumeError, r"missing slices")),
    _volume("dicom_single_slice", _dicom_single_slice, Refused(NotThreeDError, r"single slice")),
    _volume("folder_without_dicom", _folder_without_dicom, Refused(NotAnImageError, r"no DICOM series")),
    # bad models
    _model("model_without_plans", _model_without_plans, Refused(MODEL_ERRORS, r"plans\.json")),
    _model("model_without_checkpoint", _model_without_checkpoint, Refused(MODEL_ERRORS, r"checkpoint_final")),
    _model("missing_model_folder", _missing_model_folder, Refused(MODEL_ERRORS, r"does not exist")),
    _model("plans_not_matching", _plans_not_matching, Refused(MODEL_ERRORS, r"does not match plans\.json")),
    _model("plans_not_json", _plans_not_json, Refused(MODEL_ERRORS, r"plans\.json .*not valid JSON")),
    _model(
        "dataset_json_not_json",
        _dataset_json_not_json,
        Refused(MODEL_ERRORS, r"dataset\.json .*not valid JSON"),
    ),
    _model(
        "dataset_json_a_list", _dataset_json_a_list, Refused(MODEL_ERRORS, r"dataset\.json holds a JSON list")
    ),
    _model(
        "plans_name_a_callable",
        _plans_naming_a_callable,
        Refused(MODEL_ERRORS, r"not a known nnU-Net network"),
    ),
    _model("truncated_checkpoint", _truncated_checkpoint, Refused(MODEL_ERRORS, r"damaged")),
    _model("zero_byte_checkpoint", _zero_byte_checkpoint, Refused(MODEL_ERRORS, r"damaged")),
    _model(
        "checkpoint_without_weights", _checkpoint_without_weights, Refused(MODEL_ERRORS, r"network_weights")
    ),
    _model("hostile_torch_checkpoint", _hostile_torch_checkpoint, Refused(MODEL_ERRORS, r"refused to load")),
    _model("hostile_plain_pickle", _hostile_plain_pickle, Refused(MODEL_ERRORS, r"refused to load")),
    _model(
        "labels_disagree", _labels_disagree, Refused(MODEL_ERRORS, r"lists 2 labels .* outputs 3 channels")
    ),
    _model("region_labels", _region_labels, Refused(MODEL_ERRORS, r"region-based labels")),
)

CASES_BY_NAME: dict[str, BadInput] = {case.name: case for case in CASES}


def build_case(case: BadInput, root: Path) -> Path:
    """Build ``case`` in its own folder under ``root``; return the path a user would open."""
    folder = root / case.name
    folder.mkdir(parents=True, exist_ok=True)
    return case.build(folder)
