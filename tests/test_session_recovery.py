"""Recover at the session level: a distilled network is applied and shown, the toggle switches the compressed
labels and the agreement keeps both, runs resume from their checkpoint, and repeated runs free the old network
(demo organs expert, 2-3 steps on 32-voxel patches: seconds)."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch

from tuckerscope.core.distillation.data import Scan
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.segmentation.live_segmentation import run_segmentation
from tuckerscope.core.session.loading import load_models, make_phantom_case
from tuckerscope.core.session.recovery import (
    POOL_BUDGET_GIB,
    RecoverySettings,
    agreement_pair,
    covering_patches,
    figure2_job,
    recovery_data,
    recovery_job,
)
from tuckerscope.core.session.session import Session, SessionError

# a high learning rate: two steps must move the network far enough to change some labels
FAST = RecoverySettings(minutes=None, steps=2, patch_cap=32, learning_rate=2e-2, phantoms=0, coverage=0.0)
NEVER = threading.Event()


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    return load_models("demo")


def demo_session(demo) -> Session:
    session = Session()
    case = make_phantom_case(7)
    session.set_volume(case.volume, case.segmenter)
    for expert in demo.experts:  # the others stay uncompressed: only organs is distilled
        expert.df, expert.overrides, expert.distilled_for = 1.0, {}, None
    session.set_experts(demo.experts, demo.name, demo.source, {"organs": 0.2})
    return session


def refresh(session: Session) -> None:
    plan = session.plan_segmentation()
    session.apply_segmentation(run_segmentation(plan, lambda f, m: None, NEVER, NEVER, lambda u: None))
    assert session.compressed_is_current()
    session.apply_agreement(session.plan_agreement()(NEVER))


def test_recovery_is_applied_and_the_toggle_switches_the_compressed_labels(demo, tmp_path):
    session = demo_session(demo)
    refresh(session)
    zero_shot = session.compressed["organs"].copy()
    steps = []
    run, earlier, _ = recovery_job(session, "organs", FAST, tmp_path)
    assert earlier == []
    result = run(lambda f, m: None, steps.append, NEVER)
    assert [s.record.step for s in steps] == [1, 2] and all(s.eta_seconds >= 0 for s in steps)
    assert len(result.losses) == 2 and result.resumed_steps == 0
    changed = []
    session.events.compression_changed.connect(changed.append)
    assert session.apply_recovery(result)
    assert changed == ["organs"] and session.experts["organs"].show_distilled
    assert "distilled" in session.experts["organs"].rank_key()
    plan = session.plan_segmentation()
    assert plan.need_compressed == {"organs"} and plan.networks["organs"] is result.network
    refresh(session)
    distilled = session.compressed["organs"]
    assert not np.array_equal(distilled, zero_shot)  # the distilled network segmented the compressed side
    zero, dist = agreement_pair(session)
    assert zero is not None and dist is not None and zero is not dist
    session.set_distilled("organs", False)
    assert session.distilled_network("organs") is None and session.plan_segmentation().networks == {}
    refresh(session)
    np.testing.assert_array_equal(session.compressed["organs"], zero_shot)
    session.set_df("organs", 0.3)  # another setting: its distilled network does not apply
    with pytest.raises(SessionError, match="press Recover"):
        session.set_distilled("organs", True)
    session.set_df("organs", 0.2)
    session.set_distilled("organs", True)
    assert session.distilled_network("organs") is result.network


def test_a_result_for_an_old_setting_is_dropped(demo, tmp_path):
    session = demo_session(demo)
    run, _, _ = recovery_job(session, "organs", FAST, tmp_path)
    session.set_df("organs", 0.3)
    assert not session.apply_recovery(run(lambda f, m: None, lambda s: None, NEVER))
    assert session.recoveries == {}


def test_cancel_keeps_a_checkpoint_and_recover_again_resumes_from_it(demo, tmp_path):
    session = demo_session(demo)
    cancel = threading.Event()
    run, _, _ = recovery_job(session, "organs", RecoverySettings(**{**FAST.__dict__, "steps": 3}), tmp_path)

    def on_step(report):
        if report.record.step == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        run(lambda f, m: None, on_step, cancel)
    run, earlier, _ = recovery_job(session, "organs", FAST, tmp_path)
    assert len(earlier) == 1  # the cancelled run's one step
    steps = []
    result = run(lambda f, m: None, steps.append, NEVER)
    assert result.resumed_steps == 1 and [s.record.step for s in steps] == [2, 3]
    assert len(result.losses) == 3 and result.losses[0] == earlier[0]


def test_repeated_runs_free_the_previous_distilled_network(demo, tmp_path):
    session = demo_session(demo)
    refs = []
    for seed in (0, 1, 2):
        run, _, _ = recovery_job(session, "organs", RecoverySettings(**{**FAST.__dict__, "seed": seed}), tmp_path)
        result = run(lambda f, m: None, lambda s: None, NEVER)
        refs.append(weakref.ref(result.network))
        assert session.apply_recovery(result)
        del result, run
    gc.collect()
    assert [ref() is None for ref in refs] == [True, True, False]


def test_bad_requests_are_refused_with_a_reason(demo, tmp_path):
    session = demo_session(demo)
    session.set_df("organs", 1.0)
    with pytest.raises(SessionError, match="nothing to recover"):
        recovery_job(session, "organs", FAST, tmp_path)
    with pytest.raises(SessionError, match="no expert"):
        recovery_job(session, "bones", FAST, tmp_path)
    with pytest.raises(SessionError, match="at least one"):
        figure2_job(session, "organs", 0)


def test_the_demo_distils_on_the_loaded_ct_and_phantoms(demo):
    session = demo_session(demo)
    data = recovery_data(session, RecoverySettings())
    assert len(data) == 3 and data.names[0] == "phantom (seed 7)" and "2 phantoms" in data.description
    assert len(recovery_data(session, RecoverySettings(phantoms=0))) == 1


def test_the_loaded_ct_is_covered_by_its_crops_within_the_pool_budget(demo):
    session = demo_session(demo)
    organs = session.expert("organs").loaded
    scan = recovery_data(session, RecoverySettings(phantoms=0)).loader(0)
    patch = (32, 32, 32)
    count = covering_patches(organs, scan, patch, scans=1, coverage=2.0)
    model_voxels = scan.ct.size * abs(np.linalg.det(scan.affine[:3, :3])) / np.prod(organs.spacing)
    assert count * np.prod(patch) >= 2 * model_voxels  # two crops (the old default) covered a fraction of it
    assert covering_patches(organs, scan, patch, scans=1, coverage=0.0) == 2
    entry = np.prod(patch) * (5 + 2 * len(organs.labels))
    huge = Scan("huge", np.zeros((512, 512, 400), np.float32), scan.affine)
    bounded = covering_patches(organs, huge, patch, scans=3, coverage=2.0)
    assert 2 <= bounded and 3 * bounded * entry <= POOL_BUDGET_GIB * 1024**3 < 3 * (bounded + 1) * entry


@pytest.mark.slow  # eight segmentations of the demo volume: ~20 s on a loaded 2-core machine
def test_figure2_for_this_scan_gives_the_four_curves(demo):
    session = demo_session(demo)
    points = []
    figure = figure2_job(session, "organs", 1, dfs=(0.3,))(lambda f, m: None, points.append, NEVER)
    assert set(figure.curves()) == {"tucker zero-shot", "tucker distilled", "prune zero-shot", "prune distilled"}
    assert len(points) == 4 and all(0.0 <= p.mean_dice <= 1.0 and p.compression_ratio > 1 for p in points)
    assert figure.scans == "phantom (seed 7)"  # the loaded CT, distilled on and scored on
