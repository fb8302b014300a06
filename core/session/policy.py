"""The window's policy, Qt-free: when to refresh, when to time, what the titles and figures lines say.

The app's views and lanes ask here instead of deciding themselves, so the rules can be tested (and reused by
scripts) without a window.
"""

from __future__ import annotations

import torch

from tuckerscope.core.evaluation.counts import ExpertSize
from tuckerscope.core.session.session import ExpertModel, Session

# A drag restarts this timer; segmentation starts when it pauses this long.
SEGMENT_DEBOUNCE_MS = 200
# Forward times are measured by themselves once the window is idle, but only when one pass of every expert
# is cheap (the demo); for TS models (tens of seconds per pass) the user presses Re-measure.
AUTO_TIMING_MAX_FLOPS = 50e9
TIMING_RUNS = 3


# Lanes whose jobs run below the segmentation's CPU priority (their worker processes too): what they draw can
# wait, the slice the user looks at cannot. The timing lane is not among them: it measures speed.
BACKGROUND_LANES = ("heatmaps", "surfaces_original", "surfaces_compressed", "agreement", "sweep_setup")


def segmentation_threads() -> int:
    """Threads for the window's tile forwards: torch's own choice (the physical cores), as `segment` and
    `bench forward` use. Leaving a core to the UI thread halved the tile speed on a 2-core machine (one
    thread instead of two) for little gain: the UI thread needs little CPU while the networks run, and a
    newer request stops them before their next layer."""
    return torch.get_num_threads()


def debounce_ms(immediately: bool) -> int:
    """0 for a new CT or model set (nothing is on screen yet), else wait for the drag to pause."""
    return 0 if immediately else SEGMENT_DEBOUNCE_MS


def should_time_automatically(session: Session) -> bool:
    """Every expert's size is known, one pass of all of them is cheap, and the times shown are stale."""
    experts = session.experts
    if not experts or len(session.sizes) < len(experts):
        return False
    cheap = sum(session.sizes[name].flops_original for name in experts) <= AUTO_TIMING_MAX_FLOPS
    measured = session.timing.rank_keys() if session.timing is not None else {}
    return cheap and measured != session.rank_keys()


def compressed_title(session: Session) -> str:
    """'Compressed · DF 0.20' when the experts agree, else each expert's DF; '(updating…)' while stale."""
    experts = session.experts
    settings = {setting_label(e) for e in experts.values()}
    if len(settings) == 1:
        text = settings.pop()
    else:
        text = ", ".join(f"{name} {setting_label(e).removeprefix('DF ')}" for name, e in experts.items())
    pruned = [name for name, e in experts.items() if e.method == "prune" and not e.is_full_rank()]
    if pruned:
        text += " · pruned: " + ", ".join(pruned) if len(pruned) < len(experts) else " · pruned"
    distilled = [name for name, e in experts.items() if e.show_distilled]
    if distilled:
        text += " · distilled: " + ", ".join(distilled) if len(distilled) < len(experts) else " · distilled"
    stale = "" if session.compressed_is_current() else " (updating…)"
    runtime = runtime_label(session)
    return f"Compressed · {text}{' · ' + runtime if runtime else ''}{stale}"


def original_title(session: Session) -> str:
    """'Original', naming the runtime when it is not the PyTorch fp32 reference."""
    runtime = runtime_label(session)
    return f"Original · {runtime}" if runtime else "Original"


INFERENCE_CHOICES = (
    ("torch", "fp32", "PyTorch fp32 (reference)"),
    ("torch", "bf16", "PyTorch bf16"),
    ("openvino", "fp32", "OpenVINO fp32"),
    ("openvino", "bf16", "OpenVINO bf16"),
    ("auto", "fp32", "Fastest measured per network, fp32 (PyTorch or OpenVINO)"),
)
"""The window's Run menu: (runtime, precision, label). Anything but the reference agrees with it to rounding
(Dice >= 0.999 on trained weights) but is not voxel-identical, so the views name it."""


def runtime_label(session: Session) -> str:
    """'' for the reference (PyTorch fp32), else e.g. 'OpenVINO fp32' or 'auto runtime fp32'."""
    options = session.inference
    if options.runtime == "torch" and options.precision == "fp32":
        return ""
    name = {"torch": "PyTorch", "openvino": "OpenVINO", "auto": "auto runtime"}[options.runtime]
    return f"{name} {options.precision}"


def setting_label(expert: ExpertModel) -> str:
    """'DF 0.20', or the target whose ranks the expert runs at ('params=10x')."""
    return expert.target if expert.target is not None else f"DF {expert.df:.2f}"


def target_status(session: Session, scope: str) -> tuple[str, bool]:
    """What a target control says beside its value, and whether that is a warning: solving, achieved vs
    asked, why it cannot be met, or '' while the scope runs at its DF."""
    outcome = session.budgets.get(scope)
    if outcome is not None:
        return f"{outcome.summary} · solved in {outcome.seconds:.2g} s", not outcome.result.met
    if scope in session.targets:
        return f"solving {session.targets[scope]}…", False
    return "", False


def human(value: float, unit: str = "") -> str:
    """12_300_000 -> '12.3 M'; short figures for narrow panels."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}{unit}"
    return f"{value:.3g} {unit}".strip()


def describe_build(session: Session, name: str) -> str:
    """The figures line under an expert's slider."""
    size: ExpertSize = session.sizes[name]
    line = (
        f"params {human(size.params_original)} → {human(size.params_compressed)} ({size.params_ratio:.1f}x) · "
        f"FLOPs {human(size.flops_original)} → {human(size.flops_compressed)} ({size.flops_ratio:.1f}x)"
    )
    if session.experts[name].is_full_rank():
        return line + " · uncompressed"
    verb = "pruned" if size.method == "prune" else "network built"
    return line + f" · {verb} in {session.build_seconds.get(name, 0.0) * 1000:.0f} ms"


def colours(session: Session) -> dict[int, tuple[int, int, int]]:
    """Merged label -> TS colour, for slices and 3D."""
    return {info.label: info.rgb for info in session.classes}


def class_names(session: Session) -> dict[int, str]:
    return {info.label: info.name for info in session.classes}


def left_out_of_3d(session: Session, show_body_wall: bool) -> tuple[int, ...]:
    """Labels not meshed in 3D: the body-wall shells unless asked for (they hide every organ inside)."""
    return () if show_body_wall else tuple(info.label for info in session.classes if info.wraps_the_body)


def settings_key(source: str) -> str:
    """QSettings keys cannot hold slashes meaningfully; keep the source readable but flat."""
    return source.replace("/", "|").replace("\\", "|")
