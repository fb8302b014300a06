"""A phantom cohort with the demo experts on a 2-worker Dask LocalCluster: every score, rerun, recompute,
a corrupt case, a killed worker, the HTML report in headless Chromium, and a dask-scheduler + dask-worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuckerscope.core.cli.main import main
from tuckerscope.core.cli.phantom import write_phantom_cohort
from tuckerscope.core.cohorts.engine import local_client, run_cohort
from tuckerscope.core.cohorts.plan import CohortError, CohortPlan, df_settings, find_cases
from tuckerscope.core.cohorts.results import load_results, open_results, task_records
from tuckerscope.core.cohorts.tasks import read_record
from tuckerscope.core.models.model_sources import demo_source

distributed = pytest.importorskip("distributed")

SPACING = 8.0  # the demo experts resample to 3 mm anyway; coarse files keep scoring fast
DEMO_CLASSES = {e.name: sorted(n for v, n in e.class_names.items() if v > 0) for e in demo_source().load()}
FAST_EXPERTS = ("vessels",)  # the default run; test_all_experts_slow scores all three


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    write_phantom_cohort(folder, 4, 30_000, SPACING)
    (folder / "ct" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return folder


@pytest.fixture(scope="module")
def client():
    client = local_client(2, dashboard_address=":0")  # as `cohort --workers 2` makes it
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


def cohort_argv(cohort, client, out, experts):
    argv = ["cohort", "--cts", str(cohort / "ct"), "--gt", str(cohort / "labels"), "--model", "demo"]
    argv += ["--experts", ",".join(experts), "--df", "0.5", "--scheduler", client.scheduler.address]
    return [*argv, "-o", str(out), "--json"]


def run_timed(argv, what):
    started = time.perf_counter()
    assert main(argv) == 0
    print(f"{what}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def results(cohort, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    run_timed(cohort_argv(cohort, client, out, FAST_EXPERTS), "4-case cohort (+1 corrupt), 1 expert, 1 DF, 2 workers")
    return out


def check_every_score(results, experts):
    scores = load_results(results).scores
    good = sorted(f"phantom_{30_000 + i}" for i in range(4))
    assert sorted(scores["case"].unique()) == good
    for case in good:
        for expert in experts:
            classes = DEMO_CLASSES[expert]
            for method in ("original", "tucker"):
                part = scores[(scores["case"] == case) & (scores["expert"] == expert) & (scores["method"] == method)]
                assert sorted(part["class"]) == classes, (case, expert, method)
                assert part[["dice_gt", "nsd_gt", "params", "flops", "seconds"]].notna().all().all()
                if method == "tucker":
                    assert part[["dice", "nsd"]].notna().all().all()
                    assert (part["params_ratio"] > 1.5).all() and (part["df"] == 0.5).all()
    originals = scores[scores["method"] == "original"]
    assert originals["dice_gt"].mean() > 0.85  # the demo experts segment held-out phantoms well
    assert (results / "scores.parquet").is_file() and (results / "figure2.png").is_file()
    for name in ("curves", "per_class", "class_tests"):
        assert (results / f"{name}.csv").stat().st_size > 100


def test_every_score_of_every_case(results):
    check_every_score(results, FAST_EXPERTS)


def test_settings_run_where_their_case_is_prepared_and_say_where_their_time_went(results):
    """Each setting goes to the worker that ran its original, which still holds the case prepared."""
    records = [r for r in task_records(results) if r["status"] == "done"]
    ran_original = {(r["case"], r["expert"]): r["worker"] for r in records if r["method"] == "original"}
    settings = [r for r in records if r["method"] != "original"]
    assert len(settings) == 4 and len({r["worker"] for r in records}) == 2
    assert all(r["worker"] == ran_original[r["case"], r["expert"]] for r in settings)
    assert not any({"reorient", "resample", "normalise"} & set(r["segment_stages"]) for r in settings)
    for record in records:
        stages = record["stage_seconds"]
        assert {"case", "model", "factorise", "network", "original labels", "segment", "scores"} <= set(stages)
        assert stages["segment"] == record["segment_seconds"]
        assert sum(stages.values()) <= record["task_seconds"]
        assert "tiles (network)" in record["segment_stages"]


def test_open_results_gives_the_window_curves_and_per_class_table(results, tmp_path):
    view = open_results(results)
    point = view.curves[(view.curves["expert"] == "vessels") & (view.curves["method"] == "tucker")].iloc[0]
    assert point["cases"] == 4 and point["params_ratio"] > 1.5
    assert point["nsd_low"] <= point["nsd"] <= point["nsd_high"]
    tucker = view.per_class[view.per_class["method"] == "tucker"]
    assert sorted(tucker["class"]) == DEMO_CLASSES["vessels"] and (tucker["cases"] == 4).all()
    assert len(view.tests) == len(DEMO_CLASSES["vessels"])
    with pytest.raises(CohortError, match="not a cohort results folder"):
        open_results(tmp_path)


@pytest.mark.slow
def test_all_experts_slow(cohort, client, tmp_path):
    run_timed(cohort_argv(cohort, client, tmp_path, tuple(DEMO_CLASSES)), "4-case cohort (+1 corrupt), 3 experts")
    check_every_score(tmp_path, tuple(DEMO_CLASSES))


def test_corrupt_case_reported_not_fatal(results):
    failures = load_results(results).failures
    assert sorted(failures["task"]) == sorted(
        f"broken/{e}/{s}" for e in FAST_EXPERTS for s in ("original", "tucker_df0.5")
    )
    originals = failures[failures["setting"] == "original"]
    assert originals["reason"].str.contains("broken.nii.gz").all()


def test_rerun_does_no_work_and_a_deleted_result_is_recomputed_alone(cohort, client, results, capsys):
    capsys.readouterr()
    assert main(cohort_argv(cohort, client, results, FAST_EXPERTS)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ran"], summary["skipped"], summary["tasks"]) == (0, 10, 10)
    target = results / "tasks" / "phantom_30002" / "vessels" / "tucker_df0.5.json"
    before = read_record(target)
    target.unlink()
    assert main(cohort_argv(cohort, client, results, FAST_EXPERTS)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ran"], summary["skipped"]) == (1, 9)
    after = read_record(target)
    assert [r["class"] for r in after["rows"]] == [r["class"] for r in before["rows"]]
    assert [r["nsd"] for r in after["rows"]] == pytest.approx([r["nsd"] for r in before["rows"]])


def test_report_renders_in_headless_chromium(results, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    html = (results / "report.html").read_text()
    assert "Figure 2" in html and "data:image/png;base64," in html and "http" not in html.split("<body>")[1]
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1300,1800",
         (results / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1800, 1300)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # the figure's lines and text, not a blank or error page
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (results / "report.html").as_uri()],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "Per-class test" in dom and "broken/vessels/original" in dom


def executing(dask_worker):
    return os.getpid(), [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state == "executing"]


def test_a_worker_killed_mid_task_loses_only_that_task(cohort, client, tmp_path):
    cases = tuple(c for c in find_cases(cohort / "ct", cohort / "labels") if c.name != "broken")[:2]
    plan = CohortPlan("demo", FAST_EXPERTS, cases, df_settings([0.5], ["tucker"]))
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(run=run_cohort(plan, tmp_path, client)))
    runner.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and runner.is_alive():
        for pid, keys in client.run(executing).values():
            if keys:
                os.kill(pid, signal.SIGKILL)
                killed = (pid, keys[0].split("-", 3)[3])  # cohort-KIND-TOKEN-CASE/EXPERT/SETTING
                break
        time.sleep(0.05)
    runner.join(timeout=300)
    assert killed is not None, "no task was seen executing"
    run = outcome["run"]
    assert (run.total, run.failed) == (4, 0)
    records = {t.key: read_record(t.result_path(tmp_path)) for t in plan.tasks()}
    assert all(r is not None and r["status"] == "done" for r in records.values())
    assert not records[killed[1]]["worker"].endswith(f":{killed[0]}")  # it ran again on a live worker
    client.wait_for_workers(2, timeout=60)


def test_scheduler_address_with_dask_scheduler_and_dask_worker(cohort, tmp_path):
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--scheduler-file", scheduler_file, "--port", "0", "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = subprocess.Popen(
            [bin_dir / "dask", "worker", "--scheduler-file", scheduler_file, "--nthreads", "1", "--nworkers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        address = json.loads(scheduler_file.read_text())["address"]
        ct = tmp_path / "ct"
        ct.mkdir()
        shutil.copy(cohort / "ct" / "phantom_30000.nii.gz", ct)
        out = tmp_path / "results"
        code = subprocess.run(
            [bin_dir / "tuckerscope", "cohort", "--cts", ct, "--model", "demo", "--experts", "vessels", "--df", "0.5",
             "--scheduler", address, "-o", out, "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert code.returncode == 0, code.stderr
        summary = json.loads(code.stdout)
        assert (summary["ran"], summary["failed"]) == (2, 0)
        assert load_results(out).scores["nsd"].notna().sum() == len(DEMO_CLASSES["vessels"])
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def test_distilled_folder_and_budget_target_reuse_the_original(cohort, client, tmp_path, capsys):
    from tuckerscope.core.cohorts.tasks import compressed_network
    from tuckerscope.core.compression.ranks import df_ranks, ranks_of
    from tuckerscope.core.compression.tucker import TuckerEngine
    from tuckerscope.core.models.compressed_model import save_compressed

    expert = next(e for e in demo_source().load() if e.name == "vessels")
    engine = TuckerEngine(expert.network, (1, 1, *expert.patch_size))
    engine.factorise()
    ranks = ranks_of(df_ranks(engine.layers, 0.5))
    for method in ("tucker", "prune"):  # saved zero-shot networks stand in for `distil -o` folders
        network, _ = compressed_network(engine, method, ranks)
        save_compressed(expert, network, tmp_path / "distilled" / method, {"df": 0.5, "compression_method": method})
    ct = tmp_path / "ct"
    ct.mkdir()
    shutil.copy(cohort / "ct" / "phantom_30001.nii.gz", ct)
    out = tmp_path / "results"
    base = ["cohort", "--cts", str(ct), "--model", "demo", "--experts", "vessels"]
    base += ["--scheduler", client.scheduler.address, "-o", str(out), "--json"]
    capsys.readouterr()
    assert main([*base, "--df", "0.5", "--method", "tucker,prune", "--distilled", str(tmp_path / "distilled")]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 5
    assert main([*base, "--target", "params=4x"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 1  # the original is reused from the first run
    scores = load_results(out).scores.set_index(["setting", "class"]).sort_index()
    for method in ("tucker", "prune"):  # the same networks, saved and loaded: the same counts and scores
        zero_shot, saved = scores.loc[f"{method}_df0.5"], scores.loc[f"{method}-distilled_df0.5"]
        assert (saved["params"] == zero_shot["params"]).all() and (saved["flops"] == zero_shot["flops"]).all()
        np.testing.assert_allclose(saved["nsd"], zero_shot["nsd"])
    target = scores.loc["tucker_params_4x"]
    assert target["params_ratio"].iloc[0] == pytest.approx(4.0, rel=0.01)
    assert target["target"].iloc[0] == "params=4x"
