"""The work of one cohort task, as it runs on a Dask worker: segment, score, write the result atomically.

An original task segments the case with the expert's own network, caches the labels on disk
(RESULTS/originals/CASE/EXPERT.npz) and scores them against the ground truth. A setting task builds the
compressed network, segments, and scores against that cached original (and the ground truth). Either writes
its result file with write-then-rename, so a worker killed mid-task leaves nothing behind but a task the
scheduler runs again.

A case that cannot be read (or an expert that cannot run on it) is a result too: status 'failed' with the
reason, written like any other, so the cohort goes on and the failure shows in RESULTS/failures.csv.

Each worker process keeps the experts it ran, their factorised engines, the last settings' networks, the last
originals it read and its last two cases, prepared, in memory, so the tasks of one case pay for loading and
preparing it once per worker (the engine sends a case's settings to the worker that ran its original) and a
setting's network is built once per worker, not once per case. Every record says
where its task's time went (`stage_seconds`: case, model, factorise, network, original labels, segment,
scores); everything but 'segment' is the engine's overhead, which scripts/bench_cohort.py reports. The
segmentation's own stages (`segment_stages`: reorient, resample, normalise, tiles...) show whether the task
found its case already prepared on this worker.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tuckerscope.core.cohorts.plan import ORIGINAL, CohortPlan, Task
from tuckerscope.core.compression.budgets import BudgetError, solve_budget
from tuckerscope.core.compression.counting import NetworkCost, count_network
from tuckerscope.core.compression.pruning import prune_to_match
from tuckerscope.core.compression.ranks import df_ranks, ranks_of
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.evaluation.metrics import Comparison, classes_from_names, compare
from tuckerscope.core.imaging.label_maps import load_label_map, match_by_name
from tuckerscope.core.imaging.volume import Volume, load_volume
from tuckerscope.core.models.compressed_model import MANIFEST_NAME, CompressedModelError
from tuckerscope.core.models.model_folder import LoadedExpert, load_expert, read_json, spec_from_folder
from tuckerscope.core.models.model_sources import ModelSource, resolve_source
from tuckerscope.core.outputs.exports import atomic_outputs, write_text
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation.expert_run import expert_engine
from tuckerscope.core.segmentation.profile import StageProfile
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter

DONE, FAILED = "done", "failed"
RECOVERABLE = (UserError, OSError, EOFError, ValueError)
"""Errors that a case or a model folder causes (unreadable, corrupt, wrong grid): recorded, never retried.
Anything else is a defect or a lost worker; it propagates so that Dask retries the task."""


def original_labels_path(results: Path, task: Task) -> Path:
    return Path(results) / "originals" / task.case.name / f"{task.expert}.npz"


def run_task(plan: CohortPlan, task: Task, results: Path) -> dict[str, Any]:
    """Run `task` and write its result file; returns the record written (small: no label maps)."""
    started = time.perf_counter()
    clock, _SEGMENT_STAGES.clock = StageProfile(), StageProfile()
    record: dict[str, Any] = {
        "task": task.key,
        "case": task.case.name,
        "expert": task.expert,
        "setting": task.setting.key,
        "method": task.setting.method,
        "df": task.setting.df,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    try:
        if task.setting.method == ORIGINAL:
            record.update(_run_original(plan, task, Path(results), clock))
        else:
            record.update(_run_setting(plan, task, Path(results), clock))
        record["status"] = DONE
    except RECOVERABLE as exc:
        record.update(status=FAILED, reason=str(exc) or type(exc).__name__, rows=[])
    record["task_seconds"] = time.perf_counter() - started
    record["stage_seconds"], record["segment_stages"] = clock.seconds, _SEGMENT_STAGES.clock.seconds
    write_record(task.result_path(results), record)
    return {k: v for k, v in record.items() if k != "rows"}


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=1, allow_nan=True))


def read_record(path: Path) -> dict[str, Any] | None:
    """A finished task's record, or None when there is none (a torn file cannot exist: writes are atomic)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _run_original(plan: CohortPlan, task: Task, results: Path, clock: StageProfile) -> dict[str, Any]:
    with clock.stage("case"):
        volume, segmenter = _case(str(task.case.ct))
    with clock.stage("model"):
        expert = _expert(plan.model, task.expert)
    with clock.stage("factorise"):  # here, so that this case's settings find the engine ready on this worker
        _engine(plan.model, task.expert)
    with clock.stage("network"):
        cost = _original_cost(plan.model, task.expert)
    with clock.stage("segment"):
        labels = segmenter.segment(expert, options=_options(plan))
    seconds = clock.seconds["segment"]
    with clock.stage("original labels"):
        path = original_labels_path(results, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs() as out:
            np.savez_compressed(out.file_for(path), labels=labels, seconds=seconds)
    with clock.stage("scores"):
        scores = _scores(plan, task, volume, expert, None, labels)
        rows = _rows(task, cost.params, cost.flops, cost, seconds, scores)
    return {"segment_seconds": seconds, **rows}


def _run_setting(plan: CohortPlan, task: Task, results: Path, clock: StageProfile) -> dict[str, Any]:
    with clock.stage("original labels"):
        cached = original_labels_path(results, task)
        if not cached.is_file():
            raise OSError(
                f"the original segmentation of {task.case.name} by {task.expert} failed, so it has no setting scores"
            )
        status = cached.stat()
        original = _original_labels(str(cached), (status.st_mtime_ns, status.st_size))
    with clock.stage("case"):
        volume, segmenter = _case(str(task.case.ct))
    with clock.stage("model"):
        expert = _expert(plan.model, task.expert)
    with clock.stage("factorise"):
        engine = _engine(plan.model, task.expert)
    with clock.stage("network"):
        original_cost = _original_cost(plan.model, task.expert)
        if task.setting.model is not None:
            network, params, flops = _distilled(task.setting.model, engine)
        else:
            setting = task.setting
            network, cost = _setting_network(plan.model, task.expert, setting.method, setting.df, setting.target)
            params, flops = cost.params, cost.flops
    with clock.stage("segment"):
        labels = segmenter.segment(expert, network, options=_options(plan))
    seconds = clock.seconds["segment"]
    with clock.stage("scores"):
        scores = _scores(plan, task, volume, expert, original, labels)
        rows = _rows(task, params, flops, original_cost, seconds, scores)
    return {"segment_seconds": seconds, **rows}


def compressed_network(
    engine: TuckerEngine, method: str, ranks: dict[str, tuple[int, int]]
) -> tuple[nn.Module, NetworkCost]:
    """Tucker at `ranks`, or pruning matched to that Tucker network's parameters (the paper's comparison),
    with its parameters and FLOPs."""
    if method == "prune":
        pruned = prune_to_match(engine, ranks)
        return pruned.network.eval(), pruned.cost
    return engine.compress(ranks).eval(), count_network(engine, ranks)


def _scores(
    plan: CohortPlan,
    task: Task,
    volume: Volume,
    expert: LoadedExpert,
    original: np.ndarray | None,
    labels: np.ndarray,
) -> dict[str, Comparison | list[str] | None]:
    classes = classes_from_names(expert.class_names, expert.name)
    versus_original = (
        compare(original, labels, volume.spacing, classes, plan.tolerance_mm) if original is not None else None
    )
    versus_truth, unmatched, truth_error = None, [], ""
    if task.case.ground_truth is not None:
        try:
            truth, unmatched = _truth(str(task.case.ground_truth), str(task.case.ct), plan.model, task.expert)
        except UserError as exc:  # an unusable ground truth costs its scores, not the ones vs the original
            truth_error = str(exc)
        else:
            versus_truth = compare(truth, labels, volume.spacing, classes, plan.tolerance_mm, "ground truth")
    return {"original": versus_original, "truth": versus_truth, "unmatched": unmatched, "gt_error": truth_error}


def _rows(task: Task, params: int, flops: int, original_cost: Any, seconds: float, scores: dict) -> dict[str, Any]:
    """One row per class scored in either comparison (a class empty everywhere has no row)."""
    versus_original: Comparison | None = scores["original"]
    versus_truth: Comparison | None = scores["truth"]
    unmatched = set(scores["unmatched"])
    by_class: dict[str, dict[str, Any]] = {}
    nan = math.nan
    for comparison, suffix in ((versus_original, ""), (versus_truth, "_gt")):
        for score in comparison.scores if comparison is not None else []:
            if suffix and score.name in unmatched:
                continue
            row = by_class.setdefault(score.name, {"label": score.label})
            row[f"dice{suffix}"], row[f"nsd{suffix}"] = score.dice, score.nsd
            row[f"status{suffix}"] = score.status
    rows = [
        {
            "case": task.case.name,
            "expert": task.expert,
            "class": name,
            "label": values["label"],
            "method": task.setting.method,
            "setting": task.setting.key,
            "df": task.setting.df if task.setting.df is not None else nan,
            "target": task.setting.target or "",
            "params": params,
            "flops": flops,
            "params_ratio": original_cost.params / max(params, 1),
            "flops_ratio": original_cost.flops / max(flops, 1),
            "dice": values.get("dice", nan),
            "nsd": values.get("nsd", nan),
            "status": values.get("status", ""),
            "dice_gt": values.get("dice_gt", nan),
            "nsd_gt": values.get("nsd_gt", nan),
            "seconds": seconds,
        }
        for name, values in sorted(by_class.items(), key=lambda item: item[1]["label"])
    ]
    return {"rows": rows, "gt_unmatched": sorted(unmatched), "gt_error": scores["gt_error"]}


def _options(plan: CohortPlan) -> InferenceOptions:
    return InferenceOptions(device=plan.device, precision=plan.precision, threads=plan.threads)


# -- per-worker caches -----------------------------------------------------------------------------------------


class _CurrentTask:
    """Where the cached case's Segmenter reports its stages: the running task's clock (a cohort worker runs
    one task at a time, `local_client`'s threads_per_worker=1)."""

    clock = StageProfile()

    def __call__(self, stage: str, seconds: float) -> None:
        self.clock(stage, seconds)


_SEGMENT_STAGES = _CurrentTask()


@functools.lru_cache(maxsize=2)
def _source(model: str) -> ModelSource:
    return resolve_source(task="demo") if model == "demo" else resolve_source(model=Path(model))


@functools.lru_cache(maxsize=8)
def _expert(model: str, name: str) -> LoadedExpert:
    """Only the experts this worker's tasks name are loaded (a TS 'total' has five; a cohort may use one)."""
    return load_expert(next(spec for spec in _source(model).experts if spec.name == name))


@functools.lru_cache(maxsize=8)
def _engine(model: str, name: str) -> TuckerEngine:
    """On the network as nnU-Net runs it (one patch), factorised once per worker: slicing it per DF is instant."""
    return expert_engine(_expert(model, name))


@functools.lru_cache(maxsize=8)
def _original_cost(model: str, name: str) -> NetworkCost:
    return count_network(_engine(model, name))


@functools.lru_cache(maxsize=32)
def _ranks(model: str, expert: str, df: float | None, target: str | None) -> dict[str, tuple[int, int]]:
    """The DF rule's ranks, or the budget solver's for this expert alone (a target says what it missed)."""
    engine = _engine(model, expert)
    if target is None:
        return ranks_of(df_ranks(engine.layers, float(df)))
    result = solve_budget(engine, target)
    if not result.met:
        raise BudgetError(f"{expert}: {result.message}")
    return result.ranks["expert"]


@functools.lru_cache(maxsize=8)
def _setting_network(
    model: str, expert: str, method: str, df: float | None, target: str | None
) -> tuple[nn.Module, NetworkCost]:
    """One setting's network and cost, built once per worker: every case of the cohort runs the same one
    (inference only; the segmenter never changes a network's weights)."""
    return compressed_network(_engine(model, expert), method, _ranks(model, expert, df, target))


@functools.lru_cache(maxsize=4)
def _original_labels(path: str, stamp: tuple[int, int]) -> np.ndarray:
    """A case's original labels, read once per worker for all its settings; ``stamp`` (mtime, size) makes a
    recomputed original a new entry. Read-only: every setting task scores against the same array."""
    with np.load(path) as stored:
        labels = stored["labels"]
    labels.flags.writeable = False
    return labels


@functools.lru_cache(maxsize=2)
def _case(ct: str) -> tuple[Volume, Segmenter]:
    """The current case and the one before, prepared (reoriented, resampled, normalised per expert).

    Two, not one: a worker starts the next case's original (Dask sends originals ahead) before the settings
    of the one it just ran arrive (the engine submits them when it sees the original done), so its tasks
    alternate between two cases; one cached case would prepare each case twice. Two keep memory bounded.
    """
    volume = load_volume(ct)
    return volume, Segmenter(volume.data, volume.affine, profile=_SEGMENT_STAGES)


@functools.lru_cache(maxsize=4)
def _truth(path: str, ct: str, model: str, expert: str) -> tuple[np.ndarray, list[str]]:
    """The case's ground truth in the expert's own labels, classes matched by name (imaging.label_maps), and
    the expert's classes it does not name (not scored against it)."""
    volume, _ = _case(ct)
    label_map = load_label_map(Path(path), volume.shape, volume.affine)
    match = match_by_name(label_map.names, _expert(model, expert).class_names, what=f"ground truth {Path(path).name}")
    return match.renumber(label_map.data), list(match.model_unmatched)


def _distilled(folder: Path, engine: TuckerEngine) -> tuple[nn.Module, int, int]:
    """A saved compressed (e.g. distilled) expert's network and its cost, counted as its zero-shot form is:
    Tucker from the manifest's ranks; pruned as pruning to its matched ranks or DF counts (kept weights)."""
    network = load_expert(spec_from_folder(folder)).network
    manifest = read_json(Path(folder) / MANIFEST_NAME) if (Path(folder) / MANIFEST_NAME).is_file() else {}
    ranks = {name: tuple(entry["ranks"]) for name, entry in (manifest.get("layers") or {}).items()}
    if ranks:
        cost = count_network(engine, ranks)
    elif manifest.get("matched_tucker_ranks"):  # a pruned student (distil): the Tucker ranks it was matched to
        matched = {name: (int(pair[0]), int(pair[1])) for name, pair in manifest["matched_tucker_ranks"].items()}
        cost = prune_to_match(engine, matched).cost
    elif isinstance(manifest.get("df"), int | float):
        cost = prune_to_match(engine, ranks_of(df_ranks(engine.layers, float(manifest["df"])))).cost
    else:
        raise CompressedModelError(f"{folder} names neither Tucker ranks nor a DF in {MANIFEST_NAME}")
    return network, cost.params, cost.flops
