"""The window's Qt-free session: display grid, label merging, slab-first refresh, supersede and cancel rules."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tiny_model import tiny_dataset_json, write_tiny_model
from tuckerscope.core.imaging.display_grid import DisplayGrid
from tuckerscope.core.models.model_sources import folder_source
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.segmentation.live_segmentation import (
    class_positions,
    merge_for_display,
    run_segmentation,
)
from tuckerscope.core.session.jobs import heatmaps_job
from tuckerscope.core.session.loading import load_expert_models
from tuckerscope.core.session.session import CaseVolume, Session


def test_display_grid_reorients_lps_to_ras_and_maps_slices_back():
    affine = np.diag([-2.0, -3.0, 4.0, 1.0])  # LPS-like: x and y flipped
    data = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    grid = DisplayGrid.from_affine(affine, data.shape)
    shown = grid.to_display(data)
    np.testing.assert_array_equal(shown, data[::-1, ::-1, :])
    assert grid.display_spacing == (2.0, 3.0, 4.0)
    assert grid.input_index(0, 0) == (0, 4)  # first displayed i is the last stored x
    assert grid.input_index(2, 3) == (2, 3)
    permuted = DisplayGrid.from_affine(
        np.array([[0, 0, 2, 0], [3, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 1.0]]), (5, 6, 7)
    )
    assert permuted.display_shape == (7, 5, 6)
    assert permuted.input_axis(0) == 2


def test_merge_lets_later_experts_win_and_positions_land_inside():
    first = np.array([[[1, 1, 0, 0]]], dtype=np.uint8)
    second = np.array([[[0, 2, 2, 0]]], dtype=np.uint8)
    maps = {"a": np.array([0, 5], np.uint8), "b": np.array([0, 0, 7], np.uint8)}
    merged = merge_for_display({"a": first, "b": second}, maps, ["a", "b"])
    np.testing.assert_array_equal(merged, [[[5, 7, 7, 0]]])
    unknown = np.array([[[3, 1, 0, 0]]], dtype=np.uint8)  # label 3: not in a's table
    np.testing.assert_array_equal(merge_for_display({"a": unknown}, maps, ["a", "b"]), [[[0, 5, 0, 0]]])
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[2:6, 3:9, 1:4] = 3
    labels[12:18, 12:14, 5:9] = 9
    positions = class_positions(labels)
    assert set(positions) == {3, 9}
    assert all(labels[p] == label for label, p in positions.items())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    first = write_tiny_model(root / "x", seed=3)
    first.parent.rename(root / "Dataset801_First")
    second = write_tiny_model(
        root / "y", seed=4, dataset_json=tiny_dataset_json({"background": 0, "bone": 1})
    )
    second.parent.rename(root / "Dataset802_Second")
    source = folder_source(root)
    return source, load_expert_models(source)


def new_session(loaded, slices: int = 20) -> Session:
    source, experts = loaded
    i, j, k = np.mgrid[:36, :34, :slices]
    ct = np.where(((i - 18) / 15) ** 2 + ((j - 17) / 13) ** 2 < 1, 40.0, -1000.0).astype(np.float32)
    session = Session()
    session.set_volume(CaseVolume.from_array(ct, np.diag([-3.0, 3.0, 3.0, 1.0]), "ct"))
    for expert in experts:
        expert.df, expert.overrides = 1.0, {}
    session.set_experts(experts, source.name, source)
    return session


def test_slab_first_then_whole_volume_and_only_changed_experts_rerun(loaded):
    session = new_session(loaded, slices=80)  # 4 tiles along z: the slab needs only 2 of them
    partials = []
    never = threading.Event()
    plan = session.plan_segmentation(display_axis=2, display_index=10)
    assert plan.need_original == {"first", "second"}
    final = run_segmentation(plan, lambda f, m: None, never, never, partials.append)
    slab = partials[0]
    assert slab.stage == "slab" and not slab.done and not slab.complete_originals
    outside = np.ones(session.volume.data.shape, bool)
    outside[:, :, 4:17] = False  # slab 10 +- 6 on the (unflipped) z axis
    assert all(not labels[outside].any() for labels in slab.originals.values())
    assert final.done and final.complete_originals == {"first", "second"}
    assert session.apply_segmentation(final)
    assert session.compressed_is_current()  # DF 1.0 everywhere: compressed is the original
    np.testing.assert_array_equal(session.display_compressed, session.display_original)
    assert all(session.display_original[p] == label for label, p in session.positions.items())

    session.set_df("second", 0.3)
    assert not session.compressed_is_current()
    plan = session.plan_segmentation()
    assert not plan.need_original and plan.need_compressed == {"second"}
    session.apply_segmentation(run_segmentation(plan, lambda f, m: None, never, never, lambda u: None))
    assert session.compressed_is_current()
    agreement = session.plan_agreement()(never)
    assert {info.expert for info, _ in agreement.rows} <= {"first", "second"}
    assert [s.dice for _, s in agreement.rows] == sorted(s.dice for _, s in agreement.rows)


def test_a_slab_that_needs_every_tile_goes_straight_to_the_volume(loaded):
    """20 slices fit one tile along z: a slab pass would cost a whole pass, so each expert runs once."""
    session = new_session(loaded)
    session.set_df("first", 0.4)
    plan = session.plan_segmentation(display_axis=2, display_index=10)
    assert all(plan.segmenter.roi_needs_every_tile(run.expert, plan.roi) for run in plan.runs)
    partials, never = [], threading.Event()
    final = run_segmentation(plan, lambda f, m: None, never, never, partials.append)
    assert [u.stage for u in partials] == ["volume", "volume"]  # each expert's original as it lands, no slab
    assert final.done and final.complete_experts == {"first"}  # "second" is at full rank
    assert session.apply_segmentation(final) and session.compressed_is_current()


def test_superseded_refresh_still_finishes_originals_and_stale_updates_are_refused(loaded):
    session = new_session(loaded)
    session.set_df("first", 0.4)
    superseded, user = threading.Event(), threading.Event()
    superseded.set()  # a newer request arrived before this one even started
    partials = []
    with pytest.raises(Cancelled):
        run_segmentation(
            session.plan_segmentation(2, 10), lambda f, m: None, superseded, user, partials.append
        )
    originals_done = [u for u in partials if u.complete_originals == {"first", "second"}]
    assert originals_done, (
        "originals must complete (and be reported) even when the compressed part is dropped"
    )
    session.apply_segmentation(originals_done[-1])
    assert not session.plan_segmentation().need_original
    stale = originals_done[-1]
    session.set_experts(list(session.experts.values()), "again", session.source)
    assert not session.apply_segmentation(stale)


def test_isolated_runner_scores_in_another_process_and_cancels_by_killing_it():
    import os
    import time

    from tuckerscope.core.runtime.processes import IsolatedRunner

    runner = IsolatedRunner()
    try:
        assert runner.run(os.getpid) != os.getpid()
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        start = time.perf_counter()
        with pytest.raises(Cancelled):
            runner.run(time.sleep, 30, cancel=cancel)
        assert time.perf_counter() - start < 5
        assert runner.run(abs, -3) == 3  # a fresh process after the kill
    finally:
        runner.close()


def test_each_expert_is_reported_as_soon_as_its_original_exists(loaded):
    """Issue 11, defect 7: the first partial update came only once every expert's original was done."""
    session = new_session(loaded)
    partials, never = [], threading.Event()
    final = run_segmentation(session.plan_segmentation(), lambda f, m: None, never, never, partials.append)
    first = partials[0]
    assert first.complete_originals == {"first"} and set(first.originals) == {"first"}
    assert session.apply_segmentation(first)
    expected = session.experts["first"].lookup[first.originals["first"]]
    np.testing.assert_array_equal(session.display_original, session.volume.grid.to_display(expected))
    assert final.done and final.complete_originals == {"first", "second"}


def test_pruning_runs_at_the_parameter_budget_of_the_tucker_setting(loaded):
    from tuckerscope.core.session.jobs import compression_job

    session = new_session(loaded)
    session.set_df("first", 0.3)
    tucker = compression_job(session, "first")()
    session.set_method("first", "prune")
    assert session.experts["first"].rank_key() != tucker.rank_key
    assert not session.apply_compression(tucker)  # built for the Tucker setting: refused
    pruned = compression_job(session, "first")()
    assert session.apply_compression(pruned) and session.sizes["first"].method == "prune"
    assert pruned.size.params_compressed <= tucker.size.params_compressed < pruned.size.params_original
    zeroed = [m.weight for m in pruned.network.modules() if isinstance(m, torch.nn.Conv3d)]
    assert any((w.flatten(1).abs().sum(1) == 0).any() for w in zeroed)  # whole output channels zeroed
    plan = session.plan_segmentation()
    assert plan.networks["first"] is pruned.network  # the refresh segments with the network just built


def test_models_load_unfactorised_and_the_heatmaps_job_factorises_them(loaded):
    """Loading leaves the factorisation (6 s of CPU for TS 'total') to a worker job: a reopened CT's cached
    originals show without waiting for it."""
    source, _ = loaded
    experts = load_expert_models(source)
    assert not any(expert.engine.is_factorised for expert in experts)
    session = new_session((source, experts))
    heatmaps = heatmaps_job(session)(lambda _fraction, _message: None, threading.Event())
    assert all(expert.engine.is_factorised for expert in experts)
    assert set(heatmaps) == set(session.experts) and all(heatmaps.values())


def test_one_expert_refresh_reuses_its_slab_tiles_for_the_whole_volume(loaded):
    """A released slider re-runs one expert: its whole volume must not compute the slab's tiles a second time."""
    from dataclasses import replace

    session = new_session(loaded, slices=80)  # 4 tiles along z: the slab needs only 2 of them
    never = threading.Event()
    session.apply_segmentation(
        run_segmentation(session.plan_segmentation(), lambda f, m: None, never, never, lambda u: None)
    )
    session.set_df("second", 0.3)
    plan = session.plan_segmentation(display_axis=2, display_index=10)
    run = next(r for r in plan.runs if r.name == "second")
    assert not plan.segmenter.roi_needs_every_tile(run.expert, plan.roi)
    network, forwards = run.build(), []
    network.register_forward_hook(lambda *_: forwards.append(1))
    whole = plan.segmenter.segment(run.expert, network)
    tiles, forwards[:] = len(forwards), []
    partials = []
    final = run_segmentation(replace(plan, networks={"second": network}), lambda f, m: None, never, never, partials.append)
    assert [u.stage for u in partials] == ["slab"] and final.complete_experts == {"second"}
    assert len(forwards) == tiles  # each tile once: the slab's tiles are not run again for the volume
    np.testing.assert_array_equal(final.compressed["second"], whole)


def test_planning_the_agreement_leaves_the_merging_to_the_job(loaded, monkeypatch):
    """Planning runs on the UI thread: merging five TS experts' maps there stalled it for about a second."""
    session = new_session(loaded)
    never = threading.Event()
    session.apply_segmentation(
        run_segmentation(session.plan_segmentation(), lambda f, m: None, never, never, lambda u: None)
    )
    merges = []
    merge = type(session.source).merge
    monkeypatch.setattr(type(session.source), "merge", lambda self, labels: merges.append(1) or merge(self, labels))
    job = session.plan_agreement()
    assert job is not None and merges == []
    assert job(never).rows and len(merges) == 2


def test_another_runtime_redoes_every_segmentation_and_a_bad_one_changes_nothing(loaded):
    pytest.importorskip("openvino")
    from tuckerscope.core.runtime.errors import UserError

    session = new_session(loaded)
    never = threading.Event()
    session.apply_segmentation(run_segmentation(session.plan_segmentation(), lambda f, m: None, never, never, lambda u: None))
    assert session.complete_originals == {"first", "second"}
    heard = []
    session.events.inference_changed.connect(lambda: heard.append(session.inference))
    token = session.volume_token
    with pytest.raises(UserError, match="fp16"):
        session.set_inference("openvino", "fp16")
    assert session.inference.runtime == "torch" and session.complete_originals and not heard
    session.set_inference("openvino", "fp32")
    assert [(o.runtime, o.precision) for o in heard] == [("openvino", "fp32")]
    assert session.volume_token == token + 1 and not session.originals and not session.complete_originals
    plan = session.plan_segmentation()
    assert plan.need_original == {"first", "second"} and plan.options.runtime == "openvino"
    assert plan.options.threads == session.inference.threads  # only the runtime and precision changed
    session.set_inference("openvino", "fp32")  # unchanged: nothing is redone
    assert len(heard) == 1 and session.volume_token == token + 1


def test_openvino_missing_is_one_clear_refusal_and_nothing_changes(loaded, monkeypatch):
    from tuckerscope.core.runtime.errors import UserError
    from tuckerscope.core.segmentation import runtimes

    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    session = new_session(loaded)
    token = session.volume_token
    for runtime in ("openvino", "auto"):
        with pytest.raises(UserError, match=r"pip install 'tuckerscope\[openvino\]'"):
            session.set_inference(runtime, "fp32")
    assert session.inference.runtime == "torch" and session.volume_token == token
