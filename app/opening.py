"""Opening CTs and models from the window: core's loaders in the 'volume' and 'models' lanes, recent lists,
and the choice of a task when a TotalSegmentator home holds several.

A failed open shows a dialog and leaves the session as it was: nothing is applied until the load succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyqtgraph.Qt import QtWidgets

from tuckerscope.app.recent_files import RecentFiles
from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.session.api import ts_tasks_in
from tuckerscope.core.session.loading import (
    LoadedCase,
    LoadedModels,
    is_task_at_home,
    load_ct,
    load_models,
    make_phantom_case,
)
from tuckerscope.core.session.session import Session

ShowError = Callable[[str, Exception, str], None]
ShowWarning = Callable[[str, str], None]
SavedDfs = Callable[[str], dict[str, float]]


def choose_ts_task(parent: QtWidgets.QWidget, home: Path, tasks: list[str]) -> str | None:
    """Ask which of a TS home's tasks to open (None: the user cancelled)."""
    task, chosen = QtWidgets.QInputDialog.getItem(
        parent, "TotalSegmentator task", f"{home} holds several TS tasks; open:", tasks, 0, False
    )
    return str(task) if chosen else None


class Opener:
    """What File > Open, drops, recent entries and the command line end in."""

    def __init__(
        self,
        parent: QtWidgets.QWidget,
        session: Session,
        lanes: dict[str, JobLane],
        recent_cts: RecentFiles,
        recent_models: RecentFiles,
        saved_dfs: SavedDfs,
        show_error: ShowError,
        show_warning: ShowWarning,
    ) -> None:
        self.parent, self.session, self.lanes = parent, session, lanes
        self.recent_cts, self.recent_models = recent_cts, recent_models
        self.saved_dfs, self.show_error, self.show_warning = saved_dfs, show_error, show_warning

    def open_phantom(self, seed: int) -> None:
        self.lanes["volume"].submit(
            lambda context: make_phantom_case(seed, context.progress, self.session.original_cache),
            JobCallbacks(
                lambda case: self.session.set_volume(case.volume, case.segmenter),
                on_error=lambda error, details: self.show_error("Could not make the phantom", error, details),
            ),
        )

    def open_ct(self, path: Path | str) -> None:
        path = Path(path)

        def loaded(case: LoadedCase) -> None:
            self.recent_cts.add(str(path))
            self.session.set_volume(case.volume, case.segmenter)
            if case.warnings:
                self.show_warning(f"{path.name} opened with a warning", "\n".join(case.warnings))

        def failed(error: Exception, details: str) -> None:
            self.recent_cts.remove(str(path))
            self.show_error(f"Could not open {path.name}", error, details)

        self.lanes["volume"].submit(
            lambda context: load_ct(path, context.progress, context.cancel, self.session.original_cache),
            JobCallbacks(loaded, on_error=failed),
        )

    def open_models(self, source: str) -> None:
        """'demo', a TS task, 'TASK@HOME', a TS home (asks for a task when it holds several) or a folder."""
        if not is_task_at_home(source) and Path(source).is_dir() and ts_tasks_in(Path(source)):
            self.open_model_folder(Path(source))
            return

        def loaded(models: LoadedModels) -> None:
            if models.name != "demo":
                self.recent_models.add(models.name)
            self.session.set_experts(models.experts, models.name, models.source, self.saved_dfs(models.name))

        def failed(error: Exception, details: str) -> None:
            self.recent_models.remove(source)
            self.show_error(f"Could not load the models from {source}", error, details)

        def job(context: JobContext) -> LoadedModels:
            context.progress(0.0, f"finding the experts of {source}")
            return load_models(source, context.progress, context.cancel)

        self.lanes["models"].submit(job, JobCallbacks(loaded, on_error=failed))

    def open_model_folder(self, path: Path) -> None:
        """A TS home (the user picks a task when it holds several) or a folder of nnU-Net results."""
        tasks = ts_tasks_in(path)
        if not tasks:
            self.open_models(str(path))
            return
        task = tasks[0] if len(tasks) == 1 else choose_ts_task(self.parent, path, tasks)
        if task is not None:
            self.open_models(f"{task}@{path}")

    def open_path(self, path: Path | str) -> None:
        """A dropped or recent path: a TS home or a folder with plans.json is a model source, else a CT."""
        if is_task_at_home(str(path)):
            self.open_models(str(path))
            return
        path = Path(path)
        if path.is_dir() and any(path.rglob("plans.json")):
            self.open_model_folder(path)
        else:
            self.open_ct(path)
