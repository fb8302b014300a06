"""Turn pip's resolution report of the pinned install into the bundle's requirements: CPU torch, no CUDA stack.

Why: the pinned torch 2.14.1 is a CUDA build that cannot even be imported without its ~3 GB of nvidia-*
libraries (libtorch_cuda links libcudnn). The bundle runs on the CPU, so it takes a CPU-only torch instead
and drops torchvision (nnU-Net uses it only to find trainers by name, which TuckerScope bypasses by building
networks from plans). Every other package keeps exactly the version constraints.txt pins.
Usage: python runtime_requirements.py REPORT.json > requirements.txt
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Left out of the bundle's environment: the CUDA torch stack and what needs it.
DROPPED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")


def requirements(report: dict) -> list[str]:
    """``name==version`` for every package pip resolved, less the dropped ones and the project itself."""
    pins = []
    for item in report["install"]:
        name = item["metadata"]["name"].lower().replace("_", "-")
        if name != "tuckerscope" and not DROPPED.match(name):
            pins.append(f"{name}=={item['metadata']['version']}")
    return sorted(pins)


def main() -> int:
    print("\n".join(requirements(json.loads(Path(sys.argv[1]).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
