"""Side-by-side timing: every candidate is measured in the same run, interleaved, so that the
ratios we print compare like with like (same machine, same load, same warm-up)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping

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


def train_step_fn(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
                  x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3,
                  augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]] | None = None
                  ) -> Callable[[], None]:
    """A zero-argument function doing one full SGD training step (forward, loss, backward,
    update) of ``model`` on the fixed batch ``(x, y)``: the unit to time with :func:`compare_times`.
    ``augment(x, y) -> (x, target)``, when given, runs inside the step (as in ``core.train``)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()

    def step() -> None:
        xb, target = augment(x, y) if augment is not None else (x, y)
        loss = loss_fn(model(xb), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step
