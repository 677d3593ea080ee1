"""Shared fixtures: the repository root and the discovered chapters and assignments.

`make test` runs pytest with xdist (``-n 2 --dist loadgroup``). Tests are grouped so that work
that shares a costly fixture stays on one worker: each test file is a group, each assignment's
nbgrader round trip is a group, and all chapters plus the book build are one group (the book
is built from the chapters that group executed). Under xdist every worker and every kernel it
starts uses one torch thread, so two workers share two cores without oversubscribing them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAYERWISE_PROFILE", "fast")   # "auto" means fast in the test suite
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"                 # inherited by papermill / nbgrader kernels
    import torch
    torch.set_num_threads(1)


def _group(item: pytest.Item) -> str:
    module = item.module.__name__.rsplit(".", 1)[-1]
    if module == "test_chapters":
        return "book"
    if module == "test_assignments" and hasattr(item, "callspec") and "graded" in item.callspec.params:
        return f"assignment-{item.callspec.params['graded']}"
    return module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
