"""The TuckerScope window: chrome (docks, menus, status bar, dialogs, settings) and the wiring between them.

State and policy live in the session (core.session); the views subscribe to its events (session_views),
the background work starts from them (compute), and a user action becomes one session call. A slider step:
experts panel -> Session.set_df -> compression_changed -> {heatmap markers, titles, timing staleness} and
{the compress lane -> Session.apply_compression -> sizes_changed -> figures; the debounced segment lane ->
Session.apply_segmentation -> segmentation_changed -> slices, then 3D and agreement}. Every lane is
latest-wins, and the UI thread never waits for one.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.agreement_panel import AgreementPanel
from tuckerscope.app.compute import CANCELLABLE_LANES, Compute
from tuckerscope.app.experts_panel import ExpertsPanel
from tuckerscope.app.export_actions import ExportActions
from tuckerscope.app.figures_panel import FiguresPanel
from tuckerscope.app.heatmap_panel import HeatmapPanel
from tuckerscope.app.launch_args import LaunchRequest, parse_launch_args
from tuckerscope.app.menus import FileDialogs, build_menus
from tuckerscope.app.opening import Opener
from tuckerscope.app.recent_files import RecentFiles
from tuckerscope.app.recover_panel import RecoverPanel
from tuckerscope.app.recovery_actions import RecoveryController
from tuckerscope.app.run_menu import RunChoice
from tuckerscope.app.session_views import SessionViews
from tuckerscope.app.slice_views import PLANES, SlicePairView
from tuckerscope.app.status_bar import ProgressStatus
from tuckerscope.app.style import configure_pyqtgraph
from tuckerscope.app.surfaces import to_polydata
from tuckerscope.app.sweep_panel import SweepPanel
from tuckerscope.app.timing_panel import TimingPanel
from tuckerscope.app.volume_3d import SurfacePairView
from tuckerscope.app.window_settings import WindowSettings
from tuckerscope.app.workers import JobLane
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.runtime.memory import retain_for_interactive_use
from tuckerscope.core.session.api import ExportBundle, LabelMeshes, OriginalCache
from tuckerscope.core.session.export import session_bundle
from tuckerscope.core.session.session import Session

ORGANISATION = APPLICATION = "TuckerScope"  # the QSettings store's names


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
        self.stored = WindowSettings(self.settings)
        self.session = Session(original_cache=OriginalCache())  # reopened CTs show their originals at once
        self.error_box: QtWidgets.QMessageBox | None = None  # the last error dialog (tests look at it)
        self.warning_box: QtWidgets.QMessageBox | None = None
        self._build_views()
        self.recovery = RecoveryController(self)  # Recover's lane, buttons, toggles and Figure 2 source
        self.compute = Compute(
            self.session,
            visible_slice=lambda: (PLANES[self.slice_view.plane].slice_axis, self.slice_view.slice_index),
            surface_budget=self.surface_view.triangle_budget,
            show_body_wall=self.surface_view.body_wall_check.isChecked,
            parent=self,
        )
        self.views = SessionViews(self.session, self, self, self.statusBar().showMessage)
        self.opener = Opener(
            self, self.session, self.lanes, self.recent_cts, self.recent_models,
            self.stored.saved_dfs, self.show_error, self.show_warning,
        )  # fmt: skip
        self.exports = ExportActions(self, self.export_bundle)
        self.menus = build_menus(
            self, self.opener, FileDialogs(self, self.opener, self.recent_cts), self.recent_cts,
            self.recent_models, self.exports.add_to_menu, self.docks.values(), self.open_demo, self.session,
        )  # fmt: skip
        self.run_choice = RunChoice(self.session, self.stored, self.show_error, self.menuBar())  # the Run menu
        self.recovery.add_menu(self.menuBar())
        self._watch_progress()
        self._connect()
        self.stored.restore_layout(self)

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
        self.recover_panel = RecoverPanel()
        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        left, right = QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, QtCore.Qt.DockWidgetArea.RightDockWidgetArea
        for key, title, widget, area in (
            ("experts", "Experts", self.experts_panel, left),
            ("heatmaps", "Explained variance per layer", self.heatmap_panel, right),
            ("figures", "Parameters and FLOPs", self.figures_panel, right),
            ("timing", "Forward-pass time", self.timing_panel, right),
            ("agreement", "Agreement with the original", self.agreement_panel, right),
            ("sweep", "DF sweep", self.sweep_panel, right),
            ("recover", "Recover (distillation)", self.recover_panel, right),
        ):
            dock = QtWidgets.QDockWidget(title, self)
            dock.setObjectName(f"dock_{key}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[key] = dock
        self.tabifyDockWidget(self.docks["figures"], self.docks["timing"])
        self.tabifyDockWidget(self.docks["agreement"], self.docks["sweep"])
        self.tabifyDockWidget(self.docks["sweep"], self.docks["recover"])
        self.docks["figures"].raise_()
        self.docks["agreement"].raise_()
        self.resizeDocks([self.docks["experts"]], [300], QtCore.Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["heatmaps"]], [620], QtCore.Qt.Orientation.Horizontal)
        self.progress_status = ProgressStatus()
        self.statusBar().addPermanentWidget(self.progress_status)

    def _watch_progress(self) -> None:
        for name, lane in self.lanes.items():
            self.progress_status.watch(lane, cancellable=name in CANCELLABLE_LANES)
        self.progress_status.watch(self.exports.lane, cancellable=False)
        self.progress_status.watch(self.sweep_panel.lane)

    def _connect(self) -> None:
        """User actions -> one session call each; compute's signals -> the views that show them."""
        session, compute = self.session, self.compute
        self.experts_panel.dfChanged.connect(self._on_df_changed)
        self.experts_panel.methodChanged.connect(self._on_method_changed)
        self.experts_panel.visibilityChanged.connect(self._on_visibility_changed)
        self.experts_panel.classActivated.connect(self.jump_to_class)
        self.experts_panel.targetRequested.connect(
            lambda scope, spec: self._ask("Cannot use this target", session.set_target, scope, spec)
        )
        self.agreement_panel.classActivated.connect(self.jump_to_class)
        self.heatmap_panel.layerRanksRequested.connect(
            lambda expert, layer, r_out, r_in: self._ask(
                "Cannot use these ranks", session.set_layer_ranks, expert, layer, r_out, r_in
            )
        )
        self.surface_view.body_wall_check.setChecked(self.stored.show_body_wall())
        self.surface_view.body_wall_check.toggled.connect(self._on_body_wall_toggled)
        self.timing_panel.remeasureRequested.connect(lambda precision: compute.start_timing(precision))
        compute.timing_precision = self.timing_panel.precision_combo.currentText
        compute.timingMeasuring.connect(self.timing_panel.set_measuring)
        compute.failed.connect(self.show_error)
        compute.agreementPending.connect(self.agreement_panel.set_pending)
        compute.sweepBackendReady.connect(self.sweep_panel.set_backend)
        compute.surfacesReady.connect(self._on_meshes)
        self.slice_view.planeChanged.connect(lambda _plane: compute.schedule_segmentation())
        self.slice_view.hoverChanged.connect(lambda text: self.statusBar().showMessage(text, 4000))

    # ----- what tests, scripts and the command line drive ---------------------------------------------------
    @property
    def lanes(self) -> dict[str, JobLane]:
        return self.compute.lanes

    @property
    def compress_lanes(self) -> dict[str, JobLane]:
        return self.compute.compress_lanes

    @property
    def debounce(self) -> QtCore.QTimer:
        return self.compute.debounce

    def is_idle(self) -> bool:
        return self.compute.is_idle()

    def refresh_segmentation(self) -> None:
        self.compute.refresh_segmentation()

    def open_request(self, request: LaunchRequest) -> None:
        if request.ct is None:
            self.opener.open_phantom(request.phantom_seed)
        else:
            self.opener.open_ct(request.ct)
        self.opener.open_models(request.model)

    def open_demo(self, seed: int = 7) -> None:
        self.opener.open_phantom(seed)
        self.opener.open_models("demo")

    def open_ct(self, path: Path | str) -> None:
        self.opener.open_ct(path)

    def open_models(self, source: str) -> None:
        self.opener.open_models(source)

    def export_bundle(self) -> ExportBundle:
        """What File > Export writes: the session as shown, the last sweep and the measured times."""
        return session_bundle(self.session, sweep=self.sweep_panel.result)

    # ----- user actions --------------------------------------------------------------------------------------
    def _on_df_changed(self, dfs: dict[str, float]) -> None:
        for name, df in dfs.items():
            self.session.set_df(name, df)
        self.stored.save_dfs(self.session)

    def _on_method_changed(self, methods: dict[str, str]) -> None:
        for name, method in methods.items():
            self.session.set_method(name, method)

    def _ask(self, title: str, action: object, *args: object) -> None:
        """A session call the user asked for; a refusal (UserError) is shown, nothing changes."""
        try:
            action(*args)
        except UserError as error:
            self.show_error(title, error, "")

    def _on_visibility_changed(self, visible: set[int]) -> None:
        self.slice_view.set_visible_labels(visible)
        self.surface_view.set_visible_labels(visible)

    def _on_body_wall_toggled(self, shown: bool) -> None:
        self.stored.set_show_body_wall(shown)
        self.compute.start_both_surfaces(rebuild=True)

    def _on_meshes(self, side: str, meshes: LabelMeshes) -> None:
        self.views.on_meshes(side, to_polydata(meshes))

    def jump_to_class(self, label: int) -> None:
        position = self.session.positions.get(label)
        name = next((c.name for c in self.session.classes if c.label == label), str(label))
        if position is None:
            self.statusBar().showMessage(f"{name} is not in the original segmentation", 5000)
            return
        self.slice_view.set_position(position)
        self.statusBar().showMessage(f"Jumped to {name}", 3000)

    # ----- drag and drop --------------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.opener.open_path(Path(url.toLocalFile()))
        event.acceptProposedAction()

    # ----- dialogs -------------------------------------------------------------------------------------------
    def show_error(self, title: str, error: Exception, details: str) -> None:
        """A clear dialog; the state on screen stays as it was (nothing was applied)."""
        box = QtWidgets.QMessageBox(self)
        box.setIcon(QtWidgets.QMessageBox.Icon.Warning)
        box.setWindowTitle(title)
        box.setText(title)
        box.setInformativeText(str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
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

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802
        self.stored.save(self, self.session)
        self.compute.close()
        self.recovery.close()
        self.surface_view.close_vtk()
        super().closeEvent(event)


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
