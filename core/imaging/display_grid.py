"""The CT's voxel grid reoriented for display: RAS+ axis order, so every viewer shows patients the same way.

Only axis permutations and flips (nibabel's closest canonical orientation), never resampling: a displayed
voxel is an input voxel, so label maps computed on the input grid map onto the display exactly, and a slab
chosen on screen maps back to a slab of input slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation


@dataclass(frozen=True)
class DisplayGrid:
    """Input-grid (x, y, z as stored) <-> display (i, j, k in RAS+) index mapping."""

    input_shape: tuple[int, int, int]
    input_spacing: tuple[float, float, float]
    orientation: np.ndarray  # nibabel ornt: row = input axis, (display axis, +1/-1)

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> DisplayGrid:
        affine = np.asarray(affine, dtype=float)
        spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        return cls(
            input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            input_spacing=spacing,  # type: ignore[arg-type]
            orientation=io_orientation(affine),
        )

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """An input-grid array as a contiguous RAS+ array (a view would make every slice a strided copy)."""
        return np.ascontiguousarray(apply_orientation(array, self.orientation))

    def input_axis(self, display_axis: int) -> int:
        return int(np.flatnonzero(self.orientation[:, 0] == display_axis)[0])

    @property
    def display_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for axis, size in enumerate(self.input_shape):
            shape[int(self.orientation[axis, 0])] = size
        return shape[0], shape[1], shape[2]

    @property
    def display_spacing(self) -> tuple[float, float, float]:
        spacing = [0.0, 0.0, 0.0]
        for axis, size in enumerate(self.input_spacing):
            spacing[int(self.orientation[axis, 0])] = size
        return spacing[0], spacing[1], spacing[2]

    def input_index(self, display_axis: int, display_index: int) -> tuple[int, int]:
        """(input axis, input index) of slice ``display_index`` along ``display_axis``."""
        axis = self.input_axis(display_axis)
        flipped = self.orientation[axis, 1] < 0
        return axis, (self.input_shape[axis] - 1 - display_index) if flipped else display_index
