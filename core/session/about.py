"""What Help > About shows: version, torch, devices, where the models came from and where settings live.

Qt-free so the window, a bug report and a test read the same facts. The model search order is
TotalSegmentator's own (model_sources.ts_results_candidates); each candidate is listed with the TS tasks
found there, so a user can see why 'total' was or was not found.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from typing import Any

import torch

from tuckerscope import __version__
from tuckerscope.core.models.model_sources import ts_results_candidates, ts_tasks_in
from tuckerscope.core.runtime.locations import cache_dir, settings_file
from tuckerscope.core.session.session import Session
from tuckerscope.resources import DEMO_MODELS_DIR


def available_devices() -> list[str]:
    """'cpu' plus every CUDA GPU (by name) and Apple MPS, as torch sees them in this process."""
    devices = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def about_info(session: Session | None = None) -> dict[str, Any]:
    """Plain facts (strings and lists) for the About box; ``session`` adds the experts now loaded."""
    experts: Iterable[Any] = session.experts.values() if session is not None else ()
    return {
        "version": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,  # the bundle's own executable when frozen by PyInstaller
        "torch": torch.__version__,
        "devices": available_devices(),
        "model_source": session.model_source if session is not None else "",
        "experts": [f"{e.name}: {e.loaded.spec.folder}" for e in experts],
        "demo_models": str(DEMO_MODELS_DIR),
        "ts_search_order": [
            f"{path} ({', '.join(ts_tasks_in(path)) or 'no TS task'})" if path.is_dir() else f"{path} (absent)"
            for path in ts_results_candidates()
        ],
        "settings": settings_file(),
        "cache": str(cache_dir()),
    }


def about_text(session: Session | None = None) -> str:
    """``about_info`` as the few labelled lines a message box or ``--version`` report shows."""
    info = about_info(session)
    lines = [
        f"TuckerScope {info['version']}",
        f"torch {info['torch']}, Python {info['python']} ({info['executable']})",
        f"devices: {', '.join(info['devices'])}",
    ]
    if info["model_source"]:
        lines.append(f"models: {info['model_source']}")
        lines += [f"  {expert}" for expert in info["experts"]]
    lines.append(f"demo models: {info['demo_models']}")
    lines.append("TotalSegmentator weights are searched in this order:")
    lines += [f"  {entry}" for entry in info["ts_search_order"]]
    lines.append(f"settings: {info['settings']}")
    lines.append(f"cache: {info['cache']}")
    return "\n".join(lines)
