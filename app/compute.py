"""The window's background work: one latest-wins JobLane per kind of core call, started by session events.

``Compute`` subscribes to the session (a new CT or model set, an expert's compression setting, a
segmentation step, the agreement) and starts the matching core job off the UI thread; every result goes
back to the session's ``apply_*``, whose events redraw the views. What it cannot hand to the session (3D
meshes, the sweep backend, a failure) it emits as a Qt signal for the window to route. The UI thread never
blocks: it only captures a job's inputs and applies its result.
"""

from __future__ import annotations

from collections.abc import Callable

from pyqtgraph.Qt import QtCore

from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.runtime.collector import settle_after_load
from tuckerscope.core.runtime.processes import IsolatedRunner
from tuckerscope.core.session import policy
from tuckerscope.core.session.api import (
    SMOOTHING_ITERATIONS,
    ForwardSetup,
    InferenceOptions,
    LabelMeshes,
    SegmentationUpdate,
    extract_label_meshes,
    run_segmentation,
)
from tuckerscope.core.session.export import session_sweep_backend
from tuckerscope.core.session.jobs import budget_job, compression_job, heatmaps_job, timing_job
from tuckerscope.core.session.session import Session, TimingResult

LANES = (
    "volume",
    "models",
    "segment",
    "surfaces_original",
    "surfaces_compressed",
    "agreement",
    "heatmaps",
    "timing",
    "sweep_setup",
    "budget",
)
CANCELLABLE_LANES = ("volume", "models", "segment", "timing", "budget")
VisibleSlice = Callable[[], tuple[int, int]]  # (display axis, slice index) on screen now


class Compute(QtCore.QObject):
    """Lanes, the segmentation debounce and the processes that keep GIL-heavy libraries off the UI thread."""

    failed = QtCore.Signal(str, object, str)  # title, error, details
    surfacesReady = QtCore.Signal(str, object)  # side, LabelMeshes
    sweepBackendReady = QtCore.Signal(object, list)  # backend, experts
    agreementPending = QtCore.Signal(str)
    timingMeasuring = QtCore.Signal(bool)

    def __init__(
        self,
        session: Session,
        visible_slice: VisibleSlice,
        surface_budget: Callable[[], int],
        show_body_wall: Callable[[], bool],
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        session.inference = InferenceOptions(threads=policy.segmentation_threads())
        self.visible_slice, self.surface_budget, self.show_body_wall = visible_slice, surface_budget, show_body_wall
        self.lanes = {name: JobLane(name, self, background=name in policy.BACKGROUND_LANES) for name in LANES}
        self.compress_lanes: dict[str, JobLane] = {}  # one per expert: dragging one must not drop another
        # ...but one thread for all: compressions are short and mostly Python, and three threads fighting over
        # the GIL starve the UI thread (measured: 0.4 s event-loop stalls when all sliders move together)
        self.compress_pool = QtCore.QThreadPool(self)
        self.compress_pool.setMaxThreadCount(1)
        self.isolated = IsolatedRunner(background=True)  # agreement scoring: its library holds the GIL for seconds
        self.surface_process = IsolatedRunner(background=True)  # VTK's filters hold the GIL for their whole run
        self.surface_process.warm_up("tuckerscope.core.outputs.surfaces")
        self._surfaces_source: dict[str, int] = {}
        self._timing_is_automatic = False
        self.timing_precision: Callable[[], str] = lambda: "fp32"  # what automatic timings measure
        self.debounce = QtCore.QTimer(self, singleShot=True, interval=policy.SEGMENT_DEBOUNCE_MS)
        self.debounce.timeout.connect(self.refresh_segmentation)
        # once per load (one collection on the UI thread, ~0.3 s): no full GC pauses during the drags after it
        self.settle_timer = QtCore.QTimer(self, singleShot=True, interval=0)
        self.settle_timer.timeout.connect(settle_after_load)
        events = session.events
        events.volume_changed.connect(self._on_volume_changed)
        events.experts_changed.connect(self._on_experts_changed)
        events.compression_changed.connect(self._on_compression_changed)
        events.target_changed.connect(self.solve_targets)
        events.inference_changed.connect(self._on_volume_changed)  # every segmentation again
        events.segmentation_changed.connect(self._on_segmentation_changed)
        events.agreement_changed.connect(lambda _result: self._maybe_time_automatically())

    def error_handler(self, title: str) -> Callable[[Exception, str], None]:
        return lambda error, details: self.failed.emit(title, error, details)

    # ----- session events -----------------------------------------------------------------------------------
    def _on_volume_changed(self) -> None:
        self.settle_timer.start()
        self._surfaces_source.clear()
        self.schedule_segmentation(immediately=True)

    def _on_experts_changed(self) -> None:
        self.settle_timer.start()
        self._surfaces_source.clear()
        for name in self.session.experts:
            self.build_compressed(name)
        self.start_heatmaps()
        self.schedule_segmentation(immediately=True)

    def _on_compression_changed(self, name: str) -> None:
        self.build_compressed(name)
        self.schedule_segmentation()

    def _on_segmentation_changed(self, update: SegmentationUpdate) -> None:
        if update.stage == "volume":  # 3D follows whole-volume results only: each redraw costs the UI thread
            self.start_both_surfaces()
        if update.done and update.positions is not None:  # originals just became whole: sweeps may start
            self.prepare_sweep()
        if update.done and self.session.compressed_is_current():
            self.start_agreement()
        elif not update.done:
            self.agreementPending.emit("Waiting for the whole volume…")

    # ----- segmentation ------------------------------------------------------------------------------------
    def is_idle(self) -> bool:
        """No job running or queued and no refresh pending (tests, benchmarks, screenshots)."""
        lanes = [*self.lanes.values(), *self.compress_lanes.values()]
        return not self.debounce.isActive() and not any(lane.busy for lane in lanes)

    def schedule_segmentation(self, immediately: bool = False) -> None:
        """Debounced: a drag restarts the timer, a pause lets it fire."""
        self.debounce.start(policy.debounce_ms(immediately))

    def refresh_segmentation(self) -> None:
        session = self.session
        if session.volume is None or not session.experts:
            return
        if self._timing_is_automatic and self.lanes["timing"].busy:
            self.lanes["timing"].cancel()  # segmentation would skew the clock; it re-runs when idle
        plan = session.plan_segmentation(*self.visible_slice())
        if plan.is_empty:
            return

        def job(context: JobContext) -> SegmentationUpdate:
            return run_segmentation(plan, context.progress, context.cancel, context.user_cancel, context.partial)

        self.lanes["segment"].submit(
            job,
            JobCallbacks(
                on_result=session.apply_segmentation,
                on_partial=session.apply_segmentation,
                on_error=self.error_handler("Segmentation failed"),
            ),
        )

    def build_compressed(self, name: str) -> None:
        """Rebuild one expert's compressed network (milliseconds) so its figures follow the drag."""
        build = compression_job(self.session, name)
        lane = self.compress_lanes.get(name)
        if lane is None:  # one lane per expert for the session: a new lane per step leaked a thread pool each
            lane = self.compress_lanes[name] = JobLane(f"compress {name}", self, self.compress_pool)
        lane.submit(
            lambda _context: build(),
            JobCallbacks(self.session.apply_compression, on_error=self.error_handler("Compression failed")),
        )

    def solve_targets(self, _scope: str = "") -> None:
        """Every target asked and not solved yet, in the budget lane (time targets time forward passes).

        One job solves all pending scopes: the lane is latest-wins, and a job for one scope must not drop
        another's."""
        session = self.session
        pending = [scope for scope in session.targets if scope not in session.budgets]
        if not pending:
            return
        runs = [budget_job(session, scope) for scope in pending]

        def forget() -> None:
            for scope in pending:
                session.forget_target(scope)

        def failed(error: Exception, details: str) -> None:
            forget()
            self.failed.emit("Could not solve the target", error, details)

        self.lanes["budget"].submit(
            lambda context: [run(context.progress, context.cancel) for run in runs],
            JobCallbacks(lambda outcomes: [*map(session.apply_budget, outcomes)], on_error=failed, on_cancelled=forget),
        )

    # ----- views computed from the segmentations ------------------------------------------------------------
    def start_both_surfaces(self, rebuild: bool = False) -> None:
        if rebuild:
            self._surfaces_source.clear()
        self._start_surfaces("original", self.session.display_original)
        self._start_surfaces("compressed", self.session.display_compressed)

    def _start_surfaces(self, side: str, labels: object) -> None:
        if labels is None or self._surfaces_source.get(side) == id(labels):
            return
        self._surfaces_source[side] = id(labels)
        spacing = self.session.volume.grid.display_spacing
        budget = self.surface_budget()
        # left out before meshing: their shells would also eat most of the triangle budget
        left_out = policy.left_out_of_3d(self.session, self.show_body_wall())

        def job(context: JobContext) -> LabelMeshes:
            context.progress(0.0, f"building {side} surfaces")
            # not stopped when superseded (that would kill the process): it finishes in well under a second
            return self.surface_process.run(
                extract_label_meshes, labels, spacing, SMOOTHING_ITERATIONS, budget, left_out,
                cancel=context.user_cancel,
            )  # fmt: skip

        self.lanes[f"surfaces_{side}"].submit(
            job,
            JobCallbacks(
                lambda meshes: self.surfacesReady.emit(side, meshes),
                on_error=self.error_handler("Could not build the 3D surfaces"),
            ),
        )

    def start_heatmaps(self) -> None:
        """Explained-variance grids of every layer, read from the cached factors (no decomposition)."""
        run = heatmaps_job(self.session)
        self.lanes["heatmaps"].submit(
            lambda context: run(context.progress, context.cancel),
            JobCallbacks(self.session.apply_heatmaps, on_error=self.error_handler("Heatmaps failed")),
        )

    def start_agreement(self) -> None:
        run = self.session.plan_agreement(self.isolated)
        if run is None:
            return
        self.agreementPending.emit("Comparing compressed with original…")
        self.lanes["agreement"].submit(
            lambda context: run(context.cancel),
            JobCallbacks(self.session.apply_agreement, on_error=self.error_handler("Agreement failed")),
        )

    def prepare_sweep(self) -> None:
        """The sweep backend builds its own Segmenter (a float64 copy of the CT): off the UI thread."""
        session, token = self.session, self.session.volume_token

        def ready(result: tuple[object, list[str]]) -> None:
            if token == self.session.volume_token:
                self.sweepBackendReady.emit(*result)

        self.lanes["sweep_setup"].submit(
            lambda _context: session_sweep_backend(session),
            JobCallbacks(ready, on_error=self.error_handler("Could not prepare the DF sweep")),
        )

    # ----- timing -------------------------------------------------------------------------------------------
    def _maybe_time_automatically(self) -> None:
        if policy.should_time_automatically(self.session):
            self.start_timing(automatic=True)

    def start_timing(self, precision: str | None = None, automatic: bool = False) -> None:
        """Median forward time of each expert's original and compressed network on one patch."""
        if not self.session.experts:
            return
        setup = ForwardSetup(precision=precision or self.timing_precision())
        run = timing_job(self.session, setup, policy.TIMING_RUNS)

        def failed(error: Exception, details: str) -> None:
            self.timingMeasuring.emit(False)
            self.failed.emit("Timing failed", error, details)

        def measured(result: TimingResult) -> None:
            self.timingMeasuring.emit(False)
            self.session.apply_timing(result)

        self._timing_is_automatic = automatic
        self.timingMeasuring.emit(True)
        self.lanes["timing"].submit(
            lambda context: run(context.progress, context.cancel),
            JobCallbacks(measured, on_error=failed, on_cancelled=lambda: self.timingMeasuring.emit(False)),
        )

    def close(self) -> None:
        for lane in [*self.lanes.values(), *self.compress_lanes.values()]:
            lane.cancel()
        for lane in self.lanes.values():
            lane.wait(10_000)
        self.compress_pool.waitForDone(10_000)
        self.isolated.close()
        self.surface_process.close()
