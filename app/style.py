"""Look-and-feel shared by the views: pyqtgraph options, CT window presets, label colours, difference colours,
labels that never resize the window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtWidgets


def configure_pyqtgraph() -> None:
    """Row-major images ((row, col) like numpy) everywhere; set once, idempotent."""
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True, background="k", foreground="w")


@dataclass(frozen=True)
class WindowPreset:
    """A CT display window in Hounsfield units."""

    name: str
    level: float
    width: float


WINDOW_PRESETS: tuple[WindowPreset, ...] = (
    WindowPreset("Soft tissue", 40.0, 400.0),
    WindowPreset("Lung", -600.0, 1500.0),
    WindowPreset("Bone", 400.0, 1800.0),
)

# Difference mode: which side has the label where the two segmentations disagree.
ONLY_ORIGINAL_RGB = (255, 40, 200)  # the compressed network missed it
ONLY_COMPRESSED_RGB = (40, 230, 255)  # the compressed network added it
OTHER_CLASS_RGB = (255, 220, 0)  # both labelled, different classes

HEATMAP_COLORMAP = "viridis"


def label_lut(
    colours: dict[int, tuple[int, int, int]], visible: set[int], opacity: float, size: int
) -> np.ndarray:
    """RGBA lookup table (size x 4, uint8) for label maps; background and hidden classes are transparent."""
    lut = np.zeros((size, 4), dtype=np.uint8)
    alpha = int(round(255 * min(max(opacity, 0.0), 1.0)))
    for label, rgb in colours.items():
        if 0 < label < size and label in visible:
            lut[label, :3] = rgb
            lut[label, 3] = alpha
    return lut


def wrapped_label_of_fixed_height(label: QtWidgets.QLabel, lines: int) -> QtWidgets.QLabel:
    """Word-wrap ``label`` in a box exactly ``lines`` lines high.

    A wrapped label whose text changes may change its height, and every such change makes Qt lay out the whole
    window again (measured: about 0.3 s with the pyqtgraph docks, at the start of every slider drag).
    """
    label.setWordWrap(True)
    # width from the layout only (never from the text), height fixed: the label's size hint cannot change
    label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
    margins = label.contentsMargins()
    label.setFixedHeight(lines * label.fontMetrics().lineSpacing() + margins.top() + margins.bottom() + 2)
    return label
