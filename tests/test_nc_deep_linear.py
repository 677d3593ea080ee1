"""Tests of layerwise.nc_deep_linear (Dang et al., ICML 2023), plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from layerwise import nc_deep_linear as dl
from layerwise.neural_collapse import class_means, etf_distance

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "deep_ufm_loss": (
        "def deep_ufm_loss(H, Ws, Y, lam_W, lam_H):\n"
        "    W = Ws[0]\n"
        "    for layer in Ws[1:]:\n"
        "        W = layer @ W\n"
        "    N = H.shape[0]\n"
        "    fit = 0.5 * torch.linalg.matrix_norm(W @ H.T - Y.T) ** 2 / N\n"
        "    reg = 0.5 * lam_W * sum(torch.sum(w * w) for w in Ws) + 0.5 * lam_H * torch.sum(H * H)\n"
        "    return fit + reg\n"),
    "imbalanced_lengths": (
        "import numpy as np\n\n"
        "def imbalanced_lengths(n_k, lam_W, lam_H, M):\n"
        "    n = np.asarray([float(v) for v in n_k])\n"
        "    N = n.sum()\n"
        "    b = M * N * (N * lam_W ** M * lam_H) ** (1 / M)\n"
        "    xs = []\n"
        "    for nk in n:\n"
        "        # roots of (b/nk) (x^M + 1)^2 - M x^(M-1) = 0, a polynomial of degree 2M\n"
        "        poly = np.zeros(2 * M + 1)\n"
        "        poly[0] += b / nk; poly[M] += 2 * b / nk; poly[2 * M] += b / nk\n"
        "        poly[M + 1] -= M\n"
        "        r = np.roots(poly)\n"
        "        r = r[(np.abs(r.imag) < 1e-7) & (r.real > 0)].real\n"
        "        x = r.max() if r.size else 0.0\n"
        "        if x > 0 and nk / (x ** M + 1) + b * x >= nk:\n"
        "            x = 0.0\n"
        "        xs.append(x)\n"
        "    x = torch.tensor(xs, dtype=torch.float64)\n"
        "    w2 = N * lam_H * x ** M\n"
        "    return w2.sqrt(), w2.sqrt() / (w2 + N * lam_H)\n"),
    "orthogonal_frame_error": (
        "def orthogonal_frame_error(W):\n"
        "    G = (W.double() @ W.double().T)\n"
        "    K = G.shape[0]\n"
        "    G = G / torch.sqrt((G ** 2).sum())\n"
        "    return torch.sqrt(((G - torch.eye(K, dtype=G.dtype) * K ** -0.5) ** 2).sum()).item()\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests.
WRONG_ANSWERS = {
    "deep_ufm_loss": [
        ("def deep_ufm_loss(H, Ws, Y, lam_W, lam_H):\n"
         "    out = H\n"
         "    for W in Ws:\n"
         "        out = out @ W.T\n"
         "    # forgot the 1/N: a sum over examples, not a mean\n"
         "    return 0.5 * ((out - Y) ** 2).sum() + lam_W / 2 * sum((W ** 2).sum() for W in Ws) + lam_H / 2 * (H ** 2).sum()\n"),
        ("def deep_ufm_loss(H, Ws, Y, lam_W, lam_H):\n"
         "    W = Ws[0]\n"
         "    for layer in Ws[1:]:\n"
         "        W = layer @ W\n"
         "    # penalises the product, not every layer: the same only when M = 1\n"
         "    return ((H @ W.T - Y) ** 2).sum() / (2 * H.shape[0]) + lam_W / 2 * (W ** 2).sum() + lam_H / 2 * (H ** 2).sum()\n"),
    ],
    "imbalanced_lengths": [
        ("def imbalanced_lengths(n_k, lam_W, lam_H, M):\n"
         "    n = torch.tensor([float(v) for v in n_k], dtype=torch.float64)\n"
         "    N = n.sum()\n"
         "    b = M * N * (N * lam_W ** M * lam_H) ** (1 / M)\n"
         "    x = (n / b).sqrt() - 1                      # the M = 1 formula for every depth\n"
         "    w2 = N * lam_H * x.clamp(min=0) ** M\n"
         "    return w2.sqrt(), w2.sqrt() / (w2 + N * lam_H)\n"),
        ("def imbalanced_lengths(n_k, lam_W, lam_H, M):\n"
         "    n = torch.tensor([float(v) for v in n_k], dtype=torch.float64)\n"
         "    N = float(n.sum())\n"
         "    b = M * N * (N * lam_W ** M * lam_H) ** (1 / M)\n"
         "    xs = []\n"
         "    for nk in n.tolist():\n"
         "        f = lambda x: M * x ** (M - 1) / (x ** M + 1) ** 2 - b / nk\n"
         "        peak = ((M - 1) / (M + 1)) ** (1 / M)\n"
         "        if f(peak) <= 0:\n"
         "            xs.append(0.0)\n"
         "            continue\n"
         "        lo, hi = peak, max(1.0, peak)\n"
         "        while f(hi) > 0:\n"
         "            hi *= 2\n"
         "        for _ in range(200):\n"
         "            mid = (lo + hi) / 2\n"
         "            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)\n"
         "        xs.append(lo)                     # never compares with the collapsed x = 0\n"
         "    x = torch.tensor(xs, dtype=torch.float64)\n"
         "    w2 = N * lam_H * x ** M\n"
         "    return w2.sqrt(), w2.sqrt() / (w2 + N * lam_H)\n"),
    ],
    "orthogonal_frame_error": [
        ("def orthogonal_frame_error(W):\n"
         "    G = W.double() @ W.double().T\n"
         "    K = G.shape[0]\n"
         "    E = torch.eye(K, dtype=G.dtype) - 1.0 / K       # compares with a simplex ETF instead\n"
         "    return float((G / G.norm() - E / E.norm()).norm())\n"),
        ("def orthogonal_frame_error(W):\n"
         "    G = W.double().T @ W.double()                 # (d, d) instead of (K, K)\n"
         "    d = G.shape[0]\n"
         "    return float((G / G.norm() - torch.eye(d, dtype=G.dtype) / d ** 0.5).norm())\n"),
    ],
}

SIZES = [200, 100, 50, 50]
LAM = 5e-4


def _labels(sizes):
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    return y, F.one_hot(y, len(sizes)).double()


# ----------------------------------------------------------------------------- the loss

def test_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(7, 5, generator=g, dtype=torch.float64)
    Ws = [torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)]
    Y = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 0])).double()
    want = ((Ws[1] @ Ws[0] @ H.T - Y.T).norm() ** 2 / 14 + 0.1 / 2 * (Ws[0].norm() ** 2 + Ws[1].norm() ** 2)
            + 0.2 / 2 * H.norm() ** 2)
    torch.testing.assert_close(dl.deep_ufm_loss(H, Ws, Y, 0.1, 0.2), want)
    torch.testing.assert_close(dl.product(Ws), Ws[1] @ Ws[0])


def test_loss_bad_input():
    H, W, Y = torch.randn(4, 3), torch.randn(2, 3), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="columns"):
        dl.deep_ufm_loss(H, [torch.randn(2, 5)], Y, 0.1, 0.1)
    with pytest.raises(ValueError, match="Y"):
        dl.deep_ufm_loss(H, [W], torch.zeros(3, 2), 0.1, 0.1)
    with pytest.raises(TypeError, match="Ws"):
        dl.deep_ufm_loss(H, W, Y, 0.1, 0.1)
    with pytest.raises(ValueError, match="lam_W"):
        dl.deep_ufm_loss(H, [W], Y, -1.0, 0.1)
    with pytest.raises(ValueError, match=r"Ws\[1\]"):
        dl.product([torch.randn(3, 4), torch.randn(2, 5)])


# ----------------------------------------------------------------------------- the closed form

def test_closed_form_known_values_depth_one():
    w, h = dl.imbalanced_lengths(SIZES, LAM, LAM, 1)
    assert w.dtype == h.dtype == torch.float64 and w.shape == (4,)
    torch.testing.assert_close(w ** 2, torch.tensor([13.9421356, 9.8, 6.8710678, 6.8710678], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    # M = 1 in closed form: x = sqrt(n_k / b) - 1 with b = N^2 lam_W lam_H
    N = sum(SIZES)
    x = torch.tensor([math.sqrt(n / (N * N * LAM * LAM)) - 1 for n in SIZES], dtype=torch.float64)
    torch.testing.assert_close(w ** 2, N * LAM * x)


@pytest.mark.parametrize("M", [1, 2, 3, 5])
def test_closed_form_is_a_stationary_point_of_the_per_class_objective(M):
    w, h = dl.imbalanced_lengths(SIZES, LAM, 2 * LAM, M)
    N = sum(SIZES)
    b = M * N * (N * LAM ** M * 2 * LAM) ** (1 / M)
    x = (w ** 2 / (N * 2 * LAM)) ** (1 / M)
    lhs = M * x ** (M - 1) / (x ** M + 1) ** 2
    torch.testing.assert_close(lhs, b / torch.tensor(SIZES, dtype=torch.float64), rtol=1e-9, atol=0)
    # majority classes: longer classifier rows, shorter feature means
    assert (w[:-1] >= w[1:]).all() and (h[:-1] <= h[1:]).all()


def test_balanced_classes_give_equal_lengths():
    w, h = dl.imbalanced_lengths(torch.tensor([30, 30, 30]), 1e-3, 1e-3, 3)
    assert torch.allclose(w, w[0].expand(3)) and torch.allclose(h, h[0].expand(3))
    geo = dl.imbalanced_geometry([30, 30, 30], 1e-3, 1e-3, 3)
    assert dl.orthogonal_frame_error(torch.diag(geo.w_len)) < 1e-12


def test_small_classes_collapse_to_zero():
    w, h = dl.imbalanced_lengths([1000, 5], 1e-2, 1e-2, 1)        # b = N^2 lam^2 = 101 > 5
    assert w[0] > 0 and w[1] == 0 and h[1] == 0
    # depth 2: for b/n_k in [f(1), max f) = [0.5, 0.6495) roots exist, but the largest is x <= 1,
    # where the collapsed solution x = 0 has the lower objective (n/(x^2+1) + b x >= n <=> x <= 1)
    n, M, c = [1000, 10], 2, 0.55
    N = sum(n)
    lam = (((c * n[1] / (M * N)) ** 2) / N) ** (1 / 3)          # so that b / n[1] = c
    b = M * N * (N * lam ** M * lam) ** (1 / M)
    assert abs(b / n[1] - c) < 1e-9
    w, _ = dl.imbalanced_lengths(n, lam, lam, M)
    assert w[0] > 0 and w[1] == 0
    w, _ = dl.imbalanced_lengths(n, lam * 0.9, lam * 0.9, M)    # a little less decay: the class survives
    assert w[1] > 0


def test_closed_form_bad_input():
    with pytest.raises(ValueError, match="M"):
        dl.imbalanced_lengths(SIZES, LAM, LAM, 0)
    with pytest.raises(ValueError, match="n_k"):
        dl.imbalanced_lengths([10, 0], LAM, LAM, 1)
    with pytest.raises(TypeError, match="n_k"):
        dl.imbalanced_lengths("10,20", LAM, LAM, 1)
    with pytest.raises(ValueError, match="lam_W"):
        dl.imbalanced_lengths(SIZES, 0.0, LAM, 1)


# ----------------------------------------------------------------------------- gradient descent vs theory

@pytest.mark.parametrize("M", [1, 2, 3])
def test_gradient_descent_matches_the_closed_form(M):
    """The issue's check: on class sizes [200, 100, 50, 50], GD reaches the theorem's geometry to 1e-3."""
    y, Y = _labels(SIZES)
    model = dl.DeepUFM(len(y), 16, 4, M, generator=torch.Generator().manual_seed(M))
    dl.gradient_descent(model, Y, LAM, LAM, steps=1200, lr=1.0)
    W = model.classifier()
    geo = dl.imbalanced_geometry(SIZES, LAM, LAM, M)
    torch.testing.assert_close(W @ W.T, geo.WWt, rtol=0, atol=1e-3 * float(geo.WWt.max()))
    mu, _ = class_means(model.H.detach(), y)
    torch.testing.assert_close(mu @ mu.T, geo.HtH, rtol=0, atol=1e-3 * float(geo.HtH.max()))
    torch.testing.assert_close(W @ mu.T, geo.WH, rtol=0, atol=1e-3)
    assert dl.gram_error(W, geo.WWt) < 1e-3


def test_bias_free_gives_orthogonal_frame_and_bias_gives_simplex_etf():
    y, Y = _labels([60] * 4)
    free = dl.DeepUFM(len(y), 8, 4, 2, generator=torch.Generator().manual_seed(0))
    dl.gradient_descent(free, Y, LAM, LAM, steps=800, lr=1.0)
    biased = dl.DeepUFM(len(y), 8, 4, 2, bias=True, generator=torch.Generator().manual_seed(0))
    dl.gradient_descent(biased, Y, LAM, LAM, steps=800, lr=1.0)
    assert dl.orthogonal_frame_error(free.classifier()) < 1e-3 < 0.4 < etf_distance(free.classifier())
    assert etf_distance(biased.classifier()) < 1e-3 < 0.4 < dl.orthogonal_frame_error(biased.classifier())
    mu, _ = class_means(free.H.detach(), y)
    assert dl.alignment_error(free.classifier(), mu) < 1e-3


def test_gradient_descent_records_and_validates():
    y, Y = _labels([5, 5])
    model = dl.DeepUFM(10, 3, 2, 1, generator=torch.Generator().manual_seed(0))
    trace = dl.gradient_descent(model, Y, LAM, LAM, steps=10, lr=0.1, record_every=5,
                                measure=lambda m: {"norm": float(m.classifier().norm())})
    assert [r["step"] for r in trace] == [5, 10] and "norm" in trace[0]
    with pytest.raises(ValueError, match="Y"):
        dl.gradient_descent(model, Y[:3], LAM, LAM, steps=1)
    with pytest.raises(ValueError, match="kind"):
        model.loss(Y, LAM, LAM, kind="hinge")


# ----------------------------------------------------------------------------- frame errors

def test_orthogonal_frame_error_properties():
    g = torch.Generator().manual_seed(3)
    Q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    W = 3.0 * Q[:4]                                        # 4 orthonormal rows in R^6, scaled
    assert dl.orthogonal_frame_error(W) < 1e-12
    assert dl.orthogonal_frame_error(W.float()) < 1e-6
    R = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    A = torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert abs(dl.orthogonal_frame_error(A @ R) - dl.orthogonal_frame_error(A)) < 1e-12   # rotation invariant
    E = torch.eye(4, dtype=torch.float64) - 0.25
    assert abs(dl.orthogonal_frame_error(E) - etf_distance(torch.eye(4, dtype=torch.float64))) < 1e-12
    with pytest.raises(ValueError, match="W"):
        dl.orthogonal_frame_error(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="W"):
        dl.orthogonal_frame_error([[1.0, 0.0]])


def test_gram_error_and_alignment():
    W = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert dl.gram_error(W, torch.diag(torch.tensor([9.0, 4.0, 1.0]))) < 1e-12
    assert dl.gram_error(W, torch.eye(3)) > 0.1
    assert dl.alignment_error(W, 2 * W) < 1e-12
    with pytest.raises(ValueError, match="target"):
        dl.gram_error(W, torch.eye(2))
    with pytest.raises(ValueError, match="means"):
        dl.alignment_error(W, torch.eye(2))


def test_linear_head_and_model_shapes():
    head = dl.linear_head(16, 10, 3, width=32)
    assert [tuple(l.weight.shape) for l in head] == [(32, 16), (32, 32), (10, 32)]
    assert all(l.bias is None for l in head)
    m = dl.DeepUFM(12, 5, 3, 2, widths=[7])
    assert m().shape == (12, 3) and m.classifier().shape == (3, 5) and m.depth == 2
    with pytest.raises(ValueError, match="widths"):
        dl.DeepUFM(12, 5, 3, 3, widths=[7])
