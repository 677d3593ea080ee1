"""The training loops every chapter and zoo recipe shares.

- :func:`train`: epochs over an in-memory labelled data set, with evaluation (the classifier
  chapters);
- :func:`fit_steps`: a fixed number of optimisation steps of any loss (the zoo recipes and the
  diffusion chapters): the caller's ``loss_fn(step)`` draws its own batch; the loop does the
  rest (AdamW, warm-up and cosine schedule, gradient clipping, EMA weights, a progress bar) and
  returns a :class:`History`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator

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
    lr: list[float] = field(default_factory=list)
    logs: dict[str, list[float]] = field(default_factory=dict)

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


# --------------------------------------------------------------------------- step-based training

def lr_factor(step: int, *, steps: int, warmup: int = 0, cosine: bool = False) -> float:
    """The learning-rate multiplier of :func:`fit_steps` at ``step`` (0-based).

    A linear warm-up over the first ``warmup`` steps, ``min(1, (step + 1) / warmup)``, times, with
    ``cosine``, a cosine decay from 1 to 0 over all ``steps``: ``(1 + cos(π · step / steps)) / 2``.
    Used through torch's :class:`~torch.optim.lr_scheduler.LambdaLR`.
    """
    warm = min(1.0, (step + 1) / max(1, warmup))
    if not cosine:
        return warm
    return warm * 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))


class EMA:
    """Exponential moving average of a model's weights (what diffusion models sample with)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))   # warm-up: follow the model closely at first
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow.state_dict())


StepLoss = Callable[[int], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]


def fit_steps(model: torch.nn.Module, loss_fn: StepLoss, steps: int, *, lr: float = 1e-3,
              weight_decay: float = 0.0, params: Iterable[torch.nn.Parameter] | None = None,
              warmup: int = 0, cosine: bool = False, clip: float | None = None, ema: float | None = None,
              progress: bool | None = None, desc: str = "train", log_every: int = 50) -> History:
    """Train ``model`` for ``steps`` optimisation steps of ``loss_fn`` and return its :class:`History`.

    ``loss_fn(step)`` draws its own batch (with the caller's seeded generator) and returns the
    scalar loss, or ``(loss, logs)`` with ``logs`` a dict of extra scalars recorded per step in
    ``History.logs``. Each step: ``zero_grad``, ``backward``, optional gradient-norm clipping to
    ``clip``, an AdamW step (``lr``, ``weight_decay``) over ``params`` (default: every parameter
    of ``model``), the learning-rate schedule :func:`lr_factor` (``warmup`` steps of linear
    warm-up, then a ``cosine`` decay to 0 if asked), and the ``ema`` average of the weights if a
    decay is given; the model then ends holding the EMA weights. ``History.loss`` and
    ``History.lr`` hold one value per step. The model is in train mode during the loop and in
    eval mode afterwards. A non-finite loss stops training with a ``FloatingPointError``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(step), got {type(loss_fn).__name__}")
    for name, value in (("steps", steps), ("warmup", warmup), ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "log_every" else 0):
            raise ValueError(f"{name} must be an int >= {1 if name == 'log_every' else 0}, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ValueError(f"clip must be None or a number > 0, got {clip!r}")
    params = list(model.parameters() if params is None else params)
    if not params:
        raise ValueError("params is empty: nothing to train")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, steps=steps, warmup=warmup, cosine=cosine))
    averager = EMA(model, ema) if ema else None
    hist = History()
    bar = progress_bar(range(steps), desc=desc, enabled=progress)
    start = time.perf_counter()
    model.train()
    for step in bar:
        hist.lr.append(opt.param_groups[0]["lr"])
        out = loss_fn(step)
        loss, logs = out if isinstance(out, tuple) else (out, {})
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"loss_fn must return a scalar tensor (or (loss, logs)), got {type(loss).__name__}")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if averager is not None:
            averager.update(model, step)
        hist.loss.append(loss.item())
        for key, value in logs.items():
            hist.logs.setdefault(key, []).append(value.item() if isinstance(value, torch.Tensor) else float(value))
        if step % log_every == 0:
            recent = hist.loss[-log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    if averager is not None:
        averager.copy_to(model)
    model.eval()
    hist.seconds = time.perf_counter() - start
    return hist
