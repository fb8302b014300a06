"""The window's session turns into the same export bundle and sweep the CLI produces."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest

from tiny_model import write_tiny_model
from tuckerscope.core.evaluation.sweep import run_sweep
from tuckerscope.core.models.model_sources import folder_source
from tuckerscope.core.outputs.deliverables import write_bundle
from tuckerscope.core.segmentation.live_segmentation import run_segmentation
from tuckerscope.core.session.export import session_bundle, session_sweep_backend
from tuckerscope.core.session.loading import load_expert_models
from tuckerscope.core.session.session import CaseVolume, Session, SessionError


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (30, 28, 20)), indexing="ij")
    ct = np.where(x**2 + y**2 + z**2 < 0.8, 40.0, -1000.0).astype(np.float32)
    session = Session()
    session.set_volume(CaseVolume.from_array(ct, np.diag([3.0, 3.0, 3.0, 1.0]), "tiny ct.nii.gz"))
    source = folder_source(write_tiny_model(root / "models", seed=5).parent.parent)
    session.set_experts(load_expert_models(source), source.name, source)
    session.set_df("tiny", 0.3)
    idle = threading.Event()
    session.apply_segmentation(
        run_segmentation(session.plan_segmentation(), lambda f, m: None, idle, idle, print)
    )
    session.apply_agreement(session.plan_agreement()(idle))
    return session


def test_bundle_of_a_session(session, tmp_path):
    bundle = session_bundle(session)
    assert bundle.original is not None and bundle.compressed is not None
    assert bundle.counts[0]["params_compressed"] < bundle.counts[0]["params_original"]
    assert {s.name for s in bundle.styles} == {"liver", "spleen"}
    comparison = bundle.evaluation.compressed_vs_original
    assert len(comparison.scores) + len(comparison.excluded) == 2
    assert set(bundle.heatmaps) == {"tiny"} and bundle.heatmaps["tiny"]
    written = write_bundle(bundle, tmp_path, ("segmentation", "tables", "report", "models"))
    names = {p.name for p in written}
    assert {"tiny_ct_original.nii.gz", "tiny_ct_compressed.nii.gz", "tiny_ct_report.html"} <= names
    checkpoints = list((tmp_path / "tiny_ct_compressed_models").rglob("checkpoint_final.pth"))
    assert len(checkpoints) == 1
    saved = np.asanyarray(nib.load(tmp_path / "tiny_ct_compressed.nii.gz").dataobj)
    np.testing.assert_array_equal(saved, bundle.compressed)


def test_sweep_of_a_session_reuses_its_originals(session):
    backend, experts = session_sweep_backend(session)
    runs = []
    original_segment = backend.segmenter.segment

    def counting(expert, network=None, **kwargs):
        runs.append(network is None)
        return original_segment(expert, network, **kwargs)

    backend.segmenter.segment = counting
    result = run_sweep(backend, experts, grid=(1.0, 0.2))
    assert runs == [False]  # DF 0.2 runs a compressed network; DF 1.0 is the original, not re-run
    assert [p.df for p in result.curve("tiny")] == [1.0, 0.2]
    assert result.curve("tiny")[0].mean_dice == pytest.approx(1.0)  # DF 1.0 reproduces the original
    assert result.curve("tiny")[1].cost.params < result.originals["tiny"].params


def test_an_empty_session_has_nothing_to_export():
    with pytest.raises(SessionError, match="open a CT"):
        session_bundle(Session())
