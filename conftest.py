"""Finds the tools that the tests need and enforces the CI rule: under ``CI`` a missing tool
fails the test instead of skipping it (a green CI that skipped the RTL proves nothing)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw.flow.toolchain import setup_tool_env  # noqa: E402

setup_tool_env()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tool(name: str, hint: str) -> str:
    """Path of executable ``name``; skip when missing, or fail under CI."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found ({hint})"
        if in_ci():
            pytest.fail(f"CI: {msg}", pytrace=False)
        pytest.skip(msg)
    return path


def require_data(path: Path, what: str) -> Path:
    if not path.exists():
        msg = f"{what} not found at {path}"
        if in_ci():
            pytest.fail(f"CI: {msg}", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    from model.data import default_data_dir

    return require_data(default_data_dir() / "mnist", "MNIST (set BM_DATA_DIR)")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from model.data import load_mnist

    return load_mnist(mnist_dir)
