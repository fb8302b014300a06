"""FLOPs as fvcore counts them (the paper's counter): per op type, cross-checked against fvcore itself."""

from __future__ import annotations

import warnings

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from test_tucker import PLANS_PATCHES, SMALL_INPUTS, ts_network
from torch import nn

from tuckerscope.core.compression.counting import count_network, op_flops
from tuckerscope.core.compression.ranks import df_ranks, ranks_of
from tuckerscope.core.compression.tucker import TuckerEngine, with_plain_convs


def fvcore_by_op(network: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """fvcore's FlopCountAnalysis (jit trace, real tensors: it cannot trace meta tensors), per op type."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(network.eval(), torch.zeros(shape))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return {op: int(flops) for op, flops in analysis.by_operator().items() if flops}


@pytest.fixture(scope="module", params=[297, 291], ids=["total_3mm", "organs_1.5mm"])
def small_engine(request: pytest.FixtureRequest) -> TuckerEngine:
    engine = TuckerEngine(ts_network(request.param), SMALL_INPUTS[request.param])
    engine.factorise()
    return engine


@pytest.mark.parametrize("df", [None, 0.05])
def test_ts_counts_equal_fvcore(small_engine: TuckerEngine, df: float | None) -> None:
    """Original and compressed (as the paper's three convs) TS networks: every op type equals fvcore's."""
    ranks = ranks_of(df_ranks(small_engine.layers, df)) if df else None
    network = (
        with_plain_convs(small_engine.compress(ranks, fuse_norm=False)) if ranks else small_engine.network
    )
    expected = fvcore_by_op(network, small_engine.input_shape)
    cost = count_network(small_engine, ranks)
    assert cost.flops_by_op == expected
    assert set(expected) == {"conv", "instance_norm"}
    assert cost.flops == sum(expected.values())
    assert cost.conv_flops == expected["conv"]


def test_the_paper_figure_for_the_3mm_network() -> None:
    """DESIGN.md: 369.14 GFLOPs for the 3 mm network on its patch, 1.366 G of them InstanceNorm."""
    cost = count_network(TuckerEngine(ts_network(297), PLANS_PATCHES[297]))
    assert round(cost.flops / 1e9, 2) == 369.14
    assert round(cost.flops_by_op["instance_norm"] / 1e9, 3) == 1.366
    assert cost.conv_flops == cost.flops - cost.flops_by_op["instance_norm"]
    organs = count_network(TuckerEngine(ts_network(291), PLANS_PATCHES[291]))
    assert round(organs.flops_by_op["instance_norm"] / 1e9, 1) == 1.8


class EveryCountedOp(nn.Module):
    """One of each op fvcore's default handles count (2D where fvcore only counts the 2D kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.batch = nn.BatchNorm2d(4)
        self.group = nn.GroupNorm(2, 4)
        self.layer = nn.LayerNorm(16, elementwise_affine=False)
        self.instance = nn.InstanceNorm2d(4)
        self.linear = nn.Linear(16, 6)
        self.weights = nn.Parameter(torch.ones(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.grouped(torch.relu(self.conv(x))))
        x = self.instance(self.group(self.batch(x)))
        x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
        x = nn.functional.interpolate(x, scale_factor=0.5, mode="nearest")
        x = nn.functional.adaptive_avg_pool2d(x, (4, 4)).flatten(2)
        x = self.linear(self.layer(x))
        x = x @ self.weights + torch.matmul(x, self.weights)
        return torch.einsum("bcf,bdf->bcd", x, x).sum() + (x.flatten(0, 1) @ self.weights.T).sum()


def test_every_fvcore_rule_on_a_small_network() -> None:
    network = EveryCountedOp()
    counted = op_flops(network, (2, 3, 8, 8))
    assert counted == fvcore_by_op(network, (2, 3, 8, 8))
    assert len(counted) >= 8
