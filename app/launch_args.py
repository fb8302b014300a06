"""Command line of the window: `tuckerscope [CT] [--model PATH | --task total|total_fast|demo]`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

TASKS = ("demo", "total", "total_fast")


@dataclass(frozen=True)
class LaunchRequest:
    """What to open: a CT (None = the demo phantom) and a model source ('demo', a task or a folder)."""

    ct: Path | None
    model: str
    phantom_seed: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuckerscope",
        description="Open the TuckerScope window. With no arguments it opens the demo "
        "(a CT phantom and the demo experts).",
    )
    parser.add_argument(
        "ct", nargs="?", type=Path, help="a CT: NIfTI file (.nii/.nii.gz) or DICOM series folder"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a TotalSegmentator home, an nnU-Net v2 results folder, or 'demo'")
    source.add_argument("--task", choices=TASKS, help="TS task to find in the TS home (or the demo models)")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed when no CT is given (default 7)")
    return parser


def parse_launch_args(argv: list[str]) -> LaunchRequest:
    args = build_parser().parse_args(argv)
    model = args.model or args.task or "demo"
    return LaunchRequest(ct=args.ct, model=model, phantom_seed=args.seed)
