"""Cohort engine figures: overhead per task and throughput with 1 vs 2 single-threaded Dask workers.

Runs the same phantom cohort (demo experts) on a fresh LocalCluster of 1 and then 2 workers, each into a
fresh results folder, and prints per run: wall time, tasks per minute, the share of each task's time spent
outside segmentation (loading, compressing, scoring, writing: the task's overhead), and the share of the
workers' time not spent in tasks at all (scheduling, transfers, idle: the engine's overhead).

    .venv/bin/python scripts/bench_cohort.py [--cases 4] [--experts vessels] [--df 0.5,0.3] [--spacing 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tuckerscope.core.cli.phantom import write_phantom_cohort
from tuckerscope.core.cohorts.engine import local_client, run_cohort
from tuckerscope.core.cohorts.plan import CohortPlan, df_settings, find_cases
from tuckerscope.core.cohorts.results import assemble


def run(cohort: Path, workers: int, experts: tuple[str, ...], dfs: list[float], out: Path) -> dict[str, float]:
    plan = CohortPlan("demo", experts, find_cases(cohort / "ct"), df_settings(dfs, ["tucker"]))
    client = local_client(workers, dashboard_address=None)
    client.wait_for_workers(workers)
    try:
        started = time.perf_counter()
        summary = run_cohort(plan, out, client)
        wall = time.perf_counter() - started
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    tasks = assemble(out).tasks
    task_time = tasks["task_seconds"].sum()
    segment_time = tasks["segment_seconds"].sum()
    return {
        "tasks": summary.ran,
        "failed": summary.failed,
        "wall_s": wall,
        "tasks_per_min": 60 * summary.ran / wall,
        "task_overhead": 1 - segment_time / task_time,
        "engine_overhead": 1 - task_time / (wall * workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--experts", default="vessels")
    parser.add_argument("--df", default="0.5,0.3")
    parser.add_argument("--spacing", type=float, default=6.0)
    args = parser.parse_args()
    experts = tuple(args.experts.split(","))
    dfs = [float(d) for d in args.df.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        cohort = Path(folder) / "cohort"
        write_phantom_cohort(cohort, args.cases, 40_000, args.spacing)
        figures = {w: run(cohort, w, experts, dfs, Path(folder) / f"results_{w}") for w in (1, 2)}
    print(f"cohort: {args.cases} phantoms at {args.spacing:g} mm, experts {args.experts}, DFs {args.df}")
    print(f"{'workers':>7} {'tasks':>5} {'wall s':>7} {'tasks/min':>9} {'task overhead':>13} {'engine overhead':>15}")
    for workers, f in figures.items():
        print(
            f"{workers:>7} {f['tasks']:>5.0f} {f['wall_s']:>7.1f} {f['tasks_per_min']:>9.2f} "
            f"{f['task_overhead']:>13.1%} {f['engine_overhead']:>15.1%}"
        )
    print(f"throughput 2 workers / 1 worker: {figures[2]['tasks_per_min'] / figures[1]['tasks_per_min']:.2f}x")


if __name__ == "__main__":
    main()
