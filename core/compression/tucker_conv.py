"""The module a compressed conv becomes, and how it runs fast on a CPU.

A TuckerConv holds the Tucker-2 factors of one conv: U_in^T (r_in x C_in), the core G (the original kernel
shape with r_in -> r_out channels) and U_out (C_out x r_out) with the original bias. It is a plain module
with four tensors rather than three nn.Conv3d because a recompression builds dozens of them and must take
milliseconds.

How it runs on a CPU (each choice measured on the 2-core VM; scripts/bench_forward_variants.py): all three
convs go straight to oneDNN in channels-last (NDHWC) layout. PyTorch's own dispatch sends float32 3D convs
with N*C*D*H <= 20480 (few channels at low resolution: exactly the cores of compressed deep layers) to an
im2col fallback 3-8x slower, and its 1x1x1 path in NCDHW ran several times slower than oneDNN's NDHWC 1x1 on
these shapes; NDHWC also suits the small channel counts of the cores. So a TuckerConv returns channels-last
tensors, and the next TuckerConv takes them without a copy. A transposed core with kernel == stride (U-Net
upsampling) is a 1x1 conv to r_out x k^3 channels plus a voxel shuffle. A pointwise layer whose factored form
costs more multiply-adds than its rebuilt dense matrix runs as that matrix (the same function, rebuilt per
call for a few microseconds). On other devices (CUDA, meta) it runs as three plain torch convs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from tuckerscope.core.compression.conv_layers import ConvLayer

Method = Literal["hosvd-slice", "hooi"]
CHANNELS_LAST = torch.channels_last_3d


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on ``x`` runs in: autocast's lower precision when autocast is on, else x's own."""
    if x.device.type not in ("cpu", "cuda"):
        return x.dtype
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def uses_onednn(x: torch.Tensor) -> bool:
    """True where the channels-last oneDNN path applies: 5D float32/bfloat16 work on a CPU."""
    return (
        x.device.type == "cpu"
        and x.dim() == 5
        and compute_dtype(x) in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def onednn_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, ...] = (1, 1, 1),
    padding: tuple[int, ...] = (0, 0, 0),
    dilation: tuple[int, ...] = (1, 1, 1),
) -> torch.Tensor:
    """A 3D conv through oneDNN in NDHWC, in the autocast dtype when autocast is on; returns NDHWC."""
    dtype = compute_dtype(x)
    x = x.to(dtype).contiguous(memory_format=CHANNELS_LAST)
    weight = weight.to(dtype)
    if weight.dim() == 2:
        weight = weight.reshape(*weight.shape, 1, 1, 1)
    weight = weight.contiguous(memory_format=CHANNELS_LAST)
    bias = bias.to(dtype) if bias is not None else None
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), list(dilation), 1)


def conv_1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1x1 conv with a (C_out x C_in) matrix: oneDNN on a CPU, a plain conv elsewhere."""
    if uses_onednn(x):
        return onednn_conv(x, weight, bias)
    return F.conv3d(x, weight.reshape(*weight.shape, *(1,) * (x.dim() - 2)), bias)


def transposed_core(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """The transposed core; when kernel == stride (U-Net upsampling) as a 1x1 conv and a voxel shuffle.

    Such a transposed conv writes each input voxel's kernel-sized output block without overlap, so it is a
    pointwise map to r_out x k^3 channels followed by a rearrangement; PyTorch's transposed conv for few
    channels was several times slower here.
    """
    kernel = tuple(weight.shape[2:])
    non_overlapping = (
        kernel == tuple(stride)
        and not isinstance(padding, str)
        and not any(padding)
        and not any(output_padding)
        and all(d == 1 for d in dilation)
    )
    if not (non_overlapping and uses_onednn(x)):
        return F.conv_transpose3d(x, weight, None, stride, padding, output_padding, 1, dilation)
    n, r_in, depth, height, width = x.shape
    r_out = weight.shape[1]
    matrix = weight.permute(2, 3, 4, 1, 0).reshape(-1, r_in)  # output channels ordered (a, b, c, r_out)
    blocks = onednn_conv(x, matrix).permute(0, 2, 3, 4, 1)  # NDHWC rows: (n, D, H, W, a, b, c, r_out)
    blocks = blocks.reshape(n, depth, height, width, *kernel, r_out).permute(0, 1, 4, 2, 5, 3, 6, 7)
    shuffled = blocks.reshape(n, depth * kernel[0], height * kernel[1], width * kernel[2], r_out)
    return shuffled.permute(0, 4, 1, 2, 3)


def runs_dense(layer: ConvLayer, r_out: int, r_in: int) -> bool:
    """True for a pointwise layer whose three products cost at least as many multiply-adds as one."""
    if not layer.is_pointwise or layer.transposed:
        return False
    factored = layer.in_channels * r_in + r_in * r_out + r_out * layer.out_channels
    return factored >= layer.in_channels * layer.out_channels


class TuckerConv(nn.Module):
    """A conv in Tucker-2 form: 1x1x1 C_in->r_in (U_in^T), core r_in->r_out (G), 1x1x1 r_out->C_out (U_out)+bias.

    The core keeps the original kernel, stride, padding and dilation; for a transposed conv the core is a
    transposed conv too and its weight is stored as r_in x r_out x k..., as ConvTranspose3d stores it.
    Parameters do not require grad: they may be views of a TuckerEngine's cache.
    """

    def __init__(
        self,
        layer: ConvLayer,
        project_in: torch.Tensor,
        core: torch.Tensor,
        project_out: torch.Tensor,
        bias: torch.Tensor | None,
        method: Method = "hosvd-slice",
    ) -> None:
        super().__init__()
        self.project_in = nn.Parameter(project_in, requires_grad=False)
        self.core = nn.Parameter(core, requires_grad=False)
        self.project_out = nn.Parameter(project_out, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.layer_name = layer.name
        self.transposed = layer.transposed
        self.kernel_size = layer.kernel_size
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation
        self.output_padding = layer.output_padding
        self.method: Method = method
        self.runs_dense = runs_dense(layer, *self.ranks)

    @classmethod
    def empty(cls, layer: ConvLayer, r_out: int, r_in: int, method: Method = "hosvd-slice") -> TuckerConv:
        """A TuckerConv of the right shapes with zero tensors, to be filled by load_state_dict."""
        core_shape = (r_in, r_out) if layer.transposed else (r_out, r_in)
        return cls(
            layer,
            torch.zeros(r_in, layer.in_channels),
            torch.zeros(*core_shape, *layer.kernel_size),
            torch.zeros(layer.out_channels, r_out),
            torch.zeros(layer.out_channels) if layer.has_bias else None,
            method,
        )

    @property
    def ranks(self) -> tuple[int, int]:
        """(r_out, r_in) in the layer's channel terms."""
        return int(self.project_out.shape[1]), int(self.project_in.shape[0])

    @property
    def is_pointwise(self) -> bool:
        return (
            all(k == 1 for k in self.kernel_size) and all(s == 1 for s in self.stride) and not self.transposed
        )

    def core_kernel(self) -> torch.Tensor:
        """The core in layer terms (r_out x r_in x k...), whatever the conv type."""
        return self.core.transpose(0, 1) if self.transposed else self.core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runs_dense:
            return conv_1x1(x, self.dense_matrix(), self.bias)
        return conv_1x1(self.core_output(x), self.project_out, self.bias)

    def dense_matrix(self) -> torch.Tensor:
        """U_out G U_in^T of a pointwise layer: its rebuilt C_out x C_in matrix."""
        return self.project_out @ self.core.reshape(self.core.shape[:2]) @ self.project_in

    def core_output(self, x: torch.Tensor) -> torch.Tensor:
        """The r_out-channel tensor before the last projection (U_out and bias)."""
        x = conv_1x1(x, self.project_in)
        if self.transposed:
            return transposed_core(
                x, self.core, self.stride, self.padding, self.output_padding, self.dilation
            )
        if uses_onednn(x) and not isinstance(self.padding, str):
            return onednn_conv(x, self.core, None, self.stride, self.padding, self.dilation)
        return F.conv3d(x, self.core, None, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        r_out, r_in = self.ranks
        kind = "transposed, " if self.transposed else ""
        runs_as = ", runs as its dense matrix" if self.runs_dense else ""
        return f"{kind}r_out={r_out}, r_in={r_in}, method={self.method}{runs_as}"


def as_plain_convs(module: TuckerConv) -> nn.Sequential:
    """The paper's form of a TuckerConv: Sequential(Conv3d 1x1x1, core Conv3d/ConvTranspose3d, Conv3d 1x1x1).

    The same function with stock torch modules (the reference implementation's structure), for comparing
    execution strategies and for tools that only understand standard convs.
    """
    r_out, r_in = module.ranks
    c_out, c_in = module.project_out.shape[0], module.project_in.shape[1]
    core_type = nn.ConvTranspose3d if module.transposed else nn.Conv3d
    options = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, bias=False)
    if module.transposed:
        options["output_padding"] = module.output_padding
    kernel = tuple(module.core.shape[2:])
    layers = nn.Sequential(
        nn.Conv3d(c_in, r_in, 1, bias=False, device="meta"),
        core_type(r_in, r_out, kernel, device="meta", **options),
        nn.Conv3d(r_out, c_out, 1, bias=module.bias is not None, device="meta"),
    )
    layers[0].weight = nn.Parameter(
        module.project_in.detach().reshape(r_in, c_in, 1, 1, 1), requires_grad=False
    )
    layers[1].weight = nn.Parameter(module.core.detach(), requires_grad=False)
    layers[2].weight = nn.Parameter(
        module.project_out.detach().reshape(c_out, r_out, 1, 1, 1), requires_grad=False
    )
    if module.bias is not None:
        layers[2].bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    return layers
