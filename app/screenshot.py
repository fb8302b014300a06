"""Screenshots of the window with the 3D views read back through VTK (QWidget.grab gives garbage for them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from tuckerscope.app.volume_3d import SurfaceView


def array_to_image(pixels: np.ndarray) -> QtGui.QImage:
    """(h, w, 3) uint8 -> QImage (a deep copy, so the array may go away)."""
    pixels = np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
    height, width, _ = pixels.shape
    return QtGui.QImage(pixels.data, width, height, 3 * width, QtGui.QImage.Format.Format_RGB888).copy()


def grab_window(window: QtWidgets.QWidget) -> QtGui.QImage:
    """The whole window as it looks, with every visible VTK view painted in from its own frame buffer."""
    image = window.grab().toImage()
    painter = QtGui.QPainter(image)
    try:
        for view in window.findChildren(SurfaceView):
            if not view.isVisible() or view.width() < 2 or view.height() < 2:
                continue
            frame = array_to_image(view.capture())
            target = QtCore.QRect(view.vtk_widget.mapTo(window, QtCore.QPoint(0, 0)), view.vtk_widget.size())
            painter.drawImage(target, frame)
    finally:
        painter.end()
    return image


def save_window(window: QtWidgets.QWidget, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not grab_window(window).save(str(path)):
        raise OSError(f"could not write {path}")
    return path


def image_spread(image: QtGui.QImage) -> float:
    """Standard deviation of the grey levels: near 0 for a blank (single-colour) picture."""
    converted = image.convertToFormat(QtGui.QImage.Format.Format_Grayscale8)
    width, height = converted.width(), converted.height()
    buffer = np.frombuffer(converted.constBits(), dtype=np.uint8, count=converted.bytesPerLine() * height)
    return float(buffer.reshape(height, converted.bytesPerLine())[:, :width].std())
