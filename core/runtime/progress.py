"""The one progress-callback type of core: ``progress(fraction in [0, 1], message)``.

Every long call (loading, factorising, segmenting, sweeping, timing) takes one, so the CLI's terminal bar,
the window's status bar and tests all plug into the same signature.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]


def no_progress(_fraction: float, _message: str) -> None:
    """The callback for callers that do not report progress."""
