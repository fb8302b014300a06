"""CPU runtimes for one sliding-window tile: PyTorch (the reference) or OpenVINO, and the "auto" choice between them.

Why OpenVINO: on this kind of CPU it runs one 3 mm TS patch of the original network in about half PyTorch
eager's time (1.68 s vs 3.35 s fp32 here, 0.92 s in bf16) and accepts compressed networks too; ONNX Runtime
measured 2.5 s for the same patch. Its graphs are exported in the paper's three-conv form (stock Conv3d modules,
core.compression.tucker.with_plain_convs): TuckerConv's oneDNN shortcuts do not export. An export is converted
once per network content and input shape and kept on disk (OpenVINO IR, .xml + .bin) in the per-user cache
folder; compiled models are kept in memory per precision and thread count.

PyTorch fp32 stays the reference: OpenVINO's convolutions sum in another order, so its labels agree with
PyTorch's to Dice >= 0.999 but are not voxel-identical. "auto" times one tile of both runtimes on the network
(once per network content, precision and thread count; remembered on disk) and keeps the faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuckerscope.core.runtime.errors import Cancelled, UserError
from tuckerscope.core.runtime.locations import cache_dir

RUNTIMES = ("torch", "openvino", "auto")
CANCEL_POLL_MS = 100
_CHOICES_FILE = "runtime_choices.json"


class RuntimeUnavailable(UserError):
    """The requested runtime is not installed or cannot run this network."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require_openvino() -> None:
    """Raises RuntimeUnavailable, saying how to install it, where OpenVINO is missing."""
    if not openvino_available():
        raise RuntimeUnavailable(
            "the OpenVINO runtime is not installed; pip install 'tuckerscope[openvino]' or use --runtime torch"
        )


def default_export_folder() -> Path:
    return cache_dir() / "openvino"


def network_hash(network: torch.nn.Module, input_shape: tuple[int, ...]) -> str:
    """SHA-256 of the network's structure, parameter and buffer bytes and the input shape: one per model and
    ranks (a compressed network's factor shapes are its ranks)."""
    digest = hashlib.sha256()
    digest.update(repr(network).encode())
    digest.update(json.dumps(list(input_shape)).encode())
    for name, tensor in [*network.state_dict().items()]:
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{list(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OpenVinoTiles:
    """Runs tiles of one network with OpenVINO; exported (three-conv form) and compiled once."""

    def __init__(
        self,
        network: torch.nn.Module,
        input_shape: tuple[int, ...],
        precision: str = "fp32",
        threads: int | None = None,
        folder: Path | None = None,
        content_hash: str | None = None,
    ) -> None:
        """``content_hash`` is network_hash(network, input_shape) where the caller has it already."""
        require_openvino()
        if precision not in ("fp32", "bf16"):
            raise RuntimeUnavailable(f"OpenVINO runs fp32 or bf16 here, not {precision}")
        import openvino as ov

        self.input_shape = tuple(int(n) for n in input_shape)
        self.folder = Path(folder) if folder is not None else default_export_folder()
        self.key = content_hash or network_hash(network, self.input_shape)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        }
        # the IR (a copy of the weights) is dropped once compiled: only the compiled model stays in memory
        self.compiled = ov.Core().compile_model(self._exported(network, ov), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _exported(self, network: torch.nn.Module, ov: Any) -> Any:
        """The IR from the disk cache, or converted from the network in the paper's three-conv form and saved."""
        xml = self.folder / f"{self.key}.xml"
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            try:
                return ov.Core().read_model(str(xml))
            except RuntimeError:
                pass  # a damaged entry: convert again and overwrite it
        from tuckerscope.core.compression.tucker import with_plain_convs

        plain = with_plain_convs(network).eval().to("cpu", memory_format=torch.contiguous_format)
        model = None
        # Trace on a small input of the same layout (OpenVINO re-infers every shape from ``input``): a trace at the
        # full patch held a whole forward pass's activations on top of the conversion. The full patch is the fallback.
        for example_shape in (_small_example(self.input_shape), self.input_shape):
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    # torch's tracer warns about shape checks that are constant for this network
                    warnings.simplefilter("ignore")
                    model = ov.convert_model(
                        plain, example_input=torch.zeros(example_shape), input=[self.input_shape]
                    )
                break
            except Exception:  # noqa: BLE001 - any tracing failure on the small input: trace the full patch
                if example_shape == self.input_shape:
                    raise
        assert model is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        # saved under a temporary name, then renamed: a reader never meets a half-written export
        temporary = Path(tempfile.mkdtemp(dir=self.folder, prefix=".export-"))
        try:
            ov.save_model(model, str(temporary / "model.xml"), compress_to_fp16=False)
            os.replace(temporary / "model.bin", xml.with_suffix(".bin"))
            os.replace(temporary / "model.xml", xml)
        finally:
            for leftover in temporary.iterdir():
                leftover.unlink()
            temporary.rmdir()
        return model

    def __call__(self, tile: torch.Tensor, should_cancel: Callable[[], bool] = lambda: False) -> torch.Tensor:
        """The network's output for one (1, C, *patch) tile, as float32; a cancel stops the running inference."""
        array = tile.to(torch.float32).contiguous().numpy()
        self.request.set_input_tensor(0, _ov_tensor(array))
        self.request.start_async()
        while not self.request.wait_for(CANCEL_POLL_MS):
            if should_cancel():
                self.request.cancel()
                raise Cancelled("segmentation cancelled")
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def _small_example(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The batch and channels of ``shape`` with each spatial size cut to its largest power-of-two divisor, at
    most 32: a U-Net of total stride up to 32 (TS's) that accepts the patch accepts this too."""
    spatial = [min(size & -size, 32, size) for size in shape[2:]]
    return (*shape[:2], *spatial)


def _ov_tensor(array: Any) -> Any:
    import openvino as ov

    return ov.Tensor(array)


class RuntimeChooser:
    """Picks torch or OpenVINO per network for "auto": whichever ran one tile faster, measured once per network
    content, precision and thread count, and remembered in the cache folder."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_export_folder()
        self._lock = threading.Lock()
        self._memory: dict[str, str] = {}

    def choose(
        self,
        content_hash: str,
        input_shape: tuple[int, ...],
        precision: str,
        threads: int,
        run_torch: Callable[[torch.Tensor], torch.Tensor],
        openvino: Callable[[], OpenVinoTiles],
    ) -> str:
        """"torch" or "openvino" for the network of ``content_hash`` (network_hash) on tiles of ``input_shape``."""
        if not openvino_available() or precision not in ("fp32", "bf16"):
            return "torch"
        key = f"{content_hash}|{precision}|{threads}"
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            stored = self._read()
        if key not in stored:
            tile = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
            torch_seconds = _best_of_two(lambda: run_torch(tile))
            runner = openvino()
            openvino_seconds = _best_of_two(lambda: runner(tile))
            stored = self._read()
            stored[key] = {"torch_s": torch_seconds, "openvino_s": openvino_seconds}
            self.folder.mkdir(parents=True, exist_ok=True)
            target = self.folder / _CHOICES_FILE
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".choices.", suffix=".part")
            with os.fdopen(handle, "w") as stream:
                json.dump(stored, stream, indent=1)
            os.replace(temporary, target)
        timing = stored[key]
        choice = "openvino" if timing["openvino_s"] < timing["torch_s"] else "torch"
        with self._lock:
            self._memory[key] = choice
        return choice

    def _read(self) -> dict[str, Any]:
        try:
            stored = json.loads((self.folder / _CHOICES_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return stored if isinstance(stored, dict) else {}


def _best_of_two(run: Callable[[], Any]) -> float:
    """Seconds of the faster of two runs after one warm-up (first runs allocate and compile)."""
    run()
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
