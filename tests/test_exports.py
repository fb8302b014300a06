"""Exported files parse back the way ITK-SNAP and 3D Slicer read them, and failed exports leave nothing."""

from __future__ import annotations

import errno
import os
import shlex

import nibabel as nib
import numpy as np
import pytest

from tuckerscope.core.outputs import exports
from tuckerscope.core.outputs.exports import (
    ExportError,
    LabelStyle,
    csv_text,
    label_styles,
    write_csv,
    write_folder,
    write_segmentation,
    write_text,
)

STYLES = [
    LabelStyle(1, "liver", (221, 130, 101)),
    LabelStyle(2, "rib left 1", (10, 20, 30)),
    LabelStyle(117, 'odd "quoted" name', (1, 2, 3)),
]


def read_itksnap(text):
    """Parse as ITK-SNAP's ColorLabelTable::LoadFromFile does: IDX R G B A VIS MSH, then a quoted label."""
    table = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, rest = line.partition('"')
        idx, r, g, b, a, vis, msh = head.split()
        assert rest.endswith('"') and rest.count('"') == 1
        table[int(idx)] = ((int(r), int(g), int(b)), float(a), int(vis), int(msh), rest[:-1])
    return table


def read_slicer(text):
    """Parse as Slicer's vtkMRMLColorTableStorageNode does: `index name R G B A`, '#' lines skipped."""
    lines = text.splitlines()
    assert lines[0].startswith("# Color table file ")
    rows = [line for line in lines if line and line[0] != "#"]
    assert lines[1] == f"# {len(rows)} values"
    table = {}
    for line in rows:
        idx, name, r, g, b, a = line.split()
        table[int(idx)] = (name, (int(r), int(g), int(b)), int(a))
    return table


def oblique_grid(shape=(12, 10, 8)):
    """A non-canonical input grid (flipped axes, anisotropic, rotated) to show the export keeps it."""
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = [-120.5, 40.25, 310.0]
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=2)
    header.set_xyzt_units("mm", "sec")
    return affine, header


def labels_on(shape=(12, 10, 8)):
    labels = np.zeros(shape, np.int16)
    labels[2:5, 3:6, 1:4] = 1
    labels[6:9, 1:3, 4:7] = 2
    labels[0, 0, 0] = 117
    return labels


def test_itksnap_file_parses_back_with_names_and_colours(tmp_path):
    files = write_segmentation(tmp_path / "seg.nii.gz", labels_on(), oblique_grid()[0], STYLES)
    assert files.itksnap_labels.name == "seg_itksnap_labels.txt"
    table = read_itksnap(files.itksnap_labels.read_text())
    assert table[0] == ((0, 0, 0), 0.0, 0, 0, "Clear Label")
    assert table[1] == ((221, 130, 101), 1.0, 1, 1, "liver")
    assert table[2][4] == "rib left 1"  # ITK-SNAP labels may hold spaces
    assert table[117][4] == "odd 'quoted' name"  # a double quote would end the label early
    header = files.itksnap_labels.read_text().splitlines()[3]
    assert header.split() == ["#", "IDX", "-R-", "-G-", "-B-", "-A--", "VIS", "MSH", "LABEL"]


def test_slicer_colour_table_parses_back(tmp_path):
    files = write_segmentation(tmp_path / "seg.nii.gz", labels_on(), oblique_grid()[0], STYLES)
    assert files.slicer_colour_table.name == "seg.ctbl"
    table = read_slicer(files.slicer_colour_table.read_text())
    assert table[0] == ("Background", (0, 0, 0), 0)
    assert table[1] == ("liver", (221, 130, 101), 255)
    assert table[2][0] == "rib_left_1"  # Slicer names carry no whitespace
    assert sorted(table) == [0, 1, 2, 117]


def test_nifti_round_trip_keeps_the_input_grid(tmp_path):
    affine, header = oblique_grid()
    labels = labels_on()
    files = write_segmentation(tmp_path / "seg.nii.gz", labels, affine, STYLES, reference_header=header)
    image = nib.load(files.nifti)
    assert image.shape == labels.shape
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), labels)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 2
    assert image.header.get_intent()[0] == "label"
    assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(affine)


def test_large_label_values_use_16_bit(tmp_path):
    labels = labels_on()
    labels[1, 1, 1] = 300
    path = write_segmentation(tmp_path / "seg.nii", labels, np.eye(4), STYLES).nifti
    assert nib.load(path).get_data_dtype() == np.uint16


def test_ts_names_get_ts_colours():
    from totalsegmentator.dicom_utils import load_color_mapping

    styles = label_styles({1: "liver", 2: "aorta", 3: "not_a_ts_class"})
    assert styles[0].rgb == tuple(load_color_mapping()["liver"])
    assert styles[1].rgb == tuple(load_color_mapping()["aorta"])
    assert styles[2].rgb == exports.fallback_colour(3)


def test_failed_segmentation_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(_styles, _name):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exports, "slicer_colour_table_text", fail)
    with pytest.raises(ExportError, match="No space left on device; nothing was written"):
        write_segmentation(tmp_path / "seg.nii.gz", labels_on(), np.eye(4), STYLES)
    assert os.listdir(tmp_path) == []  # neither the finished NIfTI nor any temporary file


def test_failed_overwrite_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    target.write_text("old,content\n")

    def fail(path):  # the temporary file is complete, then the disk fails while flushing it
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(exports, "flush_to_disk", fail)
    with pytest.raises(ExportError, match=f"could not write {target}: Input/output error"):
        write_csv(target, [{"a": 1}])
    assert target.read_text() == "old,content\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        write_text(tmp_path / "nowhere" / "report.html", "<html></html>")


def test_written_files_honour_the_umask(tmp_path):
    path = write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_folder_export_is_swapped_in_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.json").write_text("{}")

    def broken(folder):
        (folder / "plans.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ExportError):
        write_folder(target, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in target.iterdir()] == ["old.json"]

    write_folder(target, lambda folder: (folder / "plans.json").write_text("{}"))
    assert [p.name for p in target.iterdir()] == ["plans.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_csv_quotes_and_blank_nans():
    text = csv_text([{"class": "a, b", "dice": float("nan")}, {"class": "c", "dice": 0.5, "nsd": 1.0}])
    lines = text.splitlines()
    assert lines[0] == "class,dice,nsd"
    assert lines[1] == '"a, b",,'
    assert shlex.split(lines[2].replace(",", " ")) == ["c", "0.5", "1"]
