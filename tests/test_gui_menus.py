"""The File menu as a new user meets it: Recent CTs / Recent models open and reopen (issue 11, defect 1), and a
TotalSegmentator home with several tasks asks which one to open, from the menu or the command line (defect 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from pyqtgraph.Qt import QtWidgets  # noqa: E402
from test_gui_window import make_settings  # noqa: E402

from tuckerscope.app import opening  # noqa: E402
from tuckerscope.app.launch_args import parse_launch_args  # noqa: E402
from tuckerscope.app.main_window import MainWindow  # noqa: E402
from tuckerscope.core.runtime.errors import UserError  # noqa: E402


@pytest.fixture
def window(qtbot, tmp_path):
    window = MainWindow(make_settings(tmp_path))
    qtbot.addWidget(window)
    yield window
    window.close()


def file_submenu(window: MainWindow, title: str) -> QtWidgets.QMenu:
    file_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&File")
    return next(a.menu() for a in file_menu.actions() if a.menu() is not None and a.text() == title)


def test_recent_menus_list_their_items_and_reopen_them(qtbot, window, monkeypatch):
    opened = []
    monkeypatch.setattr(window.opener, "open_ct", lambda path: opened.append(("ct", path)))
    monkeypatch.setattr(window.opener, "open_models", lambda source: opened.append(("models", source)))
    recent_cts, recent_models = file_submenu(window, "Recent CTs"), file_submenu(window, "Recent models")
    recent_cts.aboutToShow.emit()  # TypeError before: _fill_recent got two of its three arguments
    assert [a.text() for a in recent_cts.actions()] == ["(none)"] and not recent_cts.actions()[0].isEnabled()
    window.recent_cts.add("/data/a.nii.gz")
    window.recent_models.add("total@/homes/ts")
    recent_cts.aboutToShow.emit()
    recent_models.aboutToShow.emit()
    assert [a.text() for a in recent_cts.actions()] == ["/data/a.nii.gz"]
    recent_cts.actions()[0].trigger()
    recent_models.actions()[0].trigger()
    assert opened == [("ct", "/data/a.nii.gz"), ("models", "total@/homes/ts")]


def fake_ts_home(root: Path, dataset_ids: tuple[int, ...]) -> Path:
    """Just the folder layout TS homes have (plans.json + dataset.json per expert): enough to list tasks."""
    for dataset in dataset_ids:
        folder = root / "nnunet" / "results" / f"Dataset{dataset}_x" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        folder.mkdir(parents=True)
        (folder / "plans.json").write_text("{}")
        (folder / "dataset.json").write_text("{}")
    return root


def record_loads(monkeypatch) -> list[str]:
    """The names the window asks core to load; each load then fails cleanly (no real weights here)."""
    names: list[str] = []

    def load_models(name, progress, cancel):
        names.append(name)
        raise UserError(f"not loading {name} in this test")

    monkeypatch.setattr(opening, "load_models", load_models)
    return names


def test_a_home_with_several_tasks_asks_which_to_open(qtbot, window, tmp_path, monkeypatch):
    home = fake_ts_home(tmp_path / "home", (291, 292, 293, 294, 295, 297))
    asked = []

    def choose(parent, folder, tasks):
        asked.append(tasks)
        return "total_fast"

    monkeypatch.setattr(opening, "choose_ts_task", choose)
    names = record_loads(monkeypatch)
    # `tuckerscope CT --model HOME`: the command line's model source goes the same way as File > Open
    window.open_request(parse_launch_args([str(tmp_path / "ct.nii.gz"), "--model", str(home)]))
    qtbot.waitUntil(lambda: bool(names), timeout=30_000)
    assert asked == [["total", "total_fast"]]
    assert names == [f"total_fast@{home}"]


def test_a_home_with_one_task_opens_it_and_a_cancelled_choice_opens_nothing(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setattr(opening, "choose_ts_task", lambda parent, folder, tasks: None)
    names = record_loads(monkeypatch)
    several = fake_ts_home(tmp_path / "several", (291, 297))
    window.open_models(str(several))
    single = fake_ts_home(tmp_path / "single", (291, 292, 293, 294, 295))
    window.open_models(str(single))
    qtbot.waitUntil(lambda: bool(names), timeout=30_000)
    qtbot.waitUntil(window.is_idle, timeout=30_000)
    assert names == [f"total@{single}"]



def run_action(window: MainWindow, label: str):
    run_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Run")
    run_menu.aboutToShow.emit()
    return next(a for a in run_menu.actions() if a.text() == label)


def test_the_run_menu_switches_every_network_to_openvino_and_is_remembered(qtbot, tmp_path, private_cache_folder):
    """Original and compressed sides are segmented again with OpenVINO, the views say so, the choice survives a
    restart; back on the reference the titles drop the note."""
    pytest.importorskip("openvino")
    from test_gui_window import small_ct, tiny_models, wait_idle

    ct, models = small_ct(tmp_path / "ct.nii.gz"), tiny_models(tmp_path / "models")
    window = MainWindow(make_settings(tmp_path))
    qtbot.addWidget(window)
    window.show()
    window.open_request(parse_launch_args([str(ct), "--model", str(models)]))
    wait_idle(qtbot, window)
    session = window.session
    assert (session.inference.runtime, session.inference.precision) == ("torch", "fp32")
    assert run_action(window, "PyTorch fp32 (reference)").isChecked()
    assert window.slice_view.original_canvas.title_label.text() == "Original"
    assert not list(private_cache_folder.rglob("*.xml"))

    run_action(window, "OpenVINO fp32").trigger()
    assert not session.complete_originals  # cleared at once: both sides are redone
    wait_idle(qtbot, window)
    assert (session.inference.runtime, session.inference.precision) == ("openvino", "fp32")
    assert session.complete_originals == set(session.experts)
    assert list(private_cache_folder.rglob("*.xml"))  # the networks ran through OpenVINO exports
    assert window.slice_view.original_canvas.title_label.text() == "Original · OpenVINO fp32"
    assert "OpenVINO fp32" in window.slice_view.compressed_canvas.title_label.text()
    assert run_action(window, "OpenVINO fp32").isChecked()
    assert not run_action(window, "PyTorch fp32 (reference)").isChecked()
    window.close()

    again = MainWindow(make_settings(tmp_path))
    qtbot.addWidget(again)
    assert again.session.inference.runtime == "openvino"
    assert again.slice_view.original_canvas.title_label.text() == "Original · OpenVINO fp32"
    run_action(again, "PyTorch fp32 (reference)").trigger()
    assert (again.session.inference.runtime, again.session.inference.precision) == ("torch", "fp32")
    assert again.slice_view.original_canvas.title_label.text() == "Original"
    again.close()
