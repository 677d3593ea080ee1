"""Maestro: low-rank ordered decomposition, LoD (Horváth, Laskaridis, Rajput & Wang, ICML 2024,
arXiv:2308.14929).

Every layer's weight is kept in factored form ``W = U Vᵀ`` with ``U: (out, r)`` and
``V: (in, r)``: component ``i`` is the rank-one map ``u_i v_iᵀ`` (column ``i`` of each factor).
Training imposes an *order* on the components:

- **ordered dropout over the rank** (the paper's LoD): in each step one layer and a rank ``k`` are
  sampled and that layer keeps only its first ``k`` components (:func:`ordered_dropout_linear`,
  :func:`sample_layer_and_rank`); the truncated network learns to match the full network's
  softmax (self-distillation, :func:`self_distillation_loss`) while the full network learns
  from the labels;
- **hierarchical group lasso**: ``Σ_b ‖U[:, b:]‖_F + ‖V[:, b:]‖_F`` pushes whole tails of
  components to zero (:func:`hierarchical_group_lasso`);
- **progressive shrinking**: after each epoch, components whose importance fell below a
  threshold are removed for good (:func:`tail_importance`, :func:`progressive_shrinking`).

The importance of component ``i`` is ``‖u_i‖ ‖v_i‖`` (:func:`component_importance`); for a linear
map trained on whitened inputs these converge to its singular values, and for a linear
autoencoder the kept subspaces are PCA's (the paper's two theorems on linear models).

:class:`LowRankLinear` and :class:`LowRankConv2d` are the layers; a network made of them is
trained with :class:`LoDNetwork` and :class:`MaestroLoss` and evaluated at any rank with
:func:`truncate`. Details taken from the authors' code (SamuelHorvath/Maestro-LoD): factors are
initialised from the SVD of a standard dense initialisation, split as ``U√S`` and ``V√S``; the
sampler is uniform over all (layer, rank) pairs; shrinking thresholds the hierarchical
(tail) importance with ``ε = 1e-5``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise.core.checks import float_tensor

__all__ = [
    "ordered_dropout_linear", "hierarchical_group_lasso", "component_importance", "tail_importance",
    "svd_factors", "sample_layer_and_rank", "self_distillation_loss",
    "LowRankLinear", "LowRankConv2d", "low_rank_layers", "ranks_at_fraction", "truncate",
    "group_lasso_penalty", "progressive_shrinking", "refactor_by_svd", "LoDNetwork", "MaestroLoss",
    "fit_linear",
]


# ----------------------------------------------------------------------------- checks

def _matrix(name: str, a: object) -> torch.Tensor:
    return float_tensor(a, name, 2, "(rows, r components as columns)")


def _factors(U: object, V: object) -> tuple[torch.Tensor, torch.Tensor]:
    U, V = _matrix("U", U), _matrix("V", V)
    if U.shape[1] != V.shape[1]:
        raise ValueError(f"U {tuple(U.shape)} and V {tuple(V.shape)} must have the same number of columns r "
                         "(one per component)")
    return U, V


def _rank_arg(name: str, k: object, r: int) -> int:
    if isinstance(k, torch.Tensor) and k.numel() == 1 and not k.is_floating_point():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) and not hasattr(k, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    if not 0 <= k <= r:
        raise ValueError(f"{name} must be in [0, {r}] (the number of components kept), got {k}")
    return k


def _tail_norms(A: torch.Tensor) -> torch.Tensor:
    """``out[b] = ‖A[:, b:]‖_F`` for ``A: (n, r)``; ``(r,)``. The square root is guarded so that
    an all-zero tail has value 0 and gradient 0 (a subgradient) instead of NaN."""
    tails = A.pow(2).sum(0).flip(0).cumsum(0).flip(0)
    positive = tails > 0
    safe = torch.where(positive, tails, torch.ones_like(tails))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(tails))


# ----------------------------------------------------------------------------- the paper's functions

def ordered_dropout_linear(x: torch.Tensor, U: torch.Tensor, V: torch.Tensor, k: int) -> torch.Tensor:
    """The low-rank linear map truncated to its first ``k`` components (LoD's forward pass).

    x: ``(..., in)``; U: ``(out, r)``; V: ``(in, r)``; ``0 <= k <= r``. Returns ``(..., out)``:
    ``x V[:, :k] U[:, :k]ᵀ = Σ_{i<k} (x · v_i) u_iᵀ``, computed through the ``k``-dimensional
    code, so the cost grows with ``k``. ``k = 0`` gives zeros. No bias (the layers add it).
    """
    U, V = _factors(U, V)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != V.shape[0]:
        raise ValueError(f"x must have shape (..., in) with in = {V.shape[0]} (the rows of V), got {tuple(x.shape)}")
    k = _rank_arg("k", k, U.shape[1])
    return (x @ V[:, :k]) @ U[:, :k].T


def hierarchical_group_lasso(V: torch.Tensor) -> torch.Tensor:
    """Hierarchical group lasso of one factor (the paper's regulariser): ``Σ_{b=1}^{r} ‖V[:, b:]‖_F``.

    V: ``(n, r)``, components as columns (for a convolution, the flattened kernel ``(in·kh·kw, r)``).
    Returns a 0-dim tensor of V's dtype: the sum over ``b`` of the Frobenius norm of the tail of
    components ``b, b+1, …, r``. Component ``j`` sits in ``j`` of the groups, so late components
    are penalised more, and a tail can only vanish as a whole. The penalty on a layer is this
    applied to ``U`` plus this applied to ``V``.
    """
    V = _matrix("V", V)
    return _tail_norms(V).sum()


def component_importance(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Importance of each component (the paper's ranking of components): ``‖u_i‖₂ ‖v_i‖₂``, the norm of the
    rank-one map ``u_i v_iᵀ``.

    U: ``(out, r)``; V: ``(in, r)``. Returns ``(r,)`` in U's dtype. When the columns of U and of V
    are orthogonal these are the singular values of ``U Vᵀ``; LoD training drives them there.
    """
    U, V = _factors(U, V)
    return U.norm(dim=0) * V.norm(dim=0)


def tail_importance(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Hierarchical importance used for progressive shrinking by the authors' training script:
    ``‖U[:, i:]‖_F ‖V[:, i:]‖_F``, ``(r,)``. It never increases with ``i``, so thresholding it
    always removes a *tail* of components, which keeps every truncation a prefix."""
    U, V = _factors(U, V)
    return _tail_norms(U) * _tail_norms(V)


def svd_factors(weight: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors of a dense ``weight: (out, in)`` from its SVD: ``U = P √S``, ``V = Q √S``
    (``weight = P S Qᵀ``), keeping the ``rank`` leading components (default ``min(out, in)``).
    Returns ``U: (out, rank)``, ``V: (in, rank)`` with ``U Vᵀ`` the best rank-``rank`` approximation."""
    weight = _matrix("weight", weight)
    full = min(weight.shape)
    rank = full if rank is None else _rank_arg("rank", rank, full)
    P, S, Qh = torch.linalg.svd(weight.detach(), full_matrices=False)
    root = S[:rank].sqrt()
    return P[:, :rank] * root, Qh[:rank].T * root


def sample_layer_and_rank(ranks: Sequence[int], generator: torch.Generator | None = None) -> tuple[int, int]:
    """Draw the layer to truncate and its rank for one training step (the authors' per-layer
    sampler): uniform over all pairs ``(layer l, k)`` with ``1 <= k <= ranks[l]``, so a layer is
    picked in proportion to its rank. Returns ``(l, k)``. (The authors shuffle the list of pairs
    once per pass; drawing independently has the same distribution per step.)"""
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or not ranks:
        raise ValueError(f"ranks must be a non-empty sequence of ints (each layer's rank), got {ranks!r}")
    for i, r in enumerate(ranks):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"ranks[{i}] must be an int >= 0, got {r!r}")
    total = sum(ranks)
    if total == 0:
        raise ValueError("ranks are all 0: no layer has a component left to sample")
    j = int(torch.randint(total, (1,), generator=generator))
    for layer, r in enumerate(ranks):
        if j < r:
            return layer, j + 1
        j -= r
    raise AssertionError("unreachable")  # pragma: no cover


def self_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the truncated network's logits against the full network's softmax,
    with no gradient into the teacher (the paper's self-distillation). ``(B, C)`` each; returns a scalar."""
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must both be (B, C)")
    return F.cross_entropy(student_logits, teacher_logits.detach().softmax(-1))


# ----------------------------------------------------------------------------- layers

def _check_size(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class _LowRank(nn.Module):
    """Shared state of a factored layer: ``U: (out, r_max)``, ``V: (fan_in, r_max)``, the number of
    components still alive (``rank``, shrinks) and a temporary truncation (``active``)."""

    def __init__(self, fan_in: int, out_features: int, rank: int | None, bias: bool):
        super().__init__()
        full = min(fan_in, out_features)
        rank = full if rank is None else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ValueError(f"rank must be an int in [1, {full}] (min of fan-in and outputs), got {rank!r}")
        self.max_rank = rank
        self.rank = rank                   # components kept after progressive shrinking
        self.active: int | None = None     # set by `truncate`: use only the first `active` components
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.V = nn.Parameter(torch.empty(fan_in, rank))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def _init_from(self, dense: torch.Tensor, bias: torch.Tensor | None) -> None:
        U, V = svd_factors(dense, self.max_rank)
        with torch.no_grad():
            self.U.copy_(U)
            self.V.copy_(V)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)

    @property
    def k(self) -> int:
        """Components used by the next forward pass: ``min(active, rank)``."""
        return self.rank if self.active is None else min(self.active, self.rank)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The live factors ``U[:, :rank]``, ``V[:, :rank]``."""
        return self.U[:, :self.rank], self.V[:, :self.rank]

    def group_lasso(self) -> torch.Tensor:
        """Hierarchical group lasso of both live factors: ``ψ(U) + ψ(V)``."""
        U, V = self.factors()
        return hierarchical_group_lasso(U) + hierarchical_group_lasso(V)

    @torch.no_grad()
    def importance(self) -> torch.Tensor:
        """``(max_rank,)`` component importances ``‖u_i‖‖v_i‖``; removed components read 0."""
        imp = torch.zeros(self.max_rank, dtype=self.U.dtype, device=self.U.device)
        imp[:self.rank] = component_importance(*self.factors())
        return imp

    @torch.no_grad()
    def shrink(self, threshold: float = 1e-5) -> int:
        """Progressive shrinking: drop the tail of components whose hierarchical importance
        (:func:`tail_importance`) is below ``threshold``; their weights are zeroed. Returns the new rank."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        keep = int((tail_importance(*self.factors()) >= threshold).sum())
        self.U[:, keep:].zero_()
        self.V[:, keep:].zero_()
        self.rank = keep
        return keep

    def num_params(self, k: int | None = None) -> int:
        """Weights (and bias) used at rank ``k`` (default: the current rank)."""
        k = self.rank if k is None else _rank_arg("k", k, self.max_rank)
        return k * (self.U.shape[0] + self.V.shape[0]) + (0 if self.bias is None else self.bias.numel())


class LowRankLinear(_LowRank):
    """A linear layer ``y = x V Uᵀ + b`` factored as ``W = U Vᵀ`` (the paper's decomposed layer).

    ``rank`` defaults to ``min(in, out)`` (no loss of expressivity). The factors start as the
    balanced SVD factors of ``nn.Linear``'s default initialisation, so the layer starts as the
    same function as a dense one (truncated to ``rank``). x: ``(..., in)`` → ``(..., out)``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int | None = None, bias: bool = True):
        _check_size("in_features", in_features)
        _check_size("out_features", out_features)
        super().__init__(in_features, out_features, rank, bias)
        self.in_features, self.out_features = in_features, out_features
        dense = nn.Linear(in_features, out_features, bias=bias)
        self._init_from(dense.weight, dense.bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int | None = None) -> "LowRankLinear":
        """Factor a trained ``nn.Linear`` by SVD (keeping ``rank`` components)."""
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        new = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
        new._init_from(layer.weight, layer.bias)
        return new.to(layer.weight.device, layer.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight ``U[:, :k] V[:, :k]ᵀ``: ``(out, in)``."""
        k = self.k
        return self.U[:, :k] @ self.V[:, :k].T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ordered_dropout_linear(x, self.U, self.V, self.k)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}/{self.max_rank}, bias={self.bias is not None}")


class LowRankConv2d(_LowRank):
    """A convolution factored as a ``k×k`` convolution into ``r`` channels (the rows of ``Vᵀ``,
    each a flattened ``(in, kh, kw)`` kernel) followed by a ``1×1`` convolution (``U``) to the
    outputs, as in the authors' code. ``V: (in·kh·kw, r)``, ``U: (out, r)``; ordered dropout keeps
    the first ``k`` intermediate channels. ``rank`` defaults to ``min(out, in·kh·kw)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int = 0, rank: int | None = None, bias: bool = True):
        _check_size("in_channels", in_channels)
        _check_size("out_channels", out_channels)
        dense = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        super().__init__(dense.weight[0].numel(), out_channels, rank, bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = dense.kernel_size, dense.stride, dense.padding
        self._init_from(dense.weight.reshape(out_channels, -1), dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        k = self.k
        if k == 0:  # no component left: the layer outputs its bias
            size = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in
                    zip(x.shape[2:], self.padding, self.kernel_size, self.stride)]
            y = x.new_zeros(x.shape[0], self.out_channels, *size)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        kernels = self.V[:, :k].T.reshape(k, self.in_channels, *self.kernel_size)
        h = F.conv2d(x, kernels, None, self.stride, self.padding)
        return F.conv2d(h, self.U[:, :k, None, None], self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, rank={self.rank}/{self.max_rank}, bias={self.bias is not None}")


# ----------------------------------------------------------------------------- whole networks

def low_rank_layers(model: nn.Module) -> list[_LowRank]:
    """The factored layers of ``model``, in the order of ``model.modules()``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, _LowRank)]


def ranks_at_fraction(model: nn.Module, fraction: float) -> list[int]:
    """Per-layer ranks ``ceil(fraction · max_rank)`` (capped by the current rank), as the authors
    evaluate a network "at width p"."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return [min(l.rank, max(1, math.ceil(fraction * l.max_rank - 1e-9))) for l in low_rank_layers(model)]


@contextlib.contextmanager
def truncate(model: nn.Module, ranks: int | Sequence[int] | Mapping[int, int]) -> Iterator[nn.Module]:
    """Run ``model`` with its factored layers truncated, then restore it::

        with truncate(net, 4): ...             # every layer keeps at most 4 components
        with truncate(net, [8, 16, 10]): ...   # one rank per layer
        with truncate(net, {1: 3}): ...        # only layer 1 is truncated (a training step's sample)
    """
    layers = low_rank_layers(model)
    if not layers:
        raise ValueError("model has no LowRankLinear / LowRankConv2d layers to truncate")
    if isinstance(ranks, Mapping):
        plan = dict(ranks)
        bad = [i for i in plan if not isinstance(i, int) or not 0 <= i < len(layers)]
        if bad:
            raise ValueError(f"ranks has layer indices {bad}; the model has {len(layers)} factored layers")
    elif isinstance(ranks, Sequence) and not isinstance(ranks, (str, bytes)):
        if len(ranks) != len(layers):
            raise ValueError(f"ranks has {len(ranks)} entries but the model has {len(layers)} factored layers")
        plan = dict(enumerate(ranks))
    else:
        plan = {i: ranks for i in range(len(layers))}
    for i, k in plan.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"the rank for layer {i} must be an int >= 0, got {k!r}")
    saved = [l.active for l in layers]
    try:
        for i, k in plan.items():
            layers[i].active = k
        yield model
    finally:
        for l, a in zip(layers, saved):
            l.active = a


def group_lasso_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over factored layers of their hierarchical group lasso (``ψ(U) + ψ(V)`` each)."""
    layers = low_rank_layers(model)
    if not layers:
        raise ValueError("model has no factored layers")
    return torch.stack([l.group_lasso() for l in layers]).sum()


@torch.no_grad()
def refactor_by_svd(model: nn.Module) -> nn.Module:
    """Re-factor every layer's current weight ``U Vᵀ`` by its SVD, in place, so that component
    ``i`` is the ``i``-th singular pair: truncating then gives each layer's best low-rank
    approximation (the "train, then SVD" baseline). Returns ``model``."""
    for layer in low_rank_layers(model):
        U, V = layer.factors()
        P, Q = svd_factors(U @ V.T, layer.rank)
        layer.U[:, :layer.rank] = P
        layer.V[:, :layer.rank] = Q
    return model


def progressive_shrinking(model: nn.Module, threshold: float = 1e-5) -> list[int]:
    """Shrink every factored layer (:meth:`LowRankLinear.shrink`); returns the new ranks."""
    return [l.shrink(threshold) for l in low_rank_layers(model)]


class LoDNetwork(nn.Module):
    """Wraps a network of factored layers for LoD training (one sampled layer per step).

    Training mode: ``forward(x)`` returns ``(2, B, C)``: the full network's logits and the logits
    with one sampled layer truncated to a sampled rank (:func:`sample_layer_and_rank`, from
    ``generator``). Evaluation mode: the full network's ``(B, C)`` logits; use :func:`truncate`
    to evaluate at lower ranks. Train it with :class:`MaestroLoss`.
    """

    def __init__(self, net: nn.Module, generator: torch.Generator | None = None, sampler: str = "one_layer"):
        super().__init__()
        self.net = net
        if not low_rank_layers(net):
            raise ValueError("net has no LowRankLinear / LowRankConv2d layers")
        if sampler not in ("one_layer", "all_layers"):
            raise ValueError(f"sampler must be 'one_layer' (the paper's) or 'all_layers', got {sampler!r}")
        self.generator, self.sampler = generator, sampler

    def sample(self) -> dict[int, int]:
        """The truncation of one step: ``{layer: k}``. ``one_layer``: one (layer, rank) pair drawn
        by :func:`sample_layer_and_rank`; ``all_layers`` (the authors' "across layers" sampler):
        every layer draws its own rank uniformly from ``1 … rank``."""
        ranks = [l.rank for l in low_rank_layers(self.net)]
        if self.sampler == "one_layer":
            layer, k = sample_layer_and_rank(ranks, self.generator)
            return {layer: k}
        return {i: int(torch.randint(1, r + 1, (1,), generator=self.generator))
                for i, r in enumerate(ranks) if r > 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.net(x)
        if not self.training:
            return full
        with truncate(self.net, self.sample()):
            part = self.net(x)
        return torch.stack([full, part])


class MaestroLoss:
    """The training objective of the authors' code: ``CE(full, y) + CE(truncated, softmax(full))
    + λ · Σ_layers hierarchical group lasso``, for the ``(2, B, C)`` output of :class:`LoDNetwork`.

    ``distill=False`` trains the truncated network on the labels instead; ``(B, C)`` logits
    (evaluation) give plain cross-entropy. The parts of the last call are in ``last`` (detached tensors).
    """

    def __init__(self, model: nn.Module, lam: float = 0.0, distill: bool = True):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
            raise ValueError(f"lam (the group lasso weight) must be a number >= 0, got {lam!r}")
        self.model, self.lam, self.distill = model, float(lam), bool(distill)
        self.last: dict[str, torch.Tensor] = {}

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.dim() == 2:
            return F.cross_entropy(out, y)
        if out.dim() != 3 or out.shape[0] != 2:
            raise ValueError(f"out must be the (2, B, C) output of LoDNetwork in training, got {tuple(out.shape)}")
        full, part = out[0], out[1]
        ce = F.cross_entropy(full, y)
        sd = self_distillation_loss(part, full) if self.distill else F.cross_entropy(part, y)
        loss = ce + sd
        gl = group_lasso_penalty(self.model) if self.lam > 0 else torch.zeros((), device=out.device)
        self.last = {"ce": ce.detach(), "distill": sd.detach(), "group_lasso": gl.detach()}  # no device sync here
        return loss + self.lam * gl


# ----------------------------------------------------------------------------- the linear experiments

def fit_linear(X: torch.Tensor, Y: torch.Tensor, rank: int | None = None, *, steps: int, lr: float,
               lam: float = 0.0, ordered: bool = True, optimizer: str = "sgd", batch_size: int | None = None,
               shrink_every: int = 0, threshold: float = 1e-5, record_every: int = 10,
               generator: torch.Generator | None = None) -> tuple[LowRankLinear, torch.Tensor]:
    """Fit ``Y ≈ X V Uᵀ`` with one :class:`LowRankLinear` (no bias) by LoD: the paper's linear
    experiments (SVD of a map on whitened inputs; PCA with ``Y = X``, a linear autoencoder).

    X: ``(N, in)``, Y: ``(N, out)``. Each step draws ``k`` uniformly from ``1 … rank`` (``ordered``;
    else ``k = rank``, a plain factored model), takes the mean squared error of the rank-``k`` map
    on a mini-batch (all rows when ``batch_size`` is None) plus ``lam`` times the hierarchical
    group lasso, and updates with SGD or Adam. Every ``shrink_every`` steps (0: never) the layer
    is shrunk at ``threshold``. Returns the layer and the importances recorded every
    ``record_every`` steps, ``(T, max_rank)``.
    """
    for name, a in (("X", X), ("Y", Y)):
        _matrix(name, a)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    _check_size("steps", steps)
    _check_size("record_every", record_every)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if isinstance(shrink_every, bool) or not isinstance(shrink_every, int) or shrink_every < 0:
        raise ValueError(f"shrink_every must be an int >= 0, got {shrink_every!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        layer = LowRankLinear(X.shape[1], Y.shape[1], rank, bias=False).to(X.device, X.dtype)
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(layer.parameters(), lr=lr)
    record = []
    for step in range(steps):
        k = int(torch.randint(1, layer.rank + 1, (1,), generator=g)) if ordered and layer.rank > 0 else layer.rank
        if batch_size is None:
            xb, yb = X, Y
        else:
            idx = torch.randint(X.shape[0], (batch_size,), generator=g).to(X.device)
            xb, yb = X[idx], Y[idx]
        with truncate(layer, k):
            loss = F.mse_loss(layer(xb), yb)
        if lam > 0:
            loss = loss + lam * layer.group_lasso()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if shrink_every and (step + 1) % shrink_every == 0:
            layer.shrink(threshold)
        if step % record_every == 0 or step == steps - 1:
            record.append(layer.importance().cpu())
    return layer, torch.stack(record)
