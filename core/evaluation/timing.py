"""Forward-pass time of original and compressed networks on a chosen device, precision and memory format.

These are the figures the speed panel and `tuckerscope bench forward` show. Several networks are timed
interleaved (A, B, A, B, ...) after a warm-up, and the median is reported, so that load from other processes
hits all of them alike; process CPU time is reported beside wall time for the same reason. Networks are run
from a private copy (device, memory format), never converted in place: compressed networks share tensors with
their original.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from tuckerscope.core.compression.conv_layers import CONV_TYPES, copy_with_replacements
from tuckerscope.core.compression.fused_norm import TuckerConvNormAct
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.runtime.errors import Cancelled, UserError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


class TimingSetupError(UserError):
    """A device/precision combination this machine cannot run."""


@dataclass(frozen=True)
class ForwardSetup:
    """How to run a forward pass: fp32 is the reference; bf16 is CPU autocast, fp16 CUDA autocast."""

    device: str = "cpu"
    precision: Precision = "fp32"
    channels_last: bool = False
    threads: int | None = None

    def describe(self) -> str:
        threads = self.threads or torch.get_num_threads()
        layout = ", channels_last_3d" if self.channels_last else ""
        where = f"{self.device}, {threads} threads" if self.device == "cpu" else self.device
        return f"{self.precision}{layout} on {where}"

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise TimingSetupError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TimingSetupError("no CUDA GPU is available here; use --device cpu")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise TimingSetupError("fp16 is offered on CUDA only; on a CPU use bf16")
        if self.threads is not None and self.threads < 1:
            raise TimingSetupError(f"thread count must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class ForwardTiming:
    """Median wall and process-CPU seconds of one network's forward pass, with every run kept."""

    wall_seconds: float
    cpu_seconds: float
    runs_wall: tuple[float, ...]
    runs_cpu: tuple[float, ...]
    setup: str


@dataclass
class LayerProfile:
    """Median wall and process-CPU seconds in each conv (original or Tucker) and in the rest of the pass."""

    layers: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    layers_cpu: dict[str, float] = field(default_factory=dict)
    total_cpu: float = 0.0

    @property
    def outside_convs(self) -> float:
        return self.total - sum(self.layers.values())

    @property
    def outside_convs_cpu(self) -> float:
        return self.total_cpu - sum(self.layers_cpu.values())


def autocast_context(setup: ForwardSetup) -> torch.autocast | nullcontext:
    if setup.precision == "bf16":
        return torch.autocast(device_type=setup.device.split(":")[0], dtype=torch.bfloat16)
    if setup.precision == "fp16":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def prepared_copy(network: nn.Module, setup: ForwardSetup) -> nn.Module:
    """A copy of ``network`` on the setup's device and memory format; the original is left as it is."""
    copy = copy_with_replacements(network, {})
    memory_format = torch.channels_last_3d if setup.channels_last else torch.contiguous_format
    converted: dict[int, torch.Tensor] = {}
    for module in copy.modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None:
                    continue
                if id(tensor) not in converted:
                    moved = tensor.detach().to(setup.device)
                    if moved.dim() == 5:
                        moved = moved.contiguous(memory_format=memory_format)
                    converted[id(tensor)] = (
                        nn.Parameter(moved, False) if isinstance(tensor, nn.Parameter) else moved
                    )
                store[key] = converted[id(tensor)]
    return copy.eval()


def example_input(shape: tuple[int, ...], setup: ForwardSetup, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(setup.device)
    return x.contiguous(memory_format=torch.channels_last_3d) if setup.channels_last else x


def compare_forward(
    networks: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    setup: ForwardSetup,
    warmup: int = 1,
    runs: int = 3,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, ForwardTiming]:
    """Time each network's forward pass, interleaved, after ``warmup`` untimed passes each."""
    setup.check()
    prepared = {name: prepared_copy(net, setup) for name, net in networks.items()}
    x = example_input(input_shape, setup)
    wall: dict[str, list[float]] = {name: [] for name in prepared}
    cpu: dict[str, list[float]] = {name: [] for name in prepared}
    with threads_set_to(setup.threads), torch.inference_mode(), autocast_context(setup):
        for _ in range(warmup):
            for net in prepared.values():
                _check_cancel(should_cancel)
                net(x)
        for _ in range(runs):
            for name, net in prepared.items():
                _check_cancel(should_cancel)
                seconds, cpu_seconds = _timed_forward(net, x, setup)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    return {
        name: ForwardTiming(
            statistics.median(wall[name]),
            statistics.median(cpu[name]),
            tuple(wall[name]),
            tuple(cpu[name]),
            setup.describe(),
        )
        for name in prepared
    }


def time_forward(
    network: nn.Module, input_shape: tuple[int, ...], setup: ForwardSetup, warmup: int = 1, runs: int = 3
) -> ForwardTiming:
    return compare_forward({"network": network}, input_shape, setup, warmup, runs)["network"]


def profile_layers(
    network: nn.Module, input_shape: tuple[int, ...], setup: ForwardSetup, runs: int = 3
) -> LayerProfile:
    """Median time per conv module (original or TuckerConv) over ``runs`` passes, via forward hooks.

    A TuckerConv fused with its norm and activation is timed as one block, named '<layer> +norm+act'.
    """
    setup.check()
    prepared = prepared_copy(network, setup)
    x = example_input(input_shape, setup)
    starts: dict[str, tuple[float, float]] = {}
    samples: dict[str, list[tuple[float, float]]] = {}
    names: dict[int, str] = {}
    for name, module in prepared.named_modules():
        if isinstance(module, TuckerConvNormAct):  # its conv runs inside it, unhooked: time the whole block
            names[id(module)] = f"{module[0].layer_name} +norm+act"
        elif isinstance(module, (*CONV_TYPES, TuckerConv)) and id(module) not in names:
            names[id(module)] = name

    def before(module: nn.Module, _inputs: object) -> None:
        _synchronize(setup)
        starts[names[id(module)]] = (time.perf_counter(), time.process_time())

    def after(module: nn.Module, _inputs: object, _output: object) -> None:
        _synchronize(setup)
        name = names[id(module)]
        wall, cpu = starts[name]
        samples.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))

    handles = []
    for module in prepared.modules():
        if id(module) in names:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    totals = []
    with threads_set_to(setup.threads), torch.inference_mode(), autocast_context(setup):
        prepared(x)
        samples.clear()
        for _ in range(runs):
            totals.append(_timed_forward(prepared, x, setup))
    for handle in handles:
        handle.remove()
    return LayerProfile(
        {k: statistics.median(w for w, _ in v) for k, v in samples.items()},
        statistics.median(w for w, _ in totals),
        {k: statistics.median(c for _, c in v) for k, v in samples.items()},
        statistics.median(c for _, c in totals),
    )


@contextmanager
def threads_set_to(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _timed_forward(network: nn.Module, x: torch.Tensor, setup: ForwardSetup) -> tuple[float, float]:
    _synchronize(setup)
    wall, cpu = time.perf_counter(), time.process_time()
    network(x)
    _synchronize(setup)
    return time.perf_counter() - wall, time.process_time() - cpu


def _synchronize(setup: ForwardSetup) -> None:
    # CUDA kernels run asynchronously: without a sync the clock would stop before the GPU does
    if setup.device.startswith("cuda"):
        torch.cuda.synchronize()


def _check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("timing cancelled")
