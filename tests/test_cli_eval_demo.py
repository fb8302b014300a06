"""`eval` and `report` on a fresh demo phantom with the shipped demo experts (skipped until they ship)."""

from __future__ import annotations

import json
import re

import pytest

from tuckerscope.core.cli.main import main
from tuckerscope.core.models.model_folder import find_result_folders
from tuckerscope.resources import DEMO_MODELS_DIR

pytestmark = pytest.mark.skipif(
    not (DEMO_MODELS_DIR.is_dir() and find_result_folders(DEMO_MODELS_DIR)),
    reason="no demo models shipped yet",
)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """A phantom none of the demo experts trained on, saved as `demo --save-phantom` saves it: its 40 fine
    labels in its own numbering, with label tables naming them."""
    from tuckerscope.core.cli.demo import _save_phantom
    from tuckerscope.core.imaging.phantom import make_phantom

    folder = tmp_path_factory.mktemp("phantom")
    _save_phantom(make_phantom(31_337), folder)
    (folder / "phantom_ct.nii.gz").rename(folder / "ct.nii.gz")
    return folder


def test_eval_on_the_demo_phantom(phantom_files, capsys):
    code = main(
        ["eval", "-i", str(phantom_files / "ct.nii.gz"), "--model", "demo", "--df", "0.5",
         "--gt", str(phantom_files / "phantom_labels.nii.gz"), "--json", "--quiet"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    truth = metrics["original_vs_ground_truth"]
    # the demo experts are trained to Dice >= 0.9 on held-out phantoms: the original side must show it, for
    # skeleton and vessels too, whose classes are unions of the phantom's fine ones (vertebrae_L4 ...)
    assert set(truth["experts"]) == {"organs", "skeleton", "vessels"}
    for expert, summary in truth["experts"].items():
        assert summary["mean_dice"] > 0.85, (expert, summary)
    assert truth["not_in_reference"] == []
    assert "ground truth classes merged by name: vertebrae = 9 classes" in err
    assert metrics["compressed_vs_original"]["classes"]


def test_report_on_the_demo_phantom(phantom_files, capsys, tmp_path):
    output = tmp_path / "demo_report.html"
    code = main(
        ["report", "-i", str(phantom_files / "ct.nii.gz"), "--model", "demo", "--df", "0.2",
         "--gt", str(phantom_files / "phantom_labels.nii.gz"), "-o", str(output), "--quiet"]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0, err
    text = output.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)
    assert "compressed vs ground truth" in text and "Explained variance per layer" in text
