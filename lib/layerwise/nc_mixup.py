"""Pushing Boundaries: Mixup's Influence on Neural Collapse (Fisher, Meng & Papyan, ICLR 2024).

Train with mixup (:class:`layerwise.core.augment.Mixup`, cross-entropy against the mixed label)
and look at the last-layer features of *mixed* training inputs ``x = λ x_a + (1 − λ) x_b``:

- same-class mixes (``y_a = y_b``) line up with the classifier row of their class
  (:func:`alignment_cosines`: ``cos(h − μ_G, w_y)``);
- cross-class mixes do not sit on the segment between the two class means; they run along the
  decision boundary between the two classes, their two logits on top
  (:func:`mixed_pair_top2`) and the probability of class ``a`` moving with ``λ``;
- the paper's pictures (§3, Figs. 1–3) show three classes at a time: features projected on the
  2-D span of the three centred classifier rows, rotated so that the rows land on the vertices of
  a fixed equilateral triangle (:func:`triangle_projection`);
- §4 relates the geometry to calibration, measured by the expected calibration error
  (:func:`expected_calibration_error`, :func:`reliability_curve`; Guo et al., 2017);
- the paper's theory (its unconstrained features model with a fixed simplex-ETF classifier) in
  our numerical form: :func:`ufm_mixup_loss` and its exact minimiser :func:`ufm_mixup_features`,
  the feature a free (unconstrained) feature vector takes for one mixed target.

:func:`mix_dataset` makes the mixed inputs with the shared ``core.augment.mixup`` (one ``λ`` per
batch, as in training). Everything else is deterministic given its arguments.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from layerwise.core.augment import mixup
from layerwise.core.checks import float_tensor

__all__ = ["triangle_basis", "triangle_projection", "triangle_lift", "alignment_cosines", "mixed_pair_top2",
           "expected_calibration_error", "reliability_curve", "MixedSet", "mix_dataset",
           "ufm_mixup_loss", "ufm_mixup_features"]

# The 2 × 3 map from the sum-zero plane of R^3 to the plane: an isometry that puts class 0 at
# the lower right, class 1 at the lower left and class 2 at the top of the triangle.
_TRIANGLE = torch.tensor([[0.5, -0.5, 0.0], [0.0, 0.0, 0.75 ** 0.5]], dtype=torch.float64) * 2 ** 0.5 \
    @ (torch.eye(3, dtype=torch.float64) - 1.0 / 3)


def _check_matrix(x, name: str, what: str) -> torch.Tensor:
    return float_tensor(x, name, 2, what)


def _check_labels(y, n: int, name: str = "y") -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.shape != (n,):
        raise ValueError(f"{name} must be a ({n},) tensor of class indices, got {getattr(y, 'shape', type(y).__name__)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    return y


# ----------------------------------------------------------------------------- the triangle plots

def triangle_basis(W3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame of the paper's triangle plots (§3) for three classifier rows ``W3: (3, d)``.

    Centre the rows, ``M = W3 − w̄`` with ``w̄`` the mean row; ``M = U S Vᵀ`` (rank 2) and its
    orthogonal (polar) factor ``Q = U Vᵀ: (3, d)``; a fixed isometry ``A: (2, 3)`` of the sum-zero
    plane onto the plane. Returns ``(P, origin)`` with ``P = A Q: (2, d)`` (orthonormal rows
    spanning the centred rows) and ``origin = w̄: (d,)``; a feature ``h`` maps to ``P (h − w̄)``.
    The polar factor is unique even when singular values repeat (a simplex ETF), so the picture
    does not depend on the SVD's sign or basis choices.
    """
    W3 = _check_matrix(W3, "W3", "of three classifier rows (3, d)")
    if W3.shape[0] != 3 or W3.shape[1] < 2:
        raise ValueError(f"W3 must hold three classifier rows of dimension d >= 2, shape (3, d); got {tuple(W3.shape)}")
    origin = W3.mean(0)
    M = W3 - origin
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    if not S[1] > S[0] * 1e-6:
        raise ValueError("W3's three rows are (nearly) collinear: their centred rows span less than a plane")
    Q = U[:, :2] @ Vh[:2]                                   # (3, d); the third singular value is 0
    return _TRIANGLE.to(W3.dtype).to(W3.device) @ Q, origin


def triangle_projection(H: torch.Tensor, W3: torch.Tensor) -> torch.Tensor:
    """2-D coordinates of features ``H: (N, d)`` in the triangle of classifier rows ``W3: (3, d)``.

    ``X = (H − w̄) Pᵀ`` with ``P, w̄`` from :func:`triangle_basis`: the component of ``h − w̄`` in
    the plane of the centred rows, written in the rotated frame where rows 0, 1, 2 sit at the
    lower right, lower left and top. Returns ``(N, 2)`` in the dtype of ``H``; the rows of ``W3``
    themselves map to the vertices of a triangle centred at 0 (equilateral when the rows form a
    simplex ETF).
    """
    H = _check_matrix(H, "H", "of features (N, d)")
    P, origin = triangle_basis(W3)
    if H.shape[1] != P.shape[1]:
        raise ValueError(f"H has feature dimension {H.shape[1]} but W3 has {P.shape[1]} columns")
    return ((H - origin.to(H.dtype)) @ P.to(H.dtype).T)


def triangle_lift(X: torch.Tensor, W3: torch.Tensor) -> torch.Tensor:
    """Features ``(N, d)`` whose :func:`triangle_projection` is ``X: (N, 2)`` and that have no
    component outside the triangle's plane: ``w̄ + X P``. Used to draw the three classes'
    decision regions in the triangle (logits ``W3 h + b3`` of the lifted points): a feature's
    component off the plane shifts the three logits equally, so the regions are exact."""
    X = _check_matrix(X, "X", "of triangle coordinates (N, 2)")
    if X.shape[1] != 2:
        raise ValueError(f"X must have two columns (triangle coordinates), got shape {tuple(X.shape)}")
    P, origin = triangle_basis(W3)
    return origin.to(X.dtype) + X @ P.to(X.dtype)


# ----------------------------------------------------------------------------- quantifying the geometry

def alignment_cosines(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor, mu_G: torch.Tensor) -> torch.Tensor:
    """``cos(h_i − μ_G, w_{y_i})`` for every feature (§3: same-class mixes align with the classifier).

    H: ``(N, d)``; y: ``(N,)`` classes; W: ``(C, d)`` classifier rows; mu_G: ``(d,)`` the global
    mean of the (unmixed) training features. Returns ``(N,)`` in H's dtype; 1 means the centred
    feature points exactly along its class's classifier row.
    """
    H = _check_matrix(H, "H", "of features (N, d)")
    W = _check_matrix(W, "W", "of classifier rows (C, d)")
    y = _check_labels(y, H.shape[0])
    if not isinstance(mu_G, torch.Tensor) or mu_G.shape != (H.shape[1],):
        raise ValueError(f"mu_G must be a ({H.shape[1]},) tensor, got {getattr(mu_G, 'shape', type(mu_G).__name__)}")
    if W.shape[1] != H.shape[1]:
        raise ValueError(f"W has {W.shape[1]} columns but H has feature dimension {H.shape[1]}")
    centred = H - mu_G.to(H.dtype)
    rows = W.to(H.dtype)[y]
    return (centred * rows).sum(1) / (centred.norm(dim=1) * rows.norm(dim=1)).clamp_min(1e-12)


def mixed_pair_top2(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """Whether the two largest logits of each cross-class mix are its two classes (§3).

    logits: ``(N, C)`` with C >= 2; y_a, y_b: ``(N,)`` the mixed classes, ``y_a ≠ y_b``.
    Returns a ``(N,)`` bool tensor: True where ``{argmax, second argmax} = {y_a, y_b}``, in either
    order. The fraction of True (its mean) is the statistic reported in the chapter.
    """
    logits = _check_matrix(logits, "logits", "(N, C)")
    n, c = logits.shape
    if c < 2:
        raise ValueError(f"logits needs at least two classes, got shape {tuple(logits.shape)}")
    y_a, y_b = _check_labels(y_a, n, "y_a"), _check_labels(y_b, n, "y_b")
    if bool((y_a == y_b).any()):
        raise ValueError("y_a and y_b must differ in every row: pass only cross-class mixes")
    top = logits.topk(2, dim=1).indices                      # (N, 2)
    pair = torch.stack([y_a, y_b], 1).to(top.device)
    return (top.sort(1).values == pair.sort(1).values).all(1)


# ----------------------------------------------------------------------------- calibration

def _check_probs(probs: torch.Tensor, y: torch.Tensor, bins: int) -> None:
    _check_matrix(probs, "probs", "of class probabilities (N, C)")
    if probs.shape[0] == 0:
        raise ValueError("probs is empty")
    _check_labels(y, probs.shape[0])
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")


def _bin_stats(probs: torch.Tensor, y: torch.Tensor, bins: int):
    conf, pred = probs.max(1)
    correct = (pred == y.to(pred.device)).to(probs.dtype)
    # bin b holds confidences in (edges[b], edges[b+1]]; the first bin also takes 0
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype, device=probs.device)
    idx = (torch.searchsorted(edges, conf.contiguous()) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, idx, conf)
    acc_sum = torch.zeros_like(count).index_add_(0, idx, correct)
    return count, conf_sum, acc_sum


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> torch.Tensor:
    """Expected calibration error (Guo et al., 2017, eq. 3), the paper's calibration measure (§4).

    probs: ``(N, C)`` predicted class probabilities; y: ``(N,)`` true classes; bins: number of
    equal-width confidence bins, bin ``b`` holding confidences in ``(b/bins, (b+1)/bins]``. With
    confidence ``conf_i = max_c probs[i, c]`` and prediction ``argmax_c probs[i, c]``:
    ``ECE = Σ_b (n_b / N) · |acc_b − conf_b|`` over non-empty bins, ``acc_b`` and ``conf_b`` the
    mean correctness and mean confidence in bin ``b``. Returns a 0-dim tensor in probs' dtype.
    """
    _check_probs(probs, y, bins)
    count, conf_sum, acc_sum = _bin_stats(probs, y, bins)
    # Σ_b (n_b/N)|acc_b − conf_b| = (1/N) Σ_b |Σ_{i∈b} (correct_i − conf_i)|; empty bins add 0
    return (acc_sum - conf_sum).abs().sum() / probs.shape[0]


class Reliability(NamedTuple):
    """Per-bin statistics of a reliability diagram: ``(bins,)`` each; nan where a bin is empty."""

    edges: torch.Tensor        # (bins + 1,) bin edges 0 .. 1
    confidence: torch.Tensor   # mean confidence per bin
    accuracy: torch.Tensor     # accuracy per bin
    count: torch.Tensor        # number of samples per bin


def reliability_curve(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> Reliability:
    """The reliability diagram behind :func:`expected_calibration_error` (same bins)."""
    _check_probs(probs, y, bins)
    count, conf_sum, acc_sum = _bin_stats(probs, y, bins)
    safe = count.clamp_min(1)
    nan = torch.full_like(count, float("nan"))
    return Reliability(torch.linspace(0, 1, bins + 1, dtype=probs.dtype), torch.where(count > 0, conf_sum / safe, nan),
                       torch.where(count > 0, acc_sum / safe, nan), count)


# ----------------------------------------------------------------------------- mixed inputs to look at

class MixedSet(NamedTuple):
    """Mixed inputs and their provenance: ``x: (N, ...)``, ``y_a, y_b, lam: (N,)``."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor

    @property
    def same(self) -> torch.Tensor:
        """``(N,)`` bool: mixes of two examples of the same class."""
        return self.y_a == self.y_b


def mix_dataset(X: torch.Tensor, y: torch.Tensor, lams: Sequence[float] | torch.Tensor, *,
                classes: Sequence[int] | None = None, batch_size: int = 128,
                generator: torch.Generator | None = None) -> MixedSet:
    """Mixed training inputs as the network saw them: for each ``λ`` in ``lams`` one batch of
    ``batch_size`` random examples, each mixed with a random partner of the same batch by
    :func:`layerwise.core.augment.mixup` (one ``λ`` per batch, like training).

    X: ``(N, ...)``; y: ``(N,)``; classes: keep only examples of these classes (the paper's
    triangle plots mix within three classes). Returns a :class:`MixedSet` of
    ``len(lams) · batch_size`` mixes.
    """
    if not isinstance(X, torch.Tensor) or not X.is_floating_point():
        raise TypeError(f"X must be a floating-point tensor (N, ...), got {getattr(X, 'dtype', type(X).__name__)}")
    y = _check_labels(y, X.shape[0])
    if classes is not None:
        keep = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype, device=y.device))
        X, y = X[keep], y[keep]
    if X.shape[0] < 2:
        raise ValueError(f"need at least two examples to mix, got {X.shape[0]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    lams = torch.as_tensor(lams, dtype=torch.float64).flatten()
    if lams.numel() == 0 or bool(((lams < 0) | (lams > 1)).any()):
        raise ValueError(f"lams must be a non-empty sequence of values in [0, 1], got {lams.tolist()}")
    xs, ya, yb, lam = [], [], [], []
    for value in lams.tolist():
        idx = torch.randint(0, X.shape[0], (batch_size,), generator=generator).to(X.device)
        perm = torch.randperm(batch_size, generator=generator)
        x_mix, y_a, y_b, lam_used = mixup(X[idx], y[idx], value, perm)
        xs.append(x_mix)
        ya.append(y_a)
        yb.append(y_b)
        lam.append(torch.full((batch_size,), lam_used, dtype=torch.float64))
    return MixedSet(torch.cat(xs), torch.cat(ya), torch.cat(yb), torch.cat(lam))


# ----------------------------------------------------------------------------- the unconstrained features model

def _check_ufm(W, lam, a, b, lam_H) -> tuple[torch.Tensor, torch.Tensor, bool]:
    W = _check_matrix(W, "W", "of classifier rows (C, d)")
    C = W.shape[0]
    if C < 2:
        raise ValueError(f"W needs at least two classifier rows, got shape {tuple(W.shape)}")
    for name, c in (("a", a), ("b", b)):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < C:
            raise ValueError(f"{name} must be a class index, an int in 0..{C - 1}, got {c!r}")
    if isinstance(lam_H, bool) or not isinstance(lam_H, (int, float)) or not lam_H > 0:
        raise ValueError(f"lam_H must be a positive number (the feature weight decay), got {lam_H!r}")
    scalar = not isinstance(lam, torch.Tensor) or lam.dim() == 0
    lam_t = torch.as_tensor(lam, dtype=torch.float64).flatten().cpu()
    if lam_t.numel() == 0 or bool(((lam_t < 0) | (lam_t > 1) | lam_t.isnan()).any()):
        raise ValueError(f"lam must be a number or 1-D tensor of mixing weights in [0, 1], got {lam!r}")
    y = torch.zeros(lam_t.numel(), C, dtype=torch.float64)
    y[:, a] += lam_t
    y[:, b] += 1 - lam_t                                     # a == b: the one-hot target of class a
    return W.detach().double().cpu(), y, scalar


def ufm_mixup_loss(h: torch.Tensor, W: torch.Tensor, lam, a: int, b: int, lam_H: float) -> torch.Tensor:
    """The mixup loss of one free feature in the unconstrained features model (§3 of the paper).

    ``L(h) = λ · CE(W h, a) + (1 − λ) · CE(W h, b) + (λ_H / 2) ‖h‖²`` with ``CE(z, c) =
    logsumexp(z) − z_c``: a feature ``h: (d,)`` (or ``(L, d)``, one row per ``λ``), a fixed
    classifier ``W: (C, d)`` without bias, the mixed target ``λ e_a + (1 − λ) e_b`` (``lam`` a number
    or ``(L,)`` tensor in [0, 1]; ``a == b`` is a same-class mix) and the feature weight decay
    ``λ_H > 0``. Returns a 0-dim or ``(L,)`` float64 tensor, differentiable in ``h``.
    """
    W64, y, scalar = _check_ufm(W, lam, a, b, lam_H)
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.shape[-1] != W64.shape[1] or h.dim() > 2:
        raise ValueError(f"h must be a float (d,) or (L, d) tensor with d = {W64.shape[1]}, got "
                         f"{getattr(h, 'shape', type(h).__name__)}")
    h2 = h.double().reshape(-1, W64.shape[1])
    z = h2 @ W64.T
    loss = torch.logsumexp(z, 1) - (y * z).sum(1) + 0.5 * lam_H * (h2 * h2).sum(1)
    return loss[0] if h.dim() == 1 and scalar else loss


def ufm_mixup_features(W: torch.Tensor, lam, a: int, b: int, lam_H: float, *, tol: float = 1e-12,
                       max_iter: int = 100) -> torch.Tensor:
    """The feature that minimises :func:`ufm_mixup_loss` for a fixed classifier ``W: (C, d)``.

    The paper's theory asks where mixup puts a feature that is free to go anywhere (the
    unconstrained features model) when the classifier is a fixed simplex ETF (e.g.
    :func:`layerwise.neural_collapse.simplex_etf`); this computes that optimum numerically, for any
    ``W``. The loss is strictly convex (``λ_H > 0``), so the minimiser ``h*`` is unique; it solves
    ``Wᵀ (softmax(W h) − y) + λ_H h = 0`` with ``y = λ e_a + (1 − λ) e_b``, so it lies in the row
    space of ``W``. Found by damped Newton steps (backtracking line search) in float64, from
    ``h = 0``, until the gradient's norm is below ``tol``: deterministic and exact to rounding.

    lam: a number (returns ``(d,)``) or an ``(L,)`` tensor of mixing weights (returns ``(L, d)``,
    one optimum per ``λ``); ``a``, ``b``: the two classes (``a == b``: a same-class mix, whose
    optimum does not depend on ``λ``). Returns float64.
    """
    W64, y, scalar = _check_ufm(W, lam, a, b, lam_H)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    L, d = y.shape[0], W64.shape[1]
    eye = torch.eye(d, dtype=torch.float64)

    def loss_grad(h):
        z = h @ W64.T
        p = z.softmax(1)
        loss = torch.logsumexp(z, 1) - (y * z).sum(1) + 0.5 * lam_H * (h * h).sum(1)
        return loss, (p - y) @ W64 + lam_H * h, p

    h = torch.zeros(L, d, dtype=torch.float64)
    for _ in range(max_iter):
        loss, grad, p = loss_grad(h)
        if float(grad.norm(dim=1).max()) < tol:
            break
        curv = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)            # (L, C, C) softmax Hessian
        hess = W64.T @ curv @ W64 + lam_H * eye                                # (L, d, d), positive definite
        step = torch.linalg.solve(hess, grad.unsqueeze(2)).squeeze(2)
        decrease = (grad * step).sum(1)                                        # > 0: a descent direction
        t = torch.ones(L, dtype=torch.float64)
        for _ in range(60):                                                    # Armijo backtracking per row
            trial = loss_grad(h - t.unsqueeze(1) * step)[0]
            bad = trial > loss - 0.25 * t * decrease
            if not bool(bad.any()):
                break
            t = torch.where(bad, t / 2, t)
        h = h - t.unsqueeze(1) * step
    return h[0] if scalar else h
