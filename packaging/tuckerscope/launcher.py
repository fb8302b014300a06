"""Entry point of the `tuckerscope` command: headless subcommands go to the CLI, everything else opens the window."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tuckerscope import __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # answered before torch is imported: it is what install checks run first
        print(f"tuckerscope {__version__}")
        return 0
    from tuckerscope.core.cli import main as cli

    if cli.is_subcommand(args):
        return cli.main(args)
    from tuckerscope.core.runtime.memory import relaunch_retaining_memory

    relaunch_retaining_memory()  # before Qt, torch or any thread exists; returns in the re-executed window
    from tuckerscope.app.main_window import run_app

    return run_app(args)
