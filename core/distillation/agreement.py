"""How closely compressed networks agree with the original on scans, through the whole TS pipeline.

Each scan is segmented by the original expert and by every candidate network (zero-shot, distilled, ...)
with the same Segmenter, as `segment` would, and each class's Dice against the original is averaged over the
scans. A class absent from both maps of a scan does not count for that scan (metrics.py's rule). For
phantoms, each network (and the original) is scored against the true labels too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from tuckerscope.core.distillation.data import ScanSource
from tuckerscope.core.distillation.distiller import CancelSignal, cancel_checker
from tuckerscope.core.evaluation.metrics import Comparison, classes_from_names, compare
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.segmenter import Segmenter

ORIGINAL = "original"


@dataclass
class Agreement:
    """Per-class Dice of one network against the original (and against the truth), averaged over scans."""

    name: str
    scans: int = 0
    dice: dict[str, list[float]] = field(default_factory=dict)
    truth_dice: dict[str, list[float]] = field(default_factory=dict)

    @property
    def per_class(self) -> dict[str, float]:
        return {name: float(np.mean(values)) for name, values in self.dice.items()}

    @property
    def mean_dice(self) -> float:
        values = list(self.per_class.values())
        return float(np.mean(values)) if values else float("nan")

    @property
    def worst(self) -> tuple[str, float]:
        """(class, mean Dice) of the class that agrees least."""
        per_class = self.per_class
        if not per_class:
            return ("-", float("nan"))
        name = min(per_class, key=lambda k: (per_class[k], k))
        return name, per_class[name]

    @property
    def truth_mean_dice(self) -> float | None:
        values = [float(np.mean(v)) for v in self.truth_dice.values()]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, object]:
        worst_class, worst_dice = self.worst
        return {
            "scans": self.scans,
            "mean_dice_vs_original": self.mean_dice,
            "worst_class": worst_class,
            "worst_dice_vs_original": worst_dice,
            "per_class_dice_vs_original": self.per_class,
            "mean_dice_vs_truth": self.truth_mean_dice,
            "per_class_dice_vs_truth": {k: float(np.mean(v)) for k, v in self.truth_dice.items()},
        }


def agreement_with_original(
    expert: LoadedExpert,
    networks: Mapping[str, nn.Module],
    scans: ScanSource,
    progress: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    segmenters: dict[str, Segmenter] | None = None,
) -> dict[str, Agreement]:
    """{name: Agreement} for every network, plus 'original' (its truth scores only), over ``scans``.

    ``segmenters`` (scan name -> Segmenter) keeps each scan's preprocessing and original labels for later
    calls on the same scans (figure 2 scores many networks one setting at a time); filled when given.
    """
    classes = classes_from_names(expert.class_names, expert.name)
    results = {name: Agreement(name) for name in (*networks, ORIGINAL)}
    for index, scan in enumerate(scans):
        if progress is not None:
            progress(index / len(scans), f"scoring on {scan.name}")
        segmenter = segmenters.get(scan.name) if segmenters is not None else None
        if segmenter is None:
            segmenter = Segmenter(scan.ct, scan.affine)
            if segmenters is not None:
                segmenters[scan.name] = segmenter
        spacing = tuple(float(s) for s in np.sqrt((scan.affine[:3, :3] ** 2).sum(axis=0)))
        original = segmenter.segment(expert, cancel=cancel)
        truth = scan.truth_for(expert)
        if truth is not None:
            _add(results[ORIGINAL].truth_dice, compare(truth, original, spacing, classes))
        results[ORIGINAL].scans += 1
        for name, network in networks.items():
            if cancel_checker(cancel)():
                raise Cancelled("scoring cancelled")
            labels = segmenter.segment(expert, network, cancel=cancel)
            _add(results[name].dice, compare(original, labels, spacing, classes))
            if truth is not None:
                _add(results[name].truth_dice, compare(truth, labels, spacing, classes))
            results[name].scans += 1
    if progress is not None:
        progress(1.0, "scoring done")
    return results


def _add(store: dict[str, list[float]], comparison: Comparison) -> None:
    for score in comparison.scores:
        store.setdefault(score.name, []).append(score.dice)
