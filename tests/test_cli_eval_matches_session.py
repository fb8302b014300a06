"""One pipeline: what `tuckerscope eval` prints for a CT and DF is what the window's session computes for them.

The demo phantom through the demo experts at DF 0.4, once through the CLI (eval --json) and once through the
Session as the window drives it (load_ct, load_models, set_df, the live refresh, the agreement job, the
compress jobs): the same classes with the same Dice, NSD and voxel counts, and the same counts table.
"""

from __future__ import annotations

import json
import threading

import nibabel as nib
import pytest

from tuckerscope.core.cli.main import main
from tuckerscope.core.evaluation.counts import counts_table
from tuckerscope.core.imaging.phantom import make_phantom
from tuckerscope.core.models.model_folder import find_result_folders
from tuckerscope.core.segmentation.live_segmentation import run_segmentation
from tuckerscope.core.session.jobs import compression_job
from tuckerscope.core.session.loading import load_ct, load_models
from tuckerscope.core.session.session import Session
from tuckerscope.resources import DEMO_MODELS_DIR

pytestmark = pytest.mark.skipif(
    not (DEMO_MODELS_DIR.is_dir() and find_result_folders(DEMO_MODELS_DIR)), reason="no demo models shipped"
)
DF = 0.4


def window_session(ct_path) -> Session:
    """The steps the window takes for File > Open CT, Open demo, and every slider at DF."""
    session = Session()
    case = load_ct(ct_path)
    session.set_volume(case.volume, case.segmenter)
    models = load_models("demo")
    session.set_experts(models.experts, models.name, models.source)
    for name in session.experts:
        session.set_df(name, DF)
        session.apply_compression(compression_job(session, name)())
    never = threading.Event()
    plan = session.plan_segmentation()
    assert session.apply_segmentation(run_segmentation(plan, lambda f, m: None, never, never, lambda u: None))
    session.apply_agreement(session.plan_agreement()(never))
    return session


def test_eval_prints_what_the_window_shows(tmp_path, capsys):
    ct, _ = make_phantom(5).to_nifti()
    path = tmp_path / "ct.nii.gz"
    nib.save(ct, path)
    code = main(["eval", "-i", str(path), "--model", "demo", "--df", str(DF), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out)
    session = window_session(path)

    cli = {c["name"]: c for c in printed["metrics"]["compressed_vs_original"]["classes"]}
    shown = {info.name: score for info, score in session.agreement.rows}
    assert set(cli) == set(shown) and len(shown) >= 10
    for name, score in shown.items():
        row = cli[name]
        assert (row["expert"], row["reference_voxels"], row["prediction_voxels"]) == (
            score.expert, score.reference_voxels, score.prediction_voxels,
        ), name  # fmt: skip
        assert row["dice"] == pytest.approx(score.dice, abs=1e-12), name
        assert row["nsd"] == pytest.approx(score.nsd, abs=1e-12), name
    assert any(score.dice < 1.0 for score in shown.values()), "DF 0.4 should change something"

    table = counts_table([session.sizes[name] for name in session.experts])
    assert [row["expert"] for row in table] == [*session.experts, "total"]
    for row in table[:-1]:
        expert = printed["experts"][row["expert"]]
        for key in ("params_original", "params_compressed", "flops_original", "flops_compressed"):
            assert expert[key] == row[key], (row["expert"], key)
        assert expert["df"] == row["df"] == DF
