"""Save a compressed expert as an nnU-Net-style results folder, and rebuild it from one.

Layout (what model_folder.spec_from_folder / load_expert read, so the segmentation pipeline runs it as is):
    OUT/<Dataset folder>/<trainer>__<plans>__<configuration>/plans.json, dataset.json   (copied)
    OUT/<Dataset folder>/<trainer>__<plans>__<configuration>/tucker_compression.json    (the manifest)
    OUT/.../fold_0/checkpoint_final.pth: nnU-Net's checkpoint keys, the compressed network's state dict and
        the manifest under 'tucker_compression'; only tensors, strings, numbers, lists and dicts, so it loads
        with torch.load(weights_only=True).
The manifest names every compressed layer with its ranks and method; loading builds the plain network from
plans.json, swaps those layers for empty TuckerConvs of the same ranks and loads the state dict strictly.
nnU-Net's own predictor cannot load such a folder (it would build the uncompressed network).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuckerscope.core.models.compressed_structure import (
    CHECKPOINT_KEY,
    MANIFEST_NAME,
    CompressedModelError,
    compression_manifest,
)
from tuckerscope.core.models.model_folder import LoadedExpert, nnunet_checkpoint

__all__ = ["MANIFEST_NAME", "CompressedModelError", "save_compressed"]


def save_compressed(
    expert: LoadedExpert,
    network: nn.Module,
    out_dir: Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``network`` (a compressed copy of ``expert``'s network) under ``out_dir``; returns the folder."""
    source = expert.spec.folder
    folder = Path(out_dir) / source.parent.name / source.name
    if folder.resolve() == source.resolve():
        raise CompressedModelError(f"refusing to overwrite the original model folder {source}")
    try:
        (folder / "fold_0").mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(source / name, folder / name)
    except OSError as exc:
        raise CompressedModelError(
            f"cannot write the compressed model to {folder} ({exc.strerror})"
        ) from None
    manifest = compression_manifest(
        network, {"source_folder": str(source), "expert": expert.name, **(extra or {})}
    )
    checkpoint = nnunet_checkpoint(
        _own_tensors(network.state_dict(keep_vars=True)),
        expert.plans,
        expert.dataset_json,
        configuration=expert.spec.configuration,
        trainer_name=expert.trainer_name,
        mirroring_axes=list(expert.mirroring_axes) if expert.mirroring_axes else None,
    )
    checkpoint[CHECKPOINT_KEY] = manifest
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return folder


def _own_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Compact copies of a state dict's tensors: views of the engine cache would save the whole cache.

    A tensor reachable under two keys (nnU-Net's double registration) stays one tensor, so it is stored once.
    """
    copies: dict[int, torch.Tensor] = {}
    result = {}
    for key, tensor in state.items():
        if id(tensor) not in copies:
            copies[id(tensor)] = tensor.detach().contiguous().clone()
        result[key] = copies[id(tensor)]
    return result
