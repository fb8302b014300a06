"""Each view subscribes to the session fields it shows (napari style): one handler per event, no decisions.

What a title says, which figures line an expert gets or which labels are coloured how is policy
(core.session.policy); this module only routes a field's new value to the widgets that draw it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pyqtgraph.Qt import QtWidgets

from tuckerscope.app.agreement_panel import AgreementPanel, AgreementRow
from tuckerscope.app.experts_panel import ClassEntry, ExpertEntry, ExpertsPanel
from tuckerscope.app.figures_panel import FiguresPanel
from tuckerscope.app.heatmap_panel import HeatmapPanel
from tuckerscope.app.slice_views import SlicePairView
from tuckerscope.app.sweep_panel import SweepPanel
from tuckerscope.app.timing_panel import TimingPanel
from tuckerscope.app.volume_3d import SurfacePairView
from tuckerscope.core.session import policy
from tuckerscope.core.session.api import SegmentationUpdate
from tuckerscope.core.session.recovery import agreement_pair
from tuckerscope.core.session.session import ALL_EXPERTS, AgreementResult, Session, TimingResult


def mean_dice(result: AgreementResult) -> float:
    return sum(score.dice for _, score in result.rows) / max(1, len(result.rows))


class Views(Protocol):
    """The widgets of the window that show session state."""

    slice_view: SlicePairView
    surface_view: SurfacePairView
    experts_panel: ExpertsPanel
    heatmap_panel: HeatmapPanel
    figures_panel: FiguresPanel
    timing_panel: TimingPanel
    agreement_panel: AgreementPanel
    sweep_panel: SweepPanel


class SessionViews:
    """Connects the session's events to the views; ``status`` shows a line in the status bar."""

    def __init__(
        self, session: Session, views: Views, window: QtWidgets.QMainWindow, status: Callable[[str, int], None]
    ) -> None:
        self.session, self.views, self.window, self.status = session, views, window, status
        events = session.events
        events.volume_changed.connect(self.on_volume_changed)
        events.experts_changed.connect(self.on_experts_changed)
        events.compression_changed.connect(self.on_compression_changed)
        events.target_changed.connect(self.on_target_changed)
        events.sizes_changed.connect(self.on_sizes_changed)
        events.heatmaps_changed.connect(self.on_heatmaps_changed)
        events.timing_changed.connect(self.on_timing_changed)
        events.inference_changed.connect(self.on_inference_changed)
        events.segmentation_changed.connect(self.on_segmentation_changed)
        events.agreement_changed.connect(self.on_agreement_changed)

    def on_volume_changed(self) -> None:
        volume = self.session.volume
        self.window.setWindowTitle(f"TuckerScope — {volume.name}")
        self.views.slice_view.set_ct(volume.display_ct, volume.grid.display_spacing)
        self.clear()

    def on_experts_changed(self) -> None:
        session, views = self.session, self.views
        colours = policy.colours(session)
        entries = [
            ExpertEntry(
                expert.name, tuple(ClassEntry(c.label, c.name, colours[c.label]) for c in expert.classes)
            )
            for expert in session.experts.values()
        ]
        views.experts_panel.set_experts(entries, {n: e.df for n, e in session.experts.items()})
        for name, expert in session.experts.items():
            views.experts_panel.rows[name].set_method(expert.method)
        views.slice_view.set_label_table(policy.class_names(session), colours)
        views.surface_view.set_label_table(colours)
        views.heatmap_panel.clear()
        self.on_target_changed(ALL_EXPERTS)  # a new model set starts at its DFs
        views.figures_panel.set_figures([])
        self.clear()
        self.update_titles()

    def on_compression_changed(self, name: str) -> None:
        expert = self.session.experts[name]
        self.views.experts_panel.set_df(name, expert.df)
        self.views.experts_panel.rows[name].set_method(expert.method)
        self.views.heatmap_panel.set_ranks(name, expert.ranks())
        self.views.timing_panel.mark_stale(self.session.rank_keys())
        self.update_titles()
        if expert.target_scope == ALL_EXPERTS:  # its ranks come from the pooled budget
            self.views.experts_panel.rows[name].target.set_target(None)
            self.views.experts_panel.rows[name].target.set_status(f"ranks from the all-experts {expert.target}")
        elif expert.target is None and name not in self.session.targets:
            self.on_target_changed(name)

    def on_target_changed(self, scope: str) -> None:
        """The control of a scope shows the target in force (or being solved) and achieved vs asked."""
        panel = self.views.experts_panel
        control = panel.all_target if scope == ALL_EXPERTS else panel.rows[scope].target
        control.set_target(self.session.targets.get(scope))
        control.set_status(*policy.target_status(self.session, scope))

    def on_sizes_changed(self, name: str) -> None:
        session = self.session
        self.views.experts_panel.set_figures(name, policy.describe_build(session, name))
        self.views.figures_panel.set_figures([session.sizes[n] for n in session.experts if n in session.sizes])

    def on_heatmaps_changed(self) -> None:
        for name, heatmaps in self.session.heatmaps.items():
            self.views.heatmap_panel.set_heatmaps(name, heatmaps)
            self.views.heatmap_panel.set_ranks(name, self.session.experts[name].ranks())

    def on_timing_changed(self, result: TimingResult | None) -> None:
        if result is not None:
            self.views.timing_panel.set_timings(result.rows, result.setup, result.runs)
            self.views.timing_panel.mark_stale(self.session.rank_keys())

    def on_segmentation_changed(self, update: SegmentationUpdate) -> None:
        session = self.session
        self.views.slice_view.set_segmentations(session.display_original, session.display_compressed)
        self.update_titles()
        self.status(update.description, 5000)

    def on_agreement_changed(self, result: AgreementResult | None) -> None:
        if result is None:
            return
        zero_shot, distilled = agreement_pair(self.session)  # both once Recover ran and both sides were scored
        before, summary = {}, result.summary
        if zero_shot is not None and distilled is not None:
            result, before = distilled, {(i.label, i.expert): (s.dice, s.nsd) for i, s in zero_shot.rows}
            summary = f"Distilled: {distilled.summary} · zero-shot mean Dice {mean_dice(zero_shot):.3f}"
        rows = [
            AgreementRow(
                info.label, info.name, info.expert, score.dice, score.nsd,
                score.reference_voxels, score.prediction_voxels, score.status, before.get((info.label, info.expert)),
            )
            for info, score in result.rows
        ]  # fmt: skip
        self.views.agreement_panel.set_rows(rows, summary)

    def on_meshes(self, side: str, surfaces: dict) -> None:
        view = self.views.surface_view
        view.set_original(surfaces) if side == "original" else view.set_compressed(surfaces)
        self.update_titles()

    def update_titles(self) -> None:
        title = policy.compressed_title(self.session)
        self.views.slice_view.set_compressed_title(title)
        self.views.surface_view.compressed_view.set_title(title)
        original = policy.original_title(self.session)
        self.views.slice_view.set_original_title(original)
        self.views.surface_view.original_view.set_title(original)

    def on_inference_changed(self) -> None:
        """Both sides are recomputed under the new runtime: the views computed from them go blank meanwhile."""
        self.clear()
        self.update_titles()
        runtime = policy.runtime_label(self.session) or "PyTorch fp32 (the reference)"
        again = ": segmenting again" if self.session.volume is not None else ""
        self.status(f"networks now run with {runtime}{again}", 6000)

    def clear(self) -> None:
        """Views computed from segmentations go blank until the new ones exist."""
        self.views.sweep_panel.set_backend(None, [])
        self.views.surface_view.set_original({})
        self.views.surface_view.set_compressed({})
        self.views.agreement_panel.set_rows([], "No comparison yet")
