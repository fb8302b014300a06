"""Volume loading: NIfTI in any orientation, DICOM series folders, and one specific error per kind of bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tuckerscope.core.imaging.volume import (
    CorruptVolumeError,
    EmptyVolumeError,
    LabelMapError,
    NonFiniteError,
    NotAnImageError,
    NotThreeDError,
    SpacingError,
    load_volume,
)


def ct_like(shape=(20, 18, 16), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(40, 30, size=shape)
    data[:3] = -1000
    return data.astype(np.int16)


def save(tmp_path: Path, data: np.ndarray, name: str = "ct.nii.gz", affine: np.ndarray | None = None) -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path)
    return path


def test_nifti_loads_as_ct_with_its_grid(tmp_path):
    data = ct_like()
    volume = load_volume(save(tmp_path, data))
    assert volume.shape == data.shape
    assert volume.modality == "CT"
    assert volume.spacing == pytest.approx((1.5, 1.5, 3.0))
    np.testing.assert_array_equal(volume.data, data.astype(np.float32))
    assert volume.warnings == []


def test_any_orientation_keeps_the_file_grid(tmp_path):
    affine = np.array([[0, 0, -2.0, 10], [-1.0, 0, 0, 5], [0, 1.2, 0, -3], [0, 0, 0, 1]])
    volume = load_volume(save(tmp_path, ct_like(), affine=affine))
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.axis_codes == ("P", "S", "L")


def test_example_ct_loads(example_ct):
    volume = load_volume(example_ct)
    assert volume.shape == (122, 101, 30)
    assert volume.modality == "CT"


def test_trailing_singleton_axis_is_squeezed(tmp_path):
    volume = load_volume(save(tmp_path, ct_like()[..., None]))
    assert volume.shape == (20, 18, 16)


@pytest.mark.parametrize("shape", [(20, 18), (20, 18, 1), (20, 18, 16, 3)])
def test_not_three_d(tmp_path, shape):
    data = np.random.default_rng(1).normal(0, 300, size=shape).astype(np.int16)
    with pytest.raises(NotThreeDError, match="3D"):
        load_volume(save(tmp_path, data))


def test_constant_volume_is_empty(tmp_path):
    with pytest.raises(EmptyVolumeError, match="single value"):
        load_volume(save(tmp_path, np.full((10, 10, 10), -1000, np.int16)))


def test_zero_voxels_is_empty(tmp_path):
    with pytest.raises(EmptyVolumeError, match="no voxels"):
        load_volume(save(tmp_path, np.zeros((10, 10, 0), np.int16)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, bad):
    data = ct_like().astype(np.float32)
    data[5, 5, 5] = bad
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        load_volume(save(tmp_path, data))


@pytest.mark.parametrize(("zooms", "message"), [((1.0, 0.0, 1.0), "zero"), ((1.0, 1.0, 80.0), "above 50 mm")])
def test_absurd_spacing(tmp_path, zooms, message):
    image = nib.Nifti1Image(ct_like(), None)  # no sform/qform: the affine comes from pixdim alone
    path = tmp_path / "ct.nii"
    nib.save(image, path)
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.asarray(zooms, dtype="<f4").tobytes()  # pixdim[1:4]; nibabel would "fix" a zero on save
    path.write_bytes(bytes(raw))
    with pytest.raises(SpacingError, match=message):
        load_volume(path)


def test_negative_spacing_is_a_flip_not_an_error(tmp_path):
    volume = load_volume(save(tmp_path, ct_like(), affine=np.diag([-1.5, 1.5, 3.0, 1.0])))
    assert volume.spacing == pytest.approx((1.5, 1.5, 3.0))


def test_truncated_file(tmp_path):
    path = save(tmp_path, ct_like((40, 40, 40)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptVolumeError, match="damaged or truncated"):
        load_volume(path)


def test_truncated_uncompressed_file(tmp_path):
    path = save(tmp_path, ct_like((40, 40, 40)), name="ct.nii")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptVolumeError):
        load_volume(path)


def test_label_map_given_as_ct(tmp_path):
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:10, 5:10, 5:10] = 1
    labels[12:15, 3:9, 2:18] = 7
    with pytest.raises(LabelMapError, match="label map"):
        load_volume(save(tmp_path, labels))


def test_text_file_named_nifti_is_not_an_image(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"these are not voxels\n" * 40))
    with pytest.raises((NotAnImageError, CorruptVolumeError)):
        load_volume(path)


def test_other_file_type_is_not_an_image(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(NotAnImageError, match="not a NIfTI"):
        load_volume(path)


def test_missing_path(tmp_path):
    with pytest.raises(NotAnImageError, match="does not exist"):
        load_volume(tmp_path / "nope.nii.gz")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(NotAnImageError, match="no DICOM series"):
        load_volume(tmp_path)


def test_mr_like_volume_loads_with_a_warning(tmp_path):
    data = np.random.default_rng(2).gamma(2.0, 150.0, size=(20, 18, 16)).astype(np.float32)
    volume = load_volume(save(tmp_path, data))
    assert volume.modality == "MR"
    assert any("CT model" in w for w in volume.warnings)


def write_dicom_series(
    folder: Path,
    data: np.ndarray,
    series_uid: str,
    modality: str = "CT",
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    slice_step: tuple[float, float, float] = (0.0, 0.0, 2.5),
) -> None:
    """A minimal CT series (one file per z slice) written with pydicom; ``data`` is (columns, rows, slices)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(
            str(folder / f"{series_uid[-6:]}_{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128
        )
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.PatientID = "phantom"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [10.0 + slice_step[0] * k, -20.0 + slice_step[1] * k, slice_step[2] * k]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [0.8, 0.7]
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"{series_uid[-6:]}_{k:03d}.dcm", enforce_file_format=True)


def test_dicom_series_folder(tmp_path):
    from pydicom.uid import generate_uid

    data = ct_like((24, 20, 12))
    write_dicom_series(tmp_path / "dcm", data, generate_uid())
    volume = load_volume(tmp_path / "dcm")
    assert volume.shape == data.shape
    assert volume.modality == "CT"
    # DICOM rows run to the patient's posterior; TS (dicom2nifti) stores them anterior first: y is flipped.
    np.testing.assert_array_equal(volume.data, data[:, ::-1, :].astype(np.float32))
    assert volume.axis_codes == ("L", "A", "S")
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.5))


@pytest.mark.parametrize(
    ("orientation", "step"),
    [
        ((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 2.5)),  # axial, the usual LPS series
        ((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0, 0.0, -2.5)),  # rows flipped, slices head to feet
        ((1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (0.0, 2.5, 0.0)),  # coronal
    ],
    ids=["axial", "flipped", "coronal"],
)
def test_dicom_series_on_the_grid_ts_gives_it(tmp_path, orientation, step):
    """Voxel for voxel what TotalSegmentator's DICOM conversion (dicom2nifti, reorient_nifti=True) writes."""
    import dicom2nifti
    from pydicom.uid import generate_uid

    write_dicom_series(tmp_path / "dcm", ct_like((24, 20, 12)), generate_uid(), orientation=orientation, slice_step=step)
    dicom2nifti.dicom_series_to_nifti(str(tmp_path / "dcm"), str(tmp_path / "ts.nii.gz"), reorient_nifti=True)
    ts = nib.load(tmp_path / "ts.nii.gz")
    volume = load_volume(tmp_path / "dcm")
    assert volume.shape == ts.shape
    np.testing.assert_array_equal(volume.data, np.asarray(ts.dataobj, dtype=np.float32))
    np.testing.assert_allclose(volume.affine, ts.affine, atol=1e-4)


def test_mixed_dicom_series_uses_the_largest_and_says_so(tmp_path):
    from pydicom.uid import generate_uid

    write_dicom_series(tmp_path / "dcm", ct_like((24, 20, 12)), generate_uid())
    write_dicom_series(tmp_path / "dcm", ct_like((24, 20, 5), seed=3), generate_uid())
    volume = load_volume(tmp_path / "dcm")
    assert volume.shape == (24, 20, 12)
    assert any("2 DICOM series" in w for w in volume.warnings)
