"""Per-class meshes as plain arrays: what the window computes in its surface process."""

from __future__ import annotations

import numpy as np

from tuckerscope.core.outputs.surfaces import extract_label_meshes
from tuckerscope.core.runtime.processes import IsolatedRunner


def two_cubes() -> np.ndarray:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:15, 5:15, 5:15] = 3
    labels[15:25, 5:15, 5:15] = 7
    return labels


def test_left_out_labels_count_as_background_and_neighbours_stay_closed():
    meshes = extract_label_meshes(two_cubes(), (1.0, 1.0, 1.0), leave_out=(7,))
    assert set(meshes.faces) == {3}
    assert len(meshes.faces[3]) == 1200  # still a closed cube: 6 faces x 10x10 quads x 2 triangles
    assert meshes.points.shape == meshes.normals.shape and meshes.points.dtype == np.float32
    assert int(meshes.faces[3].max()) < len(meshes.points)


def test_meshes_from_the_separate_process_equal_the_local_ones():
    labels = two_cubes()
    local = extract_label_meshes(labels, (1.0, 2.0, 3.0))
    runner = IsolatedRunner()
    runner.warm_up("tuckerscope.core.outputs.surfaces")
    try:
        remote = runner.run(extract_label_meshes, labels, (1.0, 2.0, 3.0))
    finally:
        runner.close()
    assert set(remote.faces) == set(local.faces) == {3, 7}
    np.testing.assert_array_equal(remote.points, local.points)
    for label in local.faces:
        np.testing.assert_array_equal(remote.faces[label], local.faces[label])
    assert remote.triangle_count == 2400
