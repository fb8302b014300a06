"""`tuckerscope eval` and `tuckerscope report` end to end on a small CT with a tiny random-weight model."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from tiny_model import write_tiny_model
from tuckerscope.core.cli.main import main
from tuckerscope.core.outputs.exports import label_styles, write_segmentation


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 3 mm 'CT' (a soft-tissue ellipsoid with a bright core in air), a tiny model and a label map."""
    root = tmp_path_factory.mktemp("case")
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (30, 28, 20)), indexing="ij")
    body = x**2 + y**2 + (z / 1.3) ** 2 < 0.8
    ct = np.where(body, 40.0, -1000.0) + np.where(x**2 + y**2 + z**2 < 0.15, 300.0, 0.0)
    ct += np.random.default_rng(0).normal(0, 10, ct.shape)
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    affine[:3, 3] = [60.0, 50.0, -30.0]
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), root / "ct.nii.gz")
    truth = np.zeros(ct.shape, np.uint8)
    truth[body] = 1
    truth[x**2 + y**2 + z**2 < 0.15] = 2
    # the truth's own numbering and names (spleen=1, liver=7), in another orientation than the CT
    flipped = np.diag([3.0, 3.0, 3.0, 1.0])
    flipped[:3, 3] = affine[:3, :3] @ (np.array(ct.shape) - 1) + affine[:3, 3]
    own = np.where(truth == 2, 1, np.where(truth == 1, 7, 0)).astype(np.uint8)[::-1, ::-1]
    write_segmentation(root / "truth.nii.gz", own, flipped, label_styles({1: "spleen", 7: "liver"}))
    write_segmentation(root / "coarse.nii.gz", truth[::2], affine @ np.diag([2, 1, 1, 1]), label_styles({1: "liver"}))
    nib.save(nib.Nifti1Image(truth, affine), root / "unnamed.nii.gz")
    write_segmentation(root / "others.nii.gz", truth, affine, label_styles({1: "brain", 2: "lung_left"}))
    write_tiny_model(root / "models", seed=3)
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_with_ground_truth(case, capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "eval", "-i", case / "ct.nii.gz", "--model", case / "models", "--df", "0.3", "--gt", case / "truth.nii.gz",
        "--json", "--quiet", "--export", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["experts"]["tiny"]["df"] == 0.3
    assert result["experts"]["tiny"]["params_compressed"] < result["experts"]["tiny"]["params_original"]
    metrics = result["metrics"]
    assert set(metrics) == {
        "compressed_vs_original",
        "original_vs_ground_truth",
        "compressed_vs_ground_truth",
    }
    for comparison in metrics.values():
        assert comparison["tolerance_mm"] == 3.0
        names = [c["name"] for c in comparison["classes"]] + comparison["excluded"]
        assert sorted(names) == ["liver", "spleen"]
        for c in comparison["classes"]:
            assert 0.0 <= c["dice"] <= 1.0 and 0.0 <= c["nsd"] <= 1.0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "ct_compressed.nii.gz" in written and "ct_metrics.csv" in written and "ct_original.ctbl" in written
    exported = nib.load(tmp_path / "ct_compressed.nii.gz")
    np.testing.assert_allclose(exported.affine, nib.load(case / "ct.nii.gz").affine)
    model = tmp_path / "ct_compressed_models" / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert json.loads((model / "tucker_compression.json").read_text())["layers"]
    assert (model / "fold_0" / "checkpoint_final.pth").is_file() and (model / "plans.json").is_file()


def test_eval_ground_truth_matched_by_name_on_another_grid(case, capsys):
    """A coarser ground truth naming only 'liver' is resampled (said so) and scores liver alone, no Dice 0 rows."""
    code, out, err = run_cli(
        capsys,
        "eval", "-i", case / "ct.nii.gz", "--model", case / "models", "--df", "0.3", "--gt", case / "coarse.nii.gz",
        "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "resampled onto the CT's grid by nearest neighbour" in err
    assert "not scored against it: spleen" in err
    truth = json.loads(out)["metrics"]["original_vs_ground_truth"]
    assert [c["name"] for c in truth["classes"]] + truth["excluded"] == ["liver"]
    assert truth["not_in_reference"] == ["spleen"]


def test_eval_prunes_at_the_tucker_parameter_count(case, capsys):
    sizes = {}
    for method in ("tucker", "prune"):
        code, out, err = run_cli(
            capsys, "eval", "-i", case / "ct.nii.gz", "--model", case / "models", "--df", "0.3",
            "--method", method, "--json", "--quiet",
        )  # fmt: skip
        assert code == 0, err
        sizes[method] = json.loads(out)["experts"]["tiny"]
    tucker, pruned = sizes["tucker"], sizes["prune"]
    assert pruned["method"] == "prune" and tucker["method"] == "tucker"
    assert 0.85 * tucker["params_compressed"] <= pruned["params_compressed"] <= tucker["params_compressed"]
    for entry in sizes.values():  # fvcore's total (convs and norms) beside the conv-only figure
        assert entry["flops_original"] > entry["conv_flops_original"] > entry["conv_flops_compressed"] > 0


def test_eval_text_summary(case, capsys):
    code, out, err = run_cli(
        capsys, "eval", "-i", case / "ct.nii.gz", "--model", case / "models", "--df", "0.2"
    )
    assert code == 0, err
    assert "tiny: DF 0.2, params" in out and "(conv only" in out
    assert re.search(r"compressed vs original \(NSD tolerance 3 mm", out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--df", "1.5"], "--df '1.5': DF must be between"),
        ([], "give at least one --df"),
        (["--df", "0.3", "--gt", "unnamed.nii.gz"], "carries no class names"),
        (["--df", "0.3", "--gt", "others.nii.gz"], "none of the 2 classes of ground truth others.nii.gz"),
        (["--df", "0.3", "--gt", "absent.nii.gz"], "does not exist"),
        (["--df", "0.3", "--tolerance", "-1"], "--tolerance"),
        (["--df", "nosuchexpert=0.3"], "no expert named 'nosuchexpert'"),
    ],
)
def test_eval_bad_input_is_one_line(case, capsys, extra, message):
    extra = [str(case / a) if a.endswith(".nii.gz") else a for a in extra]
    code, out, err = run_cli(capsys, "eval", "-i", case / "ct.nii.gz", "--model", case / "models", *extra)
    assert code == 2
    assert err.startswith("tuckerscope: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_report_is_written_and_self_contained(case, capsys, tmp_path):
    output = tmp_path / "report.html"
    code, out, err = run_cli(
        capsys,
        "report", "-i", case / "ct.nii.gz", "--model", case / "models", "--df", "0.3", "--sweep", "0.5,0.2",
        "-o", output, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    text = output.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)
    for heading in (
        "Parameters and FLOPs",
        "Measured times",
        "Agreement per class",
        "DF sweep",
        "Explained variance",
    ):
        assert heading in text
    assert text.count("data:image/png;base64,") >= 4
    assert "0.5, 0.2 (tucker, prune)" in text  # the sweep ran the pruning baseline too


def test_report_refuses_a_missing_folder(case, capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "report", "-i", case / "ct.nii.gz", "--model", case / "models", "--df", "0.3",
        "-o", tmp_path / "nowhere" / "r.html",
    )  # fmt: skip
    assert code == 2 and "does not exist" in err
