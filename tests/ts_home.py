"""A stand-in TotalSegmentator home: the real TS architectures (from ../shared/ts_plans beside the repository) with seeded random weights.

There is no internet here, so the real TS weights cannot be downloaded. A TS home built from the real plans has the
same networks, folder layout and checkpoint format, so every code path that loads, compresses, counts or times TS
models can run on it; only the segmentations are meaningless. Tests import it directly (pytest puts tests/ on
sys.path); scripts add tests/ to sys.path first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tuckerscope.core.models.model_folder import build_network, nnunet_checkpoint

TS_PLANS_DIR = Path(__file__).resolve().parents[2] / "shared" / "ts_plans"  # ../shared beside the repo
ALL_TASK_IDS = (291, 292, 293, 294, 295, 297)


def ts_results_folder(task_id: int, plans_dir: Path = TS_PLANS_DIR) -> Path:
    """The results folder (the one holding plans.json) of TS task ``task_id`` in the shared plans tree."""
    matches = sorted(plans_dir.glob(f"Dataset{task_id:03d}_*/*__*__*"))
    if not matches:
        raise FileNotFoundError(f"no plans for task {task_id} under {plans_dir}")
    return matches[0]


def build_random_ts_home(
    dest: Path, task_ids: tuple[int, ...] = ALL_TASK_IDS, seed: int = 0, plans_dir: Path = TS_PLANS_DIR
) -> Path:
    """Write a TS home at ``dest`` and return it.

    Layout, as TotalSegmentator expects it (TOTALSEG_HOME_DIR=dest):
    <dest>/config.json (usage statistics off)
    <dest>/nnunet/results/Dataset291_.../nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/{plans,dataset}.json
    <dest>/nnunet/results/Dataset291_.../.../fold_0/checkpoint_final.pth
    The checkpoint holds only tensors, strings, dicts and lists, so it loads with weights_only=True and also with
    nnunetv2's own ``nnUNetPredictor.initialize_from_trained_model_folder``. Weights are seeded per task id.
    """
    dest = Path(dest)
    results = dest / "nnunet" / "results"
    for task_id in task_ids:
        source = ts_results_folder(task_id, plans_dir)
        target = results / source.parent.name / source.name
        (target / "fold_0").mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(source / name, target / name)
        plans = json.loads((source / "plans.json").read_text())
        dataset_json = json.loads((source / "dataset.json").read_text())
        torch.manual_seed(seed * 1000 + task_id)
        network = build_network(plans, dataset_json, "3d_fullres")
        checkpoint = nnunet_checkpoint(
            network.state_dict(), plans, dataset_json, trainer_name=source.name.split("__")[0]
        )
        torch.save(checkpoint, target / "fold_0" / "checkpoint_final.pth")
    (dest / "config.json").write_text(
        json.dumps(
            {"totalseg_id": "totalseg_tuckerscope_test", "send_usage_stats": False, "prediction_counter": 0}
        )
    )
    return dest
