"""Which ranks each layer gets: the paper's DF rule, per-layer overrides, an explained-variance target.

The DF rule (the paper's): per channel mode r = ceil(C * DF), at least 8, at most C. One DF per expert.
Hardware-friendly rounding (up to a multiple of 8 or 16, still at most C) is an option on top of the rule;
``RankChoice`` keeps the DF-rule ranks beside the ranks actually used so that the rule stays visible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from tuckerscope.core.compression.conv_layers import ConvLayer
from tuckerscope.core.compression.explained_variance import explained_variance_grid
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.runtime.errors import UserError

MIN_RANK = 8
DF_MIN, DF_MAX = 0.01, 1.0


class RankPolicyError(UserError):
    """A DF, override or threshold that cannot be applied."""


@dataclass(frozen=True)
class RankChoice:
    """The ranks one layer gets and why; ``df_rule`` is what the plain DF rule would give."""

    r_out: int
    r_in: int
    df_rule: tuple[int, int]
    source: str

    @property
    def ranks(self) -> tuple[int, int]:
        return self.r_out, self.r_in


def df_rank(channels: int, df: float, min_rank: int = MIN_RANK) -> int:
    """The paper's rule for one channel mode: ceil(C * DF), at least ``min_rank``, at most C."""
    check_df(df)
    return min(channels, max(min_rank, math.ceil(channels * df - 1e-9)))


def round_up_rank(rank: int, channels: int, multiple: int) -> int:
    """Round ``rank`` up to a multiple of ``multiple`` (SIMD/oneDNN-friendly channel counts), at most C."""
    if multiple < 1:
        raise RankPolicyError(f"rank rounding multiple must be >= 1, got {multiple}")
    return min(channels, -(-rank // multiple) * multiple)


def check_df(df: float) -> None:
    if not (DF_MIN <= df <= DF_MAX) or math.isnan(df):
        raise RankPolicyError(f"DF must be between {DF_MIN} and {DF_MAX}, got {df}")


def df_ranks(
    layers: Iterable[ConvLayer], df: float, min_rank: int = MIN_RANK, round_to: int | None = None
) -> dict[str, RankChoice]:
    """Ranks of every layer under one DF, optionally rounded up to a multiple of ``round_to``."""
    choices = {}
    for layer in layers:
        rule = (df_rank(layer.out_channels, df, min_rank), df_rank(layer.in_channels, df, min_rank))
        ranks = rule
        source = f"df={df:g}"
        if round_to and round_to > 1:
            ranks = (
                round_up_rank(rule[0], layer.out_channels, round_to),
                round_up_rank(rule[1], layer.in_channels, round_to),
            )
            source += f", rounded up to a multiple of {round_to}"
        choices[layer.name] = RankChoice(ranks[0], ranks[1], rule, source)
    return choices


def explained_variance_ranks(
    engine: TuckerEngine,
    threshold: float,
    min_rank: int = 1,
    round_to: int | None = None,
) -> dict[str, RankChoice]:
    """Per layer, the ranks with the fewest parameters whose explained variance reaches ``threshold``.

    Read off each layer's cached energy grid; no decomposition is run. The DF rule shown beside each
    choice is the DF rule at DF = threshold, only for reference.
    """
    if not 0.0 < threshold <= 1.0:
        raise RankPolicyError(f"explained-variance threshold must be in (0, 1], got {threshold}")
    choices = {}
    for layer in engine.layers:
        grid = explained_variance_grid(engine.factors(layer.name))
        r_out, r_in = _cheapest_cell_reaching(grid, threshold, layer)
        r_out = max(r_out, min(min_rank, layer.out_channels))
        r_in = max(r_in, min(min_rank, layer.in_channels))
        source = f"explained variance >= {threshold:g}"
        if round_to and round_to > 1:
            r_out = round_up_rank(r_out, layer.out_channels, round_to)
            r_in = round_up_rank(r_in, layer.in_channels, round_to)
            source += f", rounded up to a multiple of {round_to}"
        rule = (df_rank(layer.out_channels, threshold), df_rank(layer.in_channels, threshold))
        choices[layer.name] = RankChoice(r_out, r_in, rule, source)
    return choices


def with_overrides(
    choices: Mapping[str, RankChoice], overrides: Mapping[str, tuple[int, int]], layers: Iterable[ConvLayer]
) -> dict[str, RankChoice]:
    """``choices`` with some layers' ranks set by hand; names and ranks are checked against the layers."""
    by_name = {layer.name: layer for layer in layers}
    result = dict(choices)
    for name, (r_out, r_in) in overrides.items():
        layer = by_name.get(name)
        if layer is None:
            raise RankPolicyError(
                f"--layer {name}: no such compressible conv layer (see `tuckerscope compress --json`)"
            )
        if not (1 <= r_out <= layer.out_channels and 1 <= r_in <= layer.in_channels):
            raise RankPolicyError(
                f"--layer {name}={r_out},{r_in}: ranks must be within 1..{layer.out_channels} (out) "
                f"and 1..{layer.in_channels} (in)"
            )
        rule = result[name].df_rule if name in result else (layer.out_channels, layer.in_channels)
        result[name] = RankChoice(r_out, r_in, rule, "override")
    return result


def ranks_of(choices: Mapping[str, RankChoice]) -> dict[str, tuple[int, int]]:
    """The plain name -> (r_out, r_in) mapping that TuckerEngine.compress takes."""
    return {name: choice.ranks for name, choice in choices.items()}


def parse_layer_override(text: str) -> tuple[str, tuple[int, int]]:
    """'decoder.stages.0.convs.0.conv=64,128' -> (name, (r_out, r_in))."""
    match = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*,\s*(\d+)\s*", text)
    if not match:
        raise RankPolicyError(f"--layer {text!r}: expected NAME=R_OUT,R_IN, e.g. decoder.transpconvs.0=64,80")
    return match.group(1), (int(match.group(2)), int(match.group(3)))


def _cheapest_cell_reaching(grid: np.ndarray, threshold: float, layer: ConvLayer) -> tuple[int, int]:
    """Among cells with EV >= threshold, the one with the fewest Tucker parameters (ties: higher EV)."""
    r_out = np.arange(1, grid.shape[0] + 1)[:, None]
    r_in = np.arange(1, grid.shape[1] + 1)[None, :]
    params = layer.in_channels * r_in + r_out * r_in * layer.kernel_volume + r_out * layer.out_channels
    reachable = grid >= threshold - 1e-12
    if not reachable.any():
        return grid.shape[0], grid.shape[1]
    cost = np.where(reachable, params - grid * 1e-3, np.inf)
    index = np.unravel_index(np.argmin(cost), cost.shape)
    return int(index[0]) + 1, int(index[1]) + 1


def parse_df_options(values: Iterable[str], expert_names: Iterable[str]) -> dict[str, float]:
    """['0.3', 'ribs=0.5'] -> {expert: DF}: a plain value for every expert, EXPERT=DF for one (wins)."""
    names = list(expert_names)
    default: float | None = None
    per_expert: dict[str, float] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            df = float(number)
        except ValueError:
            raise RankPolicyError(f"--df {value!r}: expected a number like 0.3 or EXPERT=0.3") from None
        try:
            check_df(df)
        except RankPolicyError as exc:
            raise RankPolicyError(f"--df {value!r}: {exc}") from None
        if not name:
            default = df
        elif name not in names:
            raise RankPolicyError(f"--df {value!r}: no expert named {name!r}; experts: {', '.join(names)}")
        else:
            per_expert[name] = df
    result = {name: default for name in names if default is not None}
    result.update(per_expert)
    return result
