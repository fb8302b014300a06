"""Run core calls off the UI thread: one lane per kind of work, the latest request wins.

A ``JobLane`` owns a QThreadPool of one thread (so jobs of one kind never overlap; the core Segmenter is
not thread-safe) and a generation counter. Submitting a job cancels the one before it (its
``threading.Event`` is set; core checks it between tiles/layers) and any result, partial result or error of
a superseded job is dropped, so a slider drag never queues forty segmentations. Results come back to the
UI thread through queued Qt signals.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyqtgraph.Qt import QtCore

from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.priority import lower_this_thread
from tuckerscope.core.runtime.progress import ProgressCallback


@dataclass
class JobContext:
    """What a job function gets: cancel events to pass to core, and ways to report progress and partials.

    ``cancel`` is set when a newer request supersedes the job or the user cancels; ``user_cancel`` only in
    the second case, for work worth finishing even when superseded (an original segmentation that is cached).
    """

    cancel: threading.Event
    user_cancel: threading.Event
    _progress: ProgressCallback
    _partial: Callable[[Any], None]
    started: float = field(default_factory=time.perf_counter)

    def progress(self, fraction: float, message: str = "") -> None:
        self._progress(float(fraction), message)

    def partial(self, result: Any) -> None:
        """Deliver an intermediate result (e.g. the visible slab before the whole volume)."""
        self._partial(result)

    def check(self) -> None:
        """Raise Cancelled if a newer request superseded this job."""
        if self.cancel.is_set():
            raise Cancelled("superseded by a newer request")


JobFunction = Callable[[JobContext], Any]


class _JobSignals(QtCore.QObject):
    progress = QtCore.Signal(int, float, str)
    partial = QtCore.Signal(int, object)
    finished = QtCore.Signal(int, object)
    failed = QtCore.Signal(int, object, str)
    cancelled = QtCore.Signal(int)


class _Job(QtCore.QRunnable):
    def __init__(
        self,
        generation: int,
        function: JobFunction,
        signals: _JobSignals,
        cancel: threading.Event,
        user_cancel: threading.Event,
        background: bool = False,
    ) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self.background = background
        self.generation = generation
        self.function = function
        self.signals = signals
        self.cancel = cancel
        self.user_cancel = user_cancel

    def run(self) -> None:
        if self.background:
            lower_this_thread()
        if self.cancel.is_set():
            self.signals.cancelled.emit(self.generation)
            return
        context = JobContext(
            cancel=self.cancel,
            user_cancel=self.user_cancel,
            _progress=lambda f, m: self.signals.progress.emit(self.generation, f, m),
            _partial=lambda r: self.signals.partial.emit(self.generation, r),
        )
        try:
            result = self.function(context)
        except Cancelled:
            self.signals.cancelled.emit(self.generation)
        except Exception as exc:  # reported to the UI as a dialog; the worker thread must survive
            self.signals.failed.emit(self.generation, exc, traceback.format_exc())
        else:
            if self.cancel.is_set():
                self.signals.cancelled.emit(self.generation)
            else:
                self.signals.finished.emit(self.generation, result)


@dataclass
class JobCallbacks:
    """UI-thread handlers of one submitted job; all optional but ``on_result``."""

    on_result: Callable[[Any], None]
    on_partial: Callable[[Any], None] | None = None
    on_error: Callable[[Exception, str], None] | None = None
    on_cancelled: Callable[[], None] | None = None


class JobLane(QtCore.QObject):
    """Serial, latest-wins execution of one kind of job."""

    progressChanged = QtCore.Signal(str, float, str)  # lane name, fraction, message
    busyChanged = QtCore.Signal(str, bool)

    def __init__(
        self,
        name: str,
        parent: QtCore.QObject | None = None,
        pool: QtCore.QThreadPool | None = None,
        background: bool = False,
    ) -> None:
        """``pool``: a one-thread pool shared with other lanes, whose jobs then queue behind each other
        (each lane still supersedes only its own); by default the lane has its own thread. ``background``:
        its jobs run at lower CPU priority than the segmentation (core.runtime.priority)."""
        super().__init__(parent)
        self.name = name
        self.background = background
        if pool is None:
            pool = QtCore.QThreadPool(self)
            pool.setMaxThreadCount(1)
        self.pool = pool
        self._generation = 0
        self._cancel: threading.Event | None = None
        self._user_cancel: threading.Event | None = None
        self._callbacks: JobCallbacks | None = None
        self._running = 0
        self._signals = _JobSignals(self)
        self._signals.progress.connect(self._on_progress)
        self._signals.partial.connect(self._on_partial)
        self._signals.finished.connect(self._on_finished)
        self._signals.failed.connect(self._on_failed)
        self._signals.cancelled.connect(self._on_cancelled)

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def busy(self) -> bool:
        return self._running > 0

    def submit(self, function: JobFunction, callbacks: JobCallbacks) -> int:
        """Supersede whatever this lane is doing and run ``function`` next; returns the job's generation."""
        if self._cancel is not None:
            self._cancel.set()
        self._generation += 1
        self._cancel = threading.Event()
        self._user_cancel = threading.Event()
        self._callbacks = callbacks
        self._running += 1
        if self._running == 1:
            self.busyChanged.emit(self.name, True)
        self.pool.start(
            _Job(self._generation, function, self._signals, self._cancel, self._user_cancel, self.background)
        )
        return self._generation

    def cancel(self) -> None:
        """The user's cancel: stop the current job, including work it would finish when superseded."""
        for event in (self._cancel, self._user_cancel):
            if event is not None:
                event.set()

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until the lane is idle (tests and shutdown only)."""
        return self.pool.waitForDone(timeout_ms)

    def _is_current(self, generation: int) -> bool:
        return generation == self._generation and self._callbacks is not None

    def _job_ended(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.busyChanged.emit(self.name, False)

    def _on_progress(self, generation: int, fraction: float, message: str) -> None:
        if self._is_current(generation):
            self.progressChanged.emit(self.name, fraction, message)

    def _on_partial(self, generation: int, result: object) -> None:
        if self._is_current(generation) and self._callbacks.on_partial is not None:
            self._callbacks.on_partial(result)

    def _on_finished(self, generation: int, result: object) -> None:
        self._job_ended()
        if self._is_current(generation):
            callbacks, self._callbacks = self._callbacks, None
            callbacks.on_result(result)

    def _on_failed(self, generation: int, error: Exception, details: str) -> None:
        self._job_ended()
        if self._is_current(generation):
            callbacks, self._callbacks = self._callbacks, None
            if callbacks.on_error is not None:
                callbacks.on_error(error, details)

    def _on_cancelled(self, generation: int) -> None:
        self._job_ended()
        if self._is_current(generation):
            callbacks, self._callbacks = self._callbacks, None
            if callbacks.on_cancelled is not None:
                callbacks.on_cancelled()
