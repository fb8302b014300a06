"""The window's budget controls (issue 14), File > Open cohort results (15), Help > About (16) and the on-disk
originals cache's menu action (12), driven as a user would; screenshots when TUCKERSCOPE_SCREENSHOT_DIR is set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from pyqtgraph.Qt import QtWidgets  # noqa: E402
from test_gui_window import IDLE_TIMEOUT_MS, demo_window, tiny_window, wait_idle  # noqa: E402, F401

from tuckerscope import __version__  # noqa: E402
from tuckerscope.app.cohort_view import CohortResultsDialog  # noqa: E402
from tuckerscope.app.screenshot import save_window  # noqa: E402
from tuckerscope.core.cohorts.results import SCORE_COLUMNS  # noqa: E402
from tuckerscope.core.session.session import ALL_EXPERTS  # noqa: E402


def menu(window, title: str) -> QtWidgets.QMenu:
    return next(a.menu() for a in window.menuBar().actions() if a.text() == title)


def action(menu_: QtWidgets.QMenu, starts_with: str) -> QtWidgets.QAction:
    return next(a for a in menu_.actions() if a.text().startswith(starts_with))


def ask_target(qtbot, window, control, kind_label: str, value: str) -> None:
    control.kind_combo.setCurrentIndex(control.kind_combo.findText(kind_label))
    control.kind_combo.activated.emit(control.kind_combo.currentIndex())
    control.value_edit.setText(value)
    control.apply_button.click()
    wait_idle(qtbot, window)


def test_a_target_per_expert_then_for_all_then_back_to_the_slider(qtbot, tiny_window):  # noqa: F811
    window, session = tiny_window, tiny_window.session
    name = next(iter(session.experts))
    row = window.experts_panel.rows[name]
    ask_target(qtbot, window, row.target, "× params", "3")
    expert = session.experts[name]
    assert expert.target == "params=3x" and name in session.budgets
    assert "3x asked" in row.target.status.text() and "achieved" in row.target.status.text()
    assert window.heatmap_panel._ranks[name] == expert.ranks()  # the markers show the budgeted choice
    assert "params=3x" in window.slice_view._compressed_title
    assert session.sizes[name].params_ratio == pytest.approx(session.budgets[name].result.achieved)

    ask_target(qtbot, window, window.experts_panel.all_target, "× params", "2x")
    assert {e.target_scope for e in session.experts.values()} == {ALL_EXPERTS}
    assert "2x asked" in window.experts_panel.all_target.status.text()
    assert row.target.status.text().startswith("ranks from the all-experts")

    row.slider.setValue(0.5)  # the slider takes over again at once
    wait_idle(qtbot, window)
    assert expert.target is None and expert.df == pytest.approx(0.5)
    assert row.target.kind == "" and window.experts_panel.all_target.status.text() == ""

    ask_target(qtbot, window, row.target, "× params", "lots")  # refused: a dialog, nothing changes
    assert window.error_box is not None and "expected one of" in window.error_box.informativeText()
    assert expert.target is None and expert.df == pytest.approx(0.5)


def test_help_about_and_clearing_the_originals_cache(qtbot, tiny_window):  # noqa: F811
    window = tiny_window
    action(menu(window, "&Help"), "About").trigger()
    text = window.about_box.text() + "\n" + window.about_box.informativeText()
    assert __version__ in text and f"torch {torch.__version__}" in text and "devices: cpu" in text
    assert str(window.session.experts[next(iter(window.session.experts))].loaded.spec.folder) in text
    file_menu = menu(window, "&File")
    file_menu.aboutToShow.emit()
    clear = action(file_menu, "Clear cached originals")
    cache = window.session.original_cache
    assert cache.size_bytes() > 0 and "(0 B)" not in clear.text()  # the originals were stored as they finished
    clear.trigger()
    assert cache.size_bytes() == 0
    file_menu.aboutToShow.emit()
    assert clear.text() == "Clear cached originals (0 B)"


def write_results(folder: Path, cases: int = 9) -> Path:
    """A cohort results folder as the cohort engine writes it: scores.csv (no task files needed to read it)."""
    rng = np.random.default_rng(0)
    rows = []
    settings = [("original", 1.0, 1.0)] + [(m, df, 1 / df**1.6) for m in ("tucker", "prune") for df in (0.5, 0.2)]
    for case in range(cases):
        for expert, classes in (("organs", ("liver", "spleen")), ("vessels", ("aorta",))):
            for name in classes:
                for method, df, ratio in settings:
                    loss = 0.0 if method == "original" else (1 - df) * (0.05 if method == "tucker" else 0.25)
                    dice = float(np.clip(1 - loss - abs(rng.normal(0, 0.02)) * (method != "original"), 0, 1))
                    rows.append({
                        "case": f"case{case}", "expert": expert, "class": name, "label": 1, "method": method,
                        "setting": "original" if method == "original" else f"DF {df:g}", "df": df,
                        "target": "", "params": int(1e6 / ratio), "flops": int(1e9 / ratio), "params_ratio": ratio,
                        "flops_ratio": ratio, "dice": dice, "nsd": min(1.0, dice + 0.03), "status": "ok",
                        "dice_gt": np.nan, "nsd_gt": np.nan, "seconds": 1.0,
                    })  # fmt: skip
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(SCORE_COLUMNS)).to_csv(folder / "scores.csv", index=False)
    return folder


def test_open_cohort_results_shows_curves_and_the_per_class_tests(qtbot, tiny_window, tmp_path):  # noqa: F811
    window = tiny_window
    action(menu(window, "&File"), "Open cohort results")  # the menu entry exists
    from tuckerscope.app import menus

    opener = menus.FileDialogs(window, window.opener, window.recent_cts)
    opener.open_results(str(tmp_path / "nowhere"))  # not a results folder: a dialog, no traceback
    assert window.error_box is not None and "not a cohort results folder" in window.error_box.informativeText()
    opener.open_results(str(write_results(tmp_path / "results")))
    dialog = opener.results_dialog
    assert isinstance(dialog, CohortResultsDialog) and dialog.isVisible()
    qtbot.addWidget(dialog)
    experts = [dialog.expert_combo.itemText(i) for i in range(dialog.expert_combo.count())]
    assert experts == ["organs", "vessels", "all experts"]
    curves = [item for item in dialog.plot.getPlotItem().listDataItems() if item.opts["pen"] is not None]
    assert {curve.name() for curve in curves} == {"original", "tucker", "prune"}
    columns = [dialog.table.horizontalHeaderItem(i).text() for i in range(dialog.table.columnCount())]
    assert "p_holm" in columns and "differs" in columns
    assert dialog.table.rowCount() == 3 * 5  # 3 classes x (original + 4 settings)
    differs = [dialog.table.item(r, columns.index("differs")).text() for r in range(dialog.table.rowCount())]
    assert "yes" in differs  # pruning at DF 0.2 loses a fifth of the NSD on every case
    out = os.environ.get("TUCKERSCOPE_SCREENSHOT_DIR")
    if out:
        dialog.grab().save(str(Path(out) / "cohort_results.png"))


def test_demo_screenshot_with_a_target(qtbot, demo_window, tmp_path):  # noqa: F811
    window = demo_window
    ask_target(qtbot, window, window.experts_panel.all_target, "× params", "10")
    qtbot.waitUntil(lambda: window.agreement_panel.table.rowCount() > 0, timeout=IDLE_TIMEOUT_MS)
    session = window.session
    assert {e.target for e in session.experts.values()} == {"params=10x"}
    assert 10.0 <= session.budgets[ALL_EXPERTS].result.achieved <= 10.1
    out = Path(os.environ.get("TUCKERSCOPE_SCREENSHOT_DIR", tmp_path))
    QtWidgets.QApplication.processEvents()
    save_window(window, out / "demo_target_window.png")
