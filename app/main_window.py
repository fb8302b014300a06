"""The TuckerScope window: wires the session (core) to the views and runs every core call in a worker lane.

Flow of a slider drag: the experts panel reports the DF -> the session's ranks change (UI thread, cheap) ->
the heatmap markers move at once and the "compress" lane rebuilds the compressed network and its size
figures (milliseconds) -> a debounce timer restarts; when the drag pauses the "segment" lane segments the
visible slab, then the whole volume; each step is applied to the session, whose events redraw the slices,
and the 3D surfaces and the agreement table follow in their own lanes. Every lane is latest-wins.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.agreement_panel import AgreementPanel, AgreementRow
from tuckerscope.app.experts_panel import ClassEntry, ExpertEntry, ExpertsPanel
from tuckerscope.app.export_actions import ExportActions
from tuckerscope.app.figures_panel import FiguresPanel, SizeFigures, human
from tuckerscope.app.heatmap_panel import HeatmapPanel, LayerHeatmap
from tuckerscope.app.launch_args import LaunchRequest, parse_launch_args
from tuckerscope.app.recent_files import RecentFiles
from tuckerscope.app.slice_views import PLANES, SlicePairView
from tuckerscope.app.status_bar import ProgressStatus
from tuckerscope.app.style import configure_pyqtgraph
from tuckerscope.app.surfaces import to_polydata
from tuckerscope.app.sweep_panel import SweepPanel
from tuckerscope.app.timing_panel import TimingPanel
from tuckerscope.app.volume_3d import SurfacePairView
from tuckerscope.app.workers import JobCallbacks, JobContext, JobLane
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.models.model_sources import TS_TASKS
from tuckerscope.core.outputs.deliverables import ExportBundle
from tuckerscope.core.outputs.surfaces import SMOOTHING_ITERATIONS, LabelMeshes, extract_label_meshes
from tuckerscope.core.runtime.collector import settle_after_load
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.runtime.memory import retain_for_interactive_use
from tuckerscope.core.runtime.processes import IsolatedRunner
from tuckerscope.core.segmentation.live_segmentation import RankKey, SegmentationUpdate, run_segmentation
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter
from tuckerscope.core.session.export import session_bundle, session_sweep_backend
from tuckerscope.core.session.jobs import (
    CompressionResult,
    TimingResult,
    compression_job,
    heatmaps_job,
    timing_job,
)
from tuckerscope.core.session.session import AgreementResult, CaseVolume, ExpertModel, Session, ts_tasks_in

ORGANISATION = "TuckerScope"
APPLICATION = "TuckerScope"
SEGMENT_DEBOUNCE_MS = 200
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
)
CANCELLABLE_LANES = ("volume", "models", "segment", "timing")
# Forward times are measured by themselves once the window is idle, but only when one pass of every expert
# is cheap (the demo); for TS models (tens of seconds per pass) the user presses Re-measure.
AUTO_TIMING_MAX_FLOPS = 50e9
TIMING_RUNS = 3


class MainWindow(QtWidgets.QMainWindow):
    """One CT, its experts and every view of them."""

    def __init__(self, settings: QtCore.QSettings | None = None) -> None:
        configure_pyqtgraph()
        super().__init__()
        self.setWindowTitle("TuckerScope")
        self.setAcceptDrops(True)
        self.settings = settings or QtCore.QSettings(ORGANISATION, APPLICATION)
        self.recent_cts = RecentFiles(self.settings, "recent/cts")
        self.recent_models = RecentFiles(self.settings, "recent/models")
        self.session = Session()
        # Leave one core to the UI thread (drawing, and the GIL between torch ops): a slider must stay smooth.
        self.session.inference = InferenceOptions(threads=max(1, (os.cpu_count() or 2) - 1))
        self.lanes = {name: JobLane(name, self) for name in LANES}
        self.compress_lanes: dict[str, JobLane] = {}  # one per expert: dragging one must not drop another
        # ...but one thread for all: compressions are short and mostly Python, and three threads fighting over
        # the GIL starve the UI thread (measured: 0.4 s event-loop stalls when all sliders move together)
        self.compress_pool = QtCore.QThreadPool(self)
        self.compress_pool.setMaxThreadCount(1)
        self.networks: dict[str, tuple[RankKey, Any]] = {}
        self.sizes: dict[str, SizeFigures] = {}
        self.timed_keys: dict[str, RankKey] = {}  # ranks the timing panel's figures were measured at
        self._timing_is_automatic = False
        self.colours: dict[int, tuple[int, int, int]] = {}
        self._surfaces_source: dict[str, int] = {}
        self.isolated = IsolatedRunner()  # agreement scoring: its library holds the GIL for seconds
        self.surface_process = IsolatedRunner()  # VTK's filters hold the GIL for their whole run
        self.surface_process.warm_up("tuckerscope.core.outputs.surfaces")
        self.error_box: QtWidgets.QMessageBox | None = None  # the last error dialog (tests look at it)
        self.warning_box: QtWidgets.QMessageBox | None = None
        self._build_views()
        self._build_menus()
        self._connect()
        self._restore_layout()

    # ----- construction -------------------------------------------------------------------------------------
    def _build_views(self) -> None:
        self.slice_view = SlicePairView()
        self.surface_view = SurfacePairView()
        centre = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        centre.addWidget(self.slice_view)
        centre.addWidget(self.surface_view)
        centre.setStretchFactor(0, 3)
        centre.setStretchFactor(1, 2)
        self.centre_splitter = centre
        self.setCentralWidget(centre)

        self.experts_panel = ExpertsPanel()
        self.heatmap_panel = HeatmapPanel()
        self.figures_panel = FiguresPanel()
        self.timing_panel = TimingPanel()
        self.agreement_panel = AgreementPanel()
        self.sweep_panel = SweepPanel()
        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        left, right = (
            QtCore.Qt.DockWidgetArea.LeftDockWidgetArea,
            QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
        )
        for key, title, widget, area in (
            ("experts", "Experts", self.experts_panel, left),
            ("heatmaps", "Explained variance per layer", self.heatmap_panel, right),
            ("figures", "Parameters and FLOPs", self.figures_panel, right),
            ("timing", "Forward-pass time", self.timing_panel, right),
            ("agreement", "Agreement with the original", self.agreement_panel, right),
            ("sweep", "DF sweep", self.sweep_panel, right),
        ):
            dock = QtWidgets.QDockWidget(title, self)
            dock.setObjectName(f"dock_{key}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[key] = dock
        self.tabifyDockWidget(self.docks["figures"], self.docks["timing"])
        self.tabifyDockWidget(self.docks["agreement"], self.docks["sweep"])
        self.docks["figures"].raise_()
        self.docks["agreement"].raise_()
        self.resizeDocks([self.docks["experts"]], [300], QtCore.Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["heatmaps"]], [620], QtCore.Qt.Orientation.Horizontal)

        self.progress_status = ProgressStatus()
        self.statusBar().addPermanentWidget(self.progress_status)
        for name, lane in self.lanes.items():
            self.progress_status.watch(lane, cancellable=name in CANCELLABLE_LANES)
        self.debounce = QtCore.QTimer(self, singleShot=True, interval=SEGMENT_DEBOUNCE_MS)
        # once per load (one collection on the UI thread, ~0.3 s): no full GC pauses during the drags after it
        self.settle_timer = QtCore.QTimer(self, singleShot=True, interval=0)
        self.settle_timer.timeout.connect(settle_after_load)
        self.debounce.timeout.connect(self.refresh_segmentation)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction("Open CT (NIfTI)…", self.choose_ct_file, QtGui.QKeySequence.StandardKey.Open)
        file_menu.addAction("Open CT (DICOM folder)…", self.choose_dicom_folder)
        file_menu.addAction("Open model folder / TS home…", self.choose_model_folder)
        file_menu.addAction("Open demo", self.open_demo)
        for task in TS_TASKS:
            file_menu.addAction(
                f"Open TS task '{task}' (TOTALSEG_HOME_DIR)", lambda t=task: self.open_models(t)
            )
        self.recent_ct_menu = file_menu.addMenu("Recent CTs")
        self.recent_model_menu = file_menu.addMenu("Recent models")
        self.recent_ct_menu.aboutToShow.connect(
            lambda: self._fill_recent(self.recent_ct_menu, self.recent_cts)
        )
        self.recent_model_menu.aboutToShow.connect(
            lambda: self._fill_recent(self.recent_model_menu, self.recent_models)
        )
        file_menu.addSeparator()
        self.exports = ExportActions(self, self.export_bundle)
        self.exports.add_to_menu(file_menu)
        self.progress_status.watch(self.exports.lane, cancellable=False)
        self.progress_status.watch(self.sweep_panel.lane)
        file_menu.addAction("Save screenshot…", self.choose_screenshot_path)
        file_menu.addSeparator()
        file_menu.addAction("Quit", self.close, QtGui.QKeySequence.StandardKey.Quit)
        view_menu = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())

    def _connect(self) -> None:
        events = self.session.events
        events.volume_changed.connect(self._on_volume_changed)
        events.experts_changed.connect(self._on_experts_changed)
        events.ranks_changed.connect(self._on_ranks_changed)
        events.segmentation_changed.connect(self._on_segmentation_changed)
        events.agreement_changed.connect(self._on_agreement_changed)
        self.experts_panel.dfChanged.connect(self._on_df_changed)
        self.experts_panel.visibilityChanged.connect(self._on_visibility_changed)
        self.experts_panel.classActivated.connect(self.jump_to_class)
        self.agreement_panel.classActivated.connect(self.jump_to_class)
        self.heatmap_panel.layerRanksRequested.connect(self._on_layer_ranks_requested)
        self.surface_view.body_wall_check.setChecked(
            bool(self.settings.value("view/body_wall_in_3d", False, type=bool))
        )
        self.surface_view.body_wall_check.toggled.connect(self._on_body_wall_toggled)
        self.timing_panel.remeasureRequested.connect(lambda precision: self.start_timing(precision))
        self.slice_view.planeChanged.connect(lambda _plane: self.schedule_segmentation())
        self.slice_view.hoverChanged.connect(lambda text: self.statusBar().showMessage(text, 4000))

    # ----- opening things ------------------------------------------------------------------------------------
    def open_request(self, request: LaunchRequest) -> None:
        if request.ct is None:
            self.open_phantom(request.phantom_seed)
        else:
            self.open_ct(request.ct)
        self.open_models(request.model)

    def open_demo(self, seed: int = 7) -> None:
        self.open_phantom(seed)
        self.open_models("demo")

    def open_phantom(self, seed: int) -> None:
        def job(context: JobContext) -> tuple[CaseVolume, Segmenter]:
            from tuckerscope.core.imaging.phantom import make_phantom

            context.progress(0.1, f"generating phantom (seed {seed})")
            phantom = make_phantom(seed)
            volume = CaseVolume.from_array(
                phantom.ct, phantom.affine, f"phantom (seed {seed})", phantom.labels
            )
            return volume, Segmenter(volume.data, volume.affine)

        self.lanes["volume"].submit(
            job,
            JobCallbacks(
                lambda loaded: self.session.set_volume(*loaded),
                on_error=self._error_handler("Could not make the phantom"),
            ),
        )

    def open_ct(self, path: Path | str) -> None:
        path = Path(path)

        def job(context: JobContext) -> tuple[CaseVolume, Segmenter, list[str]]:
            from tuckerscope.core.imaging.volume import load_volume

            context.progress(0.1, f"reading {path.name}")
            volume = load_volume(path)
            context.check()
            context.progress(0.8, "preparing the display")
            case = CaseVolume.from_array(volume.data, volume.affine, path.name)
            return case, Segmenter(case.data, case.affine), list(volume.warnings)

        def loaded(result: tuple[CaseVolume, Segmenter, list[str]]) -> None:
            volume, segmenter, warnings = result
            self.recent_cts.add(str(path))
            self.session.set_volume(volume, segmenter)
            if warnings:
                self.show_warning(f"{path.name} opened with a warning", "\n".join(warnings))

        def failed(error: Exception, details: str) -> None:
            self.recent_cts.remove(str(path))
            self.show_error(f"Could not open {path.name}", error, details)

        self.lanes["volume"].submit(job, JobCallbacks(loaded, on_error=failed))

    def open_models(self, source: str) -> None:
        def job(context: JobContext) -> tuple[list[ExpertModel], str]:
            from tuckerscope.core.session.session import load_expert_models, resolve_model_source

            context.progress(0.0, f"finding the experts of {source}")
            return load_expert_models(resolve_model_source(source), context.progress, context.cancel), source

        def loaded(result: tuple[list[ExpertModel], str]) -> None:
            experts, loaded_source = result
            if loaded_source != "demo":
                self.recent_models.add(loaded_source)
            self.session.set_experts(experts, loaded_source)

        def failed(error: Exception, details: str) -> None:
            self.recent_models.remove(source)
            self.show_error(f"Could not load the models from {source}", error, details)

        self.lanes["models"].submit(job, JobCallbacks(loaded, on_error=failed))

    def open_path(self, path: Path | str) -> None:
        """A dropped or recent path: a TS home or a folder with plans.json is a model source, else a CT."""
        text = str(path)
        task, _, home = text.partition("@")
        if home and task in TS_TASKS:
            self.open_models(text)
            return
        path = Path(path)
        if path.is_dir() and any(path.rglob("plans.json")):
            self.open_model_folder(path)
        else:
            self.open_ct(path)

    def open_model_folder(self, path: Path) -> None:
        """A TS home (ask which task when it holds several) or a folder of nnU-Net results."""
        tasks = ts_tasks_in(path)
        if not tasks:
            self.open_models(str(path))
            return
        task = tasks[0]
        if len(tasks) > 1:
            task, chosen = QtWidgets.QInputDialog.getItem(
                self, "TotalSegmentator task", f"{path} holds several TS tasks; open:", tasks, 0, False
            )
            if not chosen:
                return
        self.open_models(f"{task}@{path}")

    def choose_ct_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Open CT", self._last_dir(), "NIfTI (*.nii *.nii.gz);;All files (*)"
        )
        if path:
            self.open_ct(path)

    def choose_dicom_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open DICOM series folder", self._last_dir())
        if path:
            self.open_ct(path)

    def choose_model_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Open a TotalSegmentator home or nnU-Net results folder", self._last_dir()
        )
        if path:
            self.open_model_folder(Path(path))

    def choose_screenshot_path(self) -> None:
        from tuckerscope.app.screenshot import save_window

        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "Save screenshot", "tuckerscope.png", "PNG (*.png)"
        )
        if path:
            save_window(self, Path(path))

    def _last_dir(self) -> str:
        recent = self.recent_cts.items()
        return str(Path(recent[0]).parent) if recent else str(Path.home())

    def _fill_recent(
        self, menu: QtWidgets.QMenu, recent: RecentFiles, open_item: Callable[[str], None]
    ) -> None:
        menu.clear()
        for item in recent.items():
            menu.addAction(item, lambda i=item: open_item(i))
        if not recent.items():
            menu.addAction("(none)").setEnabled(False)

    # ----- drag and drop --------------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.open_path(Path(url.toLocalFile()))
        event.acceptProposedAction()

    # ----- session events ------------------------------------------------------------------------------------
    def _on_volume_changed(self) -> None:
        self.settle_timer.start()
        volume = self.session.volume
        self.setWindowTitle(f"TuckerScope — {volume.name}")
        self.slice_view.set_ct(volume.display_ct, volume.grid.display_spacing)
        self._clear_views()
        self.schedule_segmentation(immediately=True)

    def _on_experts_changed(self) -> None:
        self.settle_timer.start()
        session = self.session
        self.networks.clear()
        saved = self._saved_dfs(session.model_source)
        for name, df in saved.items():
            if name in session.experts:
                session.experts[name].df = df
        self.colours = {info.label: info.rgb for info in session.classes}
        entries = [
            ExpertEntry(
                expert.name,
                tuple(ClassEntry(c.label, c.name, self.colours[c.label]) for c in expert.classes),
            )
            for expert in session.experts.values()
        ]
        self.experts_panel.set_experts(entries, {n: e.df for n, e in session.experts.items()})
        names = {info.label: info.name for info in session.classes}
        self.slice_view.set_label_table(names, self.colours)
        self.surface_view.set_label_table(self.colours)
        self._clear_views()
        self.heatmap_panel.clear()
        self.sizes.clear()
        for name in session.experts:
            self._on_ranks_changed(name)
        self._start_heatmaps()
        self.schedule_segmentation(immediately=True)

    def _on_ranks_changed(self, name: str) -> None:
        expert = self.session.experts[name]
        self.heatmap_panel.set_ranks(name, expert.ranks())
        self._update_compressed_titles()
        self.timing_panel.mark_stale({n: e.rank_key() for n, e in self.session.experts.items()})
        self._build_compressed(name)
        self.schedule_segmentation()

    def _on_segmentation_changed(self, update: SegmentationUpdate) -> None:
        session = self.session
        self.slice_view.set_segmentations(session.display_original, session.display_compressed)
        self._update_compressed_titles()
        self.statusBar().showMessage(update.description, 5000)
        if update.stage == "volume":  # 3D follows whole-volume results only: each redraw costs the UI thread
            self._start_both_surfaces()
        if update.done and update.positions is not None:  # originals just became whole: sweeps may start
            self._prepare_sweep()
        if update.done and session.compressed_is_current():
            self._start_agreement()
        elif not update.done:
            self.agreement_panel.set_pending("Waiting for the whole volume…")

    def _on_agreement_changed(self, result: AgreementResult | None) -> None:
        if result is None:
            return
        self._maybe_time_automatically()
        rows = [
            AgreementRow(
                info.label,
                info.name,
                info.expert,
                score.dice,
                score.nsd,
                score.reference_voxels,
                score.prediction_voxels,
                score.status,
            )
            for info, score in result.rows
        ]
        self.agreement_panel.set_rows(rows, result.summary)

    # ----- user actions --------------------------------------------------------------------------------------
    def _on_df_changed(self, dfs: dict[str, float]) -> None:
        for name, df in dfs.items():
            self.session.set_df(name, df)
        self._save_dfs()

    def _on_layer_ranks_requested(self, expert: str, layer: str, r_out: int, r_in: int) -> None:
        try:
            self.session.set_layer_ranks(expert, layer, r_out, r_in)
        except UserError as error:
            self.show_error("Cannot use these ranks", error, "")

    def _on_visibility_changed(self, visible: set[int]) -> None:
        self.slice_view.set_visible_labels(visible)
        self.surface_view.set_visible_labels(visible)

    def jump_to_class(self, label: int) -> None:
        position = self.session.positions.get(label)
        name = next((c.name for c in self.session.classes if c.label == label), str(label))
        if position is None:
            self.statusBar().showMessage(f"{name} is not in the original segmentation", 5000)
            return
        self.slice_view.set_position(position)
        self.statusBar().showMessage(f"Jumped to {name}", 3000)

    # ----- background work -----------------------------------------------------------------------------------
    def is_idle(self) -> bool:
        """No job running or queued and no refresh pending (tests, benchmarks, screenshots)."""
        lanes = [*self.lanes.values(), *self.compress_lanes.values()]
        return not self.debounce.isActive() and not any(lane.busy for lane in lanes)

    def schedule_segmentation(self, immediately: bool = False) -> None:
        """Debounced: a drag restarts the timer, a pause lets it fire."""
        if immediately:
            self.debounce.start(0)
        else:
            self.debounce.start(SEGMENT_DEBOUNCE_MS)

    def refresh_segmentation(self) -> None:
        session = self.session
        if session.volume is None or not session.experts:
            return
        if self._timing_is_automatic and self.lanes["timing"].busy:
            self.lanes["timing"].cancel()  # segmentation would skew the clock; it re-runs when idle
        plane = PLANES[self.slice_view.plane]
        plan = session.plan_segmentation(plane.slice_axis, self.slice_view.slice_index, self.networks)
        if plan.is_empty:
            return

        def job(context: JobContext) -> SegmentationUpdate:
            return run_segmentation(
                plan, context.progress, context.cancel, context.user_cancel, context.partial
            )

        self.lanes["segment"].submit(
            job,
            JobCallbacks(
                on_result=session.apply_segmentation,
                on_partial=session.apply_segmentation,
                on_error=self._error_handler("Segmentation failed"),
            ),
        )

    def _build_compressed(self, name: str) -> None:
        """Rebuild the compressed network of one expert (milliseconds) so its figures follow the drag."""
        run = compression_job(self.session, name)
        full = self.session.experts[name].is_full_rank()

        def built(result: CompressionResult) -> None:
            if result.network is None:
                self.networks.pop(name, None)
            else:
                self.networks[name] = (result.rank_key, result.network)
            original, compressed = result.original, result.compressed
            self.sizes[name] = SizeFigures(
                name, original.params, compressed.params, original.flops, compressed.flops
            )
            self.experts_panel.set_figures(name, describe_build(self.sizes[name], result.seconds, full))
            self.figures_panel.set_figures([self.sizes[n] for n in self.session.experts if n in self.sizes])

        lane = self.compress_lanes.get(name)
        if lane is None:  # one lane per expert for the session: a new lane per step leaked a thread pool each
            lane = self.compress_lanes[name] = JobLane(f"compress {name}", self, self.compress_pool)
        lane.submit(
            lambda _context: run(), JobCallbacks(built, on_error=self._error_handler("Compression failed"))
        )

    def _start_surfaces(self, side: str, labels: np.ndarray | None) -> None:
        if labels is None or self._surfaces_source.get(side) == id(labels):
            return
        self._surfaces_source[side] = id(labels)
        spacing = self.session.volume.grid.display_spacing
        view = self.surface_view
        budget = view.triangle_budget()
        # left out before meshing: their shells would also eat most of the triangle budget
        left_out = () if view.body_wall_check.isChecked() else tuple(self._body_wall_labels())

        def job(context: JobContext) -> LabelMeshes:
            context.progress(0.0, f"building {side} surfaces")
            # not stopped when superseded (that would kill the process): it finishes in well under a second
            return self.surface_process.run(
                extract_label_meshes,
                labels,
                spacing,
                SMOOTHING_ITERATIONS,
                budget,
                left_out,
                cancel=context.user_cancel,
            )

        def apply(meshes: LabelMeshes) -> None:
            surfaces = to_polydata(meshes)
            view.set_original(surfaces) if side == "original" else view.set_compressed(surfaces)

        self.lanes[f"surfaces_{side}"].submit(
            job, JobCallbacks(apply, on_error=self._error_handler("Could not build the 3D surfaces"))
        )

    def _body_wall_labels(self) -> list[int]:
        return [info.label for info in self.session.classes if info.wraps_the_body]

    def _on_body_wall_toggled(self, shown: bool) -> None:
        self.settings.setValue("view/body_wall_in_3d", shown)
        self._surfaces_source.clear()
        self._start_both_surfaces()

    def _start_both_surfaces(self) -> None:
        self._start_surfaces("original", self.session.display_original)
        self._start_surfaces("compressed", self.session.display_compressed)

    def _start_heatmaps(self) -> None:
        """Explained-variance grids of every layer, read from the cached factors (no decomposition)."""
        run = heatmaps_job(self.session)

        def ready(heatmaps: dict[str, dict[str, np.ndarray]]) -> None:
            for name, grids in heatmaps.items():
                if name in self.session.experts:
                    self.heatmap_panel.set_heatmaps(
                        name, [LayerHeatmap(layer, g) for layer, g in grids.items()]
                    )
                    self.heatmap_panel.set_ranks(name, self.session.experts[name].ranks())

        self.lanes["heatmaps"].submit(
            lambda context: run(context.progress, context.cancel),
            JobCallbacks(ready, on_error=self._error_handler("Heatmaps failed")),
        )

    def _maybe_time_automatically(self) -> None:
        experts = self.session.experts
        cheap = sum(self.sizes[n].flops_original for n in experts if n in self.sizes) <= AUTO_TIMING_MAX_FLOPS
        current = {name: expert.rank_key() for name, expert in experts.items()}
        if experts and cheap and len(self.sizes) == len(experts) and current != self.timed_keys:
            self.start_timing(self.timing_panel.precision_combo.currentText(), automatic=True)

    def start_timing(self, precision: str = "fp32", automatic: bool = False) -> None:
        """Median forward time of each expert's original and compressed network on one patch."""
        if not self.session.experts:
            return
        run = timing_job(self.session, ForwardSetup(precision=precision), self.networks, TIMING_RUNS)

        def measured(result: TimingResult) -> None:
            self.timed_keys = {row.expert: row.rank_key for row in result.rows}
            self.timing_panel.set_timings(result.rows, result.setup, result.runs)
            self.timing_panel.mark_stale({n: e.rank_key() for n, e in self.session.experts.items()})

        def failed(error: Exception, details: str) -> None:
            self.timing_panel.set_measuring(False)
            self.show_error("Timing failed", error, details)

        self._timing_is_automatic = automatic
        self.timing_panel.set_measuring(True)
        self.lanes["timing"].submit(
            lambda context: run(context.progress, context.cancel),
            JobCallbacks(
                measured, on_error=failed, on_cancelled=lambda: self.timing_panel.set_measuring(False)
            ),
        )

    def _start_agreement(self) -> None:
        run = self.session.plan_agreement(self.isolated)
        if run is None:
            return
        self.agreement_panel.set_pending("Comparing compressed with original…")
        self.lanes["agreement"].submit(
            lambda context: run(context.cancel),
            JobCallbacks(self.session.apply_agreement, on_error=self._error_handler("Agreement failed")),
        )

    def _update_compressed_titles(self) -> None:
        """'Compressed · DF 0.20' when the experts agree, else each expert's DF; '(updating)' while stale."""
        experts = self.session.experts
        dfs = {round(e.df, 2) for e in experts.values()}
        if len(dfs) == 1:
            text = f"DF {dfs.pop():.2f}"
        else:
            text = ", ".join(f"{n} {e.df:.2f}" for n, e in experts.items())
        stale = "" if self.session.compressed_is_current() else " (updating…)"
        self.slice_view.set_compressed_title(f"Compressed · {text}{stale}")
        self.surface_view.compressed_view.set_title(f"Compressed · {text}{stale}")

    def _prepare_sweep(self) -> None:
        """The sweep backend builds its own Segmenter (a float64 copy of the CT): off the UI thread."""
        session, token = self.session, self.session.volume_token

        def ready(result: tuple[object, list[str]]) -> None:
            if token == self.session.volume_token:
                self.sweep_panel.set_backend(*result)

        self.lanes["sweep_setup"].submit(
            lambda _context: session_sweep_backend(session),
            JobCallbacks(ready, on_error=self._error_handler("Could not prepare the DF sweep")),
        )

    def export_bundle(self) -> ExportBundle:
        """What File > Export writes: the session as shown, the last sweep and the measured times."""
        timings = [
            {
                "expert": row.expert,
                "DF": row.df,
                "original_ms": round(row.original_seconds * 1000, 1),
                "compressed_ms": None
                if row.compressed_seconds is None
                else round(row.compressed_seconds * 1000, 1),
                "speedup": None if row.speedup is None else round(row.speedup, 3),
                "setup": self.timing_panel.setup_text,
            }
            for row in self.timing_panel.timings
        ]
        return session_bundle(self.session, sweep=self.sweep_panel.result, timings=timings)

    def _clear_views(self) -> None:
        self.sweep_panel.set_backend(None, [])
        self._surfaces_source.clear()
        self.surface_view.set_original({})
        self.surface_view.set_compressed({})
        self.agreement_panel.set_rows([], "No comparison yet")

    # ----- errors --------------------------------------------------------------------------------------------
    def _error_handler(self, title: str) -> Any:
        return lambda error, details: self.show_error(title, error, details)

    def show_error(self, title: str, error: Exception, details: str) -> None:
        """A clear dialog; the state on screen stays as it was (nothing was applied)."""
        box = QtWidgets.QMessageBox(self)
        box.setIcon(QtWidgets.QMessageBox.Icon.Warning)
        box.setWindowTitle(title)
        box.setText(title)
        box.setInformativeText(
            str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        )
        if details and not isinstance(error, UserError):
            box.setDetailedText(details)
        box.setModal(True)
        box.open()
        self.error_box = box

    def show_warning(self, title: str, text: str) -> None:
        """A non-blocking note (e.g. an MR volume given to a CT model); the work goes on."""
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Information, title, text, parent=self)
        box.setModal(False)
        box.open()
        self.warning_box = box

    # ----- settings ------------------------------------------------------------------------------------------
    def _saved_dfs(self, source: str) -> dict[str, float]:
        value = self.settings.value(f"dfs/{_settings_key(source)}", {})
        return {str(k): float(v) for k, v in dict(value or {}).items()}

    def _save_dfs(self) -> None:
        if self.session.experts:
            dfs = {n: e.df for n, e in self.session.experts.items()}
            self.settings.setValue(f"dfs/{_settings_key(self.session.model_source)}", dfs)

    def _restore_layout(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1800, 1000)
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self._save_dfs()
        self.settings.sync()
        for lane in self.lanes.values():
            lane.cancel()
        for lane in self.lanes.values():
            lane.wait(10_000)
        self.isolated.close()
        self.surface_process.close()
        self.surface_view.close_vtk()
        super().closeEvent(event)


def describe_build(size: SizeFigures, seconds: float, full: bool) -> str:
    """The figures line under an expert's slider."""
    line = (
        f"params {human(size.params_original)} → {human(size.params_compressed)} ({size.params_ratio:.1f}x) · "
        f"FLOPs {human(size.flops_original)} → {human(size.flops_compressed)} ({size.flops_ratio:.1f}x)"
    )
    return line + (" · uncompressed" if full else f" · network built in {seconds * 1000:.0f} ms")


def _settings_key(source: str) -> str:
    """QSettings keys cannot hold slashes meaningfully; keep the source readable but flat."""
    return source.replace("/", "|").replace("\\", "|")


def run_app(argv: list[str]) -> int:
    """Open the window (the demo with no arguments) and run the event loop."""
    request = parse_launch_args(list(argv))
    retain_for_interactive_use()
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    window = MainWindow()
    window.show()
    window.open_request(request)
    try:
        return int(app.exec())
    except Exception:  # the event loop itself failed: say so on stderr, never a silent exit
        traceback.print_exc()
        return 1
