"""`tuckerscope cohort`: Dice and NSD of compressed experts over a cohort of CTs, on Dask distributed.

Every (case, expert, setting) is one Dask task, run on an embedded cluster of --workers single-threaded
processes or on a running scheduler (--scheduler tcp://host:8786). Results land in RESULTS as each task
finishes; a rerun with the same RESULTS runs only what is missing. At the end the scores table and the
analysis (Figure 2, per-class tables and tests, report.html) are written beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tuckerscope.core.cohorts.engine import CohortProgress, connect, local_client, run_cohort
from tuckerscope.core.cohorts.plan import (
    CohortError,
    CohortPlan,
    df_settings,
    distilled_settings,
    find_cases,
    target_settings,
)
from tuckerscope.core.cohorts.report import write_analysis
from tuckerscope.core.cohorts.results import assemble
from tuckerscope.core.evaluation.metrics import DEFAULT_TOLERANCE_MM
from tuckerscope.core.models.model_sources import expert_specs
from tuckerscope.core.segmentation.segmenter import DEVICES, InferenceOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cohort",
        help="score compressed experts over a folder of CTs (Dask distributed), with Figure 2 and tests",
        description="Segment every CT in --cts with the original and the compressed experts, one Dask task per "
        "(case, expert, setting), and write per-class Dice/NSD (vs the original, and vs --gt), Figure 2, "
        "per-class tests and an HTML report into RESULTS. Rerunning skips finished tasks.",
    )
    parser.add_argument("--cts", required=True, type=Path, metavar="DIR", help="folder of CTs (.nii.gz or DICOM folders)")
    parser.add_argument(
        "--gt", type=Path, metavar="DIR", help="ground-truth label maps named as the CTs, with label tables"
    )
    parser.add_argument("--model", required=True, help="nnU-Net v2 results folder (or a folder of them), a TS home, or 'demo'")
    parser.add_argument("--experts", metavar="NAME[,NAME...]", help="only these experts (default: all)")
    settings = parser.add_mutually_exclusive_group(required=True)
    settings.add_argument("--df", metavar="DF[,DF...]", help="downsampling factors, e.g. 0.5,0.3,0.1")
    settings.add_argument(
        "--target",
        metavar="TARGET[,TARGET...]",
        help="budget targets per expert, e.g. params=10x,flops=8x,energy=0.9,vbmf (see compress --target)",
    )
    parser.add_argument(
        "--method", default="tucker", metavar="tucker,prune", help="compression methods (default tucker)"
    )
    parser.add_argument(
        "--distilled", type=Path, metavar="DIR", help="also score the compressed model folders saved in DIR"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local worker processes")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler instead")
    parser.add_argument("--dashboard", default=":8787", metavar="ADDRESS", help="local dashboard address")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per task (default 1)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, metavar="MM", help="NSD tolerance")
    parser.add_argument("--retry-failed", action="store_true", help="run tasks that failed before again")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="RESULTS", help="results folder")
    parser.add_argument("--json", action="store_true", help="print one JSON summary instead of text")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def parse_dfs(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CohortError(f"--df takes comma-separated numbers such as 0.5,0.3, got {text!r}") from None


def plan_from_args(args: argparse.Namespace) -> CohortPlan:
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise CohortError(f"--tolerance must be a non-negative number of mm, got {args.tolerance}")
    InferenceOptions(device=args.device, precision=args.precision, threads=args.threads).torch_device()
    model = "demo" if args.model == "demo" else str(Path(args.model).expanduser().resolve())
    experts = tuple(spec.name for spec in expert_specs(model))
    if args.experts:
        chosen = [name.strip() for name in args.experts.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in experts]
        if unknown:
            raise CohortError(f"--experts: the model has no expert {unknown[0]!r} ({', '.join(experts)})")
        experts = tuple(dict.fromkeys(chosen))
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if args.target:
        settings = target_settings([t for t in args.target.split(",") if t.strip()], methods)
    else:
        settings = df_settings(parse_dfs(args.df), methods)
    return CohortPlan(
        model=model,
        experts=experts,
        cases=find_cases(args.cts, args.gt),
        settings=settings,
        distilled=distilled_settings(args.distilled, experts) if args.distilled else {},
        tolerance_mm=float(args.tolerance),
        device=args.device,
        precision=args.precision,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    quiet = args.quiet or args.json
    client = connect(args.scheduler) if args.scheduler else local_client(args.workers, args.dashboard)
    try:
        if not quiet:
            where = args.scheduler or f"a local cluster of {args.workers} single-threaded workers"
            print(f"cohort: {len(plan.cases)} cases x {len(plan.experts)} experts on {where}", file=sys.stderr)
            print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
        summary = run_cohort(plan, args.output, client, args.retry_failed, None if quiet else print_progress)
    finally:
        close(client, local=not args.scheduler)
    results = assemble(args.output)
    files = write_analysis(results)
    if args.json:
        print(json.dumps(json_summary(summary, results, files), indent=2, default=str))
    else:
        print(
            f"{summary.ran} tasks run in {summary.seconds:.1f} s ({summary.skipped} done before, "
            f"{summary.failed} failed); scores: {args.output / 'scores.csv'}, report: {files['report']}"
        )
        for failure in results.failures.to_dict("records"):
            print(f"  failed: {failure['task']}: {failure['reason']}")
    return 0


def print_progress(state: CohortProgress, record: dict[str, Any] | None) -> None:
    if record is None:
        print(f"cohort: {state.line()}", file=sys.stderr)
        return
    detail = f"{record.get('task_seconds', math.nan):.1f} s" if record["status"] == "done" else record.get("reason", "")
    print(f"cohort: {state.line()} | {record['task']} {record['status']} ({detail})", file=sys.stderr)


def close(client: Any, local: bool) -> None:
    cluster = client.cluster if local else None
    client.close()
    if cluster is not None:
        cluster.close()


def json_summary(summary: Any, results: Any, files: dict[str, Path]) -> dict[str, Any]:
    return {
        "results": str(results.folder),
        "tasks": summary.total,
        "ran": summary.ran,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "seconds": summary.seconds,
        "dashboard": summary.dashboard,
        "rows": len(results.scores),
        "failures": results.failures.to_dict("records"),
        "files": {name: str(path) for name, path in files.items()},
    }
