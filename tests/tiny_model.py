"""A tiny nnU-Net v2 results folder (new plans format, random weights) for tests that need a model quickly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tuckerscope.core.models.model_folder import build_network, nnunet_checkpoint

TINY_LABELS = {"background": 0, "liver": 1, "spleen": 2}


def tiny_plans(features: tuple[int, ...] = (8, 16, 32)) -> dict[str, Any]:
    stages = len(features)
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": [32, 32, 32],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "mean": 40.0,
                "std": 200.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 1500.0,
                "median": 40.0,
                "min": -1024.0,
                "max": 3000.0,
            }
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [32, 32, 32],
                "spacing": [3.0, 3.0, 3.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": stages,
                        "features_per_stage": list(features),
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
                "batch_dice": False,
            }
        },
    }


def tiny_dataset_json(labels: dict[str, int] = TINY_LABELS) -> dict[str, Any]:
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}


def write_tiny_model(
    root: Path,
    plans: dict[str, Any] | None = None,
    dataset_json: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres under ``root``; return that folder."""
    plans = plans or tiny_plans()
    dataset_json = dataset_json or tiny_dataset_json()
    folder = Path(root) / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    if checkpoint is None:
        torch.manual_seed(seed)
        network = build_network(plans, dataset_json)
        checkpoint = nnunet_checkpoint(
            network.state_dict(), plans, dataset_json, mirroring_axes=(0, 1, 2), epoch=1
        )
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder
