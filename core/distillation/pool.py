"""The patch pool: augmented patches of the scans with the teacher's outputs on them, computed once each.

Every scan goes through the expert's own inference preprocessing (Segmenter.model_input: TS's grid,
nnU-Net's crop, CT normalisation, resampling to the model spacing), is padded as nnU-Net pads it for its
sliding window, and gives ``patches_per_scan`` random crops. Each crop gets light intensity augmentation
(contrast x U(0.9, 1.1), brightness + U(-0.1, 0.1), Gaussian noise of sigma U(0, 0.08) on 30% of them, on
the normalised values, as the demo experts were trained) before the teacher sees it, so teacher and student
see the same input. No mirroring and no rotation: TS trains without mirroring (left and right organs are
different classes); the random crop is the spatial augmentation. Half the crop centres are drawn from body
voxels (above the scan's minimum, which CT normalisation maps air to), half uniformly.

The teacher runs once per patch. Its logits are kept as float16, its argmax labels as uint8 and, for feature
matching, its decoder stage outputs as float16: the pool's memory is counted exactly (``nbytes``) and
estimated before it is built (``PoolLayout``), so a run that would not fit is refused before it starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tuckerscope.core.compression.conv_layers import meta_copy
from tuckerscope.core.distillation.data import ScanSource
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.segmenter import Segmenter

CancelCheck = Callable[[], bool]
BODY_CENTRE_FRACTION = 0.5
NOISE_PROBABILITY = 0.3


class PoolError(UserError):
    """A patch size or network the pool cannot be built for."""


@dataclass(frozen=True)
class PoolLayout:
    """Shapes and bytes of one pool entry, and the activation memory of one training patch (from a meta trace)."""

    patch_size: tuple[int, int, int]
    input_channels: int
    classes: int
    feature_shapes: tuple[tuple[int, ...], ...]
    activation_bytes: int

    @property
    def voxels(self) -> int:
        return int(np.prod(self.patch_size))

    @property
    def entry_bytes(self) -> int:
        """fp32 input + fp16 logits + uint8 labels + fp16 features (when matched)."""
        features = sum(int(np.prod(shape)) for shape in self.feature_shapes) * 2
        return self.voxels * (4 * self.input_channels + 2 * self.classes + 1) + features


def decoder_stages(network: nn.Module) -> list[nn.Module]:
    """The decoder's stage modules (nnU-Net's UNetDecoder.stages), whose outputs feature matching compares."""
    stages = getattr(getattr(network, "decoder", None), "stages", None)
    if not isinstance(stages, nn.ModuleList) or not len(stages):
        raise PoolError(
            "feature matching needs an nnU-Net U-Net (network.decoder.stages); this network has none"
        )
    return list(stages)


def check_patch_size(expert: LoadedExpert, patch_size: Sequence[int]) -> tuple[int, int, int]:
    """Three positive sizes, each divisible by the network's total downsampling along that axis."""
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise PoolError(
            f"patch size must be three positive numbers (z,y,x in model axes), got {tuple(patch_size)}"
        )
    strides = expert.configuration.get("architecture", {}).get("arch_kwargs", {}).get("strides")
    if strides is None:
        strides = expert.configuration.get("pool_op_kernel_sizes", [[1, 1, 1]])
    factor = np.prod(np.array(strides, dtype=int), axis=0)
    bad = [axis for axis in range(3) if patch_size[axis] % int(factor[axis])]
    if bad:
        raise PoolError(
            f"patch size {tuple(patch_size)} does not fit the network: each axis must be a multiple of its "
            f"downsampling {tuple(int(f) for f in factor)}"
        )
    return (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))


def trace_layout(
    network: nn.Module, patch_size: tuple[int, int, int], channels: int, with_features: bool
) -> PoolLayout:
    """Run the network on the meta device (no arithmetic, no memory) to learn output, feature and activation sizes.

    Activations: every leaf module's output (in-place activations excluded, they reuse their input), float32.
    Autograd keeps about that much for the backward pass; the student's (Tucker) is smaller than this, the
    original network's, so it serves as the bound.
    """
    shadow = meta_copy(network)
    total = [0]
    features: list[tuple[int, ...]] = []

    def count(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):
            total[0] += output.numel() * 4

    def feature(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        features.append(tuple(output.shape[1:]))

    hooks = [m.register_forward_hook(count) for m in shadow.modules() if next(m.children(), None) is None]
    if with_features:
        hooks += [stage.register_forward_hook(feature) for stage in decoder_stages(shadow)]
    with torch.no_grad():
        logits = shadow(torch.empty((1, channels, *patch_size), device="meta"))
    for hook in hooks:
        hook.remove()
    return PoolLayout(patch_size, channels, int(logits.shape[1]), tuple(features), total[0])


@dataclass
class PatchPool:
    """Patches (P x C x D x H x W, float32) with the teacher's logits (fp16), labels (uint8) and features (fp16)."""

    inputs: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    features: list[torch.Tensor]
    scan_names: list[str]
    teacher_seconds: float

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def nbytes(self) -> int:
        tensors = [self.inputs, self.logits, self.labels, *self.features]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(
        self, indices: Sequence[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(input, teacher logits as float32, labels as int64 N x 1 x ..., features as float32) on ``device``."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return (
            self.inputs[index].to(device),
            self.logits[index].to(device, torch.float32),
            self.labels[index].to(device, torch.long).unsqueeze(1),
            [f[index].to(device, torch.float32) for f in self.features],
        )


def build_pool(
    teacher: nn.Module,
    expert: LoadedExpert,
    scans: ScanSource,
    layout: PoolLayout,
    patches_per_scan: int,
    seed: Sequence[int],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck = lambda: False,
) -> PatchPool:
    """Sample, augment and run the teacher on ``patches_per_scan`` crops of each scan (one scan in memory at once).

    ``seed`` keys a numpy Generator per scan, so the pool is the same for the same seed and data (resume relies
    on it). ``teacher`` is not modified: it runs in inference mode, in eval mode, on ``device``.
    """
    count = len(scans) * patches_per_scan
    inputs = torch.empty((count, layout.input_channels, *layout.patch_size), dtype=torch.float32)
    logits = torch.empty((count, layout.classes, *layout.patch_size), dtype=torch.float16)
    labels = torch.empty((count, *layout.patch_size), dtype=torch.uint8)
    features = [torch.empty((count, *shape), dtype=torch.float16) for shape in layout.feature_shapes]
    names: list[str] = []
    teacher_seconds = 0.0
    was_training = teacher.training
    teacher.eval()
    try:
        with stage_outputs(teacher, bool(layout.feature_shapes), detach=True) as captured:
            for scan_index, scan in enumerate(scans):
                _stop_if(should_cancel)
                if progress is not None:
                    progress(scan_index / len(scans), f"preprocessing {scan.name}")
                volume = _padded(
                    Segmenter(scan.ct, scan.affine).model_input(expert, cancel=should_cancel),
                    layout.patch_size,
                )
                rng = np.random.default_rng([*seed, scan_index])
                for patch_index in range(patches_per_scan):
                    _stop_if(should_cancel)
                    slot = scan_index * patches_per_scan + patch_index
                    inputs[slot] = torch.from_numpy(
                        _augmented(_random_crop(volume, layout.patch_size, rng), rng)
                    )
                    start = time.perf_counter()
                    output = _teacher_forward(teacher, inputs[slot : slot + 1], device, autocast_dtype)
                    teacher_seconds += time.perf_counter() - start
                    logits[slot] = output[0].to("cpu", torch.float16)
                    labels[slot] = output[0].argmax(0).to("cpu", torch.uint8)
                    for store, value in zip(features, captured, strict=True):
                        store[slot] = value[0].to("cpu", torch.float16)
                    captured.clear()
                    names.append(scan.name)
                    if progress is not None:
                        progress(
                            (scan_index + (patch_index + 1) / patches_per_scan) / len(scans),
                            f"teacher on {scan.name}, patch {patch_index + 1}/{patches_per_scan}",
                        )
                del volume
    finally:
        teacher.train(was_training)
    return PatchPool(inputs, logits, labels, features, names, teacher_seconds)


@torch.inference_mode()
def _teacher_forward(
    teacher: nn.Module, patch: torch.Tensor, device: torch.device, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    context = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    with context:
        return teacher(patch.to(device)).float()


@contextmanager
def stage_outputs(network: nn.Module, enabled: bool, detach: bool) -> Iterator[list[torch.Tensor]]:
    """A list that fills with the decoder stage outputs of each forward pass while the context is open
    (detached for the teacher's cache; with their graph for the student's loss). Empty when not ``enabled``."""
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured.append(output.detach().float() if detach else output)

    hooks = [stage.register_forward_hook(keep) for stage in decoder_stages(network)] if enabled else []
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def _padded(volume: torch.Tensor, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Pad to at least the patch size with zeros, centred, exactly as nnU-Net's sliding window pads."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    return pad_nd_image(volume, patch_size, "constant", {"value": 0}, False, None).numpy()


def _random_crop(
    volume: np.ndarray, patch_size: tuple[int, int, int], rng: np.random.Generator
) -> np.ndarray:
    shape = np.array(volume.shape[1:])
    size = np.array(patch_size)
    if rng.random() < BODY_CENTRE_FRACTION:
        body = np.flatnonzero(volume[0] > volume[0].min())
        flat = int(body[rng.integers(len(body))]) if len(body) else int(rng.integers(volume[0].size))
        centre = np.array(np.unravel_index(flat, volume.shape[1:]))
        start = np.clip(centre - size // 2, 0, shape - size)
    else:
        start = np.array([rng.integers(0, n - s + 1) for n, s in zip(shape, size, strict=True)])
    box = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size, strict=True))
    return volume[(slice(None), *box)]


def _augmented(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = crop.astype(np.float32) * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < NOISE_PROBABILITY:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.0, 0.08))
    return image


def _stop_if(should_cancel: CancelCheck) -> None:
    if should_cancel():
        raise Cancelled("distillation cancelled")
