"""Write BUNDLE-INFO.json into a built bundle: the version and what went in, read from the build environment.

Why a file: a Linux executable carries no version resource, and a support call needs the bundle's version,
torch build and commit without starting the app. The version is tuckerscope.__version__, the one source the
CLI, Help > About and the AppStream metainfo also use. Run with the build venv's Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import tuckerscope

INFO_NAME = "BUNDLE-INFO.json"


def git_commit(repo: Path) -> str:
    """The commit the bundle was built from ('unknown' outside a git checkout)."""
    result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def bundle_info(repo: Path) -> dict[str, str]:
    return {
        "name": "TuckerScope",
        "version": tuckerscope.__version__,
        "commit": git_commit(repo),
        "python": sys.version.split()[0],
        "torch": version("torch"),
        "pyinstaller": version("pyinstaller"),
    }


def main() -> int:
    bundle, repo = Path(sys.argv[1]), Path(sys.argv[2])
    (bundle / INFO_NAME).write_text(json.dumps(bundle_info(repo), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
