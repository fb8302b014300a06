"""Recover in the window: the Recover dock's lane, the experts panel's buttons and toggles, the Distil menu and
the sweep panel's Figure 2 source.

One latest-wins lane runs one distillation at a time (Recover for another expert supersedes the run, which
leaves its checkpoint); the status bar's Cancel stops it too. Each step reaches the panel as a partial result
(queued signal, a few floats); the panel redraws its curve on a timer. The result goes to
Session.apply_recovery, whose events switch the compressed side to the distilled network and re-segment it.
Checkpoints live in a temporary folder for the window's lifetime.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Protocol

from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.experts_panel import ExpertsPanel
from tuckerscope.app.recover_panel import RecoverPanel
from tuckerscope.app.status_bar import ProgressStatus
from tuckerscope.app.sweep_panel import SweepPanel
from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.session.recovery import RecoveryResult, figure2_job, recovery_job
from tuckerscope.core.session.session import Session


class Window(Protocol):
    session: Session
    experts_panel: ExpertsPanel
    sweep_panel: SweepPanel
    progress_status: ProgressStatus
    recover_panel: RecoverPanel
    docks: dict[str, QtWidgets.QDockWidget]

    def show_error(self, title: str, error: Exception, details: str) -> None: ...


class RecoveryController(QtCore.QObject):
    """Runs Recover for the window's Recover dock; call ``add_menu`` once the menu bar has File and View."""

    def __init__(self, window: Window) -> None:
        super().__init__(window)  # type: ignore[arg-type]
        self.window, self.session = window, window.session
        self.panel, self.dock = window.recover_panel, window.docks["recover"]
        self.lane = JobLane("recover", self)
        self.checkpoints = tempfile.TemporaryDirectory(prefix="tuckerscope-recover-")
        window.progress_status.watch(self.lane)
        window.progress_status.watch(window.sweep_panel.figure2.lane)
        self.panel.recoverRequested.connect(self.recover)
        self.panel.cancelRequested.connect(self.lane.cancel)
        window.experts_panel.recoverRequested.connect(self.recover)
        window.experts_panel.distilledToggled.connect(self.set_distilled)
        events = self.session.events
        events.experts_changed.connect(self._on_experts_changed)
        events.volume_changed.connect(self._on_experts_changed)
        events.compression_changed.connect(self._show_toggle)
        events.recovery_changed.connect(self._show_toggle)

    def add_menu(self, menu_bar: QtWidgets.QMenuBar) -> QtWidgets.QMenu:
        """Distil: Recover each expert, cancel, and the compressed side's zero-shot | distilled choice."""
        menu = menu_bar.addMenu("&Distil")

        def fill() -> None:
            menu.clear()
            for name, expert in self.session.experts.items():
                menu.addAction(f"Recover {name}", lambda n=name: self.recover(n))
                if self.session.distilled_network(name, required=False) is not None:
                    action = menu.addAction(f"Show distilled {name}")
                    action.setCheckable(True)
                    action.setChecked(expert.show_distilled)
                    action.toggled.connect(lambda shown, n=name: self.set_distilled(n, shown))
            if not self.session.experts:
                menu.addAction("(no models loaded)").setEnabled(False)
            menu.addSeparator()
            menu.addAction("Cancel Recover", self.lane.cancel).setEnabled(self.lane.busy)

        menu.aboutToShow.connect(fill)
        fill()
        return menu

    # ----- actions ---------------------------------------------------------------------------------------------
    def recover(self, name: str) -> None:
        """Distil ``name`` at its current setting (resuming its checkpoint), superseding any run in progress."""
        try:
            plan = recovery_job(self.session, name, self.panel.settings(), Path(self.checkpoints.name))
        except UserError as error:
            self.window.show_error("Cannot recover", error, "")
            return
        self.dock.show()
        self.dock.raise_()
        self.panel.start_curve(name, plan.earlier, plan.data)
        run = plan.run
        del plan  # the lane's job holds the only reference: a finished run's pool and network can be freed

        def job(context: JobContext) -> RecoveryResult:
            return run(context.progress, context.partial, context.cancel)

        def cancelled() -> None:
            self.panel.set_running(False)
            self.panel.set_message(
                f"Cancelled after {len(self.panel.losses)} steps: Recover {name} again resumes from the checkpoint."
            )

        def failed(error: Exception, details: str) -> None:
            self.panel.set_running(False)
            self.panel.set_message(f"Recover failed: {error}")
            self.window.show_error("Recover failed", error, details)

        self.lane.submit(
            job,
            JobCallbacks(self._on_result, on_partial=self.panel.add_step, on_error=failed, on_cancelled=cancelled),
        )

    def set_distilled(self, name: str, shown: bool) -> None:
        try:
            self.session.set_distilled(name, shown)
        except UserError as error:
            self.window.show_error("Cannot show the distilled network", error, "")
            self._show_toggle(name)

    def close(self) -> None:
        for lane in (self.lane, self.window.sweep_panel.figure2.lane):
            lane.cancel()
            lane.wait(10_000)
        self.checkpoints.cleanup()

    # ----- session events ------------------------------------------------------------------------------------
    def _on_result(self, result: RecoveryResult) -> None:
        self.panel.set_running(False)
        if self.session.apply_recovery(result):
            self.panel.set_message(f"{result.expert} distilled: {result.describe}. Compressed side: distilled.")
        else:
            self.panel.set_message(f"{result.expert}'s setting changed during the run: its result was dropped.")

    def _on_experts_changed(self) -> None:
        session = self.session
        names = list(session.experts)
        self.panel.set_experts(names)
        self.panel.set_running(self.lane.busy)
        ready = session.volume is not None and bool(names)
        self.window.sweep_panel.figure2.set_source(
            (lambda name, steps: figure2_job(session, name, steps)) if ready else None, names
        )
        for name in names:
            self._show_toggle(name)

    def _show_toggle(self, name: str) -> None:
        expert = self.session.experts.get(name)
        if expert is not None:
            available = self.session.distilled_network(name, required=False) is not None
            self.window.experts_panel.set_recovery(name, available, expert.show_distilled)
