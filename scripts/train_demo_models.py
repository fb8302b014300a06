"""Train the demo experts shipped in resources/demo_models on procedural phantoms, reproducibly.

Why: the app must show the whole idea with no TotalSegmentator weights, so it ships three small experts in
the real nnU-Net v2 results-folder format (new-style plans, same PlainConvUNet family as TS). This script
makes them from scratch: it generates training phantoms from fixed seeds, computes nnU-Net's CT
normalisation statistics from their foreground, trains each network (Dice + cross-entropy, nnU-Net's
losses), writes plans.json, dataset.json and fold_0/checkpoint_final.pth, then segments held-out phantoms
through nnU-Net's own predictor (manual_initialization + predict_single_npy_array, Gaussian sliding window,
tile step 0.5) and prints the per-class Dice. It exits non-zero if any class is below the target.

Differences from nnU-Net's trainer, chosen for a 2-core CPU budget: AdamW with a cosine schedule instead of
SGD + poly, bf16 autocast, no deep supervision, training crops that keep the whole axial plane and take a
random slab in z (so left/right context is always complete), and only intensity augmentation (no mirroring:
left and right are different classes).

Usage (from the repository root):
    python scripts/train_demo_models.py                      # all experts, into resources/demo_models
    python scripts/train_demo_models.py --expert organs --iterations 800 --output /tmp/demo_models
"""

from __future__ import annotations

import os

# The machine is shared: with OpenMP's default spin-waiting, two torch threads that lose their cores to other
# processes burn their time slices waiting for each other (measured 4-5x slower under load). Must be set
# before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuckerscope.core.imaging.phantom import (
    CLASS_GROUPS,
    CLASS_NAMES,
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    make_phantom,
)
from tuckerscope.core.models.model_folder import (
    build_network,
    load_expert,
    nnunet_checkpoint,
    spec_from_folder,
)
from tuckerscope.core.segmentation.segmenter import nnunet_predictor
from tuckerscope.resources import DEMO_MODELS_DIR

TRAIN_SEEDS = range(0, 128)
HELD_OUT_SEEDS = range(100_000, 100_004)
DICE_TARGET = 0.9
FEATURES = (16, 32, 64, 128)
# (fraction of training done, crop (z, y, x), batch size): small crops are cheap; the last part trains on whole
# phantoms so InstanceNorm sees the statistics it meets at inference, where one tile covers the phantom.
CROP_SCHEDULE: tuple[tuple[float, tuple[int, int, int], int], ...] = (
    (0.0, (32, 64, 80), 2),
    (0.8, (80, 88, 112), 1),
)
BATCH_SIZE = 2
ITERATIONS_PER_EPOCH = 50
TRAINER_DIR = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@dataclass(frozen=True)
class DemoExpert:
    """One demo expert: its nnU-Net dataset id, TS-style part name and the phantom classes it segments."""

    dataset_id: int
    part: int
    name: str
    classes: tuple[str, ...]
    seed: int

    @property
    def dataset_name(self) -> str:
        return f"Dataset{self.dataset_id}_TuckerScopeDemo_part{self.part}_{self.name}"

    def folder(self, root: Path) -> Path:
        return root / self.dataset_name / TRAINER_DIR


EXPERTS: tuple[DemoExpert, ...] = (
    DemoExpert(
        901,
        1,
        "organs",
        ("spleen", "kidney_right", "kidney_left", "liver", "lung_left", "lung_right"),
        seed=901,
    ),
    DemoExpert(902, 2, "skeleton", ("vertebrae", "ribs_left", "ribs_right", "spinal_cord"), seed=902),
    DemoExpert(903, 3, "vessels", ("aorta", "heart", "skeletal_muscle", "subcutaneous_fat"), seed=903),
)


@dataclass
class Case:
    """One phantom as the network sees it: HU and fine labels in (z, y, x) order."""

    ct: np.ndarray
    labels: np.ndarray


def load_cases(seeds: range) -> list[Case]:
    cases = []
    for seed in seeds:
        phantom = make_phantom(seed)
        cases.append(
            Case(np.ascontiguousarray(phantom.ct.transpose(2, 1, 0)), phantom.labels.transpose(2, 1, 0))
        )
    return cases


def label_lookup(expert: DemoExpert) -> np.ndarray:
    """Fine phantom label -> the expert's label (0 for classes it does not segment)."""
    ids = {name: i for i, name in CLASS_NAMES.items()}
    lut = np.zeros(256, dtype=np.uint8)
    for expert_label, class_name in enumerate(expert.classes, start=1):
        for fine in CLASS_GROUPS.get(class_name, (class_name,)):
            lut[ids[fine]] = expert_label
    return lut


def intensity_properties(cases: list[Case], lut: np.ndarray) -> dict[str, float]:
    """nnU-Net's fingerprint: statistics of 10,000 foreground samples per case, pooled over the cases."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )

    samples = []
    for case in cases:
        target = lut[case.labels]
        per_channel, _ = DatasetFingerprintExtractor.collect_foreground_intensities(
            target[None], case.ct[None], num_samples=10000
        )
        samples.append(per_channel[0])
    pooled = np.concatenate(samples)
    low, median, high = np.percentile(pooled, (0.5, 50.0, 99.5))
    return {
        "max": float(pooled.max()),
        "mean": float(pooled.mean()),
        "median": float(median),
        "min": float(pooled.min()),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
        "std": float(pooled.std()),
    }


def make_plans(expert: DemoExpert, properties: dict[str, float]) -> dict[str, Any]:
    """nnU-Net v2 plans in the new 'architecture' format; the patch covers a whole phantom in one tile."""
    shape_zyx = list(DEFAULT_SHAPE[::-1])
    spacing = [float(DEFAULT_SPACING)] * 3
    stages = len(FEATURES)
    resampling_kwargs = {"force_separate_z": None, "order_z": 0}
    return {
        "dataset_name": expert.dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": shape_zyx,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": BATCH_SIZE,
                "patch_size": shape_zyx,
                "median_image_size_in_voxels": shape_zyx,
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling_kwargs},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling_kwargs},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resampling_kwargs},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": stages,
                        "features_per_stage": list(FEATURES),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * stages,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                        "n_conv_per_stage": [2] * stages,
                        "n_conv_per_stage_decoder": [2] * (stages - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": properties},
    }


def make_dataset_json(expert: DemoExpert) -> dict[str, Any]:
    labels = {"background": 0, **{name: i for i, name in enumerate(expert.classes, start=1)}}
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": len(TRAIN_SEEDS),
        "file_ending": ".nii.gz",
        "name": expert.dataset_name,
        "description": "TuckerScope demo expert trained on procedural torso phantoms (tuckerscope.core.imaging.phantom)",
        "training_phantom_seeds": [TRAIN_SEEDS.start, TRAIN_SEEDS.stop],
    }


class BatchSampler:
    """Random crops, half of them centred near a random voxel of a random class (nnU-Net oversamples too)."""

    def __init__(self, cases: list[Case], lut: np.ndarray, normalize: Any, rng: np.random.Generator) -> None:
        self.cases = cases
        self.targets = [lut[case.labels] for case in cases]
        self.normalize = normalize
        self.rng = rng
        self.class_voxels = [self._some_voxels_per_class(target) for target in self.targets]

    def _some_voxels_per_class(self, target: np.ndarray) -> list[np.ndarray]:
        voxels = []
        for value in np.unique(target):
            if value == 0:
                continue
            where = np.argwhere(target == value)
            voxels.append(where[self.rng.choice(len(where), min(len(where), 500), replace=False)])
        return voxels

    def batch(self, crop: tuple[int, int, int], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for _ in range(batch_size):
            index = int(self.rng.integers(len(self.cases)))
            case, target = self.cases[index], self.targets[index]
            shape = np.array(case.ct.shape)
            size = np.minimum(crop, shape)
            voxels = self.class_voxels[index]
            if voxels and self.rng.random() < 0.5:
                chosen = voxels[int(self.rng.integers(len(voxels)))]
                center = chosen[int(self.rng.integers(len(chosen)))] + self.rng.integers(
                    -size // 4, size // 4 + 1
                )
                start = np.clip(center - size // 2, 0, shape - size)
            else:
                start = np.array([self.rng.integers(0, n - c + 1) for n, c in zip(shape, size, strict=True)])
            box = tuple(slice(int(a), int(a + c)) for a, c in zip(start, size, strict=True))
            images.append(self.augment(self.normalize(case.ct[box].copy())))
            targets.append(target[box])
        return (
            torch.from_numpy(np.stack(images)[:, None]),
            torch.from_numpy(np.stack(targets)[:, None].astype(np.int64)),
        )

    def augment(self, image: np.ndarray) -> np.ndarray:
        """Contrast, brightness and noise jitter on the normalised image (no mirroring: left != right)."""
        rng = self.rng
        image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        if rng.random() < 0.3:
            image = image + rng.normal(0.0, rng.uniform(0.0, 0.08), image.shape)
        return image.astype(np.float32)


def ct_normalizer(properties: dict[str, float]) -> Any:
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    normalization = CTNormalization(use_mask_for_norm=False, intensityproperties=properties)
    return lambda image: normalization.run(image)


def crop_for(step: int, iterations: int) -> tuple[tuple[int, int, int], int]:
    crop, batch_size = CROP_SCHEDULE[0][1:]
    for fraction, phase_crop, phase_batch in CROP_SCHEDULE:
        if step >= fraction * iterations:
            crop, batch_size = phase_crop, phase_batch
    return crop, batch_size


@torch.inference_mode()
def quick_dice(network: torch.nn.Module, case: Case, lut: np.ndarray, normalize: Any) -> list[float]:
    """Per-class Dice of one whole-phantom forward pass: a cheap progress signal during training."""
    network.eval()
    image = torch.from_numpy(normalize(case.ct.copy())[None, None])
    prediction = network(image)[0].argmax(0).numpy()
    network.train()
    target = lut[case.labels]
    return [dice(target == value, prediction == value) for value in range(1, int(lut.max()) + 1)]


def train(
    expert: DemoExpert,
    cases: list[Case],
    monitor: Case,
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    iterations: int,
    log_every: int,
) -> torch.nn.Module:
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(expert.seed)
    rng = np.random.default_rng(expert.seed)
    lut = label_lookup(expert)
    normalize = ct_normalizer(plans["foreground_intensity_properties_per_channel"]["0"])
    sampler = BatchSampler(cases, lut, normalize, rng)
    network = build_network(plans, dataset_json)
    network.train()
    loss_fn = DC_and_CE_loss(
        {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-4)
    warmup = max(1, iterations // 20)

    def learning_rate_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iterations - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    start, running = time.perf_counter(), []
    for step in range(iterations):
        images, targets = sampler.batch(*crop_for(step, iterations))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = network(images)
        loss = loss_fn(output.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        scheduler.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == iterations:
            dices = " ".join(f"{d:.2f}" for d in quick_dice(network, monitor, lut, normalize))
            print(
                f"  [{expert.name}] iteration {step + 1}/{iterations}  loss {np.mean(running):.4f}  "
                f"lr {scheduler.get_last_lr()[0]:.2e}  {time.perf_counter() - start:.0f} s  "
                f"monitor Dice {dices}",
                flush=True,
            )
            running = []
    network.eval()
    return network


def write_expert_folder(
    folder: Path,
    network: torch.nn.Module,
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    iterations: int,
) -> Path:
    """plans.json, dataset.json and fold_0/checkpoint_final.pth exactly where nnU-Net and TS look for them."""
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2) + "\n")
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    # state_dict keeps nnU-Net's shared tensors (each conv is registered twice, the decoder holds the
    # encoder) shared when saved, so the file holds every weight once.
    checkpoint = nnunet_checkpoint(
        network.state_dict(), plans, dataset_json, epoch=iterations // ITERATIONS_PER_EPOCH
    )
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(checkpoint, path)
    return path


def predict_with_nnunet(folder: Path, ct_xyz: np.ndarray, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """Labels (x, y, z) from nnU-Net's own predictor on the expert loaded through TuckerScope's loader."""
    predictor = nnunet_predictor(load_expert(spec_from_folder(folder)), with_weights=True)
    image = ct_xyz.transpose(2, 1, 0)[None].astype(np.float32)
    segmentation = predictor.predict_single_npy_array(
        image, {"spacing": list(spacing_xyz[::-1])}, None, None, False
    )
    return np.asarray(segmentation).transpose(2, 1, 0)


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    total = int(reference.sum()) + int(prediction.sum())
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total if total else 1.0


def evaluate(expert: DemoExpert, folder: Path) -> dict[str, list[float]]:
    """Per-class Dice on every held-out phantom, segmented by nnU-Net's predictor; prints one line per case."""
    scores: dict[str, list[float]] = {name: [] for name in expert.classes}
    for seed in HELD_OUT_SEEDS:
        phantom = make_phantom(seed)
        start = time.perf_counter()
        labels = predict_with_nnunet(folder, phantom.ct, phantom.spacing)
        seconds = time.perf_counter() - start
        for value, name in enumerate(expert.classes, start=1):
            scores[name].append(dice(phantom.mask(name), labels == value))
        row = "  ".join(f"{name} {scores[name][-1]:.3f}" for name in expert.classes)
        print(f"  [{expert.name}] held-out seed {seed} ({seconds:.1f} s): {row}", flush=True)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert", choices=[e.name for e in EXPERTS] + ["all"], default="all")
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations per expert")
    parser.add_argument("--output", type=Path, default=DEMO_MODELS_DIR, help="root of the results folders")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    experts = [e for e in EXPERTS if args.expert in ("all", e.name)]

    start = time.perf_counter()
    cases = load_cases(TRAIN_SEEDS)
    monitor = load_cases(range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + 1))[0]
    print(f"generated {len(cases)} training phantoms in {time.perf_counter() - start:.0f} s", flush=True)
    failures = []
    for expert in experts:
        expert_start = time.perf_counter()
        dataset_json = make_dataset_json(expert)
        plans = make_plans(expert, intensity_properties(cases, label_lookup(expert)))
        network = train(expert, cases, monitor, plans, dataset_json, args.iterations, args.log_every)
        train_seconds = time.perf_counter() - expert_start
        folder = expert.folder(args.output)
        checkpoint = write_expert_folder(folder, network, plans, dataset_json, args.iterations)
        scores = evaluate(expert, folder)
        print(
            f"{expert.name}: trained {args.iterations} iterations in {train_seconds / 60:.1f} min, "
            f"checkpoint {checkpoint.stat().st_size / 1e6:.2f} MB at {checkpoint}"
        )
        for name, values in scores.items():
            mean, worst = float(np.mean(values)), float(np.min(values))
            verdict = "ok" if worst >= DICE_TARGET else "BELOW TARGET"
            print(f"  {name:<20} held-out Dice mean {mean:.3f}  worst {worst:.3f}  {verdict}")
            if worst < DICE_TARGET:
                failures.append(f"{expert.name}/{name}")
    if failures:
        print(f"Dice below {DICE_TARGET} on held-out phantoms: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
