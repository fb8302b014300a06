"""`tuckerscope compress`: Tucker-compress (or prune) experts at a DF or per-layer ranks, report sizes, save.

Prints, per expert and in total, parameters and FLOPs before and after: FLOPs as fvcore counts them (one
multiply-add = one FLOP, convs plus instance norms, one patch of the plans' size, no deep-supervision heads),
with the conv-only figure beside them; --json prints one JSON object with the ranks and costs per layer; -o
writes each compressed expert as an nnU-Net-style results folder that `tuckerscope segment --model` runs.
--target asks for a budget instead of a DF (budgets.py, time_budget.py): per-layer ranks that meet a params or
FLOP ratio, a time per patch, or an energy floor, or VBMF's ranks; --json adds the asked and achieved values.
Without --df, --ev, --layer or --target nothing is compressed: the report is the original experts' sizes per layer.
--method prune runs the paper's baseline instead: channel pruning at the Tucker setting's parameter count.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuckerscope.core.compression.budgets import BudgetError, BudgetResult, parse_target
from tuckerscope.core.compression.counting import NetworkCost, count_network
from tuckerscope.core.compression.hooi import refine_with_hooi
from tuckerscope.core.compression.pruning import prune_to_match
from tuckerscope.core.compression.ranks import (
    RankChoice,
    RankPolicyError,
    df_ranks,
    explained_variance_ranks,
    parse_df_options,
    parse_layer_override,
    ranks_of,
    with_overrides,
)
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.evaluation.time_budget import solve_target
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.models.compressed_model import save_compressed
from tuckerscope.core.models.model_folder import LoadedExpert, load_expert
from tuckerscope.core.models.model_sources import expert_specs
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation.expert_run import ExpertRun, check_method, expert_engine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="Tucker-compress experts and report parameters and FLOPs",
        description="Tucker-compress every conv of each expert (DF rule: r = ceil(C x DF), at least 8, at most "
        "C, per channel mode) and report parameters and FLOPs (fvcore's count, conv-only beside it) before and "
        "after. Without --df, --ev or --layer: the uncompressed experts' parameters and FLOPs, per layer.",
    )
    add_model_argument(parser)
    add_df_argument(parser)
    add_target_argument(parser)
    add_method_argument(parser)
    parser.add_argument(
        "--device", default="cpu", help="for time targets: where the forward passes are timed (default cpu)"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="for time targets (default fp32)"
    )
    parser.add_argument("--threads", type=int, help="for time targets: torch CPU threads (default: torch's)")
    parser.add_argument(
        "--ev",
        type=float,
        metavar="THRESHOLD",
        help="instead of a DF: per layer the smallest ranks whose explained variance reaches THRESHOLD",
    )
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="[EXPERT:]NAME=R_OUT,R_IN",
        help="set one layer's ranks by hand (repeatable); without EXPERT: in every expert",
    )
    parser.add_argument(
        "--round-to",
        type=int,
        choices=(8, 16),
        help="round ranks up to a multiple of 8 or 16 (faster kernels); the DF-rule ranks stay in --json",
    )
    parser.add_argument(
        "--hooi", action="store_true", help="refine the chosen ranks with HOOI (slow, tensorly)"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="write the compressed experts as model folders here"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a TotalSegmentator home, an nnU-Net v2 results folder (or a folder of them), or 'demo'",
    )


def add_df_argument(parser: argparse.ArgumentParser) -> None:
    """--df as compress, segment and eval take it (parsed by ranks.parse_df_options)."""
    parser.add_argument(
        "--df",
        action="append",
        default=[],
        metavar="DF|EXPERT=DF",
        help="downsampling factor in [0.01, 1] for every expert, or EXPERT=DF for one (repeatable; "
        "ranks ceil(C x DF), at least 8, at most C)",
    )


def add_target_argument(parser: argparse.ArgumentParser) -> None:
    """--target and --expert as compress, segment, eval and report take them (parsed by budgets.parse_target)."""
    parser.add_argument(
        "--target",
        metavar="params=10x|flops=8x|time=1.5s|energy=0.9|ev=0.9|vbmf",
        help="instead of a DF: per-layer ranks that meet a parameter or FLOP ratio, a forward time per patch "
        "(on --device/--precision), an overall kernel-energy floor, a per-layer explained-variance floor, or "
        "VBMF's automatic ranks; the most kernel energy is kept within the budget",
    )
    parser.add_argument(
        "--expert",
        action="append",
        default=[],
        metavar="NAME",
        help="apply --target to this expert alone (repeatable: each on its own); default: all experts "
        "together; experts not named stay uncompressed",
    )


def target_ranks(
    target_text: str,
    engines: Mapping[str, TuckerEngine],
    expert_names: Sequence[str],
    setup: ForwardSetup,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, dict[str, tuple[int, int]]], list[BudgetResult]]:
    """Ranks per expert for --target (with --expert: each named expert on its own; else all together).

    A target that cannot be met is a UserError that names what can be reached instead.
    """
    target = parse_target(target_text)
    for name in expert_names:
        if name not in engines:
            raise BudgetError(f"--expert {name!r}: no such expert; experts: {', '.join(engines)}")
    groups = [[name] for name in dict.fromkeys(expert_names)] if expert_names else [list(engines)]
    results = []
    for group in groups:
        result = solve_target({name: engines[name] for name in group}, target, setup, progress=progress)
        if not result.met:
            raise BudgetError(result.message)
        results.append(result)
    return {name: e.ranks for result in results for name, e in result.experts.items()}, results


def budgeted_runs(
    experts: Sequence[LoadedExpert],
    target_text: str,
    expert_names: Sequence[str],
    setup: ForwardSetup,
    method: str = "tucker",
) -> tuple[dict[str, ExpertRun], list[BudgetResult]]:
    """ExpertRuns at --target's ranks for segment, eval and report (experts not named stay uncompressed)."""
    known = [e.name for e in experts]
    for name in expert_names:
        if name not in known:
            raise BudgetError(f"--expert {name!r}: no such expert; experts: {', '.join(known)}")
    chosen = [e for e in experts if not expert_names or e.name in expert_names]
    engines = {e.name: expert_engine(e) for e in chosen}
    ranks, results = target_ranks(target_text, engines, expert_names, setup)
    key = ("target", parse_target(target_text).describe(), method)
    runs = {
        e.name: ExpertRun(e, engines[e.name], ranks[e.name], key, check_method(method), target=key[1])
        for e in chosen
    }
    return runs, results


def budget_choices(
    engine: TuckerEngine, ranks: Mapping[str, tuple[int, int]], source: str
) -> dict[str, RankChoice]:
    """RankChoices for budgeted ranks; there is no DF, so the 'DF rule' shown beside them is full rank."""
    return {
        name: RankChoice(r_out, r_in, (engine.layer(name).out_channels, engine.layer(name).in_channels), source)
        for name, (r_out, r_in) in ranks.items()
    }


def target_json(results: Sequence[BudgetResult]) -> dict[str, Any]:
    """What --json says about a target: asked and achieved per scope, with the timing steps of time targets."""
    return {
        "spec": results[0].target.describe(),
        "kind": results[0].target.kind,
        "scopes": [
            {
                "experts": list(result.experts),
                "asked": result.asked,
                "achieved": result.achieved,
                "met": result.met,
                "message": result.message,
                **({"details": result.details} if result.details else {}),
            }
            for result in results
        ],
    }


METHODS = ("tucker", "prune")


def add_method_argument(parser: argparse.ArgumentParser) -> None:
    """--method as compress, segment, eval and report take it."""
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="tucker",
        help="tucker (default) or prune: the paper's baseline, zeroing each conv's smallest-norm output "
        "channels down to the Tucker network's parameter count at the same DF",
    )


@contextmanager
def quiet_nnunet() -> Iterator[None]:
    """nnU-Net warns on every load of TS's old-format plans; TotalSegmentator silences it the same way."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="nnunetv2")
        yield


def load_experts(model: str) -> list[LoadedExpert]:
    with quiet_nnunet():
        return [load_expert(spec) for spec in expert_specs(model)]


def parse_layer_options(values: list[str], expert_names: list[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """'[EXPERT:]NAME=R_OUT,R_IN' options -> {expert: {layer: ranks}}."""
    result: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in expert_names}
    for value in values:
        expert, _, rest = value.partition(":") if ":" in value.split("=")[0] else ("", "", value)
        name, ranks = parse_layer_override(rest)
        if expert and expert not in result:
            raise RankPolicyError(
                f"--layer {value!r}: no expert named {expert!r}; experts: {', '.join(result)}"
            )
        for target in [expert] if expert else result:
            result[target][name] = ranks
    return result


def run(args: argparse.Namespace) -> int:
    if args.df and args.ev is not None:
        raise UserError("use either --df or --ev, not both")
    if args.target and (args.df or args.ev is not None):
        raise UserError("use either --target or --df/--ev, not both")
    if args.expert and not args.target:
        raise UserError("--expert names the experts a --target applies to; give a --target too")
    if args.method == "prune" and not (args.df or args.ev is not None or args.layer or args.target):
        raise UserError("--method prune prunes to a Tucker setting's parameter count: give --df, --ev or --layer")
    if args.method == "prune" and args.hooi:
        raise UserError("--hooi refines Tucker factors; it does not apply to --method prune")
    experts = load_experts(args.model)
    names = [e.name for e in experts]
    dfs = parse_df_options(args.df, names)
    overrides = parse_layer_options(args.layer, names)
    engines = {expert.name: expert_engine(expert, factorise=False) for expert in experts}
    for engine in engines.values():
        engine.factorise()
    report: dict[str, Any] = {"experts": {}}
    budgeted: dict[str, dict[str, tuple[int, int]]] = {}
    if args.target:
        setup = ForwardSetup(device=args.device, precision=args.precision, threads=args.threads)
        budgeted, results = target_ranks(args.target, engines, args.expert, setup)
        report["target"] = target_json(results)
    for expert in experts:
        report["experts"][expert.name] = compress_one(
            expert, engines[expert.name], args, dfs.get(expert.name), overrides[expert.name], budgeted
        )
    report["total"] = {
        key: sum(entry[key] for entry in report["experts"].values())
        for key in (
            "params_original",
            "params_compressed",
            "flops_original",
            "flops_compressed",
            "conv_flops_original",
            "conv_flops_compressed",
        )
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)
        for scope in report.get("target", {}).get("scopes", []):
            print(f"target {', '.join(scope['experts'])}: {scope['message']}")
    return 0


def compress_one(
    expert: LoadedExpert,
    engine: TuckerEngine,
    args: argparse.Namespace,
    df: float | None,
    overrides: Mapping[str, tuple[int, int]],
    budgeted: Mapping[str, Mapping[str, tuple[int, int]]],
) -> dict[str, Any]:
    if args.ev is not None:
        choices = explained_variance_ranks(engine, args.ev, round_to=args.round_to)
    elif df is not None:
        choices = df_ranks(engine.layers, df, round_to=args.round_to)
    elif expert.name in budgeted:
        choices = budget_choices(engine, budgeted[expert.name], f"target {args.target}")
    else:
        choices = {}
    choices = with_overrides(choices, overrides, engine.layers)
    ranks = ranks_of(choices)
    original = count_network(engine)
    entry: dict[str, Any] = {
        "folder": str(expert.spec.folder),
        "df": df,
        "ev_threshold": args.ev,
        "target": args.target if expert.name in budgeted else None,
    }
    if not choices:
        network, compressed = None, original
        entry["method"] = "none"
    elif args.method == "prune":
        pruned = prune_to_match(engine, count_network(engine, ranks).params)
        network, compressed = pruned.network, pruned.cost
        entry.update(method="prune", prune_fraction=pruned.fraction, matched_to="tucker params")
    else:
        refined = refine_with_hooi(engine, ranks) if args.hooi else None
        network = engine.compress(ranks, refined=refined)
        compressed = count_network(engine, ranks)
        entry["method"] = "hooi" if args.hooi else "hosvd-slice"
    entry.update(cost_fields(original, compressed))
    entry["ranks"] = {name: _rank_entry(choice, engine, name) for name, choice in choices.items()}
    entry["layers"] = {
        name: {
            "params_original": cost.params,
            "params_compressed": compressed.layers[name].params,
            "flops_original": cost.flops,
            "flops_compressed": compressed.layers[name].flops,
        }
        for name, cost in original.layers.items()
    }
    if args.output is not None and network is not None:
        extra = {
            "df": df,
            "ev_threshold": args.ev,
            "target": entry["target"],
            "round_to": args.round_to,
            "compression": entry["method"],
        }
        entry["output_folder"] = str(save_compressed(expert, network, args.output, extra))
    return entry


def cost_fields(original: NetworkCost, compressed: NetworkCost) -> dict[str, Any]:
    """The counts fields of compress --json: fvcore-style totals, conv-only beside them, and per op type."""
    return {
        "params_original": original.params,
        "params_compressed": compressed.params,
        "flops_original": original.flops,
        "flops_compressed": compressed.flops,
        "conv_flops_original": original.conv_flops,
        "conv_flops_compressed": compressed.conv_flops,
        "flops_by_op_original": original.flops_by_op,
        "flops_by_op_compressed": compressed.flops_by_op,
    }


def _rank_entry(choice: RankChoice, engine: TuckerEngine, name: str) -> dict[str, Any]:
    layer = engine.layer(name)
    return {
        "r_out": choice.r_out,
        "r_in": choice.r_in,
        "channels": [layer.out_channels, layer.in_channels],
        "df_rule": list(choice.df_rule),
        "source": choice.source,
    }


def print_table(report: Mapping[str, Any]) -> None:
    """GFLOPs as fvcore counts them (convs and norms), conv-only beside them."""
    print(
        f"{'expert':<14}{'DF':>6}{'params':>14}{'compressed':>14}{'ratio':>8}"
        f"{'GFLOPs':>10}{'compr.':>10}{'ratio':>8}{'conv GFLOPs':>13}{'compr.':>10}"
    )
    rows = list(report["experts"].items()) + [("total", report["total"])]
    for name, entry in rows:
        df = entry.get("df")
        print(
            f"{name:<14}{(f'{df:g}' if df is not None else '-'):>6}"
            f"{entry['params_original']:>14,}{entry['params_compressed']:>14,}"
            f"{entry['params_original'] / entry['params_compressed']:>7.2f}x"
            f"{entry['flops_original'] / 1e9:>10.2f}{entry['flops_compressed'] / 1e9:>10.2f}"
            f"{entry['flops_original'] / entry['flops_compressed']:>7.2f}x"
            f"{entry['conv_flops_original'] / 1e9:>13.2f}{entry['conv_flops_compressed'] / 1e9:>10.2f}"
        )
        if entry.get("output_folder"):
            print(f"{'':<14}saved to {entry['output_folder']}")
