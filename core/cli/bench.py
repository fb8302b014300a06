"""`tuckerscope bench recompress|forward`: how fast recompression and compressed forward passes are, measured.

recompress: the one-off factorisation, the recompression time per DF, the time to fill every heatmap, and with
--reference the paper's way (tensorly partial_tucker per layer) at one DF on the same network, with the ratio.
forward: original vs compressed forward passes, interleaved on the same input (warm-up, then the median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from tuckerscope.core.cli.compress import add_model_argument, load_experts
from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.explained_variance import all_heatmaps
from tuckerscope.core.compression.hooi import refine_with_hooi
from tuckerscope.core.compression.ranks import check_df, df_ranks, ranks_of
from tuckerscope.core.evaluation.timing import PRECISIONS, ForwardSetup, compare_forward, profile_layers
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.runtime.memory import retain_freed_memory
from tuckerscope.core.segmentation.expert_run import expert_engine

RECOMPRESS_DFS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure recompression and forward-pass speed")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)

    recompress = benches.add_parser("recompress", help="factorisation, recompression and heatmap times")
    add_model_argument(recompress)
    add_expert_argument(recompress)
    recompress.add_argument(
        "--reference", action="store_true", help="also time tensorly partial_tucker per layer (minutes)"
    )
    recompress.add_argument("--reference-df", type=float, default=0.3, help="DF of the reference run (0.3)")
    recompress.add_argument(
        "--repeats", type=int, default=5, help="recompressions per DF; the median is shown"
    )
    recompress.add_argument("--json", action="store_true", help="print one JSON object")
    recompress.set_defaults(func=run_recompress)

    forward = benches.add_parser("forward", help="forward-pass time, original vs compressed")
    add_model_argument(forward)
    add_expert_argument(forward)
    forward.add_argument("--df", type=float, action="append", required=True, help="DF to time (repeatable)")
    forward.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 is the reference")
    forward.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    forward.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    forward.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    forward.add_argument("--round-to", type=int, choices=(8, 16), help="round ranks up to a multiple of 8/16")
    forward.add_argument("--patch", help="input size D,H,W instead of the plans' patch size")
    forward.add_argument("--runs", type=int, default=3, help="timed passes per network (median shown)")
    forward.add_argument("--warmup", type=int, default=1, help="untimed passes per network first")
    forward.add_argument(
        "--retain-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed tensor memory in the process instead of page-faulting every activation anew "
        "(default; applies to original and compressed alike)",
    )
    forward.add_argument("--profile", action="store_true", help="also time each conv layer (forward hooks)")
    forward.add_argument("--json", action="store_true", help="print one JSON object")
    forward.set_defaults(func=run_forward)


def add_expert_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expert", action="append", default=[], help="only this expert (repeatable)")


def selected_experts(args: argparse.Namespace) -> list[LoadedExpert]:
    experts = load_experts(args.model)
    if not args.expert:
        return experts
    names = [e.name for e in experts]
    unknown = [name for name in args.expert if name not in names]
    if unknown:
        raise UserError(f"--expert {unknown[0]!r} is not among the experts: {', '.join(names)}")
    return [e for e in experts if e.name in args.expert]


def run_recompress(args: argparse.Namespace) -> int:
    check_df(args.reference_df)
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    report = {e.name: bench_recompress(e, args) for e in selected_experts(args)}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for name, entry in report.items():
        print(f"{name}: {entry['layers']} layers, factorised once in {entry['factorise_seconds']:.2f} s")
        print("  DF      recompress (median)")
        for df, seconds in entry["recompress_seconds"].items():
            print(f"  {df:<7} {seconds * 1000:8.2f} ms")
        print(f"  all heatmaps: {entry['heatmaps_seconds'] * 1000:.1f} ms")
        if "reference_seconds" in entry:
            print(
                f"  reference (tensorly partial_tucker per layer) at DF {entry['reference_df']:g}: "
                f"{entry['reference_seconds']:.1f} s = {entry['reference_ratio']:,.0f}x the slice"
            )
    return 0


def bench_recompress(expert: LoadedExpert, args: argparse.Namespace) -> dict[str, Any]:
    engine = expert_engine(expert, factorise=False)
    factorise_seconds = engine.factorise()
    recompress: dict[str, float] = {}
    for df in RECOMPRESS_DFS:
        recompress[f"{df:g}"] = _median_seconds(
            lambda df=df: engine.compress(ranks_of(df_ranks(engine.layers, df))), args.repeats
        )
    heatmaps = _median_seconds(lambda: all_heatmaps(engine), args.repeats)
    entry: dict[str, Any] = {
        "layers": len(engine.layers),
        "factorise_seconds": factorise_seconds,
        "recompress_seconds": recompress,
        "heatmaps_seconds": heatmaps,
    }
    if args.reference:
        ranks = ranks_of(df_ranks(engine.layers, args.reference_df))
        started = time.perf_counter()
        engine.compress(ranks, refined=refine_with_hooi(engine, ranks))
        reference = time.perf_counter() - started
        ours = _median_seconds(lambda: engine.compress(ranks), args.repeats)
        entry.update(
            reference_df=args.reference_df,
            reference_seconds=reference,
            slice_seconds_at_reference_df=ours,
            reference_ratio=reference / ours,
        )
    return entry


def run_forward(args: argparse.Namespace) -> int:
    for df in args.df:
        check_df(df)
    if args.runs < 1 or args.warmup < 0:
        raise UserError("--runs must be at least 1 and --warmup at least 0")
    setup = ForwardSetup(args.device, args.precision, args.channels_last, args.threads)
    setup.check()
    retained = retain_freed_memory() if args.retain_memory else False
    report: dict[str, Any] = {"setup": setup.describe(), "retain_memory": retained, "experts": {}}
    for expert in selected_experts(args):
        report["experts"][expert.name] = bench_forward(expert, args, setup)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"forward pass, {report['setup']}{', memory retained' if retained else ''}")
    for name, entry in report["experts"].items():
        print(f"{name}: input {'x'.join(str(s) for s in entry['input_shape'][2:])}")
        for key, row in entry["networks"].items():
            print(
                f"  {key:<10} {row['wall_seconds']:7.2f} s (cpu {row['cpu_seconds']:6.2f} s)"
                f"  speedup {row['speedup']:5.2f}x  FLOP cut {row['flop_ratio']:5.2f}x"
            )
        for key, profile in entry.get("profiles", {}).items():
            print(f"  per-layer ms, wall / cpu ({key}): outside convs {profile['outside_convs'] * 1000:.0f}")
            for layer, seconds in profile["layers"].items():
                print(f"    {layer:<48} {seconds * 1000:8.1f} {profile['layers_cpu'][layer] * 1000:8.1f}")
    return 0


def bench_forward(expert: LoadedExpert, args: argparse.Namespace, setup: ForwardSetup) -> dict[str, Any]:
    engine = expert_engine(expert, factorise=False)
    engine.factorise()
    shape = engine.input_shape
    if args.patch:
        shape = (*shape[:2], *_parse_patch(args.patch))
    original_flops = count_network(engine).flops
    networks = {"original": expert.network}
    flops = {"original": original_flops}
    for df in args.df:
        ranks = ranks_of(df_ranks(engine.layers, df, round_to=args.round_to))
        networks[f"df={df:g}"] = engine.compress(ranks)
        flops[f"df={df:g}"] = count_network(engine, ranks).flops
    timings = compare_forward(networks, shape, setup, warmup=args.warmup, runs=args.runs)
    reference = timings["original"].wall_seconds
    entry: dict[str, Any] = {
        "input_shape": list(shape),
        "flops_counted_on": list(engine.input_shape),
        "networks": {
            key: {
                "wall_seconds": t.wall_seconds,
                "cpu_seconds": t.cpu_seconds,
                "runs_wall": list(t.runs_wall),
                "speedup": reference / t.wall_seconds,
                "flop_ratio": original_flops / flops[key],
            }
            for key, t in timings.items()
        },
    }
    if args.profile:
        entry["profiles"] = {}
        for key, network in networks.items():
            profile = profile_layers(network, shape, setup, runs=args.runs)
            entry["profiles"][key] = {
                "total": profile.total,
                "outside_convs": profile.outside_convs,
                "layers": profile.layers,
                "total_cpu": profile.total_cpu,
                "layers_cpu": profile.layers_cpu,
            }
    return entry


def _parse_patch(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise UserError(f"--patch {text!r}: expected three sizes D,H,W such as 64,64,64")
    return sizes


def _median_seconds(action: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
