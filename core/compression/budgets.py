"""Per-layer ranks that hit a budget: a parameter or FLOP ratio, an energy floor, or any per-layer cost table.

The paper gives every layer the same relative DF, so the same DF lands on different ratios per model. Here
the user names the budget and the solver picks (r_out, r_in) per layer (in one expert, or across all experts
together) to keep the most kernel energy under it. Each layer offers every rank pair with its cost (counted as
counting.py counts it) and its explained variance (the cached energy grid), plus the uncompressed layer.
Per layer only the cheapest way to each energy level matters (the Pareto front), and of that only the upper
concave hull, so the choice is a multiple-choice knapsack that a greedy walk along the hulls solves in
order of marginal energy per cost (the Lagrangian solution for every lambda at once); a last pass spends
what is left on the Pareto points between hull vertices, which brings the cost within a fraction of a
percent of the budget. The result is deterministic (stable sorts, fixed tie-breaks) and takes milliseconds
once the fronts are built; a ``BudgetPlanner`` keeps the fronts for the next target.

What each layer's energy is worth: its explained variance, times a weight (1 by default; a measured
sensitivity where one is given), so that a layer's share of the budget does not depend on its weights' scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from tuckerscope.core.compression.conv_layers import ConvLayer, LayerShapes
from tuckerscope.core.compression.counting import count_network, original_layer_cost, tucker_layer_cost
from tuckerscope.core.compression.explained_variance import explained_variance, explained_variance_grid
from tuckerscope.core.compression.ranks import explained_variance_ranks, ranks_of
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.compression.vbmf import vbmf_ranks
from tuckerscope.core.runtime.errors import UserError

TargetKind = Literal["params", "flops", "time", "energy", "ev", "vbmf"]
TARGET_KINDS: tuple[str, ...] = ("params", "flops", "time", "energy", "ev", "vbmf")
TARGET_SYNTAX = "params=10x, flops=8x, time=1.5s, energy=0.9, ev=0.9 or vbmf"
LayerKey = tuple[str, str]  # (expert, layer)
CostGrid = Callable[[str, ConvLayer, LayerShapes], tuple[np.ndarray, float]]


class BudgetError(UserError):
    """A target that cannot be parsed or applied."""


@dataclass(frozen=True)
class Target:
    """What the user asks for: a ratio (params, flops), seconds per patch (time), a fraction (energy, ev)."""

    kind: TargetKind
    value: float | None = None

    def describe(self) -> str:
        if self.kind == "vbmf":
            return "vbmf"
        if self.kind in ("params", "flops"):
            return f"{self.kind}={self.value:g}x"
        if self.kind == "time":
            return f"time={self.value:g}s"
        return f"{self.kind}={self.value:g}"


def parse_target(text: str) -> Target:
    """'params=10x' | 'flops=8x' | 'time=1.5s' (or 1500ms) | 'energy=0.9' | 'ev=0.9' | 'vbmf' -> Target."""
    spec = text.strip().lower()
    if spec == "vbmf":
        return Target("vbmf")
    kind, _, amount = spec.partition("=")
    kind = kind.strip()
    if kind not in TARGET_KINDS or kind == "vbmf" or not amount.strip():
        raise BudgetError(f"--target {text!r}: expected one of {TARGET_SYNTAX}")
    units = {"params": ("x", ""), "flops": ("x", ""), "time": ("s", "ms", ""), "energy": ("",), "ev": ("",)}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|x)?\s*", amount)
    if not match or (match.group(2) or "") not in units[kind]:
        raise BudgetError(f"--target {text!r}: expected one of {TARGET_SYNTAX}")
    value = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if kind in ("params", "flops") and not value >= 1.0:
        raise BudgetError(f"--target {text!r}: a compression ratio is at least 1x")
    if kind == "time" and not value > 0.0:
        raise BudgetError(f"--target {text!r}: a time per patch must be above 0 s")
    if kind in ("energy", "ev") and not 0.0 < value <= 1.0:
        raise BudgetError(f"--target {text!r}: a fraction of kernel energy is in (0, 1]")
    return Target(kind, value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Frontier:
    """One layer's useful choices, cheapest first: the Pareto front of (cost, value) and its concave hull.

    ``ranks[i]`` is (r_out, r_in); the uncompressed layer appears as (C_out, C_in), which TuckerEngine.compress
    and count_network both leave (and count) as the original conv. ``hull`` indexes the Pareto points on the
    upper concave hull, the only ones the greedy walk stops at before the last pass.
    """

    ranks: np.ndarray
    cost: np.ndarray
    value: np.ndarray
    hull: np.ndarray


def build_frontier(
    cost: np.ndarray, value: np.ndarray, original_cost: float, original_value: float, min_rank: int = 1
) -> Frontier:
    """The Pareto front and its upper hull from a layer's (r_out, r_in) grids plus the original layer."""
    c_out, c_in = cost.shape
    costs = np.append(cost.astype(np.float64).ravel(), float(original_cost))
    values = np.append(value.astype(np.float64).ravel(), float(original_value))
    cells = np.arange(costs.size)  # flat (r_out - 1) * c_in + (r_in - 1); the last one is the original
    if min_rank > 1:
        r_out, r_in = np.divmod(cells[:-1], c_in)
        allowed = (r_out + 1 >= min(min_rank, c_out)) & (r_in + 1 >= min(min_rank, c_in))
        cells = np.append(cells[:-1][allowed], cells[-1])
    order = cells[np.argsort(costs[cells])]
    costs, values = costs[order], values[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(values)[:-1]])
    keep = np.flatnonzero(values > best_before)
    # of kept points that cost the same (ties come in any order), only the last, most valuable one counts
    keep = keep[np.append(costs[keep][1:] != costs[keep][:-1], True)]
    order, costs, values = order[keep], costs[keep], values[keep]
    r_out, r_in = np.divmod(order, c_in)
    ranks = np.stack([r_out + 1, r_in + 1], axis=1)
    ranks[order == c_out * c_in] = (c_out, c_in)
    return Frontier(ranks.astype(np.int64), costs, values, _upper_hull(costs, values))


def _upper_hull(costs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the upper concave hull of points sorted by increasing cost and value.

    qhull on the points scaled to the unit square (costs span ten orders of magnitude), then the vertices
    on or above the chord from the cheapest to the dearest point: that chain is the upper hull.
    """
    if len(costs) <= 2:
        return np.arange(len(costs))
    x = (costs - costs[0]) / (costs[-1] - costs[0])
    y = (values - values[0]) / (values[-1] - values[0])
    try:
        vertices = ConvexHull(np.column_stack([x, y])).vertices
    except QhullError:  # every point on one line: the chord is the hull
        return np.array([0, len(costs) - 1])
    upper = vertices[y[vertices] >= x[vertices] - 1e-12]
    return np.unique(np.concatenate([[0, len(costs) - 1], upper]))


@dataclass(frozen=True)
class Allocation:
    """Where the solver stopped on each layer's front, and what that costs and keeps in total."""

    positions: dict[LayerKey, int]
    cost: float
    value: float


def allocate_budget(frontiers: Mapping[LayerKey, Frontier], budget: float) -> Allocation | None:
    """The most total value with total layer cost <= ``budget``; None when even the cheapest choices exceed it.

    Greedy over every layer's hull segments in order of value per cost (ties: layer order, then segment
    order), skipping a layer's later segments once one does not fit; then each layer may move to the most
    valuable Pareto point it can still afford, the layer whose move gains most first.
    """
    keys = list(frontiers)
    positions = {key: 0 for key in keys}
    spent = sum(float(frontiers[key].cost[0]) for key in keys)
    if spent > budget:
        return None
    slopes, layer_index, segment = [], [], []
    for index, key in enumerate(keys):
        front = frontiers[key]
        hull_cost, hull_value = front.cost[front.hull], front.value[front.hull]
        slopes.append(np.diff(hull_value) / np.diff(hull_cost))
        layer_index.append(np.full(len(front.hull) - 1, index))
        segment.append(np.arange(1, len(front.hull)))
    slope, owner, step = (np.concatenate(a) if a else np.zeros(0) for a in (slopes, layer_index, segment))
    order = np.lexsort((step, owner, -slope))
    hull_step = {key: 0 for key in keys}
    blocked: set[LayerKey] = set()
    for i in order:
        key = keys[int(owner[i])]
        if key in blocked:
            continue
        front = frontiers[key]
        target = int(front.hull[int(step[i])])
        extra = float(front.cost[target] - front.cost[positions[key]])
        if spent + extra <= budget:
            spent += extra
            positions[key] = target
            hull_step[key] = int(step[i])
        else:
            blocked.add(key)
    spent = _spend_the_rest(frontiers, keys, positions, spent, budget)
    value = sum(float(frontiers[key].value[positions[key]]) for key in keys)
    return Allocation(positions, spent, value)


def _spend_the_rest(
    frontiers: Mapping[LayerKey, Frontier],
    keys: Sequence[LayerKey],
    positions: dict[LayerKey, int],
    spent: float,
    budget: float,
) -> float:
    """Move layers to dearer Pareto points while the budget allows, the largest value gain first."""
    moved: set[LayerKey] = set()
    while True:
        best: tuple[float, int, LayerKey, int] | None = None
        for index, key in enumerate(keys):
            if key in moved:
                continue
            front, here = frontiers[key], positions[key]
            there = int(np.searchsorted(front.cost, front.cost[here] + (budget - spent), side="right")) - 1
            if there > here:
                gain = float(front.value[there] - front.value[here])
                if best is None or (gain, -index) > (best[0], -best[1]):
                    best = (gain, index, key, there)
        if best is None:
            return spent
        _, _, key, there = best
        spent += float(frontiers[key].cost[there] - frontiers[key].cost[positions[key]])
        positions[key] = there
        moved.add(key)


def reach_value(frontiers: Mapping[LayerKey, Frontier], floor: float) -> dict[LayerKey, int] | None:
    """The cheapest hull walk whose total value reaches ``floor`` (greedy by value per cost); None if none does."""
    keys = list(frontiers)
    positions = {key: 0 for key in keys}
    value = sum(float(frontiers[key].value[0]) for key in keys)
    steps = []
    for index, key in enumerate(keys):
        front = frontiers[key]
        hull_cost, hull_value = front.cost[front.hull], front.value[front.hull]
        for s, slope in enumerate(np.diff(hull_value) / np.diff(hull_cost), start=1):
            steps.append((-float(slope), index, s))
    for _, index, s in sorted(steps):
        if value >= floor:
            break
        key = keys[index]
        front = frontiers[key]
        target = int(front.hull[s])
        value += float(front.value[target] - front.value[positions[key]])
        positions[key] = target
    return positions if value >= floor * (1 - 1e-12) else None


def params_grid(_expert: str, layer: ConvLayer, shapes: LayerShapes) -> tuple[np.ndarray, float]:
    """Parameters of the layer's three Tucker convs at every (r_out, r_in), and of the original conv."""
    r_out, r_in = _rank_axes(layer)
    return tucker_layer_cost(layer, shapes, r_out, r_in).params, original_layer_cost(layer, shapes).params


def flops_grid(_expert: str, layer: ConvLayer, shapes: LayerShapes) -> tuple[np.ndarray, float]:
    """Multiply-adds of the layer's three Tucker convs at every (r_out, r_in), and of the original conv."""
    r_out, r_in = _rank_axes(layer)
    return tucker_layer_cost(layer, shapes, r_out, r_in).flops, original_layer_cost(layer, shapes).flops


def _rank_axes(layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
    """r_out down the rows, r_in across the columns, as int64 so that FLOP counts never overflow."""
    r_out = np.arange(1, layer.out_channels + 1, dtype=np.int64)[:, None]
    r_in = np.arange(1, layer.in_channels + 1, dtype=np.int64)[None, :]
    return r_out, r_in


@dataclass(frozen=True)
class ExpertBudget:
    """One expert's share of a solved budget: its ranks per layer and its counts before and after."""

    ranks: dict[str, tuple[int, int]]
    params_original: int
    params_compressed: int
    flops_original: int
    flops_compressed: int
    energy_kept: float

    @property
    def params_ratio(self) -> float:
        return self.params_original / max(self.params_compressed, 1)

    @property
    def flops_ratio(self) -> float:
        return self.flops_original / max(self.flops_compressed, 1)


@dataclass(frozen=True)
class BudgetResult:
    """Ranks per expert and layer for a target, what was asked and achieved, and whether it was met.

    ``asked`` and ``achieved`` are in the target's units (ratio, seconds per patch, energy fraction, lowest
    layer EV; vbmf asks nothing and achieves a params ratio). When the target cannot be met, ``met`` is False, the ranks are the
    nearest reachable choice and ``message`` says what can be reached instead.
    """

    target: Target
    experts: dict[str, ExpertBudget]
    asked: float | None
    achieved: float | None
    met: bool
    message: str
    details: dict[str, object] = field(default_factory=dict)

    @property
    def ranks(self) -> dict[str, dict[str, tuple[int, int]]]:
        return {name: expert.ranks for name, expert in self.experts.items()}


class BudgetPlanner:
    """Solves targets for a fixed set of factorised engines, keeping each layer's fronts between targets.

    ``engines`` maps expert name -> TuckerEngine built with an input shape (costs are per patch of that
    shape). With several engines a target applies to them together (the whole model); one engine: per expert.
    ``weights`` scales each layer's explained variance (default 1; keys (expert, layer)).
    """

    def __init__(
        self,
        engines: Mapping[str, TuckerEngine],
        min_rank: int = 1,
        weights: Mapping[LayerKey, float] | None = None,
    ) -> None:
        if not engines:
            raise BudgetError("no experts to apply the target to")
        for name, engine in engines.items():
            if engine.layer_shapes is None:
                raise ValueError(f"engine of {name} needs an input shape to count costs")
        self.engines = dict(engines)
        self.min_rank = min_rank
        self.weights = dict(weights or {})
        self._fronts: dict[str, dict[LayerKey, Frontier]] = {}
        self._original = {name: count_network(engine) for name, engine in self.engines.items()}

    def frontiers(
        self, cost_name: str, cost_of: CostGrid, value: Literal["weighted", "energy"] = "weighted"
    ) -> dict[LayerKey, Frontier]:
        """Every layer's front for one cost kind, built once per planner (``cost_name`` keys the cache)."""
        cache_key = f"{cost_name}/{value}"
        if cache_key not in self._fronts:
            fronts = {}
            for name, engine in self.engines.items():
                for layer in engine.layers:
                    factors = engine.factors(layer.name)
                    grid = explained_variance_grid(factors)
                    scale = (
                        factors.norm_sq if value == "energy" else self.weights.get((name, layer.name), 1.0)
                    )
                    cost, original = cost_of(name, layer, engine.layer_shapes[layer.name])
                    fronts[(name, layer.name)] = build_frontier(
                        cost, grid * scale, original, scale, self.min_rank
                    )
            self._fronts[cache_key] = fronts
        return self._fronts[cache_key]

    def solve(self, target: Target) -> BudgetResult:
        """Ranks for a params, flops, energy, ev or vbmf target (time targets: evaluation.time_budget)."""
        if target.kind in ("params", "flops"):
            return self._solve_ratio(target)
        if target.kind == "energy":
            return self._solve_energy(target)
        if target.kind == "ev":
            return self._solve_layer_ev(target)
        if target.kind == "vbmf":
            return self._solve_vbmf(target)
        raise BudgetError(
            f"{target.describe()}: time targets need a timing setup (see evaluation.time_budget)"
        )

    def original_total(self, kind: Literal["params", "flops"]) -> int:
        return sum(getattr(cost, kind) for cost in self._original.values())

    def fixed_cost(self, kind: Literal["params", "flops"]) -> float:
        """The part of the count no rank changes (norms, convs the engine leaves alone), as count_network counts."""
        return float(
            sum(
                getattr(cost, kind) - sum(getattr(layer, kind) for layer in cost.layers.values())
                for cost in self._original.values()
            )
        )

    def solve_cost(
        self, cost_name: str, cost_of: CostGrid, budget: float, fixed: float
    ) -> tuple[dict[LayerKey, tuple[int, int]], bool, float]:
        """Ranks keeping the most value with total cost (layers + ``fixed``) <= ``budget``.

        Returns the ranks, whether the budget was met, and the cost of the cheapest choice (the floor);
        when the budget is below the floor the ranks are that cheapest choice.
        """
        fronts = self.frontiers(cost_name, cost_of)
        floor = fixed + sum(float(front.cost[0]) for front in fronts.values())
        allocation = allocate_budget(fronts, budget - fixed)
        if allocation is None:
            return {key: _ranks_at(front, 0) for key, front in fronts.items()}, False, floor
        return {key: _ranks_at(fronts[key], i) for key, i in allocation.positions.items()}, True, floor

    def expert_budgets(self, layer_ranks: Mapping[LayerKey, tuple[int, int]]) -> dict[str, ExpertBudget]:
        """Each expert's ranks with its counts before and after (as count_network counts them)."""
        experts = {}
        for name, engine in self.engines.items():
            ranks = {layer.name: layer_ranks[(name, layer.name)] for layer in engine.layers}
            compressed = count_network(engine, ranks)
            original = self._original[name]
            experts[name] = ExpertBudget(
                ranks,
                original.params,
                compressed.params,
                original.flops,
                compressed.flops,
                energy_kept(engine, ranks),
            )
        return experts

    def scope(self) -> str:
        """How messages name what the target applies to: the expert, or all of them together."""
        names = list(self.engines)
        return names[0] if len(names) == 1 else f"the {len(names)} experts together"

    def _solve_ratio(self, target: Target) -> BudgetResult:
        kind: Literal["params", "flops"] = target.kind  # type: ignore[assignment]
        assert target.value is not None
        original = self.original_total(kind)
        cost_of = params_grid if kind == "params" else flops_grid
        layer_ranks, met, floor = self.solve_cost(
            kind, cost_of, original / target.value, self.fixed_cost(kind)
        )
        experts = self.expert_budgets(layer_ranks)
        achieved = original / max(sum(getattr(e, f"{kind}_compressed") for e in experts.values()), 1)
        if met:
            message = f"{kind} {target.value:g}x asked, {achieved:.3f}x achieved"
        else:
            message = (
                f"{target.describe()} cannot be met: {original / floor:.1f}x {kind} is the most {self.scope()} "
                f"can reach (every layer at rank {self.min_rank}); ask for "
                f"{math.floor(original / floor * 10) / 10:g}x or less"
            )
        return BudgetResult(target, experts, target.value, achieved, met, message)

    def _solve_energy(self, target: Target) -> BudgetResult:
        assert target.value is not None
        fronts = self.frontiers("params", params_grid, value="energy")
        total = sum(self.engines[name].factors(layer).norm_sq for name, layer in fronts)
        positions = reach_value(fronts, target.value * total)
        assert positions is not None  # the original layers keep all of it
        experts = self.expert_budgets({key: _ranks_at(fronts[key], i) for key, i in positions.items()})
        kept = sum(float(fronts[key].value[i]) for key, i in positions.items()) / total if total else 1.0
        ratio = self._params_ratio(experts)
        message = f"energy {target.value:g} asked, {kept:.4f} kept at {ratio:.2f}x params"
        return BudgetResult(target, experts, target.value, kept, True, message)

    def _solve_layer_ev(self, target: Target) -> BudgetResult:
        assert target.value is not None
        layer_ranks: dict[LayerKey, tuple[int, int]] = {}
        for name, engine in self.engines.items():
            choices = explained_variance_ranks(engine, target.value, self.min_rank)
            layer_ranks.update({(name, layer): ranks for layer, ranks in ranks_of(choices).items()})
        lowest = min(
            explained_variance(self.engines[name].factors(layer), *ranks)
            for (name, layer), ranks in layer_ranks.items()
        )
        message = f"every layer's explained variance >= {target.value:g} (lowest {lowest:.4f})"
        return BudgetResult(target, self.expert_budgets(layer_ranks), target.value, lowest, True, message)

    def _solve_vbmf(self, target: Target) -> BudgetResult:
        layer_ranks: dict[LayerKey, tuple[int, int]] = {}
        for name, engine in self.engines.items():
            layer_ranks.update({(name, layer): r for layer, r in vbmf_ranks(engine, self.min_rank).items()})
        experts = self.expert_budgets(layer_ranks)
        ratio = self._params_ratio(experts)
        return BudgetResult(target, experts, None, ratio, True, f"VBMF ranks: {ratio:.2f}x params")

    def _params_ratio(self, experts: Mapping[str, ExpertBudget]) -> float:
        return self.original_total("params") / max(sum(e.params_compressed for e in experts.values()), 1)


def _ranks_at(front: Frontier, index: int) -> tuple[int, int]:
    r_out, r_in = front.ranks[index]
    return int(r_out), int(r_in)


def energy_kept(engine: TuckerEngine, ranks: Mapping[str, tuple[int, int]]) -> float:
    """Kept kernel energy over all the network's compressible layers: sum ||G[:r_out, :r_in]||^2 / sum ||W||^2."""
    kept = total = 0.0
    for layer in engine.layers:
        factors = engine.factors(layer.name)
        r_out, r_in = ranks.get(layer.name, (layer.out_channels, layer.in_channels))
        kept += float(factors.energy.numpy()[:r_out, :r_in].sum())
        total += factors.norm_sq
    return min(1.0, kept / total) if total > 0 else 1.0


def solve_budget(
    engines: TuckerEngine | Mapping[str, TuckerEngine],
    target: Target | str,
    min_rank: int = 1,
    weights: Mapping[LayerKey, float] | None = None,
) -> BudgetResult:
    """Ranks per layer for a params, flops, energy, ev or vbmf target; a single engine is named 'expert'.

    For repeated targets on the same engines keep a BudgetPlanner instead (its fronts are reused).
    """
    if isinstance(engines, TuckerEngine):
        engines = {"expert": engines}
    target = parse_target(target) if isinstance(target, str) else target
    return BudgetPlanner(engines, min_rank, weights).solve(target)
