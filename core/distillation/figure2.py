"""The paper's Figure 2 for one scan: agreement with the original vs compression ratio, four curves.

Curves: Tucker zero-shot, Tucker distilled, pruning zero-shot, pruning distilled (pruned to Tucker's parameter
count at the same DF, the paper's comparison). One point per (method, DF): the compression ratio is the
original's parameter count over the student's (a pruned network counted without its zeroed channels), the
agreement the mean Dice against the original over ``eval_scans`` (and the worst class).

Kept cheap so the window's sweep panel can draw it: the original teacher's outputs are computed once (one
patch pool, reused by every distilled point), each distilled point trains only ``steps_per_point`` steps
(default 20: about 30 s per point for a demo expert on a free 2-core CPU, whole-volume patches), and the
original's segmentation of each scan is computed once. A point trained this briefly shows the direction and
rough size of the recovery, not its end: `tuckerscope distil --minutes M` trains one setting properly. By
default the scan is both the distillation data and the scored scan (label-free, so distilling on the very
scan one wants segmented is legitimate; it is not a held-out estimate): pass ``eval_scans`` for one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from tuckerscope.core.distillation.agreement import agreement_with_original
from tuckerscope.core.distillation.data import ScanSource
from tuckerscope.core.distillation.distiller import CancelSignal, DistilConfig, Distiller, cancel_checker
from tuckerscope.core.distillation.students import METHODS, Method, make_student
from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.errors import Cancelled
from tuckerscope.core.runtime.progress import ProgressCallback
from tuckerscope.core.segmentation.expert_run import expert_engine
from tuckerscope.core.segmentation.segmenter import Segmenter

DEFAULT_DFS = (0.5, 0.3, 0.2, 0.1)
DEFAULT_STEPS_PER_POINT = 20


@dataclass(frozen=True)
class Figure2Point:
    method: Method
    distilled: bool
    df: float
    compression_ratio: float
    params: int
    mean_dice: float
    worst_dice: float
    worst_class: str
    steps: int

    @property
    def curve(self) -> str:
        """'tucker zero-shot', 'tucker distilled', 'prune zero-shot' or 'prune distilled'."""
        return f"{self.method} {'distilled' if self.distilled else 'zero-shot'}"


@dataclass
class Figure2:
    expert: str
    scans: str
    steps_per_point: int
    points: list[Figure2Point] = field(default_factory=list)

    def curves(self) -> dict[str, list[Figure2Point]]:
        """Curve name -> its points by increasing compression ratio."""
        result: dict[str, list[Figure2Point]] = {}
        for point in sorted(self.points, key=lambda p: p.compression_ratio):
            result.setdefault(point.curve, []).append(point)
        return result

    def to_dict(self) -> dict[str, object]:
        return {
            "expert": self.expert,
            "scans": self.scans,
            "steps_per_point": self.steps_per_point,
            "points": [{**asdict(p), "curve": p.curve} for p in self.points],
        }


def figure2(
    expert: LoadedExpert,
    data: ScanSource,
    eval_scans: ScanSource | None = None,
    dfs: Sequence[float] = DEFAULT_DFS,
    steps_per_point: int = DEFAULT_STEPS_PER_POINT,
    methods: Sequence[Method] = METHODS,
    base: DistilConfig | None = None,
    progress: ProgressCallback | None = None,
    on_point: Callable[[Figure2Point], None] | None = None,
    cancel: CancelSignal = None,
) -> Figure2:
    """Every (method, DF) zero-shot and after ``steps_per_point`` steps of distillation on ``data``.

    ``base`` sets everything but method, DF and budget (patch size, seed, device, losses...). ``on_point``
    receives each point as soon as it is scored, zero-shot first, so a plot can grow while this runs.
    """
    eval_scans = eval_scans or data
    base = replace(
        base or DistilConfig(), steps=steps_per_point, minutes=None, assistant_dfs=(), checkpoint_path=None
    )
    engine = expert_engine(expert)
    segmenters: dict[str, Segmenter] = {}
    result = Figure2(expert.name, eval_scans.description, steps_per_point)
    settings = [(method, float(df)) for method in methods for df in dfs]
    pool = None
    report = progress or (lambda _fraction, _message: None)
    for index, (method, df) in enumerate(settings):
        if cancel_checker(cancel)():
            raise Cancelled("figure 2 cancelled")
        report(index / len(settings), f"{method} DF {df:g}")
        distiller = Distiller(expert, data, replace(base, method=method, df=df), engine=engine, pool=pool)
        distilled = distiller.run(cancel=cancel)
        pool = distiller.original_pool
        zero_shot = make_student(engine, method, df)
        scores = agreement_with_original(
            expert,
            {"zero-shot": zero_shot.network.eval(), "distilled": distilled.network},
            eval_scans,
            cancel=cancel,
            segmenters=segmenters,
        )
        for name, steps in (("zero-shot", 0), ("distilled", len(distilled.records))):
            worst_class, worst = scores[name].worst
            point = Figure2Point(
                method,
                name == "distilled",
                df,
                zero_shot.compression_ratio,
                zero_shot.params_compressed,
                scores[name].mean_dice,
                worst,
                worst_class,
                steps,
            )
            result.points.append(point)
            if on_point is not None:
                on_point(point)
    report(1.0, "figure 2 done")
    return result
