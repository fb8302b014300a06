"""Everything the window's views need from core, in one place: the app imports core only through
tuckerscope.core.session (this module and its siblings) and tuckerscope.core.runtime.

Re-exported names keep their home module (the metrics, the sweep, the exports, the surfaces); the app sees
one stable surface, and the import-linter contract 'the app talks to core only through the session layer'
holds.
"""

from __future__ import annotations

from tuckerscope.core.cohorts.plan import CohortError
from tuckerscope.core.cohorts.results import CohortView, open_results
from tuckerscope.core.evaluation.counts import ExpertSize, with_total
from tuckerscope.core.evaluation.metrics import DEFAULT_TOLERANCE_MM
from tuckerscope.core.evaluation.sweep import (
    DEFAULT_GRID,
    SweepBackend,
    SweepError,
    SweepPoint,
    SweepResult,
    run_sweep,
)
from tuckerscope.core.evaluation.timing import ForwardSetup
from tuckerscope.core.models.model_sources import TS_TASKS, ts_tasks_in
from tuckerscope.core.outputs.deliverables import PARTS, ExportBundle, report_content, safe_stem, write_bundle
from tuckerscope.core.outputs.report import LayerHeatmap, write_report
from tuckerscope.core.outputs.surfaces import SMOOTHING_ITERATIONS, LabelMeshes, extract_label_meshes
from tuckerscope.core.segmentation.expert_run import METHODS
from tuckerscope.core.segmentation.live_segmentation import SegmentationUpdate, run_segmentation
from tuckerscope.core.segmentation.original_cache import OriginalCache
from tuckerscope.core.segmentation.runtimes import openvino_available
from tuckerscope.core.segmentation.segmenter import InferenceOptions

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_TOLERANCE_MM",
    "METHODS",
    "PARTS",
    "SMOOTHING_ITERATIONS",
    "TS_TASKS",
    "CohortError",
    "CohortView",
    "ExpertSize",
    "ExportBundle",
    "ForwardSetup",
    "InferenceOptions",
    "LabelMeshes",
    "LayerHeatmap",
    "OriginalCache",
    "SegmentationUpdate",
    "SweepBackend",
    "SweepError",
    "SweepPoint",
    "SweepResult",
    "extract_label_meshes",
    "open_results",
    "openvino_available",
    "report_content",
    "run_segmentation",
    "run_sweep",
    "safe_stem",
    "ts_tasks_in",
    "with_total",
    "write_bundle",
    "write_report",
]
