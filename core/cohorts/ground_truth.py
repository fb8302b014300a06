"""Ground truth for a cohort: the label table that names a label map's classes, and matching them by name.

A cohort's ground truth comes from other tools, numbered their own way, so its classes are matched to each
expert's by name. The names come from the label table beside the label map, in either format that
outputs/exports.py writes: ITK-SNAP (`NAME_itksnap_labels.txt`) or 3D Slicer (`NAME.ctbl`), or one table
for the whole folder (`labels_itksnap.txt` or `labels.ctbl`). Without a table the values are taken to be
the model's own merged numbering, as `eval --gt` takes them. Model classes that are unions of the phantom's
finer classes (the demo experts' 'vertebrae', 'ribs_left', 'skeletal_muscle') match the union.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tuckerscope.core.outputs.exports import sidecar_paths
from tuckerscope.core.runtime.errors import UserError

FOLDER_TABLES = ("labels_itksnap.txt", "labels.ctbl")


class LabelTableError(UserError):
    """A label table that cannot be read."""


def read_label_table(path: Path) -> dict[int, str]:
    """{value: name} from an ITK-SNAP label description or a Slicer colour table (background left out)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelTableError(f"cannot read label table {path}: {exc}") from None
    names: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            fields = shlex.split(line)
            value = int(fields[0])
            # ITK-SNAP: IDX R G B A VIS MSH "LABEL"; Slicer: index name R G B A
            name = fields[7] if '"' in line or len(fields) == 8 else fields[1]
        except (ValueError, IndexError):
            raise LabelTableError(f"{path}, line {number}: not an ITK-SNAP or Slicer label row: {line!r}") from None
        if value > 0:
            names[value] = name
    return names


def find_label_table(label_map: Path) -> Path | None:
    """The table beside `label_map`: its own sidecar first, else the folder's shared table."""
    itksnap, slicer = sidecar_paths(Path(label_map))
    candidates = [itksnap, slicer, *(Path(label_map).parent / n for n in FOLDER_TABLES)]
    return next((p for p in candidates if p.is_file()), None)


def normalised(name: str) -> str:
    """Names compare without case and with spaces, dashes and underscores alike (Slicer has no spaces)."""
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def match_by_name(
    truth: np.ndarray,
    truth_names: Mapping[int, str],
    expert_names: Mapping[int, str],
    groups: Mapping[str, Sequence[str]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The ground truth renumbered into an expert's own labels by class name, and the expert's classes that
    the ground truth does not name (they get no scores against it).

    `groups` names model classes that are unions of finer ground-truth classes ('vertebrae' of the
    phantom's 'vertebrae_L4' ... 'vertebrae_T8'); such a class gets the union.
    """
    covers: dict[str, int] = {}
    for value, name in expert_names.items():
        if int(value) > 0:
            for member in (name, *(groups or {}).get(name, ())):
                covers.setdefault(normalised(member), int(value))
    size = max(int(truth.max()) if truth.size else 0, *truth_names, 0) + 1
    table = np.zeros(size, dtype=np.int32)
    matched = set()
    for value, name in truth_names.items():
        target = covers.get(normalised(name))
        if target is not None:
            table[value] = target
            matched.add(target)
    missing = [n for v, n in sorted(expert_names.items()) if int(v) > 0 and int(v) not in matched]
    return table[truth], missing
