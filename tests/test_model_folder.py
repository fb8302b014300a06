"""Model folders: networks come from the plans, checkpoints load as data only, bad folders say what is wrong."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from tiny_model import tiny_dataset_json, tiny_plans, write_tiny_model
from tuckerscope.core.models.model_folder import (
    ModelFolderError,
    build_network,
    expert_name_from_folder,
    find_result_folders,
    load_expert,
    spec_from_folder,
)


class _RunsCodeWhenUnpickled:
    """Unpickling this calls Path.touch(marker): proof that a loader executed the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tiny_model_loads_in_eval_mode(tmp_path):
    expert = load_expert(spec_from_folder(write_tiny_model(tmp_path)))
    assert not expert.network.training
    assert expert.class_names == {1: "liver", 2: "spleen"}
    assert expert.patch_size == (32, 32, 32)
    logits = expert.network(torch.zeros(1, 1, 32, 32, 32))
    assert logits.shape == (1, 3, 32, 32, 32)


def test_old_plans_format_of_ts_builds(ts_plans_dir):
    folder = next(f for f in find_result_folders(ts_plans_dir) if "Dataset297" in str(f))
    network = build_network(
        json.loads((folder / "plans.json").read_text()), json.loads((folder / "dataset.json").read_text())
    )
    assert network.decoder.seg_layers[-1].out_channels == 118


def test_ts_folder_names_become_expert_names(ts_plans_dir):
    names = [expert_name_from_folder(f) for f in find_result_folders(ts_plans_dir)]
    assert names == ["organs", "vertebrae", "cardiac", "muscles", "ribs", "total_3mm"]


def test_missing_plans_is_named(tmp_path):
    folder = write_tiny_model(tmp_path)
    (folder / "plans.json").unlink()
    with pytest.raises(ModelFolderError, match="plans.json is missing"):
        spec_from_folder(folder)


def test_missing_checkpoint_says_how_to_get_it(tmp_path):
    folder = write_tiny_model(tmp_path)
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelFolderError, match="totalseg_download_weights"):
        spec_from_folder(folder)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    folder = write_tiny_model(tmp_path)
    (folder / "plans.json").write_text(json.dumps(tiny_plans(features=(8, 16, 24))))
    with pytest.raises(ModelFolderError, match="does not match plans.json"):
        load_expert(spec_from_folder(folder))


def test_labels_that_disagree_with_output_channels_are_refused(tmp_path):
    folder = write_tiny_model(tmp_path)
    (folder / "dataset.json").write_text(json.dumps(tiny_dataset_json({"background": 0, "liver": 1})))
    with pytest.raises(ModelFolderError, match="lists 2 labels .* outputs 3 channels"):
        load_expert(spec_from_folder(folder))


def test_truncated_checkpoint_is_reported_as_damaged(tmp_path):
    folder = write_tiny_model(tmp_path)
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    with pytest.raises(ModelFolderError, match="damaged"):
        load_expert(spec_from_folder(folder))


@pytest.mark.parametrize("pickler", ["torch.save", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, pickler):
    folder = write_tiny_model(tmp_path)
    marker = tmp_path / "code-ran"
    hostile = {"network_weights": {}, "payload": _RunsCodeWhenUnpickled(marker)}
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    if pickler == "torch.save":
        torch.save(hostile, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(hostile))
    with pytest.raises(ModelFolderError, match="refused"):
        load_expert(spec_from_folder(folder))
    assert not marker.exists()


def test_plans_cannot_name_arbitrary_callables(tmp_path):
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    with pytest.raises(ModelFolderError, match="not a known nnU-Net network"):
        build_network(plans, tiny_dataset_json())
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "builtins.exec"
    with pytest.raises(ModelFolderError, match="not a torch.nn layer"):
        build_network(plans, tiny_dataset_json())


def test_compiled_checkpoint_prefix_is_accepted(tmp_path):
    folder = write_tiny_model(tmp_path)
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    checkpoint["network_weights"] = {f"_orig_mod.{k}": v for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, checkpoint_path)
    assert load_expert(spec_from_folder(folder)).network is not None
