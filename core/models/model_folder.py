"""nnU-Net v2 results folders: find them, build their networks from the plans, load weights safely.

nnU-Net's own loader resolves the trainer class by importing every trainer module (slow and fragile) and
unpickles the checkpoint with full pickle. Here the network is built straight from plans.json through
nnunetv2's plans handling, and the checkpoint is read with ``torch.load(weights_only=True)`` so that a
model file can never run code.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuckerscope.core.models.compressed_structure import CHECKPOINT_KEY, with_compressed_structure
from tuckerscope.core.runtime.errors import UserError

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
# plans.json names classes that nnU-Net imports and calls: only network and layer classes may be named there.
ALLOWED_NETWORK_PREFIX = "dynamic_network_architectures.architectures."
ALLOWED_LAYER_PREFIX = "torch.nn."


class ModelFolderError(UserError):
    """A model folder is missing, incomplete or unsafe; the message says what and how to fix it."""


@dataclass(frozen=True)
class ExpertSpec:
    """Where one nnU-Net model (an 'expert') lives on disk, before anything is loaded."""

    name: str
    folder: Path
    checkpoint: Path
    configuration: str = "3d_fullres"

    @property
    def plans_path(self) -> Path:
        return self.folder / "plans.json"

    @property
    def dataset_json_path(self) -> Path:
        return self.folder / "dataset.json"


@dataclass
class LoadedExpert:
    """An expert ready to run: its network in eval mode plus the plans it was trained with."""

    spec: ExpertSpec
    network: torch.nn.Module
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    trainer_name: str
    mirroring_axes: tuple[int, ...] | None
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def configuration(self) -> dict[str, Any]:
        return self.plans["configurations"][self.spec.configuration]

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.configuration["patch_size"])

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.configuration["spacing"])

    @property
    def class_names(self) -> dict[int, str]:
        """Label value -> class name, background excluded (region-based labels are not supported)."""
        return {int(v): k for k, v in self.labels.items() if int(v) != 0}


def read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{path.name} is missing in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise ModelFolderError(
            f"{path} holds a JSON {type(content).__name__}, not an object: it is not nnU-Net's"
        )
    return content


def expert_name_from_folder(folder: Path) -> str:
    """'Dataset291_TotalSegmentator_part1_organs_1559subj/...' -> 'organs'; 'Dataset901_DemoOrgans' -> 'demoorgans'."""
    dataset = folder.parent.name if folder.name.count("__") == 2 else folder.name
    match = re.match(r"Dataset\d+_(.+)", dataset)
    stem = match.group(1) if match else dataset
    part = re.search(r"part\d+_([a-z]+)", stem)
    if part:
        return part.group(1)
    if "3mm" in stem:
        return "total_3mm"
    return stem.lower()


def find_checkpoint(folder: Path, fold: int | str | None = None) -> Path:
    folds = [folder / f"fold_{fold}"] if fold is not None else sorted(folder.glob("fold_*"))
    for fold_dir in folds:
        for name in CHECKPOINT_NAMES:
            if (fold_dir / name).is_file():
                return fold_dir / name
    raise ModelFolderError(
        f"no fold_N/checkpoint_final.pth or checkpoint_best.pth in {folder}; "
        "copy the trained weights (e.g. from `totalseg_download_weights` on a machine with internet)"
    )


def spec_from_folder(folder: Path, name: str | None = None, fold: int | str | None = None) -> ExpertSpec:
    """Describe the nnU-Net results folder ``folder`` (the one holding plans.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise ModelFolderError(f"{required} is missing in {folder}: not an nnU-Net v2 results folder")
    configuration = _configuration_from_folder_name(folder.name)
    return ExpertSpec(
        name=name or expert_name_from_folder(folder),
        folder=folder,
        checkpoint=find_checkpoint(folder, fold),
        configuration=configuration,
    )


def find_result_folders(root: Path) -> list[Path]:
    """All nnU-Net results folders (holding plans.json and dataset.json) under ``root``, sorted."""
    root = Path(root)
    if (root / "plans.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("plans.json") if (p.parent / "dataset.json").is_file())


def _configuration_from_folder_name(folder_name: str) -> str:
    parts = folder_name.split("__")
    return parts[2] if len(parts) == 3 else "3d_fullres"


def build_network(
    plans: dict[str, Any], dataset_json: dict[str, Any], configuration: str = "3d_fullres"
) -> torch.nn.Module:
    """Build the network the plans describe (old UNet_class_name and new architecture formats alike).

    Deep supervision is off: these networks are used for inference only, as nnU-Net runs them.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    try:
        config = plans_manager.get_configuration(configuration)
    except (KeyError, RuntimeError) as exc:
        raise ModelFolderError(f"plans have no configuration {configuration!r} ({exc})") from None
    _check_importable_names(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
    )
    label_manager = plans_manager.get_label_manager(dataset_json)
    return get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans_manager, config, dataset_json),
        label_manager.num_segmentation_heads,
        allow_init=True,
        deep_supervision=False,
    )


def _check_importable_names(class_name: str, kwargs: dict[str, Any], imported_keys: list[str]) -> None:
    """Refuse plans that would make nnU-Net import and call anything but a network or layer class."""
    if not class_name.startswith(ALLOWED_NETWORK_PREFIX):
        raise ModelFolderError(
            f"plans.json names network class {class_name!r}, which is not a known nnU-Net network"
        )
    for key in imported_keys:
        value = kwargs.get(key)
        if value is not None and not str(value).startswith(ALLOWED_LAYER_PREFIX):
            raise ModelFolderError(f"plans.json sets {key} to {value!r}, which is not a torch.nn layer")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read an nnU-Net checkpoint as plain data; refuse anything that would need code to unpickle."""
    try:
        # torch warns on stderr about pickle protocols; the weights-only unpickler refuses what it cannot read.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFolderError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFolderError(
            f"refused to load {path}: it needs arbitrary Python objects to unpickle, which could run code "
            f"({first_line})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFolderError(f"checkpoint {path} is damaged or not a PyTorch file ({exc})") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelFolderError(f"checkpoint {path} has no 'network_weights': not an nnU-Net v2 checkpoint")
    return checkpoint


def nnunet_checkpoint(
    weights: dict[str, Any],
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    *,
    configuration: str = "3d_fullres",
    trainer_name: str = "nnUNetTrainer",
    mirroring_axes: tuple[int, ...] | list[int] | None = None,
    epoch: int = 0,
) -> dict[str, Any]:
    """The checkpoint dict nnU-Net v2 writes for fold 0, plain data only (loads with ``weights_only=True``)."""
    return {
        "network_weights": weights,
        "init_args": {
            "plans": plans,
            "configuration": configuration,
            "fold": 0,
            "dataset_json": dataset_json,
        },
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": mirroring_axes,
        "current_epoch": epoch,
    }


def load_expert(spec: ExpertSpec) -> LoadedExpert:
    """Build the expert's network from its plans and fill it with the checkpoint's weights."""
    plans = read_json(spec.plans_path)
    dataset_json = read_json(spec.dataset_json_path)
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelFolderError(f"dataset.json in {spec.folder} has no 'labels'")
    try:
        # On the meta device: no memory and no random initialisation for weights the checkpoint replaces anyway
        # (seconds per TS expert); load_state_dict(assign=True) below gives every tensor its real value.
        with torch.device("meta"):
            network = build_network(plans, dataset_json, spec.configuration)
    except ModelFolderError:
        raise
    except Exception as exc:  # nnunetv2 raises many types on malformed plans
        raise ModelFolderError(f"plans.json in {spec.folder} does not describe a network ({exc})") from None
    checkpoint = read_checkpoint(spec.checkpoint)
    if CHECKPOINT_KEY in checkpoint:  # written by compressed_model.save_compressed: swap in its layers
        network = with_compressed_structure(network, checkpoint[CHECKPOINT_KEY])
    weights = _strip_compile_prefix(checkpoint["network_weights"])
    _check_output_channels(weights, labels, spec)
    try:
        network.load_state_dict(weights, assign=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0]
        raise ModelFolderError(
            f"checkpoint {spec.checkpoint} does not match plans.json in {spec.folder}: {summary}"
        ) from None
    unset = [name for name, t in [*network.named_parameters(), *network.named_buffers()] if t.is_meta]
    if unset:
        raise ModelFolderError(f"checkpoint {spec.checkpoint} has no values for {', '.join(unset[:3])}")
    network.eval()
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return LoadedExpert(
        spec=spec,
        network=network,
        plans=plans,
        dataset_json=dataset_json,
        trainer_name=str(checkpoint.get("trainer_name", "nnUNetTrainer")),
        mirroring_axes=tuple(axes) if axes is not None else None,
        labels={str(k): int(v) for k, v in labels.items() if isinstance(v, int)},
    )


def _check_output_channels(
    weights: dict[str, torch.Tensor], labels: dict[str, Any], spec: ExpertSpec
) -> None:
    """A dataset.json whose labels disagree with the network's output layer would mislabel every voxel."""
    heads = sorted(k for k in weights if k.startswith("decoder.seg_layers.") and k.endswith(".weight"))
    if not heads:
        return
    channels = int(weights[max(heads, key=lambda k: int(k.split(".")[2]))].shape[0])
    if channels != len(labels):
        raise ModelFolderError(
            f"dataset.json in {spec.folder} lists {len(labels)} labels (background included) but the checkpoint's "
            f"network outputs {channels} channels: the two files belong to different models"
        )


def _strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints of torch.compile'd trainers prefix keys with '_orig_mod.'; nnU-Net strips it too."""
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}
