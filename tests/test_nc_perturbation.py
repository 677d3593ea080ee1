"""Tests of layerwise.nc_perturbation (Tirer, Huang & Niles-Weed 2023), plus the answers the grading
tests submit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from layerwise import nc_perturbation as ncp
from layerwise import neural_collapse as nc

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "optimal_W": (
        "def optimal_W(H, Y, lam_W, n):\n"
        "    # push-through identity: Y H^T (H H^T + c I_d)^-1 = Y (H^T H + c I_N)^-1 H^T\n"
        "    N = H.shape[1]\n"
        "    G = H.T @ H + n * lam_W * torch.eye(N, dtype=H.dtype)\n"
        "    return Y.to(H.dtype) @ torch.linalg.inv(G) @ H.T\n"),
    "central_path_step": (
        "def central_path_step(H, Y, lam_W, lam_H, lr, beta=0.0, H0=None):\n"
        "    # autograd on f(W*, H) with W* held fixed (envelope theorem)\n"
        "    K, N = Y.shape\n"
        "    Y = Y.to(H.dtype)\n"
        "    A = H @ H.T + (N / K) * lam_W * torch.eye(H.shape[0], dtype=H.dtype)\n"
        "    W = (Y @ H.T @ torch.linalg.inv(A)).detach()\n"
        "    Hv = H.detach().clone().requires_grad_(True)\n"
        "    f = ((W @ Hv - Y) ** 2).sum() / (2 * N) + lam_H / (2 * N) * (Hv ** 2).sum()\n"
        "    if beta:\n"
        "        f = f + beta / (2 * N) * ((Hv - H0) ** 2).sum()\n"
        "    (g,) = torch.autograd.grad(f, Hv)\n"
        "    return (H - lr * g).detach()\n"),
    "nc1_quotient": (
        "def nc1_quotient(H, y):\n"
        "    K = int(y.max()) + 1\n"
        "    mu_G = H.mean(dim=1)\n"
        "    within, between = 0.0, 0.0\n"
        "    for c in range(K):\n"
        "        Hc = H[:, y == c]\n"
        "        mu = Hc.mean(dim=1, keepdim=True)\n"
        "        within = within + ((Hc - mu) ** 2).sum()\n"
        "        between = between + ((mu.squeeze(1) - mu_G) ** 2).sum()\n"
        "    return float((within / H.shape[1]) / (between / K))\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests.
WRONG_ANSWERS = {
    "optimal_W": [
        ("def optimal_W(H, Y, lam_W, n):\n"
         "    A = H @ H.T + lam_W * torch.eye(H.shape[0], dtype=H.dtype)  # forgot the factor n\n"
         "    return Y.to(H.dtype) @ H.T @ torch.linalg.inv(A)\n"),
        ("def optimal_W(H, Y, lam_W, n):\n"
         "    A = H @ H.T + n * lam_W * torch.eye(H.shape[0], dtype=H.dtype)\n"
         "    return torch.linalg.solve(A, Y.to(H.dtype) @ H.T)  # inverse on the wrong side\n"),
    ],
    "central_path_step": [
        ("def central_path_step(H, Y, lam_W, lam_H, lr, beta=0.0, H0=None):\n"
         "    K, N = Y.shape\n"
         "    Y = Y.to(H.dtype)\n"
         "    A = H @ H.T + (N / K) * lam_W * torch.eye(H.shape[0], dtype=H.dtype)\n"
         "    W = Y @ H.T @ torch.linalg.inv(A)\n"
         "    G = W.T @ (W @ H - Y) + lam_H * H  # forgot the 1/N of the objective\n"
         "    if beta:\n"
         "        G = G + beta * (H - H0)\n"
         "    return H - lr * G\n"),
        ("def central_path_step(H, Y, lam_W, lam_H, lr, beta=0.0, H0=None):\n"
         "    K, N = Y.shape\n"
         "    Y = Y.to(H.dtype)\n"
         "    A = H @ H.T + (N / K) * lam_W * torch.eye(H.shape[0], dtype=H.dtype)\n"
         "    W = Y @ H.T @ torch.linalg.inv(A)\n"
         "    G = (W.T @ (W @ H - Y) + lam_H * H) / N  # ignores the pull back to H0\n"
         "    return H - lr * G\n"),
    ],
    "nc1_quotient": [
        ("def nc1_quotient(H, y):\n"
         "    K = int(y.max()) + 1\n"
         "    mu = torch.stack([H[:, y == c].mean(1) for c in range(K)], 1)\n"
         "    Sw = (H - mu[:, y]) @ (H - mu[:, y]).T / H.shape[1]\n"
         "    Mc = mu - H.mean(1, keepdim=True)\n"
         "    Sb = Mc @ Mc.T / K\n"
         "    return float(torch.trace(Sw @ torch.linalg.pinv(Sb)) / K)  # NC1, not the trace quotient\n"),
        ("def nc1_quotient(H, y):\n"
         "    K = int(y.max()) + 1\n"
         "    d, N = H.shape\n"
         "    Hk = H.reshape(d, K, N // K)  # assumes sorted, balanced classes\n"
         "    mu = Hk.mean(2, keepdim=True)\n"
         "    within = ((Hk - mu) ** 2).sum() / N\n"
         "    between = ((mu.squeeze(2) - H.mean(1, keepdim=True)) ** 2).sum() / K\n"
         "    return float(within / between)\n"),
    ],
}


def _problem(K=4, n=10, d=20, seed=0, noise=1.0, dtype=torch.float64):
    Y, y = ncp.class_targets(K, n, dtype=dtype)
    H0 = ncp.ufm_features(K, n, d, noise=noise, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return H0, Y, y


# ----------------------------------------------------------------------------- the model

def test_class_targets():
    Y, y = ncp.class_targets(3, 2)
    assert torch.equal(y, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(Y, torch.tensor([[1., 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]],
                                       dtype=torch.float64))


def test_ufm_features_shapes_and_etf():
    g = torch.Generator().manual_seed(0)
    H = ncp.ufm_features(5, 3, 8, mean_scale=2.0, noise=0.0, etf=True, generator=g)
    assert H.shape == (8, 15)
    _, y = ncp.class_targets(5, 3)
    assert ncp.nc1_quotient(H, y) < 1e-20
    assert nc.etf_distance(nc.class_means(H.T, y)[0]) < 1e-10


@pytest.mark.parametrize("shape", [(4, 10, 20), (3, 5, 2), (10, 3, 7)])
def test_optimal_W_zeroes_the_gradient(shape):
    K, n, d = shape
    H, Y, _ = _problem(K, n, d, seed=d)
    lam_W, lam_H = 0.3, 0.1
    W = ncp.optimal_W(H, Y, lam_W, n).requires_grad_(True)
    assert W.shape == (K, d)
    ncp.perturbed_ufm_loss(W, H, Y, lam_W, lam_H).backward()
    assert W.grad.abs().max() < 1e-10


def test_optimal_W_is_the_minimum():
    H, Y, _ = _problem(seed=3)
    W = ncp.optimal_W(H, Y, 0.2, 10)
    best = ncp.perturbed_ufm_loss(W, H, Y, 0.2, 0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = W + 1e-2 * torch.randn(W.shape, generator=g, dtype=W.dtype)
        assert ncp.perturbed_ufm_loss(other, H, Y, 0.2, 0.1) > best


def test_optimal_W_known_answer_and_dtype():
    H = torch.tensor([[1., 1, 0, 0], [0, 0, 1, 1]])                    # H H^T = 2 I
    Y, _ = ncp.class_targets(2, 2, dtype=torch.float32)
    W = ncp.optimal_W(H, Y, 0.5, 2)                                     # = 2 / (2 + 2 * 0.5) I
    torch.testing.assert_close(W, torch.eye(2) * 2 / 3)
    assert W.dtype == torch.float32


def test_central_path_grad_matches_autograd():
    H0, Y, _ = _problem(seed=1)
    H = H0 + 0.3 * torch.randn(H0.shape, generator=torch.Generator().manual_seed(1), dtype=H0.dtype)
    lam_W, lam_H, beta = 0.05, 0.02, 3.0
    W = ncp.optimal_W(H, Y, lam_W, 10)
    Hv = H.clone().requires_grad_(True)
    ncp.perturbed_ufm_loss(W, Hv, Y, lam_W, lam_H, beta, H0).backward()
    torch.testing.assert_close(ncp.central_path_grad(H, Y, lam_W, lam_H, beta, H0), Hv.grad)

    # envelope theorem: also the gradient of the reduced objective min_W f(W, H)
    def reduced(Hr):
        return ncp.perturbed_ufm_loss(ncp.optimal_W(Hr, Y, lam_W, 10), Hr, Y, lam_W, lam_H, beta, H0)
    Hr = H.clone().requires_grad_(True)
    reduced(Hr).backward()
    torch.testing.assert_close(ncp.central_path_grad(H, Y, lam_W, lam_H, beta, H0), Hr.grad)


def test_central_path_step_is_a_gradient_step_and_decreases_f():
    H0, Y, _ = _problem(seed=2)
    step = ncp.central_path_step(H0, Y, 0.1, 0.1, 5.0)
    torch.testing.assert_close(step, H0 - 5.0 * ncp.central_path_grad(H0, Y, 0.1, 0.1))

    def reduced(H):
        return float(ncp.perturbed_ufm_loss(ncp.optimal_W(H, Y, 0.1, 10), H, Y, 0.1, 0.1))
    traj = ncp.central_path(H0, Y, 0.1, 0.1, 5.0, 50)
    values = [reduced(H) for H in traj]
    assert traj.shape == (51, *H0.shape) and torch.equal(traj[0], H0)
    assert all(b < a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("seed,lam_W,lam_H", [(0, 0.01, 0.01), (1, 0.1, 0.05), (2, 0.005, 0.05), (3, 0.2, 0.2)])
def test_quotient_strictly_decreases_along_the_central_path(seed, lam_W, lam_H):
    """The paper's §4 result: Tr(Sigma_W)/Tr(Sigma_B) strictly decreases along the flow from H0."""
    H0, Y, y = _problem(seed=seed, noise=1.5)
    traj = ncp.central_path(H0, Y, lam_W, lam_H, lr=2.0, steps=300)
    q = np.array([ncp.nc1_quotient(H, y) for H in traj])
    assert (np.diff(q) < 0).all(), q
    assert q[-1] < q[0]


def test_nc1_also_decreases_along_the_central_path():
    H0, Y, y = _problem(seed=5, noise=1.5)
    traj = ncp.central_path(H0, Y, 0.1, 0.1, lr=2.0, steps=200)
    values = [nc.nc1(H.T, y) for H in traj[::20]]
    assert values == sorted(values, reverse=True)


def test_beta_controls_how_far_the_minimizer_moves():
    H0, Y, y = _problem(seed=4, noise=1.5)
    q0 = ncp.nc1_quotient(H0, y)
    qs = []
    for beta in (100.0, 10.0, 1.0, 0.1):
        W, H = ncp.perturbed_minimizer(H0, Y, 0.05, 0.05, beta)
        # a stationary point of f: both gradients vanish
        assert ncp.central_path_grad(H, Y, 0.05, 0.05, beta, H0).abs().max() < 1e-9
        qs.append(ncp.nc1_quotient(H, y))
    assert q0 > qs[0] > qs[1] > qs[2] > qs[3]


def test_minimizer_is_one_implicit_step_of_the_flow():
    """For large beta, the minimiser of f is the central path at time N / beta (first order)."""
    H0, Y, y = _problem(seed=6, noise=1.5)
    beta, N = 20.0, H0.shape[1]
    _, H = ncp.perturbed_minimizer(H0, Y, 0.05, 0.05, beta)
    flow = ncp.central_path(H0, Y, 0.05, 0.05, lr=N / beta / 40, steps=40)[-1]
    moved = (H - H0).norm()
    assert (H - flow).norm() < 0.05 * moved


def test_minimizer_objective_beats_start_and_perturbations():
    H0, Y, _ = _problem(seed=7)
    W, H = ncp.perturbed_minimizer(H0, Y, 0.1, 0.2, 2.0)
    f = ncp.perturbed_ufm_loss(W, H, Y, 0.1, 0.2, 2.0, H0)
    W0 = ncp.optimal_W(H0, Y, 0.1, 10)
    assert f < ncp.perturbed_ufm_loss(W0, H0, Y, 0.1, 0.2, 2.0, H0)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        Hp = H + 1e-3 * torch.randn(H.shape, generator=g, dtype=H.dtype)
        assert ncp.perturbed_ufm_loss(W, Hp, Y, 0.1, 0.2, 2.0, H0) > f


def test_near_collapse_shrinks_within_class_part_as_predicted():
    """§5: at the minimiser E = beta (W^T W + (lam_H + beta) I)^-1 E0 up to the (collapsed) mean part."""
    Y, y = ncp.class_targets(4, 10)
    H0 = ncp.ufm_features(4, 10, 20, mean_scale=3.0, noise=1e-3, etf=True, generator=torch.Generator().manual_seed(0))
    lam_W, lam_H, beta = 1.0, 1.0, 1.0
    W, H = ncp.perturbed_minimizer(H0, Y, lam_W, lam_H, beta)
    E0, E = ncp.within_class_part(H0, y), ncp.within_class_part(H, y)
    predicted = beta * torch.linalg.solve(W.T @ W + (lam_H + beta) * torch.eye(20, dtype=W.dtype), E0)
    torch.testing.assert_close(E, predicted, atol=1e-9, rtol=1e-6)


def test_lam_H_moves_the_quotient_more_than_lam_W_near_collapse():
    Y, y = ncp.class_targets(4, 10)
    H0 = ncp.ufm_features(4, 10, 20, mean_scale=3.0, noise=0.1, etf=True, generator=torch.Generator().manual_seed(0))
    q0 = ncp.nc1_quotient(H0, y)

    def ratio(lam_W, lam_H):
        return ncp.nc1_quotient(ncp.perturbed_minimizer(H0, Y, lam_W, lam_H, 1.0)[1], y) / q0
    by_h = [ratio(1.0, lh) for lh in (0.5, 1.0, 1.5)]
    by_w = [ratio(lw, 1.0) for lw in (0.5, 1.0, 1.5)]
    assert by_h == sorted(by_h, reverse=True)
    assert max(by_h) - min(by_h) > 2 * (max(by_w) - min(by_w))


# ----------------------------------------------------------------------------- the metric

def test_nc1_quotient_agrees_with_the_shared_covariances():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(7, 23, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (23,), generator=g)
    y[:4] = torch.arange(4)
    sw, sb = nc.covariances(H.T, y)
    assert ncp.nc1_quotient(H, y) == pytest.approx(float(torch.trace(sw) / torch.trace(sb)), rel=1e-12)


def test_nc1_quotient_invariances_and_zero_on_collapse():
    H0, _, y = _problem(seed=8)
    q = ncp.nc1_quotient(H0, y)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert ncp.nc1_quotient(3.0 * Q @ H0 + 1.0, y) == pytest.approx(q, rel=1e-10)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    assert ncp.nc1_quotient(H0[:, perm], y[perm]) == pytest.approx(q, rel=1e-10)
    collapsed = ncp.ufm_features(4, 10, 20, noise=0.0, generator=torch.Generator().manual_seed(2))
    assert ncp.nc1_quotient(collapsed, y) < 1e-25


def test_nc1_quotient_float32():
    H0, _, y = _problem(seed=9, dtype=torch.float32)
    assert ncp.nc1_quotient(H0, y) == pytest.approx(ncp.nc1_quotient(H0.double(), y), rel=1e-5)


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_are_rejected():
    H, Y, y = _problem()
    with pytest.raises(ValueError, match="H"):
        ncp.optimal_W(H[0], Y, 0.1, 10)
    with pytest.raises(TypeError, match="H"):
        ncp.optimal_W(H.numpy(), Y, 0.1, 10)
    with pytest.raises(TypeError, match="H"):
        ncp.optimal_W(H.long(), Y, 0.1, 10)
    with pytest.raises(ValueError, match="Y"):
        ncp.optimal_W(H, Y[:, :5], 0.1, 10)
    with pytest.raises(ValueError, match="lam_W"):
        ncp.optimal_W(H, Y, -1.0, 10)
    with pytest.raises(ValueError, match="n "):
        ncp.optimal_W(H, Y, 0.1, 0)
    with pytest.raises(ValueError, match="H0"):
        ncp.central_path_step(H, Y, 0.1, 0.1, 1.0, beta=1.0)
    with pytest.raises(ValueError, match="H0"):
        ncp.central_path_step(H, Y, 0.1, 0.1, 1.0, beta=1.0, H0=H[:, :5])
    with pytest.raises(ValueError, match="lr"):
        ncp.central_path_step(H, Y, 0.1, 0.1, -1.0)
    with pytest.raises(ValueError, match="steps"):
        ncp.central_path(H, Y, 0.1, 0.1, 1.0, -2)
    with pytest.raises(ValueError, match="y"):
        ncp.nc1_quotient(H, y[:-1])
    with pytest.raises(TypeError, match="y"):
        ncp.nc1_quotient(H, y.double())
    with pytest.raises(ValueError, match="y"):
        ncp.nc1_quotient(H, torch.where(y == 1, 2, y))      # class 1 missing
    with pytest.raises(ValueError, match="beta"):
        ncp.perturbed_minimizer(H, Y, 0.1, 0.1, -1.0)
    with pytest.raises(ValueError, match="num_classes"):
        ncp.class_targets(1, 3)


def test_weight_decay_groups_split_the_classifier():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    groups = nc.weight_decay_groups(model, 1e-3, 1e-2)
    assert [g["weight_decay"] for g in groups] == [1e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(model[2].weight), id(model[2].bias)}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    torch.optim.SGD(groups, lr=0.1)                                  # accepted by an optimizer
    with pytest.raises(ValueError, match="feature_decay"):
        nc.weight_decay_groups(model, -1.0, 0.0)
