"""The compressed-model manifest and the network structure it describes (no model folders here).

A compressed checkpoint carries a manifest naming every Tucker layer with its ranks and method. Loading a
model folder (model_folder.load_expert) reads it to build the compressed structure before the weights go in;
saving one (compressed_model.save_compressed) writes it. Both import this module, so the dependency is one way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from tuckerscope.core.compression.conv_layers import find_conv_layers
from tuckerscope.core.compression.tucker import network_with_tucker_layers
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.runtime.errors import UserError

MANIFEST_NAME = "tucker_compression.json"
CHECKPOINT_KEY = "tucker_compression"
FORMAT = "tuckerscope-tucker/1"


class CompressedModelError(UserError):
    """A compressed model folder that cannot be written or read back."""


def compression_manifest(network: nn.Module, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Plain-data description of the TuckerConvs in ``network`` (ranks and method per layer)."""
    layers = {
        module.layer_name: {"ranks": list(module.ranks), "method": module.method}
        for module in network.modules()
        if isinstance(module, TuckerConv)
    }
    methods = sorted({entry["method"] for entry in layers.values()})
    return {
        "format": FORMAT,
        "method": methods[0] if len(methods) == 1 else "mixed" if methods else "none",
        "layers": layers,
        **(dict(extra) if extra else {}),
    }


def with_compressed_structure(network: nn.Module, manifest: Mapping[str, Any]) -> nn.Module:
    """``network`` with the manifest's layers replaced by empty TuckerConvs, ready for load_state_dict."""
    if manifest.get("format") != FORMAT:
        raise CompressedModelError(
            f"unknown compressed-model format {manifest.get('format')!r}; expected {FORMAT}"
        )
    layers = {layer.name: layer for layer in find_conv_layers(network)}
    replacements: dict[str, TuckerConv] = {}
    entries = manifest.get("layers")
    if not isinstance(entries, dict):
        raise CompressedModelError("compression manifest has no 'layers' table")
    for name, entry in entries.items():
        layer = layers.get(name)
        try:
            r_out, r_in = (int(r) for r in entry["ranks"])
            method = str(entry.get("method", "hosvd-slice"))
        except (KeyError, TypeError, ValueError):
            raise CompressedModelError(
                f"compression manifest entry for {name!r} has no valid 'ranks'"
            ) from None
        if layer is None or not (1 <= r_out <= layer.out_channels and 1 <= r_in <= layer.in_channels):
            raise CompressedModelError(
                f"compression manifest does not fit the network: layer {name!r} {entry}"
            )
        replacements[name] = TuckerConv.empty(layer, r_out, r_in, method)
    return network_with_tucker_layers(network, replacements)
