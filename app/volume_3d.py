"""Original | compressed 3D renders of the label surfaces, with one shared camera.

Both renderers use the same vtkCamera object, so rotating either side moves both; after an interaction
the other window is re-rendered. Surfaces arrive as per-class vtkPolyData (built off the UI thread by
tuckerscope.app.surfaces); each class is one actor, so visibility toggles need no re-extraction.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import vtkmodules.vtkInteractionStyle  # noqa: F401  (registers the trackball interactor style)
import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text rendering for the titles)
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window)
from pyqtgraph.Qt import QtCore, QtWidgets
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleTrackballCamera
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkTextActor,
    vtkWindowToImageFilter,
)

BACKGROUND = (0.08, 0.08, 0.1)
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "SWR")
# Each side's mesh is drawn in the UI thread: a GPU draws millions of triangles in milliseconds, software
# OpenGL (Mesa under Xvfb, VMs, remote desktops) needs about 3 us per triangle on a busy 2-core machine.
GPU_TRIANGLE_BUDGET = 600_000
SOFTWARE_TRIANGLE_BUDGET = 25_000


def load_triton_before_opengl() -> None:
    """Import triton (if installed) before any OpenGL context exists.

    torch imports triton lazily (e.g. on the first FakeTensorMode); triton bundles its own LLVM, and loading
    it after Mesa's llvmpipe (the software OpenGL VTK gets under Xvfb or in a VM) crashes the process.
    Loaded first, both coexist. It costs about 0.1 s.
    """
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


load_triton_before_opengl()


class SurfaceView(QtWidgets.QWidget):
    """One render window showing one segmentation's class surfaces."""

    def __init__(self, title: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.vtk_widget = QVTKRenderWindowInteractor(self)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(*BACKGROUND)
        self.render_window = self.vtk_widget.GetRenderWindow()
        # No MSAA: with software OpenGL (Mesa llvmpipe) 4x multisampling triples every render in the UI thread.
        self.render_window.SetMultiSamples(0)
        self.render_window.AddRenderer(self.renderer)
        self.vtk_widget.GetRenderWindow().GetInteractor().SetInteractorStyle(
            vtkInteractorStyleTrackballCamera()
        )
        self.title_actor = vtkTextActor()
        self.title_actor.SetInput(title)
        self.title_actor.GetTextProperty().SetFontSize(16)
        self.title_actor.SetPosition(8, 8)
        self.renderer.AddViewProp(self.title_actor)
        self.actors: dict[int, vtkActor] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.vtk_widget)
        self.vtk_widget.Initialize()

    def set_title(self, title: str) -> None:
        """New text, drawn at the next paint (coalesced: a drag's titles cost one render, not one each)."""
        if title != self.title_actor.GetInput():
            self.title_actor.SetInput(title)
            self.vtk_widget.update()

    def set_surfaces(
        self,
        surfaces: dict[int, vtkPolyData],
        colours: dict[int, tuple[int, int, int]],
        visible: set[int],
    ) -> None:
        for actor in self.actors.values():
            self.renderer.RemoveActor(actor)
        self.actors = {}
        for label, polydata in surfaces.items():
            mapper = vtkPolyDataMapper()
            mapper.SetInputData(polydata)
            mapper.ScalarVisibilityOff()
            actor = vtkActor()
            actor.SetMapper(mapper)
            rgb = colours.get(label, (200, 200, 200))
            actor.GetProperty().SetColor(*(c / 255 for c in rgb))
            actor.GetProperty().SetSpecular(0.2)
            actor.SetVisibility(label in visible)
            self.renderer.AddActor(actor)
            self.actors[label] = actor

    def set_visible_labels(self, visible: set[int]) -> None:
        for label, actor in self.actors.items():
            actor.SetVisibility(label in visible)

    def render(self) -> None:
        self.render_window.Render()

    def capture(self) -> np.ndarray:
        """The rendered frame as (height, width, 3) uint8, read back through VTK (QWidget.grab is blank)."""
        self.render_window.Render()
        grabber = vtkWindowToImageFilter()
        grabber.SetInput(self.render_window)
        grabber.ReadFrontBufferOff()
        grabber.Update()
        image = grabber.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3]
        return np.ascontiguousarray(pixels[::-1])

    def is_software_rendered(self) -> bool:
        """True when OpenGL runs on the CPU (asks the driver, so the window must have rendered once)."""
        self.render_window.Render()
        renderer = next(
            (
                line
                for line in self.render_window.ReportCapabilities().splitlines()
                if "renderer string" in line
            ),
            "",
        )
        return any(name in renderer for name in SOFTWARE_RENDERERS)

    def close_vtk(self) -> None:
        """Release the OpenGL context before Qt destroys the widget (avoids X errors at exit)."""
        self.render_window.Finalize()


class SurfacePairView(QtWidgets.QWidget):
    """Original | compressed surfaces side by side, cameras linked."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.original_view = SurfaceView("Original")
        self.compressed_view = SurfaceView("Compressed")
        self.camera = self.original_view.renderer.GetActiveCamera()
        self.compressed_view.renderer.SetActiveCamera(self.camera)
        self._colours: dict[int, tuple[int, int, int]] = {}
        self._visible: set[int] = set()
        self._framed = False
        self._budget: int | None = None
        # Coalesce redraws: several updates in one event-loop turn cost one render per window.
        self._render_timer = QtCore.QTimer(self, singleShot=True, interval=0)
        self._render_timer.timeout.connect(self.render_now)
        self._dirty: set[int] = set()
        self._closed = False
        for source, target in (
            (self.original_view, self.compressed_view),
            (self.compressed_view, self.original_view),
        ):
            interactor = source.render_window.GetInteractor()
            interactor.AddObserver("InteractionEvent", lambda *_, t=target: t.render())
            interactor.AddObserver("EndInteractionEvent", lambda *_, t=target: t.render())
        self.body_wall_check = QtWidgets.QCheckBox("Show body wall in 3D")
        self.body_wall_check.setToolTip(
            "Skin, fat and the muscle ring wrap the trunk; in 3D their shells hide every organ inside.\n"
            "They stay on the slices either way."
        )
        views = QtWidgets.QHBoxLayout()
        views.setContentsMargins(0, 0, 0, 0)
        views.setSpacing(2)
        views.addWidget(self.original_view)
        views.addWidget(self.compressed_view)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.body_wall_check)
        layout.addLayout(views, 1)

    @property
    def views(self) -> tuple[SurfaceView, SurfaceView]:
        return self.original_view, self.compressed_view

    def triangle_budget(self) -> int:
        """How many triangles each side may show and still redraw in tens of milliseconds."""
        if self._budget is None:
            software = self.original_view.is_software_rendered()
            self._budget = SOFTWARE_TRIANGLE_BUDGET if software else GPU_TRIANGLE_BUDGET
        return self._budget

    def set_label_table(self, colours: dict[int, tuple[int, int, int]]) -> None:
        self._colours = dict(colours)
        self._visible = set(colours)
        self._framed = False

    def set_original(self, surfaces: dict[int, vtkPolyData]) -> None:
        self.original_view.set_surfaces(surfaces, self._colours, self._visible)
        if not self._framed and surfaces:
            self.reset_camera()
            self.render()
        else:
            self.render(self.original_view)

    def set_compressed(self, surfaces: dict[int, vtkPolyData], title: str = "Compressed") -> None:
        self.compressed_view.set_surfaces(surfaces, self._colours, self._visible)
        self.compressed_view.set_title(title)
        if not self._framed and surfaces:
            self.reset_camera()
            self.render()
        else:
            self.render(self.compressed_view)

    def set_visible_labels(self, visible: set[int]) -> None:
        self._visible = set(visible)
        for view in self.views:
            view.set_visible_labels(self._visible)
        self.render()

    def reset_camera(self) -> None:
        """Look at the patient from the front (anterior), head up, patient's right on the screen's left."""
        renderer = self.original_view.renderer if self.original_view.actors else self.compressed_view.renderer
        renderer.ResetCamera()
        focal = self.camera.GetFocalPoint()
        distance = self.camera.GetDistance()
        self.camera.SetPosition(focal[0], focal[1] + distance, focal[2])
        self.camera.SetViewUp(0.0, 0.0, 1.0)
        renderer.ResetCamera()
        for view in self.views:
            view.renderer.ResetCameraClippingRange()
        self._framed = True

    def render(self, view: SurfaceView | None = None) -> None:
        """Schedule a redraw of one view (or both); only what changed is drawn, once per event-loop turn."""
        if self._closed:  # a render after close_vtk meets a finalised OpenGL context: a segfault
            return
        self._dirty.update([id(view)] if view is not None else [id(v) for v in self.views])
        self._render_timer.start()

    def render_now(self) -> None:
        for view in self.views:
            if id(view) in self._dirty:
                view.render()
        self._dirty.clear()

    def close_vtk(self) -> None:
        self._closed = True
        self._render_timer.stop()  # a redraw still scheduled would run on the finalised windows
        self._dirty.clear()
        for view in self.views:
            view.close_vtk()
