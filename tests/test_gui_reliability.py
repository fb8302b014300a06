"""The window under abuse: every bad file and model of the corpus ends in a dialog with the state left intact;
re-oriented CTs display and segment like the original; a storm of random DF changes across experts ends with the
display matching the sliders, without a crash or a memory leak.

Reuses the window helpers and fixture of tests/test_gui_window.py (tiny two-expert models, a small CT).
"""

from __future__ import annotations

import gc
import re
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from bad_inputs import (  # noqa: E402
    CASES,
    CASES_BY_NAME,
    CODE_RAN_MARKER,
    build_case,
    write_reference_ct,
)
from pyqtgraph.Qt import QtWidgets  # noqa: E402
from test_gui_window import IDLE_TIMEOUT_MS, make_settings, small_ct, tiny_models, wait_idle  # noqa: E402

from tuckerscope.app.main_window import MainWindow  # noqa: E402
from tuckerscope.app.slice_views import PLANES, plane_image  # noqa: E402
from tuckerscope.core.runtime.memory import process_memory_kb  # noqa: E402
from tuckerscope.core.segmentation.segmenter import Segmenter  # noqa: E402

REFUSED = [case for case in CASES if case.refused]
STORM_RSS_LIMIT_MB = 300


@pytest.fixture
def window(qtbot, tmp_path):
    """test_gui_window's two tiny experts on its small CT, settled."""
    window = MainWindow(make_settings(tmp_path))
    qtbot.addWidget(window)
    window.resize(1600, 950)
    window.show()
    window.open_ct(small_ct(tmp_path / "ct.nii.gz"))
    window.open_models(str(tiny_models(tmp_path / "models")))
    wait_idle(qtbot, window)
    yield window
    window.close()


def vm_rss_mb() -> float:
    return process_memory_kb("VmRSS") / 1024


def state_of(window: MainWindow) -> tuple[object, ...]:
    """What a failed open must not touch: the CT, the experts, the segmentations and what the views hold."""
    session = window.session
    return (
        session.volume,
        session.segmenter,
        session.experts,
        session.display_original,
        session.display_compressed,
        window.slice_view._ct,
        window.slice_view._original,
        window.slice_view._compressed,
    )


def test_every_refused_input_shows_a_dialog_and_keeps_the_state(qtbot, window, tmp_path):
    before = state_of(window)
    title_before = window.windowTitle()
    for case in REFUSED:
        path = build_case(case, tmp_path / "corpus")
        window.error_box = None
        if case.target == "volume":
            window.open_ct(path)
        else:
            window.open_models(str(path))
        qtbot.waitUntil(
            lambda: window.error_box is not None and window.error_box.isVisible(), timeout=IDLE_TIMEOUT_MS
        )
        message = window.error_box.informativeText()
        assert re.search(case.expected.pattern, message), (case.name, message)
        assert "Traceback" not in message and window.error_box.detailedText() == "", case.name
        window.error_box.close()
        qtbot.waitUntil(window.is_idle, timeout=IDLE_TIMEOUT_MS)
        changed = [i for i, (a, b) in enumerate(zip(state_of(window), before, strict=True)) if a is not b]
        assert not changed, f"{case.name} changed state items {changed}"
        assert window.windowTitle() == title_before
        if case.target == "model":
            assert not (tmp_path / "corpus" / case.name / CODE_RAN_MARKER).exists(), case.name
    # still usable: a DF change recompresses and the display follows
    row = window.experts_panel.rows["tinyorgans"]
    row.slider.setValue(0.4)
    wait_idle(qtbot, window)
    expert = window.session.experts["tinyorgans"]
    assert expert.df == pytest.approx(0.4)
    assert window.session.compressed_keys["tinyorgans"] == expert.rank_key()
    assert window.slice_view._compressed is window.session.display_compressed


def test_accepted_inputs_open_aligned_and_warn(qtbot, window, tmp_path):
    """Re-oriented copies of a CT display and segment exactly like it; an MR volume opens with a warning."""
    window.open_ct(write_reference_ct(tmp_path))
    qtbot.waitUntil(lambda: window.session.volume.name == "reference_ct.nii.gz", timeout=IDLE_TIMEOUT_MS)
    wait_idle(qtbot, window)
    reference_ct = window.session.volume.display_ct
    reference_labels = window.session.display_original
    assert len(np.unique(reference_labels)) >= 2
    for name in ("lps_flip", "permuted_axes"):
        path = build_case(CASES_BY_NAME[name], tmp_path / "corpus")
        window.open_ct(path)
        qtbot.waitUntil(lambda p=path: window.session.volume.name == p.name, timeout=IDLE_TIMEOUT_MS)
        wait_idle(qtbot, window)
        np.testing.assert_array_equal(window.session.volume.display_ct, reference_ct, err_msg=name)
        np.testing.assert_array_equal(window.session.display_original, reference_labels, err_msg=name)
    window.warning_box = None
    path = build_case(CASES_BY_NAME["mr_volume"], tmp_path / "corpus")
    window.open_ct(path)
    qtbot.waitUntil(lambda: window.warning_box is not None and window.warning_box.isVisible(), timeout=60_000)
    assert "CT model" in window.warning_box.text()
    assert window.session.volume.name == path.name
    window.warning_box.close()
    wait_idle(qtbot, window)


# ----- slider storm -----------------------------------------------------------------------------------------------


def slider_storm(qtbot, window: MainWindow, changes: int, seed: int) -> dict[str, float]:
    """Random DF changes across the experts, mostly back to back, sometimes with a pause long enough for the
    debounce to fire and jobs to start (and be superseded). Returns the final slider values."""
    rng = np.random.default_rng(seed)
    rows = window.experts_panel.rows
    names = sorted(rows)
    for step in range(changes):
        name = names[int(rng.integers(len(names)))]
        rows[name].slider.setValue(round(float(rng.uniform(0.05, 1.0)), 2))
        if step % 25 == 24:
            qtbot.wait(int(rng.integers(150, 400)))  # past the 200 ms debounce: a segmentation starts
        else:
            QtWidgets.QApplication.processEvents()
    return {name: rows[name].slider.value() for name in names}


def check_display_matches(window: MainWindow, final: dict[str, float]) -> None:
    session = window.session
    for name, value in final.items():
        expert = session.experts[name]
        assert expert.df == pytest.approx(value), name
        if expert.is_full_rank():
            continue
        assert session.compressed_keys[name] == expert.rank_key(), name
        assert name in session.complete_compressed, name
        # the labels on screen are those of a network compressed at the final ranks, computed afresh
        fresh = Segmenter(session.volume.data, session.volume.affine).segment(
            expert.loaded, network=expert.engine.compress(expert.ranks())
        )
        np.testing.assert_array_equal(session.compressed[name], fresh, err_msg=name)
    view = window.slice_view
    assert view._compressed is session.display_compressed
    expected = view._overlay(session.display_compressed)
    drawn = view.compressed_canvas.overlay_item.image
    np.testing.assert_array_equal(drawn, expected)
    assert (
        plane_image(session.display_compressed, PLANES[view.plane], view.slice_index).shape == drawn.shape[:2]
    )
    title = view._compressed_title
    assert "updating" not in title
    for value in final.values():
        assert f"{value:.2f}" in title, title


def run_storm_test(qtbot, window: MainWindow, changes: int) -> None:
    slider_storm(qtbot, window, 20, seed=1)  # warm-up: caches, pools and lazy imports settle first
    wait_idle(qtbot, window)
    gc.collect()
    rss_before = vm_rss_mb()
    started = time.perf_counter()
    final = slider_storm(qtbot, window, changes, seed=2)
    storm_seconds = time.perf_counter() - started
    wait_idle(qtbot, window)
    settled_seconds = time.perf_counter() - started
    check_display_matches(window, final)
    gc.collect()
    growth = vm_rss_mb() - rss_before
    print(
        f"\nslider storm: {changes} changes in {storm_seconds:.1f} s, settled after {settled_seconds:.1f} s; "
        f"RSS {rss_before:.0f} MB -> {rss_before + growth:.0f} MB (growth {growth:+.0f} MB); final DFs {final}"
    )
    assert growth <= STORM_RSS_LIMIT_MB, f"RSS grew by {growth:.0f} MB"


def test_slider_storm_150_changes(qtbot, window):
    run_storm_test(qtbot, window, 150)


@pytest.mark.slow
def test_slider_storm_1000_changes(qtbot, window):
    run_storm_test(qtbot, window, 1000)
