"""Label-free distillation: students own their tensors, training is deterministic, resumable and cancellable,
pruned channels stay pruned, and `tuckerscope distil` writes a model folder that loads (tiny model, seconds)."""

from __future__ import annotations

import copy
import json
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from tiny_model import write_tiny_model
from tuckerscope.core.cli import main as cli
from tuckerscope.core.cli.distil import print_entry
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.distillation.data import Scan, ScanSource
from tuckerscope.core.distillation.distiller import DistilConfig, DistillationError, Distiller
from tuckerscope.core.distillation.losses import LossWeights
from tuckerscope.core.distillation.saving import save_distilled
from tuckerscope.core.distillation.students import make_student, trainable_copy
from tuckerscope.core.models.model_folder import load_expert, spec_from_folder
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.segmentation.expert_run import expert_engine

PATCH = (16, 16, 16)




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


def synthetic_ct(seed: int, shape: tuple[int, int, int] = (28, 26, 24)) -> np.ndarray:
    """A small CT-like volume in HU: air border, soft tissue with noise, one brighter blob."""
    rng = np.random.default_rng(seed)
    data = rng.normal(40, 30, shape)
    data[:, :3] = -1000
    data[8:16, 8:14] += 120
    return data.astype(np.float32)


def scans(count: int = 2) -> ScanSource:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    return ScanSource(
        f"{count} synthetic CTs",
        tuple(f"ct {i}" for i in range(count)),
        lambda i: Scan(f"ct {i}", synthetic_ct(i), affine),
    )


def config(**changes) -> DistilConfig:
    base = DistilConfig(df=0.3, steps=3, patch_size=PATCH, patches_per_scan=2, learning_rate=1e-3, seed=0)
    return DistilConfig(**{**base.__dict__, **changes})


def storages(network: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*network.parameters(), *network.buffers()]}


@pytest.mark.parametrize("method", ["tucker", "prune"])
def test_student_owns_its_tensors_and_trains_everything(expert, engine, method):
    student = make_student(engine, method, 0.3)
    assert not storages(student.network) & storages(expert.network)
    cache = {t.untyped_storage().data_ptr() for f in engine._factors.values() for t in (f.u_out, f.u_in_t, f.core)}
    assert not storages(student.network) & cache
    assert all(p.requires_grad for p in student.network.parameters())
    before = [p.detach().clone() for p in expert.network.parameters()]
    with torch.no_grad():
        for p in student.network.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, expert.network.parameters(), strict=True))


def test_fused_training_forward_has_the_unfused_gradients(engine):
    """The norm-fused oneDNN path the student trains in gives the same gradients as three plain convs + norm."""
    from tuckerscope.core.compression.ranks import df_ranks, ranks_of

    ranks = ranks_of(df_ranks(engine.layers, 0.3))
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    gradients = []
    for fuse in (True, False):
        network = trainable_copy(engine.compress(ranks, fuse_norm=fuse))
        network(x).square().mean().backward()
        gradients.append({n: p.grad for n, p in network.named_parameters() if p.grad is not None})
    fused, plain = gradients
    assert any(isinstance(m, TuckerConv) for m in engine.compress(ranks).modules())
    for name, grad in fused.items():
        if "conv.bias" in name:  # a bias before instance norm cancels: the fused form drops it exactly
            continue
        torch.testing.assert_close(grad, plain[name], rtol=2e-3, atol=1e-6)


def test_loss_decreases_and_the_result_reports_its_losses(expert, engine):
    result = Distiller(expert, scans(1), config(steps=8, patches_per_scan=1), engine=engine).run()
    losses = result.loss_curve()
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert result.losses_used == ("kd(T=2)", "dice_ce")
    assert result.memory.pool_bytes == result.stages[0].pool_bytes > 0
    assert result.memory.peak_rss_bytes and result.memory.peak_rss_bytes > result.memory.pool_bytes
    assert not result.network.training


def test_same_seed_same_losses_other_seed_other_losses(expert, engine):
    first = Distiller(expert, scans(), config(), engine=engine).run().loss_curve()
    again = Distiller(expert, scans(), config(), engine=engine).run().loss_curve()
    other = Distiller(expert, scans(), config(seed=1), engine=engine).run().loss_curve()
    assert first == again
    assert first != other


def test_resume_continues_exactly(expert, engine, tmp_path):
    straight = Distiller(expert, scans(), config(steps=4), engine=engine).run()
    checkpoint = tmp_path / "run.pth"
    stop = threading.Event()
    interrupted = Distiller(expert, scans(), config(steps=4, checkpoint_path=checkpoint), engine=engine)
    with pytest.raises(Cancelled):  # stopped after two of its four steps (the schedule knows the budget)
        interrupted.run(on_step=lambda report: report.record.step == 2 and stop.set(), cancel=stop)
    resumed = Distiller(expert, scans(), config(steps=4, checkpoint_path=checkpoint), engine=engine).run(
        resume=checkpoint
    )
    assert resumed.loss_curve() == straight.loss_curve()
    for a, b in zip(straight.network.state_dict().values(), resumed.network.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_checkpoint_of_another_run(expert, engine, tmp_path):
    checkpoint = tmp_path / "run.pth"
    Distiller(expert, scans(), config(steps=1, checkpoint_path=checkpoint), engine=engine).run()
    with pytest.raises(DistillationError, match="df"):
        Distiller(expert, scans(), config(df=0.5), engine=engine).run(resume=checkpoint)


def test_cancel_stops_within_the_step_and_leaves_a_resumable_checkpoint(expert, engine, tmp_path):
    checkpoint = tmp_path / "run.pth"
    cancel = threading.Event()
    set_at: list[float] = []

    def on_step(report) -> None:
        if report.record.step == 2:
            threading.Timer(0.001, lambda: (set_at.append(time.perf_counter()), cancel.set())).start()

    distiller = Distiller(expert, scans(), config(steps=50, checkpoint_path=checkpoint), engine=engine)
    with pytest.raises(Cancelled):
        distiller.run(on_step=on_step, cancel=cancel)
    assert time.perf_counter() - set_at[0] < 2.0
    saved = torch.load(checkpoint, weights_only=True)
    assert 2 <= saved["step"] <= 4 and len(saved["records"]) == saved["step"]


def test_pruned_channels_stay_zero_also_when_saved_and_loaded(expert, engine, tmp_path):
    result = Distiller(expert, scans(1), config(method="prune", df=0.3, steps=3), engine=engine).run()
    student = result.student
    assert student.masks
    parameters = dict(student.network.named_parameters())
    initial = dict(make_student(engine, "prune", 0.3).network.named_parameters())
    for name, mask in student.masks.items():
        value = parameters[name].detach()
        assert torch.count_nonzero(value * (1 - mask)) == 0
        assert not torch.equal(value, initial[name].detach())  # the kept channels did train
    folder = save_distilled(expert, result, tmp_path / "out")
    reloaded = dict(load_expert(spec_from_folder(folder)).network.named_parameters())
    for name in student.masks:
        torch.testing.assert_close(reloaded[name], parameters[name].detach())
    assert json.loads((folder / "tucker_compression.json").read_text())["compression_method"] == "prune"


def test_teacher_assistant_chain_and_feature_matching(expert, engine):
    cfg = config(df=0.3, assistant_dfs=(0.6,), steps=4, losses=LossWeights(features=1.0))
    result = Distiller(expert, scans(1), cfg, engine=engine).run()
    assert [s.teacher for s in result.stages] == ["original", "assistant DF 0.6"]
    assert [s.steps for s in result.stages] == [2, 2]
    assert "features" in result.records[0].parts
    assert result.losses_used == ("kd(T=2)", "dice_ce", "features", "teacher-assistants")
    assert result.student.df == 0.3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "too small"),
        ({"steps": None, "minutes": 0.0}, "more than 0"),
        ({"assistant_dfs": (0.2,)}, "between"),
        ({"max_memory_bytes": 1}, "GiB"),
        ({"patch_size": (18, 16, 16)}, "multiple"),
    ],
)
def test_bad_settings_are_refused_before_any_work(expert, engine, changes, message):
    with pytest.raises(UserError, match=message):
        Distiller(expert, scans(1), config(**changes), engine=engine)


def test_time_budget_stops_by_time(expert, engine):
    result = Distiller(expert, scans(1), config(steps=None, minutes=0.02), engine=engine).run()
    assert result.stages[0].stopped_by == "time"
    assert result.stages[0].train_seconds >= 0.02 * 60


def write_ct(path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), path)


def distil(*argv: str) -> int:
    return cli.main(["distil", *argv])


@pytest.fixture
def distil_only(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("distil",))


def test_cli_writes_a_model_folder_that_loads(model_folder, tmp_path, distil_only, capsys):
    data = tmp_path / "cts"
    data.mkdir()
    for i in range(2):
        write_ct(data / f"ct{i}.nii.gz", synthetic_ct(i))
    out = tmp_path / "out"
    argv = ["--model", str(model_folder), "--df", "0.3", "--data", str(data), "--steps", "2", "--patch", "16,16,16"]
    assert distil(*argv, "-o", str(out), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    entry = report["experts"]["tiny"]
    assert entry["steps"] == 2 and len(entry["loss_curve"]) == 2
    assert set(entry["agreement"]) == {"zero-shot", "distilled"}
    assert "held out: 1" in report["held_out"]
    folder = spec_from_folder(next(p.parent for p in out.rglob("plans.json")))
    reloaded = load_expert(folder)
    assert any(isinstance(m, TuckerConv) for m in reloaded.network.modules())
    manifest = json.loads((folder.folder / "tucker_compression.json").read_text())
    assert manifest["distillation"]["steps"] == 2 and manifest["df"] == 0.3
    assert not list(tmp_path.glob(".out.partial-*"))
    assert (tmp_path / "out.checkpoints" / "tiny.pth").is_file()
    print_entry("tiny", entry, report["held_out"])  # the text report reads the same entry
    text = capsys.readouterr().out
    assert "loss curve:" in text and "Dice vs original on" in text and "saved to" in text


def test_cli_bad_inputs_are_one_line_errors_and_write_nothing(model_folder, tmp_path, distil_only, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no CT here")
    mr = tmp_path / "mr.nii.gz"
    write_ct(mr, np.abs(synthetic_ct(0)))
    ct = tmp_path / "ct.nii.gz"
    write_ct(ct, synthetic_ct(0))
    out = tmp_path / "out"
    base = ["--model", str(model_folder), "--df", "0.3", "--patch", "16,16,16", "-o", str(out)]
    cases = [
        (["--data", str(empty), "--steps", "1"], "no readable CT"),
        (["--data", str(mr), "--steps", "1"], "not a CT"),
        (["--data", str(ct), "--steps", "1", "--expert", "liver"], "no such expert"),
        (["--data", str(ct), "--steps", "0"], "too small"),
    ]
    for extra, message in cases:
        assert distil(*base, *extra) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1
    assert not out.exists()


def test_distilled_student_is_a_copy_not_the_engine_network(expert, engine):
    """The teacher is never trained: its outputs are the same before and after a run."""
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = copy.deepcopy(expert.network)(x)
    Distiller(expert, scans(1), config(steps=2), engine=engine).run()
    with torch.no_grad():
        after = expert.network(x)
    torch.testing.assert_close(before, after)


def test_figure2_gives_four_curves_from_one_teacher_pool(expert, monkeypatch):
    from tuckerscope.core.distillation import figure2 as figure2_module

    builds = []
    real_build = figure2_module.Distiller._pool
    monkeypatch.setattr(
        figure2_module.Distiller, "_pool", lambda self, *a: builds.append(self._original_pool) or real_build(self, *a)
    )
    seen = []
    figure = figure2_module.figure2(
        expert, scans(1), dfs=(0.6, 0.3), steps_per_point=1, base=config(), on_point=seen.append
    )
    curves = figure.curves()
    assert set(curves) == {"tucker zero-shot", "tucker distilled", "prune zero-shot", "prune distilled"}
    assert all(len(points) == 2 for points in curves.values()) and len(seen) == 8
    assert sum(pool is None for pool in builds) == 1  # the original's outputs were computed once
    tucker = {p.df: p.compression_ratio for p in curves["tucker zero-shot"]}
    assert tucker[0.3] > tucker[0.6] > 1
    assert all(0.0 <= p.mean_dice <= 1.0 and p.steps == (1 if p.distilled else 0) for p in figure.points)


def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch):
    from tuckerscope.core.distillation import distiller

    assert distiller.training_precision("fp32", "cuda") == "fp32"
    assert distiller.training_precision("bf16", "cpu") == "bf16"
    assert distiller.training_precision("auto", "cuda:0") == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(distiller, "cpu_has_native_bf16", lambda native=native: native)
        assert distiller.training_precision("auto", "cpu") == expected
