"""The shipped demo experts: real nnU-Net v2 results folders that load like TS models and segment unseen phantoms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tuckerscope.core.imaging.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, Phantom, make_phantom
from tuckerscope.core.models.model_folder import (
    expert_name_from_folder,
    find_result_folders,
    load_expert,
    spec_from_folder,
)
from tuckerscope.core.segmentation.segmenter import nnunet_predictor, segment_with_expert
from tuckerscope.resources import DEMO_MODELS_DIR

UNSEEN_SEED = (
    31_337  # neither a training seed (0-127) nor one of the held-out seeds the training script reports
)
MIN_DICE = 0.9
MAX_TOTAL_BYTES = 20 * 1000**2
FOLDERS = find_result_folders(DEMO_MODELS_DIR)
FOLDER_PATTERN = r"Dataset9\d\d_TuckerScopeDemo_part\d_([a-z]+)/nnUNetTrainer__nnUNetPlans__3d_fullres"


def folder_id(folder: Path) -> str:
    return expert_name_from_folder(folder)


@pytest.fixture(scope="module")
def unseen_phantom() -> Phantom:
    return make_phantom(UNSEEN_SEED)


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    return (
        2.0
        * np.count_nonzero(reference & prediction)
        / (np.count_nonzero(reference) + np.count_nonzero(prediction))
    )


def test_three_experts_in_totalsegmentator_layout():
    assert {expert_name_from_folder(f) for f in FOLDERS} == {"organs", "skeleton", "vessels"}
    for folder in FOLDERS:
        relative = folder.relative_to(DEMO_MODELS_DIR).as_posix()
        match = re.fullmatch(FOLDER_PATTERN, relative)
        assert match and match.group(1) == expert_name_from_folder(folder), relative
        assert (folder / "fold_0" / "checkpoint_final.pth").is_file()


def test_weights_together_stay_within_budget():
    total = sum(path.stat().st_size for path in DEMO_MODELS_DIR.rglob("*.pth"))
    assert 0 < total <= MAX_TOTAL_BYTES


@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_checkpoint_is_plain_data_in_nnunet_format(folder):
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert checkpoint["inference_allowed_mirroring_axes"] is None
    assert isinstance(checkpoint["current_epoch"], int)
    assert "optimizer_state" not in checkpoint
    init_args = checkpoint["init_args"]
    assert init_args["configuration"] == "3d_fullres" and init_args["fold"] == 0
    assert init_args["plans"] == json.loads((folder / "plans.json").read_text())
    assert init_args["dataset_json"] == json.loads((folder / "dataset.json").read_text())
    assert all(t.dtype == torch.float32 for t in checkpoint["network_weights"].values())


@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_plans_use_the_new_format_and_fit_the_phantom(folder):
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    architecture = configuration["architecture"]
    assert (
        architecture["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    )
    assert "UNet_class_name" not in configuration
    assert architecture["arch_kwargs"]["norm_op"].endswith("InstanceNorm3d")
    assert plans["image_reader_writer"] == "SimpleITKIO"
    assert plans["transpose_forward"] == plans["transpose_backward"] == [0, 1, 2]
    assert configuration["normalization_schemes"] == ["CTNormalization"]
    properties = plans["foreground_intensity_properties_per_channel"]["0"]
    assert properties["percentile_00_5"] < properties["mean"] < properties["percentile_99_5"]
    assert configuration["spacing"] == [DEFAULT_SPACING] * 3
    assert configuration["patch_size"] == list(DEFAULT_SHAPE[::-1])  # (z, y, x): one tile covers a phantom
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"]["background"] == 0


@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_expert_segments_an_unseen_phantom(folder, unseen_phantom):
    expert = load_expert(spec_from_folder(folder))
    labels = segment_with_expert(unseen_phantom.ct, unseen_phantom.affine, expert)
    truth = unseen_phantom.label_map(expert.class_names)
    scores = {name: dice(truth == value, labels == value) for value, name in expert.class_names.items()}
    low = {name: round(score, 3) for name, score in scores.items() if score < MIN_DICE}
    assert not low, f"{expert.name}: Dice below {MIN_DICE}: {low}"


def test_nnunet_predictor_gives_the_same_labels_as_the_app(unseen_phantom):
    """nnU-Net's own manual_initialization + predict_single_npy_array path agrees with the segmenter."""
    folder = next(f for f in FOLDERS if expert_name_from_folder(f) == "organs")
    expert = load_expert(spec_from_folder(folder))
    predictor = nnunet_predictor(expert, with_weights=True)
    image = unseen_phantom.ct.transpose(2, 1, 0)[None].astype(np.float32)
    spacing_zyx = list(unseen_phantom.spacing[::-1])
    nnunet_labels = predictor.predict_single_npy_array(image, {"spacing": spacing_zyx}, None, None, False)
    app_labels = segment_with_expert(unseen_phantom.ct, unseen_phantom.affine, expert)
    agreement = np.mean(np.asarray(nnunet_labels).transpose(2, 1, 0) == app_labels)
    assert agreement > 0.999
