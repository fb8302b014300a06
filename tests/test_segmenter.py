"""The segmentation pipeline on a tiny nnU-Net model: nnU-Net's own numbers, any orientation, ROI first,
swapped networks, caching, progress and cancellation."""

from __future__ import annotations

import copy
import threading

import nibabel as nib
import numpy as np
import pytest
import torch

from tiny_model import write_tiny_model
from tuckerscope.core.models.model_folder import LoadedExpert, load_expert, spec_from_folder
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.segmentation.segmenter import (
    InferenceOptions,
    SegmentationError,
    Segmenter,
    _AggregationBuffer,
    _Progress,
    _TileRun,
    recipe_for,
    segment_with_expert,
    slab_roi,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def expert(tmp_path_factory) -> LoadedExpert:
    return load_expert(spec_from_folder(write_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)))


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume (air around a soft-tissue body with a bright spine) at 3 mm: 4 tiles of 32^3."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(38), np.arange(34), np.arange(32), indexing="ij")
    body = ((x - 19) / 16) ** 2 + ((y - 17) / 13) ** 2 < 1
    data = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, x.shape)
    data[(np.abs(x - 19) < 3) & (np.abs(y - 24) < 3)] = 400
    data[8:16, 8:14, :] += 80
    return data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])


@pytest.fixture(scope="module")
def reference(expert, ct) -> np.ndarray:
    return Segmenter(*ct).segment(expert)


def nnunet_own_prediction(expert: LoadedExpert, data: np.ndarray, spacing: float) -> np.ndarray:
    """What nnU-Net's predict_single_npy_array returns for a canonical (RAS) volume, back in x, y, z order."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    plans = PlansManager(expert.plans)
    predictor.manual_initialization(
        expert.network,
        plans,
        plans.get_configuration("3d_fullres"),
        [expert.network.state_dict()],
        expert.dataset_json,
        expert.trainer_name,
        None,
    )
    seg = predictor.predict_single_npy_array(data.transpose(2, 1, 0)[None], {"spacing": [spacing] * 3})
    return np.asarray(seg).transpose(2, 1, 0)


def test_equals_nnunets_own_predictor(expert, ct, reference):
    expected = nnunet_own_prediction(expert, ct[0], 3.0)
    np.testing.assert_array_equal(reference, expected)
    assert len(np.unique(reference)) == 3  # the comparison is not between two all-background maps


def test_sliding_window_logits_are_bitwise_nnunets(expert, ct):
    segmenter = Segmenter(*ct)
    prepared = segmenter._prepare(expert, recipe_for(expert))
    mine = _TileRun(prepared, expert.network, InferenceOptions(), lambda: False).logits(None, _Progress(None))
    prepared.predictor.network = expert.network
    theirs = prepared.predictor.predict_sliding_window_return_logits(prepared.data)
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    "affine",
    [
        np.array([[-3.0, 0, 0, 80], [0, -3.0, 0, 60], [0, 0, 3.0, -20], [0, 0, 0, 1]]),  # LPS-like (DICOM)
        np.array([[0, 0, 3.0, 0], [3.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]]),  # permuted and flipped
    ],
)
def test_any_orientation_gives_the_same_anatomy(expert, ct, reference, affine):
    """Store the same RAS volume with another axis order: labels follow it voxel for voxel."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    ras_image = nib.Nifti1Image(ct[0], ct[1])
    transform = ornt_transform(io_orientation(ct[1]), io_orientation(affine))
    data = apply_orientation(ct[0], transform)
    new_affine = ct[1] @ inv_ornt_aff(transform, ct[0].shape)
    assert nib.aff2axcodes(new_affine) == nib.aff2axcodes(affine)
    labels = Segmenter(data, new_affine).segment(expert)
    np.testing.assert_array_equal(labels, apply_orientation(reference, transform))
    assert ras_image.shape == reference.shape


def test_roi_first_is_exact_inside_the_roi_and_then_complete(expert, ct):
    other = copy.deepcopy(expert.network)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.05)
    segmenter = Segmenter(*ct)
    full = segmenter.segment(expert, other)
    roi = slab_roi(ct[0].shape, 2, 20, 3)
    calls = []
    first, last = segmenter.segment_roi_first(
        expert, other, roi=roi, progress=lambda fraction, message: calls.append(fraction)
    )
    assert not first.complete and last.complete
    np.testing.assert_array_equal(first.labels[roi], full[roi])
    assert not first.labels[:, :, :17].any() and not first.labels[:, :, 24:].any()
    np.testing.assert_array_equal(last.labels, full)
    assert calls == sorted(calls) and calls[-1] == 1.0


def test_swapped_network_changes_the_result_and_is_not_cached(expert, ct, reference):
    segmenter = Segmenter(*ct)
    original = segmenter.segment(expert)
    np.testing.assert_array_equal(original, reference)
    assert segmenter.segment(expert) is original  # cached
    other = copy.deepcopy(expert.network)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    swapped = segmenter.segment(expert, other)
    assert (swapped != original).any()
    assert segmenter.segment(expert) is original


def test_runs_share_one_aggregation_buffer(expert, ct, reference):
    """Every run sums into the same allocation, zeroed first: nothing of an earlier run's sums leaks in."""
    segmenter = Segmenter(*ct)
    other = copy.deepcopy(expert.network)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    segmenter.segment(expert, other)
    storage = segmenter._sums._storage.data_ptr()
    np.testing.assert_array_equal(segmenter.segment(expert), reference)
    assert segmenter._sums._storage.data_ptr() == storage


def test_aggregation_buffer_grows_only_when_a_run_needs_more():
    sums = _AggregationBuffer()
    logits, weights = sums.zeros(3, (4, 5, 6))
    assert logits.shape == (3, 4, 5, 6) and weights.shape == (4, 5, 6) and logits.dtype == torch.half
    logits.fill_(1)
    weights.fill_(2)
    fewer, fewer_weights = sums.zeros(2, (4, 5, 6))
    assert fewer.data_ptr() == logits.data_ptr()
    assert not fewer.any() and not fewer_weights.any()
    more, more_weights = sums.zeros(5, (4, 5, 6))
    assert more.shape == (5, 4, 5, 6) and not more.any() and not more_weights.any()


def test_cancel_with_event_and_callable(expert, ct):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        Segmenter(*ct).segment(expert, cancel=event)
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        Segmenter(*ct).segment(expert, cancel=lambda: next(calls) >= 2)


def test_bf16_and_channels_last_run(expert, ct, reference):
    labels = Segmenter(*ct).segment(
        expert, options=InferenceOptions(precision="bf16", channels_last=True, threads=1)
    )
    assert labels.shape == reference.shape
    assert (labels == reference).mean() > 0.9
    assert torch.get_num_threads() >= 1


def test_one_shot_roi(expert, ct, reference):
    roi = (slice(5, 30), slice(0, 34), slice(10, 12))
    labels = segment_with_expert(*ct, expert, roi=roi)
    np.testing.assert_array_equal(labels[roi], reference[roi])
    assert labels.sum() == labels[roi].sum()


def test_bad_options_and_rois(ct):
    with pytest.raises(SegmentationError, match="precision"):
        InferenceOptions(precision="int8")
    with pytest.raises(SegmentationError, match="device"):
        InferenceOptions(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SegmentationError, match="no CUDA"):
            InferenceOptions(device="cuda").torch_device()
    with pytest.raises(SegmentationError, match="outside the volume"):
        slab_roi((10, 10, 10), 2, 12, 1)
    with pytest.raises(SegmentationError, match="3D"):
        Segmenter(np.zeros((4, 4)), np.eye(4))


def test_demo_models_segment_a_phantom_if_shipped():
    """The shipped demo experts (if present) find the phantom's organs through the pipeline."""
    from tuckerscope.core.imaging.phantom import make_phantom
    from tuckerscope.core.models.model_folder import find_result_folders
    from tuckerscope.core.models.model_sources import demo_source
    from tuckerscope.resources import DEMO_MODELS_DIR

    if not find_result_folders(DEMO_MODELS_DIR):
        pytest.skip("no demo models shipped yet")
    source = demo_source()
    phantom = make_phantom(seed=123_456)
    segmenter = Segmenter(phantom.ct, phantom.affine)
    experts = source.load()
    organs = next(e for e in experts if "organ" in e.name)
    labels = segmenter.segment(organs)
    liver = next(k for k, v in organs.class_names.items() if v == "liver")
    truth = phantom.mask("liver")
    found = labels == liver
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.8


def test_models_outside_ts_use_nnunets_recipe(expert):
    assert recipe_for(expert).resample_mm is None
    assert recipe_for(expert).tile_step_size == 0.5
