"""Label maps -> smoothed per-class VTK surfaces, built off the UI thread (no Qt here).

vtkSurfaceNets3D extracts every label boundary in one pass and smooths it. Its cell scalars
("BoundaryLabels") carry two components, the labels on either side of each face; the surface is split here
into one vtkPolyData per class (sharing the points), so the views can toggle classes instantly instead of
re-extracting.
"""

from __future__ import annotations

import math

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkLogger
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkQuadricClustering, vtkSurfaceNets3D

vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_WARNING)

SMOOTHING_ITERATIONS = 16
# Meshes are drawn in the UI thread; the views pass a budget that suits their OpenGL (see volume_3d).
TRIANGLE_BUDGET = 600_000


def label_image(labels: np.ndarray, spacing: tuple[float, float, float]) -> vtkImageData:
    """Wrap an (i, j, k) label array as vtkImageData (VTK wants i fastest, hence Fortran order)."""
    image = vtkImageData()
    image.SetDimensions(*labels.shape)
    image.SetSpacing(*spacing)
    scalars = numpy_to_vtk(np.asfortranarray(labels).ravel(order="F"), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def extract_label_surfaces(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    smoothing: int = SMOOTHING_ITERATIONS,
    triangle_budget: int = TRIANGLE_BUDGET,
) -> dict[int, vtkPolyData]:
    """One smoothed, normal-carrying surface per label present in ``labels`` (background 0 excluded).

    Meshes above ``triangle_budget`` are simplified by quadric clustering (labels kept per face).
    """
    present = np.unique(labels)
    present = present[present != 0]
    if present.size == 0:
        return {}
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


def split_by_label(mesh: vtkPolyData) -> dict[int, vtkPolyData]:
    """Split a SurfaceNets triangle mesh by its BoundaryLabels: a face between two classes goes to both."""
    boundary = mesh.GetCellData().GetArray("BoundaryLabels")
    if boundary is None or mesh.GetNumberOfCells() == 0:
        return {}
    sides = vtk_to_numpy(boundary).reshape(-1, 2)
    triangles = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    surfaces: dict[int, vtkPolyData] = {}
    for label in np.unique(sides):
        if label == 0:
            continue
        faces = triangles[(sides[:, 0] == label) | (sides[:, 1] == label)]
        cells = vtkCellArray()
        offsets = np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64)
        cells.SetData(
            numpy_to_vtkIdTypeArray(offsets, deep=True), numpy_to_vtkIdTypeArray(faces.ravel(), deep=True)
        )
        part = vtkPolyData()
        part.SetPoints(mesh.GetPoints())
        part.GetPointData().SetNormals(mesh.GetPointData().GetNormals())
        part.SetPolys(cells)
        surfaces[int(label)] = part
    return surfaces
