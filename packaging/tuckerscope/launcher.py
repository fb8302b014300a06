"""Entry point of the `tuckerscope` command: headless subcommands go to the CLI, everything else opens the window."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tuckerscope.core.cli import main as cli


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if cli.is_subcommand(args):
        return cli.main(args)
    from tuckerscope.app.main_window import run_app

    return run_app(args)

