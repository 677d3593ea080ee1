"""Tests of layerwise.nc_mixup (Mixup and neural collapse), plus the answers the grading tests submit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from layerwise import nc_mixup as ncm
from layerwise.core.augment import mixup
from layerwise.neural_collapse import simplex_etf

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "triangle_projection": (
        "def triangle_projection(H, W3):\n"
        "    # the orthogonal factor from the eigendecomposition of M M^T: Q = (M M^T)^(+1/2) M\n"
        "    Md = (W3 - W3.mean(0, keepdim=True)).double()\n"
        "    evals, evecs = torch.linalg.eigh(Md @ Md.T)\n"
        "    top = evecs[:, 1:]                       # ascending: the two nonzero eigenvalues\n"
        "    Q = top @ torch.diag(evals[1:].rsqrt()) @ top.T @ Md\n"
        "    X = (H.double() - W3.double().mean(0)) @ Q.T @ A_TRIANGLE.T\n"
        "    return X.to(H.dtype)\n"),
    "mixed_pair_top2": (
        "def mixed_pair_top2(logits, y_a, y_b):\n"
        "    first = logits.argmax(1)\n"
        "    rest = logits.clone()\n"
        "    rest[torch.arange(len(first)), first] = float('-inf')\n"
        "    second = rest.argmax(1)\n"
        "    got = torch.stack([torch.minimum(first, second), torch.maximum(first, second)], 1)\n"
        "    want = torch.stack([torch.minimum(y_a, y_b), torch.maximum(y_a, y_b)], 1)\n"
        "    return (got == want).all(1)\n"),
    "expected_calibration_error": (
        "def expected_calibration_error(probs, y, bins=15):\n"
        "    conf = probs.max(1).values\n"
        "    correct = (probs.argmax(1) == y).to(probs.dtype)\n"
        "    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)\n"
        "    idx = (torch.bucketize(conf, edges) - 1).clamp(0, bins - 1)  # (lo, hi]\n"
        "    total = torch.zeros((), dtype=probs.dtype)\n"
        "    for b in idx.unique():\n"
        "        m = idx == b\n"
        "        total = total + m.sum() * (correct[m].mean() - conf[m].mean()).abs()\n"
        "    return total / len(y)\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests.
WRONG_ANSWERS = {
    "triangle_projection": [
        ("def triangle_projection(H, W3):\n"
         "    origin = W3.mean(0)\n"
         "    U, S, Vh = torch.linalg.svd(W3 - origin, full_matrices=False)\n"
         "    return (H - origin) @ Vh[:2].T  # an orthonormal basis of the plane, not the triangle's frame\n"),
        ("def triangle_projection(H, W3):\n"
         "    origin = W3.mean(0)\n"
         "    U, S, Vh = torch.linalg.svd(W3 - origin, full_matrices=False)\n"
         "    P = A_TRIANGLE.to(W3.dtype) @ U[:, :2] @ Vh[:2]\n"
         "    return (H - H.mean(0)) @ P.T  # centred by the features' own mean\n"),
    ],
    "mixed_pair_top2": [
        ("def mixed_pair_top2(logits, y_a, y_b):\n"
         "    top = logits.topk(2, dim=1).indices\n"
         "    return (top[:, 0] == y_a) & (top[:, 1] == y_b)  # order matters: only right when lambda > 1/2\n"),
        ("def mixed_pair_top2(logits, y_a, y_b):\n"
         "    top = logits.topk(2, dim=1).indices.sort(1).values\n"
         "    pair = torch.stack([y_a, y_b], 1).sort(1).values\n"
         "    return (top == pair).all(1).float()  # a float tensor, not bool\n"),
    ],
    "expected_calibration_error": [
        ("def expected_calibration_error(probs, y, bins=15):\n"
         "    conf, pred = probs.max(1)\n"
         "    correct = (pred == y).to(probs.dtype)\n"
         "    idx = (torch.ceil(conf * bins) - 1).clamp(0, bins - 1).long()\n"
         "    gaps = [(correct[idx == b].mean() - conf[idx == b].mean()).abs() for b in idx.unique()]\n"
         "    return torch.stack(gaps).mean()  # bins not weighted by their share\n"),
        ("def expected_calibration_error(probs, y, bins=15):\n"
         "    conf, pred = probs.max(1)\n"
         "    correct = (pred == y).to(probs.dtype)\n"
         "    idx = (conf * bins).floor().clamp(max=bins - 1).long()  # bins [lo, hi) instead of (lo, hi]\n"
         "    diff = torch.zeros(bins, dtype=probs.dtype).index_add_(0, idx, correct - conf)\n"
         "    return diff.abs().sum() / len(y)\n"),
    ],
}


# ----------------------------------------------------------------------------- triangle projection

def test_triangle_of_a_simplex_etf_is_equilateral_and_fixed():
    g = torch.Generator().manual_seed(0)
    for d in (2, 3, 16):
        E = 3.0 * simplex_etf(3, d, generator=g)
        V = ncm.triangle_projection(E, E)
        want = 3.0 * torch.tensor([[0.75 ** 0.5, -0.5], [-(0.75 ** 0.5), -0.5], [0.0, 1.0]], dtype=torch.float64)
        torch.testing.assert_close(V, want)


def test_triangle_invariant_to_joint_rotation_and_basis():
    g = torch.Generator().manual_seed(1)
    W3 = torch.randn(3, 10, generator=g, dtype=torch.float64)
    H = torch.randn(25, 10, generator=g, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    torch.testing.assert_close(ncm.triangle_projection(H @ R, W3 @ R), ncm.triangle_projection(H, W3))


def test_triangle_is_an_orthogonal_projection_on_the_plane_of_the_centred_rows():
    g = torch.Generator().manual_seed(2)
    W3 = torch.randn(3, 8, generator=g, dtype=torch.float64)
    P, origin = ncm.triangle_basis(W3)
    torch.testing.assert_close(P @ P.T, torch.eye(2, dtype=torch.float64))        # orthonormal rows
    torch.testing.assert_close(origin, W3.mean(0))
    M = W3 - origin
    torch.testing.assert_close(M @ P.T @ P, M)                                     # rows lie in P's span
    # a direction orthogonal to the plane changes nothing; lifting back is exact in the plane
    v = torch.randn(8, generator=g, dtype=torch.float64)
    v = v - P.T @ (P @ v)
    H = torch.randn(5, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ncm.triangle_projection(H + v, W3), ncm.triangle_projection(H, W3))
    X = ncm.triangle_projection(H, W3)
    torch.testing.assert_close(ncm.triangle_projection(ncm.triangle_lift(X, W3), W3), X)


def test_triangle_regions_from_lift_match_true_argmax():
    g = torch.Generator().manual_seed(3)
    W3 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    b3 = torch.randn(3, generator=g, dtype=torch.float64)
    H = 3 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    lifted = ncm.triangle_lift(ncm.triangle_projection(H, W3), W3)
    assert torch.equal((lifted @ W3.T + b3).argmax(1), (H @ W3.T + b3).argmax(1))


def test_triangle_keeps_dtype_and_rejects_bad_input():
    W3 = torch.randn(3, 5)
    assert ncm.triangle_projection(torch.randn(4, 5), W3).dtype == torch.float32
    with pytest.raises(ValueError, match="W3"):
        ncm.triangle_projection(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="collinear"):
        ncm.triangle_projection(torch.randn(4, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="dimension"):
        ncm.triangle_projection(torch.randn(4, 6), W3)
    with pytest.raises(TypeError, match="H"):
        ncm.triangle_projection([[1.0] * 5], W3)
    with pytest.raises(TypeError, match="W3"):
        ncm.triangle_projection(torch.randn(4, 5), torch.ones(3, 5, dtype=torch.long))


# ----------------------------------------------------------------------------- alignment and top-2

def test_alignment_cosines():
    W = torch.eye(3, 4, dtype=torch.float64)
    mu = torch.full((4,), 0.5, dtype=torch.float64)
    H = mu + torch.tensor([[2.0, 0, 0, 0], [0, -1.0, 0, 0], [1.0, 0, 1.0, 0]], dtype=torch.float64)
    got = ncm.alignment_cosines(H, torch.tensor([0, 1, 2]), W, mu)
    torch.testing.assert_close(got, torch.tensor([1.0, -1.0, 2 ** -0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="mu_G"):
        ncm.alignment_cosines(H, torch.tensor([0, 1, 2]), W, mu[:3])


def test_mixed_pair_top2_either_order_and_errors():
    logits = torch.tensor([[3.0, 2.0, 0.0], [2.0, 3.0, 0.0], [3.0, 0.0, 2.0]])
    got = ncm.mixed_pair_top2(logits, torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]))
    assert got.dtype == torch.bool and got.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="differ"):
        ncm.mixed_pair_top2(logits, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="y_b"):
        ncm.mixed_pair_top2(logits, torch.tensor([0, 1, 2]), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="y_a"):
        ncm.mixed_pair_top2(logits, torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1, 2, 0]))


# ----------------------------------------------------------------------------- calibration

def _ece_loop(probs, y, bins):
    """Guo et al.'s recipe written as a loop over bins (an independent formulation)."""
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.double().mean().item() * abs((pred[m] == y[m]).double().mean().item() - conf[m].double().mean().item())
    return total


def test_ece_matches_loop_and_reliability_curve():
    g = torch.Generator().manual_seed(4)
    probs = (3 * torch.randn(500, 10, generator=g, dtype=torch.float64)).softmax(1)
    y = torch.randint(0, 10, (500,), generator=g)
    for bins in (1, 5, 15):
        ece = ncm.expected_calibration_error(probs, y, bins)
        assert ece.dim() == 0 and ece.dtype == torch.float64
        assert abs(ece.item() - _ece_loop(probs, y, bins)) < 1e-12
        r = ncm.reliability_curve(probs, y, bins)
        ok = r.count > 0
        from_curve = (r.count[ok] / 500 * (r.accuracy[ok] - r.confidence[ok]).abs()).sum()
        torch.testing.assert_close(from_curve, ece)
        assert int(r.count.sum()) == 500


def test_ece_zero_when_calibrated_and_bins_closed_on_the_right():
    one_hot = torch.eye(4)[torch.tensor([0, 1, 2, 3])]
    assert ncm.expected_calibration_error(one_hot, torch.tensor([0, 1, 2, 3]), 10).item() == 0.0
    # two predictions at confidence 0.5 (bin (0.25, 0.5]) and 1.0 (bin (0.75, 1]), one right, one wrong
    probs = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]], dtype=torch.float64)
    r = ncm.reliability_curve(probs, torch.tensor([0, 1]), 4)
    assert r.count.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert ncm.expected_calibration_error(probs, torch.tensor([0, 1]), 4).item() == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


@pytest.mark.parametrize("bins", [0, -1, 2.5, True])
def test_ece_bad_bins(bins):
    with pytest.raises(ValueError, match="bins"):
        ncm.expected_calibration_error(torch.full((2, 2), 0.5), torch.tensor([0, 1]), bins)


def test_ece_bad_shapes():
    with pytest.raises(ValueError, match="y"):
        ncm.expected_calibration_error(torch.full((3, 2), 0.5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="probs"):
        ncm.expected_calibration_error(torch.full((3,), 0.5), torch.tensor([0, 1, 0]))


# ----------------------------------------------------------------------------- mixed inputs

def test_mix_dataset_uses_core_mixup_and_classes():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(60, 1, 4, 4, generator=g)
    y = torch.arange(60) % 6
    ms = ncm.mix_dataset(X, y, [0.5, 0.9, 1.0], classes=[1, 2, 4], batch_size=16, generator=g)
    assert ms.x.shape == (48, 1, 4, 4) and ms.lam.tolist() == [0.5] * 16 + [0.9] * 16 + [1.0] * 16
    assert set(ms.y_a.tolist()) <= {1, 2, 4} and set(ms.y_b.tolist()) <= {1, 2, 4}
    assert ms.same.dtype == torch.bool
    # every mix is lam * x_a + (1 - lam) * x_b for examples of the stated classes
    for i in (0, 20, 47):
        lam = ms.lam[i].item()
        ok = False
        for a in torch.nonzero(y == ms.y_a[i]).flatten():
            for b in torch.nonzero(y == ms.y_b[i]).flatten():
                if torch.allclose(ms.x[i], lam * X[a] + (1 - lam) * X[b], atol=1e-6):
                    ok = True
        assert ok
    x0, ya, yb, lam = mixup(X[:4], y[:4], 1.0, torch.arange(4))
    assert torch.equal(x0, X[:4]) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="lams"):
        ncm.mix_dataset(X, y, [1.5])
    with pytest.raises(ValueError, match="two examples"):
        ncm.mix_dataset(X, y, [0.5], classes=[99])


def test_mixup_network_puts_cross_class_mixes_on_the_boundary():
    """A small end-to-end check of the paper's claim on digits (a few seconds)."""
    from layerwise.core import train
    from layerwise.core.augment import Mixup, mixed_cross_entropy
    from layerwise.data import digits
    from layerwise.neural_collapse import collect_features

    torch.set_num_threads(1)
    d = digits(flat=True)
    top2 = {}
    for name, aug in (("erm", None), ("mixup", Mixup(1.0, seed=0))):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 32), nn.Linear(32, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        train(model, d.train, mixed_cross_entropy, opt, epochs=30, batch_size=128, augment=aug, progress=False,
              generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        ms = ncm.mix_dataset(d.X_train, d.y_train, torch.rand(20, generator=g), generator=g)
        _, logits = collect_features(model, ms.x)
        cross = ~ms.same
        top2[name] = ncm.mixed_pair_top2(logits[cross], ms.y_a[cross], ms.y_b[cross]).float().mean().item()
    assert top2["mixup"] > 0.5 and top2["mixup"] > top2["erm"] + 0.1, top2


# ----------------------------------------------------------------------------- the unconstrained features model

def _etf(C=5, d=7, seed=0):
    return simplex_etf(C, d, generator=torch.Generator().manual_seed(seed))


def test_ufm_optimum_has_zero_gradient_and_batches():
    W = _etf()
    lams = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    H = ncm.ufm_mixup_features(W, lams, 1, 3, 0.05)
    assert H.shape == (5, 7) and H.dtype == torch.float64
    for lam, h in zip(lams.tolist(), H):
        h = h.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ncm.ufm_mixup_loss(h, W, lam, 1, 3, 0.05), h)
        assert grad.norm() < 1e-9
        one = ncm.ufm_mixup_features(W, lam, 1, 3, 0.05)
        assert one.shape == (7,) and torch.allclose(one, h.detach(), atol=1e-12)
    # a float32 classifier and a non-ETF one work too (the optimum is defined for any W)
    Wr = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    h = ncm.ufm_mixup_features(Wr, 0.3, 0, 2, 0.1).requires_grad_(True)
    (grad,) = torch.autograd.grad(ncm.ufm_mixup_loss(h, Wr, 0.3, 0, 2, 0.1), h)
    assert grad.norm() < 1e-9


def test_ufm_same_class_optimum_is_parallel_to_its_row_for_any_lambda():
    W = _etf()
    for c in range(5):
        H = ncm.ufm_mixup_features(W, torch.tensor([0.1, 0.7], dtype=torch.float64), c, c, 0.01)
        cos = (H @ W[c]) / (H.norm(dim=1) * W[c].norm())
        assert (cos > 1 - 1e-12).all() and torch.allclose(H[0], H[1], atol=1e-12)


def test_ufm_cross_class_optimum_in_span_symmetric_and_on_the_boundary_at_half():
    W = _etf()
    lams = torch.linspace(0, 1, 11, dtype=torch.float64)
    for a, b in [(0, 1), (2, 4)]:
        H = ncm.ufm_mixup_features(W, lams, a, b, 0.01)
        basis = torch.linalg.qr(W[[a, b]].T)[0]                   # (d, 2) orthonormal basis of span(w_a, w_b)
        residual = H - (H @ basis) @ basis.T
        assert residual.norm(dim=1).max() < 1e-10 * H.norm(dim=1).max()
        H_swapped = ncm.ufm_mixup_features(W, 1 - lams, b, a, 0.01)
        assert torch.allclose(H, H_swapped, atol=1e-10)
        z = ncm.ufm_mixup_features(W, 0.5, a, b, 0.01) @ W.T
        assert abs(float(z[a] - z[b])) < 1e-9
        assert ncm.mixed_pair_top2(z.view(1, -1), torch.tensor([a]), torch.tensor([b])).item()


def test_ufm_rejects_bad_input():
    W = _etf()
    with pytest.raises(ValueError, match="lam"):
        ncm.ufm_mixup_features(W, 1.5, 0, 1, 0.1)
    with pytest.raises(ValueError, match="lam_H"):
        ncm.ufm_mixup_features(W, 0.5, 0, 1, 0.0)
    with pytest.raises(ValueError, match="b must be a class index"):
        ncm.ufm_mixup_features(W, 0.5, 0, 5, 0.1)
    with pytest.raises(ValueError, match="h must be"):
        ncm.ufm_mixup_loss(torch.zeros(3, dtype=torch.float64), W, 0.5, 0, 1, 0.1)
    with pytest.raises(TypeError, match="W must be"):
        ncm.ufm_mixup_features(W.numpy(), 0.5, 0, 1, 0.1)
