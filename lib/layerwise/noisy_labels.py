"""Compressing Features for Learning with Noisy Labels (Chen, Hu, Shen, Ai & Suykens, IEEE TNNLS
2022, arXiv:2206.13140), with Co-teaching (Han et al., NeurIPS 2018) as its second stage.

A network trained with cross-entropy on noisy labels first fits the clean majority, then
memorises the wrong labels. The paper limits how much the penultimate features can store:

1. **Label noise** used to study the problem (paper's CIFAR experiments; Co-teaching §4):
   *symmetric* noise sends a label, with probability ``rate``, to one of the *other* classes
   chosen uniformly (:func:`symmetric_noise`); *pair* noise sends it to the next class
   (:func:`pair_noise`). :func:`noise_transition_matrix` gives the matrix ``T[i, j] = P(ỹ=j | y=i)``.
2. **Stage 1, nested dropout** on the penultimate features ``h ∈ R^D`` (paper, "Nested Dropout";
   Rippel et al., 2014): per mini-batch draw one ``k ∈ {1..D}`` and keep the first ``k``
   features, zeroing the rest, with no rescaling (:func:`nested_mask`). The official code draws
   ``k`` from a discretised Gaussian ``p(k) ∝ exp(-((k - μ)/σ)²)``, ``μ = 0``
   (:func:`nested_k_distribution`); the original nested dropout used a geometric law
   (:func:`geometric_k_distribution`). The first features are thus trained most and learn the
   most important directions; a small ``k`` is a compressed, noise-robust classifier. At test
   time the ``k`` with the best accuracy on a (clean) validation split is used
   (:func:`scan_k`, :func:`best_k`, :func:`evaluate_at_best_k`).
3. **Stage 2, Co-teaching fine-tuning** of two such networks: each ranks the mini-batch by its
   own loss and keeps the ``⌊(1 - R(t))·B⌋`` smallest-loss examples
   (:func:`small_loss_selection`); each network is then updated on its *peer's* selection
   (:func:`coteaching_losses`, :func:`train_coteaching`), with the forget rate
   ``R(t) = τ·min(t/T_k, 1)`` (:func:`forget_rate`). The paper reports the two networks'
   averaged logits (an ensemble): :func:`ensemble_logits`.

The network is the official code's split (:class:`CompressedClassifier`): a trunk giving ``h``,
a compression layer (nested dropout, dropout or none) and a bias-free linear classifier.
:func:`train_and_track` runs stage 1 with the course's training loop and records, per epoch, the
validation-selected ``k``, the test accuracy there and the :func:`memorisation` of wrong labels.

Shapes: labels ``y: (N,)`` int64; features ``h: (..., D)``; logits ``(B, C)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise.core.env import progress_bar
from layerwise.core.train import batches, train

__all__ = [
    "symmetric_noise", "pair_noise", "corrupt_labels", "noise_transition_matrix",
    "nested_k_distribution", "geometric_k_distribution", "sample_k", "nested_mask", "NestedDropout",
    "best_k", "CompressedClassifier", "logits_per_k", "scan_k", "evaluate_at_best_k",
    "memorisation", "train_and_track", "forget_rate", "small_loss_selection", "coteaching_losses",
    "ensemble_logits", "CoTeachingHistory", "train_coteaching",
]


# ----------------------------------------------------------------------------- argument checks

def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_rate(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _check_labels(y, num_classes: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-D integer tensor (N,), got {y.dtype} of shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y must hold class indices in [0, {num_classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


def _check_uniform(u, name: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(u, torch.Tensor) or not u.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of uniform draws in [0, 1), "
                        f"got {getattr(u, 'dtype', type(u).__name__)}")
    if u.shape != like.shape:
        raise ValueError(f"{name} must have the shape of y {tuple(like.shape)}, got {tuple(u.shape)}")
    return u


# ----------------------------------------------------------------------------- label noise

def symmetric_noise(y: torch.Tensor, rate: float, num_classes: int, u_flip: torch.Tensor,
                    u_class: torch.Tensor) -> torch.Tensor:
    """Symmetric label noise from given uniform draws (Co-teaching's "symmetric" flip).

    Example ``i`` is corrupted where ``u_flip[i] < rate``; its label then moves to one of the
    ``C - 1`` *other* classes, chosen uniformly: ``ỹ = (y + 1 + ⌊u_class·(C - 1)⌋) mod C``
    (the ``j``-th class after ``y``, counting upward and wrapping around). Elsewhere ``ỹ = y``.
    So ``P(ỹ = y) = 1 - rate`` and ``P(ỹ = j) = rate / (C - 1)`` for every ``j ≠ y``.

    y: ``(N,)`` class indices in ``[0, C)``; u_flip, u_class: ``(N,)`` floats in ``[0, 1)``.
    Returns ``(N,)`` with the dtype and device of ``y``.
    """
    c = _check_int(num_classes, "num_classes", 2)
    rate = _check_rate(rate, "rate")
    y = _check_labels(y, c)
    u_flip = _check_uniform(u_flip, "u_flip", y)
    u_class = _check_uniform(u_class, "u_class", y)
    shift = 1 + torch.floor(u_class * (c - 1)).to(y.dtype)          # in {1, ..., C-1}
    return torch.where(u_flip < rate, (y + shift) % c, y)


def pair_noise(y: torch.Tensor, rate: float, num_classes: int, u_flip: torch.Tensor) -> torch.Tensor:
    """Pair-flip label noise (Co-teaching's "pairflip"): where ``u_flip < rate`` the label
    becomes the next class, ``(y + 1) mod C``. y, u_flip: ``(N,)``; returns ``(N,)`` like y."""
    c = _check_int(num_classes, "num_classes", 2)
    rate = _check_rate(rate, "rate")
    y = _check_labels(y, c)
    u_flip = _check_uniform(u_flip, "u_flip", y)
    return torch.where(u_flip < rate, (y + 1) % c, y)


def corrupt_labels(y: torch.Tensor, rate: float, num_classes: int, kind: str = "symmetric", *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the uniforms with ``generator`` (on the CPU) and apply :func:`symmetric_noise` or
    :func:`pair_noise` (``kind``). Returns the noisy labels ``(N,)`` on ``y``'s device.

    The realised fraction of wrong labels is close to ``rate``, not exactly ``rate``: each
    label is flipped independently (the official Nested-Co-teaching scripts flip an exact
    fraction per class instead).
    """
    if kind not in ("symmetric", "pair"):
        raise ValueError(f"kind must be 'symmetric' or 'pair', got {kind!r}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
    cpu = y.detach().cpu()
    u_flip = torch.rand(cpu.shape, generator=generator)
    if kind == "pair":
        return pair_noise(cpu, rate, num_classes, u_flip).to(y.device)
    u_class = torch.rand(cpu.shape, generator=generator)
    return symmetric_noise(cpu, rate, num_classes, u_flip, u_class).to(y.device)


def noise_transition_matrix(rate: float, num_classes: int, kind: str = "symmetric") -> torch.Tensor:
    """The ``(C, C)`` float64 matrix ``T[i, j] = P(ỹ = j | y = i)`` of the noise above: rows sum to 1."""
    c = _check_int(num_classes, "num_classes", 2)
    rate = _check_rate(rate, "rate")
    eye = torch.eye(c, dtype=torch.float64)
    if kind == "symmetric":
        return (1 - rate) * eye + rate / (c - 1) * (1 - eye)
    if kind == "pair":
        return (1 - rate) * eye + rate * torch.roll(eye, 1, dims=1)
    raise ValueError(f"kind must be 'symmetric' or 'pair', got {kind!r}")


# ----------------------------------------------------------------------------- nested dropout

def nested_k_distribution(num_features: int, sigma: float, mu: float = 0.0) -> torch.Tensor:
    """The law of ``k`` (the number of kept features) used by the official code.

    ``p(k) ∝ exp(-((k - μ)/σ)²)`` for ``k = 1, ..., D`` (a Gaussian discretised on ``1..D``
    and renormalised; note there is no factor 1/2 in the exponent). The official scripts use
    ``μ = 0`` and ``σ = 10`` (CIFAR-10) or ``σ = 100`` (CIFAR-100, Clothing1M, ANIMAL-10N).
    Computed as a softmax of the log-weights, so it stays finite for tiny ``σ``.

    Returns ``(D,)`` float64 probabilities; entry ``k - 1`` is ``p(k)``.
    """
    d = _check_int(num_features, "num_features", 1)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise TypeError(f"sigma must be a positive float, got {type(sigma).__name__}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if isinstance(mu, bool) or not isinstance(mu, (int, float, np.floating, np.integer)):
        raise TypeError(f"mu must be a float, got {type(mu).__name__}")
    k = torch.arange(1, d + 1, dtype=torch.float64)
    return torch.softmax(-((k - float(mu)) / float(sigma)) ** 2, dim=0)


def geometric_k_distribution(num_features: int, rho: float) -> torch.Tensor:
    """The law of ``k`` in the original nested dropout (Rippel et al., 2014, §2):
    ``p(k) = ρ^(k-1) (1 - ρ)``, truncated to ``k = 1..D`` and renormalised. ``ρ`` in (0, 1)
    is the probability of keeping one more unit; the mean is about ``1/(1 - ρ)``.
    Returns ``(D,)`` float64; entry ``k - 1`` is ``p(k)``."""
    d = _check_int(num_features, "num_features", 1)
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.floating)):
        raise TypeError(f"rho must be a float in (0, 1), got {type(rho).__name__}")
    if not 0.0 < float(rho) < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    k = torch.arange(1, d + 1, dtype=torch.float64)
    return torch.softmax((k - 1) * math.log(float(rho)), dim=0)     # ∝ ρ^(k-1); (1 - ρ) cancels


def sample_k(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One draw of ``k ∈ {1..D}`` from ``probs: (D,)`` (entry ``k - 1`` is ``p(k)``)."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 1 or probs.numel() == 0:
        raise ValueError(f"probs must be a non-empty 1-D tensor, got {getattr(probs, 'shape', type(probs).__name__)}")
    if (probs < 0).any() or not float(probs.sum()) > 0:
        raise ValueError("probs must be non-negative with a positive sum")
    return int(torch.multinomial(probs, 1, generator=generator)) + 1


def nested_mask(h: torch.Tensor, k: int) -> torch.Tensor:
    """Nested dropout of features ``h: (..., D)`` at ``k``: keep the first ``k`` features
    (indices ``0..k-1`` of the last axis), set the others to zero, **no rescaling**.

    Returns a tensor shaped and typed like ``h``; ``k = D`` returns ``h`` unchanged. Gradients
    flow only into the kept features.
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor of features (..., D), got {type(h).__name__}")
    if h.dim() < 1:
        raise ValueError("h must have at least one dimension (..., D)")
    d = h.shape[-1]
    if isinstance(k, torch.Tensor) and k.numel() == 1 and not k.is_floating_point():
        k = int(k)
    k = _check_int(k, "k", 1)
    if k > d:
        raise ValueError(f"k must be in [1, D] = [1, {d}], got {k}")
    keep = torch.arange(d, device=h.device) < k
    return h * keep.to(h.dtype)


class NestedDropout(nn.Module):
    """Nested dropout on ``(B, D)`` features, one ``k`` per forward call (per mini-batch).

    Training: draws ``k`` from ``law`` ("gaussian", :func:`nested_k_distribution` with ``sigma``
    and ``mu``; or "geometric", :func:`geometric_k_distribution` with ``rho``) and returns
    :func:`nested_mask` of the input (the drawn value is kept in ``last_k``). Evaluation: keeps
    the first ``self.k`` features, all of them while ``k`` is ``None`` (set it with the best
    ``k`` on validation, :func:`best_k`).
    """

    def __init__(self, num_features: int, sigma: float = 10.0, *, law: str = "gaussian", mu: float = 0.0,
                 rho: float = 0.9, generator: torch.Generator | None = None):
        super().__init__()
        self.num_features = _check_int(num_features, "num_features", 1)
        if law == "gaussian":
            probs = nested_k_distribution(self.num_features, sigma, mu)
        elif law == "geometric":
            probs = geometric_k_distribution(self.num_features, rho)
        else:
            raise ValueError(f"law must be 'gaussian' or 'geometric', got {law!r}")
        self.law, self.sigma, self.mu, self.rho = law, sigma, mu, rho
        self.probs = probs                       # kept on the CPU: drawing k needs no device sync
        self.generator = generator
        self.k: int | None = None
        self.last_k: int | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.num_features:
            raise ValueError(f"expected features with D = {self.num_features} on the last axis, got {tuple(h.shape)}")
        if self.training:
            self.last_k = sample_k(self.probs, self.generator)
            return nested_mask(h, self.last_k)
        return h if self.k is None else nested_mask(h, self.k)

    def extra_repr(self) -> str:
        law = f"sigma={self.sigma}, mu={self.mu}" if self.law == "gaussian" else f"rho={self.rho}"
        return f"num_features={self.num_features}, law={self.law}, {law}, k={self.k}"


def best_k(accuracies: torch.Tensor | Sequence[float], ks: Sequence[int] | None = None) -> tuple[int, float]:
    """The ``k`` with the highest accuracy (the smallest such ``k`` on ties, as the official code
    prefers), and that accuracy. ``accuracies[i]`` belongs to ``ks[i]`` (default ``i + 1``)."""
    acc = torch.as_tensor(accuracies, dtype=torch.float64).flatten()
    if acc.numel() == 0:
        raise ValueError("accuracies is empty")
    ks = list(range(1, acc.numel() + 1)) if ks is None else list(ks)
    if len(ks) != acc.numel():
        raise ValueError(f"ks has {len(ks)} entries but accuracies has {acc.numel()}")
    i = int(torch.nonzero(acc == acc.max())[0])
    return int(ks[i]), float(acc[i])


class CompressedClassifier(nn.Module):
    """The paper's network: a feature extractor ``trunk: x -> h (B, D)``, a compression layer on
    the penultimate features (:class:`NestedDropout`, ``nn.Dropout`` or ``nn.Identity`` for plain
    cross-entropy) and a linear classifier ``head: (B, D) -> (B, C)`` (bias-free in the official
    code, so a zeroed feature contributes nothing)."""

    def __init__(self, trunk: nn.Module, num_features: int, num_classes: int, compress: nn.Module | None = None,
                 bias: bool = False):
        super().__init__()
        self.trunk = trunk
        self.compress = compress if compress is not None else nn.Identity()
        self.head = nn.Linear(_check_int(num_features, "num_features", 1), _check_int(num_classes, "num_classes", 2),
                              bias=bias)

    @property
    def nested(self) -> bool:
        return isinstance(self.compress, NestedDropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.compress(self.trunk(x)))


def logits_per_k(h: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """The logits of a linear ``head`` on ``nested_mask(h, k)`` for every ``k = 1..D`` at once.

    Keeping the first ``k`` features of ``h`` and applying ``W h + b`` gives
    ``Σ_{j<k} h_j W[:, j] + b``: a cumulative sum over the feature axis. h: ``(N, D)``;
    returns ``(N, D, C)`` where ``[:, k - 1]`` are the logits at ``k``.
    """
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != head.in_features:
        raise ValueError(f"h must be (N, {head.in_features}), got {getattr(h, 'shape', type(h).__name__)}")
    out = torch.cumsum(h.unsqueeze(-1) * head.weight.t().unsqueeze(0), dim=1)
    return out if head.bias is None else out + head.bias


@torch.no_grad()
def scan_k(nets: Sequence[CompressedClassifier], X: torch.Tensor, y: torch.Tensor, *, all_k: bool = False,
           batch_size: int = 1024) -> torch.Tensor:
    """Accuracy on ``(X, y)`` of the networks' averaged logits (:func:`ensemble_logits`; one network
    is an ensemble of one) when all of them keep the first ``k`` features, for every ``k = 1..D``
    (:func:`logits_per_k`). Networks without nested dropout are scored at ``k = D`` only, unless
    ``all_k`` (their features are not ordered, so truncating them is a comparison, not a method).
    Returns ``(D,)`` float64 (``(1,)`` without nested dropout): the curve the official code scans
    on validation to pick ``k``."""
    nets = list(nets)
    if not nets:
        raise ValueError("nets is empty")
    if not isinstance(y, torch.Tensor) or y.shape != X.shape[:1]:
        raise ValueError(f"y must be a ({X.shape[0]},) tensor, got {getattr(y, 'shape', type(y).__name__)}")
    was = [n.training for n in nets]
    for n in nets:
        n.eval()
    every_k = all_k or all(n.nested for n in nets)
    correct = None
    for i in range(0, X.shape[0], batch_size):
        xb, yb = X[i:i + batch_size], y[i:i + batch_size]
        if every_k:
            logits = ensemble_logits(*[logits_per_k(n.trunk(xb), n.head) for n in nets])     # (B, D, C)
        else:
            logits = ensemble_logits(*[n.head(n.trunk(xb)) for n in nets]).unsqueeze(1)       # (B, 1, C)
        hits = (logits.argmax(-1) == yb.unsqueeze(1)).sum(0).double().cpu()
        correct = hits if correct is None else correct + hits
    for n, w in zip(nets, was):
        n.train(w)
    return correct / X.shape[0]


def evaluate_at_best_k(nets: Sequence[CompressedClassifier], val_data: tuple[torch.Tensor, torch.Tensor],
                       test_data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Pick ``k`` on the validation split (:func:`scan_k`, :func:`best_k`), set it on the networks'
    nested dropout layers (so that ``net.eval()(x)`` uses it) and score the test split there.
    Returns ``{"k", "val_acc", "test_acc"}``."""
    nets = list(nets)
    val = scan_k(nets, *val_data)
    k, val_acc = best_k(val, None if val.numel() > 1 else [nets[0].head.in_features])
    for n in nets:
        if n.nested:
            n.compress.k = k
    test = scan_k(nets, *test_data)
    test_acc = float(test[k - 1]) if test.numel() > 1 else float(test[0])
    return {"k": k, "val_acc": val_acc, "test_acc": test_acc}


@torch.no_grad()
def memorisation(nets: Sequence[nn.Module], X: torch.Tensor, y_given: torch.Tensor, y_true: torch.Tensor
                 ) -> dict[str, float]:
    """How much of the *given* training labels the networks' (averaged) predictions reproduce,
    split by whether the label is right: ``fit_clean`` (examples whose given label is true) and
    ``fit_noisy`` (examples whose given label is wrong: predicting it means the wrong label was
    memorised). The networks run in eval mode (nested dropout at its ``k``)."""
    nets = list(nets)
    was = [n.training for n in nets]
    for n in nets:
        n.eval()
    pred = ensemble_logits(*[n(X) for n in nets]).argmax(-1)
    for n, w in zip(nets, was):
        n.train(w)
    hit, wrong = pred == y_given, y_given != y_true
    out = {"fit_clean": hit[~wrong].double().mean().item() if (~wrong).any() else float("nan"),
           "fit_noisy": hit[wrong].double().mean().item() if wrong.any() else float("nan")}
    return out


def train_and_track(net: CompressedClassifier, optimizer: torch.optim.Optimizer,
                    train_data: tuple[torch.Tensor, torch.Tensor], *, epochs: int,
                    val_data: tuple[torch.Tensor, torch.Tensor], test_data: tuple[torch.Tensor, torch.Tensor],
                    clean_labels: torch.Tensor | None = None, batch_size: int = 64,
                    generator: torch.Generator | None = None, progress: bool | None = None,
                    desc: str = "train") -> list[dict[str, float]]:
    """Stage 1: train ``net`` with cross-entropy on the (noisy) ``train_data`` for ``epochs``
    epochs (:func:`layerwise.core.train`, one epoch at a time) and after each epoch record the
    validation-selected ``k`` and the test accuracy there (:func:`evaluate_at_best_k`), plus
    :func:`memorisation` of the training labels when ``clean_labels`` are given. Returns one
    dict per epoch; the network keeps the ``k`` selected after its last epoch."""
    epochs = _check_int(epochs, "epochs", 1)
    curve = []
    for epoch in progress_bar(range(epochs), desc=desc, enabled=progress):
        train(net, train_data, F.cross_entropy, optimizer, epochs=1, batch_size=batch_size,
              generator=generator, progress=False)
        rec = {"epoch": epoch + 1, **evaluate_at_best_k([net], val_data, test_data)}
        if clean_labels is not None:
            rec.update(memorisation([net], train_data[0], train_data[1], clean_labels))
        curve.append(rec)
    return curve


# ----------------------------------------------------------------------------- Co-teaching

def forget_rate(epoch: int | float, tau: float, t_k: int) -> float:
    """Co-teaching's schedule (Han et al., 2018, Alg. 1): ``R(t) = τ·min(t / T_k, 1)``.

    The fraction of each mini-batch that is dropped grows linearly from 0 at epoch 0 to ``τ``
    at epoch ``T_k`` and stays there. ``T_k = 0`` means ``τ`` from the start (the
    Nested-Co-teaching fine-tuning runs use this, since they start from trained networks).
    """
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float, np.integer, np.floating)):
        raise TypeError(f"epoch must be a number, got {type(epoch).__name__}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    tau = _check_rate(tau, "tau")
    t_k = _check_int(t_k, "t_k", 0)
    if t_k == 0:
        return tau
    return tau * min(float(epoch) / t_k, 1.0)


def small_loss_selection(losses: torch.Tensor, forget_rate: float) -> torch.Tensor:
    """The small-loss trick: indices of the ``⌊(1 - R)·N⌋`` examples with the smallest loss,
    ordered from the smallest loss up (``R`` = ``forget_rate``; Co-teaching Alg. 1, step 4).

    losses: ``(N,)`` per-example losses. Returns ``(n,)`` int64 indices on ``losses``' device.
    """
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        raise ValueError(f"losses must be a 1-D tensor (N,), got {getattr(losses, 'shape', type(losses).__name__)}")
    r = _check_rate(forget_rate, "forget_rate")
    n = int((1.0 - r) * losses.shape[0])
    return torch.argsort(losses.detach(), stable=True)[:n]


def coteaching_losses(logits_a: torch.Tensor, logits_b: torch.Tensor, y: torch.Tensor, forget_rate: float,
                      rank_a: torch.Tensor | None = None, rank_b: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Co-teaching's cross update (Han et al., 2018, Alg. 1, steps 4–6).

    Each network ranks the batch by its own per-example loss (``rank_a``/``rank_b``, ``(B,)``;
    default: the cross-entropy of its ``logits``) and keeps its small-loss selection; network
    A is then trained on B's selection and B on A's. logits_*: ``(B, C)``; y: ``(B,)``.

    Returns ``(loss_a, loss_b, keep_a, keep_b)``: the two scalar losses (mean cross-entropy over
    the peer's selection) and the two selections (indices chosen *by* A and *by* B).
    """
    if logits_a.shape != logits_b.shape or logits_a.dim() != 2:
        raise ValueError(f"logits_a and logits_b must both be (B, C), got {tuple(logits_a.shape)} and "
                         f"{tuple(logits_b.shape)}")
    if not isinstance(y, torch.Tensor) or y.shape != logits_a.shape[:1]:
        raise ValueError(f"y must be a ({logits_a.shape[0]},) tensor, got {getattr(y, 'shape', type(y).__name__)}")
    if rank_a is None:
        rank_a = F.cross_entropy(logits_a.detach(), y, reduction="none")
    if rank_b is None:
        rank_b = F.cross_entropy(logits_b.detach(), y, reduction="none")
    keep_a = small_loss_selection(rank_a, forget_rate)
    keep_b = small_loss_selection(rank_b, forget_rate)
    if keep_a.numel() == 0:
        raise ValueError(f"forget_rate {forget_rate} keeps no example of a batch of {y.shape[0]}")
    loss_a = F.cross_entropy(logits_a[keep_b], y[keep_b])
    loss_b = F.cross_entropy(logits_b[keep_a], y[keep_a])
    return loss_a, loss_b, keep_a, keep_b


def ensemble_logits(*logits: torch.Tensor) -> torch.Tensor:
    """The mean of several networks' ``(B, C)`` logits: how the official Nested-Co-teaching code
    evaluates its pair of networks (so its reported accuracy is that of a two-network ensemble)."""
    if not logits:
        raise ValueError("give at least one logits tensor")
    if len({tuple(t.shape) for t in logits}) != 1:
        raise ValueError(f"all logits must have the same shape, got {[tuple(t.shape) for t in logits]}")
    return torch.stack(logits).mean(0)


@dataclass
class CoTeachingHistory:
    """Per epoch of :func:`train_coteaching`: the forget rate used, the mean losses of the two
    networks, the *label precision* of each selection (fraction of selected examples whose given
    label is the true one; only when ``clean_labels`` were given) and whatever ``eval_fn``
    returned (a dict of numbers per epoch)."""

    forget_rate: list[float] = field(default_factory=list)
    loss: list[tuple[float, float]] = field(default_factory=list)
    precision: list[tuple[float, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_coteaching(nets: tuple[nn.Module, nn.Module], optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
                     train_data: tuple[torch.Tensor, torch.Tensor], *, epochs: int, tau: float, t_k: int,
                     batch_size: int = 64, rank_in_eval: bool = True, clean_labels: torch.Tensor | None = None,
                     eval_fn: Callable[[int], dict[str, float]] | None = None,
                     generator: torch.Generator | None = None, progress: bool | None = None,
                     desc: str = "co-teaching") -> CoTeachingHistory:
    """Co-teaching (Han et al., 2018, Alg. 1) of two networks on ``train_data = (X, ỹ)``.

    For every mini-batch at epoch ``t`` (counted from 0): ``R = forget_rate(t, tau, t_k)``; each
    network ranks the batch by its per-example loss and keeps its small-loss selection
    (:func:`small_loss_selection`); each network takes one optimiser step on its *peer's*
    selection (:func:`coteaching_losses`). With ``rank_in_eval`` (the Nested-Co-teaching code's
    choice) the ranking losses come from an extra no-grad forward in eval mode, i.e. through the
    networks' nested dropout at its selected ``k`` (or no dropout at all); otherwise from the
    training forward itself (the original Co-teaching code). ``eval_fn(epoch)`` runs after
    every epoch (epoch 1, 2, ...) and its dict is stored.

    Differs from the official Nested-Co-teaching stage 2 (declared in chapter 3): there each batch
    is split in half, each network ranks its own half and trains on the peer's selection of the
    other half, with one nested ``k`` shared by both networks per step; here both networks rank
    the whole batch and each draws its own ``k``.
    """
    net_a, net_b = nets
    opt_a, opt_b = optimizers
    X, y = train_data
    epochs = _check_int(epochs, "epochs", 1)
    if clean_labels is not None and clean_labels.shape != y.shape:
        raise ValueError(f"clean_labels must have the shape of the training labels {tuple(y.shape)}")
    hist = CoTeachingHistory()
    steps = max(1, X.shape[0] // batch_size)
    bar = progress_bar(total=epochs * steps, desc=desc, enabled=progress)
    start = time.perf_counter()
    index = torch.arange(X.shape[0], device=X.device)
    for epoch in range(epochs):
        rate = forget_rate(epoch, tau, t_k)
        sums = np.zeros(4)
        count = 0
        for xb, ib in batches(X, index, batch_size, generator=generator):
            yb = y[ib]
            if rank_in_eval:
                with torch.no_grad():
                    net_a.eval(), net_b.eval()
                    rank_a = F.cross_entropy(net_a(xb), yb, reduction="none")
                    rank_b = F.cross_entropy(net_b(xb), yb, reduction="none")
                net_a.train(), net_b.train()
            else:
                rank_a = rank_b = None
            loss_a, loss_b, keep_a, keep_b = coteaching_losses(net_a(xb), net_b(xb), yb, rate, rank_a, rank_b)
            for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sums[:2] += (loss_a.item(), loss_b.item())
            if clean_labels is not None:
                ok = clean_labels[ib] == yb
                sums[2:] += (ok[keep_a].float().mean().item(), ok[keep_b].float().mean().item())
            count += 1
            bar.update(1)
        hist.forget_rate.append(rate)
        hist.loss.append((sums[0] / count, sums[1] / count))
        if clean_labels is not None:
            hist.precision.append((sums[2] / count, sums[3] / count))
        if eval_fn is not None:
            hist.evals.append(dict(eval_fn(epoch + 1)))
            net_a.train(), net_b.train()
    bar.close()
    hist.seconds = time.perf_counter() - start
    return hist

