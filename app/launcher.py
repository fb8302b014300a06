"""Entry point of the `tuckerscope` command: headless subcommands go to the CLI, everything else opens the window."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tuckerscope.core import cli


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if cli.is_subcommand(args) or not _window_available():
        return cli.main(args)
    from tuckerscope.app.main_window import run_app

    return run_app(args)


def _window_available() -> bool:
    """The window lands in a later step; until then (or without it) the headless demo runs."""
    import importlib.util

    return importlib.util.find_spec("tuckerscope.app.main_window") is not None
