"""Tucker-2 compression of every 3D conv of a network: factorise once, then recompress at any ranks by slicing.

Per layer, the kernel W (C_out x C_in x k^3, in the layer's channel terms) is rotated into the eigenbases of
its two channel-mode Gram matrices: W = G x0 U_out x1 U_in with orthonormal U sorted by energy. Because the
bases are orthonormal and sorted, the truncation to any (r_out, r_in) is G[:r_out, :r_in] with the leading
basis vectors (the HOSVD truncation), so ``compress`` only slices cached tensors and never solves anything.
Each compressed conv becomes a TuckerConv: 1x1x1 (C_in -> r_in), the core conv (r_in -> r_out, original kernel,
stride, padding, dilation) and 1x1x1 (r_out -> C_out, original bias). HOOI refinement (see hooi.py) can replace the
factors of chosen layers; every compressed layer says which method produced it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from tuckerscope.core.compression.conv_layers import (
    ConvLayer,
    LayerShapes,
    conv_modules,
    copy_replacing,
    find_conv_layers,
    trace_layer_shapes,
)
from tuckerscope.core.compression.fused_norm import TuckerConvNormAct, fused_blocks
from tuckerscope.core.compression.tucker_conv import Method, TuckerConv, as_plain_convs
from tuckerscope.core.runtime.errors import Cancelled, UserError

Ranks = Mapping[str, tuple[int, int]]
LayerProgress = Callable[[int, int, str], None]
CancelCheck = Callable[[], bool]


class RankError(UserError):
    """Ranks that do not fit a layer, or a layer name the network does not have."""


@dataclass(frozen=True)
class LayerFactors:
    """Channel bases of one kernel sorted by energy, and the kernel's core in those bases.

    ``u_out`` is C_out x r (columns are basis vectors), ``u_in_t`` is r x C_in (rows are basis vectors, so
    the leading rows are a contiguous slice), ``core`` is r_out x r_in x k..., ``energy[i, j]`` is the
    squared norm of core[i, j]. For the cached full factorisation r equals C, so slicing gives any rank.
    """

    u_out: torch.Tensor
    u_in_t: torch.Tensor
    core: torch.Tensor
    energy: torch.Tensor
    norm_sq: float
    method: Method = "hosvd-slice"

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.core.shape[0]), int(self.core.shape[1])

    def kernel(self, r_out: int | None = None, r_in: int | None = None) -> torch.Tensor:
        """The kernel rebuilt from the leading (r_out, r_in) factors, in layer terms (C_out x C_in x k...)."""
        r_out = self.ranks[0] if r_out is None else r_out
        r_in = self.ranks[1] if r_in is None else r_in
        core = self.core[:r_out, :r_in]
        flat = core.reshape(r_out, r_in, -1)
        rotated = torch.einsum("ab,bjk->ajk", self.u_out[:, :r_out], flat)
        kernel = torch.einsum("ajk,jc->ack", rotated, self.u_in_t[:r_in])
        return kernel.reshape(self.u_out.shape[0], self.u_in_t.shape[1], *core.shape[2:])


def layer_kernel(module: nn.Module) -> torch.Tensor:
    """The weight in layer terms, C_out x C_in x k...: a transposed conv stores C_in x C_out x k..."""
    weight = module.weight.detach()
    return weight.transpose(0, 1) if isinstance(module, nn.ConvTranspose3d) else weight


def factorise_kernel(kernel: torch.Tensor) -> LayerFactors:
    """Full-rank HOSVD of the two channel modes via the eigendecomposition of each mode's Gram matrix."""
    w = kernel.detach().to(torch.float32)
    c_out, c_in = w.shape[:2]
    unfold_out = w.reshape(c_out, -1)
    unfold_in = w.transpose(0, 1).reshape(c_in, -1)
    u_out = _leading_eigenvectors(unfold_out @ unfold_out.T)
    u_in = _leading_eigenvectors(unfold_in @ unfold_in.T)
    rotated_out = (u_out.T @ unfold_out).reshape(c_out, c_in, -1)
    core = (rotated_out.transpose(1, 2) @ u_in).transpose(1, 2).reshape(w.shape).contiguous()
    energy = core.reshape(c_out, c_in, -1).double().square().sum(-1)
    return LayerFactors(
        u_out=u_out.contiguous(),
        u_in_t=u_in.T.contiguous(),
        core=core,
        energy=energy,
        norm_sq=float(w.double().square().sum()),
    )


class TuckerEngine:
    """Factorises every conv of one network once and builds compressed copies of it by slicing."""

    def __init__(self, network: nn.Module, input_shape: tuple[int, ...] | None = None) -> None:
        """``input_shape`` (N, C, D, H, W): keep only the convs that run on it and record their shapes."""
        self.network = network
        self.layer_shapes: dict[str, LayerShapes] | None = (
            trace_layer_shapes(network, input_shape) if input_shape is not None else None
        )
        self.input_shape = input_shape
        self.layers: list[ConvLayer] = [
            layer
            for layer in find_conv_layers(network)
            if layer.groups == 1 and (self.layer_shapes is None or layer.name in self.layer_shapes)
        ]
        self._modules = conv_modules(network)
        self._factors: dict[str, LayerFactors] = {}
        self.factorise_seconds: float | None = None

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> ConvLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise RankError(
            f"no compressible conv layer named {name!r}; known layers: {', '.join(self.layer_names)}"
        )

    @property
    def is_factorised(self) -> bool:
        return len(self._factors) == len(self.layers)

    def factorise(
        self, progress: LayerProgress | None = None, should_cancel: CancelCheck | None = None
    ) -> float:
        """Factorise every layer not yet cached; returns the seconds it took. Safe to call again."""
        start = time.perf_counter()
        with single_threaded_linear_algebra():
            for index, layer in enumerate(self.layers):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("factorisation cancelled")
                if layer.name not in self._factors:
                    self._factors[layer.name] = factorise_kernel(layer_kernel(self._modules[layer.name]))
                if progress is not None:
                    progress(index + 1, len(self.layers), layer.name)
        elapsed = time.perf_counter() - start
        self.factorise_seconds = elapsed if self.factorise_seconds is None else self.factorise_seconds
        return elapsed

    def factors(self, name: str) -> LayerFactors:
        if name not in self._factors:
            self.layer(name)
            self.factorise()
        return self._factors[name]

    def bias(self, name: str) -> torch.Tensor | None:
        bias = self._modules[name].bias
        return None if bias is None else bias.detach()

    def compress(
        self,
        ranks: Ranks,
        keep_full_rank: bool = True,
        refined: Mapping[str, LayerFactors] | None = None,
        fuse_norm: bool = True,
    ) -> nn.Module:
        """A compressed copy of the network: each layer in ``ranks`` becomes a TuckerConv.

        Layers absent from ``ranks`` stay as they are; so do layers at full rank on both modes when
        ``keep_full_rank`` (they would compute the same function, only slower). ``refined`` maps layer
        names to HOOI factors of exactly the requested ranks; those layers use them instead of the slice.
        ``fuse_norm`` runs each TuckerConv with its following instance norm and LeakyReLU as one pass
        (fused_norm.py; same function, same state-dict keys). Untouched parameters are shared with the
        original network (see copy_with_replacements).
        """
        self.validate(ranks)
        if not self.is_factorised:
            self.factorise()
        replacements: dict[str, nn.Module] = {}
        for name, (r_out, r_in) in ranks.items():
            layer = self.layer(name)
            if keep_full_rank and r_out == layer.out_channels and r_in == layer.in_channels:
                continue
            factors = self._factors[name]
            if refined is not None and name in refined:
                factors = refined[name]
                if factors.ranks != (r_out, r_in):
                    raise RankError(
                        f"refined factors of {name} have ranks {factors.ranks}, not {(r_out, r_in)}"
                    )
            replacements[name] = build_tucker_conv(layer, factors, r_out, r_in, self.bias(name))
        return network_with_tucker_layers(self.network, replacements, fuse_norm)

    def validate(self, ranks: Ranks) -> None:
        for name, (r_out, r_in) in ranks.items():
            layer = self.layer(name)
            if not (1 <= r_out <= layer.out_channels and 1 <= r_in <= layer.in_channels):
                raise RankError(
                    f"ranks (r_out={r_out}, r_in={r_in}) do not fit layer {name} "
                    f"({layer.out_channels} out x {layer.in_channels} in channels)"
                )


def build_tucker_conv(
    layer: ConvLayer, factors: LayerFactors, r_out: int, r_in: int, bias: torch.Tensor | None
) -> TuckerConv:
    """Slice the leading (r_out, r_in) factors into a TuckerConv without copying.

    The new module's tensors are views of the cache (read-only parameters); clone them before training.
    """
    core = factors.core[:r_out, :r_in]
    return TuckerConv(
        layer,
        project_in=factors.u_in_t[:r_in],
        core=core.transpose(0, 1) if layer.transposed else core,
        project_out=factors.u_out[:, :r_out],
        bias=bias,
        method=factors.method,
    )


def network_with_tucker_layers(
    network: nn.Module, replacements: Mapping[str, TuckerConv], fuse_norm: bool = True
) -> nn.Module:
    """A copy of ``network`` with the named convs replaced (in every slot), optionally norm-fused."""
    modules = conv_modules(network)
    tucker_by_id = {id(modules[name]): module for name, module in replacements.items()}
    swaps: dict[int, nn.Module] = dict(tucker_by_id)
    if fuse_norm:
        swaps.update(fused_blocks(network, tucker_by_id))
    return copy_replacing(network, swaps)


@contextmanager
def single_threaded_linear_algebra() -> Iterator[None]:
    """Threaded eigh/SVD is pathologically slow on this kind of machine; one thread is much faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


def _leading_eigenvectors(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric PSD matrix as columns, largest eigenvalue first (float64 solve)."""
    _, vectors = torch.linalg.eigh(gram.double())
    return vectors.flip(-1).to(torch.float32)


def with_plain_convs(network: nn.Module) -> nn.Module:
    """A copy of a compressed network whose TuckerConvs (fused or not) run as three stock torch convs."""
    plain = {id(m): as_plain_convs(m) for m in network.modules() if isinstance(m, TuckerConv)}
    swaps: dict[int, nn.Module] = dict(plain)
    for module in network.modules():
        if isinstance(module, TuckerConvNormAct):
            swaps[id(module)] = nn.Sequential(plain[id(module[0])], module[1], module[2])
    return copy_replacing(network, swaps)
