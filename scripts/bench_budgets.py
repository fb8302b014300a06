"""Do budgets hit what is asked, and do budgeted ranks segment better than the paper's uniform DF?

One run prints, per architecture (every TS plan in ../shared/ts_plans with seeded random weights, and the
three demo experts with their real weights):
  1. achieved vs asked for 20 parameter and 20 FLOP targets from 2x to 100x (table, and a log-log plot like the
     seed paper's achieved-vs-requested figure, written as a PNG);
  2. where the budget puts ranks at params=10x: the share of its parameters each kind of layer keeps;
  3. a time target on the demo organs expert (0.8 x its measured forward time), re-measured afterwards;
     --ts-time also on the 3 mm TS network (measures its cost model on first use: minutes);
  4. per demo expert, at the parameter count of DF 0.3 and DF 0.2 and at the measured forward time of those
     DF networks: mean Dice (and NSD) vs the original on 5 phantoms, uniform DF vs budgeted ranks (params,
     FLOPs, FLOPs with sensitivity weights from a calibration patch and rank >= 8, time) and VBMF.
Timings are wall-clock medians on this machine; on a loaded machine they are noisy, which the output says.
Usage: python scripts/bench_budgets.py [--plot budgets.png] [--ts-time] [--no-dice] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ts_home import ALL_TASK_IDS, ts_results_folder  # noqa: E402
from tuckerscope.core.cli.compress import load_experts
from tuckerscope.core.compression.budgets import BudgetPlanner, Target  # noqa: E402
from tuckerscope.core.compression.counting import count_network  # noqa: E402
from tuckerscope.core.compression.ranks import df_ranks, ranks_of  # noqa: E402
from tuckerscope.core.compression.sensitivity import layer_sensitivities  # noqa: E402
from tuckerscope.core.compression.tucker import TuckerEngine  # noqa: E402
from tuckerscope.core.evaluation.metrics import classes_from_names, compare  # noqa: E402
from tuckerscope.core.evaluation.time_budget import CostModel, solve_time_target  # noqa: E402
from tuckerscope.core.evaluation.timing import ForwardSetup, compare_forward  # noqa: E402
from tuckerscope.core.imaging.phantom import Phantom, make_phantom  # noqa: E402
from tuckerscope.core.models.model_folder import LoadedExpert, build_network  # noqa: E402
from tuckerscope.core.segmentation.expert_run import expert_engine  # noqa: E402
from tuckerscope.core.segmentation.segmenter import Segmenter  # noqa: E402

TARGETS = np.geomspace(2.0, 100.0, 20)
# neither training seeds (0-127) nor the training script's held-out ones
PHANTOM_SEEDS = (900, 901, 902, 903, 904)
CALIBRATION_SEED = 950


def ts_engine(task_id: int) -> TuckerEngine:
    folder = ts_results_folder(task_id)
    plans = json.loads((folder / "plans.json").read_text())
    torch.manual_seed(task_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = build_network(plans, json.loads((folder / "dataset.json").read_text())).eval()
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    return TuckerEngine(network, (1, 1, *patch))


def architectures() -> dict[str, TuckerEngine]:
    engines = {
        f"TS {' '.join(ts_results_folder(t).parent.name.split('_')[2:-1])}": ts_engine(t)
        for t in ALL_TASK_IDS
    }
    for expert in load_experts("demo"):
        engines[f"demo {expert.name}"] = expert_engine(expert, factorise=False)
    for engine in engines.values():
        engine.factorise()
    return engines


def ratio_table(engines: dict[str, TuckerEngine]) -> dict[str, dict[str, list[tuple[float, float | None]]]]:
    """achieved[arch][kind] = [(asked, achieved or None when unreachable)] for the 20 targets."""
    achieved: dict[str, dict[str, list[tuple[float, float | None]]]] = {}
    worst = {"params": 0.0, "flops": 0.0}
    print("\n1. achieved vs asked, 20 targets 2x..100x (error = achieved / asked - 1; '-': unreachable)")
    for name, engine in engines.items():
        planner = BudgetPlanner({name: engine})
        achieved[name] = {}
        for kind in ("params", "flops"):
            started = time.perf_counter()
            rows = []
            for asked in TARGETS:
                result = planner.solve(Target(kind, float(asked)))  # type: ignore[arg-type]
                rows.append((float(asked), result.achieved if result.met else None))
                if result.met:
                    worst[kind] = max(worst[kind], abs(result.achieved / asked - 1))
            seconds = time.perf_counter() - started
            achieved[name][kind] = rows
            errors = [f"{(a / asked - 1) * 100:+.2f}%" if a else "-" for asked, a in rows]
            reach = [r for r in rows if r[1] is None]
            note = f"; unreachable from {reach[0][0]:.1f}x ({result.message.split(': ')[1]})" if reach else ""
            print(f"  {name:<34}{kind:<7} {seconds:5.2f} s for 20 (fronts built once){note}")
            print(f"    asked   {' '.join(f'{a:7.2f}' for a, _ in rows)}")
            print(f"    error   {' '.join(f'{e:>7}' for e in errors)}")
    print(
        f"  worst |error| over reachable targets: params {worst['params'] * 100:.3f}%, flops {worst['flops'] * 100:.3f}%"
    )
    return achieved


def plot(achieved: dict[str, dict[str, list[tuple[float, float | None]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for axis, kind in zip(axes, ("params", "flops"), strict=True):
        axis.plot([2, 100], [2, 100], color="0.6", linestyle="--", label="achieved = asked")
        for name, kinds in achieved.items():
            rows = [(a, b) for a, b in kinds[kind] if b is not None]
            axis.plot(*zip(*rows, strict=True), marker="o", markersize=3, linewidth=1, label=name)
        axis.set(xscale="log", yscale="log", xlabel=f"requested {kind} ratio", title=f"{kind} budget")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("achieved ratio")
    axes[1].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"  plot written to {path}")


def placement(engines: dict[str, TuckerEngine]) -> None:
    """Share of each layer kind's parameters kept at params=10x, and the energy kept."""
    print("\n2. where params=10x puts the ranks (share of each layer kind's own parameters kept)")
    print(
        f"  {'architecture':<34}{'encoder':>9}{'decoder':>9}{'transp.':>9}{'seg head':>9}{'energy kept':>13}"
    )
    for name, engine in engines.items():
        result = BudgetPlanner({name: engine}).solve(Target("params", 10.0))
        ranks = result.ranks[name]
        original, compressed = count_network(engine), count_network(engine, ranks)
        groups: dict[str, list[int]] = {
            "encoder": [0, 0],
            "decoder": [0, 0],
            "transp.": [0, 0],
            "seg head": [0, 0],
        }
        for layer in engine.layers:
            group = (
                "transp."
                if layer.transposed
                else "seg head"
                if "seg_layers" in layer.name
                else "encoder"
                if layer.name.startswith("encoder")
                else "decoder"
            )
            groups[group][0] += original.layers[layer.name].params
            groups[group][1] += compressed.layers[layer.name].params
        shares = "".join(f"{(kept / total if total else 1) * 100:>8.1f}%" for total, kept in groups.values())
        print(f"  {name:<34}{shares}{result.experts[name].energy_kept:>13.4f}")


def time_target(name: str, engine: TuckerEngine, setup: ForwardSetup, fraction: float = 0.8) -> None:
    planner = BudgetPlanner({name: engine})
    started = time.perf_counter()
    model = CostModel(setup)
    model.ensure(planner)
    cost_seconds = time.perf_counter() - started
    original = compare_forward({"o": engine.network}, engine.input_shape, setup)["o"].wall_seconds
    asked = round(original * fraction, 3)
    started = time.perf_counter()
    result = solve_time_target(planner, Target("time", asked), setup, model)
    solve_seconds = time.perf_counter() - started
    chosen = engine.compress(result.ranks[name]).eval()
    again = compare_forward({"original": engine.network, "chosen": chosen}, engine.input_shape, setup, runs=5)
    print(
        f"  {name}: cost model {cost_seconds:.1f} s ({model.measured_now} layer shapes measured now; {model.path})"
    )
    print(
        f"    original {original:.3f} s -> asked {asked:g} s; {result.message}; solve {solve_seconds:.1f} s"
    )
    steps = ", ".join(f"{step['measured_s']:.3f} s" for step in result.details["steps"])
    print(f"    steps measured: {steps}")
    chosen_s, original_now = again["chosen"].wall_seconds, again["original"].wall_seconds
    normalised = chosen_s * original / original_now  # the load-normalised figure the solver steers by
    runs = ", ".join(f"{r:.2f}" for r in again["chosen"].runs_wall)
    print(
        f"    re-measured (5 runs, interleaved with the original): chosen {chosen_s:.3f} s ({runs}; "
        f"{(chosen_s / asked - 1) * 100:+.1f}% vs asked), original {original_now:.3f} s; load-normalised "
        f"{normalised:.3f} s ({(normalised / asked - 1) * 100:+.1f}% vs asked); params "
        f"{result.experts[name].params_ratio:.2f}x, flops {result.experts[name].flops_ratio:.2f}x"
    )


def mean_agreement(
    expert: LoadedExpert,
    engine: TuckerEngine,
    ranks: Mapping[str, tuple[int, int]],
    segmenters: Sequence[Segmenter],
    phantoms: Sequence[Phantom],
) -> tuple[float, float]:
    """Mean over phantoms of the expert's mean Dice and NSD, compressed at ``ranks`` vs the original."""
    network = engine.compress(ranks).eval()
    classes = classes_from_names(expert.class_names, expert.name)
    dice, nsd = [], []
    for segmenter, phantom in zip(segmenters, phantoms, strict=True):
        reference = segmenter.segment(expert)  # the original, cached by the segmenter
        summary = compare(reference, segmenter.segment(expert, network), phantom.spacing, classes)
        dice.append(summary.by_expert()[expert.name].mean_dice)
        nsd.append(summary.by_expert()[expert.name].mean_nsd)
    return float(np.mean(dice)), float(np.mean(nsd))


def calibration_patch(expert: LoadedExpert, seed: int = CALIBRATION_SEED) -> torch.Tensor:
    """A central 40 x 48 x 56 crop of another phantom as the network sees it, for sensitivity weights."""
    phantom = make_phantom(seed)
    x = Segmenter(phantom.ct, phantom.affine).model_input(expert)
    crop = tuple(
        slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(x.shape[1:], (40, 48, 56), strict=True)
    )
    return x[(slice(None), *crop)][None].float().contiguous()


def dice_comparison(setup: ForwardSetup, names: Sequence[str]) -> None:
    print(
        "\n4. mean Dice / NSD vs the original on 5 phantoms (seeds "
        + ", ".join(map(str, PHANTOM_SEEDS))
        + ")"
    )
    phantoms = [make_phantom(seed) for seed in PHANTOM_SEEDS]
    model = CostModel(setup)
    for expert in [e for e in load_experts("demo") if not names or e.name in names]:
        engine = expert_engine(expert, factorise=False)
        engine.factorise()
        planner = BudgetPlanner({expert.name: engine})
        weights = {
            (expert.name, k): w for k, w in layer_sensitivities(engine, calibration_patch(expert)).items()
        }
        weighted = BudgetPlanner({expert.name: engine}, min_rank=8, weights=weights)
        segmenters = [Segmenter(p.ct, p.affine) for p in phantoms]
        original = count_network(engine)
        for df in (0.3, 0.2):
            uniform = ranks_of(df_ranks(engine.layers, df))
            ratio = original.params / count_network(engine, uniform).params
            flops_ratio = original.flops / count_network(engine, uniform).flops
            budget = planner.solve(Target("params", ratio))
            by_flops = planner.solve(Target("flops", flops_ratio))
            by_flops_weighted = weighted.solve(Target("flops", flops_ratio))
            seconds = compare_forward({"u": engine.compress(uniform)}, engine.input_shape, setup)[
                "u"
            ].wall_seconds
            timed = solve_time_target(planner, Target("time", seconds), setup, model, tolerance=0.1)
            rows = {
                f"uniform DF {df:g}": (uniform, f"({seconds:.2f} s measured)"),
                f"budget params={ratio:.2f}x": (budget.ranks[expert.name], ""),
                f"budget flops={flops_ratio:.2f}x": (by_flops.ranks[expert.name], ""),
                "  + sensitivity, rank >= 8": (by_flops_weighted.ranks[expert.name], ""),
                f"budget time={seconds:.2f}s": (
                    timed.ranks[expert.name],
                    f"({timed.achieved:.2f} s measured)",
                ),
            }
            for label, (ranks, note) in rows.items():
                dice, nsd = mean_agreement(expert, engine, ranks, segmenters, phantoms)
                cost = count_network(engine, ranks)
                print(
                    f"  {expert.name:<9} {label:<26} Dice {dice:.4f}  NSD {nsd:.4f}  params "
                    f"{original.params / cost.params:6.2f}x  flops {original.flops / cost.flops:5.2f}x {note}",
                    flush=True,
                )
        vbmf = planner.solve(Target("vbmf"))
        dice, nsd = mean_agreement(expert, engine, vbmf.ranks[expert.name], segmenters, phantoms)
        print(f"  {expert.name:<9} {'vbmf':<26} Dice {dice:.4f}  NSD {nsd:.4f}  params {vbmf.achieved:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plot", type=Path, default=Path(tempfile.gettempdir()) / "tuckerscope_budgets.png")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ts-time", action="store_true", help="also a time target on the 3 mm TS network")
    parser.add_argument("--dice-experts", nargs="*", default=[], help="demo experts to score (default: all)")
    parser.add_argument("--no-dice", action="store_true", help="skip the Dice comparison (minutes)")
    args = parser.parse_args()
    setup = ForwardSetup(threads=args.threads)
    load = os.getloadavg()[0]
    print(f"machine load (1 min) {load:.1f} on {os.cpu_count()} cores; timings {setup.describe()}")
    started = time.perf_counter()
    engines = architectures()
    print(f"factorised {len(engines)} architectures in {time.perf_counter() - started:.1f} s")
    plot(ratio_table(engines), args.plot)
    placement(engines)
    print("\n3. time targets (0.8 x the measured original forward time per patch)")
    time_target("demo organs", engines["demo organs"], setup)
    if args.ts_time:
        name = next(n for n in engines if "3mm" in n)
        time_target(name, engines[name], setup)
    if not args.no_dice:
        dice_comparison(setup, args.dice_experts)
    print(f"\nmachine load (1 min) at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
