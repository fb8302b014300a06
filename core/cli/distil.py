"""`tuckerscope distil`: recover a compressed expert's quality by distilling the original into it, without labels.

For each chosen expert: the student is the expert compressed at its DF or at the per-layer ranks a --target
asks for (Tucker, or the pruning baseline at that Tucker network's parameter count), the teacher the original
network; --target reads as in compress (params=10x, flops=8x, time=1.5s, energy=0.9, ev=0.9, vbmf), for the
chosen experts together or, with --expert, for each named expert on its own (teacher assistants stay DFs); the
data are unlabelled CTs or phantoms, preprocessed as for inference (core.distillation). It prints the loss
curve, the memory used and the agreement with the original (mean and worst-class Dice) of the zero-shot and
the distilled student on held-out scans, and writes the distilled student as a model folder under -o that
`--model OUT` runs.
Checkpoints go to OUT.checkpoints/<expert>.pth (or --resume's path) so a stopped run resumes; Ctrl-C stops
after the current layer, saves the checkpoint and writes no model folder.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuckerscope.core.cli.compress import (
    add_df_argument,
    add_model_argument,
    load_experts,
    target_json,
    target_ranks,
)
from tuckerscope.core.compression.budgets import TARGET_SYNTAX, parse_target
from tuckerscope.core.compression.ranks import parse_df_options
from tuckerscope.core.compression.tucker import TuckerEngine
from tuckerscope.core.distillation.agreement import ORIGINAL, Agreement, agreement_with_original
from tuckerscope.core.distillation.data import (
    HELD_OUT_PHANTOM_SEED,
    ScanSource,
    held_out_phantoms,
    parse_data,
    phantom_source,
)
from tuckerscope.core.distillation.distiller import (
    DEFAULT_LEARNING_RATE,
    DistilConfig,
    Distiller,
    DistilResult,
    checkpoint_ranks,
)
from tuckerscope.core.distillation.distiller import training_precision as resolve_precision
from tuckerscope.core.distillation.losses import LossWeights
from tuckerscope.core.distillation.saving import save_distilled
from tuckerscope.core.distillation.students import METHODS
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.segmentation.expert_run import expert_engine

DEFAULT_HELD_OUT_PHANTOMS = 5
EXIT_CANCELLED = 130
CURVE_POINTS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distil",
        help="recover a compressed expert by distilling the original into it (no labels needed)",
        description="Distil each expert's original network (teacher) into its compressed copy (student) on "
        "unlabelled CTs or phantoms, report the agreement with the original before and after on held-out "
        "scans, and save the distilled student as a model folder.",
    )
    add_model_argument(parser)
    add_df_argument(parser)
    parser.add_argument(
        "--target",
        metavar="params=10x|flops=8x|time=1.5s|energy=0.9|ev=0.9|vbmf",
        help="instead of --df: the student gets the per-layer ranks that meet this budget, as compress --target "
        "chooses them (time: forward time per patch on --device/--precision)",
    )
    parser.add_argument(
        "--expert",
        action="append",
        default=[],
        metavar="NAME",
        help="distil only this expert (repeatable); with --target each named expert meets it on its own, "
        "without --expert the experts meet it together",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="tucker",
        help="student: Tucker (default) or pruning to the Tucker student's parameter count",
    )
    parser.add_argument(
        "--assistant",
        action="append",
        type=float,
        default=[],
        metavar="DF",
        help="teacher-assistant DF distilled first, then the student from it (repeatable, largest first; a DF "
        "also with --target, with more parameters than the student)",
    )
    parser.add_argument(
        "--data",
        help="unlabelled training scans: a CT (NIfTI file or DICOM folder), a folder of CTs, or phantoms:N",
    )
    parser.add_argument("--phantoms", type=int, metavar="N", help="same as --data phantoms:N")
    parser.add_argument(
        "--eval",
        help="held-out scans to score on (as --data); default: 5 held-out phantoms for phantom data, "
        "else the last --holdout CTs of --data",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=1,
        help="CTs of a --data folder kept for scoring only (default 1; a single CT is scored on itself)",
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training time per expert")
    budget.add_argument("--steps", type=int, help="training steps per expert")
    parser.add_argument("--patch", help="patch size Z,Y,X in model axes (default: the plans' patch size)")
    parser.add_argument("--patches-per-scan", type=int, default=2, help="patches drawn per scan (default 2)")
    parser.add_argument("--batch", type=int, default=1, help="patches per step (default 1)")
    parser.add_argument(
        "--lr",
        type=float,
        default=DEFAULT_LEARNING_RATE,
        help=f"peak Adam learning rate (default {DEFAULT_LEARNING_RATE:g}; warm-up, then cosine decay over the budget)",
    )
    parser.add_argument("--temperature", type=float, default=2.0, help="KL temperature (default 2)")
    parser.add_argument("--kd-weight", type=float, default=1.0, help="weight of the KL term (default 1)")
    parser.add_argument(
        "--seg-weight", type=float, default=1.0, help="weight of Dice+CE to teacher labels (default 1)"
    )
    parser.add_argument(
        "--features",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="weight of decoder feature matching (default off)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of patches, augmentation and batch order")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default): bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32",
    )
    parser.add_argument("--max-memory", type=float, metavar="GB", help="refuse a run estimated above this")
    parser.add_argument("--resume", type=Path, help="checkpoint file (one expert) or folder of <expert>.pth")
    parser.add_argument("-o", "--output", type=Path, required=True, help="write the distilled experts here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.target and args.df:
        raise UserError("use either --target or --df, not both")
    target = parse_target(args.target).describe() if args.target else None
    training, held_out, held_out_note = data_sources(args)
    experts = chosen_experts(load_experts(args.model), args.expert)
    report: dict[str, Any] = {"experts": {}, "held_out": held_out.description + held_out_note}
    engines: dict[str, TuckerEngine] = {}
    ranks: dict[str, dict[str, tuple[int, int]]] = {}
    if target is not None:
        engines = {e.name: expert_engine(e) for e in experts}
        ranks, report["target"] = solve_for_distillation(args, target, experts, engines)
        dfs: dict[str, float | None] = {e.name: None for e in experts}
    else:
        dfs = dict(parse_df_options(args.df, [e.name for e in experts]))
        if not dfs:
            raise UserError(f"say how much to compress: --df 0.2, --df EXPERT=0.2 or --target ({TARGET_SYNTAX})")
        experts = [e for e in experts if e.name in dfs]
    for expert in experts:
        checkpoint = checkpoint_path(args, expert, len(experts))
        config = make_config(args, dfs[expert.name], checkpoint, target, ranks.get(expert.name))
        entry = distil_one(expert, training, held_out, config, checkpoint, args, engines.get(expert.name))
        if entry is None:
            return EXIT_CANCELLED
        report["experts"][expert.name] = entry
        if not args.json:
            print_entry(expert.name, entry, report["held_out"])
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def solve_for_distillation(
    args: argparse.Namespace, target: str, experts: list[LoadedExpert], engines: dict[str, TuckerEngine]
) -> tuple[dict[str, dict[str, tuple[int, int]]], dict[str, Any]]:
    """Each expert's ranks for --target (compress's solver and scopes) and what --json says about the target.

    An expert resumed from a checkpoint of the same target keeps the checkpoint's ranks: a time target timed
    again can land on slightly different ranks, and the checkpoint's run must go on with its own network.
    """
    setup = ForwardSetup(device=args.device, precision=training_precision(args))
    ranks, results = target_ranks(target, engines, args.expert, setup)
    report = target_json(results)
    if args.resume is not None:
        for expert in experts:
            saved = checkpoint_ranks(checkpoint_path(args, expert, len(experts)), target)
            if saved is not None and saved != ranks[expert.name]:
                ranks[expert.name] = saved
                report.setdefault("resumed_with_checkpoint_ranks", []).append(expert.name)
    if not args.json:
        for scope in report["scopes"]:
            print(f"target {', '.join(scope['experts'])}: {scope['message']}", flush=True)
    return ranks, report


def data_sources(args: argparse.Namespace) -> tuple[ScanSource, ScanSource, str]:
    """(training scans, held-out scans, a note when the held-out scans are the training ones)."""
    if args.data and args.phantoms is not None:
        raise UserError("use --data or --phantoms, not both")
    if args.phantoms is not None:
        training = phantom_source(args.phantoms)
    elif args.data:
        training = parse_data(args.data)
    else:
        raise UserError("say what to distil on: --data CT_OR_FOLDER, --data phantoms:N or --phantoms N")
    if args.eval:
        return training, parse_data(args.eval, HELD_OUT_PHANTOM_SEED), ""
    if training.phantoms:
        return training, held_out_phantoms(DEFAULT_HELD_OUT_PHANTOMS), ""
    if len(training) > 1 and args.holdout > 0:
        return (*training.split(min(args.holdout, len(training) - 1)), "")
    return training, training, " (the training scans: not held out)"


def chosen_experts(experts: list[LoadedExpert], names: list[str]) -> list[LoadedExpert]:
    known = {e.name: e for e in experts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--expert {unknown[0]!r}: the model has no such expert; experts: {', '.join(known)}")
    return [known[n] for n in names] if names else experts


def checkpoint_path(args: argparse.Namespace, expert: LoadedExpert, experts: int) -> Path:
    if args.resume is not None and not args.resume.is_dir():
        if experts > 1:
            raise UserError(
                "--resume FILE resumes one expert: pass --expert NAME, or a folder of <expert>.pth"
            )
        return args.resume
    folder = args.resume if args.resume is not None else Path(f"{args.output}.checkpoints")
    return folder / f"{expert.name}.pth"


def training_precision(args: argparse.Namespace) -> str:
    """--precision with 'auto' resolved (core.distillation.distiller.training_precision)."""
    return resolve_precision(str(args.precision), str(args.device))


def make_config(
    args: argparse.Namespace,
    df: float | None,
    checkpoint: Path,
    target: str | None = None,
    ranks: dict[str, tuple[int, int]] | None = None,
) -> DistilConfig:
    precision = training_precision(args)
    return DistilConfig(
        method=args.method,
        df=df,
        target=target,
        ranks=ranks,
        assistant_dfs=tuple(args.assistant),
        steps=args.steps,
        minutes=args.minutes,
        patch_size=parse_patch(args.patch) if args.patch else None,
        patches_per_scan=args.patches_per_scan,
        batch_size=args.batch,
        learning_rate=args.lr,
        losses=LossWeights(args.temperature, args.kd_weight, args.seg_weight, args.features),
        seed=args.seed,
        device=args.device,
        precision=precision,
        max_memory_bytes=int(args.max_memory * 1024**3) if args.max_memory is not None else None,
        checkpoint_path=checkpoint,
    )


def parse_patch(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise UserError(f"--patch {text!r}: write three whole numbers Z,Y,X, e.g. 64,64,64")
    return sizes[0], sizes[1], sizes[2]


def distil_one(
    expert: LoadedExpert,
    training: ScanSource,
    held_out: ScanSource,
    config: DistilConfig,
    checkpoint: Path,
    args: argparse.Namespace,
    engine: TuckerEngine | None = None,
) -> dict[str, Any] | None:
    """Distil, score zero-shot and distilled on the held-out scans, save; None when cancelled (Ctrl-C)."""
    distiller = Distiller(expert, training, config, engine=engine or expert_engine(expert))
    resume = checkpoint if args.resume is not None and checkpoint.is_file() else None
    if not args.json:
        print(
            f"{expert.name}: {config.method} {config.setting}, distilling on {training.description}, "
            f"patch {'x'.join(map(str, distiller.patch_size))}; {distiller.memory.describe()}",
            flush=True,
        )
    with cancel_on_interrupt() as cancel:
        try:
            result = distiller.run(on_step=None if args.json else print_step, cancel=cancel, resume=resume)
        except Cancelled:
            print(
                f"tuckerscope: distillation of {expert.name} cancelled; no model written. Resume with "
                f"--resume {checkpoint}",
                file=sys.stderr,
            )
            return None
    zero_shot = distiller.zero_shot().network.eval()
    scores = agreement_with_original(expert, {"zero-shot": zero_shot, "distilled": result.network}, held_out)
    folder = save_distilled(expert, result, args.output)
    return entry_for(result, scores, folder, checkpoint)


def entry_for(
    result: DistilResult, scores: dict[str, Agreement], folder: Path, checkpoint: Path
) -> dict[str, Any]:
    return {
        **result.summary(),
        "agreement": {name: score.to_dict() for name, score in scores.items() if name != ORIGINAL},
        "original_vs_truth": scores[ORIGINAL].truth_mean_dice,
        "loss_curve": result.loss_curve(),
        "output_folder": str(folder),
        "checkpoint": str(checkpoint),
    }


def print_step(report: Any) -> None:
    record = report.record
    total = f"/{report.stage_steps}" if report.stage_steps else ""
    stage = f"stage {record.stage + 1}/{report.stages} ({report.stage_setting}) " if report.stages > 1 else ""
    terms = " ".join(f"{k} {v:.4f}" for k, v in record.parts.items())
    print(
        f"  {stage}step {record.step}{total}  loss {record.loss:.4f} ({terms})  "
        f"{report.seconds_per_step:.2f} s/step  ETA {report.eta_seconds:.0f} s",
        flush=True,
    )


def print_entry(name: str, entry: dict[str, Any], held_out: str) -> None:
    student = entry["student"]
    seconds = sum(s["train_seconds"] for s in entry["stages"])
    curve = entry["loss_curve"]
    points = min(CURVE_POINTS, len(curve))
    picks = [curve[round(i * (len(curve) - 1) / max(1, points - 1))] for i in range(points)]
    print(
        f"{name}: {student['method']} {student['setting']} ({student['compression_ratio']:.2f}x fewer parameters), "
        f"{entry['steps']} steps in {seconds:.0f} s ({seconds / max(1, entry['steps']):.2f} s/step), "
        f"losses {' + '.join(entry['losses_used'])}"
    )
    print(f"  loss curve: {' '.join(f'{v:.3f}' for v in picks)}")
    memory = entry["memory"]
    print(
        f"  memory: estimated peak {memory['estimate_bytes'] / 1024**3:.2f} GiB (teacher pool "
        f"{memory['pool_bytes'] / 1024**3:.2f}), measured peak RSS {(memory['peak_rss_bytes'] or 0) / 1024**3:.2f} GiB"
    )
    before, after = entry["agreement"]["zero-shot"], entry["agreement"]["distilled"]
    print(
        f"  Dice vs original on {held_out}: mean {before['mean_dice_vs_original']:.3f} -> "
        f"{after['mean_dice_vs_original']:.3f}; worst class {before['worst_class']} "
        f"{before['worst_dice_vs_original']:.3f} -> {after['worst_class']} {after['worst_dice_vs_original']:.3f}"
    )
    if entry["original_vs_truth"] is not None:
        print(
            f"  Dice vs truth: original {entry['original_vs_truth']:.3f}, zero-shot "
            f"{before['mean_dice_vs_truth']:.3f}, distilled {after['mean_dice_vs_truth']:.3f}"
        )
    print(f"  saved to {entry['output_folder']}")


@contextmanager
def cancel_on_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C sets an event the distiller checks (so it can checkpoint) instead of raising mid-step."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
