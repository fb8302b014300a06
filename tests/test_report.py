"""The HTML report is one self-contained file: every figure inline, nothing fetched from anywhere."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest

from tuckerscope.core.evaluation.metrics import ClassRef, compare, evaluate
from tuckerscope.core.evaluation.sweep import RunCost, SweepPoint, SweepResult
from tuckerscope.core.outputs.report import (
    LayerHeatmap,
    ReportContent,
    display_slice,
    pick_snapshots,
    to_ras,
    write_report,
)

CLASSES = [ClassRef(1, "liver", "organs"), ClassRef(2, "spleen", "organs"), ClassRef(3, "rib_left_1", "ribs")]


class LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster") and value is not None:
                self.references.append((tag, name, value))


def phantom():
    ct = np.full((24, 20, 16), -1000.0)
    ct[4:20, 3:17, 2:14] = 40.0
    original = np.zeros(ct.shape, np.uint8)
    original[6:12, 5:10, 4:10] = 1
    original[14:18, 10:15, 5:9] = 2
    original[5:7, 14:16, 3:12] = 3
    compressed = original.copy()
    compressed[14:18, 10:15, 5:9] = 0
    compressed[15:19, 10:15, 5:9] = 2
    return ct, original, compressed


def sweep_result(original, compressed):
    result = SweepResult(
        grid=(0.5, 0.1), tolerance_mm=3.0, originals={"organs": RunCost(1_000_000, 10**9, 2.0)}
    )
    for df, labels, seconds in ((0.5, original, 1.5), (0.1, compressed, 1.0)):
        comparison = compare(original, labels, (1, 1, 1), CLASSES[:2])
        result.points.append(
            SweepPoint("organs", df, RunCost(int(1e6 * df), int(1e9 * df), seconds), comparison)
        )
    return result


@pytest.fixture()
def report_html(tmp_path):
    ct, original, compressed = phantom()
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])  # LPS-like, anisotropic
    grid = np.clip(np.add.outer(np.arange(16), np.arange(32)) / 40.0, 0, 1)
    content = ReportContent(
        title="TuckerScope report <test>",
        settings={"CT": "phantom.nii.gz", "DF": "organs=0.1", "tolerance": "3 mm"},
        counts=[{"expert": "organs", "params_original": 1_000_000, "params_compressed": 100_000}],
        timings=[
            {"expert": "organs", "original_s": 2.0, "compressed_s": 1.0, "device": "cpu", "precision": "fp32"}
        ],
        evaluation=evaluate(original, compressed, (1.5, 1.5, 3.0), CLASSES, ground_truth=original),
        heatmaps={"organs": [LayerHeatmap("encoder.stages.0.conv", grid, (8, 12))] * 3},
        sweep=sweep_result(original, compressed),
        snapshots=pick_snapshots(ct, original, compressed, affine),
        colours={1: (221, 130, 101), 2: (157, 108, 162)},
    )
    path = write_report(tmp_path / "report.html", content)
    return path.read_text(encoding="utf-8")


def test_report_is_self_contained(report_html):
    parser = LinkCollector()
    parser.feed(report_html)
    assert parser.references, "the report should embed its figures"
    for tag, attribute, value in parser.references:
        assert value.startswith("data:image/png;base64,"), f"<{tag} {attribute}> points outside: {value[:60]}"
    assert not re.search(r"https?://", report_html)
    assert "<link" not in report_html and "<script" not in report_html
    assert "@import" not in report_html and "url(" not in report_html


def test_report_holds_every_section(report_html):
    for heading in (
        "Settings",
        "Parameters and FLOPs",
        "Measured times",
        "Agreement per class",
        "DF sweep",
        "Slices: original vs compressed",
        "Explained variance per layer",
    ):
        assert f"<h2>{heading}</h2>" in report_html
    assert "TuckerScope report &lt;test&gt;" in report_html  # escaped, not markup
    assert report_html.count("data:image/png;base64,") == 1 + 3 + 1  # sweep, 3 snapshots, heatmaps
    assert "compressed vs ground truth" in report_html


def test_display_slice_is_radiological():
    volume = np.zeros((4, 5, 6))
    volume[3, 0, 5] = 1  # in RAS: most right, most posterior, most superior
    ras, spacing = to_ras(volume, np.diag([1.0, 2.0, 3.0, 1.0]))
    axial, aspect = display_slice(ras, spacing, "axial", 5)
    assert axial.shape == (5, 4) and aspect == pytest.approx(2.0)
    assert axial[-1, 0] == 1  # posterior at the bottom, patient right on screen left
    coronal, aspect = display_slice(ras, spacing, "coronal", 0)
    assert coronal[0, 0] == 1 and aspect == pytest.approx(3.0)  # head up, right on the left


def test_to_ras_undoes_a_flipped_affine():
    volume = np.arange(24).reshape(2, 3, 4)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    ras, spacing = to_ras(volume, flipped)
    np.testing.assert_array_equal(ras, volume[::-1])
    assert nib.aff2axcodes(flipped) == ("L", "A", "S")
    np.testing.assert_allclose(spacing, [1, 1, 1])
