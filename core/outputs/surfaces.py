"""Label maps -> smoothed per-class triangle meshes as plain arrays (VTK inside, no Qt, picklable out).

vtkSurfaceNets3D extracts every label boundary in one pass and smooths it. Its cell scalars
("BoundaryLabels") carry two components, the labels on either side of each face; the faces are split here
per class (a face between two classes goes to both), all classes sharing one point array, so the views can
toggle classes without re-extracting.

Why arrays: VTK's Python wrappers hold the GIL for a whole filter run (about 0.1-0.3 s per side here), so the
window runs this in a separate process and only turns the arrays into vtkPolyData in the UI thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkLogger
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkQuadricClustering, vtkSurfaceNets3D

vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_WARNING)

SMOOTHING_ITERATIONS = 16
TRIANGLE_BUDGET = 600_000


@dataclass(frozen=True)
class LabelMeshes:
    """Triangles of every class: shared points and normals, and per label the faces (indices into points)."""

    points: np.ndarray  # (n, 3) float32, world millimetres on the label grid
    normals: np.ndarray  # (n, 3) float32
    faces: dict[int, np.ndarray]  # label -> (m, 3) int64

    @property
    def triangle_count(self) -> int:
        return sum(len(f) for f in self.faces.values())


EMPTY = LabelMeshes(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), {})


def label_image(labels: np.ndarray, spacing: tuple[float, float, float]) -> vtkImageData:
    """Wrap an (i, j, k) label array as vtkImageData (VTK wants i fastest, hence Fortran order)."""
    image = vtkImageData()
    image.SetDimensions(*labels.shape)
    image.SetSpacing(*spacing)
    scalars = numpy_to_vtk(np.asfortranarray(labels).ravel(order="F"), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def extract_label_meshes(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    smoothing: int = SMOOTHING_ITERATIONS,
    triangle_budget: int = TRIANGLE_BUDGET,
    leave_out: tuple[int, ...] = (),
) -> LabelMeshes:
    """One smoothed, normal-carrying mesh per label present in ``labels`` (background 0 excluded).

    Labels in ``leave_out`` count as background (their neighbours get closed surfaces). Meshes above
    ``triangle_budget`` are simplified by quadric clustering (labels kept per face).
    """
    if leave_out:
        labels = np.where(np.isin(labels, leave_out), 0, labels)
    present = np.unique(labels)
    present = present[present != 0]
    if present.size == 0:
        return EMPTY
    nets = vtkSurfaceNets3D()
    nets.SetInputData(label_image(labels.astype(np.uint16, copy=False), spacing))
    nets.SetBackgroundLabel(0)
    for index, label in enumerate(present):  # explicit labels: only then are faces between classes emitted
        nets.SetLabel(index, float(label))
    nets.SetOutputMeshTypeToTriangles()
    nets.SetSmoothing(smoothing > 0)
    nets.SetNumberOfIterations(max(smoothing, 1))
    nets.Update()
    mesh = nets.GetOutput()
    if mesh.GetNumberOfCells() > triangle_budget:
        mesh = simplify(mesh, labels.shape, triangle_budget)
    normals = vtkPolyDataNormals()
    normals.SetInputData(mesh)
    normals.SplittingOff()
    normals.ComputePointNormalsOn()
    normals.Update()
    return split_by_label(normals.GetOutput())


def simplify(mesh: vtkPolyData, grid_shape: tuple[int, ...], triangle_budget: int) -> vtkPolyData:
    """Quadric clustering onto a coarser grid; a surface's triangle count scales with the grid's square."""
    scale = math.sqrt(triangle_budget / mesh.GetNumberOfCells())
    clustering = vtkQuadricClustering()
    clustering.SetInputData(mesh)
    clustering.CopyCellDataOn()
    clustering.AutoAdjustNumberOfDivisionsOff()
    clustering.SetNumberOfDivisions(*(max(8, int(n * scale)) for n in grid_shape))
    clustering.Update()
    return clustering.GetOutput()


def split_by_label(mesh: vtkPolyData) -> LabelMeshes:
    """Split a SurfaceNets triangle mesh by its BoundaryLabels: a face between two classes goes to both."""
    boundary = mesh.GetCellData().GetArray("BoundaryLabels")
    if boundary is None or mesh.GetNumberOfCells() == 0:
        return EMPTY
    sides = vtk_to_numpy(boundary).reshape(-1, 2)
    triangles = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    faces = {
        int(label): triangles[(sides[:, 0] == label) | (sides[:, 1] == label)]
        for label in np.unique(sides)
        if label != 0
    }
    points = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float32)
    normals = vtk_to_numpy(mesh.GetPointData().GetNormals()).astype(np.float32)
    return LabelMeshes(points, normals, faces)
