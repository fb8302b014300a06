"""What a cohort study runs: the cases (CTs paired with ground truth by file name), the settings, the tasks.

A task is one (case, expert, setting). Every case's original segmentation per expert is a task of its own
whose labels are cached on disk, and every compressed setting of that case and expert depends on it. Each
task has a fixed result file under RESULTS/tasks/, so a rerun knows what is done by looking at the folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuckerscope.core.compression.budgets import parse_target
from tuckerscope.core.compression.ranks import check_df
from tuckerscope.core.models.compressed_model import MANIFEST_NAME
from tuckerscope.core.models.model_folder import find_result_folders, read_json, spec_from_folder
from tuckerscope.core.runtime.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
METHODS = ("tucker", "prune")
ORIGINAL = "original"


class CohortError(UserError):
    """A cohort cannot be planned: no CTs, unusable settings, a results folder that belongs to another study."""


@dataclass(frozen=True)
class Case:
    """One CT of the cohort and its ground truth (same file name in the --gt folder), if any."""

    name: str
    ct: Path
    ground_truth: Path | None = None


@dataclass(frozen=True)
class Setting:
    """How an expert is compressed: a method at a DF or at a budget target ('params=10x', solved per expert by
    compression.budgets; pruning is matched to the Tucker network's parameters, as the paper compares them),
    or a compressed (e.g. distilled) model folder."""

    method: str
    df: float | None = None
    model: Path | None = None
    name: str = ""
    target: str | None = None

    @property
    def key(self) -> str:
        """File-name-safe and unique within a cohort (a model folder's setting is named by whoever adds it)."""
        if self.method == ORIGINAL:
            return ORIGINAL
        if self.model is not None:
            return f"{self.method}_{safe_name(self.name)}"
        if self.target is not None:
            return f"{self.method}_{safe_name(self.target)}"
        return f"{self.method}_df{self.df:g}"


ORIGINAL_SETTING = Setting(ORIGINAL, 1.0)


@dataclass(frozen=True)
class Task:
    case: Case
    expert: str
    setting: Setting

    @property
    def key(self) -> str:
        """Dask key and result name: unique per (case, expert, setting)."""
        return f"{self.case.name}/{self.expert}/{self.setting.key}"

    def result_path(self, results: Path) -> Path:
        return Path(results) / "tasks" / self.case.name / self.expert / f"{self.setting.key}.json"


@dataclass(frozen=True)
class CohortPlan:
    """Everything the workers need, as plain data (it is pickled to them)."""

    model: str
    experts: tuple[str, ...]
    cases: tuple[Case, ...]
    settings: tuple[Setting, ...]
    distilled: dict[str, tuple[Setting, ...]] = field(default_factory=dict)
    tolerance_mm: float = 3.0
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1

    def settings_of(self, expert: str) -> tuple[Setting, ...]:
        return self.settings + self.distilled.get(expert, ())

    def tasks(self) -> list[Task]:
        """Case by case (workers keep one case's preprocessing cached), the original before its settings."""
        tasks = []
        for case in self.cases:
            for expert in self.experts:
                tasks.append(Task(case, expert, ORIGINAL_SETTING))
                tasks += [Task(case, expert, s) for s in self.settings_of(expert)]
        return tasks

    def original_of(self, task: Task) -> Task:
        return Task(task.case, task.expert, ORIGINAL_SETTING)

    def description(self) -> dict[str, object]:
        """What the results folder was made with (written to RESULTS/cohort.json)."""
        data = asdict(self)
        return {
            **data,
            "cases": [{"name": c.name, "ct": str(c.ct), "ground_truth": str(c.ground_truth or "")} for c in self.cases],
            "settings": [s.key for s in self.settings],
            "distilled": {e: {s.key: str(s.model) for s in ss} for e, ss in self.distilled.items()},
        }


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def case_name(path: Path) -> str:
    """'s0011.nii.gz' -> 's0011' (a DICOM folder keeps its name)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_cases(cts: Path, ground_truth: Path | None = None) -> tuple[Case, ...]:
    """Every NIfTI file (or DICOM folder) in `cts`, paired with the --gt file of the same case name.

    A CT without ground truth is still run (its scores vs ground truth stay empty); ground truth without a
    CT is ignored. Unreadable files are not filtered here: the task reports them as failed.
    """
    cts = Path(cts)
    if not cts.is_dir():
        raise CohortError(f"--cts {cts} is not a folder of CTs")
    entries = sorted(
        p for p in cts.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(NIFTI_SUFFIXES))
    )
    if not entries:
        raise CohortError(f"--cts {cts} holds no .nii/.nii.gz files or DICOM folders")
    truths: dict[str, Path] = {}
    if ground_truth is not None:
        if not Path(ground_truth).is_dir():
            raise CohortError(f"--gt {ground_truth} is not a folder of label maps")
        truths = {
            case_name(p): p for p in sorted(Path(ground_truth).iterdir()) if p.name.lower().endswith(NIFTI_SUFFIXES)
        }
    cases = []
    seen: set[str] = set()
    for path in entries:
        name = safe_name(case_name(path))
        if name in seen:
            raise CohortError(f"two CTs in {cts} have the case name {name!r}; rename one")
        seen.add(name)
        cases.append(Case(name, path.resolve(), truths[case_name(path)].resolve() if case_name(path) in truths else None))
    if ground_truth is not None and not any(c.ground_truth for c in cases):
        raise CohortError(f"no file in --gt {ground_truth} has the name of a CT in {cts} (they pair up by file name)")
    return tuple(cases)


def target_settings(targets: Sequence[str], methods: Sequence[str]) -> tuple[Setting, ...]:
    """Every method at every budget target ('params=10x', 'flops=8x', 'energy=0.9', 'vbmf'...)."""
    check_methods(methods)
    parsed = [parse_target(t).describe() for t in targets]
    return tuple(Setting(m, None, target=t) for m in dict.fromkeys(methods) for t in dict.fromkeys(parsed))


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CohortError(f"unknown --method {unknown[0]!r}; use {' or '.join(METHODS)} (comma-separated)")


def df_settings(dfs: Sequence[float], methods: Sequence[str]) -> tuple[Setting, ...]:
    """Every method at every DF, in the order given."""
    check_methods(methods)
    if not dfs:
        raise CohortError("give at least one DF (--df 0.5,0.3)")
    for df in dfs:
        check_df(df)
        if df >= 1.0:
            raise CohortError("DF 1.0 is the original network, which every cohort scores anyway; give DFs below 1")
    return tuple(Setting(m, float(df)) for m in dict.fromkeys(methods) for df in dict.fromkeys(dfs))


def distilled_settings(folder: Path, experts: Sequence[str]) -> dict[str, tuple[Setting, ...]]:
    """One setting per compressed model folder under `folder` (as `distil -o` or `compress -o` write them),
    assigned to the expert its manifest names (or the folder's expert name); its method is
    'tucker-distilled' or 'prune-distilled' after the compression its manifest names."""
    folders = find_result_folders(Path(folder)) if Path(folder).is_dir() else []
    if not folders:
        raise CohortError(f"--distilled {folder} holds no model folders (plans.json + dataset.json)")
    found: dict[str, list[Setting]] = {}
    for model in folders:
        manifest = read_json(model / MANIFEST_NAME) if (model / MANIFEST_NAME).is_file() else {}
        expert = str(manifest.get("expert") or spec_from_folder(model).name)
        if expert not in experts:
            raise CohortError(f"--distilled {model} is an expert {expert!r} the model does not have ({', '.join(experts)})")
        df = float(manifest["df"]) if isinstance(manifest.get("df"), int | float) else None
        method = f"{manifest.get('compression_method') or ('tucker' if manifest.get('layers') else 'prune')}-distilled"
        target = manifest.get("target") if isinstance(manifest.get("target"), str) else None
        settings = found.setdefault(expert, [])
        label = f"df{df:g}" if df is not None else target or str(len(settings) + 1)
        if any(s.key == Setting(method, df, model, label).key for s in settings):
            label = f"{label}_{len(settings) + 1}"
        settings.append(Setting(method, df, model.resolve(), label, target))
    return {expert: tuple(settings) for expert, settings in found.items()}
