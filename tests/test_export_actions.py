"""Export actions write in the background and report the files written, or one line on why not."""

from __future__ import annotations

import pytest
from test_deliverables import bundle, save_models

pytestmark = pytest.mark.gui


@pytest.fixture()
def actions(qtbot):
    from pyqtgraph.Qt import QtWidgets

    from tuckerscope.app.export_actions import ExportActions

    window = QtWidgets.QWidget()
    qtbot.addWidget(window)
    return ExportActions(window, lambda: bundle(save_models), ask=False)


def test_export_writes_the_chosen_parts(actions, qtbot, tmp_path):
    with qtbot.waitSignal(actions.exported, timeout=30_000) as done:
        actions.export(bundle(save_models), tmp_path, ["segmentation", "models"])
    names = sorted(p.name for p in done.args[0])
    assert "my_ct_compressed.nii.gz" in names and "my_ct_compressed_models" in names
    assert not any(name.endswith(".html") for name in names)
    assert all(action.isEnabled() for action in actions.actions)


def test_save_report(actions, qtbot, tmp_path):
    with qtbot.waitSignal(actions.exported, timeout=30_000):
        actions.save_report(bundle(), tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_failure_is_one_line_and_leaves_nothing(actions, qtbot, tmp_path):
    with qtbot.waitSignal(actions.failed, timeout=30_000) as failed:
        actions.export(bundle(), tmp_path / "missing", ["tables"])
    assert "does not exist" in failed.args[0] and "\n" not in failed.args[0]
    assert list(tmp_path.iterdir()) == []


def test_nothing_to_export_yet(qtbot):
    from pyqtgraph.Qt import QtWidgets

    from tuckerscope.app.export_actions import ExportActions

    window = QtWidgets.QWidget()
    qtbot.addWidget(window)
    empty = ExportActions(window, lambda: None, ask=False)
    with qtbot.waitSignal(empty.failed, timeout=1000) as failed:
        empty.export_action.trigger()
    assert "open a CT" in failed.args[0]


def test_available_parts_follow_the_bundle():
    from tuckerscope.app.export_actions import available_parts

    full = bundle(save_models)
    assert available_parts(full) == ["segmentation", "tables", "models", "report"]
    full.original = full.compressed = None
    full.save_models = None
    assert available_parts(full) == ["tables", "report"]
