"""A session's bundle is written as one set of files: segmentations, label tables, CSVs, models, report."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from tuckerscope.core.evaluation.metrics import ClassRef, evaluate
from tuckerscope.core.outputs import deliverables
from tuckerscope.core.outputs.deliverables import ExportBundle, safe_stem, write_bundle
from tuckerscope.core.outputs.exports import ExportError, LabelStyle


def bundle(save_models=None):
    original = np.zeros((16, 14, 10), np.uint8)
    original[3:8, 3:8, 2:6] = 1
    original[9:13, 6:11, 3:8] = 2
    compressed = original.copy()
    compressed[9:13, 6:11, 3:8] = 0
    compressed[10:14, 6:11, 3:8] = 2
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    classes = [
        ClassRef(1, "liver", "organs"),
        ClassRef(2, "spleen", "organs"),
        ClassRef(3, "aorta", "vessels"),
    ]
    return ExportBundle(
        case_name="my ct.nii.gz",
        settings={"DF": "organs=0.3"},
        affine=affine,
        styles=[LabelStyle(1, "liver", (221, 130, 101)), LabelStyle(2, "spleen", (157, 108, 162))],
        original=original,
        compressed=compressed,
        ct=np.where(original > 0, 50.0, -900.0),
        evaluation=evaluate(original, compressed, (1.5, 1.5, 3.0), classes),
        counts=[{"expert": "organs", "params_original": 100, "params_compressed": 30}],
        timings=[{"expert": "organs", "original_s": 2.0, "compressed_s": 1.2}],
        save_models=save_models,
    )


def save_models(folder):
    (folder / "organs").mkdir()
    (folder / "organs" / "ranks.json").write_text(json.dumps({"layer": [8, 8]}))


def test_bundle_writes_every_part(tmp_path):
    written = write_bundle(bundle(save_models), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in written)
    assert names == [
        "my_ct_compressed.ctbl",
        "my_ct_compressed.nii.gz",
        "my_ct_compressed_itksnap_labels.txt",
        "my_ct_compressed_models",
        "my_ct_counts.csv",
        "my_ct_metrics.csv",
        "my_ct_original.ctbl",
        "my_ct_original.nii.gz",
        "my_ct_original_itksnap_labels.txt",
        "my_ct_report.html",
        "my_ct_timings.csv",
    ]
    image = nib.load(tmp_path / "my_ct_compressed.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), bundle().compressed)
    rows = list(csv.DictReader((tmp_path / "my_ct_metrics.csv").open()))
    spleen = next(r for r in rows if r["class"] == "spleen")
    assert float(spleen["dice"]) == pytest.approx(0.75)
    assert next(r for r in rows if r["class"] == "aorta")["status"].startswith("excluded")
    assert (tmp_path / "my_ct_compressed_models" / "organs" / "ranks.json").is_file()
    assert "<h2>Slices: original vs compressed</h2>" in (tmp_path / "my_ct_report.html").read_text()


def test_a_failing_part_leaves_no_files(tmp_path, monkeypatch):
    def broken(_content):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(deliverables, "render_html", broken)
    with pytest.raises(ExportError, match="renderer crashed"):
        write_bundle(bundle(), tmp_path, parts=("segmentation", "tables", "report"))
    assert list(tmp_path.iterdir()) == []


def test_unknown_parts_and_missing_folder_are_refused(tmp_path):
    with pytest.raises(ExportError, match="unknown export part"):
        write_bundle(bundle(), tmp_path, parts=("segmentation", "movie"))
    with pytest.raises(ExportError, match="does not exist"):
        write_bundle(bundle(), tmp_path / "absent")


@pytest.mark.parametrize(
    ("name", "stem"),
    [("a/b/ct.nii.gz", "ct"), ("scan 1.nii", "scan_1"), ("DICOM folder", "DICOM_folder"), ("", "case")],
)
def test_safe_stem(name, stem):
    assert safe_stem(name) == stem
