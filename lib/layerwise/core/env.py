"""Device, seeding and the fast/full profile every chapter reads its sizes from."""

from __future__ import annotations

import os
import random
from typing import Any, TypeVar

import numpy as np
import torch

PROFILES = ("fast", "full")
T = TypeVar("T")


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given, else CUDA, then Apple MPS, then CPU."""
    if prefer is not None:
        if not isinstance(prefer, str):
            raise TypeError(f"prefer must be a device string such as 'cpu' or 'cuda', got {type(prefer).__name__}")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded alike."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_profile(profile: str = "auto") -> str:
    """Map a chapter's ``PROFILE`` parameter to ``"fast"`` or ``"full"``.

    ``"auto"`` becomes ``"full"`` when CUDA is available, else ``"fast"``. The environment
    variable ``LAYERWISE_PROFILE`` overrides ``"auto"`` (the test suite sets it to ``fast``).
    """
    if not isinstance(profile, str):
        raise TypeError(f"profile must be a string, got {type(profile).__name__}")
    p = profile.strip().lower()
    if p == "auto":
        p = os.environ.get("LAYERWISE_PROFILE", "").strip().lower() or (
            "full" if torch.cuda.is_available() else "fast"
        )
    if p not in PROFILES:
        raise ValueError(f"profile must be 'auto', 'fast' or 'full', got {profile!r}")
    return p


def pick(profile: str, **options: T) -> T:
    """Pick the settings of one profile: ``pick("fast", fast=dict(...), full=dict(...))``."""
    missing = [p for p in PROFILES if p not in options]
    if missing:
        raise ValueError(f"pick needs settings for every profile; missing {missing}")
    unknown = sorted(set(options) - set(PROFILES))
    if unknown:
        raise ValueError(f"pick got unknown profiles {unknown}; expected {list(PROFILES)}")
    return options[resolve_profile(profile)]


def setup(profile: str = "auto", seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """One call at the top of a chapter: resolve the profile, pick the device, seed everything.

    The fast profile on a CPU runs torch on **one thread**: the order of floating-point
    reductions then does not depend on the machine's core count, so the book, the test suite and
    a student's laptop print the same numbers (and ``make book`` runs two chapters at a time
    instead). Figures take the book's style (:func:`layerwise.core.plot.use_book_style`: sized for
    the text column, rendered at twice the pixels). Returns ``{"profile", "device", "seed"}`` and
    prints a one-line summary.
    """
    from layerwise.core.plot import use_book_style

    info = {"profile": resolve_profile(profile), "device": get_device(device), "seed": seed}
    use_book_style()
    if info["profile"] == "fast" and info["device"].type == "cpu":
        torch.set_num_threads(1)
    seed_everything(seed)
    threads = torch.get_num_threads()
    print(f"layerwise: profile={info['profile']} device={info['device']} seed={seed} "
          f"torch={torch.__version__} threads={threads}")
    return info


def progress_enabled(progress: bool | None = None) -> bool:
    """Progress bars are on unless ``progress=False`` or ``LAYERWISE_PROGRESS=0`` (book builds)."""
    if progress is None:
        return os.environ.get("LAYERWISE_PROGRESS", "1") != "0"
    return bool(progress)


def progress_bar(iterable=None, *, desc: str = "", total: int | None = None, enabled: bool | None = None):
    """A ``tqdm.auto`` bar over ``iterable`` that respects :func:`progress_enabled`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(enabled), leave=False,
                mininterval=0.5)
