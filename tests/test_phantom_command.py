"""`tuckerscope phantom`: a phantom cohort on disk, CTs and true labels named by their label tables."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tuckerscope.core.cli.main import main
from tuckerscope.core.imaging.label_maps import label_names, read_label_table
from tuckerscope.core.imaging.phantom import CLASS_NAMES, make_phantom


def test_phantom_cohort_files_and_label_tables(tmp_path, capsys):
    assert main(["phantom", "-o", str(tmp_path), "--count", "2", "--seed", "7", "--spacing", "8"]) == 0
    assert "wrote 2 phantoms (42 x 33 x 30 voxels of 8 mm)" in capsys.readouterr().out
    names = ["phantom_7", "phantom_8"]
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == [f"{n}.nii.gz" for n in names]
    for seed, name in zip((7, 8), names, strict=True):
        ct = nib.load(tmp_path / "ct" / f"{name}.nii.gz")
        labels = nib.load(tmp_path / "labels" / f"{name}.nii.gz")
        expected = make_phantom(seed, (42, 33, 30), 8.0)
        assert ct.shape == labels.shape == (42, 33, 30)
        np.testing.assert_allclose(ct.header.get_zooms(), (8.0, 8.0, 8.0))
        np.testing.assert_array_equal(np.asanyarray(labels.dataobj), expected.labels)
        np.testing.assert_allclose(ct.get_fdata(), expected.ct, atol=1e-3)
        names, source = label_names(tmp_path / "labels" / f"{name}.nii.gz")
        assert (names, source) == (CLASS_NAMES, f"label table {name}_itksnap_labels.txt")
        assert read_label_table(tmp_path / "labels" / f"{name}.ctbl") == CLASS_NAMES


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "--count must be at least 1"),
        (["--count", "1", "--spacing", "0.1"], "--spacing must be between"),
        (["--count", "1", "--seed", "-3"], "--seed must be a non-negative"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["phantom", "-o", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_subcommand_builds_its_parser_without_importing_the_others():
    code = (
        "import sys; from tuckerscope.core.cli.main import build_parser; build_parser(['phantom']); "
        "print(sorted(m for m in sys.modules if m.startswith('tuckerscope.core.cli.')), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["['tuckerscope.core.cli.main',", "'tuckerscope.core.cli.phantom']", "False"]
