"""Background jobs of the window, captured from a Session on the UI thread and run in a worker.

Each ``*_job`` function reads what it needs from the session now (immutable values, or objects that are
only read afterwards: networks, engines) and returns a function for a worker thread; the result goes back
to the session's matching ``apply_*``. Qt-free, so the CLI, scripts and tests run exactly what the window runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tuckerscope.core.compression.explained_variance import all_heatmaps
from tuckerscope.core.evaluation.counts import ExpertSize
from tuckerscope.core.evaluation.time_budget import solve_target
from tuckerscope.core.evaluation.timing import ForwardSetup, compare_forward
from tuckerscope.core.outputs.report import LayerHeatmap
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.expert_run import input_shape
from tuckerscope.core.session.session import (
    BudgetOutcome,
    CompressionResult,
    ExpertTiming,
    Session,
    TimingResult,
)


def compression_job(session: Session, name: str) -> Callable[[], CompressionResult]:
    """Build one expert's compressed network at its current setting and count both networks (a distilled
    network shown instead of the zero-shot one is used as it is: same architecture, same figures)."""
    run = session.expert(name).run()
    distilled = session.distilled_network(name)

    def build() -> CompressionResult:
        start = time.perf_counter()
        network = distilled if distilled is not None else run.build()
        seconds = time.perf_counter() - start
        size = ExpertSize.of(name, run.df, run.costs(), run.method)
        return CompressionResult(name, run.rank_key, network, seconds, size)

    return build


def budget_job(session: Session, scope: str) -> Callable[[ProgressCallback, threading.Event], BudgetOutcome]:
    """Solve the target asked for ``scope`` (core.evaluation.time_budget.solve_target, as the CLI does).

    Parameter, FLOP, energy and VBMF targets take milliseconds; a time target times forward passes on this
    machine (the session's threads, fp32, as segmentation runs) and measures each new layer shape once (cached
    on disk), so it must never run on the UI thread. Its timings cannot be interrupted: a cancel drops the
    result when the solver returns.
    """
    spec, token = session.targets[scope], session.models_token
    engines = {name: session.experts[name].engine for name in session.scope_experts(scope)}
    setup = ForwardSetup(device=session.inference.device, threads=session.inference.threads)

    def run(progress: ProgressCallback, cancel: threading.Event) -> BudgetOutcome:
        progress(0.0, f"solving {spec} for {scope}")
        start = time.perf_counter()

        def timing(done: int, total: int, layer: str) -> None:
            progress(done / max(total, 1), f"timing {layer} (once per machine and layer shape)")

        result = solve_target(engines, spec, setup, progress=timing)
        if cancel.is_set():
            raise Cancelled("target superseded")
        return BudgetOutcome(token, scope, spec, result, time.perf_counter() - start)

    return run


def heatmaps_job(
    session: Session,
) -> Callable[[ProgressCallback, threading.Event], dict[str, list[LayerHeatmap]]]:
    """Explained-variance grids of every layer of every expert, from the cached factors (factorising each
    expert first where loading left that to here: the first job of a model set, started with it)."""
    engines = {name: expert.engine for name, expert in session.experts.items()}

    def run(progress: ProgressCallback, cancel: threading.Event) -> dict[str, list[LayerHeatmap]]:
        result = {}
        for index, (name, engine) in enumerate(engines.items()):
            if cancel.is_set():
                raise Cancelled("heatmaps cancelled")
            if not engine.is_factorised:
                progress(index / len(engines), f"factorising {name}")
                engine.factorise(should_cancel=cancel.is_set)
            progress(index / len(engines), f"heatmaps of {name}")
            result[name] = [LayerHeatmap(layer, grid) for layer, grid in all_heatmaps(engine).items()]
        return result

    return run


def timing_job(
    session: Session, setup: ForwardSetup, runs: int = 3
) -> Callable[[ProgressCallback, threading.Event], TimingResult]:
    """Forward time per expert on one patch of its plans' size, original and compressed interleaved.

    Compressed networks the session has built already are reused; missing ones are built in the worker.
    """
    plans = []
    for expert in session.experts.values():
        run = expert.run()
        built = session.networks.get(expert.name)
        network = built[1] if built is not None and built[0] == run.rank_key else None
        plans.append((run, network))

    def measure(progress: ProgressCallback, cancel: threading.Event) -> TimingResult:
        setup.check()
        rows = []
        for index, (run, network) in enumerate(plans):
            progress(index / len(plans), f"timing {run.name} ({setup.describe()})")
            pair = {"original": run.expert.network}
            if not run.is_full_rank:
                pair["compressed"] = network if network is not None else run.build()
            shape = input_shape(run.expert)
            timings = compare_forward(pair, shape, setup, warmup=1, runs=runs, should_cancel=cancel.is_set)
            compressed = timings.get("compressed")
            rows.append(
                ExpertTiming(
                    run.name,
                    run.df,
                    run.rank_key,
                    timings["original"].wall_seconds,
                    None if compressed is None else compressed.wall_seconds,
                    tuple(shape[2:]),
                )
            )
        return TimingResult(rows, setup.describe(), runs)

    return measure
