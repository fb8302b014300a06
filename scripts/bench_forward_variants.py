"""Which execution strategy gives which CPU speed: original vs compressed networks, run interleaved.

Networks are the real TS architectures from ../shared/ts_plans with seeded random weights (timing does not
depend on the weights). Variants, all computing the same function per DF:
  original       nnU-Net's network as it runs in nnU-Net (NCDHW)
  original-cl    the same in channels_last_3d (a stock torch trick, for reference)
  paper          each compressed conv as Sequential(Conv3d 1x1, core conv, Conv3d 1x1), as the reference code
  onednn         TuckerConv: the three convs through oneDNN in NDHWC (tucker_conv.py), norm unfused
  fused          onednn + instance norm folded into the last projection (fused_norm.py): the default
  fused-r16      fused with ranks rounded up to multiples of 16 (hardware-friendly option)
Usage: python scripts/bench_forward_variants.py --task 297 --df 0.5 0.3 0.1 [--precision bf16] [--threads 2]
       [--no-retain-memory] [--profile] [--variants original fused]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ts_home import ts_results_folder  # noqa: E402
from tuckerscope.core.compression.counting import count_network  # noqa: E402
from tuckerscope.core.compression.ranks import df_ranks, ranks_of  # noqa: E402
from tuckerscope.core.compression.tucker import TuckerEngine, with_plain_convs  # noqa: E402
from tuckerscope.core.evaluation.timing import ForwardSetup, compare_forward, prepared_copy, profile_layers  # noqa: E402
from tuckerscope.core.models.model_folder import build_network  # noqa: E402
from tuckerscope.core.runtime.memory import retain_freed_memory  # noqa: E402

VARIANTS = ("original", "original-cl", "paper", "onednn", "fused", "fused-r16")


class ChannelsLastInput(nn.Module):
    """Feeds the wrapped network a channels_last_3d copy of its input."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=torch.channels_last_3d))


def ts_network(task_id: int, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    folder = ts_results_folder(task_id)
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = build_network(plans, dataset_json).eval()
    patch = tuple(plans["configurations"]["3d_fullres"]["patch_size"])
    return network, (1, 1, *patch)


def build_variants(
    engine: TuckerEngine, dfs: list[float], wanted: list[str]
) -> tuple[dict[str, nn.Module], dict[str, int]]:
    networks: dict[str, nn.Module] = {}
    flops: dict[str, int] = {}
    original = engine.network
    if "original" in wanted:
        networks["original"] = original
    if "original-cl" in wanted:
        networks["original-cl"] = ChannelsLastInput(prepared_copy(original, ForwardSetup(channels_last=True)))
    for df in dfs:
        ranks = ranks_of(df_ranks(engine.layers, df))
        rounded = ranks_of(df_ranks(engine.layers, df, round_to=16))
        builders = {
            "paper": lambda r=ranks: with_plain_convs(engine.compress(r, fuse_norm=False)),
            "onednn": lambda r=ranks: engine.compress(r, fuse_norm=False),
            "fused": lambda r=ranks: engine.compress(r),
            "fused-r16": lambda r=rounded: engine.compress(r),
        }
        for name, build in builders.items():
            if name in wanted:
                networks[f"{name} df={df:g}"] = build()
                flops[f"{name} df={df:g}"] = count_network(
                    engine, rounded if name == "fused-r16" else ranks
                ).flops
    return networks, flops


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", type=int, default=297, help="TS dataset id (297: 3 mm, 291: 1.5 mm organs)")
    parser.add_argument("--df", type=float, nargs="+", default=[0.5, 0.3, 0.1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--retain-memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--profile", action="store_true", help="per-layer times of original and fused (last DF)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    retained = retain_freed_memory() if args.retain_memory else False
    network, shape = ts_network(args.task)
    engine = TuckerEngine(network, shape)
    engine.factorise()
    original_flops = count_network(engine).flops
    networks, flops = build_variants(engine, args.df, args.variants)
    flops.update({"original": original_flops, "original-cl": original_flops})
    setup = ForwardSetup("cpu", args.precision, False, args.threads)
    timings = compare_forward(networks, shape, setup, warmup=1, runs=args.runs)
    reference = timings["original"] if "original" in timings else next(iter(timings.values()))
    print(f"task {args.task}, input {shape[2:]}, {setup.describe()}, freed memory retained: {retained}")
    print(f"{'variant':<22}{'wall s':>8}{'cpu s':>8}{'speedup':>9}{'cpu-speedup':>12}{'FLOP cut':>10}   runs")
    rows = {}
    for name, timing in timings.items():
        rows[name] = {
            "wall_seconds": timing.wall_seconds,
            "cpu_seconds": timing.cpu_seconds,
            "speedup": reference.wall_seconds / timing.wall_seconds,
            "cpu_speedup": reference.cpu_seconds / timing.cpu_seconds,
            "flop_ratio": original_flops / flops[name],
            "runs_wall": list(timing.runs_wall),
        }
        row = rows[name]
        runs = " ".join(f"{t:.2f}" for t in timing.runs_wall)
        print(
            f"{name:<22}{row['wall_seconds']:>8.2f}{row['cpu_seconds']:>8.2f}{row['speedup']:>8.2f}x"
            f"{row['cpu_speedup']:>11.2f}x{row['flop_ratio']:>9.2f}x   {runs}"
        )
    profiles = {}
    if args.profile:
        last = f"fused df={args.df[-1]:g}"
        for name in ("original", last):
            if name in networks:
                profile = profile_layers(networks[name], shape, setup, runs=1)
                profiles[name] = {"total": profile.total_cpu, "outside_convs": profile.outside_convs_cpu}
                profiles[name].update(profile.layers_cpu)
        print("\nper-layer CPU ms (forward hooks; a fused layer's time includes its norm and LeakyReLU)")
        print(f"{'layer':<44}" + "".join(f"{n:>18}" for n in profiles))
        layers = [k for k in profiles[next(iter(profiles))] if k not in ("total", "outside_convs")]
        for layer in [*layers, "outside_convs", "total"]:
            cells = []
            for profile in profiles.values():
                value = profile.get(layer, profile.get(f"{layer} +norm+act", float("nan")))
                fused = f"{layer} +norm+act" in profile
                cells.append(f"{value * 1000:>17.1f}{'*' if fused else ' '}")
            print(f"{layer:<44}" + "".join(cells))
        print("* = conv, instance norm and LeakyReLU timed together (fused); outside_convs = everything else")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"setup": setup.describe(), "retained": retained, "rows": rows, "profiles": profiles},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
