"""Neural collapse metrics (Papyan, Han & Donoho, PNAS 2020), shared by the Part II chapters.

Notation: features ``H: (N, d)`` with labels ``y: (N,)`` in ``0..C-1``; class means
``mu_c``, global mean ``mu_G`` (mean of all features), centred class means
``M~ = [mu_c - mu_G]: (C, d)``; last-layer classifier ``W: (C, d)`` (rows ``w_c``), bias ``b: (C,)``.

- **NC1** (variability collapse): ``Tr(Sigma_W Sigma_B^+) / C`` with the within-class covariance
  ``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and the between-class covariance
  ``Sigma_B = 1/C sum_c (mu_c - mu_G)(mu_c - mu_G)^T``; the pseudo-inverse keeps the top C-1
  directions of Sigma_B (its rank), as in the paper.
- **NC2** (simplex ETF): equinorm (coefficient of variation of ``||mu_c - mu_G||`` and of
  ``||w_c||``), equiangularity (std over pairs of the cosines between centred means) and
  ``max_angle`` (mean ``|cos + 1/(C-1)|``), and ``etf_distance`` =
  ``|| G/||G||_F - (I - 11^T/C)/||I - 11^T/C||_F ||_F`` for the Gram ``G = M~ M~^T``.
- **NC3** (self-duality): ``|| W/||W||_F - M~/||M~||_F ||_F^2``.
- **NC4** (nearest class centre): fraction of samples where the network's argmax disagrees with
  the nearest class mean.

Every metric is ~0 on an exact collapse configuration, invariant to scaling the features and to
a global rotation of features and classifier together. Computed in float64.
:func:`collect_features` records a layer's input (or output) with a forward hook, for any model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["class_means", "covariances", "nc1", "equinorm", "equiangularity", "max_angle", "etf_distance",
           "nc3", "nc4", "simplex_etf", "collapse_metrics", "NCMetrics", "collect_features", "last_linear"]


def _check_hy(H: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not isinstance(H, torch.Tensor) or H.dim() != 2:
        raise ValueError(f"H must be a (N, d) tensor of features, got {getattr(H, 'shape', type(H))}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != H.shape[0]:
        raise ValueError(f"y must be a (N,) tensor of labels matching H's {H.shape[0]} rows, "
                         f"got {getattr(y, 'shape', type(y))}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got {y.dtype}")
    C = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if C < 2:
        raise ValueError(f"num_classes must be at least 2, got {C}")
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise ValueError(f"y must lie in 0..{C - 1}, got values in {int(y.min())}..{int(y.max())}")
    counts = torch.bincount(y, minlength=C)
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one sample; empty classes: "
                         f"{torch.nonzero(counts == 0).flatten().tolist()}")
    return H.detach().double(), y.detach(), C


def class_means(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``(C, d)`` and global mean ``(d,)`` of features ``H: (N, d)`` (float64)."""
    H, y, C = _check_hy(H, y, num_classes)
    counts = torch.bincount(y, minlength=C).double()
    sums = torch.zeros(C, H.shape[1], dtype=H.dtype, device=H.device).index_add_(0, y, H)
    return sums / counts[:, None], H.mean(0)


def covariances(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-class ``Sigma_W`` and between-class ``Sigma_B`` covariances, both ``(d, d)``."""
    H, y, C = _check_hy(H, y, num_classes)
    mu, mu_g = class_means(H, y, C)
    within = H - mu[y]
    centred = mu - mu_g
    return within.T @ within / H.shape[0], centred.T @ centred / C


def nc1(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """NC1 = Tr(Sigma_W Sigma_B^+) / C, with Sigma_B inverted on its top C-1 eigendirections."""
    H, y, C = _check_hy(H, y, num_classes)
    sw, sb = covariances(H, y, C)
    evals, evecs = torch.linalg.eigh(sb)                 # ascending
    k = min(C - 1, sb.shape[0])
    evals, evecs = evals[-k:], evecs[:, -k:]
    keep = evals > evals.max().clamp_min(0) * 1e-10
    if not keep.any():
        return float("inf")
    v, lam = evecs[:, keep], evals[keep]
    return float(((v.T @ sw @ v).diagonal() / lam).sum() / C)


def _centred_means(H, y, num_classes):
    mu, mu_g = class_means(H, y, num_classes)
    return mu - mu_g


def _cv(x: torch.Tensor) -> float:
    return float(x.std(unbiased=False) / x.mean())


def equinorm(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor | None = None,
             num_classes: int | None = None) -> dict[str, float]:
    """NC2 equinorm: coefficient of variation (std/mean) of ``||mu_c - mu_G||`` and of ``||w_c||``."""
    out = {"means": _cv(_centred_means(H, y, num_classes).norm(dim=1))}
    if W is not None:
        out["classifier"] = _cv(_check_W(W, None).norm(dim=1))
    return out


def _pair_cosines(M: torch.Tensor) -> torch.Tensor:
    U = M / M.norm(dim=1, keepdim=True).clamp_min(1e-300)
    G = U @ U.T
    i, j = torch.triu_indices(M.shape[0], M.shape[0], offset=1)
    return G[i, j]


def equiangularity(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """NC2 equiangularity: std over pairs c < c' of cos(mu_c - mu_G, mu_c' - mu_G)."""
    return float(_pair_cosines(_centred_means(H, y, num_classes)).std(unbiased=False))


def max_angle(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """NC2 maximal angle: mean over pairs of |cos + 1/(C-1)| (0 for a simplex ETF)."""
    M = _centred_means(H, y, num_classes)
    return float((_pair_cosines(M) + 1.0 / (M.shape[0] - 1)).abs().mean())


def _etf_gram(C: int, dtype=torch.float64, device=None) -> torch.Tensor:
    return torch.eye(C, dtype=dtype, device=device) - torch.full((C, C), 1.0 / C, dtype=dtype, device=device)


def etf_distance(M: torch.Tensor) -> float:
    """Distance of the normalised Gram of the rows of ``M: (C, d)`` to the simplex-ETF Gram.

    ``|| M M^T / ||M M^T||_F - (I - 11^T/C) / ||I - 11^T/C||_F ||_F``; pass centred class means
    (or classifier rows). 0 exactly for a simplex ETF of any scale and rotation.
    """
    M = _check_W(M, None)
    G = M @ M.T
    E = _etf_gram(M.shape[0], device=M.device)
    return float((G / G.norm() - E / E.norm()).norm())


def _check_W(W: torch.Tensor, C: int | None) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"W must be a (C, d) matrix of classifier rows, got {getattr(W, 'shape', type(W))}")
    if C is not None and W.shape[0] != C:
        raise ValueError(f"W must have one row per class ({C}), got {W.shape[0]} rows")
    return W.detach().double()


def nc3(W: torch.Tensor, H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """NC3 self-duality: ``|| W/||W||_F - M~/||M~||_F ||_F^2`` for classifier ``W: (C, d)``."""
    M = _centred_means(H, y, num_classes)
    W = _check_W(W, M.shape[0])
    if W.shape[1] != M.shape[1]:
        raise ValueError(f"W has {W.shape[1]} columns but the features have dimension {M.shape[1]}")
    return float((W / W.norm() - M / M.norm()).norm() ** 2)


def nc4(H: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, num_classes: int | None = None) -> float:
    """NC4: fraction of samples whose argmax logit differs from the nearest class mean of ``H``."""
    H, y, C = _check_hy(H, y, num_classes)
    if not isinstance(logits, torch.Tensor) or logits.shape != (H.shape[0], C):
        raise ValueError(f"logits must be (N, C) = {(H.shape[0], C)}, got {getattr(logits, 'shape', type(logits))}")
    mu, _ = class_means(H, y, C)
    ncc = torch.cdist(H, mu).argmin(1)
    return float((ncc != logits.argmax(1)).double().mean())


def simplex_etf(num_classes: int, dim: int | None = None, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A simplex equiangular tight frame: ``(C, d)`` unit rows with pairwise cosine -1/(C-1).

    With ``generator`` the frame is randomly rotated (a random partial orthogonal matrix); ``dim``
    defaults to C and must be at least C-1.
    """
    C = int(num_classes)
    d = C if dim is None else int(dim)
    if C < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if d < C - 1:
        raise ValueError(f"dim must be at least num_classes - 1 = {C - 1}, got {dim}")
    E = _etf_gram(C, dtype=torch.float64) * (C / (C - 1)) ** 0.5   # rows: unit norm, in R^C
    if d < C:   # d = C-1: coordinates of the rows in an orthonormal basis of their (C-1)-dim span
        U, S, _ = torch.linalg.svd(E)
        E = U[:, :d] * S[:d]
    n = E.shape[1]                                                # C or C-1 columns, n <= d
    Q = (torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))[0]
         if generator is not None else torch.eye(d, dtype=torch.float64))
    out = E @ Q[:n, :]                                            # orthonormal rows keep the Gram
    return out.to(dtype)


@dataclass
class NCMetrics:
    """All collapse metrics of one set of features (``nan`` where the inputs were not given)."""

    nc1: float
    equinorm_means: float
    equinorm_classifier: float
    equiangularity: float
    max_angle: float
    etf_distance: float
    etf_distance_classifier: float
    nc3: float
    nc4: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def collapse_metrics(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor | None = None,
                     logits: torch.Tensor | None = None, num_classes: int | None = None) -> NCMetrics:
    """Every NC metric of features ``H`` with labels ``y``; classifier ``W`` and ``logits`` optional."""
    H, y, C = _check_hy(H, y, num_classes)
    M = _centred_means(H, y, C)
    nan = float("nan")
    eq = equinorm(H, y, W, C)
    return NCMetrics(
        nc1=nc1(H, y, C), equinorm_means=eq["means"], equinorm_classifier=eq.get("classifier", nan),
        equiangularity=equiangularity(H, y, C), max_angle=max_angle(H, y, C), etf_distance=etf_distance(M),
        etf_distance_classifier=etf_distance(W) if W is not None else nan,
        nc3=nc3(W, H, y, C) if W is not None else nan,
        nc4=nc4(H, y, logits, C) if logits is not None else nan)


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (its classifier, for the usual architectures)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"model has no nn.Linear layer; pass the classifier module explicitly")
    return linears[-1]


@torch.no_grad()
def collect_features(model: nn.Module, X: torch.Tensor, module: nn.Module | None = None, *,
                     which: str = "input", batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``X`` in eval mode and record ``module``'s input (or output) with a hook.

    Returns ``(features (N, d), outputs (N, ...))``; ``module`` defaults to :func:`last_linear`, whose
    input is the penultimate ("last-layer") feature the NC metrics are defined on. The model's
    train/eval mode is restored afterwards.
    """
    if which not in ("input", "output"):
        raise ValueError(f"which must be 'input' or 'output', got {which!r}")
    if not isinstance(X, torch.Tensor) or X.dim() < 2:
        raise ValueError(f"X must be a batched tensor (N, ...), got {getattr(X, 'shape', type(X))}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    module = last_linear(model) if module is None else module
    if not any(m is module for m in model.modules()):
        raise ValueError("module must be a submodule of model")
    seen: list[torch.Tensor] = []

    def hook(_m, inputs, output):
        t = inputs[0] if which == "input" else output
        seen.append(t.detach().flatten(1))

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    outs = []
    try:
        for i in range(0, X.shape[0], batch_size):
            outs.append(model(X[i:i + batch_size]))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(seen), torch.cat(outs)


def weight_decay_groups(model: nn.Module, feature_decay: float, classifier_decay: float,
                        classifier: nn.Module | None = None) -> list[dict]:
    """Optimizer parameter groups with separate weight decay for the features and the classifier.

    ``classifier`` (default :func:`last_linear`) gets ``classifier_decay`` (the UFM's lam_W);
    every other parameter of ``model`` (the backbone that makes the features, the UFM's lam_H
    stand-in) gets ``feature_decay``. Pass the result to any ``torch.optim`` optimizer.
    """
    for name, value in (("feature_decay", feature_decay), ("classifier_decay", classifier_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    classifier = last_linear(model) if classifier is None else classifier
    if not any(m is classifier for m in model.modules()):
        raise ValueError("classifier must be a submodule of model")
    head = {id(p) for p in classifier.parameters()}
    features = [p for p in model.parameters() if id(p) not in head]
    return [{"params": features, "weight_decay": float(feature_decay)},
            {"params": list(classifier.parameters()), "weight_decay": float(classifier_decay)}]


__all__ += ["weight_decay_groups"]
