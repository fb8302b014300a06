"""The paper's baseline: channel pruning that zeroes each conv's output channels with the smallest L2 norm.

The same fraction of output channels is zeroed in every compressible conv (weights and bias), except the
network's output layer, whose channels are the class logits. To compare with Tucker at the same size
(``prune_to_match``), the fraction is the smallest whose parameter count (non-zero conv parameters plus the
norms') does not exceed the Tucker network's. A pruned network's parameters and FLOPs are those of its
non-zero weights, as if the zeroed output channels were removed (the dense copy that runs still multiplies
them); FLOPs of the other ops (norms) are the original's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tuckerscope.core.compression.conv_layers import ConvLayer, conv_modules, copy_with_replacements
from tuckerscope.core.compression.counting import (
    CONV,
    LayerCost,
    NetworkCost,
    count_network,
    non_conv_params,
    original_layer_cost,
)
from tuckerscope.core.compression.tucker import TuckerEngine, layer_kernel
from tuckerscope.core.runtime.errors import UserError


class PruningError(UserError):
    """A pruning fraction or budget that cannot be applied."""


@dataclass(frozen=True)
class PrunedNetwork:
    network: nn.Module
    fraction: float
    conv_params_kept: int
    conv_params_target: int | None
    channels_zeroed: dict[str, int]
    cost: NetworkCost


def prunable_layers(engine: TuckerEngine) -> list[ConvLayer]:
    """The engine's layers minus the output layer (the last conv to run), whose channels are class logits."""
    if engine.layer_shapes:
        output_layer = list(engine.layer_shapes)[-1]
        return [layer for layer in engine.layers if layer.name != output_layer]
    return list(engine.layers)


def channels_to_zero(layer: ConvLayer, fraction: float) -> int:
    """floor(fraction x C_out), keeping at least one channel."""
    return min(layer.out_channels - 1, math.floor(layer.out_channels * fraction + 1e-9))


def kept_conv_params(engine: TuckerEngine, fraction: float) -> int:
    """Non-zero conv parameters after pruning every prunable layer by ``fraction`` (others counted whole)."""
    prunable = {layer.name for layer in prunable_layers(engine)}
    total = 0
    for layer in engine.layers:
        zeroed = channels_to_zero(layer, fraction) if layer.name in prunable else 0
        per_channel = layer.in_channels // layer.groups * layer.kernel_volume + (1 if layer.has_bias else 0)
        total += (layer.out_channels - zeroed) * per_channel
    return total


def fraction_for_budget(engine: TuckerEngine, target_params: int) -> float:
    """The smallest pruning fraction whose kept conv parameters do not exceed ``target_params``."""
    if target_params >= kept_conv_params(engine, 0.0):
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if kept_conv_params(engine, middle) > target_params:
            low = middle
        else:
            high = middle
    return high


def prune(engine: TuckerEngine, fraction: float) -> PrunedNetwork:
    """A copy of the engine's network with the smallest-norm ``fraction`` of output channels zeroed."""
    if not 0.0 <= fraction < 1.0:
        raise PruningError(f"pruning fraction must be in [0, 1), got {fraction}")
    modules = conv_modules(engine.network)
    replacements: dict[str, nn.Module] = {}
    zeroed_counts: dict[str, int] = {}
    for layer in prunable_layers(engine):
        count = channels_to_zero(layer, fraction)
        if count == 0:
            continue
        original = modules[layer.name]
        kernel = layer_kernel(original)
        norms = kernel.reshape(layer.out_channels, -1).norm(dim=1)
        zeroed = torch.argsort(norms)[:count]
        replacements[layer.name] = _with_channels_zeroed(original, zeroed, layer.transposed)
        zeroed_counts[layer.name] = count
    network = copy_with_replacements(engine.network, replacements)
    kept = kept_conv_params(engine, fraction)
    return PrunedNetwork(network, fraction, kept, None, zeroed_counts, pruned_cost(engine, zeroed_counts))


def prune_to_match(engine: TuckerEngine, budget: int | Mapping[str, tuple[int, int]]) -> PrunedNetwork:
    """The paper's baseline at a matched budget: pruned to at most ``budget`` parameters.

    ``budget`` is a parameter count as count_network counts it, or Tucker ranks, meaning that Tucker
    network's count (``count_network(engine, ranks).params``): the paper's comparison at the same DF.
    """
    params_target = budget if isinstance(budget, int) else count_network(engine, budget).params
    conv_target = params_target - non_conv_params(engine.network)
    if conv_target <= 0:
        raise PruningError(f"a budget of {params_target:,} parameters leaves no conv weights")
    pruned = prune(engine, fraction_for_budget(engine, conv_target))
    return PrunedNetwork(
        pruned.network,
        pruned.fraction,
        pruned.conv_params_kept,
        conv_target,
        pruned.channels_zeroed,
        pruned.cost,
    )


def pruned_cost(engine: TuckerEngine, channels_zeroed: Mapping[str, int]) -> NetworkCost:
    """Parameters and FLOPs of the non-zero weights, per layer and in total (other ops as the original's)."""
    original = count_network(engine)
    layers: dict[str, LayerCost] = {}
    shapes = engine.layer_shapes or {}  # count_network above needs them
    for layer in engine.layers:
        cost = original_layer_cost(layer, shapes[layer.name])
        kept = layer.out_channels - channels_zeroed.get(layer.name, 0)
        layers[layer.name] = LayerCost(
            layer.params * kept // layer.out_channels, cost.flops * kept // layer.out_channels
        )
    by_op = dict(original.flops_by_op)
    by_op[CONV] += sum(c.flops for c in layers.values()) - sum(c.flops for c in original.layers.values())
    return NetworkCost(
        params=non_conv_params(engine.network) + sum(c.params for c in layers.values()),
        flops=sum(by_op.values()),
        conv_flops=by_op[CONV],
        flops_by_op=by_op,
        layers=layers,
    )


def _with_channels_zeroed(module: nn.Module, channels: torch.Tensor, transposed: bool) -> nn.Module:
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    weight = module.weight.detach().clone()
    if transposed:
        weight[:, channels] = 0.0
    else:
        weight[channels] = 0.0
    clone.weight = nn.Parameter(weight, requires_grad=False)
    if module.bias is not None:
        bias = module.bias.detach().clone()
        bias[channels] = 0.0
        clone.bias = nn.Parameter(bias, requires_grad=False)
    return clone
