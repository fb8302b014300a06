"""distil --target: students at a budget's per-layer ranks (tiny model, seconds), carried through the config,
checkpoints, the saved folder (which segment --model runs) and Recover in the session (demo organs)."""

from __future__ import annotations

import json
import threading

import nibabel as nib
import numpy as np
import pytest

from tiny_model import write_tiny_model
from tuckerscope.core.cli import main as cli
from tuckerscope.core.cohorts import tasks as cohort_tasks
from tuckerscope.core.compression.budgets import solve_budget
from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.pruning import prune_to_match
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.distillation.data import Scan, ScanSource
from tuckerscope.core.distillation.distiller import DistilConfig, Distiller, checkpoint_ranks
from tuckerscope.core.distillation.saving import save_distilled
from tuckerscope.core.distillation.students import make_student
from tuckerscope.core.models.model_folder import load_expert, spec_from_folder
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation.expert_run import expert_engine

PATCH = (16, 16, 16)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), seed=3)


@pytest.fixture(scope="module")
def expert(model_folder):
    return load_expert(spec_from_folder(model_folder))


@pytest.fixture(scope="module")
def engine(expert):
    return expert_engine(expert)


def synthetic_ct(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(40, 30, (28, 26, 24))
    data[:, :3] = -1000
    data[8:16, 8:14] += 120
    return data.astype(np.float32)


def one_scan() -> ScanSource:
    return ScanSource("1 synthetic CT", ("ct 0",), lambda i: Scan("ct 0", synthetic_ct(0), AFFINE))


def target_config(**changes) -> DistilConfig:
    settings = {"target": "params=10x", "steps": 1, "patch_size": PATCH, "patches_per_scan": 1, **changes}
    return DistilConfig(**settings)


@pytest.fixture
def ct(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(synthetic_ct(0), AFFINE), path)
    return path


def distil(*argv: str) -> int:
    return cli.main(["distil", *argv])


def saved_ratio(folder, engine) -> float:
    """Parameters of the original over those of the saved network, counted as compress counts them."""
    manifest = json.loads((folder / "tucker_compression.json").read_text())
    ranks = {name: tuple(entry["ranks"]) for name, entry in manifest["layers"].items()}
    return count_network(engine).params / count_network(engine, ranks).params


def test_cli_target_writes_a_folder_at_the_ratio_that_segment_runs(model_folder, engine, ct, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(model_folder), "--target", "params=10x", "--data", str(ct), "--steps", "2"]
    assert distil(*argv, "--patch", "16,16,16", "-o", str(out), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    entry = report["experts"]["tiny"]
    assert entry["student"]["target"] == "params=10x" and entry["student"]["df"] is None
    assert entry["student"]["setting"] == "target params=10x"
    assert report["target"]["spec"] == "params=10x" and report["target"]["scopes"][0]["met"]
    folder = next(p.parent for p in out.rglob("plans.json"))
    manifest = json.loads((folder / "tucker_compression.json").read_text())
    assert manifest["target"] == "params=10x" and manifest["df"] is None
    assert manifest["setting"] == "target params=10x"
    assert saved_ratio(folder, engine) == pytest.approx(10.0, rel=0.01)
    reloaded = load_expert(spec_from_folder(folder))
    assert any(isinstance(m, TuckerConv) for m in reloaded.network.modules())
    segmented = tmp_path / "seg.nii.gz"
    assert cli.main(["segment", "-i", str(ct), "-o", str(segmented), "--model", str(out), "--quiet"]) == 0
    assert nib.load(segmented).shape == synthetic_ct(0).shape


def test_cli_text_names_the_target_and_resume_keeps_its_ranks(model_folder, ct, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--model", str(model_folder), "--target", "params=10x", "--data", str(ct), "--patch", "16,16,16"]
    assert distil(*base, "--steps", "1", "--expert", "tiny", "-o", str(out)) == 0
    text = capsys.readouterr().out
    assert "tiny: tucker target params=10x (" in text and "DF" not in text.split("saved to")[0]
    assert "params 10x asked" in text
    checkpoint = tmp_path / "out.checkpoints" / "tiny.pth"
    assert checkpoint_ranks(checkpoint, "params=10x") is not None
    assert checkpoint_ranks(checkpoint, "params=5x") is None
    assert distil(*base, "--steps", "2", "--resume", str(checkpoint), "-o", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out)["experts"]["tiny"]["steps"] == 2  # one more on top of one


def test_cli_bad_targets_are_one_line_errors_and_write_nothing(model_folder, ct, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--model", str(model_folder), "--data", str(ct), "--steps", "2", "--patch", "16,16,16", "-o", str(out)]
    cases = [
        (["--target", "params=1000x"], "cannot be met"),
        (["--target", "params=10x", "--df", "0.3"], "not both"),
        (["--target", "params=ten"], "expected one of"),
        (["--target", "params=10x", "--expert", "liver"], "no such expert"),
        (["--target", "params=3x", "--assistant", "0.05"], "no larger than"),
    ]
    for extra, message in cases:
        assert distil(*base, *extra) == 2, extra
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
    assert not out.exists()


def test_a_student_at_a_targets_ranks_and_pruning_matched_to_it(expert, engine, tmp_path):
    ranks = solve_budget({"tiny": engine}, "params=10x").experts["tiny"].ranks
    tucker = make_student(engine, "tucker", ranks=ranks, target="params=10x")
    assert tucker.compression_ratio == pytest.approx(10.0, rel=0.01) and tucker.df is None
    pruned = make_student(engine, "prune", ranks=ranks, target="params=10x")
    assert pruned.params_compressed == prune_to_match(engine, ranks).cost.params <= tucker.params_compressed
    result = Distiller(expert, one_scan(), target_config(method="prune", ranks=ranks), engine=engine).run()
    assert result.student.params_compressed == pruned.params_compressed
    folder = save_distilled(expert, result, tmp_path / "out")
    manifest = json.loads((folder / "tucker_compression.json").read_text())
    assert manifest["compression_method"] == "prune" and manifest["target"] == "params=10x"
    assert {k: tuple(v) for k, v in manifest["matched_tucker_ranks"].items()} == ranks
    network, params, _flops = cohort_tasks._distilled(folder, engine)  # cohort --distilled counts it like this
    assert params == pruned.params_compressed and network is not None


def test_the_distiller_solves_a_target_alone_and_checkpoints_carry_it(expert, engine, tmp_path):
    checkpoint = tmp_path / "run.pth"
    solved = Distiller(expert, one_scan(), target_config(checkpoint_path=checkpoint), engine=engine)
    assert solved.config.ranks == solve_budget({"tiny": engine}, "params=10x").experts["tiny"].ranks
    result = solved.run()
    assert result.stages[0].setting == "target params=10x" and result.summary()["student"]["target"] == "params=10x"
    assert checkpoint_ranks(checkpoint, "params=10x") == solved.config.ranks
    more = target_config(steps=2, ranks=solved.config.ranks, checkpoint_path=checkpoint)
    assert len(Distiller(expert, one_scan(), more, engine=engine).run(resume=checkpoint).records) == 2
    other = Distiller(expert, one_scan(), target_config(target="params=5x", steps=2), engine=engine)
    with pytest.raises(UserError, match="another run"):
        other.run(resume=checkpoint)


def test_assistants_given_as_dfs_stay_dfs_before_a_target(expert, engine):
    result = Distiller(expert, one_scan(), target_config(assistant_dfs=(0.6,), steps=2), engine=engine).run()
    assert [s.setting for s in result.stages] == ["DF 0.6", "target params=10x"]
    assert [s.teacher for s in result.stages] == ["original", "assistant DF 0.6"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"df": 0.3}, "exactly one compression"),
        ({"target": None}, "exactly one compression"),
        ({"target": "params=1000x"}, "cannot be met"),
        ({"target": None, "df": 0.3, "ranks": {"x": (8, 8)}}, "come with the target"),
        ({"ranks": {"x": (8, 8)}}, "no ranks for layer"),
    ],
)
def test_bad_target_settings_are_refused_before_any_work(expert, engine, changes, message):
    with pytest.raises(UserError, match=message):
        Distiller(expert, one_scan(), target_config(**changes), engine=engine)


def test_recover_distils_an_experts_target_setting(tmp_path):
    from tuckerscope.core.session.jobs import budget_job
    from tuckerscope.core.session.loading import load_models, make_phantom_case
    from tuckerscope.core.session.recovery import RecoverySettings, recovery_job
    from tuckerscope.core.session.session import Session

    demo = load_models("demo")
    session = Session()
    case = make_phantom_case(7)
    session.set_volume(case.volume, case.segmenter)
    session.set_experts(demo.experts, demo.name, demo.source, {})
    session.set_target("organs", "params=10x")
    never = threading.Event()
    assert session.apply_budget(budget_job(session, "organs")(lambda f, m: None, never))
    # two crops: the teacher's pass over a cover of the whole CT is not what this is about
    settings = RecoverySettings(minutes=None, steps=1, patch_cap=32, phantoms=0, coverage=0.0)
    run, _, _ = recovery_job(session, "organs", settings, tmp_path)
    result = run(lambda f, m: None, lambda s: None, never)
    student = result.summary["student"]
    assert student["target"] == "params=10x" and student["compression_ratio"] == pytest.approx(10.0, rel=0.01)
    assert session.apply_recovery(result) and session.distilled_network("organs") is result.network
