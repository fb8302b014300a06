"""Write a distilled student as a model folder that `--model OUT` loads everywhere, never half-written.

The folder is compressed_model.save_compressed's (plans, dataset.json, a weights_only-safe checkpoint whose
manifest names every TuckerConv's ranks; a pruned student is a plain network with zeroed channels, and the
manifest names the Tucker ranks its parameter count was matched to), with how the ranks were chosen ('df' or
'target', and 'setting' in words) and the distillation summary (under 'distillation') in the manifest. It is
written beside OUT first and moved into place when complete, so a failed, cancelled or killed run leaves no
partial folder under OUT.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tuckerscope.core.distillation.distiller import DistilResult
from tuckerscope.core.models.compressed_model import MANIFEST_NAME, CompressedModelError, save_compressed
from tuckerscope.core.models.model_folder import LoadedExpert


def save_distilled(expert: LoadedExpert, result: DistilResult, out_dir: Path) -> Path:
    """Save ``result``'s student under ``out_dir`` (replacing an earlier TuckerScope output); returns the folder."""
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    student = result.student
    extra: dict[str, object] = {
        "df": student.df,
        "target": student.target,
        "setting": student.setting,
        "compression_method": student.method,
        "pruning_fraction": student.pruning_fraction,
        "distillation": result.summary(),
    }
    if student.method == "prune":  # no TuckerConvs name the ranks: record the Tucker network it was matched to
        extra["matched_tucker_ranks"] = {name: list(pair) for name, pair in student.ranks.items()}
    try:
        staged = save_compressed(expert, result.network, staging, extra)
        target = out_dir / staged.relative_to(staging)
        if target.exists():
            if not (target / MANIFEST_NAME).is_file():
                raise CompressedModelError(
                    f"{target} exists and is not a TuckerScope output: choose another -o or move it away"
                )
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    except OSError as exc:
        raise CompressedModelError(
            f"cannot write the distilled model to {out_dir} ({exc.strerror})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
