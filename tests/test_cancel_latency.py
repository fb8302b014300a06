"""A cancel stops segmentation before the next layer, not after the tile: one 3 mm TS tile takes 10-30 s on a CPU,
far beyond the 2 s a user waits for a cancel to take effect."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from bad_inputs import model_folder, reference_affine, reference_ct

from tuckerscope.core.models.model_folder import load_expert, spec_from_folder
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    return load_expert(spec_from_folder(model_folder(tmp_path_factory.mktemp("model"))))


class CancelAfter:
    """A cancel signal that turns True at its ``calls``-th check and counts every check and layer run after it."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.checks = 0
        self.layers_after_cancel = 0

    def __call__(self) -> bool:
        self.checks += 1
        return self.checks >= self.calls

    def count_layer(self, _module: torch.nn.Module, _inputs: object, _output: object) -> None:
        if self.checks >= self.calls:
            self.layers_after_cancel += 1


def test_cancel_inside_a_forward_pass_stops_before_the_next_layer(expert):
    signal = CancelAfter(calls=8)  # past the checks before the first tile, inside its forward pass
    leaves = [m for m in expert.network.modules() if next(m.children(), None) is None]
    counters = [m.register_forward_hook(signal.count_layer) for m in leaves]
    tiles_done: list[str] = []
    try:
        with pytest.raises(Cancelled):
            Segmenter(reference_ct(), reference_affine()).segment(
                expert,
                options=InferenceOptions(threads=1),
                progress=lambda _f, message: tiles_done.append(message) if "tile" in message else None,
                cancel=signal,
            )
    finally:
        for hook in counters:
            hook.remove()
    assert signal.checks == signal.calls, "checking went on after the cancel"
    assert signal.layers_after_cancel == 0, "layers ran after the cancel"
    assert tiles_done == [], "the cancel waited for the tile to finish"
    assert len(leaves) > signal.calls, "the cancel must land inside the first tile's forward pass"


def test_network_is_left_without_hooks_and_usable(expert):
    """The per-layer checks are removed after a cancelled run; the next run completes normally."""
    with pytest.raises(Cancelled):
        Segmenter(reference_ct(), reference_affine()).segment(
            expert, options=InferenceOptions(threads=1), cancel=CancelAfter(calls=5)
        )
    assert all(not m._forward_pre_hooks for m in expert.network.modules())
    labels = Segmenter(reference_ct(), reference_affine()).segment(
        expert, options=InferenceOptions(threads=1)
    )
    assert labels.shape == reference_ct().shape and len(np.unique(labels)) >= 2


class BlockingCancel:
    """Turns True at its ``calls``-th check, after holding the segmenting thread there until released."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.checks = 0
        self.inside_forward = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> bool:
        self.checks += 1
        if self.checks == self.calls:
            self.inside_forward.set()
            self.release.wait(60)
        return self.checks >= self.calls


def test_a_cancel_in_another_thread_does_not_stop_this_one(expert):
    """The checks only fire in the segmenting thread: the same network may run elsewhere (timings) meanwhile."""
    signal = BlockingCancel(calls=8)
    outcome: dict[str, object] = {}

    def cancelled_run() -> None:
        try:
            Segmenter(reference_ct(), reference_affine()).segment(
                expert, options=InferenceOptions(threads=1), cancel=signal
            )
        except Cancelled:
            outcome["cancelled"] = True

    worker = threading.Thread(target=cancelled_run)
    worker.start()
    assert signal.inside_forward.wait(120)  # the worker is held inside a forward pass, its hooks in place
    try:
        with torch.inference_mode():
            logits = expert.network(torch.zeros(1, 1, 32, 32, 32))  # must not be cancelled by those hooks
    finally:
        signal.release.set()
        worker.join(120)
    assert logits.shape == (1, 3, 32, 32, 32)
    assert signal.checks == signal.calls, "this thread's forward pass consulted the other thread's cancel"
    assert outcome.get("cancelled") is True


def test_cancel_does_not_wait_for_whole_volume_resampling(expert, monkeypatch):
    """TS's resampling steps cannot be interrupted (seconds in scipy for a large CT): a cancel must not wait."""
    slow_seconds = 4.0
    grid_calls: list[float | None] = []
    real_grid, real_to_input = Segmenter._grid, Segmenter._to_input_grid

    def slow_grid(self, resample_mm):
        if resample_mm not in self._grids:
            grid_calls.append(resample_mm)
            time.sleep(slow_seconds)
        return real_grid(self, resample_mm)

    def slow_to_input_grid(self, *args):
        time.sleep(slow_seconds)
        return real_to_input(self, *args)

    monkeypatch.setattr(Segmenter, "_grid", slow_grid)
    monkeypatch.setattr(Segmenter, "_to_input_grid", slow_to_input_grid)
    segmenter = Segmenter(reference_ct(), reference_affine())
    for stage in ("preparing input", "back to the input grid"):
        cancel = threading.Event()
        cancelled_at: list[float] = []

        def cancel_now(cancel: threading.Event = cancel, cancelled_at: list[float] = cancelled_at) -> None:
            cancelled_at.append(time.perf_counter())
            cancel.set()

        def progress(_fraction: float, message: str, stage: str = stage, cancel_now=cancel_now) -> None:
            if stage in message:
                threading.Timer(0.5, cancel_now).start()  # well inside the slow step

        with pytest.raises(Cancelled):
            segmenter.segment(expert, options=InferenceOptions(threads=1), progress=progress, cancel=cancel)
        latency = time.perf_counter() - cancelled_at[0]
        assert latency < 1.0, f"a cancel while {stage} took {latency:.1f} s"
    time.sleep(slow_seconds + 1)  # the abandoned grid job finishes in the background and fills the cache
    assert grid_calls == [None], "the model grid was computed twice"
