"""GUI views on plain numpy data (no models): slices, overlays, difference mode, heatmaps, experts, lanes, 3D."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from pyqtgraph.Qt import QtCore  # noqa: E402

from tuckerscope.app.experts_panel import ClassEntry, ExpertEntry, ExpertsPanel  # noqa: E402
from tuckerscope.app.heatmap_panel import HeatmapPanel, rank_at  # noqa: E402
from tuckerscope.app.slice_views import PLANES, SlicePairView, difference_rgba, plane_image  # noqa: E402
from tuckerscope.app.style import ONLY_COMPRESSED_RGB, ONLY_ORIGINAL_RGB, label_lut  # noqa: E402
from tuckerscope.app.surfaces import to_polydata  # noqa: E402
from tuckerscope.app.workers import JobCallbacks, JobLane  # noqa: E402
from tuckerscope.core.outputs.surfaces import extract_label_meshes  # noqa: E402
from tuckerscope.core.runtime.errors import Cancelled  # noqa: E402
from tuckerscope.core.session.api import LayerHeatmap  # noqa: E402

NAMES = {1: "liver", 2: "spleen"}
COLOURS = {1: (220, 100, 80), 2: (80, 200, 90)}


def two_spheres(shape=(48, 40, 32)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j, k = np.mgrid[: shape[0], : shape[1], : shape[2]]
    ct = np.where(((i - 24) / 20) ** 2 + ((j - 20) / 16) ** 2 < 1, 40.0, -1000.0).astype(np.float32)
    original = np.zeros(shape, np.uint8)
    original[(i - 14) ** 2 + (j - 20) ** 2 + (k - 16) ** 2 < 8**2] = 1
    original[(i - 34) ** 2 + (j - 20) ** 2 + (k - 16) ** 2 < 6**2] = 2
    compressed = original.copy()
    compressed[(i - 34) ** 2 + (j - 20) ** 2 + (k - 16) ** 2 < 4**2] = 0  # a hole: missed by compressed
    compressed[(i - 14) ** 2 + (j - 31) ** 2 + (k - 16) ** 2 < 3**2] = 2  # an invented blob
    return ct, original, compressed


@pytest.fixture
def slice_view(qtbot):
    view = SlicePairView()
    qtbot.addWidget(view)
    view.resize(900, 500)
    view.show()
    ct, original, compressed = two_spheres()
    view.set_ct(ct, (1.5, 1.5, 3.0))
    view.set_label_table(NAMES, COLOURS)
    view.set_segmentations(original, compressed)
    return view, ct, original, compressed


def test_planes_show_the_right_cut(slice_view):
    view, ct, original, _ = slice_view
    for name, plane in PLANES.items():
        view.set_plane(name)
        assert view.plane == name
        image = view.original_canvas.ct_item.image
        expected = plane_image(ct, plane, view.position[plane.slice_axis])
        np.testing.assert_array_equal(image, expected)
        rows, cols = image.shape
        assert (cols, rows) == (ct.shape[plane.col_axis], ct.shape[plane.row_axis])


def image_box(canvas: QtCore.QObject, side: QtCore.QObject) -> tuple[int, int, int, int]:
    """The canvas's image view box as (x, y, width, height) in pixels of its half of the pair."""
    box = canvas.view_box
    view = box.scene().views()[0]
    rect = box.sceneBoundingRect()
    top_left = view.mapTo(side, view.mapFromScene(rect.topLeft()))
    return top_left.x(), top_left.y(), round(rect.width()), round(rect.height())


def test_long_titles_never_move_the_images(qtbot, slice_view):
    """Issue 11, defect 2: a 5-expert title cut off and the compressed image ~80 px right of the original."""
    view, *_ = slice_view
    view.resize(1100, 600)
    qtbot.wait(50)
    before = [image_box(canvas, canvas) for canvas in view.canvases]
    view.set_compressed_title(
        "Compressed · organs 0.34, vertebrae 1.00, cardiac 1.00, muscles 1.00, ribs 1.00 (updating…)"
    )
    view.set_difference_mode(True)  # the longest title: the legend is appended
    qtbot.wait(50)
    original, compressed = (image_box(canvas, canvas) for canvas in view.canvases)
    assert original == compressed, (original, compressed)
    assert [original, compressed] == before
    widths = [canvas.width() for canvas in view.canvases]
    assert abs(widths[0] - widths[1]) <= 1, widths


def test_scroll_moves_both_sides_and_the_slider(qtbot, slice_view):
    view, *_ = slice_view
    view.set_plane("axial")
    start = view.slice_index
    view.step_slice(3)
    assert view.slice_index == start + 3
    assert view.slice_slider.value() == start + 3
    qtbot.keyClick(view, QtCore.Qt.Key.Key_PageDown)
    assert view.slice_index == start - 7
    view.step_slice(-1000)
    assert view.slice_index == 0
    assert view.compressed_canvas.view_box.linkedView(0) is view.original_canvas.view_box


def test_hidden_class_is_transparent_and_hover_names_it(slice_view):
    view, _, original, _ = slice_view
    view.set_plane("axial")
    view.set_position((14, 20, 16))
    overlay = view.original_canvas.overlay_item.image
    assert overlay[20, 14, 3] > 0  # liver shown (row j, col i)
    view.set_visible_labels({2})
    assert view.original_canvas.overlay_item.image[20, 14, 3] == 0
    assert "original: liver" in view.describe_voxel((14, 20, 16))


def test_difference_mode_colours_by_side():
    original = np.array([[0, 1, 2, 1]], dtype=np.uint8)
    compressed = np.array([[0, 0, 2, 2]], dtype=np.uint8)
    lut = label_lut(COLOURS, {1, 2}, 0.5, 3)
    rgba = difference_rgba(original, compressed, lut)
    assert rgba[0, 0, 3] == 0 and rgba[0, 2, 3] == 0  # agree: nothing drawn
    assert tuple(rgba[0, 1, :3]) == ONLY_ORIGINAL_RGB
    other = tuple(rgba[0, 3, :3])
    assert other not in (ONLY_ORIGINAL_RGB, ONLY_COMPRESSED_RGB) and rgba[0, 3, 3] > 0
    rgba = difference_rgba(compressed, original, lut)
    assert tuple(rgba[0, 1, :3]) == ONLY_COMPRESSED_RGB


def test_window_presets_set_levels(slice_view):
    view, *_ = slice_view
    view.preset_combo.setCurrentIndex(1)  # lung
    levels = view.original_canvas.ct_item.getLevels()
    assert levels[0] == pytest.approx(-600 - 750) and levels[1] == pytest.approx(-600 + 750)
    view.level_spin.setValue(100)
    assert view.preset_combo.currentText() == "Manual"
    assert view.window()[0] == 100


def test_heatmap_markers_and_click_sets_ranks(qtbot):
    panel = HeatmapPanel()
    qtbot.addWidget(panel)
    panel.resize(500, 700)
    panel.show()
    grid = np.linspace(0, 1, 32 * 16).reshape(32, 16)
    panel.set_heatmaps("organs", [LayerHeatmap("enc.0", grid), LayerHeatmap("enc.1", grid.T.copy())])
    panel.set_ranks("organs", {"enc.0": (10, 4), "enc.1": (3, 20)})
    xs, ys = panel.detail_marker.getData()
    assert (xs[0], ys[0]) == (4, 10)
    assert rank_at(LayerHeatmap("x", grid), 4.2, 9.6) == (10, 4)
    assert rank_at(LayerHeatmap("x", grid), 40, 9) is None
    qtbot.waitExposed(panel)
    box = panel.detail_plot.getViewBox()
    scene_point = box.mapViewToScene(QtCore.QPointF(5, 12))
    view_point = panel.detail.mapFromScene(scene_point)
    with qtbot.waitSignal(panel.layerRanksRequested, timeout=2000) as signal:
        qtbot.mouseClick(panel.detail.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=view_point)
    assert signal.args == ["organs", "enc.0", 12, 5]
    thumbnail = panel._thumb_boxes[1]
    centre = panel.overview.mapFromScene(thumbnail.sceneBoundingRect().center())
    qtbot.mouseClick(panel.overview.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=centre)
    assert panel.selected_layer == "enc.1"
    xs, ys = panel.detail_marker.getData()
    assert (xs[0], ys[0]) == (20, 3)


def test_link_all_moves_every_slider(qtbot):
    panel = ExpertsPanel()
    qtbot.addWidget(panel)
    experts = [
        ExpertEntry("organs", (ClassEntry(1, "liver", (1, 2, 3)),)),
        ExpertEntry("skeleton", (ClassEntry(2, "rib", (4, 5, 6)),)),
    ]
    panel.set_experts(experts, {"organs": 1.0, "skeleton": 0.5})
    with qtbot.waitSignal(panel.dfChanged) as signal:
        panel.rows["organs"].slider.setValue(0.3)
    assert signal.args[0] == {"organs": 0.3}
    panel.link_check.setChecked(True)
    with qtbot.waitSignal(panel.dfChanged) as signal:
        panel.rows["skeleton"].slider.setValue(0.2)
    assert signal.args[0] == {"skeleton": 0.2, "organs": 0.2}
    assert panel.dfs() == {"organs": 0.2, "skeleton": 0.2}
    with qtbot.waitSignal(panel.visibilityChanged) as signal:
        panel.set_class_visible(1, False)
    assert signal.args[0] == {2}


def test_lane_delivers_only_the_latest_result(qtbot):
    lane = JobLane("test")
    delivered, cancelled = [], []
    release = threading.Event()

    def slow(value):
        def job(context):
            while not release.is_set():
                if context.cancel.is_set():
                    raise Cancelled()
                time.sleep(0.005)
            return value

        return job

    for value in range(5):
        lane.submit(slow(value), JobCallbacks(delivered.append, on_cancelled=lambda: cancelled.append(1)))
    release.set()
    qtbot.waitUntil(lambda: not lane.busy, timeout=5000)
    assert delivered == [4]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_background_lanes_and_processes_run_below_the_segmentations_priority(qtbot):
    from tuckerscope.core.runtime.priority import BACKGROUND_NICENESS
    from tuckerscope.core.runtime.processes import IsolatedRunner

    def niceness(_context=None):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = niceness()
    seen = {}
    for name, background in (("segment", False), ("heatmaps", True)):
        lane = JobLane(name, background=background)
        lane.submit(niceness, JobCallbacks(lambda value, n=name: seen.__setitem__(n, value)))
        qtbot.waitUntil(lambda lane=lane: not lane.busy, timeout=5000)
    assert seen == {"segment": base, "heatmaps": max(base, BACKGROUND_NICENESS)}
    assert niceness() == base  # the UI thread keeps its priority
    runner = IsolatedRunner(background=True)
    try:
        assert runner.run(os.nice, 0) == max(base, BACKGROUND_NICENESS)
    finally:
        runner.close()


def test_surfaces_one_per_class_including_shared_faces():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:15, 5:15, 5:15] = 3
    labels[15:25, 5:15, 5:15] = 7
    surfaces = to_polydata(extract_label_meshes(labels, (1.0, 2.0, 3.0)))
    assert set(surfaces) == {3, 7}
    # each cube is closed: 6 faces of 10x10 quads, 2 triangles each, the shared face in both
    assert all(s.GetNumberOfCells() == 1200 for s in surfaces.values())
    assert to_polydata(extract_label_meshes(np.zeros((4, 4, 4), np.uint8), (1, 1, 1))) == {}
