"""Perturbation Analysis of Neural Collapse (Tirer, Huang & Niles-Weed, ICML 2023).

The unconstrained features model (UFM) lets the last-layer features move freely, so every
minimiser is exactly collapsed. The paper keeps the features near a given matrix ``H0`` (e.g.
the features a network's earlier layers can produce) with a proximity term of weight ``beta``
(paper §3, the model)::

    f(W, H) = 1/(2Kn) ||W H - Y||^2 + lam_W/(2K) ||W||^2 + lam_H/(2Kn) ||H||^2 + beta/(2Kn) ||H - H0||^2

with K classes, n samples per class, N = Kn. **Layout: the paper's, samples are columns**:
``H, H0: (d, N)``, one-hot targets ``Y: (K, N)``, classifier ``W: (K, d)``. (The shared metrics
in :mod:`layerwise.neural_collapse` take features as rows; pass ``H.T`` there.)

- For fixed H the problem in W is ridge regression: ``W*(H) = Y H^T (H H^T + n lam_W I)^-1``
  (:func:`optimal_W`).
- The *central path* keeps W optimal for the current H; gradient flow on H along it is gradient
  flow on the reduced objective ``min_W f(W, H)``, whose gradient is ``d f/d H`` at ``W*(H)``
  (envelope theorem) (:func:`central_path_grad`, :func:`central_path_step`, :func:`central_path`).
  The paper proves that the within-class variability quotient ``Tr(Sigma_W)/Tr(Sigma_B)``
  (:func:`nc1_quotient`) strictly decreases along this flow started at ``H0`` (§4).
- For large ``beta`` the minimiser of ``f`` is, to first order, the flow run for a time ``N/beta``:
  the optimised features are less variable than ``H0``, more so for smaller ``beta``
  (:func:`perturbed_minimizer`, exact block-coordinate descent). Near collapse, the within-class
  part of the features shrinks by ``beta (W^T W + (lam_H + beta) I)^-1``: the feature
  regulariser ``lam_H`` acts on it directly, ``lam_W`` only through ``W`` (§5).

The paper's code was not available to us; this module follows the model as stated above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise.core.checks import float_tensor

__all__ = ["class_targets", "ufm_features", "perturbed_ufm_loss", "optimal_W", "central_path_grad",
           "central_path_step", "central_path", "perturbed_minimizer", "nc1_quotient", "within_class_part"]


# --------------------------------------------------------------------------- inputs

def _check_H(H: torch.Tensor, name: str = "H") -> torch.Tensor:
    return float_tensor(H, name, 2, "of features (d, N), one column per sample")


def _check_Y(Y: torch.Tensor, N: int) -> torch.Tensor:
    if not isinstance(Y, torch.Tensor):
        raise TypeError(f"Y must be a torch.Tensor of one-hot targets (K, N), got {type(Y).__name__}")
    if Y.dim() != 2 or Y.shape[1] != N:
        raise ValueError(f"Y must be a (K, N) one-hot matrix with N = {N} columns (one per sample of H), "
                         f"got shape {tuple(Y.shape)}")
    return Y


def _check_nonneg(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not float(value) >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _num_per_class(Y: torch.Tensor) -> float:
    """n = N / K (the paper's balanced setting; for unbalanced data the average class size)."""
    return Y.shape[1] / Y.shape[0]


def class_targets(num_classes: int, n: int, *, dtype: torch.dtype = torch.float64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's balanced targets: ``Y = I_K (x) 1_n^T`` of shape ``(K, Kn)`` and labels ``y: (Kn,)``
    (samples sorted by class, n per class)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes (K) must be an int >= 2, got {num_classes!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per class) must be an int >= 1, got {n!r}")
    y = torch.arange(num_classes).repeat_interleave(n)
    return F.one_hot(y, num_classes).T.to(dtype), y


def ufm_features(num_classes: int, n: int, dim: int, *, mean_scale: float = 1.0, noise: float = 1.0,
                 etf: bool = False, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Features ``H0: (d, Kn)`` = class mean + Gaussian within-class noise, samples sorted by class.

    The means are ``mean_scale`` times Gaussian vectors, or with ``etf=True`` ``mean_scale`` times a
    randomly rotated simplex ETF (a near-collapse starting point when ``noise`` is small).
    """
    from layerwise.neural_collapse import simplex_etf

    _, y = class_targets(num_classes, n)
    if etf:
        means = simplex_etf(num_classes, dim, generator=generator).T        # (d, K), unit columns
    else:
        means = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    H0 = mean_scale * means[:, y] + noise * torch.randn(dim, num_classes * n, generator=generator,
                                                       dtype=torch.float64)
    return H0.to(dtype)


# --------------------------------------------------------------------------- the model

def perturbed_ufm_loss(W: torch.Tensor, H: torch.Tensor, Y: torch.Tensor, lam_W: float, lam_H: float,
                       beta: float = 0.0, H0: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's objective f(W, H) (§3): MSE fit + ridge on W and H + ``beta`` proximity to ``H0``.

    W: ``(K, d)``; H, H0: ``(d, N)``; Y: ``(K, N)``. With ``beta = 0`` it is the plain
    (regularised, bias-free, MSE) unconstrained features model. Returns a scalar tensor.
    """
    H = _check_H(H)
    Y = _check_Y(Y, H.shape[1])
    lam_W, lam_H, beta = _check_nonneg(lam_W, "lam_W"), _check_nonneg(lam_H, "lam_H"), _check_nonneg(beta, "beta")
    K, N = Y.shape
    loss = ((W @ H - Y) ** 2).sum() / (2 * N) + lam_W / (2 * K) * (W ** 2).sum() + lam_H / (2 * N) * (H ** 2).sum()
    if beta > 0:
        if H0 is None:
            raise ValueError("beta > 0 needs H0, the features H is kept near")
        loss = loss + beta / (2 * N) * ((H - H0) ** 2).sum()
    return loss


def optimal_W(H: torch.Tensor, Y: torch.Tensor, lam_W: float, n: float) -> torch.Tensor:
    """The minimiser in W for fixed features: ``W*(H) = Y H^T (H H^T + n lam_W I_d)^-1`` (§3).

    H: ``(d, N)`` features (columns are samples), Y: ``(K, N)`` one-hot targets, ``n``: samples per
    class (N = Kn). Setting the W-gradient of f to zero, ``(W H - Y) H^T / N + lam_W W / K = 0``,
    gives this ridge-regression solution. Returns ``(K, d)`` in H's dtype. Solved as a linear
    system (symmetric positive definite for ``lam_W > 0``), not with an explicit inverse.
    """
    H = _check_H(H)
    Y = _check_Y(Y, H.shape[1])
    lam_W = _check_nonneg(lam_W, "lam_W")
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n <= 0:
        raise ValueError(f"n (samples per class) must be a positive number, got {n!r}")
    d = H.shape[0]
    A = H @ H.T + n * lam_W * torch.eye(d, dtype=H.dtype, device=H.device)       # (d, d)
    return torch.linalg.solve(A, H @ Y.to(H.dtype).T).T                          # A symmetric: (A^-1 H Y^T)^T


def central_path_grad(H: torch.Tensor, Y: torch.Tensor, lam_W: float, lam_H: float, beta: float = 0.0,
                      H0: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient in H of the objective on the central path (W = W*(H)), shape ``(d, N)`` (§4).

    ``[W*^T (W* H - Y) + lam_H H + beta (H - H0)] / N``. Because W* minimises f for this H, this is
    also the gradient of the reduced objective ``min_W f(W, H)`` (envelope theorem).
    """
    H = _check_H(H)
    Y = _check_Y(Y, H.shape[1])
    lam_H, beta = _check_nonneg(lam_H, "lam_H"), _check_nonneg(beta, "beta")
    N = H.shape[1]
    W = optimal_W(H, Y, lam_W, _num_per_class(Y))
    G = W.T @ (W @ H - Y.to(H.dtype)) + lam_H * H
    if beta > 0:
        if H0 is None:
            raise ValueError("beta > 0 needs H0, the features H is kept near")
        H0 = _check_H(H0, "H0")
        if H0.shape != H.shape:
            raise ValueError(f"H0 must have H's shape {tuple(H.shape)}, got {tuple(H0.shape)}")
        G = G + beta * (H - H0)
    return G / N


def central_path_step(H: torch.Tensor, Y: torch.Tensor, lam_W: float, lam_H: float, lr: float,
                      beta: float = 0.0, H0: torch.Tensor | None = None) -> torch.Tensor:
    """One gradient-descent step on the features along the central path (§4, discretised):

    ``W = W*(H)`` with n = N/K, then ``H - lr * [W^T (W H - Y) + lam_H H + beta (H - H0)] / N``.

    H, H0: ``(d, N)``; Y: ``(K, N)``. ``beta = 0`` (default) is the plain UFM's central path; with
    ``beta > 0`` the flow also feels the pull back to ``H0``. Returns the new ``(d, N)`` features.
    """
    lr = _check_nonneg(lr, "lr")
    return H - lr * central_path_grad(H, Y, lam_W, lam_H, beta, H0)


def central_path(H0: torch.Tensor, Y: torch.Tensor, lam_W: float, lam_H: float, lr: float, steps: int,
                 beta: float = 0.0) -> torch.Tensor:
    """``steps`` central-path steps from ``H0`` (the proximity term, if ``beta > 0``, pulls back to H0).

    Returns the trajectory ``(steps + 1, d, N)``, starting with ``H0``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    H = _check_H(H0, "H0")
    out = [H]
    for _ in range(steps):
        H = central_path_step(H, Y, lam_W, lam_H, lr, beta, H0)
        out.append(H)
    return torch.stack(out)


def perturbed_minimizer(H0: torch.Tensor, Y: torch.Tensor, lam_W: float, lam_H: float, beta: float, *,
                        max_iter: int = 10_000, tol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """A minimiser ``(W, H)`` of the paper's model for features kept near ``H0`` (§3, §5).

    Exact block-coordinate descent from ``H = H0``: W = W*(H), then the H-problem, a ridge
    regression, ``H = (W^T W + (lam_H + beta) I)^-1 (W^T Y + beta H0)``. Each block is minimised
    exactly, so f never increases. Stops when H changes by less than ``tol`` (relative).
    """
    H0 = _check_H(H0, "H0")
    Y = _check_Y(Y, H0.shape[1]).to(H0.dtype)
    beta = _check_nonneg(beta, "beta")
    lam_H = _check_nonneg(lam_H, "lam_H")
    if lam_H + beta <= 0:
        raise ValueError("lam_H + beta must be positive for the H-step to be well posed")
    n = _num_per_class(Y)
    eye = torch.eye(H0.shape[0], dtype=H0.dtype, device=H0.device)
    H = H0
    for _ in range(max_iter):
        W = optimal_W(H, Y, lam_W, n)
        H_new = torch.linalg.solve(W.T @ W + (lam_H + beta) * eye, W.T @ Y + beta * H0)
        done = (H_new - H).norm() <= tol * H.norm().clamp_min(1e-300)
        H = H_new
        if done:
            break
    return optimal_W(H, Y, lam_W, n), H


# --------------------------------------------------------------------------- the metric

def nc1_quotient(H: torch.Tensor, y: torch.Tensor) -> float:
    """The paper's within-class variability measure ``Tr(Sigma_W) / Tr(Sigma_B)`` (§2, §4).

    H: ``(d, N)`` features (columns are samples); y: ``(N,)`` integer labels in ``0..K-1``, K =
    ``max(y) + 1``, every class present. ``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``,
    ``Sigma_B = 1/K sum_c (mu_c - mu_G)(mu_c - mu_G)^T`` with ``mu_G`` the mean of all features
    (the conventions of :func:`layerwise.neural_collapse.covariances`). Only traces are needed:
    mean squared distance to the own class mean over mean squared distance of class means to mu_G.
    0 on collapse; unlike NC1 = Tr(Sigma_W Sigma_B^+)/K it needs no pseudo-inverse.
    """
    H = _check_H(H)
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != H.shape[1]:
        raise ValueError(f"y must be a ({H.shape[1]},) tensor of labels, one per column of H, "
                         f"got {getattr(y, 'shape', type(y).__name__)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    K = int(y.max()) + 1
    counts = torch.bincount(y, minlength=K)
    if int(y.min()) < 0 or (counts == 0).any():
        raise ValueError(f"y must use every label 0..{K - 1} at least once, got counts {counts.tolist()}")
    sums = torch.zeros(H.shape[0], K, dtype=H.dtype, device=H.device).index_add_(1, y, H)
    means = sums / counts.to(H.dtype)                                  # (d, K)
    within = ((H - means[:, y]) ** 2).sum() / H.shape[1]
    between = ((means - H.mean(1, keepdim=True)) ** 2).sum() / K
    return float(within / between)


def within_class_part(H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``H`` minus each sample's class mean: the within-class deviations ``E: (d, N)`` (§5's split
    ``H = H_bar + E`` into a collapsed part and a perturbation)."""
    H = _check_H(H)
    K = int(y.max()) + 1
    counts = torch.bincount(y, minlength=K).to(H.dtype)
    means = torch.zeros(H.shape[0], K, dtype=H.dtype, device=H.device).index_add_(1, y, H) / counts
    return H - means[:, y]
