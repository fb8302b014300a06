"""Package discovery for the mapped layout: the repository's core/, app/ and resources/ become tuckerscope.*.

pyproject.toml holds all metadata; this file only finds every subpackage, so a new one can never be left
out of the wheel again (core/commands/ once was).
"""

from setuptools import find_packages, setup

ROOTS = {
    "tuckerscope": "packaging/tuckerscope",
    "tuckerscope.core": "core",
    "tuckerscope.app": "app",
    "tuckerscope.resources": "resources",
}

packages = list(ROOTS)
for name, folder in ROOTS.items():
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
