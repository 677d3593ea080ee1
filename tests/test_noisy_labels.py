"""Tests of layerwise.noisy_labels (nested dropout + Co-teaching for noisy labels), plus the
answers the grading tests submit."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise import noisy_labels as nl

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "symmetric_noise": (
        "def symmetric_noise(y, rate, num_classes, u_flip, u_class):\n"
        "    out = y.clone()\n"
        "    for i in range(y.shape[0]):\n"
        "        if u_flip[i] < rate:\n"
        "            j = int(u_class[i] * (num_classes - 1))      # 0 .. C-2\n"
        "            out[i] = (int(y[i]) + 1 + j) % num_classes\n"
        "    return out\n"),
    "nested_k_distribution": (
        "def nested_k_distribution(num_features, sigma, mu=0.0):\n"
        "    k = torch.arange(1, num_features + 1, dtype=torch.float64)\n"
        "    logw = -((k - mu) / sigma) ** 2\n"
        "    w = torch.exp(logw - logw.max())\n"
        "    return w / w.sum()\n"),
    "nested_mask": (
        "def nested_mask(h, k):\n"
        "    out = h.clone()\n"
        "    out[..., k:] = 0\n"
        "    return out\n"),
    "small_loss_selection": (
        "def small_loss_selection(losses, forget_rate):\n"
        "    n = int(losses.shape[0] * (1 - forget_rate))\n"
        "    return torch.topk(losses, n, largest=False).indices\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests.
WRONG_ANSWERS = {
    "symmetric_noise": [
        ("def symmetric_noise(y, rate, num_classes, u_flip, u_class):\n"
         "    new = (u_class * num_classes).long()   # any class, the true one included\n"
         "    return torch.where(u_flip < rate, new, y)\n"),
        ("def symmetric_noise(y, rate, num_classes, u_flip, u_class):\n"
         "    shift = 1 + torch.round(u_class * (num_classes - 1)).long()   # round, not floor\n"
         "    return torch.where(u_flip < rate, (y + shift) % num_classes, y)\n"),
    ],
    "nested_k_distribution": [
        ("def nested_k_distribution(num_features, sigma, mu=0.0):\n"
         "    k = torch.arange(1, num_features + 1, dtype=torch.float64)\n"
         "    w = torch.exp(-(k - mu) ** 2 / (2 * sigma ** 2))   # the textbook Gaussian, not the paper's\n"
         "    return w / w.sum()\n"),
        ("def nested_k_distribution(num_features, sigma, mu=0.0):\n"
         "    k = torch.arange(1, num_features + 1, dtype=torch.float64)\n"
         "    w = torch.exp(-((k - mu) / sigma) ** 2)   # underflows to 0/0 for a small sigma\n"
         "    return w / w.sum()\n"),
    ],
    "nested_mask": [
        ("def nested_mask(h, k):\n"
         "    keep = (torch.arange(h.shape[-1]) < k).to(h.dtype)\n"
         "    return h * keep * h.shape[-1] / k   # rescaled like inverted dropout\n"),
        ("def nested_mask(h, k):\n"
         "    out = torch.zeros_like(h)\n"
         "    out[:, :k] = h[:, :k]   # only right for 2-D features\n"
         "    return out\n"),
    ],
    "small_loss_selection": [
        ("def small_loss_selection(losses, forget_rate):\n"
         "    n = int((1 - forget_rate) * len(losses))\n"
         "    return torch.argsort(losses, descending=True)[:n]   # the largest losses\n"),
        ("def small_loss_selection(losses, forget_rate):\n"
         "    n = round((1 - forget_rate) * len(losses))   # rounds instead of flooring\n"
         "    return torch.argsort(losses)[:n]\n"),
    ],
}


def _uniforms(n: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=dtype), torch.rand(n, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- label noise

def test_symmetric_noise_known_answer():
    y = torch.tensor([0, 1, 2, 3, 9, 9])
    u_flip = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.0, 0.6])
    u_class = torch.tensor([0.0, 0.0, 0.5, 0.99, 0.0, 0.5])
    # C = 10: flip where u_flip < 0.5 to (y + 1 + floor(9 u_class)) mod 10
    got = nl.symmetric_noise(y, 0.5, 10, u_flip, u_class)
    assert got.tolist() == [1, 1, 7, 2, 0, 9]
    assert got.dtype == y.dtype


def test_symmetric_noise_never_keeps_a_flipped_label_and_is_uniform_over_the_others():
    n, c, rate = 60000, 5, 0.4
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, c, (n,), generator=g)
    u_flip, u_class = _uniforms(n, seed=2)
    noisy = nl.symmetric_noise(y, rate, c, u_flip, u_class)
    flipped = u_flip < rate
    assert torch.all(noisy[flipped] != y[flipped]) and torch.equal(noisy[~flipped], y[~flipped])
    counts = torch.zeros(c, c)
    counts.index_put_((y, noisy), torch.ones(n), accumulate=True)
    empirical = counts / counts.sum(1, keepdim=True)
    torch.testing.assert_close(empirical.double(), nl.noise_transition_matrix(rate, c), atol=0.02, rtol=0)


def test_rate_zero_and_one():
    y = torch.randint(0, 10, (100,))
    u_flip, u_class = _uniforms(100)
    assert torch.equal(nl.symmetric_noise(y, 0.0, 10, u_flip, u_class), y)
    assert torch.all(nl.symmetric_noise(y, 1.0, 10, u_flip, u_class) != y)
    assert torch.equal(nl.pair_noise(y, 1.0, 10, u_flip), (y + 1) % 10)


def test_pair_noise_and_its_matrix():
    y = torch.tensor([0, 4, 9, 2])
    got = nl.pair_noise(y, 0.45, 10, torch.tensor([0.1, 0.5, 0.2, 0.44]))
    assert got.tolist() == [1, 4, 0, 3]
    t = nl.noise_transition_matrix(0.45, 10, "pair")
    torch.testing.assert_close(t.sum(1), torch.ones(10, dtype=torch.float64))
    assert t[9, 0] == pytest.approx(0.45) and t[3, 3] == pytest.approx(0.55) and t[3, 5] == 0


def test_corrupt_labels_is_reproducible_and_near_the_rate():
    y = torch.arange(10).repeat(500)
    a = nl.corrupt_labels(y, 0.5, 10, generator=torch.Generator().manual_seed(3))
    b = nl.corrupt_labels(y, 0.5, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs((a != y).float().mean().item() - 0.5) < 0.03
    p = nl.corrupt_labels(y, 0.3, 10, "pair", generator=torch.Generator().manual_seed(3))
    wrong = p != y
    assert torch.equal(p[wrong], (y[wrong] + 1) % 10)


def test_label_noise_bad_input():
    y = torch.tensor([0, 1, 2])
    u = torch.rand(3)
    with pytest.raises(ValueError, match="rate"):
        nl.symmetric_noise(y, 1.5, 3, u, u)
    with pytest.raises(TypeError, match="rate"):
        nl.symmetric_noise(y, "0.5", 3, u, u)
    with pytest.raises(ValueError, match="y"):
        nl.symmetric_noise(torch.tensor([0, 3]), 0.5, 3, u[:2], u[:2])
    with pytest.raises(ValueError, match="y"):
        nl.symmetric_noise(torch.tensor([0.0, 1.0]), 0.5, 3, u[:2], u[:2])
    with pytest.raises(ValueError, match="u_class"):
        nl.symmetric_noise(y, 0.5, 3, u, torch.rand(4))
    with pytest.raises(TypeError, match="u_flip"):
        nl.pair_noise(y, 0.5, 3, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="num_classes"):
        nl.symmetric_noise(torch.tensor([0, 0]), 0.5, 1, u[:2], u[:2])
    with pytest.raises(ValueError, match="kind"):
        nl.corrupt_labels(y, 0.5, 3, "asymmetric")


# ----------------------------------------------------------------------------- the law of k

def test_gaussian_law_of_k():
    p = nl.nested_k_distribution(64, 10.0)
    assert p.shape == (64,) and p.dtype == torch.float64
    assert p.sum().item() == pytest.approx(1.0)
    assert torch.all(p[1:] < p[:-1])                         # μ = 0: decreasing in k
    # p(k) / p(1) = exp(-(k² - 1) / σ²): no factor 1/2
    assert (p[9] / p[0]).item() == pytest.approx(math.exp(-(100 - 1) / 100))
    q = nl.nested_k_distribution(20, 3.0, mu=8.0)
    assert int(q.argmax()) + 1 == 8


def test_gaussian_law_is_stable_for_tiny_sigma():
    p = nl.nested_k_distribution(16, 1e-3)
    assert torch.isfinite(p).all() and p[0].item() == pytest.approx(1.0)
    far = nl.nested_k_distribution(8, 1.0, mu=-100.0)
    assert torch.isfinite(far).all() and far[0].item() == pytest.approx(1.0)


def test_geometric_law_of_k():
    p = nl.geometric_k_distribution(30, 0.8)
    assert p.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(p[1:] / p[:-1], torch.full((29,), 0.8, dtype=torch.float64))


def test_sample_k_follows_the_law():
    p = nl.nested_k_distribution(12, 4.0)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([nl.sample_k(p, g) for _ in range(20000)])
    assert draws.min() >= 1 and draws.max() <= 12
    freq = torch.bincount(draws - 1, minlength=12).double() / len(draws)
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


@pytest.mark.parametrize("args,exc", [((0, 1.0), ValueError), ((8, 0.0), ValueError), ((8, -1.0), ValueError),
                                      ((8.0, 1.0), TypeError), ((8, "1"), TypeError)])
def test_law_bad_input(args, exc):
    with pytest.raises(exc, match="num_features|sigma"):
        nl.nested_k_distribution(*args)


def test_geometric_bad_rho():
    for rho in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="rho"):
            nl.geometric_k_distribution(5, rho)


# ----------------------------------------------------------------------------- nested mask

def test_nested_mask_values_no_rescaling():
    h = torch.arange(1.0, 7.0).reshape(1, 6)
    assert nl.nested_mask(h, 2).tolist() == [[1.0, 2.0, 0.0, 0.0, 0.0, 0.0]]
    assert torch.equal(nl.nested_mask(h, 6), h)
    assert nl.nested_mask(h, 1).sum().item() == 1.0


def test_nested_mask_any_leading_shape_and_dtype():
    h = torch.randn(3, 4, 5, dtype=torch.float64)
    out = nl.nested_mask(h, 3)
    assert out.dtype == torch.float64 and out.shape == h.shape
    assert torch.equal(out[..., :3], h[..., :3]) and torch.all(out[..., 3:] == 0)
    assert nl.nested_mask(torch.ones(4), 1).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_nested_mask_gradient_only_reaches_kept_features():
    h = torch.randn(2, 5, requires_grad=True)
    nl.nested_mask(h, 2).sum().backward()
    assert h.grad[:, :2].eq(1).all() and h.grad[:, 2:].eq(0).all()


@pytest.mark.parametrize("k,exc", [(0, ValueError), (6, ValueError), (2.0, TypeError), (True, TypeError)])
def test_nested_mask_bad_k(k, exc):
    with pytest.raises(exc, match="k"):
        nl.nested_mask(torch.randn(2, 5), k)


def test_nested_dropout_module():
    layer = nl.NestedDropout(8, sigma=3.0, generator=torch.Generator().manual_seed(0))
    h = torch.randn(4, 8)
    seen = set()
    for _ in range(50):
        out = layer(h)
        k = layer.last_k
        seen.add(k)
        assert torch.equal(out, nl.nested_mask(h, k))
    assert len(seen) > 2 and max(seen) <= 8
    layer.eval()
    assert torch.equal(layer(h), h)
    layer.k = 3
    assert torch.equal(layer(h), nl.nested_mask(h, 3))
    geo = nl.NestedDropout(8, law="geometric", rho=0.5)
    assert geo.probs[0].item() == pytest.approx(0.5 / (1 - 0.5 ** 8))
    with pytest.raises(ValueError, match="law"):
        nl.NestedDropout(8, law="uniform")
    with pytest.raises(ValueError, match="D = 8"):
        layer(torch.randn(2, 7))


# ----------------------------------------------------------------------------- choosing k

def _tiny_net(seed=0, nested=True, d=6):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, d), nn.ReLU())
    return nl.CompressedClassifier(trunk, d, 3, nl.NestedDropout(d, 2.0) if nested else None)


def test_logits_per_k_matches_masking():
    net = _tiny_net()
    x = torch.randn(7, 4)
    h = net.trunk(x)
    every = nl.logits_per_k(h, net.head)
    assert every.shape == (7, 6, 3)
    for k in range(1, 7):
        torch.testing.assert_close(every[:, k - 1], net.head(nl.nested_mask(h, k)))
    biased = nn.Linear(6, 3)
    torch.testing.assert_close(nl.logits_per_k(h, biased)[:, 2], biased(nl.nested_mask(h, 3)))


def test_scan_k_and_best_k():
    a, b = _tiny_net(0), _tiny_net(1)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    acc = nl.scan_k([a, b], x, y)
    assert acc.shape == (6,)
    for k in (1, 4, 6):
        a.eval(), b.eval()
        logits = (a.head(nl.nested_mask(a.trunk(x), k)) + b.head(nl.nested_mask(b.trunk(x), k))) / 2
        assert acc[k - 1].item() == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert nl.scan_k([_tiny_net(nested=False)], x, y).shape == (1,)
    assert nl.scan_k([_tiny_net(nested=False)], x, y, all_k=True).shape == (6,)
    assert nl.best_k([0.2, 0.5, 0.5, 0.4]) == (2, 0.5)                 # ties: the smallest k
    assert nl.best_k(torch.tensor([0.75]), ks=[64]) == (64, 0.75)


def test_evaluate_at_best_k_sets_k():
    net = _tiny_net()
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    out = nl.evaluate_at_best_k([net], (x, y), (x, y))
    assert net.compress.k == out["k"] and out["val_acc"] == out["test_acc"]
    net.eval()
    assert out["test_acc"] == pytest.approx((net(x).argmax(1) == y).double().mean().item())
    plain = _tiny_net(nested=False)
    assert nl.evaluate_at_best_k([plain], (x, y), (x, y))["k"] == 6


def test_memorisation_splits_clean_and_noisy():
    net = _tiny_net()
    x = torch.randn(20, 4)
    net.eval()
    pred = net(x).argmax(1)
    given = pred.clone()
    given[:5] = (pred[:5] + 1) % 3             # the network disagrees with these 5 given labels
    true = given.clone()
    true[:10] = (given[:10] + 2) % 3           # the first 10 given labels are wrong
    m = nl.memorisation([net], x, given, true)
    assert m["fit_noisy"] == pytest.approx(0.5) and m["fit_clean"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Co-teaching

def test_forget_rate_schedule():
    assert nl.forget_rate(0, 0.5, 10) == 0.0
    assert nl.forget_rate(5, 0.5, 10) == pytest.approx(0.25)
    assert nl.forget_rate(10, 0.5, 10) == pytest.approx(0.5)
    assert nl.forget_rate(200, 0.5, 10) == pytest.approx(0.5)
    assert nl.forget_rate(0, 0.3, 0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="tau"):
        nl.forget_rate(1, 1.2, 10)
    with pytest.raises(ValueError, match="epoch"):
        nl.forget_rate(-1, 0.2, 10)


def test_small_loss_selection_known_answer():
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 2.0, 0.05, 0.7, 1.1, 0.2, 0.4])
    assert nl.small_loss_selection(losses, 0.2).tolist() == [5, 1, 8, 3, 9, 2, 6, 0]
    assert nl.small_loss_selection(losses, 0.0).tolist() == torch.argsort(losses).tolist()
    assert nl.small_loss_selection(losses, 1.0).numel() == 0
    assert nl.small_loss_selection(torch.rand(7), 0.5).numel() == 3        # floor((1 - R) N)
    assert nl.small_loss_selection(losses, 0.2).dtype == torch.int64


def test_small_loss_selection_bad_input():
    with pytest.raises(ValueError, match="losses"):
        nl.small_loss_selection(torch.rand(2, 3), 0.2)
    with pytest.raises(ValueError, match="forget_rate"):
        nl.small_loss_selection(torch.rand(3), -0.1)


def test_coteaching_losses_cross_update():
    g = torch.Generator().manual_seed(0)
    la = torch.randn(12, 4, generator=g, requires_grad=True)
    lb = torch.randn(12, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (12,), generator=g)
    loss_a, loss_b, keep_a, keep_b = nl.coteaching_losses(la, lb, y, 0.25)
    assert keep_a.numel() == keep_b.numel() == 9
    torch.testing.assert_close(keep_a, nl.small_loss_selection(F.cross_entropy(la, y, reduction="none"), 0.25))
    torch.testing.assert_close(loss_a, F.cross_entropy(la[keep_b], y[keep_b]))   # A learns from B's pick
    torch.testing.assert_close(loss_b, F.cross_entropy(lb[keep_a], y[keep_a]))
    loss_a.backward()
    dropped = torch.ones(12, dtype=torch.bool)
    dropped[keep_b] = False
    assert la.grad[dropped].abs().sum() == 0 and lb.grad is None
    with pytest.raises(ValueError, match="keeps no example"):
        nl.coteaching_losses(la, lb, y, 1.0)


def test_ensemble_logits():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(nl.ensemble_logits(a, b), (a + b) / 2)
    with pytest.raises(ValueError, match="shape"):
        nl.ensemble_logits(a, torch.randn(3, 5))


def _noisy_blobs(n=600, c=4, rate=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    centres = 3 * torch.randn(c, 8, generator=g)
    x = centres[y] + torch.randn(n, 8, generator=g)
    return x, y, nl.corrupt_labels(y, rate, c, generator=g)


def test_coteaching_selects_mostly_clean_labels():
    torch.manual_seed(0)
    x, y, noisy = _noisy_blobs()
    nets = [nl.CompressedClassifier(nn.Sequential(nn.Linear(8, 32), nn.ReLU()), 32, 4) for _ in range(2)]
    opts = [torch.optim.Adam(n.parameters(), 1e-2) for n in nets]
    seen = []
    hist = nl.train_coteaching(nets, opts, (x, noisy), epochs=6, tau=0.4, t_k=3, batch_size=50, clean_labels=y,
                               eval_fn=lambda e: seen.append(e) or {"epoch": e},
                               generator=torch.Generator().manual_seed(0), progress=False)
    assert hist.forget_rate == pytest.approx([0.0, 0.4 / 3, 0.8 / 3, 0.4, 0.4, 0.4])
    assert seen == [1, 2, 3, 4, 5, 6] and hist.evals[-1] == {"epoch": 6}
    base = (noisy == y).float().mean().item()
    assert hist.precision[-1][0] > base + 0.2 and hist.precision[-1][1] > base + 0.2


def test_nested_dropout_resists_memorisation_on_noisy_digits():
    """Stage 1 on digits with 50 % symmetric noise: nested dropout fits far fewer wrong labels than plain CE."""
    from layerwise.data import digits
    d = digits(flat=True)
    g = torch.Generator().manual_seed(0)
    noisy = nl.corrupt_labels(d.y_train, 0.5, 10, generator=g)
    fits = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # tiny matrices: one thread is much faster on a busy machine
    try:
        for kind in ("ce", "nested"):
            torch.manual_seed(0)
            trunk = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
            net = nl.CompressedClassifier(trunk, 64, 10, nl.NestedDropout(64, 10.0) if kind == "nested" else None)
            curve = nl.train_and_track(net, torch.optim.Adam(net.parameters(), 3e-3), (d.X_train, noisy),
                                       epochs=40, val_data=d.test, test_data=d.test, clean_labels=d.y_train,
                                       generator=torch.Generator().manual_seed(0), progress=False)
            fits[kind] = curve[-1]["fit_noisy"]
    finally:
        torch.set_num_threads(threads)
    assert fits["ce"] > 0.25 and fits["nested"] < fits["ce"] / 2, fits


def test_models_are_deepcopyable():
    net = _tiny_net()
    twin = copy.deepcopy(net)
    x = torch.randn(3, 4)
    net.eval(), twin.eval()
    torch.testing.assert_close(net(x), twin(x))
