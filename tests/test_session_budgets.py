"""The session's budgets (targets per expert and for all experts, solved as a job) and its on-disk originals:
a second load of the same CT and model gets its originals from the cache without running a network."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_session import loaded, new_session  # noqa: F401  (the module fixture and its session builder)

from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation import segmenter as segmenter_module
from tuckerscope.core.segmentation.live_segmentation import run_segmentation
from tuckerscope.core.segmentation.original_cache import OriginalCache
from tuckerscope.core.session.jobs import budget_job
from tuckerscope.core.session.session import ALL_EXPERTS, CaseVolume, Session

NEVER = threading.Event()


def solve(session: Session, scope: str, text: str) -> None:
    session.set_target(scope, text)
    assert session.apply_budget(budget_job(session, scope)(lambda f, m: None, NEVER))


def params_ratio(session: Session, names: list[str]) -> float:
    original = sum(count_network(session.experts[n].engine).params for n in names)
    compressed = sum(count_network(session.experts[n].engine, session.experts[n].ranks()).params for n in names)
    return original / compressed


def test_a_target_per_expert_and_for_all_sets_the_ranks_and_a_slider_goes_back_to_the_df(loaded):  # noqa: F811
    session = new_session(loaded)
    seen: list[tuple[str, str]] = []
    session.events.target_changed.connect(lambda scope: seen.append(("target", scope)))
    session.events.compression_changed.connect(lambda name: seen.append(("compression", name)))
    df_key = session.experts["first"].rank_key()
    solve(session, "first", "params=3x")
    first = session.experts["first"]
    assert first.target == "params=3x" and first.rank_key() != df_key
    assert 3.0 <= params_ratio(session, ["first"]) <= 3.03
    assert "3x asked" in session.budgets["first"].summary
    assert ("compression", "first") in seen and ("compression", "second") not in seen
    assert session.experts["second"].is_full_rank()
    run = first.run()
    assert run.target == "params=3x" and run.ranks == first.ranks()

    solve(session, ALL_EXPERTS, "params=2x")  # pooled: the two experts share one budget
    assert {e.target_scope for e in session.experts.values()} == {ALL_EXPERTS}
    assert 2.0 <= params_ratio(session, ["first", "second"]) <= 2.02
    assert "first" not in session.budgets  # the expert's own budget was replaced by the pooled one

    session.set_df("second", 0.5)  # the slider: back to the uniform DF, the pooled budget no longer holds
    assert session.experts["second"].target is None and ALL_EXPERTS not in session.budgets
    assert session.experts["second"].rank_key()[0] == 0.5
    session.set_target(ALL_EXPERTS, "")
    assert all(e.target is None for e in session.experts.values())


def test_bad_and_stale_targets_change_nothing(loaded):  # noqa: F811
    session = new_session(loaded)
    with pytest.raises(UserError, match="expected one of"):
        session.set_target("first", "params=lots")
    with pytest.raises(UserError, match="no expert named"):
        session.set_target("nobody", "params=2x")
    session.set_target("first", "params=2x")
    job = budget_job(session, "first")
    session.set_df("first", 0.4)  # the user moved on before the solver returned
    assert not session.apply_budget(job(lambda f, m: None, NEVER))
    assert session.experts["first"].target is None and session.experts["first"].df == 0.4
    session.set_target("first", "params=1000x")
    outcome = budget_job(session, "first")(lambda f, m: None, NEVER)
    assert not outcome.result.met and "cannot be met" in outcome.summary
    assert session.apply_budget(outcome)  # the nearest reachable ranks are shown, and said to be


def test_a_second_load_of_the_same_ct_and_model_takes_its_originals_from_the_disk_cache(
    loaded, tmp_path, monkeypatch  # noqa: F811
):
    first_session = new_session(loaded)
    volume = first_session.volume
    calls: list[str] = []
    run_logits = segmenter_module._TileRun.logits

    def counted(self, *args, **kwargs):
        calls.append("network")
        return run_logits(self, *args, **kwargs)

    prepare = segmenter_module.Segmenter._prepare

    def counted_prepare(self, *args, **kwargs):
        calls.append("preprocessing")
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(segmenter_module._TileRun, "logits", counted)
    monkeypatch.setattr(segmenter_module.Segmenter, "_prepare", counted_prepare)

    def load(cache: OriginalCache) -> tuple[Session, list[object]]:
        source, experts = loaded
        session = Session(original_cache=cache)
        for expert in experts:  # full rank: only originals are segmented
            expert.df, expert.overrides = 1.0, {}
            expert.clear_target()
        session.set_volume(CaseVolume.from_array(volume.data.copy(), volume.affine, "ct"))
        session.set_experts(experts, source.name, source)
        partials: list[object] = []
        plan = session.plan_segmentation(display_axis=2, display_index=5)
        session.apply_segmentation(run_segmentation(plan, lambda f, m: None, NEVER, NEVER, partials.append))
        return session, partials

    first, _ = load(OriginalCache(tmp_path / "cache"))
    assert calls, "the first load segments with the networks"
    assert OriginalCache(tmp_path / "cache").size_bytes() > 0
    calls.clear()
    second, partials = load(OriginalCache(tmp_path / "cache"))  # a new session, as after a restart
    assert calls == [], "the second load preprocessed or ran a network instead of reading the cache"
    assert second.complete_originals == set(second.experts) and not partials
    for name in first.experts:
        np.testing.assert_array_equal(second.originals[name], first.originals[name])
    assert OriginalCache(tmp_path / "cache").clear() > 0
    calls.clear()
    load(OriginalCache(tmp_path / "cache"))
    assert calls, "after clear() the originals are segmented again"


def test_the_same_target_solved_to_other_ranks_is_another_setting(loaded):  # noqa: F811
    session = new_session(loaded)
    solve(session, "first", "params=3x")
    first = session.experts["first"]
    key = first.rank_key()
    first.distilled_for = first.base_key()  # as a finished Recover leaves it
    assert first.show_distilled
    layer = next(iter(first.target_ranks))
    r_out, r_in = first.target_ranks[layer]
    first.target_ranks = {**first.target_ranks, layer: (max(1, r_out - 1), r_in)}  # a time target re-timed
    assert first.rank_key() != key and not first.show_distilled
