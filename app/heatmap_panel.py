"""Per-layer explained-variance heatmaps: an overview of every layer of one expert plus a large selected one.

Cell (r_out, r_in) of a layer's heatmap is the fraction of the kernel's energy kept by a Tucker
decomposition with those ranks. The chosen ranks are marked; markers move during a slider drag without
redrawing any image. Clicking a cell of the large view asks for that layer's ranks to be set.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from tuckerscope.app.style import HEATMAP_COLORMAP, configure_pyqtgraph, wrapped_label_of_fixed_height
from tuckerscope.core.session.api import LayerHeatmap

OVERVIEW_COLUMNS = 6
THUMBNAIL_HEIGHT = 92


def _heatmap_rect(heatmap: LayerHeatmap) -> QtCore.QRectF:
    """Cell centres on integer ranks 1..C so view coordinates read directly as ranks."""
    c_out, c_in = heatmap.channels
    return QtCore.QRectF(0.5, 0.5, c_in, c_out)


def rank_at(heatmap: LayerHeatmap, x: float, y: float) -> tuple[int, int] | None:
    """(r_out, r_in) of the cell under view point (x, y), or None outside the grid."""
    c_out, c_in = heatmap.channels
    r_in, r_out = int(round(x)), int(round(y))
    if 1 <= r_in <= c_in and 1 <= r_out <= c_out:
        return r_out, r_in
    return None


class ThumbnailBox(pg.ViewBox):
    """A small, mouse-inert heatmap view in the overview that reports clicks."""

    sigClicked = QtCore.Signal(int)

    def __init__(self, index: int) -> None:
        super().__init__(enableMouse=False, enableMenu=False, lockAspect=False)
        self.index = index

    def mouseClickEvent(self, event: QtCore.QEvent) -> None:  # noqa: N802
        event.accept()
        self.sigClicked.emit(self.index)


class HeatmapPanel(QtWidgets.QWidget):
    """Overview of every layer of the chosen expert, and the selected layer large with a colour bar."""

    expertChanged = QtCore.Signal(str)
    layerRanksRequested = QtCore.Signal(str, str, int, int)  # expert, layer, r_out, r_in

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self._heatmaps: dict[str, list[LayerHeatmap]] = {}
        self._ranks: dict[str, dict[str, tuple[int, int]]] = {}
        self._expert: str | None = None
        self._selected: int = 0
        self._thumb_markers: list[QtWidgets.QGraphicsRectItem] = []
        self._thumb_boxes: list[ThumbnailBox] = []
        self.colormap = pg.colormap.get(HEATMAP_COLORMAP)

        self.expert_combo = QtWidgets.QComboBox()
        self.expert_combo.currentTextChanged.connect(self._on_expert_combo)
        self.status_label = QtWidgets.QLabel("No heatmaps yet")
        wrapped_label_of_fixed_height(self.status_label, 2)

        self.overview = pg.GraphicsLayoutWidget()
        self.overview_scroll = QtWidgets.QScrollArea()
        self.overview_scroll.setWidgetResizable(True)
        self.overview_scroll.setWidget(self.overview)

        self.detail = pg.GraphicsLayoutWidget()
        self.detail_plot = self.detail.addPlot(row=0, col=0)
        self.detail_plot.setLabel("bottom", "r_in (input-channel rank)")
        self.detail_plot.setLabel("left", "r_out (output-channel rank)")
        self.detail_plot.setAspectLocked(False)
        self.detail_plot.setMenuEnabled(False)
        self.detail_image = pg.ImageItem(axisOrder="row-major")
        self.detail_plot.addItem(self.detail_image)
        self.detail_marker = pg.ScatterPlotItem(
            size=14, symbol="x", pen=pg.mkPen("r", width=2.5), brush=pg.mkBrush(255, 0, 0)
        )
        self.detail_marker.setZValue(5)
        self.detail_plot.addItem(self.detail_marker)
        self.colour_bar = pg.ColorBarItem(
            values=(0.0, 1.0), colorMap=self.colormap, label="explained variance", interactive=False
        )
        self.colour_bar.setImageItem(self.detail_image, insert_in=self.detail_plot)
        self.detail_plot.scene().sigMouseClicked.connect(self._on_detail_click)

        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Expert"))
        top.addWidget(self.expert_combo, 1)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        splitter.addWidget(self.overview_scroll)
        splitter.addWidget(self.detail)
        splitter.setSizes([260, 360])
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.status_label)

    # ----- data ---------------------------------------------------------------------------------------------
    def set_heatmaps(self, expert: str, heatmaps: list[LayerHeatmap]) -> None:
        self._heatmaps[expert] = list(heatmaps)
        if self.expert_combo.findText(expert) < 0:
            self.expert_combo.addItem(expert)
        if self._expert in (None, expert):
            self.show_expert(expert)

    def clear(self) -> None:
        self._heatmaps.clear()
        self._ranks.clear()
        self._expert = None
        self.expert_combo.clear()
        self.overview.clear()
        self.detail_image.clear()
        self.detail_marker.setData([])
        self.status_label.setText("No heatmaps yet")

    def set_ranks(self, expert: str, ranks: dict[str, tuple[int, int]]) -> None:
        """Move the markers to the chosen (r_out, r_in) of each layer; cheap enough for every drag step."""
        self._ranks[expert] = dict(ranks)
        if expert == self._expert:
            self._update_markers()

    def show_expert(self, expert: str) -> None:
        if expert not in self._heatmaps:
            return
        self._expert = expert
        if self.expert_combo.currentText() != expert:
            self.expert_combo.blockSignals(True)
            self.expert_combo.setCurrentText(expert)
            self.expert_combo.blockSignals(False)
        self._selected = min(self._selected, max(len(self._heatmaps[expert]) - 1, 0))
        self._build_overview()
        self.select_layer(self._selected)
        self.expertChanged.emit(expert)

    def select_layer(self, index: int) -> None:
        heatmaps = self._heatmaps.get(self._expert or "", [])
        if not heatmaps:
            return
        self._selected = int(np.clip(index, 0, len(heatmaps) - 1))
        heatmap = heatmaps[self._selected]
        self.detail_image.setImage(heatmap.grid, autoLevels=False, levels=(0.0, 1.0))
        self.detail_image.setRect(_heatmap_rect(heatmap))
        self.detail_plot.setTitle(f"{heatmap.layer}  ({heatmap.channels[0]} x {heatmap.channels[1]} channels)")
        self.detail_plot.autoRange(padding=0.02)
        for i, box in enumerate(self._thumb_boxes):
            box.setBorder(pg.mkPen("y", width=2) if i == self._selected else pg.mkPen(80, 80, 80))
        self._update_markers()

    def marked_ranks(self, index: int) -> tuple[int, int] | None:
        """(r_out, r_in) as marked on overview thumbnail ``index`` (read back from the drawn outline)."""
        marker = self._thumb_markers[index]
        if not marker.isVisible():
            return None
        rect = marker.rect()
        return int(round(rect.height())), int(round(rect.width()))

    @property
    def selected_layer(self) -> str | None:
        heatmaps = self._heatmaps.get(self._expert or "", [])
        return heatmaps[self._selected].layer if heatmaps else None

    @property
    def expert(self) -> str | None:
        return self._expert

    # ----- internals ----------------------------------------------------------------------------------------
    def _on_expert_combo(self, expert: str) -> None:
        if expert and expert != self._expert:
            self.show_expert(expert)

    def _build_overview(self) -> None:
        self.overview.clear()
        self._thumb_markers, self._thumb_boxes = [], []
        heatmaps = self._heatmaps[self._expert]
        for index, heatmap in enumerate(heatmaps):
            row, col = divmod(index, OVERVIEW_COLUMNS)
            box = ThumbnailBox(index)
            box.sigClicked.connect(self.select_layer)
            box.setBorder(pg.mkPen(80, 80, 80))
            image = pg.ImageItem(heatmap.grid, axisOrder="row-major", levels=(0.0, 1.0))
            image.setColorMap(self.colormap)
            image.setRect(_heatmap_rect(heatmap))
            # The kept block [1, r_in] x [1, r_out] outlined: a plain rect item repaints in microseconds, where a
            # ScatterPlotItem per thumbnail cost milliseconds each on every drag step.
            marker = QtWidgets.QGraphicsRectItem()
            pen = pg.mkPen("r", width=1.5)
            pen.setCosmetic(True)
            marker.setPen(pen)
            marker.setZValue(5)
            marker.setVisible(False)
            box.addItem(image)
            box.addItem(marker)
            box.setToolTip(f"{heatmap.layer} ({heatmap.channels[0]} x {heatmap.channels[1]})")
            self.overview.addItem(box, row=row, col=col)
            box.autoRange(padding=0)
            self._thumb_boxes.append(box)
            self._thumb_markers.append(marker)
        rows = (len(heatmaps) + OVERVIEW_COLUMNS - 1) // OVERVIEW_COLUMNS
        self.overview.setMinimumHeight(rows * THUMBNAIL_HEIGHT)
        self.detail_image.setColorMap(self.colormap)

    def _update_markers(self) -> None:
        heatmaps = self._heatmaps.get(self._expert or "", [])
        ranks = self._ranks.get(self._expert or "", {})
        for heatmap, marker in zip(heatmaps, self._thumb_markers, strict=False):
            chosen = ranks.get(heatmap.layer)
            marker.setVisible(bool(chosen))
            if chosen:
                marker.setRect(QtCore.QRectF(0.5, 0.5, chosen[1], chosen[0]))
        if not heatmaps:
            return
        heatmap = heatmaps[self._selected]
        chosen = ranks.get(heatmap.layer)
        if chosen is None:
            self.detail_marker.setData([])
            self.status_label.setText(f"{heatmap.layer}: no ranks chosen")
            return
        r_out, r_in = chosen
        self.detail_marker.setData([r_in], [r_out])
        kept = float(heatmap.grid[r_out - 1, r_in - 1])
        self.status_label.setText(
            f"{self._expert} / {heatmap.layer}: ranks (r_out {r_out}, r_in {r_in}) keep {kept:.1%} of the "
            "kernel's energy. Click a cell to set this layer's ranks."
        )

    def _on_detail_click(self, event: QtCore.QEvent) -> None:
        heatmaps = self._heatmaps.get(self._expert or "", [])
        if not heatmaps or event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        view_box = self.detail_plot.getViewBox()
        if not view_box.sceneBoundingRect().contains(event.scenePos()):
            return
        point = view_box.mapSceneToView(event.scenePos())
        heatmap = heatmaps[self._selected]
        ranks = rank_at(heatmap, point.x(), point.y())
        if ranks is not None:
            self.layerRanksRequested.emit(self._expert, heatmap.layer, ranks[0], ranks[1])
