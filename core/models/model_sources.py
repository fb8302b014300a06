"""Where the experts come from: a TotalSegmentator home ('total', 'total_fast'), the demo models, or any nnU-Net
v2 results folder(s); and how several experts' outputs merge into one label map.

A ``ModelSource`` is an ordered list of experts plus, per expert, the lookup table from its own labels to the
merged label map. For TS tasks this is TS's own: class names and numbering from
``totalsegmentator.map_to_binary`` (``class_map['total']``, ``class_map_5_parts``), experts in TS's order,
later experts overwriting earlier ones wherever they predict a non-zero label (TS's ``np.copyto(..., where=
mapped != 0)``). Other sources number their classes by first appearance, in expert order.

TS homes are searched where TotalSegmentator itself looks: TOTALSEG_WEIGHTS_PATH (the results folder itself),
TOTALSEG_HOME_DIR/nnunet/results, ~/.totalsegmentator/nnunet/results, or a folder the user names. Whenever a TS
home is used, its config.json gets ``"send_usage_stats": false`` (TS reads no environment variable for that).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuckerscope.core.models.model_folder import (
    ExpertSpec,
    LoadedExpert,
    find_result_folders,
    load_expert,
    read_json,
    spec_from_folder,
)
from tuckerscope.core.runtime.errors import UserError


class ModelSourceError(UserError):
    """A task, TS home or model folder cannot be used; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class TsTask:
    """One TotalSegmentator task: its dataset ids in merge order, expert names and TS's resampling."""

    name: str
    dataset_ids: tuple[int, ...]
    expert_names: tuple[str, ...]
    resample_mm: float
    trainer: str  # the trainer folder TS loads (Dataset.../<trainer>__nnUNetPlans__3d_fullres)
    download_task: str
    tile_step_size: float = 0.8  # TS uses 0.8 instead of nnU-Net's 0.5 for every 'total' variant


TS_TASKS: dict[str, TsTask] = {
    "total": TsTask(
        "total",
        (291, 292, 293, 294, 295),
        ("organs", "vertebrae", "cardiac", "muscles", "ribs"),
        1.5,
        "nnUNetTrainerNoMirroring",
        "total",
    ),
    "total_fast": TsTask(
        "total_fast", (297,), ("total_3mm",), 3.0, "nnUNetTrainer_4000epochs_NoMirroring", "total_fast"
    ),
}
TS_PART_MAPS = {
    291: "class_map_part_organs",
    292: "class_map_part_vertebrae",
    293: "class_map_part_cardiac",
    294: "class_map_part_muscles",
    295: "class_map_part_ribs",
}
TS_DATASET_IDS = frozenset(i for task in TS_TASKS.values() for i in task.dataset_ids)
TASK_NAMES = (*TS_TASKS, "demo")


@dataclass(frozen=True)
class ModelSource:
    """Experts that together make one label map, and how their labels map into it."""

    name: str
    experts: tuple[ExpertSpec, ...]
    class_names: dict[int, str]  # merged label -> class name
    label_maps: tuple[dict[int, int], ...]  # per expert: its own label -> merged label
    ts_home: Path | None = None

    def load(self) -> list[LoadedExpert]:
        """Build every expert's network and read its weights (safe loading, see model_folder)."""
        return [load_expert(spec) for spec in self.experts]

    def lookup_table(self, index: int) -> np.ndarray:
        """Expert ``index``'s labels -> merged labels, as an array to index with a label map."""
        mapping = self.label_maps[index]
        table = np.zeros(max(mapping, default=0) + 1, dtype=self.label_dtype)
        for own, merged in mapping.items():
            table[own] = merged
        return table

    @property
    def label_dtype(self) -> type[np.unsignedinteger]:
        return np.uint8 if max(self.class_names, default=0) < 256 else np.uint16

    def merge(self, expert_labels: Sequence[np.ndarray]) -> np.ndarray:
        """TS's merge of every expert's output (see merge_labels)."""
        if len(expert_labels) != len(self.experts):
            raise ModelSourceError(
                f"{self.name} has {len(self.experts)} experts, got {len(expert_labels)} outputs"
            )
        tables = [self.lookup_table(index) for index in range(len(self.experts))]
        merged = merge_labels(list(zip(expert_labels, tables, strict=True)))
        assert merged is not None  # every source has at least one expert
        return merged


def merge_labels(outputs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """TS's merge rule, the one the CLI and the window share: each (labels, lookup table) in expert order
    maps its labels to merged values and overwrites wherever the mapped value is non-zero (TS's
    ``np.copyto(..., where=mapped != 0)``). A label the table does not know maps to background. None when
    there is no output yet (the window merges the experts it has so far).
    """
    merged: np.ndarray | None = None
    for labels, table in outputs:
        if merged is None:
            merged = np.zeros(labels.shape, dtype=table.dtype)
        if labels.size and int(labels.max()) >= len(table):
            table = np.pad(table, (0, int(labels.max()) + 1 - len(table)))
        mapped = table[labels]
        np.copyto(merged, mapped, where=mapped != 0)
    return merged


def resolve_source(
    task: str | None = None, model: Path | str | None = None, ts_home: Path | None = None
) -> ModelSource:
    """The source a user named: ``task`` ('total', 'total_fast', 'demo') or ``model`` (nnU-Net folder(s))."""
    if (task is None) == (model is None):
        raise ModelSourceError("name either a task (total, total_fast, demo) or a model folder, not both")
    if model is not None:
        return folder_source(Path(model))
    if task in TS_TASKS:
        return ts_task_source(task, ts_home)
    if task == "demo":
        return demo_source()
    raise ModelSourceError(f"unknown task {task!r}; use one of {', '.join(TASK_NAMES)} or --model PATH")


# -- TotalSegmentator homes ------------------------------------------------------------------------------------


def ts_results_candidates(explicit: Path | None = None) -> list[Path]:
    """Folders that may hold TS's nnU-Net results, in the order TotalSegmentator itself would use them."""
    candidates: list[Path] = []
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        candidates += [explicit / "nnunet" / "results", explicit]
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        candidates.append(Path(os.environ["TOTALSEG_WEIGHTS_PATH"]).expanduser())
    if os.environ.get("TOTALSEG_HOME_DIR"):
        candidates.append(Path(os.environ["TOTALSEG_HOME_DIR"]).expanduser() / "nnunet" / "results")
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    candidates.append(home / ".totalsegmentator" / "nnunet" / "results")
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def ts_task_source(task: str, ts_home: Path | None = None) -> ModelSource:
    """The experts of TS task ``task`` from the first TS home that has all of them."""
    definition = TS_TASKS[task]
    best: tuple[Path, dict[int, ExpertSpec], dict[int, str]] | None = None
    for results in ts_results_candidates(ts_home):
        if not results.is_dir():
            continue
        found, problems = _ts_experts_in(results, definition)
        if len(found) == len(definition.dataset_ids):
            home = _home_of(results)
            disable_ts_usage_stats(home)
            return _ts_source(definition, [found[i] for i in definition.dataset_ids], home)
        if best is None or len(found) + len(problems) > len(best[1]) + len(best[2]):
            best = (results, found, problems)
    raise ModelSourceError(_missing_message(definition, best, ts_home))


def _ts_experts_in(results: Path, task: TsTask) -> tuple[dict[int, ExpertSpec], dict[int, str]]:
    """The task's experts present in one results folder, and a reason for each one that is incomplete."""
    found: dict[int, ExpertSpec] = {}
    problems: dict[int, str] = {}
    for dataset_id, name in zip(task.dataset_ids, task.expert_names, strict=True):
        datasets = sorted(results.glob(f"Dataset{dataset_id:03d}_*"))
        folders = [f for d in datasets for f in sorted(d.glob("*__*__3d_fullres")) if f.is_dir()]
        folders.sort(key=lambda f: not f.name.startswith(f"{task.trainer}__"))  # TS's own trainer first
        if not folders:
            if datasets:
                problems[dataset_id] = f"{datasets[0].name} has no *__nnUNetPlans__3d_fullres folder"
            continue
        try:
            found[dataset_id] = spec_from_folder(folders[0], name=name)
        except UserError as exc:
            problems[dataset_id] = str(exc)
    return found, problems


def _missing_message(
    task: TsTask, best: tuple[Path, dict[int, ExpertSpec], dict[int, str]] | None, ts_home: Path | None
) -> str:
    ids = ", ".join(f"Dataset{i}" for i in task.dataset_ids)
    how = (
        f"on a machine with internet run `totalseg_download_weights -t {task.download_task}`, copy its "
        "~/.totalsegmentator folder here and set TOTALSEG_HOME_DIR to it"
    )
    if best is None:
        searched = ", ".join(str(p) for p in ts_results_candidates(ts_home))
        return (
            f"no TotalSegmentator weights for task '{task.name}' ({ids}) found (searched {searched}); {how}"
        )
    results, found, problems = best
    missing = [
        f"{problems.get(i, f'Dataset{i} ({name}) missing')}"
        for i, name in zip(task.dataset_ids, task.expert_names, strict=True)
        if i not in found
    ]
    return f"TotalSegmentator task '{task.name}' is incomplete in {results}: {'; '.join(missing)}; {how}"


def _home_of(results: Path) -> Path:
    """The TS home of a results folder (<home>/nnunet/results), or the folder itself for TOTALSEG_WEIGHTS_PATH."""
    return results.parent.parent if results.parent.name == "nnunet" and results.name == "results" else results


def disable_ts_usage_stats(home: Path) -> bool:
    """Write ``send_usage_stats: false`` into the TS home's config.json; False if the folder is read-only."""
    config_file = Path(home) / "config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    if config.get("send_usage_stats") is False and config.get("statistics_disclaimer_shown") is True:
        return True
    config.update(send_usage_stats=False, statistics_disclaimer_shown=True)
    config.setdefault("totalseg_id", "totalseg_tuckerscope")
    config.setdefault("prediction_counter", 0)
    try:
        config_file.write_text(json.dumps(config, indent=4))
    except OSError:
        return False
    return True


def _ts_source(task: TsTask, specs: list[ExpertSpec], home: Path) -> ModelSource:
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts

    total = {int(k): v for k, v in class_map["total"].items()}
    merged_id = {name: label for label, name in total.items()}
    if task.name == "total_fast":
        label_maps = ({label: label for label in total},)
    else:
        label_maps = tuple(
            {int(k): merged_id[name] for k, name in class_map_5_parts[TS_PART_MAPS[i]].items()}
            for i in task.dataset_ids
        )
    return ModelSource(task.name, tuple(specs), total, label_maps, ts_home=home)


# -- demo and nnU-Net folders --------------------------------------------------------------------------------


def demo_source() -> ModelSource:
    from tuckerscope.resources import DEMO_MODELS_DIR

    folders = find_result_folders(DEMO_MODELS_DIR) if DEMO_MODELS_DIR.is_dir() else []
    if not folders:
        raise ModelSourceError(
            f"no demo models in {DEMO_MODELS_DIR}; reinstall TuckerScope or use --task total / --model PATH"
        )
    return _folders_source("demo", folders)


def folder_source(path: Path) -> ModelSource:
    """Every nnU-Net v2 results folder under ``path``, merged in sorted order (later overwrite earlier).

    A TotalSegmentator home (or its results folder) holding one TS task opens as that task, as TS runs it;
    one holding several is refused with the tasks it found.
    """
    path = path.expanduser()
    if not path.exists():
        raise ModelSourceError(f"model folder {path} does not exist")
    folders = find_result_folders(path)
    if not folders:
        raise ModelSourceError(
            f"no nnU-Net v2 results folder (plans.json + dataset.json) under {path}; "
            "point --model at e.g. Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres"
        )
    tasks = ts_tasks_in(path)
    is_home = (path / "nnunet" / "results").is_dir() or any(p.is_dir() for p in path.glob("Dataset*_*"))
    if tasks and (is_home or len(folders) > 1):
        if len(tasks) > 1 or not is_home:
            found = f"tasks {', '.join(tasks)}" if len(tasks) > 1 else f"task {tasks[0]}'s experts"
            raise ModelSourceError(
                f"{path} holds TotalSegmentator {found}: use "
                f"{' or '.join(f'--task {task}' for task in tasks)} with --ts-home {path}"
            )
        return ts_task_source(tasks[0], path)  # a TS home of one task (even its experts alone) opens it
    return _folders_source(path.name, folders)


def _folders_source(name: str, folders: Sequence[Path]) -> ModelSource:
    specs = [spec_from_folder(folder) for folder in folders]
    class_names: dict[int, str] = {}
    label_maps = []
    for spec in specs:
        labels = read_json(spec.dataset_json_path).get("labels", {})
        mapping: dict[int, int] = {}
        for class_name, own in sorted(labels.items(), key=lambda item: _label_value(item[1])):
            value = _label_value(own)
            if value <= 0:
                continue
            merged = next((k for k, v in class_names.items() if v == class_name), None)
            if merged is None:
                merged = len(class_names) + 1
                class_names[merged] = class_name
            mapping[value] = merged
        label_maps.append(mapping)
    return ModelSource(name, tuple(specs), class_names, tuple(label_maps))


def _label_value(value: object) -> int:
    if isinstance(value, int):
        return value
    raise ModelSourceError(
        f"region-based labels ({value!r}) are not supported; TuckerScope needs integer labels"
    )


def dataset_id(folder: Path) -> int | None:
    """The nnU-Net dataset id of a results folder ('Dataset291_.../<trainer>__<plans>__<config>' -> 291)."""
    for part in (folder.name, folder.parent.name):
        match = re.match(r"Dataset(\d+)_", part)
        if match:
            return int(match.group(1))
    return None


def ts_task_of(folder: Path) -> TsTask | None:
    """The TS task a results folder belongs to, by its dataset id."""
    number = dataset_id(folder)
    return next((task for task in TS_TASKS.values() if number in task.dataset_ids), None)


def expert_specs(model: str | Path) -> list[ExpertSpec]:
    """Every expert under ``model`` ('demo', a TS home, an nnU-Net results folder or a folder of them).

    For commands that treat experts one by one (compress, bench): unlike ``folder_source`` a TS home with
    several tasks is fine here. Expert names must be unique, since options like --df organs=0.3 use them.
    """
    if str(model) == "demo":
        return list(demo_source().experts)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelSourceError(
            f"model folder {path} does not exist (give a TS home, an nnU-Net folder or 'demo')"
        )
    folders = find_result_folders(path)
    if not folders:
        raise ModelSourceError(f"no nnU-Net v2 results folder (plans.json + dataset.json) under {path}")
    specs = [spec_from_folder(folder) for folder in folders]
    names = [spec.name for spec in specs]
    if len(set(names)) < len(names):
        specs = [spec_from_folder(folder, name=f"{folder.parent.name}/{folder.name}") for folder in folders]
    return specs


def ts_tasks_in(folder: Path) -> list[str]:
    """TS tasks with at least one expert under ``folder`` (a TS home or its results folder), in TS order."""
    folder = Path(folder)
    root = folder / "nnunet" / "results" if (folder / "nnunet" / "results").is_dir() else folder
    ids = {dataset_id(f) for f in find_result_folders(root)} if root.is_dir() else set()
    return [name for name, task in TS_TASKS.items() if ids & set(task.dataset_ids)]
