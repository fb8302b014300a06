"""Distillation losses: temperature-scaled KL to the teacher's logits, Dice + CE to its labels, feature matching.

- ``kd``: KL(softmax(t / T) || softmax(s / T)) per voxel, summed over classes, averaged over voxels, times T^2
  (Hinton et al.: keeps the gradient scale independent of T).
- ``dice_ce``: nnU-Net's own DC_and_CE_loss (soft Dice without background, batch Dice, plus cross-entropy)
  against the teacher's argmax labels, as if they were ground truth: it sharpens boundaries where the soft
  targets are flat.
- ``features`` (optional): mean over decoder stages of the MSE between student and teacher stage outputs,
  each divided by the teacher output's variance so that no stage dominates by its scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

VARIANCE_FLOOR = 1e-6


@dataclass(frozen=True)
class LossWeights:
    temperature: float = 2.0
    kd: float = 1.0
    dice_ce: float = 1.0
    features: float = 0.0

    def used(self) -> tuple[str, ...]:
        """Names of the terms with a non-zero weight, for reports ('kd(T=2)', 'dice_ce', 'features')."""
        names = []
        if self.kd:
            names.append(f"kd(T={self.temperature:g})")
        if self.dice_ce:
            names.append("dice_ce")
        if self.features:
            names.append("features")
        return tuple(names)


class DistillationLoss:
    """The weighted sum of the terms; returns the total and each term's value (floats) for the loss curve."""

    def __init__(self, weights: LossWeights) -> None:
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        if weights.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {weights.temperature}")
        self.weights = weights
        self.dice_ce = DC_and_CE_loss(
            {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
            {},
            weight_ce=1,
            weight_dice=1,
            dice_class=MemoryEfficientSoftDiceLoss,
        )

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_labels: torch.Tensor,
        student_features: Sequence[torch.Tensor] = (),
        teacher_features: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        student_logits = student_logits.float()
        total = student_logits.new_zeros(())
        parts: dict[str, float] = {}
        if w.kd:
            kd = kd_loss(student_logits, teacher_logits, w.temperature)
            total = total + w.kd * kd
            parts["kd"] = float(kd.detach())
        if w.dice_ce:
            seg = self.dice_ce(student_logits, teacher_labels)
            total = total + w.dice_ce * seg
            parts["dice_ce"] = float(seg.detach())
        if w.features:
            matched = feature_loss(student_features, teacher_features)
            total = total + w.features * matched
            parts["features"] = float(matched.detach())
        return total, parts


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    per_voxel = F.kl_div(student, teacher, log_target=True, reduction="none").sum(dim=1)
    return per_voxel.mean() * temperature**2


def feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(student) != len(teacher) or not student:
        raise ValueError(
            f"feature matching needs one student output per teacher stage ({len(student)} vs {len(teacher)})"
        )
    terms = [
        F.mse_loss(s.float(), t) / t.var().clamp_min(VARIANCE_FLOOR)
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(terms).mean()
