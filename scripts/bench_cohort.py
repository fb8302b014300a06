"""Cohort engine figures: overhead per task, where it goes, and throughput with 1 vs 2 single-threaded workers.

Runs the same phantom cohort (demo experts) on a fresh LocalCluster of each worker count, each into a fresh
results folder, and prints per run: worker start-up (the workers import what their tasks need as they
start: cohorts.worker), wall time, tasks per minute, the task overhead (the share of the tasks' time, as
Dask's task stream measures each task's compute on its worker, spent outside segmentation) and the engine
overhead (the share of the workers' time in the run not spent in tasks: scheduling, transfers, idle
workers, the tail). Then the task time by component, from each task's record (`stage_seconds`); 'record
write, rest' is Dask's compute time minus the record's own total (the result file's atomic write,
pickling). 'model' and 'factorise' are paid once per worker and expert; the last column is the overhead
without them, what a long cohort pays per task. Inside 'segment', the case's preparation (reorient,
resample, normalise) is paid again by every worker a case's tasks land on: the run says how often a case
was prepared, against the minimum of once per case and expert.

    .venv/bin/python scripts/bench_cohort.py [--cases 4] [--experts vessels] [--df 0.5,0.3] [--spacing 6]
        [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from distributed import get_task_stream

from tuckerscope.core.cli.phantom import write_phantom_cohort
from tuckerscope.core.cohorts.engine import local_client, run_cohort
from tuckerscope.core.cohorts.plan import CohortPlan, df_settings, find_cases
from tuckerscope.core.cohorts.tasks import read_record

COMPONENTS = ("case", "model", "factorise", "network", "original labels", "segment", "scores")
PER_WORKER = ("model", "factorise")
REST = "record write, rest"
PREPARATION = ("reorient", "resample", "normalise")


def run(cohort: Path, workers: int, experts: tuple[str, ...], dfs: list[float], out: Path) -> dict:
    plan = CohortPlan("demo", experts, find_cases(cohort / "ct"), df_settings(dfs, ["tucker"]))
    started = time.perf_counter()
    client = local_client(workers, dashboard_address=None)
    client.wait_for_workers(workers)
    start_up = time.perf_counter() - started
    try:
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            summary = run_cohort(plan, out, client)
            wall = time.perf_counter() - started
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    compute = {
        entry["key"].split("-", 3)[3]: sum(s["stop"] - s["start"] for s in entry["startstops"] if s["action"] == "compute")
        for entry in stream.data
    }
    components = dict.fromkeys((*COMPONENTS, REST), 0.0)
    preparing, prepared = 0.0, 0
    for task in plan.tasks():
        record = read_record(task.result_path(out)) or {}
        for name, seconds in (record.get("stage_seconds") or {}).items():
            components[name] += seconds
        components[REST] += compute[task.key] - record.get("task_seconds", 0.0)
        stages = record.get("segment_stages") or {}
        preparing += sum(stages.get(name, 0.0) for name in PREPARATION)
        prepared += any(name in stages for name in PREPARATION)
    task_time = sum(compute.values())
    overhead = task_time - components["segment"]
    steady = overhead - sum(components[name] for name in PER_WORKER)
    return {
        "tasks": summary.ran,
        "failed": summary.failed,
        "start_up_s": start_up,
        "wall_s": wall,
        "tasks_per_min": 60 * summary.ran / wall,
        "task_overhead": overhead / task_time,
        "steady_overhead": steady / (task_time - overhead + steady),
        "engine_overhead": 1 - task_time / (wall * workers),
        "task_s": task_time,
        "components": components,
        "preparing_s": preparing,
        "prepared": prepared,
        "minimum_prepared": len(plan.cases) * len(plan.experts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--experts", default="vessels")
    parser.add_argument("--df", default="0.5,0.3")
    parser.add_argument("--spacing", type=float, default=6.0)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    args = parser.parse_args()
    experts = tuple(args.experts.split(","))
    dfs = [float(d) for d in args.df.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        cohort = Path(folder) / "cohort"
        write_phantom_cohort(cohort, args.cases, 40_000, args.spacing)
        figures = {w: run(cohort, w, experts, dfs, Path(folder) / f"results_{w}") for w in counts}
    load = os.getloadavg()[0]
    print(f"cohort: {args.cases} phantoms at {args.spacing:g} mm, experts {args.experts}, DFs {args.df}")
    print(f"machine load (1 min) at the end {load:.1f} on {os.cpu_count()} cores")
    print(
        f"{'workers':>7} {'tasks':>5} {'start-up s':>10} {'wall s':>7} {'tasks/min':>9} {'task overhead':>13} "
        f"{'engine overhead':>15} {'per-task overhead w/o model+factorise':>37}"
    )
    for workers, f in figures.items():
        print(
            f"{workers:>7} {f['tasks']:>5.0f} {f['start_up_s']:>10.1f} {f['wall_s']:>7.1f} {f['tasks_per_min']:>9.2f} "
            f"{f['task_overhead']:>13.1%} {f['engine_overhead']:>15.1%} {f['steady_overhead']:>37.1%}"
        )
    print("task time by component (seconds summed over tasks, share of the tasks' compute time):")
    print(f"{'component':>20} " + " ".join(f"{f'{w} worker(s)':>18}" for w in figures))
    for name in (*COMPONENTS, REST):
        cells = [f"{f['components'][name]:8.2f} s {f['components'][name] / f['task_s']:6.1%}" for f in figures.values()]
        print(f"{name:>20} " + " ".join(f"{c:>18}" for c in cells))
        if name == "segment":
            cells = [f"{f['preparing_s']:8.2f} s {f['preparing_s'] / f['task_s']:6.1%}" for f in figures.values()]
            print(f"{'(preparing the case)':>20} " + " ".join(f"{c:>18}" for c in cells))
    for workers, f in figures.items():
        print(f"{workers} worker(s): cases prepared {f['prepared']} times (once per case and expert: {f['minimum_prepared']})")
    if 1 in figures:
        for workers in (w for w in figures if w != 1):
            ratio = figures[workers]["tasks_per_min"] / figures[1]["tasks_per_min"]
            one, many = (figures[w]["start_up_s"] + figures[w]["wall_s"] for w in (1, workers))
            print(f"throughput {workers} workers / 1 worker: {ratio:.2f}x ({one / many:.2f}x counting worker start-up)")


if __name__ == "__main__":
    main()
