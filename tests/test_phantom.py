"""The procedural CT phantom: deterministic from its seed, anatomically sane, plausible HU, correct NIfTI geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tuckerscope.core.imaging.phantom import (
    CLASS_GROUPS,
    CLASS_NAMES,
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    LABEL_IDS,
    VERTEBRAE,
    Phantom,
    PhantomError,
    lookup_table,
    make_phantom,
)

SEEDS = (3, 11, 4242)


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Phantom]:
    return {seed: make_phantom(seed) for seed in SEEDS}


def world_centroid(phantom: Phantom, name: str) -> np.ndarray:
    voxels = np.argwhere(phantom.mask(name)).mean(axis=0)
    return phantom.affine[:3, :3] @ voxels + phantom.affine[:3, 3]


def test_same_seed_gives_identical_phantom():
    first, second = make_phantom(5), make_phantom(5)
    np.testing.assert_array_equal(first.ct, second.ct)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.affine, second.affine)


def test_different_seeds_differ_in_anatomy_and_intensity(phantoms):
    a, b = phantoms[3], phantoms[11]
    assert np.mean(a.labels != b.labels) > 0.05
    assert np.mean(np.abs(a.ct - b.ct)) > 20
    volumes = [[int(p.mask(name).sum()) for p in (a, b)] for name in ("liver", "spleen", "kidney_left")]
    assert all(va != vb for va, vb in volumes)
    assert abs(np.median(a.ct[a.mask("liver")]) - np.median(b.ct[b.mask("liver")])) > 0.5


def test_arrays_are_typed_shaped_and_read_only(phantoms):
    phantom = phantoms[3]
    assert phantom.ct.dtype == np.float32 and phantom.labels.dtype == np.uint8
    assert phantom.ct.shape == phantom.labels.shape == DEFAULT_SHAPE
    assert not phantom.ct.flags.writeable and not phantom.labels.flags.writeable
    assert phantom.class_names == CLASS_NAMES


@pytest.mark.parametrize("seed", SEEDS)
def test_every_class_is_present(phantoms, seed):
    present = set(np.unique(phantoms[seed].labels).tolist())
    assert present == {0, *CLASS_NAMES}


@pytest.mark.parametrize("seed", SEEDS)
def test_body_is_one_piece_and_organs_lie_well_inside_it(phantoms, seed):
    labels = phantoms[seed].labels
    for z in range(labels.shape[2]):
        _, pieces = ndimage.label(labels[:, :, z] > 0)
        assert pieces == 1, f"axial slice {z} has {pieces} separate labelled regions"
    depth_mm = ndimage.distance_transform_edt(labels > 0, sampling=phantoms[seed].spacing)
    for name in (
        "liver",
        "spleen",
        "kidney_left",
        "kidney_right",
        "lung_left",
        "lung_right",
        "heart",
        "aorta",
    ):
        assert depth_mm[phantoms[seed].mask(name)].min() >= 10, f"{name} reaches the skin"


@pytest.mark.parametrize("seed", SEEDS)
def test_sides_and_directions_follow_ras(phantoms, seed):
    phantom = phantoms[seed]
    assert nib.aff2axcodes(phantom.affine) == ("R", "A", "S")
    x, y, z = 0, 1, 2
    spine = world_centroid(phantom, "vertebrae")
    for left, right in [
        ("kidney_left", "kidney_right"),
        ("lung_left", "lung_right"),
        ("ribs_left", "ribs_right"),
        ("autochthon_left", "autochthon_right"),
        ("iliopsoas_left", "iliopsoas_right"),
    ]:
        # RAS+: world x grows towards the patient's right
        assert world_centroid(phantom, left)[x] < spine[x] < world_centroid(phantom, right)[x], (left, right)
    assert world_centroid(phantom, "liver")[x] > spine[x] > world_centroid(phantom, "spleen")[x]
    assert world_centroid(phantom, "aorta")[x] < world_centroid(phantom, "inferior_vena_cava")[x]
    assert world_centroid(phantom, "aorta")[y] > spine[y] > world_centroid(phantom, "autochthon_left")[y]
    assert world_centroid(phantom, "lung_left")[z] > world_centroid(phantom, "liver")[z]
    assert world_centroid(phantom, "liver")[z] > world_centroid(phantom, "kidney_right")[z]
    assert world_centroid(phantom, "vertebrae_T8")[z] > world_centroid(phantom, "vertebrae_L4")[z]


@pytest.mark.parametrize("seed", SEEDS)
def test_vertebrae_are_separate_ordered_bones_with_discs_between(phantoms, seed):
    phantom = phantoms[seed]
    discs = phantom.mask("intervertebral_discs")
    heights = []
    for lower, upper in zip(VERTEBRAE[:-1], VERTEBRAE[1:], strict=True):
        grown = ndimage.binary_dilation(phantom.mask(lower), structure=np.ones((3, 3, 3), bool))
        assert not (grown & phantom.mask(upper)).any(), f"{lower} touches {upper}"
        heights.append(world_centroid(phantom, lower)[2])
        z_low, z_high = (int(np.argwhere(phantom.mask(n))[:, 2].mean()) for n in (lower, upper))
        assert discs[:, :, z_low:z_high].any(), f"no disc between {lower} and {upper}"
    assert heights == sorted(heights)
    for name in VERTEBRAE[1:-1]:  # the first and last are cut by the grid's edges
        _, pieces = ndimage.label(phantom.mask(name), structure=np.ones((3, 3, 3), bool))
        assert pieces == 1, f"{name} is in {pieces} pieces"


@pytest.mark.parametrize("seed", SEEDS)
def test_tissue_intensities_are_plausible_hu(phantoms, seed):
    phantom = phantoms[seed]
    expected = {
        "lung_left": (-950, -700),
        "subcutaneous_fat": (-150, -60),
        "skeletal_muscle": (10, 100),
        "liver": (50, 170),
        "spleen": (50, 170),
        "kidney_right": (100, 260),
        "aorta": (80, 300),
        "intervertebral_discs": (30, 200),
        "vertebrae": (150, 900),
        "ribs_left": (150, 900),
    }
    for name, (low, high) in expected.items():
        median = float(np.median(phantom.ct[phantom.mask(name)]))
        assert low <= median <= high, f"{name}: median {median:.0f} HU outside {low}..{high}"
    assert phantom.ct.min() >= -1024 and phantom.ct.max() <= 3071


def test_noise_is_realistic_and_spatially_correlated(phantoms):
    phantom = phantoms[3]
    far_from_body = ndimage.distance_transform_edt(phantom.labels == 0) > 6
    far_from_body[:, : phantom.labels.shape[1] // 2] = False  # the table lies behind the back
    air = phantom.ct[far_from_body]
    assert abs(float(np.median(air)) + 1000) < 20
    assert 5 < float(air.std()) < 40
    # neighbours in air correlate (CT noise is not white); a shift by one voxel along x
    inside = far_from_body[1:] & far_from_body[:-1]
    a, b = phantom.ct[1:][inside], phantom.ct[:-1][inside]
    assert np.corrcoef(a, b)[0, 1] > 0.2


def test_affine_spacing_and_nifti_round_trip(phantoms, tmp_path):
    phantom = phantoms[11]
    spacing = (DEFAULT_SPACING,) * 3
    assert phantom.spacing == spacing
    np.testing.assert_allclose(np.diag(phantom.affine)[:3], spacing)
    np.testing.assert_allclose(phantom.affine[:3, :3], np.diag(spacing))
    # the affine maps voxels to the millimetres the anatomy was drawn in: the grid is centred left-right
    centre = phantom.affine @ np.array([(n - 1) / 2 for n in phantom.ct.shape] + [1.0])
    assert abs(centre[0]) < 1e-6 and abs(centre[1]) < 1e-6
    ct_image, label_image = phantom.to_nifti()
    nib.save(ct_image, tmp_path / "ct.nii.gz")
    nib.save(label_image, tmp_path / "labels.nii.gz")
    for path, array, dtype in (
        ("ct.nii.gz", phantom.ct, np.float32),
        ("labels.nii.gz", phantom.labels, np.uint8),
    ):
        image = nib.load(tmp_path / path)
        assert image.get_data_dtype() == dtype
        assert tuple(float(z) for z in image.header.get_zooms()) == spacing
        np.testing.assert_allclose(image.affine, phantom.affine)
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), array)


def test_other_grids_keep_the_anatomy_in_millimetres():
    coarse = make_phantom(3, shape=(84, 66, 60), spacing=4.0)
    fine = make_phantom(3)
    assert coarse.spacing == (4.0, 4.0, 4.0)
    for name in ("liver", "kidney_left"):
        volume_coarse = coarse.mask(name).sum() * 4.0**3
        volume_fine = fine.mask(name).sum() * DEFAULT_SPACING**3
        assert volume_coarse == pytest.approx(volume_fine, rel=0.15)


def test_groups_masks_and_lookup_tables(phantoms):
    phantom = phantoms[3]
    ribs_left = np.zeros(phantom.labels.shape, bool)
    for name in CLASS_GROUPS["ribs_left"]:
        ribs_left |= phantom.labels == LABEL_IDS[name]
    np.testing.assert_array_equal(phantom.mask("ribs_left"), ribs_left)
    relabelled = phantom.label_map({1: "liver", 2: "vertebrae"})
    assert set(np.unique(relabelled).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(relabelled == 2, phantom.mask("vertebrae"))
    assert lookup_table({7: "aorta"})[LABEL_IDS["aorta"]] == 7


def test_bad_requests_raise_specific_errors():
    with pytest.raises(PhantomError, match="no class 'pancreas'"):
        make_phantom(1).mask("pancreas")
    with pytest.raises(PhantomError, match="needs at least"):
        make_phantom(1, shape=(20, 20, 20))
    with pytest.raises(PhantomError, match="outside 1..255"):
        lookup_table({300: "liver"})
