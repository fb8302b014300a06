"""`tuckerscope demo`: the headless first run segments a fresh phantom with every demo expert and reports Dice."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np

from tuckerscope.core.cli import main as cli
from tuckerscope.core.imaging.phantom import make_phantom
from tuckerscope.core.models.model_folder import find_result_folders
from tuckerscope.resources import DEMO_MODELS_DIR


def test_demo_reports_every_expert_and_class(capsys, tmp_path):
    assert cli.main(["demo", "--seed", "4321", "--save-phantom", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for folder in find_result_folders(DEMO_MODELS_DIR):
        labels = json.loads((folder / "dataset.json").read_text())["labels"]
        for name in labels:
            if name != "background":
                assert re.search(rf"^\s+{name}\s+\d\.\d{{3}}\s+\d\.\d{{3}}$", out, re.MULTILINE), name
    assert len(re.findall(r"whole phantom segmented in \d+\.\d s", out)) == 3
    saved = nib.load(tmp_path / "phantom_ct.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), make_phantom(4321).ct)
    assert (tmp_path / "phantom_labels.nii.gz").is_file()
    table = (tmp_path / "phantom_labels_itksnap_labels.txt").read_text()  # eval --gt matches by these names
    assert '"vertebrae_L4"' in table and '"rib_left_8"' in table


def test_demo_rejects_a_negative_seed_in_one_line(capsys):
    assert cli.main(["demo", "--seed", "-3"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.strip() == "tuckerscope: error: --seed must be a non-negative integer, got -3"
