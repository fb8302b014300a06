"""DF sweep runner on a test double whose segmentation erodes as the DF falls."""

from __future__ import annotations

import pytest
from sweep_doubles import ErodingBackend

from tuckerscope.core.evaluation.sweep import DEFAULT_GRID, SweepError, run_sweep
from tuckerscope.core.runtime.errors import Cancelled


def test_sweep_scores_every_expert_and_df_reusing_the_original():
    backend = ErodingBackend()
    seen = []
    messages = []
    result = run_sweep(
        backend,
        ["organs", "ribs"],
        progress=lambda f, m: messages.append((f, m)),
        on_point=seen.append,
    )
    assert not result.cancelled
    assert backend.original_runs == {"organs": 1, "ribs": 1}
    assert len(result.points) == len(seen) == 2 * len(DEFAULT_GRID)
    curve = result.curve("organs")
    assert [p.df for p in curve] == sorted(DEFAULT_GRID, reverse=True)
    dice = [p.mean_dice for p in curve]
    assert dice == sorted(dice, reverse=True) and dice[-1] < dice[0]
    lost = round(8 * (1 - 0.5))
    assert result.curve("ribs")[2].mean_dice == pytest.approx(2 * (16 - lost) / (32 - lost))
    assert curve[0].cost.params == 900 and result.originals["organs"].params == 1000
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_sweep_has_a_method_dimension():
    """Tucker and the pruning baseline at the same DFs: one curve each, from one cached original."""
    backend = ErodingBackend()
    result = run_sweep(backend, ["organs"], grid=(0.9, 0.5), methods=("tucker", "prune"))
    assert backend.original_runs == {"organs": 1} and result.methods == ("tucker", "prune")
    assert ("organs", 0.5, "prune") in backend.compressed_runs
    tucker, pruned = result.curve("organs"), result.curve("organs", "prune")
    assert [p.df for p in pruned] == [0.9, 0.5] and all(p.method == "prune" for p in pruned)
    assert pruned[1].cost.params == tucker[1].cost.params and pruned[1].mean_dice < tucker[1].mean_dice
    assert {row["method"] for row in result.rows() if row["network"] == "compressed"} == {"tucker", "prune"}
    assert [p["method"] for p in result.to_dict()["points"]] == ["tucker", "tucker", "prune", "prune"]
    with pytest.raises(SweepError, match="methods"):
        run_sweep(backend, ["organs"], grid=(0.5,), methods=("svd",))


def test_cancel_keeps_the_finished_points():
    backend = ErodingBackend(cancel_after=3)
    result = run_sweep(backend, ["organs", "ribs"], grid=(0.9, 0.5, 0.1, 0.05), cancel=backend.event)
    assert result.cancelled
    assert len(result.points) == 3
    assert ("ribs", 0.9) not in backend.compressed_runs


def test_a_cancelled_backend_run_ends_the_sweep():
    class Stopping(ErodingBackend):
        def compressed(self, expert, df, progress, cancel, method="tucker"):
            if df < 0.6:
                raise Cancelled("stop")
            return super().compressed(expert, df, progress, cancel)

    result = run_sweep(Stopping(), ["organs"], grid=(0.9, 0.7, 0.5))
    assert result.cancelled and [p.df for p in result.points] == [0.9, 0.7]


@pytest.mark.parametrize("grid", [(), (0.0,), (1.5,), (0.5, -0.1)])
def test_bad_grids_are_refused(grid):
    with pytest.raises(SweepError):
        run_sweep(ErodingBackend(), ["organs"], grid=grid)


def test_rows_and_dict_are_plain_data():
    result = run_sweep(ErodingBackend(), ["organs"], grid=(0.5,))
    rows = result.rows()
    assert rows[0]["network"] == "original" and rows[1]["class"] == "organs_thing"
    as_dict = result.to_dict()
    assert as_dict["points"][0]["df"] == 0.5 and "organs_thing" in as_dict["points"][0]["classes"]
