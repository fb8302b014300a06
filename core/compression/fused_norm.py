"""TuckerConv -> InstanceNorm3d -> LeakyReLU as one pass over the output, exactly.

nnU-Net follows every conv with an instance norm and a LeakyReLU. After a TuckerConv the conv output is
y = U_out z + b with z only r_out channels wide, so the norm's statistics follow from z's: the per-channel mean
of y is U_out mean(z) + b and its variance is diag(U_out Cov(z) U_out^T). The norm then folds into the last
projection: out = act((gamma / sigma) * U_out (z - mean z) + beta), one GEMM on the small centred z, no
normalising passes over the wide C_out-channel tensor (and the conv bias cancels exactly). At full resolution
those passes cost as much as the compressed conv itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tuckerscope.core.compression.tucker_conv import TuckerConv, conv_1x1


def can_fuse(block: nn.Module) -> bool:
    """A Sequential [TuckerConv, InstanceNorm3d using instance statistics, LeakyReLU or ReLU]."""
    if not isinstance(block, nn.Sequential) or len(block) != 3:
        return False
    conv, norm, act = block
    return (
        isinstance(conv, TuckerConv)
        and not conv.runs_dense
        and isinstance(norm, nn.InstanceNorm3d)
        and not norm.track_running_stats
        and norm.num_features == conv.project_out.shape[0]
        and isinstance(act, (nn.LeakyReLU, nn.ReLU))
    )


class TuckerConvNormAct(nn.Sequential):
    """The same three modules (and state-dict keys) as the Sequential it replaces, run as one fused pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, act = self
        z = conv.core_output(x)
        outputs = [self._normalised_projection(z[i : i + 1], conv, norm) for i in range(z.shape[0])]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if isinstance(act, nn.LeakyReLU):
            return F.leaky_relu_(out, act.negative_slope)
        return F.relu_(out)

    @staticmethod
    def _normalised_projection(z: torch.Tensor, conv: TuckerConv, norm: nn.InstanceNorm3d) -> torch.Tensor:
        """gamma * (U_out z - mean) / sigma + beta for one sample, statistics taken on the small z (float32)."""
        r_out, spatial = z.shape[1], z.shape[2:]
        rows = z.permute(0, 2, 3, 4, 1).reshape(-1, r_out).float()  # a view when z is channels-last
        centred = rows - rows.mean(dim=0)
        covariance = (centred.T @ centred) / centred.shape[0]
        u_out = conv.project_out.float()
        variance = torch.einsum("cr,rs,cs->c", u_out, covariance, u_out).clamp_min(0.0)
        scale = torch.rsqrt(variance + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.float()
        shift = norm.bias.float() if norm.bias is not None else torch.zeros_like(scale)
        centred_volume = centred.view(1, *spatial, r_out).permute(0, 4, 1, 2, 3)
        return conv_1x1(centred_volume.to(z.dtype), scale.unsqueeze(1) * u_out, shift)


def fused_blocks(network: nn.Module, tucker_layers: dict[int, TuckerConv]) -> dict[int, nn.Module]:
    """For each Sequential whose first module is a conv about to become a TuckerConv: its fused version.

    ``tucker_layers`` maps id(original conv) -> its TuckerConv; the result maps id(original Sequential) ->
    TuckerConvNormAct, for conv_layers.copy_replacing.
    """
    fused: dict[int, nn.Module] = {}
    for module in network.modules():
        if isinstance(module, nn.Sequential) and len(module) == 3 and id(module[0]) in tucker_layers:
            candidate = TuckerConvNormAct(tucker_layers[id(module[0])], module[1], module[2])
            if can_fuse(candidate):
                fused[id(module)] = candidate
    return fused
