"""Run a cohort on Dask distributed: one task per (case, expert, setting), resumable and fault-tolerant.

The client is either an embedded LocalCluster (`local_client`) or any running scheduler (a dask-scheduler
with dask-workers, dask-jobqueue on Slurm, Kubernetes): the engine only submits tasks to it. Settings
need their case's original, so the original of each (case, expert) runs once and every setting reuses its
cached labels: a setting is submitted when its original has run, to the worker that ran it (which holds
the case prepared), or to any worker if that one is gone. Tasks already recorded in RESULTS/tasks are
not submitted again.

Faults: a worker lost mid-task (killed, out of memory) is rescheduled by the scheduler elsewhere, and a
task that raises is retried (`RETRIES`); its finished siblings are untouched because each one's result is
its own file. A task that still fails is recorded as failed with the reason, like an unreadable case.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuckerscope.core.cohorts.plan import ORIGINAL, CohortError, CohortPlan, Task
from tuckerscope.core.cohorts.tasks import DONE, FAILED, read_record, run_task, write_record
from tuckerscope.core.outputs.exports import write_text

if TYPE_CHECKING:
    from distributed import Client

RETRIES = 2
WORKER_PRELOAD = "tuckerscope.core.cohorts.worker"
"""What `dask worker ... --preload` should name on a cluster too, so that no task pays for imports."""
PLAN_FILE = "cohort.json"
COMPATIBLE_FIELDS = ("model", "tolerance_mm", "device", "precision")
"""A results folder's tasks are reused only by a cohort that agrees on these (other cases or DFs may differ)."""


@dataclass
class CohortProgress:
    """Where a run stands; `eta_seconds` extrapolates the mean time per finished task of this run."""

    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def eta_seconds(self) -> float | None:
        remaining = self.total - self.skipped - self.finished
        if self.finished == 0:
            return None
        return (time.perf_counter() - self.started) / self.finished * remaining

    def line(self) -> str:
        eta = self.eta_seconds
        left = "" if eta is None else f", ETA {eta:.0f} s"
        return (
            f"{self.skipped + self.finished}/{self.total} tasks ({self.done} done, {self.failed} failed, "
            f"{self.skipped} from an earlier run){left}"
        )


@dataclass(frozen=True)
class CohortRun:
    """What a run did: how many tasks it ran, skipped and lost, and how long it took."""

    total: int
    ran: int
    skipped: int
    failed: int
    seconds: float
    dashboard: str | None


ProgressHook = Callable[[CohortProgress, dict[str, Any] | None], None]


def local_client(workers: int, dashboard_address: str | None = ":8787") -> Client:
    """An embedded cluster of `workers` single-threaded processes (torch runs one thread in each), each
    importing what its tasks need as it starts (`WORKER_PRELOAD`).

    Without work stealing: Dask would move a queued setting to an idle worker because its input is a few
    bytes, but that worker must then read and prepare the case again (seconds on a real CT); workers stay
    busy anyway by pulling the next original, and a lost worker's tasks still go elsewhere.
    """
    import dask
    from distributed import Client, LocalCluster

    if workers < 1:
        raise CohortError(f"--workers must be at least 1, got {workers}")
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard_address,
            preload=[WORKER_PRELOAD],
        )
    return Client(cluster)


def connect(address: str) -> Client:
    """A client of a running scheduler ('tcp://host:8786')."""
    from distributed import Client

    try:
        return Client(address, timeout="20s")
    except OSError as exc:
        raise CohortError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def pending_tasks(plan: CohortPlan, results: Path, retry_failed: bool = False) -> list[Task]:
    """The plan's tasks without a result yet (failed ones too when `retry_failed`)."""
    pending = []
    for task in plan.tasks():
        record = read_record(task.result_path(results))
        if record is None or (retry_failed and record.get("status") == FAILED):
            pending.append(task)
    return pending


def run_cohort(
    plan: CohortPlan,
    results: Path,
    client: Client,
    retry_failed: bool = False,
    progress: ProgressHook | None = None,
) -> CohortRun:
    """Run every pending task of `plan` on `client`, writing results under `results`; returns a summary."""
    from distributed import as_completed

    results = Path(results)
    claim_results_folder(plan, results)
    tasks = plan.tasks()
    pending = pending_tasks(plan, results, retry_failed)
    state = CohortProgress(total=len(tasks), skipped=len(tasks) - len(pending))
    started = time.perf_counter()
    token = secrets.token_hex(4)  # keys unique per run, so a shared scheduler never returns an old result
    order = {case.name: index for index, case in enumerate(plan.cases)}
    by_future: dict[Any, Task] = {}
    held: dict[str, list[Task]] = {}  # original's key -> its pending settings, submitted once it has run

    def submit(task: Task, worker: str | None = None) -> Any:
        future = client.submit(
            run_task,
            plan,
            task,
            results,
            key=task_key(token, task),
            retries=RETRIES,
            priority=len(plan.cases) - order[task.case.name],
            pure=False,
            workers=[worker] if worker else None,
            allow_other_workers=worker is not None,
        )
        by_future[future] = task
        return future

    pending_originals = {t.key for t in pending if t.setting.method == ORIGINAL}
    first = []
    for task in pending:
        original = plan.original_of(task).key
        if task.setting.method != ORIGINAL and original in pending_originals:
            held.setdefault(original, []).append(task)
        else:
            first.append(submit(task))
    if progress is not None:
        progress(state, None)
    running = as_completed(first)
    for future in running:
        task = by_future.pop(future)
        if future.status == "error":
            record = failure_record(task, future.exception())
            write_record(task.result_path(results), record)
        else:
            record = future.result()
        # A case's settings go where its original ran: that worker has the case prepared (tasks._case).
        # Preferred, not required: they run elsewhere if it is lost.
        settings = held.pop(task.key, [])
        if settings:
            holders = client.who_has([future]).get(future.key) or ()
            for setting in settings:
                running.add(submit(setting, next(iter(holders), None)))
        if record.get("status") == DONE:
            state.done += 1
        else:
            state.failed += 1
        future.release()
        if progress is not None:
            progress(state, record)
    return CohortRun(
        total=state.total,
        ran=state.finished,
        skipped=state.skipped,
        failed=state.failed,
        seconds=time.perf_counter() - started,
        dashboard=getattr(client, "dashboard_link", None),
    )


def task_key(token: str, task: Task) -> str:
    """'cohort-original-TOKEN-CASE/EXPERT/original' or 'cohort-setting-TOKEN-...': the dashboard shows the
    two kinds as two task groups (and Dask queues the originals, which depend on nothing, when there are
    more of them than twice the workers' threads)."""
    kind = "original" if task.setting.method == ORIGINAL else "setting"
    return f"cohort-{kind}-{token}-{task.key}"


def failure_record(task: Task, error: BaseException | None) -> dict[str, Any]:
    """The record of a task that kept failing (every retry raised, or its workers kept dying)."""
    reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    return {
        "task": task.key,
        "case": task.case.name,
        "expert": task.expert,
        "setting": task.setting.key,
        "method": task.setting.method,
        "df": task.setting.df,
        "status": FAILED,
        "reason": f"{reason} (after {RETRIES} retries)",
        "rows": [],
    }


def claim_results_folder(plan: CohortPlan, results: Path) -> None:
    """Create RESULTS and record the plan; refuse a folder made by an incompatible cohort."""
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CohortError(f"cannot create results folder {results}: {exc.strerror or exc}") from None
    description = plan.description()
    existing_path = results / PLAN_FILE
    if existing_path.is_file():
        try:
            existing = json.loads(existing_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = {}
        clashes = [f for f in COMPATIBLE_FIELDS if f in existing and existing[f] != description[f]]
        if clashes:
            raise CohortError(
                f"{results} holds a cohort with another {clashes[0]} ({existing[clashes[0]]!r}); "
                "use a new results folder"
            )
    write_text(existing_path, json.dumps(description, indent=1))
