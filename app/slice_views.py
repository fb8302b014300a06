"""Original | compressed slice views: one plane of the CT with label overlays, kept in lock-step.

Arrays are indexed (i, j, k) in RAS+ orientation (i to the patient's right, j anterior, k superior). Each
plane is drawn in millimetres in radiological convention (patient's right on the screen's left), so the two
views can share one zoom/pan (linked ViewBoxes) and one crosshair position in voxel indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets
from superqt import QLabeledSlider

from tuckerscope.app.style import (
    ONLY_COMPRESSED_RGB,
    ONLY_ORIGINAL_RGB,
    OTHER_CLASS_RGB,
    WINDOW_PRESETS,
    configure_pyqtgraph,
    label_lut,
    wrapped_label_of_fixed_height,
)


@dataclass(frozen=True)
class Plane:
    """How a plane cuts the (i, j, k) array: the sliced axis and the axes drawn as columns and rows."""

    name: str
    slice_axis: int
    col_axis: int
    row_axis: int


PLANES: dict[str, Plane] = {
    "axial": Plane("axial", 2, 0, 1),
    "coronal": Plane("coronal", 1, 0, 2),
    "sagittal": Plane("sagittal", 0, 1, 2),
}


def plane_image(volume: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """The (row, col) image of ``volume`` at ``index`` along the plane's sliced axis."""
    return np.ascontiguousarray(np.take(volume, index, axis=plane.slice_axis).T)


def difference_rgba(original: np.ndarray, compressed: np.ndarray, visible_lut: np.ndarray) -> np.ndarray:
    """Colour the voxels where the two label images disagree, by which side has a (visible) label."""
    shown_o = np.where(visible_lut[original, 3] > 0, original, 0)
    shown_c = np.where(visible_lut[compressed, 3] > 0, compressed, 0)
    differ = shown_o != shown_c
    rgba = np.zeros(original.shape + (4,), dtype=np.uint8)
    alpha = int(visible_lut[:, 3].max()) or 255
    for mask, rgb in (
        (differ & (shown_o > 0) & (shown_c == 0), ONLY_ORIGINAL_RGB),
        (differ & (shown_o == 0) & (shown_c > 0), ONLY_COMPRESSED_RGB),
        (differ & (shown_o > 0) & (shown_c > 0), OTHER_CLASS_RGB),
    ):
        rgba[mask, :3] = rgb
        rgba[mask, 3] = max(alpha, 200)
    return rgba


class SliceViewBox(pg.ViewBox):
    """A ViewBox where the wheel scrolls slices and Ctrl+wheel zooms (as in radiology viewers)."""

    sigSliceStep = QtCore.Signal(int)

    def wheelEvent(self, ev: QtWidgets.QGraphicsSceneWheelEvent, axis: int | None = None) -> None:  # noqa: N802
        if ev.modifiers() & QtCore.Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        self.sigSliceStep.emit(1 if ev.delta() > 0 else -1)
        ev.accept()


class SliceCanvas(QtWidgets.QWidget):
    """One side: a title line above the CT slice, its label overlay and the crosshair, in millimetres.

    The title is a plain label of fixed height (two lines) whose width comes from the layout, never from its
    text: a long title (five experts' DFs) wraps or is cut, but never widens its side or moves the image.
    """

    def __init__(self, title: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.title_label = wrapped_label_of_fixed_height(QtWidgets.QLabel(title), 2)
        self.title_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignHCenter | QtCore.Qt.AlignmentFlag.AlignTop)
        self.graphics = pg.GraphicsLayoutWidget()
        self.view_box = SliceViewBox(lockAspect=True, invertX=True, enableMenu=False)
        self.graphics.addItem(self.view_box, row=0, col=0)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.title_label)
        layout.addWidget(self.graphics, 1)
        self.ct_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item.setZValue(1)
        pen = pg.mkPen((255, 255, 0, 140), width=1)
        self.v_line = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.h_line = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        for item in (self.ct_item, self.overlay_item, self.v_line, self.h_line):
            self.view_box.addItem(item, ignoreBounds=item in (self.v_line, self.h_line))
        self.v_line.setZValue(2)
        self.h_line.setZValue(2)

    def scene(self) -> pg.GraphicsScene:
        return self.graphics.scene()

    def set_title(self, text: str) -> None:
        self.title_label.setText(text)
        self.title_label.setToolTip(text)

    def show_slice(self, ct: np.ndarray, overlay: np.ndarray | None, rect: QtCore.QRectF) -> None:
        self.ct_item.setImage(ct, autoLevels=False)
        self.ct_item.setRect(rect)
        if overlay is None:
            self.overlay_item.clear()
        else:
            self.overlay_item.setImage(overlay, autoLevels=False, levels=None)
            self.overlay_item.setRect(rect)


class SlicePairView(QtWidgets.QWidget):
    """Original | compressed slices with shared plane, slice, zoom, pan, crosshair, window and overlays."""

    positionChanged = QtCore.Signal(tuple)  # (i, j, k)
    planeChanged = QtCore.Signal(str)
    hoverChanged = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self._ct: np.ndarray | None = None
        self._spacing = (1.0, 1.0, 1.0)
        self._original: np.ndarray | None = None
        self._compressed: np.ndarray | None = None
        self._names: dict[int, str] = {}
        self._colours: dict[int, tuple[int, int, int]] = {}
        self._visible: set[int] = set()
        self._opacity = 0.5
        self._difference = False
        self._compressed_title = "Compressed"
        self._plane = PLANES["axial"]
        self._position = (0, 0, 0)
        self._level, self._width = WINDOW_PRESETS[0].level, WINDOW_PRESETS[0].width
        self._lut = np.zeros((1, 4), np.uint8)
        self._build()
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)

    # ----- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.original_canvas = SliceCanvas("Original")
        self.compressed_canvas = SliceCanvas("Compressed")
        self.compressed_canvas.view_box.setXLink(self.original_canvas.view_box)
        self.compressed_canvas.view_box.setYLink(self.original_canvas.view_box)
        for canvas in self.canvases:
            canvas.view_box.sigSliceStep.connect(self.step_slice)
            canvas.scene().sigMouseMoved.connect(lambda pos, c=canvas: self._on_hover(c, pos))
            canvas.scene().sigMouseClicked.connect(lambda ev, c=canvas: self._on_click(c, ev))

        self.plane_buttons: dict[str, QtWidgets.QToolButton] = {}
        plane_group = QtWidgets.QButtonGroup(self)
        toolbar = QtWidgets.QHBoxLayout()
        for name in PLANES:
            button = QtWidgets.QToolButton(text=name.capitalize(), checkable=True)
            button.setChecked(name == self._plane.name)
            button.clicked.connect(lambda _=False, n=name: self.set_plane(n))
            plane_group.addButton(button)
            self.plane_buttons[name] = button
            toolbar.addWidget(button)
        toolbar.addSpacing(12)
        self.preset_combo = QtWidgets.QComboBox()
        self.preset_combo.addItems([p.name for p in WINDOW_PRESETS] + ["Manual"])
        self.preset_combo.currentIndexChanged.connect(self._on_preset)
        toolbar.addWidget(QtWidgets.QLabel("Window"))
        toolbar.addWidget(self.preset_combo)
        self.level_spin = self._hu_spin(-2000, 4000, self._level)
        self.width_spin = self._hu_spin(1, 6000, self._width)
        toolbar.addWidget(QtWidgets.QLabel("L"))
        toolbar.addWidget(self.level_spin)
        toolbar.addWidget(QtWidgets.QLabel("W"))
        toolbar.addWidget(self.width_spin)
        self.level_spin.valueChanged.connect(self._on_manual_window)
        self.width_spin.valueChanged.connect(self._on_manual_window)
        toolbar.addSpacing(12)
        toolbar.addWidget(QtWidgets.QLabel("Overlay"))
        self.opacity_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(self._opacity * 100))
        self.opacity_slider.setMaximumWidth(120)
        self.opacity_slider.valueChanged.connect(lambda v: self.set_opacity(v / 100))
        toolbar.addWidget(self.opacity_slider)
        self.difference_check = QtWidgets.QCheckBox("Difference")
        self.difference_check.setToolTip(
            "Colour voxels where the two disagree: magenta = only original (missed), "
            "cyan = only compressed (added), yellow = different class"
        )
        self.difference_check.toggled.connect(self.set_difference_mode)
        toolbar.addWidget(self.difference_check)
        toolbar.addStretch(1)

        self.slice_slider = QLabeledSlider(QtCore.Qt.Orientation.Horizontal)
        self.slice_slider.valueChanged.connect(self._on_slice_slider)
        self.hover_label = QtWidgets.QLabel(" ")
        self.hover_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)

        canvases = QtWidgets.QHBoxLayout()
        canvases.setSpacing(2)
        canvases.addWidget(self.original_canvas, 1)  # equal halves, whatever the titles say
        canvases.addWidget(self.compressed_canvas, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(toolbar)
        layout.addLayout(canvases, 1)
        slice_row = QtWidgets.QHBoxLayout()
        slice_row.addWidget(QtWidgets.QLabel("Slice"))
        slice_row.addWidget(self.slice_slider, 1)
        layout.addLayout(slice_row)
        layout.addWidget(self.hover_label)

    @staticmethod
    def _hu_spin(low: int, high: int, value: float) -> QtWidgets.QSpinBox:
        spin = QtWidgets.QSpinBox()
        spin.setRange(low, high)
        spin.setValue(int(value))
        spin.setSuffix(" HU")
        spin.setKeyboardTracking(False)
        return spin

    @property
    def canvases(self) -> tuple[SliceCanvas, SliceCanvas]:
        return self.original_canvas, self.compressed_canvas

    # ----- data ---------------------------------------------------------------------------------------------
    def set_ct(self, ct: np.ndarray, spacing: tuple[float, float, float]) -> None:
        """Show a new CT (RAS+ (i, j, k) array in HU); labels are cleared, the view centres on it."""
        self._ct = ct
        self._spacing = tuple(float(s) for s in spacing)
        self._original = self._compressed = None
        self._position = tuple(int(n // 2) for n in ct.shape)
        self._sync_slider()
        self._redraw()
        self.original_canvas.view_box.autoRange(padding=0.02)

    def set_segmentations(self, original: np.ndarray | None, compressed: np.ndarray | None) -> None:
        for labels in (original, compressed):
            if labels is not None and self._ct is not None and labels.shape != self._ct.shape:
                raise ValueError(f"label map shape {labels.shape} does not match the CT {self._ct.shape}")
        self._original, self._compressed = original, compressed
        self._redraw()

    def set_compressed(self, compressed: np.ndarray | None) -> None:
        self.set_segmentations(self._original, compressed)

    def set_label_table(self, names: dict[int, str], colours: dict[int, tuple[int, int, int]]) -> None:
        self._names = dict(names)
        self._colours = dict(colours)
        self._visible = set(names)
        self._rebuild_lut()

    def set_visible_labels(self, visible: set[int]) -> None:
        self._visible = set(visible)
        self._rebuild_lut()

    def set_opacity(self, opacity: float) -> None:
        self._opacity = opacity
        self._rebuild_lut()

    def set_difference_mode(self, enabled: bool) -> None:
        self._difference = bool(enabled)
        if self.difference_check.isChecked() != self._difference:
            self.difference_check.setChecked(self._difference)
        self._update_title()
        self._redraw()

    def set_original_title(self, title: str) -> None:
        self.original_canvas.set_title(title)

    def set_compressed_title(self, title: str) -> None:
        self._compressed_title = title
        self._update_title()

    def _update_title(self) -> None:
        legend = " — difference: magenta missed, cyan added, yellow other class" if self._difference else ""
        self.compressed_canvas.set_title(self._compressed_title + legend)

    # ----- navigation ---------------------------------------------------------------------------------------
    @property
    def plane(self) -> str:
        return self._plane.name

    @property
    def position(self) -> tuple[int, int, int]:
        return self._position

    @property
    def slice_index(self) -> int:
        return self._position[self._plane.slice_axis]

    def set_plane(self, name: str) -> None:
        if name not in PLANES:
            raise ValueError(f"unknown plane {name!r}; choose one of {', '.join(PLANES)}")
        if name == self._plane.name:
            return
        self._plane = PLANES[name]
        self.plane_buttons[name].setChecked(True)
        self._sync_slider()
        self._redraw()
        self.original_canvas.view_box.autoRange(padding=0.02)
        self.planeChanged.emit(name)

    def set_position(self, position: tuple[int, int, int]) -> None:
        if self._ct is None:
            return
        clipped = tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(position, self._ct.shape, strict=True))
        if clipped == self._position:
            return
        self._position = clipped
        self._sync_slider()
        self._redraw()
        self.positionChanged.emit(self._position)

    def step_slice(self, step: int) -> None:
        position = list(self._position)
        position[self._plane.slice_axis] += step
        self.set_position(tuple(position))

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:  # noqa: N802
        """Up/Down (or Page Up/Down, ten at a time) scroll slices, as in radiology viewers."""
        steps = {
            QtCore.Qt.Key.Key_Up: 1,
            QtCore.Qt.Key.Key_Down: -1,
            QtCore.Qt.Key.Key_PageUp: 10,
            QtCore.Qt.Key.Key_PageDown: -10,
        }
        if event.key() in steps:
            self.step_slice(steps[event.key()])
            event.accept()
        else:
            super().keyPressEvent(event)

    def set_window(self, level: float, width: float) -> None:
        self._level, self._width = float(level), max(float(width), 1.0)
        for spin, value in ((self.level_spin, self._level), (self.width_spin, self._width)):
            spin.blockSignals(True)
            spin.setValue(int(value))
            spin.blockSignals(False)
        self._apply_window()

    def window(self) -> tuple[float, float]:
        return self._level, self._width

    # ----- internals ----------------------------------------------------------------------------------------
    def _on_preset(self, index: int) -> None:
        if index < len(WINDOW_PRESETS):
            preset = WINDOW_PRESETS[index]
            self.set_window(preset.level, preset.width)

    def _on_manual_window(self) -> None:
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentIndex(len(WINDOW_PRESETS))
        self.preset_combo.blockSignals(False)
        self._level, self._width = float(self.level_spin.value()), float(self.width_spin.value())
        self._apply_window()

    def _apply_window(self) -> None:
        levels = (self._level - self._width / 2, self._level + self._width / 2)
        for canvas in self.canvases:
            canvas.ct_item.setLevels(levels)

    def _sync_slider(self) -> None:
        if self._ct is None:
            return
        self.slice_slider.blockSignals(True)
        self.slice_slider.setRange(0, self._ct.shape[self._plane.slice_axis] - 1)
        self.slice_slider.setValue(self.slice_index)
        self.slice_slider.blockSignals(False)

    def _on_slice_slider(self, value: int) -> None:
        position = list(self._position)
        position[self._plane.slice_axis] = int(value)
        self.set_position(tuple(position))

    def _rebuild_lut(self) -> None:
        size = max([*self._colours, *self._names, 0]) + 1
        self._lut = label_lut(self._colours, self._visible, self._opacity, size)
        self._redraw()

    def _overlay(self, labels: np.ndarray | None) -> np.ndarray | None:
        if labels is None:
            return None
        image = plane_image(labels, self._plane, self.slice_index)
        return self._lut[np.minimum(image, len(self._lut) - 1)]

    def _redraw(self) -> None:
        if self._ct is None:
            return
        plane, index = self._plane, self.slice_index
        ct = plane_image(self._ct, plane, index)
        col_mm, row_mm = self._spacing[plane.col_axis], self._spacing[plane.row_axis]
        rect = QtCore.QRectF(0, 0, ct.shape[1] * col_mm, ct.shape[0] * row_mm)
        self.original_canvas.show_slice(ct, self._overlay(self._original), rect)
        if self._difference and self._original is not None and self._compressed is not None:
            lut_index = len(self._lut) - 1
            compressed_overlay = difference_rgba(
                np.minimum(plane_image(self._original, plane, index), lut_index),
                np.minimum(plane_image(self._compressed, plane, index), lut_index),
                self._lut,
            )
        else:
            compressed_overlay = self._overlay(self._compressed)
        self.compressed_canvas.show_slice(ct, compressed_overlay, rect)
        self._apply_window()
        x_mm = (self._position[plane.col_axis] + 0.5) * col_mm
        y_mm = (self._position[plane.row_axis] + 0.5) * row_mm
        for canvas in self.canvases:
            canvas.v_line.setPos(x_mm)
            canvas.h_line.setPos(y_mm)

    def _voxel_at(self, canvas: SliceCanvas, scene_pos: QtCore.QPointF) -> tuple[int, int, int] | None:
        if self._ct is None or not canvas.view_box.sceneBoundingRect().contains(scene_pos):
            return None
        point = canvas.view_box.mapSceneToView(scene_pos)
        plane = self._plane
        voxel = list(self._position)
        voxel[plane.col_axis] = int(np.floor(point.x() / self._spacing[plane.col_axis]))
        voxel[plane.row_axis] = int(np.floor(point.y() / self._spacing[plane.row_axis]))
        if any(not 0 <= v < n for v, n in zip(voxel, self._ct.shape, strict=True)):
            return None
        return tuple(voxel)

    def describe_voxel(self, voxel: tuple[int, int, int]) -> str:
        """'(i, j, k) 40 HU · original: liver · compressed: background' for the hover line."""
        parts = [f"({voxel[0]}, {voxel[1]}, {voxel[2]})"]
        if self._ct is not None:
            parts.append(f"{float(self._ct[voxel]):.0f} HU")
        for side, labels in (("original", self._original), ("compressed", self._compressed)):
            if labels is not None:
                label = int(labels[voxel])
                parts.append(f"{side}: {self._names.get(label, 'background' if label == 0 else str(label))}")
        return " · ".join(parts)

    def _on_hover(self, canvas: SliceCanvas, scene_pos: QtCore.QPointF) -> None:
        voxel = self._voxel_at(canvas, scene_pos)
        text = self.describe_voxel(voxel) if voxel is not None else " "
        self.hover_label.setText(text)
        self.hoverChanged.emit(text)

    def _on_click(self, canvas: SliceCanvas, event: QtGui.QMouseEvent) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton or event.double():
            return
        voxel = self._voxel_at(canvas, event.scenePos())
        if voxel is not None:
            self.set_position(voxel)
