"""Side-by-side timing: every candidate is measured in the same run, interleaved, so that the
ratios we print compare like with like (same machine, same load, same warm-up)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare_times(fns: Mapping[str, Callable[[], object]], *, repeats: int = 20, warmup: int = 3,
                  inner: int = 1) -> dict[str, float]:
    """Median seconds per call of each zero-argument function in ``fns``.

    Calls are interleaved round-robin (``warmup`` untimed rounds first); each timed sample runs
    the function ``inner`` times. Compare the returned medians as ratios.
    """
    if not fns:
        raise ValueError("fns is empty")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"fns[{name!r}] must be callable")
    if repeats < 1 or warmup < 0 or inner < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, inner >= 1; got {repeats}, {warmup}, {inner}")
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync()
            if r >= warmup:
                samples[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}
