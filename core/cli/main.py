"""The `tuckerscope` command line: one subcommand per module in tuckerscope.core.cli.

Every subcommand reports bad input as a single line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tuckerscope import __version__
from tuckerscope.core.runtime.errors import UserError

COMMANDS: tuple[str, ...] = ("demo", "segment", "eval", "report", "compress", "bench", "phantom", "cohort", "distil")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; with a subcommand first in ``argv``, only that subcommand's module is imported (each pulls in
    its own stack, torch included: `tuckerscope phantom --help` need not load the others)."""
    parser = argparse.ArgumentParser(
        prog="tuckerscope",
        description="Preview post-training Tucker compression of TotalSegmentator models.",
    )
    parser.add_argument("--version", action="version", version=f"tuckerscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS
    for name in chosen:
        importlib.import_module(f"tuckerscope.core.cli.{name}").register(subparsers)
    return parser


def is_subcommand(argv: Sequence[str]) -> bool:
    """True when argv asks for a headless subcommand (or CLI help/version) rather than the window."""
    return bool(argv) and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version"))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if not getattr(args, "func", None):
        args = build_parser(["demo"]).parse_args(["demo"])
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"tuckerscope: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tuckerscope: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
