"""Benchmark label-free distillation: demo experts (quality) and TS architectures (speed, memory).

Demo (default): for each expert, the zero-shot student at --df is distilled from the original on --phantoms
unlabelled phantoms (seeds from 10,000; the experts trained on 0-127) for --minutes (or --steps), then the
zero-shot and distilled students are segmented through the TS pipeline on --held-out phantoms (seeds from
100,000) and scored against the original (mean Dice, each class, worst class) and against the phantoms'
true labels. Prints s/step, the teacher pool's size and time, the memory estimate and the process's peak RSS.

Figure 2 (--figure2 PNG): for one held-out demo phantom (seed 100,000), the expert's agreement with the
original vs compression ratio at DFs 0.5, 0.3, 0.2, 0.1 for Tucker and pruning, zero-shot and after
--steps-per-point steps of distillation on that phantom (core.distillation.figure2); prints the points and
draws the four curves into PNG (matplotlib, Agg).

TS (--ts 291 297): random-weight TS networks from ../shared/ts_plans (tests/ts_home.py), one process per
network so that each peak RSS is its own; a few steps on one phantom at the plans' patch size (or --patch);
prints s/step, steps per minute and peak RSS.

Usage (from the repository root):
    python scripts/bench_distillation.py                                   # organs, DF 0.2, 12 phantoms, 3 min
    python scripts/bench_distillation.py --expert all --minutes 5
    python scripts/bench_distillation.py --figure2 /tmp/figure2.png --steps-per-point 20
    python scripts/bench_distillation.py --ts 291 297 --steps 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: see scripts/train_demo_models.py

import argparse  # noqa: E402
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tuckerscope.core.cli.compress import load_experts
from tuckerscope.core.distillation.agreement import ORIGINAL, agreement_with_original
from tuckerscope.core.distillation.data import held_out_phantoms, phantom_source
from tuckerscope.core.distillation.distiller import DistilConfig, Distiller, training_precision
from tuckerscope.core.distillation.figure2 import figure2
from tuckerscope.core.distillation.losses import LossWeights
from tuckerscope.core.distillation.students import make_student
from tuckerscope.core.models.model_folder import LoadedExpert, load_expert, spec_from_folder
from tuckerscope.core.runtime.memory import process_memory_kb
from tuckerscope.core.segmentation.expert_run import expert_engine

GIB = 1024**3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert", default="organs", help="demo expert name, or 'all'")
    parser.add_argument("--df", type=float, default=0.2)
    parser.add_argument("--method", choices=("tucker", "prune"), default="tucker")
    parser.add_argument("--phantoms", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=5)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--patch", help="Z,Y,X (default: the plans' patch size; the demo's is the whole phantom)"
    )
    parser.add_argument("--patches-per-scan", type=int, default=2)
    parser.add_argument("--features", type=float, default=0.0, help="feature-matching weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="peak Adam learning rate (default: DistilConfig's)")
    parser.add_argument("--lr-schedule", choices=("cosine", "constant"), help="default: DistilConfig's")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="training precision (auto: as distil)"
    )
    parser.add_argument(
        "--figure2", type=Path, metavar="PNG", help="figure 2 for one phantom, drawn into PNG"
    )
    parser.add_argument("--steps-per-point", type=int, default=20)
    parser.add_argument(
        "--ts", type=int, nargs="*", help="TS task ids to time instead of the demo (291, 297)"
    )
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None:
        args.minutes = 3.0 if args.ts is None else None
        args.steps = 3 if args.ts is not None else None
    patch = tuple(int(p) for p in args.patch.split(",")) if args.patch else None
    if args.ts is not None:
        return bench_ts(args, patch)
    experts = load_experts("demo")
    if args.expert != "all":
        experts = [e for e in experts if e.name == args.expert]
    for expert in experts:
        if args.figure2 is not None:
            bench_figure2(expert, args, patch)
        else:
            bench_demo_expert(expert, args, patch)
    return 0


def bench_figure2(expert: LoadedExpert, args: argparse.Namespace, patch: tuple[int, ...] | None) -> None:
    scan = held_out_phantoms(1)
    start = time.perf_counter()
    base = replace(config_for(args, patch), steps=args.steps_per_point, minutes=None)
    figure = figure2(expert, scan, steps_per_point=args.steps_per_point, base=base)
    print(f"[{expert.name}] figure 2 on {scan.description}: {time.perf_counter() - start:.0f} s")
    for name, points in figure.curves().items():
        row = "  ".join(
            f"{p.compression_ratio:.1f}x: {p.mean_dice:.3f} (worst {p.worst_dice:.2f})" for p in points
        )
        print(f"[{expert.name}] {name:<17} {row}")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure_, axes = pyplot.subplots(figsize=(6, 4))
    colours = {"tucker": "tab:blue", "prune": "tab:red"}
    for name, points in figure.curves().items():
        style = "-" if "distilled" in name else "--"
        ratios, dice = [p.compression_ratio for p in points], [p.mean_dice for p in points]
        axes.plot(ratios, dice, style, color=colours[points[0].method], marker="o", label=name)
    axes.set_xscale("log")
    axes.set_xlabel("compression ratio (parameters, original / compressed)")
    axes.set_ylabel("mean Dice vs original")
    axes.set_title(f"{expert.name}, one held-out phantom, {args.steps_per_point} steps per distilled point")
    axes.legend()
    axes.grid(True, alpha=0.3)
    figure_.tight_layout()
    output = args.figure2.with_name(f"{args.figure2.stem}_{expert.name}{args.figure2.suffix}")
    figure_.savefig(output, dpi=120)
    print(f"[{expert.name}] figure 2 drawn to {output}")


def config_for(args: argparse.Namespace, patch: tuple[int, ...] | None) -> DistilConfig:
    return DistilConfig(
        method=args.method,
        df=args.df,
        steps=args.steps,
        minutes=args.minutes,
        patch_size=patch,  # type: ignore[arg-type]
        patches_per_scan=args.patches_per_scan,
        losses=LossWeights(features=args.features),
        seed=args.seed,
        precision=training_precision(args.precision, "cpu"),
        **({"learning_rate": args.lr} if args.lr else {}),
        **({"lr_schedule": args.lr_schedule} if args.lr_schedule else {}),
    )


def bench_demo_expert(expert: LoadedExpert, args: argparse.Namespace, patch: tuple[int, ...] | None) -> None:
    engine = expert_engine(expert)
    config = config_for(args, patch)
    distiller = Distiller(expert, phantom_source(args.phantoms), config, engine=engine)
    start = time.perf_counter()
    result = distiller.run()
    wall = time.perf_counter() - start
    stage = result.stages[-1]
    print(
        f"[{expert.name}] {args.method} DF {args.df:g} ({config.precision}): {result.student.compression_ratio:.1f}x fewer parameters; "
        f"{len(result.records)} steps in {stage.train_seconds:.0f} s = {stage.seconds_per_step:.2f} s/step "
        f"(patch {'x'.join(map(str, distiller.patch_size))}); teacher pool {stage.pool_patches} patches, "
        f"{stage.pool_bytes / GIB:.3f} GiB, teacher {stage.teacher_seconds:.0f} s; wall {wall:.0f} s"
    )
    first, last = result.records[0].loss, result.records[-1].loss
    print(f"[{expert.name}] losses {' + '.join(result.losses_used)}: first {first:.4f}, last {last:.4f}")
    print(f"[{expert.name}] memory: {result.memory.describe()}")
    zero_shot = make_student(engine, args.method, args.df).network.eval()
    scores = agreement_with_original(
        expert, {"zero-shot": zero_shot, "distilled": result.network}, held_out_phantoms(args.held_out)
    )
    for name in ("zero-shot", "distilled"):
        score = scores[name]
        worst_class, worst = score.worst
        classes = " ".join(f"{k} {v:.3f}" for k, v in sorted(score.per_class.items(), key=lambda kv: kv[1]))
        print(
            f"[{expert.name}] {name:>9} vs original on {args.held_out} held-out phantoms: mean Dice "
            f"{score.mean_dice:.3f}, worst {worst_class} {worst:.3f} | {classes}"
        )
    truth = {name: scores[name].truth_mean_dice for name in (ORIGINAL, "zero-shot", "distilled")}
    print(
        f"[{expert.name}] vs truth: "
        + ", ".join(f"{k} {v:.3f}" for k, v in truth.items() if v is not None)
        + f"; peak RSS {process_memory_kb('VmHWM') / 1024**2:.2f} GiB"
    )


def bench_ts(args: argparse.Namespace, patch: tuple[int, ...] | None) -> int:
    """Each task in its own process (clean peak RSS); the child runs with --ts-child."""
    if os.environ.get("TUCKERSCOPE_BENCH_TS_CHILD"):
        return ts_child(args, patch)
    for task in args.ts:
        command = [
            sys.executable,
            __file__,
            "--ts",
            str(task),
            "--df",
            str(args.df),
            "--steps",
            str(args.steps or 3),
            "--precision",
            args.precision,
        ]
        if args.patch:
            command += ["--patch", args.patch]
        subprocess.run(command, check=False, env={**os.environ, "TUCKERSCOPE_BENCH_TS_CHILD": "1"})
    return 0


def ts_child(args: argparse.Namespace, patch: tuple[int, ...] | None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ts_home import build_random_ts_home, ts_results_folder

    task = args.ts[0]
    with tempfile.TemporaryDirectory() as home:
        build_random_ts_home(Path(home), (task,))
        source = ts_results_folder(task)
        folder = Path(home) / "nnunet" / "results" / source.parent.name / source.name
        expert = load_expert(spec_from_folder(folder))
        precision = training_precision(args.precision, "cpu")
        config = DistilConfig(
            df=args.df, steps=args.steps, patch_size=patch, patches_per_scan=1, precision=precision  # type: ignore[arg-type]
        )
        distiller = Distiller(expert, phantom_source(1), config)
        result = distiller.run()
    stage = result.stages[-1]
    print(
        f"[TS {task} {expert.name}] DF {args.df:g} ({config.precision}), patch {'x'.join(map(str, distiller.patch_size))}, "
        f"{len(expert.class_names)} classes: {stage.seconds_per_step:.1f} s/step = "
        f"{60 / stage.seconds_per_step:.2f} steps/min over {stage.steps} steps; teacher "
        f"{stage.teacher_seconds:.1f} s/patch; {result.memory.describe()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
