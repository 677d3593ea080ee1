"""Shared fixtures: the repository root and the discovered chapters and assignments.

`make test` runs pytest with xdist (``-n 2 --dist loadgroup``). Tests are grouped so that work
that shares a costly fixture stays on one worker: each assignment's nbgrader round trip is a
group, each chapter is a group, each other test file is a group; the longest groups are sent
first and the book build (which reuses the chapters executed by both workers) last, followed on
the same worker by the tests that read the built book (the browser test, the dashboard check). Under xdist every worker and every kernel it
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


def _group(item: pytest.Item) -> tuple[int, str]:
    """(dispatch priority, group): long groups first, the book build (which needs every chapter) last."""
    module = item.module.__name__.rsplit(".", 1)[-1]
    params = item.callspec.params if hasattr(item, "callspec") else {}
    if module == "test_assignments" and "graded" in params:
        return 0, f"assignment-{params['graded']}"
    if module == "test_chapters" and "chapter" in params:
        return 1, f"chapter-{params['chapter'].stem}"
    if item.name == "test_book_builds_without_warnings":
        return 3, "book"
    if module == "test_browser" or "built_book" in getattr(item, "fixturenames", ()):
        return 4, "book"          # reads the built book: same worker, after the build
    return 2, module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_group(item)[1]))
    items.sort(key=lambda item: _group(item)[0])   # stable: collection order within a priority


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
