"""Background work at a lower CPU priority than the segmentation, so that on a small machine the tiles the user
waits for get the cores first.

Why: at real scale each expert's original (12 tile forwards of a 1.5 mm expert) shares two cores with the
explained-variance factorisation, the 3D surfaces and the agreement scoring of the experts already shown.
Those can wait; the visible slice cannot. Linux schedules threads as tasks, so one thread (or one child
process) can be niced alone; elsewhere this does nothing.
"""

from __future__ import annotations

import os
import sys
import threading

BACKGROUND_NICENESS = 10  # CFS weight 110 against 1024 at 0: about a tenth of a core while tiles compete


def lower_this_thread() -> None:
    """Give the calling thread (and the threads it starts later) background priority; idempotent."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
        except OSError:
            pass  # not allowed here (e.g. a sandbox): run at normal priority


def lower_this_process() -> None:
    """Background priority for a whole worker process (a multiprocessing initializer)."""
    if hasattr(os, "nice"):
        try:
            os.nice(max(BACKGROUND_NICENESS - os.nice(0), 0))
        except OSError:
            pass
