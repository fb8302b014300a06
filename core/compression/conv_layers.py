"""Find the 3D convolutions of a network once each, learn which ones run and on what shapes, and swap them.

nnU-Net's ConvDropoutNormReLU registers its conv twice (as ``.conv`` and inside ``.all_modules``) and the
decoder holds a reference to the encoder, so naive module walks see some convs twice. Everything here works
on module identity: one ``ConvLayer`` per conv object, with every attribute slot that points at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

CONV_TYPES = (nn.Conv3d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class ConvLayer:
    """One Conv3d/ConvTranspose3d of a network, in the layer's own channel terms (not the weight's axes)."""

    name: str
    transposed: bool
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    groups: int
    has_bias: bool
    slots: tuple[str, ...]

    @property
    def kernel_volume(self) -> int:
        volume = 1
        for k in self.kernel_size:
            volume *= int(k)
        return volume

    @property
    def is_pointwise(self) -> bool:
        return self.kernel_volume == 1 and all(s == 1 for s in self.stride)

    @property
    def params(self) -> int:
        return self.out_channels * self.in_channels // self.groups * self.kernel_volume + (
            self.out_channels if self.has_bias else 0
        )


@dataclass(frozen=True)
class LayerShapes:
    """Spatial input and output size of one conv when the network runs on a given patch."""

    input_spatial: tuple[int, ...]
    output_spatial: tuple[int, ...]

    @property
    def input_voxels(self) -> int:
        return _product(self.input_spatial)

    @property
    def output_voxels(self) -> int:
        return _product(self.output_spatial)


def find_conv_layers(network: nn.Module) -> list[ConvLayer]:
    """Every 3D conv of ``network`` exactly once, in forward registration order, named by its first path."""
    slots: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for parent_name, parent in network.named_modules():
        for child_name, child in parent._modules.items():
            if isinstance(child, CONV_TYPES):
                path = f"{parent_name}.{child_name}" if parent_name else child_name
                slots.setdefault(id(child), []).append(path)
                modules[id(child)] = child
    return [_describe(modules[key], tuple(paths)) for key, paths in slots.items()]


def conv_modules(network: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> the conv module object, with the same names as ``find_conv_layers``."""
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for parent_name, parent in network.named_modules():
        for child_name, child in parent._modules.items():
            if isinstance(child, CONV_TYPES) and id(child) not in seen:
                seen.add(id(child))
                found[f"{parent_name}.{child_name}" if parent_name else child_name] = child
    return found


def trace_layer_shapes(network: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerShapes]:
    """Shapes of the convs that actually run on an input of ``input_shape`` (N, C, D, H, W).

    Runs the forward pass of a copy whose tensors live on the meta device, so it costs no arithmetic and no
    memory even at full patch size. Convs that do not run (deep-supervision heads when deep supervision is
    off) are absent from the result.
    """
    shadow = meta_copy(network)
    shapes: dict[str, LayerShapes] = {}
    for name, module in conv_modules(shadow).items():

        def record(
            _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, name: str = name
        ) -> None:
            shapes[name] = LayerShapes(tuple(inputs[0].shape[2:]), tuple(output.shape[2:]))

        module.register_forward_hook(record)
    with torch.no_grad():
        shadow(torch.empty(input_shape, device="meta"))
    return shapes


def meta_copy(network: nn.Module) -> nn.Module:
    """A copy of ``network`` whose tensors live on the meta device: shapes flow through it, no arithmetic."""
    shadow = _copy_structure(network, {})
    for module in shadow.modules():
        for key, tensor in module._parameters.items():
            if tensor is not None:
                module._parameters[key] = nn.Parameter(
                    torch.empty_like(tensor, device="meta"), requires_grad=False
                )
        for key, tensor in module._buffers.items():
            if tensor is not None:
                module._buffers[key] = torch.empty_like(tensor, device="meta")
    return shadow


def copy_with_replacements(network: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """A copy of ``network`` whose named convs are replaced in every slot; all tensors are shared.

    Only module objects and their attribute dicts are copied (milliseconds, where deepcopy of a TS expert
    takes a tenth of a second); parameters and buffers of untouched layers are the same tensors as in
    ``network``, so the copy is for inference, or must be deep-copied before training.
    """
    modules = conv_modules(network)
    by_id: dict[int, nn.Module] = {}
    for name, replacement in replacements.items():
        if name not in modules:
            raise KeyError(f"network has no conv layer named {name!r}")
        by_id[id(modules[name])] = replacement
    return copy_replacing(network, by_id)


def copy_replacing(network: nn.Module, replacements: Mapping[int, nn.Module]) -> nn.Module:
    """Like copy_with_replacements, for any modules, keyed by id() of the module to replace."""
    return _copy_structure(network, dict(replacements))


def _copy_structure(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """Shallow-copy ``module`` and its submodule tree; shared submodules stay shared, as in deepcopy."""
    if id(module) in memo:
        return memo[id(module)]
    clone = object.__new__(type(module))
    clone.__dict__.update(
        {
            key: value.copy() if isinstance(value, (dict, list, set)) else value
            for key, value in module.__dict__.items()
        }
    )
    memo[id(module)] = clone
    for key, child in module._modules.items():
        clone._modules[key] = None if child is None else _copy_structure(child, memo)
    return clone


def _describe(module: nn.Module, slots: tuple[str, ...]) -> ConvLayer:
    transposed = isinstance(module, nn.ConvTranspose3d)
    return ConvLayer(
        name=slots[0],
        transposed=transposed,
        in_channels=int(module.in_channels),
        out_channels=int(module.out_channels),
        kernel_size=tuple(int(k) for k in module.kernel_size),
        stride=tuple(int(s) for s in module.stride),
        padding=module.padding if isinstance(module.padding, str) else tuple(int(p) for p in module.padding),
        dilation=tuple(int(d) for d in module.dilation),
        output_padding=tuple(int(p) for p in module.output_padding) if transposed else (),
        groups=int(module.groups),
        has_bias=module.bias is not None,
        slots=slots,
    )


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result
