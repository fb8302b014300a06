"""Run a picklable function in a separate, persistent process, with cancel.

Why: some library code holds Python's GIL for seconds (surface-distance sorts millions of surfels with
``sorted()``); run in a thread of the GUI process it would freeze the UI thread for that long. A second
process has its own GIL. The process is started once (spawn, so no inherited Qt or torch state) and reused;
cancelling terminates it, and the next call starts a fresh one.
"""

from __future__ import annotations

import importlib
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.pool import AsyncResult, Pool
from typing import Any

from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.priority import lower_this_process

POLL_SECONDS = 0.05


class IsolatedRunner:
    """One worker process; ``run`` blocks its calling (worker) thread, never the process's other threads."""

    def __init__(self, background: bool = False) -> None:
        """``background``: the process runs at lower CPU priority than this one (core.runtime.priority)."""
        self._pool: Pool | None = None
        self._lock = threading.Lock()
        self._initializer = lower_this_process if background else None

    def run(self, function: Callable[..., Any], *args: Any, cancel: threading.Event | None = None) -> Any:
        """``function(*args)`` in the worker process; raises Cancelled (and kills the process) on cancel."""
        pending = self._submit(function, args)
        while True:
            try:
                return pending.get(timeout=POLL_SECONDS)
            except multiprocessing.TimeoutError:
                if cancel is not None and cancel.is_set():
                    self.close()
                    raise Cancelled("stopped in the worker process") from None

    def warm_up(self, module: str) -> None:
        """Start the process now and import ``module`` there, so the first real call does not pay for both."""
        self._submit(importlib.import_module, (module,))

    def _submit(self, function: Callable[..., Any], args: tuple[Any, ...]) -> AsyncResult:
        """Queue a call, starting the process first if there is none (or the last one was cancelled)."""
        with self._lock:
            if self._pool is None:
                self._pool = multiprocessing.get_context("spawn").Pool(processes=1, initializer=self._initializer)
            return self._pool.apply_async(function, args)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            pool.join()
