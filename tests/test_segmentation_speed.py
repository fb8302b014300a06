"""The cheaper forms of the pipeline's steps give nnU-Net's own numbers bit for bit: the per-class aggregation,
the slab-wise argmax, the preprocessed input shared by experts with the same preprocessing; the stage profile
names every stage; originals persist on disk keyed by CT, model and options."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch

from tiny_model import write_tiny_model
from tuckerscope.core.models.model_folder import load_expert, spec_from_folder
from tuckerscope.core.segmentation import segmenter as segmenter_module
from tuckerscope.core.segmentation.original_cache import OriginalCache, volume_content_hash
from tuckerscope.core.segmentation.profile import STAGES, StageProfile
from tuckerscope.core.segmentation.segmenter import (
    InferenceOptions,
    Segmenter,
    _accumulate,
    _logits_to_segmentation,
    recipe_for,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def expert(folder):
    return load_expert(spec_from_folder(folder))


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    data = np.where(rng.random((38, 34, 32)) < 0.5, 40.0, -1000.0) + rng.normal(0, 30, (38, 34, 32))
    data[8:30, 6:28, 4:28] += 120
    return data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])


def test_per_class_accumulation_rounds_as_nnunet():
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn((3, 12, 10, 9), generator=generator) * 4).half()
    gaussian = (torch.rand((6, 5, 4), generator=generator) * 10).half()
    prediction = torch.randn((3, 6, 5, 4), generator=generator) * 7
    slicer = (slice(None), slice(3, 9), slice(2, 7), slice(4, 8))
    theirs = logits.clone()
    weighted = prediction.clone()
    weighted *= gaussian
    theirs[slicer] += weighted
    mine = logits.clone()
    _accumulate(mine, prediction.clone(), gaussian.float(), slicer)
    assert torch.equal(mine, theirs)
    assert not torch.equal(mine, logits)


def test_slab_argmax_equals_nnunets_export_with_ties(expert, ct):
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    prepared = Segmenter(*ct)._prepare(expert, recipe_for(expert))
    shape = prepared.properties["shape_after_cropping_and_before_resampling"]
    heads = prepared.predictor.label_manager.num_segmentation_heads
    generator = torch.Generator().manual_seed(2)
    padded = torch.round(torch.randn((heads, shape[0] + 2, shape[1] + 3, shape[2] + 1), generator=generator))
    logits = padded.half()[:, 1:-1, 2:-1, :-1]  # a strided view, as the sliding window hands it over
    assert (logits[0] == logits[1]).float().mean() > 0.2  # many ties: the first maximum must win, as in numpy
    theirs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.numpy(),
        prepared.predictor.plans_manager,
        prepared.predictor.configuration_manager,
        prepared.predictor.label_manager,
        dict(prepared.properties),
        return_probabilities=False,
    )
    mine = _logits_to_segmentation(prepared, logits)
    assert mine.dtype == theirs.dtype
    np.testing.assert_array_equal(mine, theirs)


def test_experts_with_the_same_preprocessing_share_one_input(folder, expert, ct, tmp_path):
    twin_folder = shutil.copytree(folder, tmp_path / "twin")
    twin = load_expert(spec_from_folder(twin_folder))
    segmenter = Segmenter(*ct)
    first = segmenter._prepare(expert, recipe_for(expert))
    second = segmenter._prepare(twin, recipe_for(twin))
    assert second.data is first.data and second.predictor is not first.predictor
    other = load_expert(spec_from_folder(shutil.copytree(folder, tmp_path / "other")))
    other.plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    third = segmenter._prepare(other, recipe_for(other))
    assert third.data is not first.data


def test_profile_names_every_stage_the_segmenter_runs(expert, ct):
    profile = StageProfile()
    Segmenter(*ct, profile=profile).segment(expert)
    expected = {"reorient", "normalise", "tiles (network)", "aggregation", "argmax", "resample back"}
    assert expected <= set(profile.seconds) <= set(STAGES)
    assert profile.counts["tiles (network)"] == 4  # the test CT needs four tiles
    report = profile.report()
    assert "tiles (network)" in report and "kernel" in report
    if sys.platform.startswith("linux"):  # the process's peak RSS beside every stage
        assert set(profile.peak_kb) == set(profile.seconds) and min(profile.peak_kb.values()) > 0
        assert f"peak {max(profile.peak_kb.values()) / 1024**2:5.2f} GB" in report


def test_original_cache_persists_across_segmenters(expert, ct, tmp_path, monkeypatch):
    cache = OriginalCache(tmp_path / "cache")
    labels = Segmenter(*ct, original_cache=cache).segment(expert)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1

    def no_tiles(*_args, **_kwargs):
        raise AssertionError("the original should have come from the disk cache")

    monkeypatch.setattr(segmenter_module, "_TileRun", no_tiles)
    again = Segmenter(ct[0].copy(), ct[1], original_cache=OriginalCache(tmp_path / "cache"))
    np.testing.assert_array_equal(again.segment(expert), labels)
    with pytest.raises(AssertionError, match="disk cache"):  # other options: another entry
        again.segment(expert, options=InferenceOptions(precision="bf16"))
    changed = ct[0].copy()
    changed[0, 0, 0] += 1
    with pytest.raises(AssertionError, match="disk cache"):  # another CT: another entry
        Segmenter(changed, ct[1], original_cache=cache).segment(expert)


def test_cache_entries_are_atomic_capped_and_clearable(tmp_path):
    cache = OriginalCache(tmp_path, max_bytes=2500)
    keys = [cache.key(volume_content_hash(np.full((4, 4, 4), i), np.eye(4)), "model", ("fp32",)) for i in range(3)]
    assert len(set(keys)) == 3
    first = np.arange(1000, dtype=np.uint8).reshape(10, 10, 10)
    assert cache.put(keys[0], first)
    np.testing.assert_array_equal(cache.get(keys[0], (10, 10, 10)), first)
    assert cache.get(keys[0], (10, 10, 9)) is None  # another shape is no hit
    assert cache.get(keys[1]) is None
    # a half-written leftover is never read; a damaged entry is a miss and is removed
    (tmp_path / f".{keys[1]}.npy.123.part").write_bytes(b"\x93NUMPY")
    (tmp_path / f"{keys[1]}.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert cache.get(keys[1]) is None and not (tmp_path / f"{keys[1]}.npy").exists()
    # the cap: the least recently used entry goes first
    os.utime(tmp_path / f"{keys[0]}.npy", (1, 1))
    assert cache.put(keys[1], first) and cache.put(keys[2], first)
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is not None
    assert cache.size_bytes() <= 2500
    assert not cache.put(keys[0], np.zeros(5000, np.uint8))  # larger than the cap itself
    assert cache.clear() >= 2 and cache.size_bytes() == 0
    assert not list(tmp_path.iterdir())


def dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    return {
        int(c): 2 * ((a == c) & (b == c)).sum() / ((a == c).sum() + (b == c).sum())
        for c in np.union1d(np.unique(a), np.unique(b))
        if c != 0
    }


def test_openvino_runs_original_and_compressed_networks_and_caches_the_export(expert, ct, tmp_path, monkeypatch):
    """OpenVINO from the paper's three-conv form agrees with PyTorch fp32 (Dice >= 0.999 per class here), for the
    original and a Tucker-compressed network; the IR is converted once and read back from the cache folder."""
    ov = pytest.importorskip("openvino")
    from tuckerscope.core.compression.ranks import df_ranks, ranks_of
    from tuckerscope.core.compression.tucker import TuckerEngine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    compressed = TuckerEngine(expert.network, (1, 1, *expert.patch_size))
    compressed.factorise()
    network = compressed.compress(ranks_of(df_ranks(compressed.layers, 0.5))).eval()
    segmenter = Segmenter(*ct)
    for swapped in (None, network):
        reference = segmenter.segment(expert, swapped)
        labels = segmenter.segment(expert, swapped, options=InferenceOptions(runtime="openvino"))
        assert len(np.unique(reference)) == 3
        assert min(dice_per_class(labels, reference).values()) >= 0.999
    assert len(segmenter._runtimes.compiled) == 1  # the original's compiled model was dropped for the next
    exports = list((tmp_path / "xdg").rglob("*.xml"))
    assert len(exports) == 2

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted again instead of reading the cached export")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    again = Segmenter(*ct).segment(expert, network, options=InferenceOptions(runtime="openvino"))
    assert min(dice_per_class(again, reference).values()) >= 0.999
    auto = Segmenter(*ct).segment(expert, network, options=InferenceOptions(runtime="auto"))
    assert min(dice_per_class(auto, reference).values()) >= 0.999
    assert list((tmp_path / "xdg").rglob("runtime_choices.json"))


def test_runtime_options_are_checked():
    from tuckerscope.core.segmentation.segmenter import SegmentationError

    with pytest.raises(SegmentationError, match="runtime"):
        InferenceOptions(runtime="tensorrt")
    with pytest.raises(SegmentationError, match="CPU only"):
        InferenceOptions(runtime="openvino", device="cuda")
    assert InferenceOptions(runtime="openvino").cache_key() != InferenceOptions().cache_key()


def test_segment_profile_prints_every_stage(folder, ct, tmp_path, capsys, monkeypatch):
    import nibabel as nib

    from tuckerscope.core.cli import main as cli

    monkeypatch.setattr(cli, "COMMANDS", ("segment",))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct[0].astype(np.int16), ct[1]), path)
    argv = ["segment", "-i", str(path), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(folder)]
    assert cli.main([*argv, "--quiet", "--threads", "1", "--profile"]) == 0
    printed = capsys.readouterr().err
    for stage in ("read", "load experts", "tiles (network)", "aggregation", "argmax", "resample back", "write"):
        assert f"  {stage} " in printed
    assert "user" in printed and "kernel" in printed


def test_tile_outputs_are_contiguous_for_the_per_class_aggregation(expert, ct):
    """A channels_last_3d network (compressed experts on the CPU) hands its output over in plain layout: per-class
    views of a channel-interleaved tile made the aggregation ten times slower."""
    from tuckerscope.core.segmentation.segmenter import _TileRun

    prepared = Segmenter(*ct)._prepare(expert, recipe_for(expert))
    run = _TileRun(prepared, expert.network, InferenceOptions(channels_last=True), lambda: False)
    assert run.channels_last
    with run._network_on(torch.device("cpu")), torch.inference_mode():
        output = run._predict_tile(run.slicers[0], torch.device("cpu"))
    assert output.is_contiguous()


def test_openvino_export_traced_small_runs_the_full_patch(expert, tmp_path):
    """The export traces a small input and OpenVINO re-infers the patch's shapes: same outputs as PyTorch."""
    pytest.importorskip("openvino")
    from tuckerscope.core.segmentation.runtimes import OpenVinoTiles, _small_example

    shape = (1, 1, 64, 96, 64)
    assert _small_example(shape) == (1, 1, 32, 32, 32)
    tiles = OpenVinoTiles(expert.network, shape, "fp32", threads=1, folder=tmp_path)
    tile = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        reference = expert.network.eval()(tile)
    output = tiles(tile)
    assert output.shape == reference.shape
    assert float((output - reference).abs().max()) < 1e-3 * float(reference.abs().max())
