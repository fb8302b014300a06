"""Time targets ("1.5 s per patch"): per-layer forward-time models, cached per machine and runtime, and a
solver that confirms its choice with a real forward timing and corrects it until the timing agrees.

Ranks chosen by FLOPs are not ranks chosen by time: three small convs replace one large one and the kernels'
efficiency depends on channel counts and layout. So each layer's time is measured, once per machine, runtime
(device, precision, layout, threads) and layer shape: its Tucker form at a few rank pairs and the original
conv, interleaved so that load from other processes hits them alike, then fitted by non-negative least
squares to t = t0 + a r_in + b r_out + c r_in r_out (the form of the three convs' multiply-adds). The models
live in a JSON file in the per-user cache folder; a layer shape measured once is never measured again.

The time budget is then a cost table like parameters or FLOPs (budgets.py). What the per-layer models miss
(norms, activations, the rest of the pass, how the layers interact in one pass) is taken from real timings:
the original network's timing gives the first estimate of the rest, and each timing of the chosen network
moves the layers' budget (a secant step on measured vs budget) until the measured time is within the
tolerance of the target or the iterations run out. Each timing runs interleaved with the original network and
is scaled to the original's first timing, so load from other processes that changes between steps does not
steer the choice (LoadNormalisedTimer).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from tuckerscope.core.compression.budgets import (
    BudgetPlanner,
    BudgetResult,
    LayerKey,
    Target,
    parse_target,
)
from tuckerscope.core.compression.conv_layers import ConvLayer, LayerShapes
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.evaluation.timing import ForwardSetup, compare_forward
from tuckerscope.core.runtime.locations import cache_dir

CACHE_VERSION = 1
SAMPLE_FRACTIONS = ((0.1, 0.1), (0.1, 0.6), (0.6, 0.1), (0.35, 0.35), (0.6, 0.6), (1.0, 1.0))
Timer = Callable[[Mapping[str, nn.Module]], dict[str, float]]
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LayerTimeModel:
    """Seconds of one layer: its Tucker form as t0 + a r_in + b r_out + c r_in r_out, and the original conv."""

    coefficients: tuple[float, float, float, float]
    original_seconds: float

    def grid(self, layer: ConvLayer) -> np.ndarray:
        """Modelled seconds at every (r_out, r_in): r_out down the rows, r_in across the columns."""
        t0, per_in, per_out, per_both = self.coefficients
        r_out = np.arange(1, layer.out_channels + 1, dtype=np.float64)[:, None]
        r_in = np.arange(1, layer.in_channels + 1, dtype=np.float64)[None, :]
        return t0 + per_in * r_in + per_out * r_out + per_both * r_out * r_in


def layer_signature(layer: ConvLayer, shapes: LayerShapes) -> str:
    """What a layer's time depends on: its type, channels, kernel, stride, padding and input size."""
    kind = "convT" if layer.transposed else "conv"
    return (
        f"{kind} {layer.in_channels}->{layer.out_channels} k{'x'.join(map(str, layer.kernel_size))} "
        f"s{'x'.join(map(str, layer.stride))} p{layer.padding} d{'x'.join(map(str, layer.dilation))} "
        f"in{'x'.join(map(str, shapes.input_spatial))}"
    )


def runtime_key(setup: ForwardSetup) -> str:
    """Machine and runtime a cost model is valid for: CPU model, cores, torch, device, precision, layout, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if setup.device.startswith("cuda") and torch.cuda.is_available():
        cpu = torch.cuda.get_device_name(torch.device(setup.device))
    return f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | {setup.describe()}"


class CostModel:
    """Per-layer time models for one machine and runtime, measured on demand and kept in the cache folder."""

    def __init__(self, setup: ForwardSetup, folder: Path | None = None, runs: int = 3) -> None:
        self.setup = setup
        self.runs = runs
        self.key = runtime_key(setup)
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:16]
        self.path = (folder or cache_dir() / "cost_models") / f"{digest}.json"
        self.layers: dict[str, LayerTimeModel] = {}
        self.measured_now = 0
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if data.get("version") != CACHE_VERSION or data.get("runtime") != self.key:
            return
        for signature, entry in data.get("layers", {}).items():
            self.layers[signature] = LayerTimeModel(tuple(entry["coefficients"]), entry["original_seconds"])

    def save(self) -> None:
        """Write atomically: a half-written cache must never be read back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": CACHE_VERSION,
            "runtime": self.key,
            "layers": {
                signature: {"coefficients": list(m.coefficients), "original_seconds": m.original_seconds}
                for signature, m in sorted(self.layers.items())
            },
        }
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1)
        os.replace(temporary, self.path)

    def layer_model(self, layer: ConvLayer, shapes: LayerShapes) -> LayerTimeModel:
        signature = layer_signature(layer, shapes)
        if signature not in self.layers:
            self.layers[signature] = measure_layer(layer, shapes, self.setup, self.runs)
            self.measured_now += 1
        return self.layers[signature]

    def ensure(self, planner: BudgetPlanner, progress: Progress | None = None) -> None:
        """Measure every layer shape of the planner's engines not in the cache yet, then save."""
        todo = [
            (layer, engine.layer_shapes[layer.name])
            for engine in planner.engines.values()
            for layer in engine.layers
            if engine.layer_shapes is not None
        ]
        before = self.measured_now
        for index, (layer, shapes) in enumerate(todo):
            self.layer_model(layer, shapes)
            if progress is not None:
                progress(index + 1, len(todo), layer.name)
        if self.measured_now > before:
            self.save()

    def cost_grid(self, _expert: str, layer: ConvLayer, shapes: LayerShapes) -> tuple[np.ndarray, float]:
        model = self.layer_model(layer, shapes)
        return model.grid(layer), model.original_seconds


def measure_layer(
    layer: ConvLayer, shapes: LayerShapes, setup: ForwardSetup, runs: int = 3
) -> LayerTimeModel:
    """Time the layer's original conv and its Tucker form at SAMPLE_FRACTIONS of its channels; fit the model."""
    samples = sorted(
        {
            (max(1, round(layer.out_channels * f_out)), max(1, round(layer.in_channels * f_in)))
            for f_out, f_in in SAMPLE_FRACTIONS
        }
    )
    generator = torch.Generator().manual_seed(0)
    modules: dict[str, nn.Module] = {"original": _original_conv(layer, generator)}
    for r_out, r_in in samples:
        modules[f"{r_out},{r_in}"] = _random_tucker_conv(layer, r_out, r_in, generator)
    timings = compare_forward(modules, (1, layer.in_channels, *shapes.input_spatial), setup, runs=runs)
    design = np.array([[1.0, r_in, r_out, r_in * r_out] for r_out, r_in in samples])
    seconds = np.array([timings[f"{r_out},{r_in}"].wall_seconds for r_out, r_in in samples])
    coefficients, _ = nnls(design, seconds)
    return LayerTimeModel(tuple(float(c) for c in coefficients), timings["original"].wall_seconds)


def _original_conv(layer: ConvLayer, generator: torch.Generator) -> nn.Module:
    conv_type = nn.ConvTranspose3d if layer.transposed else nn.Conv3d
    options = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, bias=layer.has_bias)
    if layer.transposed:
        options["output_padding"] = layer.output_padding
    conv = conv_type(layer.in_channels, layer.out_channels, layer.kernel_size, **options)
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return conv.eval()


def _random_tucker_conv(layer: ConvLayer, r_out: int, r_in: int, generator: torch.Generator) -> TuckerConv:
    """A TuckerConv of the layer's shapes at (r_out, r_in) with random values (time does not depend on them)."""
    module = TuckerConv.empty(layer, r_out, r_in)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module


class LoadNormalisedTimer:
    """Median forward seconds per expert network on one patch, corrected for load that comes and goes.

    Each network is timed interleaved with its expert's original (compare_forward), and its time is scaled by
    how much slower the original ran than at its first timing here: load from other processes between the
    solver's steps then does not move the choice. The first call, on the originals, sets that baseline.
    """

    def __init__(self, planner: BudgetPlanner, setup: ForwardSetup, runs: int = 3) -> None:
        self.planner = planner
        self.setup = setup
        self.runs = runs
        self.baseline: dict[str, float] = {}

    def __call__(self, networks: Mapping[str, nn.Module]) -> dict[str, float]:
        seconds = {}
        for name, network in networks.items():
            engine = self.planner.engines[name]
            pair = {"original": engine.network}
            if network is not engine.network:
                pair["chosen"] = network
            timed = compare_forward(pair, engine.input_shape, self.setup, runs=self.runs)
            original = timed["original"].wall_seconds
            self.baseline.setdefault(name, original)
            chosen = timed["chosen"].wall_seconds if "chosen" in timed else original
            seconds[name] = chosen * self.baseline[name] / original
        return seconds


def solve_time_target(
    planner: BudgetPlanner,
    target: Target,
    setup: ForwardSetup,
    cost_model: CostModel | None = None,
    timer: Timer | None = None,
    tolerance: float = 0.05,
    iterations: int = 4,
    progress: Progress | None = None,
) -> BudgetResult:
    """Ranks whose measured forward time per patch (summed over the planner's experts) meets ``target``.

    Meets means within ``tolerance`` of the target or below it; the result's ``details`` name the setup, the
    original time, every (layer budget, measured) step and the cost model file.
    """
    assert target.kind == "time" and target.value is not None
    cost_model = cost_model or CostModel(setup)
    cost_model.ensure(planner, progress)
    timer = timer or LoadNormalisedTimer(planner, setup)
    original_seconds = sum(timer({name: e.network for name, e in planner.engines.items()}).values())
    cost_name = f"time/{cost_model.key}"
    fronts = planner.frontiers(cost_name, cost_model.cost_grid)
    original_layers = sum(float(front.cost[-1]) for front in fronts.values())
    fastest_layers = sum(float(front.cost[0]) for front in fronts.values())
    rest = max(original_seconds - original_layers, 0.0)
    details: dict[str, object] = {
        "setup": setup.describe(),
        "runtime": cost_model.key,
        "cost_model": str(cost_model.path),
        "layers_measured_now": cost_model.measured_now,
        "original_seconds": original_seconds,
    }
    if target.value >= original_seconds:
        ranks = {key: _full(planner, key) for key in fronts}
        message = f"time {target.value:g} s asked: the original already takes {original_seconds:.3f} s"
        details["steps"] = []
        return _time_result(planner, target, ranks, original_seconds, True, message, details)
    budget = target.value - rest
    steps: list[tuple[float, float, dict[LayerKey, tuple[int, int]]]] = []
    for _ in range(iterations):
        ranks, _, _ = planner.solve_cost(cost_name, cost_model.cost_grid, max(budget, fastest_layers), 0.0)
        networks = {
            name: engine.compress({layer: r for (owner, layer), r in ranks.items() if owner == name}).eval()
            for name, engine in planner.engines.items()
        }
        measured = sum(timer(networks).values())
        steps.append((budget, measured, ranks))
        if abs(measured - target.value) <= tolerance * target.value:
            break
        if measured > target.value and budget <= fastest_layers:
            break  # already the fastest choice: the target is below the floor
        budget = _next_budget([(b, m) for b, m, _ in steps], target.value, fastest_layers, original_layers)
    details["steps"] = [{"layer_budget_s": b, "measured_s": m} for b, m, _ in steps]
    fitting = [step for step in steps if step[1] <= target.value * (1 + tolerance)]
    if fitting:  # the slowest choice that fits keeps the most; else the fastest one tried
        _, measured, ranks = max(fitting, key=lambda step: step[1])
        message = (
            f"time {target.value:g} s asked, {measured:.3f} s measured ({setup.describe()}; original "
            f"{original_seconds:.3f} s)"
        )
    else:
        _, measured, ranks = min(steps, key=lambda step: step[1])
        message = (
            f"{target.describe()} cannot be met on {setup.describe()}: the fastest choice of {planner.scope()} "
            f"took {measured:.3f} s (original {original_seconds:.3f} s); ask for "
            f"{measured * (1 + tolerance):.2f} s or more"
        )
    return _time_result(planner, target, ranks, measured, bool(fitting), message, details)


def _next_budget(steps: list[tuple[float, float]], target: float, fastest: float, slowest: float) -> float:
    """The next layer budget: a secant step through the last two (budget, measured) points, else the offset."""
    budget, measured = steps[-1]
    if len(steps) >= 2 and steps[-2][1] != measured:
        previous_budget, previous_measured = steps[-2]
        slope = (
            (measured - previous_measured) / (budget - previous_budget) if budget != previous_budget else 0.0
        )
        if slope > 0:
            return float(np.clip(budget + (target - measured) / slope, fastest, slowest))
    return float(np.clip(budget + (target - measured), fastest, slowest))


def _full(planner: BudgetPlanner, key: LayerKey) -> tuple[int, int]:
    layer = planner.engines[key[0]].layer(key[1])
    return layer.out_channels, layer.in_channels


def _time_result(
    planner: BudgetPlanner,
    target: Target,
    ranks: Mapping[LayerKey, tuple[int, int]],
    measured: float,
    met: bool,
    message: str,
    details: dict[str, object],
) -> BudgetResult:
    return BudgetResult(target, planner.expert_budgets(ranks), target.value, measured, met, message, details)


def solve_target(
    engines: BudgetPlanner | Mapping[str, TuckerEngine],
    target: Target | str,
    setup: ForwardSetup | None = None,
    cost_model: CostModel | None = None,
    progress: Progress | None = None,
) -> BudgetResult:
    """Ranks per expert and layer for any target: the one entry point for the CLI and the window.

    ``engines`` maps expert name -> factorised TuckerEngine (several: the target is for them together), or a
    BudgetPlanner kept between calls so that each layer's fronts are built once. Time targets time forward
    passes on ``setup`` (default: fp32 on the CPU) and measure the cost model on first use (minutes for a TS
    expert, then cached). The result is never an exception for a target that cannot be met: check ``met``.
    """
    planner = engines if isinstance(engines, BudgetPlanner) else BudgetPlanner(engines)
    target = parse_target(target) if isinstance(target, str) else target
    if target.kind == "time":
        return solve_time_target(planner, target, setup or ForwardSetup(), cost_model, progress=progress)
    return planner.solve(target)
