"""Segment a volume with one nnU-Net expert exactly as TotalSegmentator (TS) does, optionally with a swapped network.

Why it exists: the original side of every comparison must be what TS itself would output, and the compressed
side must go through the very same pipeline with only the network swapped.

The pipeline replicates TS's ``nnUNet_predict_image`` for one expert, calling TS's and nnU-Net's own functions:

1. ``totalsegmentator.alignment.as_closest_canonical`` (RAS-like axis order) on the volume (float32 or float64),
2. for TS recipes, ``totalsegmentator.resampling.change_spacing`` to 1.5 mm ('total') or 3 mm ('total_fast'),
   order 1, cast to int32 -- TS writes that to a NIfTI and nnU-Net reads it back with SimpleITK, so here the array
   nnU-Net gets is ``array.transpose(2, 1, 0)`` (x,y,z -> z,y,x) as float32 with the spacing reversed,
3. nnU-Net preprocessing from the plans (crop to non-zero, CT normalisation, resampling if still needed),
4. nnU-Net sliding-window inference through ``nnUNetPredictor.manual_initialization``: Gaussian weighting, no
   mirroring, TS's tile step (0.8 for 'total'/'total_fast', nnU-Net's 0.5 otherwise), fp16 accumulation in
   nnU-Net's tile order, so the logits are bit-identical to ``predict_sliding_window_return_logits``,
5. nnU-Net's export (``convert_predicted_logits_to_segmentation_with_correct_shape``) back to the grid nnU-Net
   was given, then transpose back, TS's ``change_spacing`` (order 0) to the canonical input grid and TS's
   ``undo_canonical``.

TS's default postprocessing for 'total'/'total_fast' is none (its remove_auxiliary_labels only touches task 304;
small-blob removal is opt-in). One TS behaviour is not replicated: for the five-expert 'total' on images above
512x512x900 voxels at 1.5 mm (and more than 200 slices) TS predicts three overlapping z-thirds separately; here the
whole volume goes through each expert in one piece, so such whole-body scans may differ near the two seams.

The sliding window is run here rather than by ``predict_sliding_window_return_logits`` so it can report progress,
be cancelled between tiles, and compute a region of interest first (every tile that touches the ROI, in nnU-Net's
order; those tile outputs are kept within a memory budget and reused when the rest of the volume follows).

API (all arrays are nibabel-ordered (x, y, z) on the input grid; labels are the expert's own label values):

    segmenter = Segmenter(volume_data, affine)                       # one per volume
    labels = segmenter.segment(expert)                                # original network, cached per expert
    labels = segmenter.segment(expert, network=compressed_network)    # same plans, swapped network, not cached
    for result in segmenter.segment_roi_first(expert, roi=slab_roi(volume_data.shape, 2, 15, 4)):
        show(result.labels, complete=result.complete)                 # ROI result first, then the full one
    labels = segment_with_expert(volume_data, affine, expert)         # one-shot convenience
    Segmenter(volume_data, affine, profile=StageProfile(), original_cache=OriginalCache())
        # profile: (stage, seconds) per pipeline step; original_cache: originals on disk across sessions

``progress(fraction, message)`` is called with a fraction in [0, 1]; ``cancel`` is a callable returning True or a
``threading.Event``; cancelling raises ``tuckerscope.core.runtime.errors.Cancelled`` before the next layer runs.
``InferenceOptions`` selects device (cpu/cuda/mps), precision (fp32 is the reference; bf16 autocast on CPU), channels_last_3d, the
torch thread count and the tile runtime (torch, openvino or auto; core.segmentation.runtimes). A Segmenter is not thread-safe: drive it from one worker thread.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, nullcontext, redirect_stdout
from copy import deepcopy
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import torch

from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.models.model_sources import ts_task_of
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.original_cache import OriginalCache, volume_content_hash
from tuckerscope.core.segmentation.profile import StageCallback, timed_stage
from tuckerscope.core.segmentation.runtimes import RUNTIMES, OpenVinoTiles, RuntimeChooser, network_hash

Roi = tuple[slice, slice, slice]
CancelSignal = Callable[[], bool] | threading.Event | None

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda", "mps")
NNUNET_TILE_STEP = 0.5
# model-grid voxels added around a mapped ROI (reach of nearest/linear resampling, plus rounding)
ROI_MARGIN_VOXELS = 2
DEFAULT_TILE_CACHE_BYTES = 2 * 1024**3
CANCEL_POLL_SECONDS = 0.1
# planes of the model grid per argmax step: a few MB of logits at a time instead of an int64 map of the volume
ARGMAX_SLAB = 4
# Runs TS's whole-volume resampling steps so that the segmenting thread can stop waiting for them on a cancel.
# One worker: an abandoned whole-volume step (GBs for a large CT) never runs beside another one.
_RESAMPLING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuckerscope-resampling")
T = TypeVar("T")


class SegmentationError(UserError):
    """The volume, the options or the device cannot be used for segmentation."""


@dataclass(frozen=True)
class InferenceOptions:
    """How the network runs. fp32 in the contiguous layout is the parity reference.

    ``channels_last=None`` (auto) runs swapped (compressed) networks in channels_last_3d on the CPU, where their
    1x1x1 projections become plain GEMMs without layout copies (about 1.5x faster in fp32 here), and keeps
    the original network contiguous so that its output stays bit-identical to TotalSegmentator's.
    ``runtime`` runs the tiles with PyTorch (the reference), OpenVINO (CPU only; Dice >= 0.999 against PyTorch,
    not voxel-identical) or "auto" (whichever ran a tile of that network faster; see core.segmentation.runtimes).
    """

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool | None = None
    threads: int | None = None
    tile_cache_bytes: int = DEFAULT_TILE_CACHE_BYTES
    runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in DEVICES:
            raise SegmentationError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise SegmentationError(
                f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        if self.threads is not None and self.threads < 1:
            raise SegmentationError(f"thread count must be at least 1, got {self.threads}")
        if self.runtime not in RUNTIMES:
            raise SegmentationError(f"unknown runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.runtime != "torch" and self.device.split(":")[0] != "cpu":
            raise SegmentationError(f"runtime {self.runtime!r} runs on the CPU only; use --device cpu")
        if self.runtime != "torch" and self.precision == "fp16":
            raise SegmentationError(f"runtime {self.runtime!r} runs fp32 or bf16, not fp16")

    def torch_device(self) -> torch.device:
        kind = self.device.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise SegmentationError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise SegmentationError("device 'mps' requested but Apple MPS is not available; use --device cpu")
        return torch.device(self.device)

    def cache_key(self) -> tuple[str, ...]:
        # torch's key keeps its earlier form, so that originals cached on disk before runtimes existed still hit
        key = (self.device, self.precision, self.channels_last)
        return key if self.runtime == "torch" else (*key, self.runtime)

    def uses_channels_last(self, original: bool) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return not original and self.device.split(":")[0] == "cpu"


@dataclass(frozen=True)
class Recipe:
    """How a volume reaches an expert and comes back: TS's resampling (mm, None = nnU-Net's own) and tile step."""

    resample_mm: float | None
    tile_step_size: float = NNUNET_TILE_STEP


@dataclass
class SegmentationResult:
    """Labels on the input grid. While ``complete`` is False only the voxels inside ``roi`` are computed."""

    labels: np.ndarray
    roi: Roi | None
    complete: bool


def recipe_for(expert: LoadedExpert) -> Recipe:
    """TS's recipe for the TS 'total'/'total_fast' experts; nnU-Net's own behaviour for any other model."""
    task = ts_task_of(expert.spec.folder)
    if task is None:
        return Recipe(resample_mm=None, tile_step_size=NNUNET_TILE_STEP)
    return Recipe(resample_mm=task.resample_mm, tile_step_size=task.tile_step_size)


def slab_roi(shape: tuple[int, ...], axis: int, index: int, half_width: int) -> Roi:
    """The slab of slices ``index +- half_width`` along ``axis`` (0=x, 1=y, 2=z of the input grid)."""
    if not 0 <= axis < 3:
        raise SegmentationError(f"slab axis must be 0, 1 or 2, got {axis}")
    if not 0 <= index < shape[axis]:
        raise SegmentationError(
            f"slice {index} is outside the volume (0..{shape[axis] - 1} along axis {axis})"
        )
    box = [slice(0, n) for n in shape[:3]]
    box[axis] = slice(max(0, index - half_width), min(shape[axis], index + half_width + 1))
    return (box[0], box[1], box[2])


def check_roi(roi: Roi, shape: tuple[int, ...]) -> Roi:
    """Clip an ROI to the volume; refuse an empty one with a message naming the axis."""
    clipped = []
    for axis, (piece, size) in enumerate(zip(roi, shape[:3], strict=True)):
        start, stop, _ = piece.indices(size)
        if stop <= start:
            raise SegmentationError(
                f"region of interest is empty along axis {'xyz'[axis]} (volume size {size})"
            )
        clipped.append(slice(start, stop))
    return (clipped[0], clipped[1], clipped[2])


@dataclass
class _ModelGrid:
    """The volume as TS hands it to nnU-Net: canonical, maybe resampled, int32 (or float64 without resampling)."""

    image: nib.Nifti1Image
    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    resample_mm: float | None


@dataclass
class _Prepared:
    """One expert's preprocessed input plus the nnU-Net objects that run and export it."""

    data: torch.Tensor
    properties: dict[str, Any]
    predictor: Any
    recipe: Recipe


class Segmenter:
    """Segments one volume with any number of experts; caches original-network results per expert."""

    def __init__(
        self,
        data: np.ndarray,
        affine: np.ndarray,
        profile: StageCallback | None = None,
        original_cache: OriginalCache | None = None,
    ) -> None:
        """``profile`` receives (stage, seconds) per pipeline step; ``original_cache`` keeps originals on disk."""
        data = np.asarray(data)
        if data.ndim != 3:
            raise SegmentationError(f"expected a 3D volume, got {data.ndim} dimensions {data.shape}")
        self.shape: tuple[int, int, int] = (int(data.shape[0]), int(data.shape[1]), int(data.shape[2]))
        self.affine = np.asarray(affine, dtype=np.float64)
        # TS copies the input as float64 (get_fdata) before reorienting and resampling. Holding a float32 CT instead
        # gives the same values (float32 -> float64 is exact; change_spacing calls get_fdata itself) and spares a
        # permanent float64 copy: 1.2 GB for a 512x512x600 CT, the difference between fitting in 8 GB or not.
        self._image = nib.Nifti1Image(
            data if data.dtype in (np.float32, np.float64) else data.astype(np.float32), self.affine
        )
        self._grids: dict[float | None, _ModelGrid] = {}
        self._grid_jobs: dict[float | None, Future[_ModelGrid]] = {}
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}
        # nnU-Net's preprocessed input per (model grid, preprocessing recipe): TS's five 'total' experts share one
        self._preprocessed: dict[tuple[Any, ...], tuple[torch.Tensor, dict[str, Any]]] = {}
        self._originals: dict[tuple[Any, ...], np.ndarray] = {}
        self._profile = profile
        self._disk = original_cache
        self._volume_hash: str | None = None
        self._runtimes = _Runtimes()
        self._sums = _AggregationBuffer()

    # -- public API -------------------------------------------------------------------------------------------

    def segment(
        self,
        expert: LoadedExpert,
        network: torch.nn.Module | None = None,
        *,
        options: InferenceOptions | None = None,
        recipe: Recipe | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelSignal = None,
    ) -> np.ndarray:
        """Labels of the whole volume on the input grid. With ``network=None`` the result is cached."""
        results = self.segment_roi_first(
            expert, network, roi=None, options=options, recipe=recipe, progress=progress, cancel=cancel
        )
        return next(r for r in results if r.complete).labels

    def segment_roi_first(
        self,
        expert: LoadedExpert,
        network: torch.nn.Module | None = None,
        *,
        roi: Roi | None,
        options: InferenceOptions | None = None,
        recipe: Recipe | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelSignal = None,
        roi_only: bool = False,
    ) -> Iterator[SegmentationResult]:
        """Yield the ROI's labels first (zero outside it), then, unless ``roi_only``, the whole volume's.

        Inside the ROI the first result equals the full one: every tile touching the ROI is computed, in nnU-Net's
        order. The full pass reuses those tile outputs (within ``options.tile_cache_bytes``).
        """
        options = options or InferenceOptions()
        recipe = recipe or recipe_for(expert)
        is_original = network is None
        key = (*_expert_key(expert), recipe, options.cache_key())
        cached = self._cached_original(expert, key) if is_original else None
        if cached is not None:
            if roi is not None:
                yield SegmentationResult(_only_inside(cached, check_roi(roi, self.shape)), roi, False)
            if roi is None or not roi_only:
                yield SegmentationResult(cached, None, True)
            return
        report = _Progress(progress)
        should_cancel = _cancel_checker(cancel)
        report(0.0, f"{expert.name}: preparing input")
        prepared = self._prepare_unless_cancelled(expert, recipe, should_cancel)
        # With roi_only no full pass follows to reuse tile outputs: caching them would only hold memory.
        run_options = replace(options, tile_cache_bytes=0) if roi_only else options
        run = _TileRun(
            prepared,
            network or expert.network,
            run_options,
            should_cancel,
            is_original,
            self._profile,
            self._runtimes,
            self._sums,
        )
        if roi is not None:
            roi = check_roi(roi, self.shape)
            selected = run.tiles_touching(self._roi_box_in_model(roi, prepared))
            logits = run.logits(selected, report.span(0.05, 0.5 if not roi_only else 0.95, expert.name))
            labels = _unless_cancelled(self._to_input_grid, should_cancel, prepared, logits, prepared.recipe)
            yield SegmentationResult(_only_inside(labels, roi), roi, False)
            if roi_only:
                return
            logits = run.logits(None, report.span(0.5, 0.95, expert.name))
        else:
            logits = run.logits(None, report.span(0.05, 0.95, expert.name))
        _stop_if(should_cancel)
        report(0.95, f"{expert.name}: back to the input grid")
        labels = _unless_cancelled(self._to_input_grid, should_cancel, prepared, logits, prepared.recipe)
        if is_original:
            self._originals[key] = labels
            if self._disk is not None:
                self._disk.put(self._disk_key(expert, key), labels)
        report(1.0, f"{expert.name}: done")
        yield SegmentationResult(labels, None, True)

    def roi_needs_every_tile(
        self,
        expert: LoadedExpert,
        roi: Roi,
        recipe: Recipe | None = None,
        cancel: CancelSignal = None,
    ) -> bool:
        """True when the ROI touches every sliding-window tile: a ROI-first pass would then cost a whole pass.

        Small volumes (one tile, as the demo) and slabs across a few tiles gain nothing from the ROI pass.
        Needs the expert's preprocessed input (cached, as every later pass uses it); a cancel while the model
        grid is being computed raises Cancelled at once, as segment_roi_first does.
        """
        prepared = self._prepare_unless_cancelled(
            expert, recipe or recipe_for(expert), _cancel_checker(cancel)
        )
        # the same padding nnU-Net applies, worked out on a shape-only tensor: no copy of the data
        _, _, revert_padding, slicers = _sliding_window(
            prepared, torch.empty(prepared.data.shape, device="meta")
        )
        box = self._roi_box_in_model(check_roi(roi, self.shape), prepared)
        return len(_tiles_touching(slicers, revert_padding, box)) == len(slicers)

    def model_input(
        self, expert: LoadedExpert, recipe: Recipe | None = None, cancel: CancelSignal = None
    ) -> torch.Tensor:
        """The expert's input exactly as inference feeds it (C, D, H, W): TS's grid, nnU-Net's crop, normalisation
        and resampling to the model spacing, before sliding-window padding. Cached; do not modify it in place.

        Distillation trains on patches of it, so the student sees what the network sees at inference.
        """
        recipe = recipe or recipe_for(expert)
        return self._prepare_unless_cancelled(expert, recipe, _cancel_checker(cancel)).data

    def cached_original(
        self, expert: LoadedExpert, options: InferenceOptions | None = None, recipe: Recipe | None = None
    ) -> np.ndarray | None:
        """The cached original-network labels for ``expert``, if they were computed already (here or, with an
        original cache, in an earlier session)."""
        options = options or InferenceOptions()
        recipe = recipe or recipe_for(expert)
        return self._cached_original(expert, (*_expert_key(expert), recipe, options.cache_key()))

    def _cached_original(self, expert: LoadedExpert, key: tuple[Any, ...]) -> np.ndarray | None:
        labels = self._originals.get(key)
        if labels is None and self._disk is not None:
            labels = self._disk.get(self._disk_key(expert, key), self.shape)
            if labels is not None:
                self._originals[key] = labels
        return labels

    def _disk_key(self, expert: LoadedExpert, key: tuple[Any, ...]) -> str:
        """The on-disk entry: CT content, model content, and the recipe and options (the expert's paths left out)."""
        assert self._disk is not None
        if self._volume_hash is None:
            self._volume_hash = volume_content_hash(np.asanyarray(self._image.dataobj), self.affine)
        return self._disk.key(self._volume_hash, self._disk.model_hash(expert), key[len(_expert_key(expert)) :])

    # -- TS steps --------------------------------------------------------------------------------------------

    def _grid_unless_cancelled(self, resample_mm: float | None, should_cancel: Callable[[], bool]) -> None:
        """Compute the model grid in a helper thread (once per resolution); a cancel returns at once while the
        helper still fills the cache for the next request."""
        if resample_mm not in self._grids:
            if resample_mm not in self._grid_jobs:
                self._grid_jobs[resample_mm] = _RESAMPLING.submit(self._grid, resample_mm)
            _wait_unless_cancelled(self._grid_jobs[resample_mm], should_cancel)

    def _prepare_unless_cancelled(
        self, expert: LoadedExpert, recipe: Recipe, should_cancel: Callable[[], bool]
    ) -> _Prepared:
        self._grid_unless_cancelled(recipe.resample_mm, should_cancel)
        prepared = self._prepare(expert, recipe)
        _stop_if(should_cancel)
        return prepared

    def _grid(self, resample_mm: float | None) -> _ModelGrid:
        """TS: as_closest_canonical, then change_spacing(order=1, dtype=int32) when the task resamples."""
        if resample_mm not in self._grids:
            from totalsegmentator.alignment import as_closest_canonical
            from totalsegmentator.resampling import change_spacing

            with timed_stage(self._profile, "reorient"):
                canonical = as_closest_canonical(self._image)
            image = canonical
            if resample_mm is not None:
                with timed_stage(self._profile, "resample"):
                    image = change_spacing(canonical, [resample_mm] * 3, order=1, dtype=np.int32, nr_cpus=1)
                canonical.uncache()  # change_spacing's get_fdata cached a float64 copy (the input itself if RAS)
            self._grids[resample_mm] = _ModelGrid(
                image=image,
                canonical_shape=tuple(int(s) for s in canonical.shape),
                canonical_affine=np.asarray(canonical.affine),
                resample_mm=resample_mm,
            )
        return self._grids[resample_mm]

    def _prepare(self, expert: LoadedExpert, recipe: Recipe) -> _Prepared:
        """nnU-Net preprocessing of what SimpleITKIO would read from TS's temporary NIfTI (cached per expert;
        the preprocessed array itself is shared by experts whose plans preprocess alike)."""
        key = (*_expert_key(expert), recipe)
        if key not in self._prepared:
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            plans_manager = PlansManager(expert.plans)
            configuration = plans_manager.get_configuration(expert.spec.configuration)
            shared_key = (recipe.resample_mm, _preprocessing_signature(expert, configuration.configuration))
            if shared_key not in self._preprocessed:
                grid = self._grid(recipe.resample_mm)
                array = np.asanyarray(grid.image.dataobj)
                # SimpleITK returns the NIfTI array as (z, y, x) and its spacing as (x, y, z); nnU-Net reverses it.
                data = array.transpose(2, 1, 0)[None].astype(np.float32)
                spacing = [abs(float(z)) for z in grid.image.header.get_zooms()[:3]][::-1]
                preprocessor = configuration.preprocessor_class(verbose=False)
                with timed_stage(self._profile, "normalise"):
                    data, _, properties = preprocessor.run_case_npy(
                        data, None, {"spacing": spacing}, plans_manager, configuration, expert.dataset_json
                    )
                tensor = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
                self._preprocessed[shared_key] = (tensor, properties)
            tensor, properties = self._preprocessed[shared_key]
            predictor = nnunet_predictor(expert, recipe.tile_step_size)
            # A run lends the predictor its network (_TileRun._network_on); kept here, the weights of every expert
            # ever segmented would live as long as the Segmenter, though `segment` loads one expert at a time.
            predictor.network = None
            self._prepared[key] = _Prepared(tensor, properties, predictor, recipe)
        return self._prepared[key]

    def _to_input_grid(self, prepared: _Prepared, logits: torch.Tensor, recipe: Recipe) -> np.ndarray:
        """nnU-Net export to the grid it was given, then TS's order-0 change_spacing and undo_canonical."""
        with timed_stage(self._profile, "argmax"):
            segmentation = _logits_to_segmentation(prepared, logits)
        with timed_stage(self._profile, "resample back"):
            return self._segmentation_to_input_grid(segmentation, recipe)

    def _segmentation_to_input_grid(self, segmentation: np.ndarray, recipe: Recipe) -> np.ndarray:
        """TS's way back from the grid it handed nnU-Net: order-0 change_spacing, then undo_canonical."""
        from totalsegmentator.alignment import undo_canonical
        from totalsegmentator.resampling import change_spacing

        grid = self._grid(recipe.resample_mm)
        labels = np.asarray(segmentation).transpose(2, 1, 0)
        dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
        image = nib.Nifti1Image(labels.astype(dtype), grid.image.affine)
        if recipe.resample_mm is not None:
            image = change_spacing(
                image,
                [recipe.resample_mm] * 3,
                grid.canonical_shape,
                order=0,
                dtype=dtype,
                nr_cpus=1,
                force_affine=grid.canonical_affine,
            )
        reference = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), self.affine)
        result = np.asarray(undo_canonical(image, reference).dataobj).astype(dtype, copy=False)
        if result.shape != self.shape:
            raise SegmentationError(
                f"internal error: labels came back as {result.shape}, input is {self.shape}"
            )
        return result

    def _roi_box_in_model(self, roi: Roi, prepared: _Prepared) -> list[tuple[int, int]]:
        """The ROI as a (start, stop) box in the preprocessed nnU-Net array (before padding), with a margin."""
        grid = self._grid(prepared.recipe.resample_mm)
        world = _box_corners(roi) @ self.affine.T
        voxels = world @ np.linalg.inv(grid.image.affine).T  # x, y, z on the grid handed to nnU-Net
        low = np.floor(voxels[:, :3].min(axis=0))
        high = np.ceil(voxels[:, :3].max(axis=0)) + 1
        # nnU-Net order: (z, y, x) then transpose_forward, then crop to non-zero, then its own resampling.
        low, high = low[::-1], high[::-1]
        forward = prepared.predictor.plans_manager.transpose_forward
        low, high = low[forward], high[forward]
        properties = prepared.properties
        bbox = properties["bbox_used_for_cropping"]
        before = np.array(properties["shape_after_cropping_and_before_resampling"], dtype=float)
        after = np.array(prepared.data.shape[1:], dtype=float)
        scale = after / before
        box = []
        for axis in range(3):
            start = (low[axis] - bbox[axis][0]) * scale[axis] - ROI_MARGIN_VOXELS * max(1.0, scale[axis])
            stop = (high[axis] - bbox[axis][0]) * scale[axis] + ROI_MARGIN_VOXELS * max(1.0, scale[axis])
            box.append((int(max(0, np.floor(start))), int(min(after[axis], np.ceil(stop)))))
        return box


def _logits_to_segmentation(prepared: _Prepared, logits: torch.Tensor) -> np.ndarray:
    """What nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape returns, in less time.

    Where nnU-Net resamples nothing (the model grid is already at the plans' spacing, as TS makes it) and the
    labels are not regions, its export is an argmax of the fp16 logits over classes, put back into the
    uncropped box and transposed back. numpy's argmax over the class axis of fp16 data takes 15-17 s per
    'total' expert here (a transposing copy, emulated fp16 compares); torch's max over dim 0, slab by slab,
    gives the same indices (first maximum on ties, as numpy) in a fifth of that, and never holds an int64 map
    of the whole volume. Any other case goes through nnU-Net's own function.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    predictor = prepared.predictor
    properties = prepared.properties
    label_manager = predictor.label_manager
    cropped_shape = tuple(int(n) for n in properties["shape_after_cropping_and_before_resampling"])
    dtype = np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16
    segmentation = np.empty(cropped_shape, dtype=dtype)
    fast = not label_manager.has_regions and tuple(logits.shape[1:]) == cropped_shape
    for start in range(0, cropped_shape[0] if fast else 0, ARGMAX_SLAB):
        slab = logits[:, start : start + ARGMAX_SLAB]
        if torch.isnan(slab).any():  # numpy's argmax picks the first NaN; leave that to nnU-Net's own code
            fast = False
            break
        segmentation[start : start + ARGMAX_SLAB] = torch.max(slab, dim=0).indices.numpy()
    if not fast:
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.cpu().numpy(),
            predictor.plans_manager,
            predictor.configuration_manager,
            label_manager,
            deepcopy(properties),
            return_probabilities=False,
            num_threads_torch=max(1, torch.get_num_threads()),
        )
    uncropped = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    uncropped = insert_crop_into_image(uncropped, segmentation, properties["bbox_used_for_cropping"])
    return uncropped.transpose(predictor.plans_manager.transpose_backward)


def nnunet_predictor(expert: LoadedExpert, tile_step_size: float = 0.5, with_weights: bool = False) -> Any:
    """nnU-Net's own nnUNetPredictor around the expert's network, set up by manual_initialization.

    No trainer lookup (it imports every trainer module), no mirroring, CPU. ``with_weights`` also hands it the
    expert's state dict, for callers that run nnU-Net's whole predict path instead of the network directly.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(expert.plans)
    with redirect_stdout(io.StringIO()):  # it prints a notice about CUDA-only options on every CPU run
        predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=False,
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
    predictor.manual_initialization(
        expert.network,
        plans_manager,
        plans_manager.get_configuration(expert.spec.configuration),
        [expert.network.state_dict()] if with_weights else None,
        expert.dataset_json,
        expert.trainer_name,
        expert.mirroring_axes,
    )
    return predictor


def segment_with_expert(
    data: np.ndarray,
    affine: np.ndarray,
    expert: LoadedExpert,
    network: torch.nn.Module | None = None,
    *,
    options: InferenceOptions | None = None,
    recipe: Recipe | None = None,
    roi: Roi | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelSignal = None,
) -> np.ndarray:
    """One-shot: labels of ``expert`` (or ``network`` on its plans) on the input grid; zero outside ``roi``."""
    segmenter = Segmenter(data, affine)
    if roi is None:
        return segmenter.segment(
            expert, network, options=options, recipe=recipe, progress=progress, cancel=cancel
        )
    results = segmenter.segment_roi_first(
        expert,
        network,
        roi=roi,
        options=options,
        recipe=recipe,
        progress=progress,
        cancel=cancel,
        roi_only=True,
    )
    return next(results).labels


class _Runtimes:
    """A Segmenter's OpenVINO models (compiled once per network content, patch, precision and threads) and its
    "auto" choices: re-running an expert at the same DF reuses them.

    Only the most recently used one is kept, and it is dropped before another is compiled: a compiled 1.5 mm TS
    network holds its weights and its own activation buffers (GBs), and keeping all five experts of 'total'
    compiled took `segment` to 13.3 GB peak RSS. Going back to a network compiles it again from the IR on disk.
    """

    MAX_COMPILED = 1

    def __init__(self) -> None:
        self.compiled: dict[tuple[str, str, int], OpenVinoTiles] = {}
        self.chooser = RuntimeChooser()

    def openvino_for(self, run: _TileRun, device: torch.device) -> OpenVinoTiles | None:
        """The OpenVINO runner for this run's network, or None where "auto" measured PyTorch faster."""
        options = run.options
        shape = (1, int(run.padded.shape[0]), *run.patch_size)
        threads = options.threads or torch.get_num_threads()
        content = network_hash(run.network, shape)
        key = (content, options.precision, threads)

        def compiled() -> OpenVinoTiles:
            runner = self.compiled.pop(key, None)
            if runner is None:
                while len(self.compiled) >= self.MAX_COMPILED:  # the least recently used goes first
                    self.compiled.pop(next(iter(self.compiled)))
                runner = OpenVinoTiles(run.network, shape, options.precision, threads, content_hash=content)
            self.compiled[key] = runner  # now the most recently used
            return runner

        if options.runtime == "auto":

            def forward(tile: torch.Tensor) -> torch.Tensor:
                return run.torch_forward(tile, device)

            choice = self.chooser.choose(content, shape, options.precision, threads, forward, compiled)
            if choice == "torch":
                return None
        return compiled()


class _TileRun:
    """nnU-Net's sliding window for one expert and network, tile by tile, with an output cache for ROI reuse."""

    def __init__(
        self,
        prepared: _Prepared,
        network: torch.nn.Module,
        options: InferenceOptions,
        should_cancel: Callable[[], bool],
        original: bool = True,
        profile: StageCallback | None = None,
        runtimes: _Runtimes | None = None,
        sums: _AggregationBuffer | None = None,
    ) -> None:
        self.prepared = prepared
        self.profile = profile
        self.runtimes = runtimes or _Runtimes()
        self.sums = sums or _AggregationBuffer()
        self.openvino: OpenVinoTiles | None = None
        self.network = network
        self.options = options
        self.should_cancel = should_cancel
        self.channels_last = options.uses_channels_last(original)
        self.patch_size, self.padded, self.revert_padding, self.slicers = _sliding_window(
            prepared, prepared.data
        )
        self.cache: dict[int, torch.Tensor] = {}
        self.cache_bytes = 0

    def tiles_touching(self, box: list[tuple[int, int]]) -> list[int]:
        """Indices of the tiles overlapping ``box`` (given on the unpadded array)."""
        return _tiles_touching(self.slicers, self.revert_padding, box)

    @torch.inference_mode()
    def logits(self, selected: list[int] | None, report: _Progress) -> torch.Tensor:
        """Gaussian-weighted fp16 accumulation exactly as nnU-Net's _internal_predict_sliding_window_return_logits.

        ``selected`` limits the run to those tiles (voxels no tile covers get all-zero logits -> background).
        """
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        predictor = self.prepared.predictor
        device = self.options.torch_device()
        indices = list(range(len(self.slicers))) if selected is None else selected
        heads = predictor.label_manager.num_segmentation_heads
        with self._network_on(device):
            if self.options.runtime != "torch" and len(indices) > 0:
                # before the result buffers exist: exporting and compiling need their own memory for a moment
                with timed_stage(self.profile, "runtime setup"):
                    self.openvino = self.runtimes.openvino_for(self, device)
            # Results stay on the CPU like nnU-Net's OOM fallback; on CUDA nnU-Net would keep them on the GPU.
            results_device = torch.device("cpu")
            logits, weights = self.sums.zeros(heads, tuple(self.padded.shape[1:]))
            gaussian = compute_gaussian(
                self.patch_size, sigma_scale=1.0 / 8, value_scaling_factor=10, device=results_device
            )
            gaussian_fp32 = gaussian.float()  # exact: what fp32 * fp16 promotes it to
            for done, index in enumerate(indices):
                _stop_if(self.should_cancel)
                slicer = self.slicers[index]
                prediction = self.cache.get(index)
                if prediction is None:
                    with timed_stage(self.profile, "tiles (network)"):
                        prediction = self._predict_tile(slicer, device)
                    if selected is not None:
                        self._maybe_cache(index, prediction)
                else:
                    prediction = prediction.clone()
                with timed_stage(self.profile, "aggregation"), _one_torch_thread():
                    _accumulate(logits, prediction, gaussian_fp32, slicer)
                    weights[slicer[1:]] += gaussian
                report((done + 1) / len(indices), f"tile {done + 1}/{len(indices)}")
            with timed_stage(self.profile, "aggregation"), _one_torch_thread():
                if selected is not None:
                    weights[weights == 0] = 1
                infinite = False
                for head in logits:  # one class at a time: no full-size temporary for the inf check
                    torch.div(head, weights, out=head)
                    infinite = infinite or bool(torch.isinf(head).any())
            if infinite:
                raise SegmentationError("the network produced infinite logits; try --precision fp32")
            if selected is None:
                self.cache.clear()
                self.cache_bytes = 0
        return logits[(slice(None), *self.revert_padding[1:])]

    def _predict_tile(self, slicer: tuple[slice, ...], device: torch.device) -> torch.Tensor:
        tile = torch.clone(self.padded[slicer][None], memory_format=torch.contiguous_format).to(device)
        if self.openvino is not None:
            return self.openvino(tile, self.should_cancel)[0]
        return self.torch_forward(tile, device)

    def torch_forward(self, tile: torch.Tensor, device: torch.device) -> torch.Tensor:
        """PyTorch's output for a (1, C, *patch) tile (the network must be set up by _network_on)."""
        if self.channels_last:
            tile = tile.to(memory_format=torch.channels_last_3d)
        with _autocast(device, self.options.precision):
            output = self.prepared.predictor._internal_maybe_mirror_and_predict(tile)[0]
        # .contiguous(): a channels_last_3d output stays channel-interleaved through .to(memory_format=...), and
        # the per-class aggregation over such strided views took ten times as long
        return output.to(device="cpu", dtype=torch.float32).contiguous()

    def _maybe_cache(self, index: int, prediction: torch.Tensor) -> None:
        size = prediction.numel() * prediction.element_size()
        if self.cache_bytes + size <= self.options.tile_cache_bytes:
            self.cache[index] = prediction.clone()
            self.cache_bytes += size

    @contextmanager
    def _network_on(self, device: torch.device) -> Iterator[None]:
        """Run with the network in the predictor, on ``device`` (channels_last if asked), threads set; restore after."""
        predictor = self.prepared.predictor
        original_network = predictor.network
        threads = torch.get_num_threads()
        network = self.network
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        network.eval()
        network.to(device)
        if self.channels_last:
            network.to(memory_format=torch.channels_last_3d)
        predictor.network = network
        # One tile of a TS network takes 10-30 s on a CPU: check for a cancel before every layer, not only between
        # tiles. Only in this thread: the same network object may run elsewhere (timings) meanwhile.
        thread = threading.get_ident()

        def check(_module: torch.nn.Module, _inputs: Any) -> None:
            if threading.get_ident() == thread:
                _stop_if(self.should_cancel)

        hooks = [
            m.register_forward_pre_hook(check) for m in network.modules() if next(m.children(), None) is None
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            predictor.network = original_network
            if self.channels_last:
                network.to(memory_format=torch.contiguous_format)
            network.to("cpu")
            torch.set_num_threads(threads)


class _AggregationBuffer:
    """The sliding window's fp16 sums (logits per class, Gaussian weights), one allocation reused by every run.

    Why: a 'total' expert's sums take 0.5-0.6 GB on an ordinary CT, and experts differ in class count. With freed
    memory retained (core.runtime.memory) a fresh, larger buffer per expert lands above the heap the previous
    expert left, whose holes small allocations have split meanwhile, and the peak grows expert by expert. One
    buffer, replaced only when a run needs more, keeps the peak at the largest expert's. A run's result is a view
    of it: the next run overwrites it, so a Segmenter turns each run's logits into labels before the next run.
    """

    def __init__(self) -> None:
        self._storage = torch.empty(0, dtype=torch.half)

    def zeros(self, heads: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed (heads, *shape) logit sums and (*shape) weight sums, as nnU-Net's torch.zeros gives them."""
        voxels = int(np.prod(shape))
        needed = (heads + 1) * voxels
        if self._storage.numel() < needed:
            self._storage = torch.empty(0, dtype=torch.half)  # the old one goes before the new one is made
            self._storage = torch.empty(needed, dtype=torch.half)
        sums = self._storage[:needed]
        sums.zero_()
        return sums[: heads * voxels].view(heads, *shape), sums[heads * voxels :].view(shape)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run a block of small elementwise ops on one thread: per class they are too short to split, and two
    threads spinning at each op's barrier doubled their CPU time (and, on a loaded machine, their wall time
    tenfold, waiting for both threads to be scheduled)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _accumulate(
    logits: torch.Tensor, prediction: torch.Tensor, gaussian: torch.Tensor, slicer: tuple[slice, ...]
) -> None:
    """nnU-Net's ``prediction *= gaussian; logits[slicer] += prediction`` with the same roundings, class by class.

    The fp16 += fp32 add rounds fp32(logit) + weighted to fp16 once per element, as here; per class the fp32
    temporaries stay in cache instead of streaming the whole tile through memory twice. ``prediction`` is
    overwritten (it holds the weighted sums afterwards).
    """
    for head, target in zip(prediction, logits[slicer], strict=True):
        head.mul_(gaussian)
        head.add_(target)
        target.copy_(head)


def _sliding_window(
    prepared: _Prepared, data: torch.Tensor
) -> tuple[tuple[int, ...], torch.Tensor, tuple[slice, ...], list[tuple[slice, ...]]]:
    """nnU-Net's tiling of ``data`` (the prepared input, or a shape-only stand-in of it): the patch size, the
    padded array, the slices that undo the padding and every tile's slices."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    patch_size = tuple(int(p) for p in prepared.predictor.configuration_manager.patch_size)
    padded, revert_padding = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
    slicers = prepared.predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    return patch_size, padded, revert_padding, slicers


def _tiles_touching(
    slicers: list[tuple[slice, ...]], revert_padding: tuple[slice, ...], box: list[tuple[int, int]]
) -> list[int]:
    """Indices of the sliding-window tiles overlapping ``box`` (given on the unpadded array)."""
    offsets = [s.start for s in revert_padding[1:]]
    chosen = []
    for index, slicer in enumerate(slicers):
        if all(
            span.start < stop + offset and start + offset < span.stop
            for span, (start, stop), offset in zip(slicer[1:], box, offsets, strict=True)
        ):
            chosen.append(index)
    return chosen


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _preprocessing_signature(expert: LoadedExpert, configuration: dict[str, Any]) -> str:
    """Everything nnU-Net's DefaultPreprocessor reads from the plans and dataset.json for an image (no labels):
    experts with equal signatures get bit-identical preprocessed arrays from the same model grid.
    ``configuration`` is the resolved configuration (inheritance applied), as the preprocessor sees it."""
    used = {
        name: configuration.get(name)
        for name in (
            "spacing",
            "normalization_schemes",
            "use_mask_for_norm",
            "preprocessor_name",
            "resampling_fn_data",
            "resampling_fn_data_kwargs",
        )
    }
    used["transpose_forward"] = expert.plans.get("transpose_forward")
    used["intensity"] = expert.plans.get("foreground_intensity_properties_per_channel")
    used["channels"] = expert.dataset_json.get("channel_names", expert.dataset_json.get("modality"))
    return json.dumps(used, sort_keys=True, default=str)


def _expert_key(expert: LoadedExpert) -> tuple[str, str, str]:
    spec = expert.spec
    return (str(spec.folder), spec.configuration, str(spec.checkpoint))


def _box_corners(roi: Roi) -> np.ndarray:
    ranges = [(r.start, r.stop - 1) for r in roi]
    return np.array([[i, j, k, 1.0] for i in ranges[0] for j in ranges[1] for k in ranges[2]])


def _only_inside(labels: np.ndarray, roi: Roi) -> np.ndarray:
    result = np.zeros_like(labels)
    result[roi] = labels[roi]
    return result


def _unless_cancelled(function: Callable[..., T], should_cancel: Callable[[], bool], *args: Any) -> T:
    """``function(*args)`` in a helper thread, returning as soon as a cancel arrives (its result is then dropped).

    TS's resampling of a large CT runs for several seconds inside scipy (and the first float64 copy of it inside
    nibabel) where no cancel can be checked; waiting here keeps a cancel's latency under a second anyway.
    """
    return _wait_unless_cancelled(_RESAMPLING.submit(function, *args), should_cancel, drop=True)


def _wait_unless_cancelled(future: Future[T], should_cancel: Callable[[], bool], drop: bool = False) -> T:
    """Wait for ``future``, checking for a cancel every 0.1 s; with ``drop``, a cancel also unqueues it."""
    while True:
        try:
            return future.result(timeout=CANCEL_POLL_SECONDS)
        except FutureTimeout:
            if drop and should_cancel():
                future.cancel()  # only succeeds while queued: then it never holds its inputs' memory
            _stop_if(should_cancel)


def _stop_if(should_cancel: Callable[[], bool]) -> None:
    if should_cancel():
        raise Cancelled("segmentation cancelled")


def _cancel_checker(cancel: CancelSignal) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


class _Progress:
    """Maps a sub-task's 0..1 progress into a span of the caller's 0..1 progress."""

    def __init__(
        self, callback: ProgressCallback | None, start: float = 0.0, stop: float = 1.0, prefix: str = ""
    ) -> None:
        self.callback = callback
        self.start = start
        self.stop = stop
        self.prefix = prefix

    def __call__(self, fraction: float, message: str) -> None:
        if self.callback is not None:
            text = f"{self.prefix}: {message}" if self.prefix else message
            self.callback(self.start + (self.stop - self.start) * min(max(fraction, 0.0), 1.0), text)

    def span(self, start: float, stop: float, prefix: str = "") -> _Progress:
        width = self.stop - self.start
        return _Progress(
            self.callback, self.start + width * start, self.start + width * stop, prefix or self.prefix
        )
