"""Parameters and FLOPs of original and compressed networks as nnU-Net runs them, counted as fvcore counts.

One FLOP is one multiply-add (fvcore's unit; torch.utils.flop_counter counts two). The paper counted with
fvcore's FlopCountAnalysis, whose default handles count these ops, and nothing else (activations, additions,
pooling and other elementwise ops are free):
  conv (any dim, transposed too)   batch x prod(weight shape) x prod(output spatial; input spatial if transposed)
  instance/group/layer norm        5 per input element with an affine weight, 4 without
  batch norm                       eval: 2 per element with affine, 1 without; training: as instance norm
  linear / matmul / mm             prod(input shape) x output features; addmm, bmm: n x k x m; einsum: its path
  upsample nearest / bilinear 2D   1 / 4 per output element; adaptive avg pool 2D: 1 per input element;
  grid sample                      4 per output element
Per op type the network is traced once per input size on the meta device (no arithmetic, no memory), the
convs the engine compresses are counted analytically per layer, so any ranks cost a sum, not a trace. A
compressed layer is counted as the paper's three convs, whatever shortcut runs it (a pointwise layer rebuilt
as its dense matrix, the norm folded into the last projection: tucker_conv.py, fused_norm.py); those
shortcuts only ever run fewer multiply-adds. Its norm still normalises C_out channels, so norm FLOPs do not
change with the ranks. Counts are for one patch of the plans' size; convs that do not run at inference
(deep-supervision heads) are not counted, and neither are their parameters.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from tuckerscope.core.compression.conv_layers import (
    CONV_TYPES,
    ConvLayer,
    LayerShapes,
    meta_copy,
    trace_layer_shapes,
)
from tuckerscope.core.compression.tucker import TuckerEngine

CONV = "conv"


@dataclass(frozen=True)
class LayerCost:
    params: int
    flops: int


@dataclass(frozen=True)
class NetworkCost:
    """Totals of one network on one patch, per op type, plus the per-layer part for the compressible convs.

    ``flops`` is fvcore's total (every op type in ``flops_by_op``); ``conv_flops`` the convolutions alone.
    """

    params: int
    flops: int
    conv_flops: int = 0
    flops_by_op: dict[str, int] = field(default_factory=dict)
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
    input_shape: tuple[int, ...] | None = None,
) -> NetworkCost:
    """Cost of the engine's network, compressed at ``ranks`` (None: the original).

    Mirrors TuckerEngine.compress: layers absent from ``ranks`` or at full rank on both modes stay original.
    ``input_shape`` (N, C, D, H, W) counts on another input size than the engine's.
    """
    input_shape = tuple(input_shape) if input_shape is not None else engine.input_shape
    if input_shape is None or engine.layer_shapes is None:
        raise ValueError(
            "counting needs the engine to know the input shape (TuckerEngine(network, input_shape))"
        )
    layer_shapes = (
        engine.layer_shapes
        if input_shape == tuple(engine.input_shape or ())
        else trace_layer_shapes(engine.network, input_shape)
    )
    ranks = ranks or {}
    layers = {}
    original_flops = 0
    for layer in engine.layers:
        shapes = layer_shapes[layer.name]
        original = original_layer_cost(layer, shapes)
        original_flops += original.flops
        r = ranks.get(layer.name)
        if r is None or (r[0] == layer.out_channels and r[1] == layer.in_channels):
            layers[layer.name] = original
        else:
            layers[layer.name] = tucker_layer_cost(layer, shapes, r[0], r[1])
    by_op = dict(op_flops(engine.network, input_shape))
    # convs the engine leaves alone (grouped ones) keep their traced count
    by_op[CONV] = by_op.get(CONV, 0) - original_flops + sum(c.flops for c in layers.values())
    return NetworkCost(
        params=non_conv_params(engine.network) + sum(c.params for c in layers.values()),
        flops=sum(by_op.values()),
        conv_flops=by_op[CONV],
        flops_by_op=by_op,
        layers=layers,
    )


def non_conv_params(network: nn.Module) -> int:
    """Parameters outside conv layers (norm scales and shifts), each tensor counted once."""
    conv_tensors = {id(p) for m in network.modules() if isinstance(m, CONV_TYPES) for p in m.parameters()}
    return sum(p.numel() for p in network.parameters() if id(p) not in conv_tensors)


_TRACED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], dict[str, int]]] = (
    weakref.WeakKeyDictionary()
)


def op_flops(network: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs per fvcore op type of one inference forward pass on ``input_shape`` (cached per network)."""
    per_shape = _TRACED.setdefault(network, {})
    key = tuple(int(n) for n in input_shape)
    if key not in per_shape:
        shadow = meta_copy(network).eval()  # as at inference: batch norm uses its running statistics
        counter = FvcoreOpCounter()
        with torch.no_grad(), counter:
            shadow(torch.empty(key, device="meta"))
        per_shape[key] = dict(counter.flops)
    return per_shape[key]


class FvcoreOpCounter(TorchFunctionMode):
    """Counts FLOPs per op type with fvcore's default per-op rules while a forward pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: Counter[str] = Counter()

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _RULES.get(func)
        if rule is not None:
            name, flops = rule(_Call(args, kwargs), out)
            if flops:
                self.flops[name] += int(flops)
        return out


@dataclass(frozen=True)
class _Call:
    args: tuple
    kwargs: Mapping[str, Any]

    def get(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)


def _numel(tensor: torch.Tensor) -> int:
    return math.prod(tensor.shape)


def _conv(transposed: bool) -> Callable[[_Call, torch.Tensor], int]:
    def count(call: _Call, out: torch.Tensor) -> int:
        x, weight = call.get(0, "input"), call.get(1, "weight")
        spatial = (x if transposed else out).shape[2:]
        return x.shape[0] * math.prod(weight.shape) * math.prod(spatial)

    return count


def _norm(affine_index: int, affine_name: str) -> Callable[[_Call, torch.Tensor], int]:
    def count(call: _Call, _out: torch.Tensor) -> int:
        return _numel(call.get(0, "input")) * (5 if call.get(affine_index, affine_name) is not None else 4)

    return count


def _batch_norm(call: _Call, out: torch.Tensor) -> int:
    if call.get(5, "training", False):
        return _norm(3, "weight")(call, out)
    return _numel(call.get(0, "input")) * (2 if call.get(3, "weight") is not None else 1)


def _matmul(call: _Call, _out: torch.Tensor) -> int:
    a, b = call.get(0, "input"), call.get(1, "other")
    return _numel(a) * b.shape[-1] if a.dim() >= 2 and b.dim() >= 2 else 0


def _addmm(call: _Call, _out: torch.Tensor) -> int:
    a, b = call.get(1, "mat1"), call.get(2, "mat2")
    return a.shape[0] * a.shape[1] * b.shape[1]


def _bmm(call: _Call, _out: torch.Tensor) -> int:
    a, b = call.get(0, "input"), call.get(1, "mat2")
    return math.prod(a.shape) * b.shape[-1]


def _linear(call: _Call, _out: torch.Tensor) -> int:
    return _numel(call.get(0, "input")) * call.get(1, "weight").shape[0]


def _einsum(call: _Call, _out: torch.Tensor) -> int:
    """fvcore's einsum rule: two batched-matmul forms exactly, otherwise half numpy's optimal-path count."""
    equation = call.args[0].replace(" ", "")
    operands = call.args[1] if len(call.args) == 2 and isinstance(call.args[1], (list, tuple)) else call.args[1:]
    shapes = [tuple(t.shape) for t in operands]
    letters = dict.fromkeys(c for c in equation if c.isalpha())
    canonical = equation.translate({ord(c): 97 + i for i, c in enumerate(letters)})
    if canonical == "abc,abd->acd":
        return math.prod(shapes[0]) * shapes[-1][-1]
    if canonical == "abc,adc->adb":
        return math.prod(shapes[0]) * shapes[-1][1]
    arrays = [np.broadcast_to(np.zeros(1), shape) for shape in shapes]  # no memory, any size
    report = np.einsum_path(canonical, *arrays, optimize="optimal")[1]
    line = next(line for line in report.split("\n") if "optimized flop" in line.lower())
    return int(float(line.split(":")[-1]) // 2)


def _interpolate(call: _Call, out: torch.Tensor) -> tuple[str, int]:
    """fvcore counts only the 2D nearest (1 per output) and bilinear (4 per output) upsampling kernels."""
    mode = call.get(3, "mode", "nearest")
    if call.get(0, "input").dim() != 4 or mode not in ("nearest", "bilinear"):
        return "", 0
    return f"upsample_{mode}2d", (1 if mode == "nearest" else 4) * _numel(out)


Rule = Callable[[_Call, torch.Tensor], tuple[str, int]]


def _named(name: str, count: Callable[[_Call, torch.Tensor], int]) -> Rule:
    return lambda call, out: (name, count(call, out))


_RULES: dict[Callable, Rule] = {
    **{f: _named(CONV, _conv(False)) for f in (F.conv1d, F.conv2d, F.conv3d)},
    **{f: _named(CONV, _conv(True)) for f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    F.instance_norm: _named("instance_norm", _norm(3, "weight")),
    F.group_norm: _named("group_norm", _norm(2, "weight")),
    F.layer_norm: _named("layer_norm", _norm(2, "weight")),
    F.batch_norm: _named("batch_norm", _batch_norm),
    F.linear: _named("linear", _linear),
    **{f: _named("matmul", _matmul) for f in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)},
    **{f: _named("mm", _matmul) for f in (torch.mm, torch.Tensor.mm)},
    **{f: _named("addmm", _addmm) for f in (torch.addmm, torch.Tensor.addmm)},
    **{f: _named("bmm", _bmm) for f in (torch.bmm, torch.Tensor.bmm)},
    torch.einsum: _named("einsum", _einsum),
    F.interpolate: _interpolate,
    F.adaptive_avg_pool2d: _named("adaptive_avg_pool2d", lambda call, _out: _numel(call.get(0, "input"))),
    F.grid_sample: _named("grid_sampler", lambda _call, out: 4 * _numel(out)),
}
