"""A small training loop shared by every chapter: mini-batches, tqdm progress, a per-step history."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from layerwise.core.env import progress_bar

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """What happened during training.

    ``loss`` and ``acc`` hold one value per optimisation step (training batch);
    ``eval_step``/``eval_loss``/``eval_acc`` one value per evaluation.
    """

    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.loss)

    def final(self) -> dict[str, float]:
        """The last evaluation (or the last training step when nothing was evaluated)."""
        out = {"train_loss": self.loss[-1] if self.loss else float("nan"), "seconds": self.seconds}
        if self.eval_loss:
            out.update(eval_loss=self.eval_loss[-1], eval_acc=self.eval_acc[-1],
                       eval_error=1.0 - self.eval_acc[-1])
        return out


def _check_xy(name: str, X: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a pair of tensors (X, y), got ({type(X).__name__}, {type(y).__name__})")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty")


def batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
            generator: torch.Generator | None = None, drop_last: bool = True
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of mini-batches from in-memory tensors ``X: (N, ...)``, ``y: (N,)``.

    Faster than a ``DataLoader`` for data that fits in memory (all of ours does).
    """
    _check_xy("data", X, y)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = X.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(X.device)
    stop = n - n % batch_size if (drop_last and n >= batch_size) else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield X[idx], y[idx]


def accuracy(output: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct argmax predictions. ``output: (..., B, C)``, ``y: (B,)``;
    leading dimensions (e.g. several dropout samples) are averaged over."""
    return (output.argmax(-1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor,
             loss_fn: LossFn = F.cross_entropy, batch_size: int = 2048) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (in eval mode) on ``(X, y)``."""
    _check_xy("eval data", X, y)
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0.0, 0
    for xb, yb in batches(X, y, batch_size, shuffle=False, drop_last=False):
        out = model(xb)
        total_loss += loss_fn(out, yb).item() * len(yb)
        correct += (out.argmax(-1) == yb).float().sum().item()
        n += len(yb)
    model.train(was_training)
    return total_loss / n, correct / n


def train(model: torch.nn.Module, train_data: tuple[torch.Tensor, torch.Tensor],
          loss_fn: LossFn, optimizer: torch.optim.Optimizer, *, epochs: int,
          batch_size: int = 64, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          eval_every: int | None = None, generator: torch.Generator | None = None,
          progress: bool | None = None, desc: str = "train",
          augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]] | None = None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_data`` and return its :class:`History`.

    ``loss_fn(model(x), y)`` gives the training loss (so a model may return several outputs per
    example, as multi-sample dropout does). Evaluation uses ``model.eval()`` and cross-entropy,
    every ``eval_every`` steps (default: once per epoch) and at the end. A progress bar is shown
    unless ``progress=False`` (default: on, except when ``LAYERWISE_PROGRESS=0``, as in book builds).

    ``augment(x, y) -> (x, target)`` (optional) transforms each training batch, e.g. the mixing
    augmentations of :mod:`layerwise.core.augment`; the loss is then ``loss_fn(model(x), target)``
    and the recorded training accuracy is against the batch's original labels.
    """
    X, y = train_data
    _check_xy("train_data", X, y)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if eval_data is not None:
        _check_xy("eval_data", *eval_data)
    steps_per_epoch = max(1, X.shape[0] // batch_size)
    eval_every = eval_every or steps_per_epoch
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    hist = History()
    total = epochs * steps_per_epoch
    bar = progress_bar(total=total, desc=desc, enabled=progress)
    start = time.perf_counter()
    model.train()
    step = 0
    for _ in range(epochs):
        for xb, yb in batches(X, y, batch_size, generator=generator):
            target = yb
            if augment is not None:
                xb, target = augment(xb, yb)
            out = model(xb)
            loss = loss_fn(out, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            hist.loss.append(loss.item())
            hist.acc.append(accuracy(out.detach(), yb))
            if eval_data is not None and (step % eval_every == 0 or step == total):
                el, ea = evaluate(model, *eval_data)
                model.train()
                hist.eval_step.append(step)
                hist.eval_loss.append(el)
                hist.eval_acc.append(ea)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{hist.loss[-1]:.3f}")
    bar.close()
    hist.seconds = time.perf_counter() - start
    return hist


def stack(histories: list[History], attr: str) -> np.ndarray:
    """``(runs, T)`` array of one History attribute over runs (truncated to the shortest)."""
    if not histories:
        raise ValueError("histories is empty")
    seqs = [np.asarray(getattr(h, attr), dtype=float) for h in histories]
    t = min(len(s) for s in seqs)
    return np.stack([s[:t] for s in seqs])
