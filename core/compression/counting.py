"""Parameters and FLOPs of original and compressed networks, analytically, as nnU-Net runs them.

One FLOP is one multiply-add (as fvcore counts; torch.utils.flop_counter counts two). Only convolutions are
counted, as both counters do for these networks; norms, activations and additions are not. Counts are for one
patch of the plans' size; convs that do not run at inference (deep-supervision heads) are not counted, and
neither are their parameters. A compressed layer is counted as the paper's three convs, whatever shortcut runs
it (a pointwise layer rebuilt as its dense matrix, the norm folded into the last projection: tucker_conv.py,
fused_norm.py); those shortcuts only ever run fewer multiply-adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from tuckerscope.core.compression.conv_layers import CONV_TYPES, ConvLayer, LayerShapes
from tuckerscope.core.compression.tucker import TuckerEngine


@dataclass(frozen=True)
class LayerCost:
    params: int
    flops: int


@dataclass(frozen=True)
class NetworkCost:
    """Totals of one network on one patch, plus the per-layer part for the compressible convs."""

    params: int
    flops: int
    layers: dict[str, LayerCost] = field(default_factory=dict)


def original_layer_cost(layer: ConvLayer, shapes: LayerShapes) -> LayerCost:
    voxels = shapes.input_voxels if layer.transposed else shapes.output_voxels
    per_voxel = layer.out_channels * layer.in_channels // layer.groups * layer.kernel_volume
    return LayerCost(layer.params, per_voxel * voxels)


def tucker_layer_cost(layer: ConvLayer, shapes: LayerShapes, r_out: int, r_in: int) -> LayerCost:
    """Cost of the layer's three Tucker convs at (r_out, r_in)."""
    c_out, c_in = layer.out_channels, layer.in_channels
    params = (
        c_in * r_in + r_out * r_in * layer.kernel_volume + c_out * r_out + (c_out if layer.has_bias else 0)
    )
    core_voxels = shapes.input_voxels if layer.transposed else shapes.output_voxels
    flops = (
        c_in * r_in * shapes.input_voxels
        + r_out * r_in * layer.kernel_volume * core_voxels
        + c_out * r_out * shapes.output_voxels
    )
    return LayerCost(params, flops)


def count_network(
    engine: TuckerEngine,
    ranks: Mapping[str, tuple[int, int]] | None = None,
    layer_shapes: Mapping[str, LayerShapes] | None = None,
) -> NetworkCost:
    """Cost of the engine's network, compressed at ``ranks`` (None: the original).

    Mirrors TuckerEngine.compress: layers absent from ``ranks`` or at full rank on both modes stay original.
    ``layer_shapes`` (from conv_layers.trace_layer_shapes) counts on another input size than the engine's.
    """
    layer_shapes = layer_shapes if layer_shapes is not None else engine.layer_shapes
    if layer_shapes is None:
        raise ValueError(
            "counting needs the engine to know the input shape (TuckerEngine(network, input_shape))"
        )
    ranks = ranks or {}
    layers = {}
    for layer in engine.layers:
        shapes = layer_shapes[layer.name]
        r = ranks.get(layer.name)
        if r is None or (r[0] == layer.out_channels and r[1] == layer.in_channels):
            layers[layer.name] = original_layer_cost(layer, shapes)
        else:
            layers[layer.name] = tucker_layer_cost(layer, shapes, r[0], r[1])
    other = non_conv_params(engine.network)
    return NetworkCost(
        params=other + sum(c.params for c in layers.values()),
        flops=sum(c.flops for c in layers.values()),
        layers=layers,
    )


def non_conv_params(network: nn.Module) -> int:
    """Parameters outside conv layers (norm scales and shifts), each tensor counted once."""
    conv_tensors = {id(p) for m in network.modules() if isinstance(m, CONV_TYPES) for p in m.parameters()}
    return sum(p.numel() for p in network.parameters() if id(p) not in conv_tensors)
