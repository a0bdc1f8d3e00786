"""Shared helpers of the deploy-file tests: where the tools and files are."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dev_tool(name: str) -> Path:
    """A linter installed by the dev group (next to the interpreter), else from PATH;
    skips the test, naming the package, when neither has it."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return here
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (python3 -m uv sync installs the dev group)")
    return Path(found)
