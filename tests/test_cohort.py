"""Cohort planning, ground-truth matching and analysis, without running any network."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tuckerscope.core.cohorts.analysis import class_tests, curves, mean_ci, signed_rank_p
from tuckerscope.core.cohorts.plan import CohortError, CohortPlan, df_settings, find_cases


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_cts_and_ground_truth_pair_up_by_file_name(tmp_path):
    for name in ("b.nii.gz", "a.nii", ".hidden.nii.gz", "notes.txt"):
        touch(tmp_path / "ct" / name)
    (tmp_path / "ct" / "dicom_case").mkdir()
    touch(tmp_path / "gt" / "a.nii.gz")
    touch(tmp_path / "gt" / "b.nii.gz")
    touch(tmp_path / "gt" / "zzz.nii.gz")
    cases = find_cases(tmp_path / "ct", tmp_path / "gt")
    assert [c.name for c in cases] == ["a", "b", "dicom_case"]
    assert [c.ground_truth.name if c.ground_truth else None for c in cases] == ["a.nii.gz", "b.nii.gz", None]
    with pytest.raises(CohortError, match="pair up by file name"):
        find_cases(tmp_path / "ct", tmp_path / "ct" / "dicom_case")
    with pytest.raises(CohortError, match="holds no"):
        find_cases(tmp_path / "ct" / "dicom_case")


def test_tasks_put_each_original_before_its_settings():
    plan = CohortPlan(
        "demo", ("organs", "vessels"), tuple(find_cases_stub(2)), df_settings([0.5, 0.3], ["tucker", "prune"])
    )
    keys = [t.key for t in plan.tasks()]
    assert len(keys) == len(set(keys)) == 2 * 2 * (1 + 4)
    assert keys[:5] == [
        "c0/organs/original", "c0/organs/tucker_df0.5", "c0/organs/tucker_df0.3",
        "c0/organs/prune_df0.5", "c0/organs/prune_df0.3",
    ]  # fmt: skip
    with pytest.raises(CohortError, match="unknown --method 'svd'"):
        df_settings([0.5], ["svd"])
    with pytest.raises(CohortError, match="DF 1.0 is the original"):
        df_settings([1.0], ["tucker"])


def find_cases_stub(n):
    from pathlib import Path

    from tuckerscope.core.cohorts.plan import Case

    return [Case(f"c{i}", Path(f"/data/c{i}.nii.gz")) for i in range(n)]


def synthetic_scores(cases=8, with_truth=True):
    """Two classes; 'liver' moves by noise either way under compression, 'spleen' loses 0.3 NSD in every case."""
    rng = np.random.default_rng(0)
    rows = []
    for case in range(cases):
        for name, drop in (("liver", 0.0), ("spleen", 0.3)):
            base = 0.95 + 0.01 * rng.standard_normal()
            for method, ratio, value in (("original", 1.0, base), ("tucker", 5.0, base - drop + 0.01 * rng.standard_normal())):
                rows.append(
                    {
                        "case": f"c{case}", "expert": "organs", "class": name, "method": method,
                        "setting": "original" if method == "original" else "tucker_df0.3",
                        "df": 1.0 if method == "original" else 0.3, "params": 1000 / ratio, "params_ratio": ratio,
                        "dice": math.nan if method == "original" else value,
                        "nsd": math.nan if method == "original" else value,
                        "dice_gt": value if with_truth else math.nan, "nsd_gt": value if with_truth else math.nan,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_curves_are_means_over_cases_with_t_intervals():
    scores = synthetic_scores()
    table = curves(scores)
    point = table[(table["method"] == "tucker")].iloc[0]
    per_case = scores[scores["method"] == "tucker"].groupby("case")["nsd_gt"].mean().to_numpy()
    mean, low, high = mean_ci(per_case)
    assert point["nsd_gt"] == pytest.approx(per_case.mean()) == pytest.approx(mean)
    half = stats.t.ppf(0.975, 7) * per_case.std(ddof=1) / math.sqrt(8)
    assert (point["nsd_gt_low"], point["nsd_gt_high"]) == pytest.approx((mean - half, mean + half))
    assert point["params_ratio"] == pytest.approx(5.0) and point["cases"] == 8


def test_per_class_test_finds_the_class_that_changed():
    tests = class_tests(synthetic_scores()).set_index("class")
    assert tests.loc["spleen", "differs"] and tests.loc["spleen", "p_holm"] < 0.05
    assert not tests.loc["liver", "differs"]
    assert (tests["p_holm"] >= tests["p"]).all()
    exact = stats.wilcoxon(np.full(8, -0.3) + np.linspace(0, 0.01, 8)).pvalue
    assert tests.loc["spleen", "p"] == pytest.approx(2 / 2**8) == pytest.approx(exact)


def test_without_ground_truth_the_test_is_against_identity():
    tests = class_tests(synthetic_scores(with_truth=False)).set_index("class")
    assert tests.loc["spleen", "reference"].startswith("1 (identical")
    assert tests.loc["spleen", "differs"]
    assert signed_rank_p(np.zeros(5)) == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--df", "0.5,abc"], "--df takes comma-separated numbers"),
        (["--df", "1.0"], "DF 1.0 is the original"),
        (["--target", "params=0.5x"], "a compression ratio is at least 1x"),
        (["--df", "0.5", "--experts", "lungs"], "the model has no expert 'lungs'"),
        (["--df", "0.5", "--method", "svd"], "unknown --method 'svd'"),
    ],
)
def test_bad_cohort_options_are_one_line_errors(tmp_path, capsys, extra, message):
    from tuckerscope.core.cli.main import main

    touch(tmp_path / "ct" / "a.nii.gz")
    assert main(["cohort", "--cts", str(tmp_path / "ct"), "--model", "demo", "-o", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_distilled_folder_built_for_a_target_is_named_by_it(tmp_path):
    from tuckerscope.core.cohorts.plan import distilled_settings
    from tuckerscope.core.models.compressed_model import save_compressed
    from tuckerscope.core.models.model_sources import demo_source

    expert = next(e for e in demo_source().load() if e.name == "vessels")
    for name, manifest in (("a", {"target": "params=10x"}), ("b", {"df": 0.3})):
        save_compressed(expert, expert.network, tmp_path / name, {**manifest, "compression_method": "tucker"})
    settings = sorted(distilled_settings(tmp_path, ["vessels"])["vessels"], key=lambda s: s.key)
    assert [s.key for s in settings] == ["tucker-distilled_df0.3", "tucker-distilled_params_10x"]
    assert [s.target for s in settings] == [None, "params=10x"]


def test_a_workers_original_labels_are_read_once_and_again_when_recomputed(tmp_path, monkeypatch):
    import os

    import numpy as np

    from tuckerscope.core.cohorts import tasks

    path = tmp_path / "organs.npz"
    np.savez_compressed(path, labels=np.ones((4, 4, 4), np.uint8), seconds=1.0)
    reads = []
    real_load = np.load
    monkeypatch.setattr(tasks.np, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))

    def labels():
        status = path.stat()
        return tasks._original_labels(str(path), (status.st_mtime_ns, status.st_size))

    first, second = labels(), labels()
    assert first is second and len(reads) == 1 and not first.flags.writeable
    np.savez_compressed(path, labels=np.full((4, 4, 4), 2, np.uint8), seconds=1.0)  # the original recomputed
    os.utime(path, ns=(status_ns := path.stat().st_mtime_ns + 10**9, status_ns))
    assert int(labels().max()) == 2 and len(reads) == 2
