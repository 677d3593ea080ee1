"""Tests of layerwise.maestro (Maestro / LoD), plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise import maestro

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "ordered_dropout_linear": (
        "def ordered_dropout_linear(x, U, V, k):\n"
        "    keep = (torch.arange(U.shape[1], device=x.device) < k).to(x.dtype)  # ordered-dropout mask\n"
        "    return ((x @ V) * keep) @ U.T\n"),
    "hierarchical_group_lasso": (
        "def hierarchical_group_lasso(V):\n"
        "    total = V.new_zeros(())\n"
        "    for b in range(V.shape[1]):\n"
        "        total = total + torch.linalg.norm(V[:, b:])\n"
        "    return total\n"),
    "component_importance": (
        "def component_importance(U, V):\n"
        "    return torch.sqrt((U * U).sum(dim=0) * (V * V).sum(dim=0))\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests (float64 inputs, factors that are not orthogonal).
WRONG_ANSWERS = {
    "ordered_dropout_linear": [
        "def ordered_dropout_linear(x, U, V, k):\n    return (x @ V[:, -k:]) @ U[:, -k:].T  # keeps the LAST k\n",
        ("def ordered_dropout_linear(x, U, V, k):\n"
         "    code = x.float() @ V[:, :k].float()  # .float() everywhere: float64 inputs come back as float32\n"
         "    return code @ U[:, :k].float().T\n"),
    ],
    "hierarchical_group_lasso": [
        "def hierarchical_group_lasso(V):\n    return V.norm(dim=0).sum()  # plain group lasso, not over tails\n",
        ("def hierarchical_group_lasso(V):\n"
         "    sq = (V ** 2).sum(0).tolist()\n"
         "    return torch.tensor(sum(sum(sq[b:]) ** 0.5 for b in range(len(sq))))  # float32, off the graph\n"),
    ],
    "component_importance": [
        "def component_importance(U, V):\n    return U.norm(dim=0) + V.norm(dim=0)  # a sum, not a product\n",
        ("def component_importance(U, V):\n"
         "    return torch.linalg.svdvals(U @ V.T)[:U.shape[1]]  # only equal when U, V have orthogonal columns\n"),
    ],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: on a shared 2-core machine a second thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _factors(out: int, inp: int, r: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, r, generator=g, dtype=dtype), torch.randn(inp, r, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- ordered_dropout_linear

@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_ordered_dropout_linear_is_the_truncated_product(k):
    U, V = _factors(7, 4, 5)
    x = torch.randn(6, 4)
    want = x @ (U[:, :k] @ V[:, :k].T).T
    got = maestro.ordered_dropout_linear(x, U, V, k)
    assert got.shape == (6, 7)
    torch.testing.assert_close(got, want)


def test_ordered_dropout_linear_any_leading_shape_and_dtype():
    U, V = _factors(3, 4, 4, dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    got = maestro.ordered_dropout_linear(x, U, V, 2)
    assert got.shape == (2, 5, 3) and got.dtype == torch.float64
    torch.testing.assert_close(got[1, 3], maestro.ordered_dropout_linear(x[1, 3], U, V, 2))


def test_ordered_dropout_linear_components_add_up():
    U, V = _factors(5, 6, 4)
    x = torch.randn(3, 6)
    parts = [maestro.ordered_dropout_linear(x, U, V, k) - maestro.ordered_dropout_linear(x, U, V, k - 1)
             for k in range(1, 5)]
    for i, part in enumerate(parts):               # component i contributes (x · v_i) u_iᵀ
        torch.testing.assert_close(part, (x @ V[:, i:i + 1]) @ U[:, i:i + 1].T)


@pytest.mark.parametrize("k", [-1, 6])
def test_ordered_dropout_linear_rejects_bad_k(k):
    U, V = _factors(3, 4, 5)
    with pytest.raises(ValueError, match="k"):
        maestro.ordered_dropout_linear(torch.randn(2, 4), U, V, k)


def test_ordered_dropout_linear_rejects_bad_input():
    U, V = _factors(3, 4, 5)
    with pytest.raises(TypeError, match="k"):
        maestro.ordered_dropout_linear(torch.randn(2, 4), U, V, 2.0)
    with pytest.raises(ValueError, match="x"):
        maestro.ordered_dropout_linear(torch.randn(2, 3), U, V, 2)
    with pytest.raises(ValueError, match="columns"):
        maestro.ordered_dropout_linear(torch.randn(2, 4), U[:, :4], V, 2)
    with pytest.raises(TypeError, match="U"):
        maestro.ordered_dropout_linear(torch.randn(2, 4), U.tolist(), V, 2)
    with pytest.raises(ValueError, match="V"):
        maestro.ordered_dropout_linear(torch.randn(2, 4), U, V[0], 2)


# ----------------------------------------------------------------------------- hierarchical_group_lasso

def test_hierarchical_group_lasso_known_answer():
    V = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])     # column norms 3, 0, 4
    # tails: ||(3, 0, 4)|| = 5, ||(0, 4)|| = 4, ||(4)|| = 4
    torch.testing.assert_close(maestro.hierarchical_group_lasso(V), torch.tensor(13.0))
    assert maestro.hierarchical_group_lasso(V.double()).dtype == torch.float64


def test_hierarchical_group_lasso_weights_late_components_more():
    V = torch.ones(5, 4, requires_grad=True)
    maestro.hierarchical_group_lasso(V).backward()
    norms = V.grad.norm(dim=0)
    assert (norms[1:] > norms[:-1]).all()                   # component j is in j of the groups


def test_hierarchical_group_lasso_gradient_at_zero_tail_is_finite():
    V = torch.zeros(4, 3)
    V[:, 0] = 1.0
    V.requires_grad_()
    value = maestro.hierarchical_group_lasso(V)
    value.backward()
    assert value.item() == pytest.approx(2.0)
    assert torch.isfinite(V.grad).all() and (V.grad[:, 1:] == 0).all()


def test_hierarchical_group_lasso_single_component_is_its_norm():
    v = torch.randn(9, 1)
    torch.testing.assert_close(maestro.hierarchical_group_lasso(v), v.norm())


def test_hierarchical_group_lasso_rejects_bad_input():
    with pytest.raises(ValueError, match="V"):
        maestro.hierarchical_group_lasso(torch.randn(5))
    with pytest.raises(TypeError, match="V"):
        maestro.hierarchical_group_lasso(torch.ones(3, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- importances

def test_component_importance_is_product_of_column_norms():
    U, V = _factors(5, 7, 3)
    want = torch.stack([U[:, i].norm() * V[:, i].norm() for i in range(3)])
    torch.testing.assert_close(maestro.component_importance(U, V), want)


def test_component_importance_of_svd_factors_are_singular_values():
    W = torch.randn(6, 9, dtype=torch.float64)
    U, V = maestro.svd_factors(W)
    torch.testing.assert_close(U @ V.T, W)
    torch.testing.assert_close(maestro.component_importance(U, V), torch.linalg.svdvals(W))
    torch.testing.assert_close(U.norm(dim=0), V.norm(dim=0))       # balanced factors


def test_component_importance_ignores_rescaling_between_factors():
    U, V = _factors(4, 5, 3)
    c = torch.tensor([2.0, 0.5, 10.0])
    torch.testing.assert_close(maestro.component_importance(U * c, V / c), maestro.component_importance(U, V))


def test_tail_importance_never_increases():
    U, V = _factors(8, 6, 6, seed=3)
    t = maestro.tail_importance(U, V)
    assert (t[1:] <= t[:-1] + 1e-6).all()
    torch.testing.assert_close(t[-1], maestro.component_importance(U, V)[-1])


# ----------------------------------------------------------------------------- layers

def test_low_rank_linear_from_linear_is_the_same_function():
    torch.manual_seed(0)
    dense = nn.Linear(10, 4)
    layer = maestro.LowRankLinear.from_linear(dense)
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-4)
    assert layer.max_rank == 4 and layer.num_params() == 4 * 14 + 4


def test_low_rank_linear_starts_sorted_and_truncates():
    torch.manual_seed(0)
    layer = maestro.LowRankLinear(12, 8)
    imp = layer.importance()
    assert (imp[1:] <= imp[:-1] + 1e-6).all()                      # SVD initialisation: ordered
    x = torch.randn(2, 12)
    with maestro.truncate(layer, 3):
        assert layer.k == 3
        torch.testing.assert_close(layer(x), maestro.ordered_dropout_linear(x, layer.U, layer.V, 3) + layer.bias)
    assert layer.active is None and layer.k == 8                   # restored on exit


def test_shrink_removes_a_dead_tail():
    layer = maestro.LowRankLinear(6, 5, bias=False)
    with torch.no_grad():
        layer.U[:, 3:] = 0.0
        layer.V[:, 3:] *= 1e-3
    assert layer.shrink(1e-5) == 3
    assert layer.rank == 3 and (layer.importance()[3:] == 0).all()
    with maestro.truncate(layer, 5):
        assert layer.k == 3                                        # cannot use removed components


def test_low_rank_conv2d_matches_dense_conv_and_bias_only_at_rank_zero():
    torch.manual_seed(0)
    conv = maestro.LowRankConv2d(3, 8, 3, stride=2, padding=1)
    dense = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    with torch.no_grad():
        dense.weight.copy_((conv.U @ conv.V.T).reshape(8, 3, 3, 3))
        dense.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv(x), dense(x), atol=1e-5, rtol=1e-4)
    with maestro.truncate(conv, 0):
        y = conv(x)
    assert y.shape == dense(x).shape
    torch.testing.assert_close(y, conv.bias.view(1, -1, 1, 1).expand_as(y))
    assert conv.max_rank == 8


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="rank"):
        maestro.LowRankLinear(4, 3, rank=5)
    with pytest.raises(ValueError, match="in_features"):
        maestro.LowRankLinear(0, 3)
    with pytest.raises(ValueError, match="threshold"):
        maestro.LowRankLinear(4, 3).shrink(-1.0)
    with pytest.raises(TypeError, match="layer"):
        maestro.LowRankLinear.from_linear(nn.Conv2d(1, 1, 1))


def test_refactor_by_svd_keeps_the_function_and_sorts():
    torch.manual_seed(0)
    layer = maestro.LowRankLinear(7, 5)
    with torch.no_grad():
        layer.U.copy_(torch.randn_like(layer.U))
    x = torch.randn(4, 7)
    before = layer(x)
    maestro.refactor_by_svd(layer)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-4)
    imp = layer.importance()
    assert (imp[1:] <= imp[:-1] + 1e-5).all()


# ----------------------------------------------------------------------------- sampling, training step

def test_sample_layer_and_rank_is_uniform_over_pairs():
    g = torch.Generator().manual_seed(0)
    ranks = [2, 6, 0]
    counts = torch.zeros(3)
    ks = set()
    for _ in range(4000):
        layer, k = maestro.sample_layer_and_rank(ranks, g)
        counts[layer] += 1
        ks.add((layer, k))
        assert 1 <= k <= ranks[layer]
    assert counts[2] == 0
    assert abs(counts[0] / 4000 - 0.25) < 0.03                    # layer picked in proportion to its rank
    assert ks == {(0, 1), (0, 2)} | {(1, k) for k in range(1, 7)}
    with pytest.raises(ValueError, match="ranks"):
        maestro.sample_layer_and_rank([0, 0])
    with pytest.raises(ValueError, match="ranks"):
        maestro.sample_layer_and_rank([2, -1])


def _mlp(seed: int = 0, hidden: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(maestro.LowRankLinear(64, hidden), nn.ReLU(), maestro.LowRankLinear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def test_lod_network_outputs_and_loss():
    net = _mlp()
    model = maestro.LoDNetwork(net, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(5, 64), torch.randint(0, 10, (5,))
    out = model(x)
    assert out.shape == (2, 5, 10)
    torch.testing.assert_close(out[0], net(x))                     # the first slice is the full network
    loss_fn = maestro.MaestroLoss(net, lam=1e-3)
    loss = loss_fn(out, y)
    want = (F.cross_entropy(out[0], y) + F.cross_entropy(out[1], out[0].softmax(-1))
            + 1e-3 * maestro.group_lasso_penalty(net))
    torch.testing.assert_close(loss, want)
    assert set(loss_fn.last) == {"ce", "distill", "group_lasso"}
    model.eval()
    assert model(x).shape == (5, 10)
    assert all(l.active is None for l in maestro.low_rank_layers(net))
    with pytest.raises(ValueError, match="sampler"):
        maestro.LoDNetwork(net, sampler="random")
    with pytest.raises(ValueError, match="lam"):
        maestro.MaestroLoss(net, lam=-1.0)


def test_all_layers_sampler_truncates_every_layer():
    net = _mlp()
    model = maestro.LoDNetwork(net, generator=torch.Generator().manual_seed(0), sampler="all_layers")
    plan = model.sample()
    assert set(plan) == {0, 1} and all(1 <= k <= 32 for k in plan.values())


def test_self_distillation_sends_no_gradient_to_the_teacher():
    teacher = torch.randn(4, 3, requires_grad=True)
    student = torch.randn(4, 3, requires_grad=True)
    maestro.self_distillation_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_truncate_forms_and_errors():
    net = _mlp()
    layers = maestro.low_rank_layers(net)
    with maestro.truncate(net, [3, 5]):
        assert [l.k for l in layers] == [3, 5]
    with maestro.truncate(net, {1: 2}):
        assert [l.k for l in layers] == [32, 2]
    assert maestro.ranks_at_fraction(net, 0.25) == [8, 8]
    with pytest.raises(ValueError, match="layers"):
        with maestro.truncate(net, [1, 2, 3]):
            pass
    with pytest.raises(ValueError, match="indices"):
        with maestro.truncate(net, {5: 1}):
            pass
    with pytest.raises(ValueError, match="fraction"):
        maestro.ranks_at_fraction(net, 0.0)
    with pytest.raises(ValueError, match="no LowRank"):
        with maestro.truncate(nn.Linear(2, 2), 1):
            pass


def test_maestro_training_learns_digits():
    from layerwise.core import evaluate, train
    from layerwise.data import digits
    d = digits(flat=True)
    net = _mlp()
    model = maestro.LoDNetwork(net, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, d.train, maestro.MaestroLoss(net, lam=1e-4), opt, epochs=8, progress=False,
          generator=torch.Generator().manual_seed(0))
    maestro.progressive_shrinking(net)
    assert evaluate(net, *d.test)[1] > 0.85
    with maestro.truncate(net, maestro.ranks_at_fraction(net, 0.25)):
        assert evaluate(net, *d.test)[1] > 0.6                     # a quarter of the rank still works


# ----------------------------------------------------------------------------- the paper's linear claims

def test_lod_recovers_the_singular_values_of_a_rank3_map():
    """Claim (a): on whitened inputs the importances converge to the singular values (< 5%) and
    the group lasso with progressive shrinking removes the three trailing components."""
    torch.manual_seed(123)
    A = torch.randn(9, 3) @ torch.randn(3, 6)
    sigma = torch.linalg.svdvals(A)
    X = torch.eye(9)
    layer, hist = maestro.fit_linear(X, X @ A, steps=2000, lr=0.5, lam=1e-3, shrink_every=100,
                                     generator=torch.Generator().manual_seed(1))
    imp = layer.importance()
    assert ((imp[:3] - sigma[:3]).abs() / sigma[:3]).max() < 0.05
    assert layer.rank == 3 and (imp[3:] == 0).all()
    assert hist.shape == (201, 6)


def test_lod_linear_autoencoder_matches_pca_and_a_plain_one_does_not():
    """Claim (b): an ordered-dropout linear autoencoder on digits matches PCA's test error at every
    code size; the same autoencoder trained without ordered dropout is worse once cut."""
    from layerwise.data import digits
    d = digits(flat=True)
    mean = d.X_train.mean(0)
    Xtr, Xte = d.X_train - mean, d.X_test - mean
    _, _, pcs = torch.linalg.svd(Xtr, full_matrices=False)
    ks = (1, 2, 4, 8)
    pca = torch.tensor([F.mse_loss(Xte @ pcs[:k].T @ pcs[:k], Xte).item() for k in ks])
    err = {}
    for ordered in (True, False):
        layer, _ = maestro.fit_linear(Xtr, Xtr, 8, steps=1500, lr=1e-2, optimizer="adam", ordered=ordered,
                                      generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            err[ordered] = torch.tensor([F.mse_loss(layer(Xte), Xte).item() if k == 8 else
                                         _cut_mse(layer, Xte, k) for k in ks])
    assert (err[True] / pca).max() < 1.02
    assert (err[False][:3] / pca[:3]).min() > 1.05
    assert math.isclose(err[False][3].item(), pca[3].item(), rel_tol=0.02)   # at full size both are PCA's subspace


def _cut_mse(layer, X, k):
    with maestro.truncate(layer, k):
        return F.mse_loss(layer(X), X).item()


def test_fit_linear_rejects_bad_arguments():
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match="rows"):
        maestro.fit_linear(X, torch.randn(5, 2), steps=1, lr=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        maestro.fit_linear(X, X, steps=1, lr=0.1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps"):
        maestro.fit_linear(X, X, steps=0, lr=0.1)
