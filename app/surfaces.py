"""Per-class meshes (plain arrays from core's surface extractor) -> vtkPolyData for the 3D views.

Each class gets its own vtkPolyData over the shared points, so visibility toggles need no re-extraction.
Turning the arrays into VTK objects is a few deep copies: cheap enough for the UI thread.
"""

from __future__ import annotations

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

from tuckerscope.core.session.api import LabelMeshes


def to_polydata(meshes: LabelMeshes) -> dict[int, vtkPolyData]:
    """One vtkPolyData per label, sharing one vtkPoints and its normals."""
    if not meshes.faces:
        return {}
    points = vtkPoints()
    points.SetData(numpy_to_vtk(meshes.points, deep=True))
    normals = numpy_to_vtk(meshes.normals, deep=True)
    normals.SetName("Normals")
    surfaces: dict[int, vtkPolyData] = {}
    for label, faces in meshes.faces.items():
        cells = vtkCellArray()
        offsets = np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64)
        cells.SetData(
            numpy_to_vtkIdTypeArray(offsets, deep=True),
            numpy_to_vtkIdTypeArray(np.ascontiguousarray(faces, dtype=np.int64).ravel(), deep=True),
        )
        part = vtkPolyData()
        part.SetPoints(points)
        part.GetPointData().SetNormals(normals)
        part.SetPolys(cells)
        surfaces[label] = part
    return surfaces
