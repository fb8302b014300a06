"""The module a compressed conv becomes, and how it runs fast on a CPU.

A TuckerConv holds the Tucker-2 factors of one conv: U_in^T (r_in x C_in), the core G (the original kernel
shape with r_in -> r_out channels) and U_out (C_out x r_out) with the original bias. It is a plain module
with four tensors rather than three nn.Conv3d because a recompression builds dozens of them and must take
milliseconds. How it runs (each choice measured on the 2-core CPU, see scripts/bench_forward_variants.py):
the two 1x1x1 projections are one GEMM each (PyTorch's 1x1x1 Conv3d path is several times slower on the
same data); the core goes straight to oneDNN (see core_conv); a transposed core with kernel == stride is a
GEMM plus a voxel shuffle. A pointwise layer whose factored form costs more multiply-adds than its rebuilt
dense matrix runs as that matrix (the same function, rebuilt per call for a few microseconds).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from tuckerscope.core.conv_layers import ConvLayer

Method = Literal["hosvd-slice", "hooi"]


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1x1 conv with a (C_out x C_in) ``weight`` as one GEMM, in whichever memory format ``x`` has."""
    n, channels = x.shape[:2]
    spatial = x.shape[2:]
    if x.is_contiguous():
        flat = x.reshape(n, channels, -1)
        if n == 1 and bias is not None:
            out = torch.addmm(bias.unsqueeze(1), weight, flat[0]).unsqueeze(0)
        else:
            out = torch.matmul(weight, flat)
            if bias is not None:
                out = out + bias.unsqueeze(1)
        return out.view(n, -1, *spatial)
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        flat = x.permute(0, 2, 3, 4, 1).reshape(-1, channels)
        out = torch.addmm(bias, flat, weight.T) if bias is not None else flat @ weight.T
        return out.view(n, *spatial, -1).permute(0, 4, 1, 2, 3)
    return F.conv3d(x, weight.reshape(*weight.shape, *(1,) * len(spatial)), bias)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on ``x`` runs in: autocast's lower precision when autocast is on, else x's own."""
    if x.device.type not in ("cpu", "cuda"):
        return x.dtype
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def core_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """The core conv, straight through oneDNN on a CPU.

    PyTorch sends float32 3D convs with N*C*D*H <= 20480 (few channels at low resolution: exactly the
    compressed cores of deep layers) to its im2col fallback, which ran 3-8x slower than oneDNN here.
    """
    dtype = compute_dtype(x)
    if (
        x.device.type == "cpu"
        and not isinstance(padding, str)
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        return torch.ops.aten.mkldnn_convolution(
            x.to(dtype), weight.to(dtype), None, list(padding), list(stride), list(dilation), 1
        )
    return F.conv3d(x, weight, None, stride, padding, dilation)


def transposed_core(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """The transposed core; when kernel == stride (U-Net upsampling) as one GEMM and a voxel shuffle.

    Such a transposed conv writes each input voxel's kernel-sized output block without overlap, so it is a
    pointwise map to r_out x k^3 channels followed by a rearrangement; PyTorch's transposed conv path for
    few channels is several times slower.
    """
    kernel = tuple(weight.shape[2:])
    non_overlapping = (
        kernel == tuple(stride)
        and not isinstance(padding, str)
        and not any(padding)
        and not any(output_padding)
        and all(d == 1 for d in dilation)
    )
    if not non_overlapping or x.dim() != 5:
        return F.conv_transpose3d(x, weight, None, stride, padding, output_padding, 1, dilation)
    n, r_in, depth, height, width = x.shape
    r_out = weight.shape[1]
    matrix = weight.permute(1, 2, 3, 4, 0).reshape(-1, r_in)  # rows: (r_out, a, b, c)
    blocks = torch.matmul(matrix, x.reshape(n, r_in, -1)).view(n, r_out, *kernel, depth, height, width)
    shuffled = blocks.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return shuffled.reshape(n, r_out, depth * kernel[0], height * kernel[1], width * kernel[2])


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
            dense = self.project_out @ self.core.reshape(self.core.shape[:2]) @ self.project_in
            return pointwise(x, dense, self.bias)
        return pointwise(self.core_output(x), self.project_out, self.bias)

    def core_output(self, x: torch.Tensor) -> torch.Tensor:
        """The r_out-channel tensor before the last projection (U_out and bias)."""
        x = pointwise(x, self.project_in)
        if self.transposed:
            return transposed_core(
                x, self.core, self.stride, self.padding, self.output_padding, self.dilation
            )
        if self.is_pointwise:
            return pointwise(x, self.core.reshape(self.core.shape[:2]))
        return core_conv(x, self.core, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        r_out, r_in = self.ranks
        kind = "transposed, " if self.transposed else ""
        runs_as = ", runs as its dense matrix" if self.runs_dense else ""
        return f"{kind}r_out={r_out}, r_in={r_in}, method={self.method}{runs_as}"
