"""Dice/NSD on synthetic masks whose answers are known, and the stated empty-mask rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import surface_distance

from tuckerscope.core.evaluation.metrics import (
    MAX_BALL_OFFSETS,
    ClassRef,
    MetricsError,
    compare,
    evaluate,
    neighbour_codes,
    sort_distances_surfels,
    tolerance_ball,
)

LIVER = ClassRef(1, "liver", "organs")
SPLEEN = ClassRef(2, "spleen", "organs")
RIB = ClassRef(3, "rib_left_1", "ribs")


def cube(shape=(40, 40, 40), start=(10, 10, 10), size=10, label=1, into=None):
    out = np.zeros(shape, np.uint8) if into is None else into
    x, y, z = start
    out[x : x + size, y : y + size, z : z + size] = label
    return out


def score(reference, prediction, spacing=(1.0, 1.0, 1.0), tolerance=3.0, classes=(LIVER,)):
    return compare(reference, prediction, spacing, classes, tolerance).scores


def test_identical_masks_agree_perfectly_even_at_zero_tolerance():
    a = cube()
    (s,) = score(a, a.copy(), tolerance=0.0)
    assert s.dice == 1.0 and s.nsd == 1.0 and s.status == "scored"
    assert s.reference_voxels == s.prediction_voxels == 1000


def test_shifted_cube_dice_is_the_overlap_fraction_and_nsd_follows_the_tolerance():
    a = cube()
    b = cube(start=(12, 10, 10))  # shifted 2 voxels = 2 mm along axis 0
    (within,) = score(a, b, tolerance=2.0)
    (below,) = score(a, b, tolerance=1.0)
    assert within.dice == pytest.approx(2 * 800 / 2000)
    assert within.nsd == pytest.approx(1.0)
    assert 0.0 < below.nsd < 0.9


def test_nsd_uses_the_spacing_of_each_axis():
    a = cube()
    along_fine_axis = cube(start=(12, 10, 10))
    along_coarse_axis = cube(start=(10, 10, 12))
    spacing = (1.0, 1.0, 2.0)  # a 2-voxel shift is 2 mm on axis 0 but 4 mm on axis 2
    (fine,) = score(a, along_fine_axis, spacing, tolerance=3.0)
    (coarse,) = score(a, along_coarse_axis, spacing, tolerance=3.0)
    assert fine.nsd == pytest.approx(1.0)
    assert coarse.nsd < 0.95
    assert fine.dice == pytest.approx(coarse.dice)


def test_disjoint_masks_far_apart_score_zero():
    a = cube(start=(0, 0, 0))
    b = cube(start=(25, 25, 25))
    (s,) = score(a, b, tolerance=3.0)
    assert s.dice == 0.0 and s.nsd == 0.0


def test_cropping_to_the_class_box_matches_the_package_on_the_full_volume():
    rng = np.random.default_rng(0)
    a = cube(start=(5, 8, 11), size=14)
    b = cube(start=(7, 6, 12), size=13)
    b[rng.random(b.shape) < 0.02] = 0  # ragged surface
    spacing = (0.8, 1.5, 3.0)
    (s,) = score(a, b, spacing, tolerance=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        full = surface_distance.compute_surface_distances(a == 1, b == 1, spacing)
    assert s.nsd == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(full, 2.0))
    assert s.dice == pytest.approx(surface_distance.compute_dice_coefficient(a == 1, b == 1))


def random_blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A ragged blob: a smoothed noise field thresholded, so surfaces carry every neighbour code."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(1.0, 3.0))
    return field > np.quantile(field, rng.uniform(0.6, 0.9))


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0, 1.0), (0.8, 1.5, 3.0), (1.5, 1.5, 1.5), (3.0, 3.0, 3.0), (6.0, 6.0, 6.0), (0.7, 0.7, 2.5)]
)
def test_surfel_lookup_nsd_equals_the_packages_distance_transform_nsd(spacing):
    """The offsets-within-tolerance NSD against surface-distance's own, on ragged random masks, at tolerances
    that fall exactly on voxel distances (1.5 mm x 2 = 3 mm) and between them."""
    rng = np.random.default_rng(int(sum(spacing) * 10))
    checked = 0
    for _ in range(6):
        shape = tuple(int(n) for n in rng.integers(12, 30, 3))
        a, b = random_blob(rng, shape), random_blob(rng, shape)
        b |= np.roll(a, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3))) & (rng.random(shape) < 0.9)
        for tolerance in (0.0, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0):
            if len(tolerance_ball(spacing, tolerance)) > MAX_BALL_OFFSETS:
                continue
            (s,) = score(a.astype(np.uint8), b.astype(np.uint8), spacing, tolerance=tolerance)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                distances = surface_distance.compute_surface_distances(a, b, spacing)
            expected = surface_distance.compute_surface_dice_at_tolerance(distances, tolerance)
            assert s.nsd == pytest.approx(expected, rel=1e-12, abs=1e-15), (shape, tolerance)
            checked += 1
    assert checked >= 30


def test_neighbour_codes_are_the_packages_correlate_of_its_crop():
    from scipy import ndimage
    from surface_distance import lookup_tables

    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    rng = np.random.default_rng(5)
    for shape in [(1, 1, 1), (1, 7, 3), (2, 2, 2), *(tuple(rng.integers(1, 24, 3)) for _ in range(12))]:
        mask = rng.random(shape) < rng.uniform(0.2, 0.9)
        crop = np.zeros(tuple(n + 1 for n in mask.shape), np.uint8)  # the package's: one zero layer after
        crop[:-1, :-1, :-1] = mask
        expected = ndimage.correlate(crop, kernel, mode="constant", cval=0)
        assert np.array_equal(neighbour_codes(mask, kernel), expected), shape


def test_numpy_surfel_sort_gives_the_packages_arrays_and_scores_exactly(monkeypatch):
    """The package's own sort (sorted() over (distance, area) pairs) against the numpy one, ties included."""
    from surface_distance import metrics as package_metrics

    def package_sort(distances, surfel_areas):
        pairs = np.array(sorted(zip(distances, surfel_areas, strict=True)))
        return pairs[:, 0], pairs[:, 1]

    rng = np.random.default_rng(3)
    distances = rng.integers(0, 5, 400) * 0.5  # many equal distances, ordered by area then
    areas = rng.integers(1, 4, 400) * 0.25
    for mine, theirs in zip(sort_distances_surfels(distances, areas), package_sort(distances, areas), strict=True):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    a = cube(start=(5, 8, 11), size=14)
    b = cube(start=(7, 6, 12), size=13)
    b[rng.random(b.shape) < 0.05] = 0
    spacing = (0.8, 1.5, 3.0)
    tolerance = 10.0  # many voxels: scored with the package's distance transforms, hence its sort
    assert len(tolerance_ball(spacing, tolerance)) > MAX_BALL_OFFSETS
    (numpy_sorted,) = score(a, b, spacing, tolerance=tolerance)
    monkeypatch.setattr(package_metrics, "_sort_distances_surfels", package_sort)
    (package_sorted,) = score(a, b, spacing, tolerance=tolerance)
    assert package_metrics._sort_distances_surfels is package_sort  # compare() did not re-patch it
    assert numpy_sorted.nsd == package_sorted.nsd and numpy_sorted.dice == package_sorted.dice


def test_empty_mask_rules():
    reference = cube(label=1)
    cube(start=(25, 25, 25), size=5, label=3, into=reference)  # rib only in the reference
    prediction = cube(label=1)
    cube(start=(0, 0, 0), size=5, label=2, into=prediction)  # spleen only in the prediction
    result = compare(reference, prediction, (1, 1, 1), [LIVER, SPLEEN, RIB, ClassRef(4, "aorta", "vessels")])
    by_name = {s.name: s for s in result.scores}
    assert [c.name for c in result.excluded] == ["aorta"]  # empty on both sides: excluded
    assert (by_name["rib_left_1"].dice, by_name["rib_left_1"].nsd, by_name["rib_left_1"].status) == (
        0.0,
        0.0,
        "missed",
    )
    assert (by_name["spleen"].dice, by_name["spleen"].nsd, by_name["spleen"].status) == (0.0, 0.0, "invented")
    assert by_name["liver"].dice == 1.0


def test_grouping_per_expert_gives_mean_and_worst():
    reference = cube(label=1)
    cube(start=(25, 25, 25), size=8, label=2, into=reference)
    cube(start=(0, 25, 0), size=6, label=3, into=reference)
    prediction = reference.copy()
    prediction[prediction == 2] = 0
    cube(start=(27, 25, 25), size=8, label=2, into=prediction)  # spleen shifted 2 voxels
    result = compare(reference, prediction, (1, 1, 1), [LIVER, SPLEEN, RIB], tolerance_mm=3.0)
    experts = result.by_expert()
    assert list(experts) == ["organs", "ribs"]
    organs = experts["organs"]
    assert organs.classes == 2
    assert organs.worst_dice_class == "spleen"
    assert organs.worst_dice == pytest.approx(0.75)
    assert organs.mean_dice == pytest.approx((1.0 + 0.75) / 2)
    assert experts["ribs"].mean_dice == 1.0
    assert result.worst_first("dice")[0].name == "spleen"


def test_evaluate_adds_ground_truth_comparisons_and_checks_the_grid():
    truth = cube()
    original = cube(start=(11, 10, 10))
    compressed = cube(start=(12, 10, 10))
    evaluation = evaluate(original, compressed, (1, 1, 1), [LIVER], ground_truth=truth)
    assert evaluation.compressed_vs_original.scores[0].dice == pytest.approx(0.9)
    assert evaluation.original_vs_ground_truth.scores[0].dice == pytest.approx(0.9)
    assert evaluation.compressed_vs_ground_truth.scores[0].dice == pytest.approx(0.8)
    assert set(evaluation.to_dict()) == {
        "compressed_vs_original",
        "original_vs_ground_truth",
        "compressed_vs_ground_truth",
    }
    with pytest.raises(MetricsError, match="ground truth has shape"):
        evaluate(original, compressed, (1, 1, 1), [LIVER], ground_truth=truth[:-1])


@pytest.mark.parametrize(
    ("spacing", "message"),
    [((1, 1), "three positive"), ((1, 0, 1), "three positive"), ((1, float("nan"), 1), "three positive")],
)
def test_bad_spacing_is_refused(spacing, message):
    with pytest.raises(MetricsError, match=message):
        compare(cube(), cube(), spacing, [LIVER])


def test_an_image_is_not_a_label_map():
    image = cube().astype(np.float32) + 0.5
    with pytest.raises(MetricsError, match="non-integer"):
        compare(cube(), image, (1, 1, 1), [LIVER])
