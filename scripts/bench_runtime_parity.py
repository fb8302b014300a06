"""Why OpenVINO (or bf16) labels differ from PyTorch fp32: how close to a tie the reference was where they differ.

A runtime that sums in another order changes logits by rounding (about 1e-6 relative in fp32). Such a change
can only flip a voxel's label where PyTorch's top two logits are about that close. Random-weight networks
(the TS stand-ins of ../shared/ts_plans) output nearly tied logits almost everywhere, so there a per-class
Dice of 0.999 is not reachable by any other summation order; trained networks (the demo experts) separate
their classes by wide margins. For each network this runs one input tile through PyTorch fp32 (the reference)
and the runtime asked for, and prints: the share of voxels whose label differs, the reference's top-2 logit
margin where they differ (largest, and its median) against the margin over all voxels (median), and the
largest logit difference between the runtimes. The tile is a patch of the phantom CT (normalised as the
expert's plans say), or with --noise standard normal noise.

Usage (from the repository root):
    python scripts/bench_runtime_parity.py --model demo
    python scripts/bench_runtime_parity.py --model /tmp/rss12/work/ts_home --expert organs --df 1.0 0.3
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from tuckerscope.core.cli.compress import load_experts
from tuckerscope.core.compression.ranks import df_ranks, ranks_of
from tuckerscope.core.imaging.phantom import make_phantom
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.memory import retain_freed_memory
from tuckerscope.core.segmentation.expert_run import expert_engine
from tuckerscope.core.segmentation.runtimes import OpenVinoTiles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="'demo', a TS home or an nnU-Net results folder")
    parser.add_argument("--expert", action="append", help="only this expert (repeatable)")
    parser.add_argument("--df", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="the OpenVINO precision")
    parser.add_argument("--noise", action="store_true", help="standard normal input instead of a CT patch")
    args = parser.parse_args()
    retain_freed_memory()
    print(f"OpenVINO {args.precision} against PyTorch fp32, one tile per network, {torch.get_num_threads()} threads")
    print(f"{'network':<22} {'differ':>8} {'max margin where differ':>24} {'median there':>13} "
          f"{'median margin all':>18} {'max |dlogit|':>13}")
    for expert in load_experts(args.model):
        if args.expert and expert.name not in args.expert:
            continue
        engine = expert_engine(expert)
        shape = engine.input_shape
        tile = input_tile(shape, expert, args.noise)
        for df in args.df:
            network = expert.network if df >= 1.0 else engine.compress(ranks_of(df_ranks(engine.layers, df)))
            network = network.eval()
            with torch.inference_mode():
                reference = network(tile).float()
            start = time.perf_counter()
            runner = OpenVinoTiles(network, tuple(shape), args.precision)
            other = runner(tile)
            seconds = time.perf_counter() - start
            report(f"{expert.name} DF {df:g}", reference[0], other[0], seconds)
    return 0


def input_tile(shape: tuple[int, ...], expert: LoadedExpert, noise: bool) -> torch.Tensor:
    """The middle of the phantom CT at the expert's spacing, one tile of it, z-scored (what nnU-Net's CT
    normalisation roughly gives)."""
    if noise:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0))
    spacing = max(expert.spacing)
    extent = (330.0, 250.0, 170.0)  # mm: the torso needs 300 x 220 x 150
    ct = make_phantom(7, tuple(int(e / spacing) + 1 for e in extent), spacing).ct.astype(np.float32)
    patch = [min(n, s) for n, s in zip(shape[2:], ct.shape, strict=True)]
    starts = [(s - p) // 2 for s, p in zip(ct.shape, patch, strict=True)]
    crop = ct[tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))]
    crop = (crop - crop.mean()) / (crop.std() + 1e-6)
    tile = np.zeros(shape[2:], np.float32)
    tile[tuple(slice(0, p) for p in patch)] = crop
    return torch.from_numpy(tile)[None, None]


def report(name: str, reference: torch.Tensor, other: torch.Tensor, seconds: float) -> None:
    top2 = reference.topk(2, dim=0).values
    margin = (top2[0] - top2[1]).flatten()
    differ = (reference.argmax(0) != other.argmax(0)).flatten()
    share = float(differ.float().mean())
    where = margin[differ]
    worst = f"{float(where.max()):.2e}" if where.numel() else "-"
    median_there = f"{float(where.median()):.2e}" if where.numel() else "-"
    delta = float((reference - other).abs().max())
    print(f"{name:<22} {share:>8.2%} {worst:>24} {median_there:>13} {float(margin.median()):>18.2e} "
          f"{delta:>13.2e}   ({seconds:.1f} s with export/compile)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
