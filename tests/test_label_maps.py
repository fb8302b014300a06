"""Ground truth from other tools: onto the CT's grid (lossless when it can be) and matched by class name."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tuckerscope.core.imaging.label_maps import (
    UnmatchedClassesError,
    label_names,
    load_label_map,
    match_by_name,
)
from tuckerscope.core.imaging.phantom import make_phantom
from tuckerscope.core.models.model_sources import demo_source
from tuckerscope.core.outputs.exports import label_styles, write_segmentation

CT_AFFINE = np.array([[-0.8, 0, 0, 200.0], [0, -0.8, 0, 180.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def labels(shape: tuple[int, int, int] = (32, 30, 20)) -> np.ndarray:
    data = np.zeros(shape, np.uint8)
    data[4:20, 6:25, 2:15] = 1
    data[10:14, 3:9, 5:18] = 2
    return data


def test_flipped_and_permuted_label_map_is_reoriented_losslessly(tmp_path):
    """The refusal the issue quotes: same voxels as the CT, stored in another axis order, differently flipped."""
    truth = labels()
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(CT_AFFINE), nib.orientations.axcodes2ornt(("A", "R", "I"))
    )
    stored = nib.orientations.apply_orientation(truth, ornt)
    affine = CT_AFFINE @ nib.orientations.inv_ornt_aff(ornt, truth.shape)
    nib.save(nib.Nifti1Image(stored, affine), tmp_path / "gt.nii.gz")
    loaded = load_label_map(tmp_path / "gt.nii.gz", truth.shape, CT_AFFINE)
    np.testing.assert_array_equal(loaded.data, truth)
    assert loaded.warnings == []


def test_other_grid_is_resampled_by_nearest_neighbour_with_a_warning(tmp_path):
    truth = labels()
    coarse = truth[::2, ::2]
    nib.save(nib.Nifti1Image(coarse, CT_AFFINE @ np.diag([2.0, 2.0, 1.0, 1.0])), tmp_path / "gt.nii.gz")
    loaded = load_label_map(tmp_path / "gt.nii.gz", truth.shape, CT_AFFINE)
    assert loaded.data.shape == truth.shape and set(np.unique(loaded.data)) == {0, 1, 2}
    np.testing.assert_array_equal(loaded.data[::2, ::2], coarse)  # shared voxel centres keep their label
    assert len(loaded.warnings) == 1 and "nearest neighbour" in loaded.warnings[0]
    assert "16 x 15 x 20 voxels of 1.6 x 1.6 x 2.5 mm" in loaded.warnings[0]


def test_names_from_each_kind_of_table(tmp_path, shared_dir):
    write_segmentation(tmp_path / "a.nii.gz", labels(), CT_AFFINE, label_styles({1: "liver", 2: "spleen"}))
    assert label_names(tmp_path / "a.nii.gz") == ({1: "liver", 2: "spleen"}, "label table a_itksnap_labels.txt")
    (tmp_path / "a_itksnap_labels.txt").unlink()
    assert label_names(tmp_path / "a.nii.gz")[0] == {1: "liver", 2: "spleen"}  # the Slicer table
    dataset = tmp_path / "Dataset001_X"
    (dataset / "labelsTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "aorta": 1, "heart": [1, 2]}}))
    assert label_names(dataset / "labelsTr" / "case.nii.gz") == ({1: "aorta"}, "Dataset001_X/dataset.json")
    ts_output = shared_dir / "data" / "example_seg.nii.gz"  # TotalSegmentator's own --ml output
    names, source = label_names(ts_output, nib.load(ts_output))
    assert source.startswith("TotalSegmentator") and names[1] == "spleen" and len(names) == 117


def test_phantom_fine_labels_match_the_demo_classes_by_name():
    """The issue's case: 40 fine phantom labels against the demo's 14 merged classes (groups included)."""
    phantom = make_phantom(7)
    source = demo_source()
    match = match_by_name(phantom.class_names, source.class_names)
    np.testing.assert_array_equal(match.renumber(phantom.labels), phantom.label_map(source.class_names))
    assert match.model_unmatched == ()
    vertebrae = next(label for label, name in source.class_names.items() if name == "vertebrae")
    assert len(match.members[vertebrae]) == 9 and all(n.startswith("vertebrae_") for n in match.members[vertebrae])
    assert "inferior_vena_cava" in match.truth_unmatched  # no demo class: ignored, and said so
    assert any("match no model class" in note for note in match.notes(source.class_names))


def test_no_names_or_no_match_refuses_to_score():
    with pytest.raises(UnmatchedClassesError, match="carries no class names"):
        match_by_name({}, {1: "liver"})
    with pytest.raises(UnmatchedClassesError, match="none of the 2 classes"):
        match_by_name({1: "brain", 2: "eye"}, {1: "liver"})
    # names compare without case, with spaces, dashes and underscores alike
    assert match_by_name({3: "Kidney Left"}, {5: "kidney_left"}).table[3] == 5
