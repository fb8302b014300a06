"""A cohort's results folder as tables: the scores (one row per case x class x setting) and the failures.

The task files under RESULTS/tasks are the truth; scores.csv, scores.parquet and failures.csv are
assembled from them after every run (each written atomically), so they always match the finished tasks.
`open_results` is what the window's File > Open results calls: the tables plus the curves, the per-class
table and the tests, computed as the report computes them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tuckerscope.core.cohorts.analysis import class_tests, curves, per_class
from tuckerscope.core.cohorts.plan import CohortError
from tuckerscope.core.cohorts.tasks import FAILED, read_record
from tuckerscope.core.outputs.exports import atomic_outputs, write_text

SCORE_COLUMNS = (
    "case", "expert", "class", "label", "method", "setting", "df", "target", "params", "flops", "params_ratio",
    "flops_ratio", "dice", "nsd", "status", "dice_gt", "nsd_gt", "seconds",
)  # fmt: skip
FAILURE_COLUMNS = ("task", "case", "expert", "setting", "method", "df", "reason")
TASK_COLUMNS = (
    "task", "case", "expert", "setting", "method", "status", "segment_seconds", "task_seconds", "worker",
    "gt_error", "gt_unmatched",
)  # fmt: skip


@dataclass(frozen=True)
class CohortResults:
    """The tables of one results folder (pandas DataFrames) and the plan it was made with."""

    folder: Path
    scores: pd.DataFrame
    failures: pd.DataFrame
    tasks: pd.DataFrame
    plan: dict

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.scores["nsd_gt"].notna().any()) if len(self.scores) else False


def task_records(results: Path) -> list[dict]:
    return [r for p in sorted((Path(results) / "tasks").rglob("*.json")) if (r := read_record(p)) is not None]


def assemble(results: Path) -> CohortResults:
    """Build the tables from the task files and write scores.csv, scores.parquet and failures.csv."""
    results = Path(results)
    records = task_records(results)
    rows = [row for record in records for row in record.get("rows", [])]
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    failures = pd.DataFrame(
        [{c: r.get(c) for c in FAILURE_COLUMNS} for r in records if r.get("status") == FAILED],
        columns=list(FAILURE_COLUMNS),
    )
    tasks = pd.DataFrame([{c: r.get(c) for c in TASK_COLUMNS} for r in records], columns=list(TASK_COLUMNS))
    write_text(results / "scores.csv", scores.to_csv(index=False))
    write_text(results / "failures.csv", failures.to_csv(index=False))
    write_text(results / "tasks.csv", tasks.to_csv(index=False))
    with atomic_outputs() as out:
        scores.to_parquet(out.file_for(results / "scores.parquet"), index=False)
    return CohortResults(results, scores, failures, tasks, read_plan(results))


def read_plan(results: Path) -> dict:
    try:
        return json.loads((Path(results) / "cohort.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def load_results(folder: Path | str) -> CohortResults:
    """Open a cohort results folder: its tables as written by the last run (assembled from the task files
    when the run was stopped before it wrote them)."""
    folder = Path(folder)
    if not (folder / "cohort.json").is_file() and not (folder / "scores.csv").is_file():
        raise CohortError(f"{folder} is not a cohort results folder (no cohort.json or scores.csv)")
    if not (folder / "scores.csv").is_file():
        return assemble(folder)
    try:
        scores = (
            pd.read_parquet(folder / "scores.parquet")
            if (folder / "scores.parquet").is_file()
            else pd.read_csv(folder / "scores.csv")
        )
        failures = read_csv_or_empty(folder / "failures.csv", FAILURE_COLUMNS)
        tasks = read_csv_or_empty(folder / "tasks.csv", TASK_COLUMNS)
    except (OSError, ValueError) as exc:
        raise CohortError(f"cannot read the cohort tables in {folder}: {exc}") from None
    return CohortResults(folder, scores, failures, tasks, read_plan(folder))


def read_csv_or_empty(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(columns))
    text = path.read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame(columns=list(columns))


@dataclass(frozen=True)
class CohortView:
    """A results folder as the window shows it: Figure 2's curves, the per-class table and the tests."""

    results: CohortResults
    curves: pd.DataFrame  # expert (or 'all experts'), method, setting, df, params_ratio, cases, <metric>[_low|_high]
    per_class: pd.DataFrame  # expert, class, method, setting, df, params_ratio, cases, <metric> means
    tests: pd.DataFrame  # expert, class, method, setting, cases, p, p_holm, differs


def open_results(folder: Path | str) -> CohortView:
    """Load a cohort results folder and compute what its report shows (CohortError if it is not one)."""
    results = load_results(folder)
    return CohortView(results, curves(results.scores), per_class(results.scores), class_tests(results.scores))
