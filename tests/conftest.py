"""Shared fixtures: the repository root and the discovered chapters and assignments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAYERWISE_PROFILE", "fast")   # "auto" means fast in the test suite


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
