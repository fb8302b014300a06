"""One expert at one compression setting: the object the CLI (eval, report, sweeps) and the window both run.

An ``ExpertRun`` names the expert, its Tucker engine, the ranks chosen (None: full rank, the compressed side
is the original) and the method: 'tucker' slices the cached factors at those ranks; 'prune' is the paper's
baseline, channel pruning at the parameter budget those ranks give (core.compression.pruning). It builds the
compressed network and counts both networks, so every caller gets the same network and the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from tuckerscope.core.compression.counting import NetworkCost, count_network, non_conv_params
from tuckerscope.core.compression.pruning import (
    channels_to_zero,
    fraction_for_budget,
    prunable_layers,
    prune_to_match,
    pruned_cost,
)
from tuckerscope.core.compression.ranks import df_ranks, ranks_of
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import UserError

METHODS = ("tucker", "prune")
RankKey = tuple[object, ...]


class MethodError(UserError):
    """A compression method that does not exist."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MethodError(f"unknown compression method {method!r}; use one of {', '.join(METHODS)}")
    return method


def input_shape(expert: LoadedExpert) -> tuple[int, ...]:
    """(1, channels, *patch): one patch as nnU-Net feeds the network (what sizes and timings are taken on)."""
    channels = expert.dataset_json.get("channel_names") or expert.dataset_json.get("modality") or {"0": "CT"}
    return (1, len(channels), *expert.patch_size)


def expert_engine(expert: LoadedExpert, factorise: bool = True) -> TuckerEngine:
    """The Tucker engine of the network as nnU-Net runs it (one patch of the plans' size)."""
    engine = TuckerEngine(expert.network, input_shape(expert))
    if factorise:
        engine.factorise()
    return engine


def ranks_for_df(engine: TuckerEngine, df: float) -> dict[str, tuple[int, int]]:
    """Every layer's (r_out, r_in) under the paper's DF rule."""
    return ranks_of(df_ranks(engine.layers, df))


@dataclass(frozen=True, eq=False)
class ExpertRun:
    """One expert at one setting; equal ``rank_key``s build equal networks."""

    expert: LoadedExpert
    engine: TuckerEngine
    ranks: Mapping[str, tuple[int, int]] | None  # None: full rank
    rank_key: RankKey = ()
    method: str = "tucker"
    df: float = 1.0
    target: str | None = None  # the budget the ranks were chosen for (compress --target), instead of a DF

    @classmethod
    def at_df(cls, expert: LoadedExpert, engine: TuckerEngine, df: float, method: str = "tucker") -> ExpertRun:
        """The CLI's setting: the DF rule on every layer (DF 1.0: full rank)."""
        ranks = None if df >= 1.0 else ranks_for_df(engine, df)
        return cls(expert, engine, ranks, (round(df, 6), (), method), check_method(method), df)

    @property
    def name(self) -> str:
        return self.expert.name

    @property
    def setting(self) -> str:
        """How the ranks were chosen, for reports: 'DF 0.3' or 'target params=10x'."""
        return f"target {self.target}" if self.target else f"DF {self.df:g}"

    @property
    def is_full_rank(self) -> bool:
        return self.ranks is None

    def build(self) -> nn.Module | None:
        """The compressed network in eval mode (None at full rank: the original runs)."""
        if self.ranks is None:
            return None
        if self.method == "prune":  # the paper's baseline at this Tucker setting's parameter count
            return prune_to_match(self.engine, count_network(self.engine, self.ranks).params).network.eval()
        return self.engine.compress(self.ranks).eval()

    def costs(self) -> tuple[NetworkCost, NetworkCost]:
        """(original, compressed) parameters and FLOPs on one patch, as count_network counts them.

        Pruning is counted on its non-zero weights (pruning.pruned_cost), at the Tucker setting's parameters.
        """
        original = count_network(self.engine)
        if self.ranks is None:
            return original, original
        tucker = count_network(self.engine, self.ranks)
        if self.method != "prune":
            return original, tucker
        # the channels prune_to_match(engine, tucker.params) zeroes, without building the pruned copy
        fraction = fraction_for_budget(self.engine, tucker.params - non_conv_params(self.engine.network))
        zeroed = {layer.name: channels_to_zero(layer, fraction) for layer in prunable_layers(self.engine)}
        return original, pruned_cost(self.engine, zeroed)
