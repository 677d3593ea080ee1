"""Neural Collapse in Deep Linear Networks (Dang, Tran, Osher, Tran-The, Ho & Nguyen, ICML 2023).

The **deep unconstrained-features model** (UFM): the features ``H`` of the ``N`` training
examples are free parameters, followed by ``M`` bias-free linear layers ``W_1, ..., W_M`` and the
mean squared error to the one-hot labels, with weight decay on every layer and on the features
(paper §3, eq. (2)). Rows are examples, as everywhere in this course: ``H: (N, d)``,
``Y: (N, K)``, ``W_1: (d_1, d)``, ..., ``W_M: (K, d_{M-1})`` (the ``nn.Linear`` convention), so
the network's outputs are ``H W_1^T ... W_M^T`` and the end-to-end classifier is the product
``W = W_M ... W_1: (K, d)``.

What the paper proves about the global minimisers, and what this module computes:

- balanced classes, no bias: the rows of ``W`` (and the class means) form an **orthogonal frame**,
  ``W W^T ∝ I`` (:func:`orthogonal_frame_error`); with an unregularised bias they form a simplex
  ETF instead (measure with :func:`layerwise.neural_collapse.etf_distance`);
- imbalanced classes, no bias (§4, the "general orthogonal frame"): still orthogonal, but with
  class-dependent lengths given in closed form by :func:`imbalanced_lengths` /
  :func:`imbalanced_geometry`: majority classes get longer classifier rows and shorter feature means;
  a class that is too small for the regularisation collapses to zero.

:class:`DeepUFM` and :func:`gradient_descent` train the model with full-batch gradient descent
(momentum), as the paper's synthetic experiments do, to compare with the closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["product", "deep_ufm_loss", "imbalanced_lengths", "imbalanced_geometry", "ImbalancedGeometry",
           "orthogonal_frame_error", "gram_error", "alignment_error", "DeepUFM", "gradient_descent", "linear_head"]


# ----------------------------------------------------------------------------- checks

def _check_matrix(name: str, x, dims: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dims or not x.is_floating_point():
        raise ValueError(f"{name} must be a {dims}-D floating-point tensor, got {x.dtype} of shape {tuple(x.shape)}")
    return x


def _check_lambda(name: str, lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(lam).__name__}")
    if not lam >= 0:
        raise ValueError(f"{name} must be >= 0, got {lam}")
    return float(lam)


def _check_Ws(Ws) -> list[torch.Tensor]:
    if isinstance(Ws, torch.Tensor) or not isinstance(Ws, (list, tuple)) or not Ws:
        raise TypeError("Ws must be a non-empty list of weight matrices [W_1, ..., W_M]")
    Ws = [_check_matrix(f"Ws[{i}]", W) for i, W in enumerate(Ws)]
    for i in range(1, len(Ws)):
        if Ws[i].shape[1] != Ws[i - 1].shape[0]:
            raise ValueError(f"Ws[{i}] has {Ws[i].shape[1]} columns but Ws[{i - 1}] has {Ws[i - 1].shape[0]} rows: "
                             "expected W_1: (d_1, d), W_2: (d_2, d_1), ..., W_M: (K, d_{M-1})")
    return Ws


# ----------------------------------------------------------------------------- the model (§3)

def product(Ws: Sequence[torch.Tensor]) -> torch.Tensor:
    """The end-to-end classifier ``W_M W_{M-1} ... W_1``: ``(K, d)`` for ``Ws = [W_1, ..., W_M]``."""
    Ws = _check_Ws(Ws)
    out = Ws[0]
    for W in Ws[1:]:
        out = W @ out
    return out


def deep_ufm_loss(H: torch.Tensor, Ws: Sequence[torch.Tensor], Y: torch.Tensor, lam_W: float,
                  lam_H: float) -> torch.Tensor:
    """The deep bias-free UFM objective with MSE (paper eq. (2)).

    ``1/(2N) ||H W_1^T ... W_M^T - Y||_F^2 + lam_W/2 sum_i ||W_i||_F^2 + lam_H/2 ||H||_F^2``

    H: ``(N, d)`` features; Ws: ``[W_1: (d_1, d), ..., W_M: (K, d_{M-1})]``; Y: ``(N, K)`` targets
    (one-hot rows). Returns a 0-dimensional tensor in H's dtype. Every layer is penalised
    separately (not the product).
    """
    H = _check_matrix("H", H)
    Ws = _check_Ws(Ws)
    Y = _check_matrix("Y", Y)
    lam_W, lam_H = _check_lambda("lam_W", lam_W), _check_lambda("lam_H", lam_H)
    if Ws[0].shape[1] != H.shape[1]:
        raise ValueError(f"W_1 has {Ws[0].shape[1]} columns but the features H have dimension {H.shape[1]}")
    if Y.shape != (H.shape[0], Ws[-1].shape[0]):
        raise ValueError(f"Y must be (N, K) = {(H.shape[0], Ws[-1].shape[0])}, got {tuple(Y.shape)}")
    out = H
    for W in Ws:
        out = out @ W.T
    n = H.shape[0]
    fit = (out - Y).pow(2).sum() / (2 * n)
    reg_w = sum(W.pow(2).sum() for W in Ws) * (lam_W / 2)
    return fit + reg_w + H.pow(2).sum() * (lam_H / 2)


# ----------------------------------------------------------------------------- closed form (§4)

def _class_sizes(n_k) -> torch.Tensor:
    if isinstance(n_k, torch.Tensor):
        if n_k.dim() != 1:
            raise ValueError(f"n_k must be a 1-D sequence of class sizes, got shape {tuple(n_k.shape)}")
        n = n_k.detach().double().cpu()
    elif isinstance(n_k, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in n_k):
            raise TypeError("n_k must hold numbers (the number of training examples of each class)")
        n = torch.tensor([float(v) for v in n_k], dtype=torch.float64)
    else:
        raise TypeError(f"n_k must be a list or 1-D tensor of class sizes, got {type(n_k).__name__}")
    if n.numel() < 1 or not bool((n > 0).all()):
        raise ValueError(f"n_k must be a non-empty list of positive class sizes, got {n.tolist()}")
    return n


def _check_depth(M) -> int:
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M (the number of linear layers) must be an int >= 1, got {M!r}")
    return M


def _largest_root(c: float, M: int) -> float:
    """Largest x > 0 with ``M x^(M-1) / (x^M + 1)^2 = c``, or 0 when there is none.

    The left side rises from 0 (M >= 2; from 1 when M = 1) to its maximum at
    ``x* = ((M-1)/(M+1))^(1/M)`` and then falls to 0, so the largest root lies on the falling
    branch, where bisection finds it to machine precision.
    """
    f = lambda x: M * x ** (M - 1) / (x ** M + 1) ** 2  # noqa: E731
    x_peak = ((M - 1) / (M + 1)) ** (1 / M)
    if c >= f(x_peak):
        return 0.0
    lo, hi = x_peak, max(1.0, x_peak)
    while f(hi) > c:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if f(mid) > c:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return (lo + hi) / 2


def _solve_x(n: torch.Tensor, lam_W: float, lam_H: float, M: int) -> torch.Tensor:
    """x_k of the theorem: for each class, the minimiser over x >= 0 of
    ``G(x) = n_k / (x^M + 1) + b x`` with ``b = M N (N lam_W^M lam_H)^(1/M)`` (class k's share
    of the objective, times 2N); its stationary points solve ``b / n_k = M x^(M-1) / (x^M + 1)^2``."""
    N = float(n.sum())
    b = M * N * (N * lam_W ** M * lam_H) ** (1.0 / M)
    xs = []
    for nk in n.tolist():
        x = _largest_root(b / nk, M) if b > 0 else math.inf
        if M > 1 and 0 < x < math.inf and nk / (x ** M + 1) + b * x >= nk:
            x = 0.0                      # x = 0 (the class collapses) is the lower of the two minima
        xs.append(x)
    return torch.tensor(xs, dtype=torch.float64)


def imbalanced_lengths(n_k, lam_W: float, lam_H: float, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths of the classifier rows and of the class means at the global minimum (paper §4, Thm 4.1).

    n_k: the ``K`` class sizes (list or 1-D tensor; ``N = sum n_k``); lam_W, lam_H > 0: weight decay
    on each layer and on the features; M: the number of linear layers. Returns two float64 ``(K,)``
    tensors: ``||w_k||``, the norms of the rows of ``W_M ... W_1``, and ``||h_k||``, the norms of the
    class means of the features ``H``:

    - ``b = M N (N lam_W^M lam_H)^(1/M)``; ``x_k`` = the largest root of
      ``b / n_k = M x^(M-1) / (x^M + 1)^2``, or 0 when there is none or when ``x = 0`` gives the lower
      objective ``n_k / (x^M + 1) + b x`` (then class k collapses: both lengths are 0);
    - ``s_k^(2M) = N lam_H x_k^M``; ``||w_k|| = s_k^M`` and ``||h_k|| = s_k^M / (s_k^(2M) + N lam_H)``.

    Rows of different classes are orthogonal, so ``W W^T = diag(||w_k||^2)``.
    """
    n = _class_sizes(n_k)
    lam_W, lam_H = _check_lambda("lam_W", lam_W), _check_lambda("lam_H", lam_H)
    M = _check_depth(M)
    if lam_W <= 0 or lam_H <= 0:
        raise ValueError(f"lam_W and lam_H must be > 0 for a finite minimiser, got {lam_W}, {lam_H}")
    N = float(n.sum())
    x = _solve_x(n, lam_W, lam_H, M)
    s2M = N * lam_H * x ** M                   # s_k^(2M) = ||w_k||^2
    w_len = s2M.sqrt()
    h_len = w_len / (s2M + N * lam_H)
    return w_len, h_len


@dataclass
class ImbalancedGeometry:
    """The closed-form minimiser of §4 for one set of class sizes (all float64).

    ``w_len``/``h_len``: ``(K,)`` lengths of the classifier rows and class means; ``WWt``:
    ``(K, K)`` Gram of the rows of ``W_M ... W_1``; ``HtH``: Gram of the class means;
    ``WH``: ``(K, K)`` matrix of scores ``w_k . h_j`` (diagonal); ``fit``: ``w_k . h_k`` per class.
    """

    w_len: torch.Tensor
    h_len: torch.Tensor
    WWt: torch.Tensor
    HtH: torch.Tensor
    WH: torch.Tensor
    fit: torch.Tensor


def imbalanced_geometry(n_k, lam_W: float, lam_H: float, M: int) -> ImbalancedGeometry:
    """:func:`imbalanced_lengths` laid out as the Gram matrices the theorem describes."""
    w, h = imbalanced_lengths(n_k, lam_W, lam_H, M)
    return ImbalancedGeometry(w_len=w, h_len=h, WWt=torch.diag(w ** 2), HtH=torch.diag(h ** 2),
                              WH=torch.diag(w * h), fit=w * h)


# ----------------------------------------------------------------------------- measuring the frame

def gram_error(A: torch.Tensor, target: torch.Tensor) -> float:
    """``|| A A^T / ||A A^T||_F - T / ||T||_F ||_F`` for rows ``A: (K, d)`` and a target Gram ``T: (K, K)``.

    0 exactly when the rows of A have the target's geometry up to scale and rotation; at most 2.
    """
    A = _check_matrix("A", A).detach().double()
    T = _check_matrix("target", target).detach().double().to(A.device)
    if T.shape != (A.shape[0], A.shape[0]):
        raise ValueError(f"target must be ({A.shape[0]}, {A.shape[0]}) to match A's rows, got {tuple(T.shape)}")
    G = A @ A.T
    g, t = G.norm(), T.norm()
    if g == 0 or t == 0:
        raise ValueError("A and target must be nonzero")
    return float((G / g - T / t).norm())


def orthogonal_frame_error(W: torch.Tensor) -> float:
    """Distance of the rows of ``W: (K, d)`` to an orthogonal frame (balanced bias-free optimum, §3).

    ``|| W W^T / ||W W^T||_F - I_K / sqrt(K) ||_F``: 0 exactly when the K rows are orthogonal
    and of equal length (any scale, any rotation); works for class means as well (rows = classes).
    Returns a Python float.
    """
    W = _check_matrix("W", W).detach().double()
    G = W @ W.T
    g = G.norm()
    if g == 0:
        raise ValueError("W must be nonzero")
    K = W.shape[0]
    return float((G / g - torch.eye(K, dtype=G.dtype, device=G.device) / math.sqrt(K)).norm())


def alignment_error(W: torch.Tensor, means: torch.Tensor) -> float:
    """Self-duality without centring (bias-free NC3): ``|| W/||W||_F - Mu/||Mu||_F ||_F`` for the
    classifier ``W: (K, d)`` and the (uncentred) class means ``Mu: (K, d)``. 0 when each row of W
    points along its class mean with a common scale (balanced classes). Returns a Python float."""
    W = _check_matrix("W", W).detach().double()
    Mu = _check_matrix("means", means).detach().double().to(W.device)
    if Mu.shape != W.shape:
        raise ValueError(f"means must have W's shape {tuple(W.shape)}, got {tuple(Mu.shape)}")
    return float((W / W.norm() - Mu / Mu.norm()).norm())


# ----------------------------------------------------------------------------- training the UFM

class DeepUFM(nn.Module):
    """Free features ``H: (N, d)`` followed by ``M`` linear layers (the last maps to K classes).

    ``widths``: hidden widths ``[d_1, ..., d_{M-1}]`` (default: all ``d``); ``bias``: an
    unregularised bias on the last layer (the paper's "with bias" case). Initialisation as in the
    official experiments: every entry ~ N(0, init_std^2). ``forward()`` returns ``(N, K)`` outputs.
    """

    def __init__(self, num_samples: int, dim: int, num_classes: int, depth: int = 1,
                 widths: Sequence[int] | None = None, *, bias: bool = False, init_std: float = 0.1,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        depth = _check_depth(depth)
        for name, v in (("num_samples", num_samples), ("dim", dim), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        widths = [dim] * (depth - 1) if widths is None else list(widths)
        if len(widths) != depth - 1:
            raise ValueError(f"widths must list depth - 1 = {depth - 1} hidden widths, got {widths}")
        sizes = [dim, *widths, num_classes]
        rnd = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype) * init_std  # noqa: E731
        self.H = nn.Parameter(rnd(num_samples, dim))
        self.Ws = nn.ParameterList([nn.Parameter(rnd(sizes[i + 1], sizes[i])) for i in range(depth)])
        self.b = nn.Parameter(torch.zeros(num_classes, dtype=dtype)) if bias else None

    @property
    def depth(self) -> int:
        return len(self.Ws)

    def classifier(self) -> torch.Tensor:
        """The end-to-end classifier ``W_M ... W_1: (K, d)`` (detached)."""
        return product([W.detach() for W in self.Ws])

    def forward(self) -> torch.Tensor:
        out = self.H
        for W in self.Ws:
            out = out @ W.T
        return out if self.b is None else out + self.b

    def loss(self, Y: torch.Tensor, lam_W: float, lam_H: float, kind: str = "mse") -> torch.Tensor:
        """The training objective: :func:`deep_ufm_loss` (``kind="mse"``, the bias folded into the
        targets) or cross-entropy to the labels ``Y.argmax(1)`` plus the same weight decay (``"ce"``)."""
        if kind == "mse":
            target = Y if self.b is None else Y - self.b
            return deep_ufm_loss(self.H, list(self.Ws), target, lam_W, lam_H)
        if kind == "ce":
            reg = (lam_W / 2) * sum(W.pow(2).sum() for W in self.Ws) + (lam_H / 2) * self.H.pow(2).sum()
            return F.cross_entropy(self(), Y.argmax(1)) + reg
        raise ValueError(f"kind must be 'mse' or 'ce', got {kind!r}")


def gradient_descent(model: DeepUFM, Y: torch.Tensor, lam_W: float, lam_H: float, *, steps: int,
                     lr: float = 0.1, momentum: float = 0.9, kind: str = "mse", record_every: int = 0,
                     measure: Callable[[DeepUFM], dict[str, float]] | None = None) -> list[dict[str, float]]:
    """Full-batch gradient descent with heavy-ball momentum on ``model.loss`` (as the official
    experiments: SGD with momentum 0.9 on all N examples at every step).

    Returns records ``{"step", "loss", **measure(model)}`` every ``record_every`` steps (if > 0)
    and after the last step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(Y, torch.Tensor) or Y.shape != (model.H.shape[0], model.Ws[-1].shape[0]):
        raise ValueError(f"Y must be (N, K) = {(model.H.shape[0], model.Ws[-1].shape[0])}, "
                         f"got {getattr(Y, 'shape', type(Y).__name__)}")
    Y = Y.to(model.H.dtype)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    trace: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(Y, lam_W, lam_H, kind)
        loss.backward()
        opt.step()
        if (record_every and step % record_every == 0) or step == steps:
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"the loss diverged at step {step}; lower lr")
            rec = {"step": step, "loss": loss.item()}
            if measure is not None:
                with torch.no_grad():
                    rec.update(measure(model))
            trace.append(rec)
    return trace


def linear_head(in_features: int, num_classes: int, depth: int, width: int | None = None) -> nn.Sequential:
    """``depth`` bias-free linear layers ``in -> width -> ... -> num_classes``: the deep linear
    classifier the paper puts on top of a real backbone (§5)."""
    depth = _check_depth(depth)
    width = width or in_features
    sizes = [in_features] + [width] * (depth - 1) + [num_classes]
    return nn.Sequential(*[nn.Linear(sizes[i], sizes[i + 1], bias=False) for i in range(depth)])
