"""Model discovery: TS homes (env vars, partial installs, usage statistics off), nnU-Net folders in both plans
formats, the demo, and TS's rule for merging experts into one label map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tiny_model import tiny_dataset_json, tiny_plans, write_tiny_model
from ts_home import build_random_ts_home, ts_results_folder
from tuckerscope.core.models.model_folder import load_expert
from tuckerscope.core.models.model_sources import (
    ModelSource,
    ModelSourceError,
    demo_source,
    disable_ts_usage_stats,
    folder_source,
    resolve_source,
    ts_results_candidates,
    ts_task_source,
)


@pytest.fixture(scope="module")
def fast_home(tmp_path_factory, ts_plans_dir) -> Path:
    """A TS home holding only 'total_fast' (Dataset297) with random weights."""
    return build_random_ts_home(tmp_path_factory.mktemp("ts") / "home", (297,), seed=1)


@pytest.fixture(autouse=True)
def no_ts_env(monkeypatch, tmp_path):
    """Keep the developer's real TS home and env vars out of these tests."""
    monkeypatch.delenv("TOTALSEG_HOME_DIR", raising=False)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def plans_only_home(dest: Path, task_ids: tuple[int, ...]) -> Path:
    """A TS home with plans and dataset.json but no checkpoints (a half-copied install)."""
    for task_id in task_ids:
        source = ts_results_folder(task_id)
        target = dest / "nnunet" / "results" / source.parent.name / source.name
        target.mkdir(parents=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(source / name, target / name)
    return dest


def test_total_fast_is_found_in_an_explicit_home(fast_home):
    source = ts_task_source("total_fast", fast_home)
    assert [spec.name for spec in source.experts] == ["total_3mm"]
    assert source.experts[0].checkpoint.name == "checkpoint_final.pth"
    assert len(source.class_names) == 117
    assert source.class_names[1] == "spleen"
    assert source.ts_home == fast_home


def test_totalseg_home_dir_is_honoured(fast_home, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(fast_home))
    assert resolve_source(task="total_fast").ts_home == fast_home


def test_totalseg_weights_path_is_honoured(fast_home, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(fast_home / "nnunet" / "results"))
    source = resolve_source(task="total_fast")
    assert source.experts[0].folder.is_relative_to(fast_home / "nnunet" / "results")


def test_default_home_is_dot_totalsegmentator(fast_home, tmp_path):
    home = tmp_path / "user" / ".totalsegmentator"
    shutil.copytree(fast_home, home)
    assert ts_task_source("total_fast").ts_home == home
    assert ts_results_candidates()[-1] == home / "nnunet" / "results"


def test_missing_task_names_what_is_missing_and_how_to_get_it(fast_home):
    with pytest.raises(ModelSourceError) as error:
        ts_task_source("total", fast_home)
    message = str(error.value)
    assert "Dataset291" in message and "totalseg_download_weights -t total" in message
    assert "TOTALSEG_HOME_DIR" in message


def test_no_home_at_all(tmp_path):
    with pytest.raises(ModelSourceError, match="no TotalSegmentator weights for task 'total_fast'"):
        ts_task_source("total_fast")


def test_partial_install_names_the_missing_checkpoint_and_experts(tmp_path):
    home = plans_only_home(tmp_path / "home", (291, 292))
    with pytest.raises(ModelSourceError) as error:
        ts_task_source("total", home)
    message = str(error.value)
    assert "incomplete" in message
    assert "checkpoint_final.pth" in message  # 291 and 292 lack weights
    assert "Dataset293 (cardiac) missing" in message
    assert "Dataset295 (ribs) missing" in message


def test_usage_statistics_are_switched_off(fast_home):
    (fast_home / "config.json").write_text(json.dumps({"totalseg_id": "x", "send_usage_stats": True}))
    ts_task_source("total_fast", fast_home)
    config = json.loads((fast_home / "config.json").read_text())
    assert config["send_usage_stats"] is False
    assert config["totalseg_id"] == "x"


def test_usage_statistics_config_is_created(tmp_path):
    assert disable_ts_usage_stats(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["send_usage_stats"] is False


def test_ts_home_with_several_tasks_names_them(tmp_path, example_ct, capsys):
    home = plans_only_home(tmp_path / "home", (291, 297))
    message = "holds TotalSegmentator tasks total, total_fast: use --task total or --task total_fast"
    with pytest.raises(ModelSourceError, match=message):
        folder_source(home)
    from tuckerscope.core.cli.main import main

    assert main(["eval", "-i", str(example_ct), "--model", str(home), "--df", "0.3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_ts_home_with_one_task_opens_it(tmp_path):
    """The issue's case: a home holding only the five 'total' experts is the 'total' task, as TS runs it."""
    home = plans_only_home(tmp_path / "home", (291, 292, 293, 294, 295))
    for folder in (home / "nnunet" / "results").glob("*/*"):
        (folder / "fold_0").mkdir()
        (folder / "fold_0" / "checkpoint_final.pth").touch()
    for path in (home, home / "nnunet" / "results"):
        source = resolve_source(model=path)
        assert source.name == "total" and source.ts_home == home
        assert [spec.name for spec in source.experts] == ["organs", "vertebrae", "cardiac", "muscles", "ribs"]
        assert len(source.class_names) == 117


def test_new_plans_format_folder(tmp_path):
    source = folder_source(write_tiny_model(tmp_path))
    assert source.class_names == {1: "liver", 2: "spleen"}
    expert = source.load()[0]
    assert expert.network.decoder.seg_layers[-1].out_channels == 3


def old_format_plans() -> dict:
    """tiny_plans() rewritten with the pre-2.3 keys (UNet_class_name ...), as TS's own plans are."""
    plans = tiny_plans()
    config = plans["configurations"]["3d_fullres"]
    arch = config.pop("architecture")["arch_kwargs"]
    config.update(
        UNet_class_name="PlainConvUNet",
        UNet_base_num_features=arch["features_per_stage"][0],
        n_conv_per_stage_encoder=arch["n_conv_per_stage"],
        n_conv_per_stage_decoder=arch["n_conv_per_stage_decoder"],
        num_pool_per_axis=[len(arch["strides"]) - 1] * 3,
        pool_op_kernel_sizes=arch["strides"],
        conv_kernel_sizes=arch["kernel_sizes"],
        unet_max_num_features=arch["features_per_stage"][-1],
    )
    return plans


def test_old_plans_format_folder(tmp_path):
    folder = write_tiny_model(tmp_path, plans=old_format_plans())
    assert (
        "UNet_class_name" in json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    )
    expert = folder_source(folder).load()[0]
    assert expert.network.decoder.seg_layers[-1].out_channels == 3


def test_checkpoint_best_is_used_when_final_is_missing(tmp_path):
    folder = write_tiny_model(tmp_path)
    (folder / "fold_0" / "checkpoint_final.pth").rename(folder / "fold_0" / "checkpoint_best.pth")
    assert folder_source(folder).experts[0].checkpoint.name == "checkpoint_best.pth"


def test_folders_merge_by_class_name(tmp_path):
    write_tiny_model(tmp_path / "a")
    second = tiny_dataset_json({"background": 0, "spleen": 1, "aorta": 2})
    write_tiny_model(tmp_path / "b", dataset_json=second)
    source = folder_source(tmp_path)
    assert source.class_names == {1: "liver", 2: "spleen", 3: "aorta"}
    assert source.label_maps == ({1: 1, 2: 2}, {1: 2, 2: 3})


def test_merge_follows_ts_later_experts_overwrite_non_zero():
    source = ModelSource(
        "two",
        experts=(None, None),  # type: ignore[arg-type]
        class_names={1: "liver", 2: "spleen", 3: "aorta"},
        label_maps=({1: 1, 2: 2}, {1: 3}),
    )
    first = np.array([[0, 1, 2, 2]], dtype=np.uint8)
    second = np.array([[1, 0, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(source.merge([first, second]), [[3, 1, 3, 2]])


def test_total_label_maps_come_from_ts_part_maps(tmp_path):
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts

    home = tmp_path / "home"
    for task_id in (291, 292, 293, 294, 295):
        plans_only_home(home, (task_id,))
        folder = next((home / "nnunet" / "results").glob(f"Dataset{task_id}_*/*__*"))
        (folder / "fold_0").mkdir()
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not loaded by discovery")
    source = ts_task_source("total", home)
    assert [s.name for s in source.experts] == ["organs", "vertebrae", "cardiac", "muscles", "ribs"]
    ribs = class_map_5_parts["class_map_part_ribs"]
    total_ids = {name: label for label, name in class_map["total"].items()}
    assert source.label_maps[4] == {k: total_ids[name] for k, name in ribs.items()}
    assert sum(len(m) for m in source.label_maps) == 117


def test_demo_source(monkeypatch, tmp_path):
    import tuckerscope.resources as resources

    monkeypatch.setattr(resources, "DEMO_MODELS_DIR", tmp_path / "none")
    with pytest.raises(ModelSourceError, match="no demo models"):
        demo_source()
    write_tiny_model(tmp_path / "demo")
    monkeypatch.setattr(resources, "DEMO_MODELS_DIR", tmp_path / "demo")
    assert demo_source().class_names == {1: "liver", 2: "spleen"}


def test_shipped_demo_models_load_if_present():
    from tuckerscope.core.models.model_folder import find_result_folders
    from tuckerscope.resources import DEMO_MODELS_DIR

    if not find_result_folders(DEMO_MODELS_DIR):
        pytest.skip("no demo models shipped yet")
    source = demo_source()
    experts = [load_expert(spec) for spec in source.experts]
    assert len(experts) == len(source.label_maps) >= 1
    assert len(source.class_names) >= 2


def test_unknown_task():
    with pytest.raises(ModelSourceError, match="unknown task"):
        resolve_source(task="lung_vessels")
