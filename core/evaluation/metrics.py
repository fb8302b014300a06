"""Per-class agreement between two label maps: Dice and normalised surface Dice (NSD), grouped per expert.

NSD is DeepMind's surface-distance definition (the metric the paper reports: its surfels, its surfel-area
table, its neighbour-code kernel), on the image's own voxel spacing. Each class is cropped to the bounding box
of its two masks first, so a 117-class map never needs a full-volume pass per class. NSD at a tolerance only
asks, per surfel, whether the other surface lies within the tolerance; the package answers it with two
Euclidean distance transforms of the whole box and a sort, which made scoring a sixth of a cohort task's time.
Here the question is answered at the surfels alone, with the integer offsets that lie within the tolerance
(distances computed the way scipy's transform computes them), so scores are the package's (tested against it
on random masks and spacings); past MAX_BALL_OFFSETS offsets (a tolerance of many voxels) the package's own
distance transforms are used.

Empty-mask rules (stated once, applied everywhere):
- reference and prediction both empty: the class is excluded (nothing to agree on);
- reference present, prediction empty: Dice 0, NSD 0 (the structure was missed);
- reference empty, prediction present: Dice 0, NSD 0 (a structure was invented where there is none).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
from scipy import ndimage

from tuckerscope.core.runtime.errors import UserError

DEFAULT_TOLERANCE_MM = 3.0
MAX_BALL_OFFSETS = 343  # a 7x7x7 block: beyond it two distance transforms cost less than the lookups


class MetricsError(UserError):
    """Two label maps cannot be compared (different grids, bad spacing, not a label map)."""


@dataclass(frozen=True)
class ClassRef:
    """One class to score: its label value in the maps, its name, and the expert that predicts it."""

    label: int
    name: str
    expert: str = ""


@dataclass(frozen=True)
class ClassScore:
    """Agreement of one class; `status` says which empty-mask rule applied ('scored', 'missed', 'invented')."""

    label: int
    name: str
    expert: str
    dice: float
    nsd: float
    reference_voxels: int
    prediction_voxels: int
    status: str = "scored"


@dataclass(frozen=True)
class ExpertSummary:
    """Mean and worst Dice/NSD over one expert's scored classes (excluded classes do not count)."""

    expert: str
    classes: int
    mean_dice: float
    mean_nsd: float
    worst_dice: float
    worst_dice_class: str
    worst_nsd: float
    worst_nsd_class: str


@dataclass
class Comparison:
    """Per-class agreement of `prediction` against `reference` (e.g. 'compressed' against 'original')."""

    reference: str
    prediction: str
    tolerance_mm: float
    scores: list[ClassScore] = field(default_factory=list)
    excluded: list[ClassRef] = field(default_factory=list)
    not_in_reference: list[ClassRef] = field(default_factory=list)  # classes a ground truth does not name

    def worst_first(self, key: str = "nsd") -> list[ClassScore]:
        """Scores sorted so the class that suffered most comes first (ties broken by Dice, then name)."""
        other = "dice" if key == "nsd" else "nsd"
        return sorted(self.scores, key=lambda s: (getattr(s, key), getattr(s, other), s.name))

    def by_expert(self) -> dict[str, ExpertSummary]:
        """Mean and worst per expert, in the order experts first appear in the scores."""
        groups: dict[str, list[ClassScore]] = {}
        for score in self.scores:
            groups.setdefault(score.expert, []).append(score)
        return {expert: summarise(expert, scores) for expert, scores in groups.items()}

    def overall(self) -> ExpertSummary | None:
        """Mean and worst over every scored class, or None when nothing was scored."""
        return summarise("all", self.scores) if self.scores else None

    def score_of(self, name: str) -> ClassScore | None:
        return next((s for s in self.scores if s.name == name), None)

    def to_dict(self) -> dict[str, object]:
        """Plain data for --json and the report."""
        return {
            "reference": self.reference,
            "prediction": self.prediction,
            "tolerance_mm": self.tolerance_mm,
            "classes": [vars_of(s) for s in self.scores],
            "excluded": [c.name for c in self.excluded],
            "not_in_reference": [c.name for c in self.not_in_reference],
            "experts": {k: vars_of(v) for k, v in self.by_expert().items()},
        }


@dataclass(frozen=True)
class GroundTruth:
    """A ground truth in the model's label values, and the model classes it names (matched by name).

    Classes it does not name are not scored against it: absent there, they would score Dice 0 wherever the
    model finds them (see imaging.label_maps.match_by_name).
    """

    labels: np.ndarray
    classes: frozenset[int]


@dataclass
class Evaluation:
    """Compressed vs original, and both vs ground truth when one was given."""

    compressed_vs_original: Comparison
    original_vs_ground_truth: Comparison | None = None
    compressed_vs_ground_truth: Comparison | None = None

    def comparisons(self) -> list[Comparison]:
        return [
            c
            for c in (
                self.compressed_vs_original,
                self.original_vs_ground_truth,
                self.compressed_vs_ground_truth,
            )
            if c is not None
        ]

    def to_dict(self) -> dict[str, object]:
        return {f"{c.prediction}_vs_{c.reference}".replace(" ", "_"): c.to_dict() for c in self.comparisons()}


def vars_of(obj: object) -> dict[str, object]:
    """A dataclass as a dict with NaN turned into None, so it serialises as valid JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(obj).items()}


def summarise(expert: str, scores: Sequence[ClassScore]) -> ExpertSummary:
    if not scores:
        nan = float("nan")
        return ExpertSummary(expert, 0, nan, nan, nan, "", nan, "")
    worst_dice = min(scores, key=lambda s: (s.dice, s.name))
    worst_nsd = min(scores, key=lambda s: (s.nsd, s.name))
    return ExpertSummary(
        expert=expert,
        classes=len(scores),
        mean_dice=float(np.mean([s.dice for s in scores])),
        mean_nsd=float(np.mean([s.nsd for s in scores])),
        worst_dice=worst_dice.dice,
        worst_dice_class=worst_dice.name,
        worst_nsd=worst_nsd.nsd,
        worst_nsd_class=worst_nsd.name,
    )


def as_label_map(array: np.ndarray, what: str) -> np.ndarray:
    """An integer 3D array of non-negative labels; float maps (nibabel's get_fdata) must hold whole numbers."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise MetricsError(f"{what} must be a 3D label map, got {array.ndim}D with shape {array.shape}")
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise MetricsError(f"{what} holds non-integer values: it is an image, not a label map")
        array = array.astype(np.int32)
    elif array.dtype.kind not in "iu":
        raise MetricsError(f"{what} has dtype {array.dtype}, expected integer labels")
    if array.size and array.min() < 0:
        raise MetricsError(f"{what} holds negative labels")
    return array


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise MetricsError(f"voxel spacing must be three positive numbers in mm, got {spacing}")
    return values[0], values[1], values[2]


def compare(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    classes: Iterable[ClassRef],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    reference_name: str = "original",
    prediction_name: str = "compressed",
) -> Comparison:
    """Score every class of `classes` in `prediction` against `reference` (same grid, same label values).

    `spacing` is the voxel size in mm along the arrays' axes, as the image header gives it.
    """
    reference = as_label_map(reference, reference_name)
    prediction = as_label_map(prediction, prediction_name)
    if reference.shape != prediction.shape:
        raise MetricsError(
            f"{prediction_name} has shape {prediction.shape} but {reference_name} has {reference.shape}: "
            "both must lie on the same voxel grid (resample one onto the other first)"
        )
    spacing_mm = check_spacing(spacing)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise MetricsError(f"NSD tolerance must be a non-negative number of mm, got {tolerance_mm}")
    classes = list(classes)
    max_label = max((c.label for c in classes), default=0)
    reference_boxes = ndimage.find_objects(reference, max_label=max_label)
    prediction_boxes = ndimage.find_objects(prediction, max_label=max_label)
    result = Comparison(reference_name, prediction_name, float(tolerance_mm))
    for ref in classes:
        if ref.label <= 0:
            continue
        ref_box = reference_boxes[ref.label - 1]
        pred_box = prediction_boxes[ref.label - 1]
        if ref_box is None and pred_box is None:
            result.excluded.append(ref)
            continue
        if ref_box is None or pred_box is None:
            ref_voxels = int(np.count_nonzero(reference[ref_box] == ref.label)) if ref_box else 0
            pred_voxels = int(np.count_nonzero(prediction[pred_box] == ref.label)) if pred_box else 0
            status = "missed" if pred_box is None else "invented"
            result.scores.append(
                ClassScore(ref.label, ref.name, ref.expert, 0.0, 0.0, ref_voxels, pred_voxels, status)
            )
            continue
        box = union_box(ref_box, pred_box)
        result.scores.append(
            score_masks(
                reference[box] == ref.label, prediction[box] == ref.label, spacing_mm, tolerance_mm, ref
            )
        )
    return result


def union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def score_masks(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing_mm: tuple[float, float, float],
    tolerance_mm: float,
    ref: ClassRef,
) -> ClassScore:
    """Dice and NSD of two non-empty boolean masks already cropped to their joint bounding box."""
    surface_distance = surface_distance_package()
    # surface-distance 0.1 calls scipy's deprecated ndimage.filters/morphology namespaces; silence that
    # module only, with a filter rather than catch_warnings (which is not thread-safe).
    silence_surface_distance_deprecations()
    ref_voxels = int(np.count_nonzero(reference))
    pred_voxels = int(np.count_nonzero(prediction))
    dice = 2.0 * np.count_nonzero(reference & prediction) / (ref_voxels + pred_voxels)
    ball = tolerance_ball(spacing_mm, tolerance_mm)
    if len(ball) <= MAX_BALL_OFFSETS:
        nsd = surface_dice_at_tolerance(reference, prediction, spacing_mm, ball)
    else:
        distances = surface_distance.compute_surface_distances(reference, prediction, spacing_mm)
        nsd = float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm))
    return ClassScore(ref.label, ref.name, ref.expert, float(dice), nsd, ref_voxels, pred_voxels)


@functools.lru_cache(maxsize=16)
def tolerance_ball(spacing_mm: tuple[float, float, float], tolerance_mm: float) -> np.ndarray:
    """The integer voxel offsets within `tolerance_mm`, (K, 3): the distance of each is computed as scipy's
    distance_transform_edt computes it (offset x spacing, squared, summed over the axes in order, square
    root), so an offset counts exactly when the package's distance would be <= the tolerance."""
    reach = [int(tolerance_mm // s) + 1 for s in spacing_mm]
    axes = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([a.ravel() for a in axes], axis=1)
    squared = (offsets.astype(np.float64) * np.asarray(spacing_mm)) ** 2
    distance = np.sqrt(np.add.reduce(squared.T, axis=0))
    return offsets[distance <= tolerance_mm]


def surface_dice_at_tolerance(
    reference: np.ndarray, prediction: np.ndarray, spacing_mm: tuple[float, float, float], ball: np.ndarray
) -> float:
    """surface-distance's NSD of two non-empty masks cropped to their joint box, without distance transforms:
    each surfel counts when a surfel of the other surface lies at one of the ball's offsets from it."""
    from surface_distance import lookup_tables

    table = lookup_tables.create_table_neighbour_code_to_surface_area(spacing_mm)  # memoised per spacing
    ref_borders, ref_areas = surfels(reference, table)
    pred_borders, pred_areas = surfels(prediction, table)
    ref_near = near_other_surface(ref_borders, pred_borders, ball)
    pred_near = near_other_surface(pred_borders, ref_borders, ball)
    overlap = np.sum(ref_areas[ref_near]) + np.sum(pred_areas[pred_near])
    return float(overlap / (np.sum(ref_areas) + np.sum(pred_areas)))


def surfels(mask: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The package's surfel map of a cropped mask (its zero layer after the box, its 2x2x2 neighbour code) and
    the area of each surfel, in np.nonzero order."""
    from surface_distance import lookup_tables

    codes = neighbour_codes(mask, lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL)
    borders = (codes != 0) & (codes != 0b11111111)
    return borders, table[codes[borders]]


def neighbour_codes(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The package's ``ndimage.correlate(crop, kernel, mode="constant", cval=0)`` of its crop (the mask and one
    zero layer after it), as eight shifted, weighted uint8 sums: the output at i sees the crop at i-1 and i
    along each axis (scipy's origin for a kernel of 2). A fifth of the time of the generic correlate here."""
    shape = tuple(n + 1 for n in mask.shape)
    framed = np.zeros(tuple(n + 1 for n in shape), np.uint8)  # a zero layer before the crop, and the crop
    framed[1:-1, 1:-1, 1:-1] = mask
    codes = np.zeros(shape, np.uint8)
    for (a, b, c), weight in np.ndenumerate(kernel):
        codes += framed[a : a + shape[0], b : b + shape[1], c : c + shape[2]] * np.uint8(weight)
    return codes


def near_other_surface(borders: np.ndarray, other: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """For each surfel of `borders` (np.nonzero order): does `other` have a surfel within the ball around it?"""
    reach = np.abs(ball).max(axis=0)
    padded = np.pad(other, [(int(r), int(r)) for r in reach])
    points = np.nonzero(borders)
    index = np.ravel_multi_index(tuple(p + r for p, r in zip(points, reach, strict=True)), padded.shape)
    steps = ball @ (np.asarray(padded.strides) // padded.itemsize)
    flat = padded.ravel()
    near = np.zeros(index.size, bool)
    for step in steps:
        near |= flat[index + step]
    return near


@functools.cache
def surface_distance_package() -> ModuleType:
    """DeepMind's surface-distance, imported once, with its surfel-area table memoised per spacing and its
    surfel sort done by numpy.

    The table depends only on the spacing but the package rebuilds it on every call, a third of the time
    of scoring a 3 mm 'total' map class by class. The memoised builder is the package's own function. The
    package sorts (distance, area) pairs with Python's sorted() over a zip, half of what remains; the
    lexicographic numpy sort gives the same two arrays element for element, so every score is unchanged.
    """
    import surface_distance
    from surface_distance import lookup_tables
    from surface_distance import metrics as package_metrics

    build = functools.lru_cache(maxsize=16)(lookup_tables.create_table_neighbour_code_to_surface_area)

    def table_for(spacing_mm: Sequence[float]) -> np.ndarray:
        return build(tuple(float(s) for s in spacing_mm))

    lookup_tables.create_table_neighbour_code_to_surface_area = table_for
    package_metrics._sort_distances_surfels = sort_distances_surfels
    return surface_distance


def sort_distances_surfels(distances: np.ndarray, surfel_areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """surface-distance's ``_sort_distances_surfels``: both arrays ordered by (distance, area), as float64."""
    distances = np.asarray(distances, dtype=np.float64)
    surfel_areas = np.asarray(surfel_areas, dtype=np.float64)
    order = np.lexsort((surfel_areas, distances))
    return distances[order], surfel_areas[order]


def silence_surface_distance_deprecations() -> None:
    """Idempotent (an identical filter is replaced, not stacked); re-applied per call because test runners
    and applications may reset the filter list."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"surface_distance(\..*)?")


def evaluate(
    original: np.ndarray,
    compressed: np.ndarray,
    spacing: Sequence[float],
    classes: Iterable[ClassRef],
    ground_truth: GroundTruth | np.ndarray | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> Evaluation:
    """Compressed vs original; with a ground truth, original and compressed vs it as well.

    A plain array as ground truth is taken to name every class (it is in the model's own label values).
    """
    classes = list(classes)
    evaluation = Evaluation(
        compare(original, compressed, spacing, classes, tolerance_mm, "original", "compressed")
    )
    if ground_truth is None:
        return evaluation
    if not isinstance(ground_truth, GroundTruth):
        ground_truth = GroundTruth(ground_truth, frozenset(c.label for c in classes))
    truth = as_label_map(ground_truth.labels, "ground truth")
    if truth.shape != np.shape(original):
        raise MetricsError(
            f"ground truth has shape {truth.shape} but the CT grid is {np.shape(original)}: "
            "give a label map on the CT's voxel grid"
        )
    named = [c for c in classes if c.label in ground_truth.classes]
    unnamed = [c for c in classes if c.label not in ground_truth.classes]

    def against_truth(labels: np.ndarray, side: str) -> Comparison:
        comparison = compare(truth, labels, spacing, named, tolerance_mm, "ground truth", side)
        comparison.not_in_reference = list(unnamed)
        return comparison

    evaluation.original_vs_ground_truth = against_truth(original, "original")
    evaluation.compressed_vs_ground_truth = against_truth(compressed, "compressed")
    return evaluation


def classes_from_names(names: Mapping[int, str], expert: str = "") -> list[ClassRef]:
    """ClassRefs for a {label: name} table of one expert (background 0 skipped)."""
    return [ClassRef(int(label), name, expert) for label, name in sorted(names.items()) if int(label) > 0]
