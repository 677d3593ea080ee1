"""Shared neural-collapse metrics: zero on exact collapse, large on noise, invariances, and agreement
with a second, independent formulation of each metric (loops and textbook formulas, float64)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from layerwise import neural_collapse as nc

C, D, PER = 5, 12, 30


def _collapsed(C=C, d=D, per=PER, scale=3.0, noise=0.0, seed=0, shift=True):
    g = torch.Generator().manual_seed(seed)
    M = nc.simplex_etf(C, d, generator=g) * scale
    y = torch.arange(C).repeat_interleave(per)
    mu_g = torch.randn(d, generator=g, dtype=torch.float64) if shift else torch.zeros(d, dtype=torch.float64)
    H = M[y] + mu_g + noise * torch.randn(C * per, d, generator=g, dtype=torch.float64)
    W = M / scale * 0.7                                    # self-dual classifier
    logits = H @ W.T
    return H, y, W, logits


def _random(seed=1, C=C, d=D, per=PER):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(C * per, d, generator=g, dtype=torch.float64)
    y = torch.arange(C).repeat_interleave(per)
    W = torch.randn(C, d, generator=g, dtype=torch.float64)
    return H, y, W, H @ W.T


def test_simplex_etf_is_an_etf():
    for C_, d in [(2, 2), (4, 3), (5, 5), (10, 32)]:
        M = nc.simplex_etf(C_, d, generator=torch.Generator().manual_seed(C_))
        G = M @ M.T
        assert M.shape == (C_, d)
        assert torch.allclose(G.diagonal(), torch.ones(C_, dtype=torch.float64), atol=1e-12)
        off = G[~torch.eye(C_, dtype=torch.bool)]
        assert torch.allclose(off, torch.full_like(off, -1 / (C_ - 1)), atol=1e-12)
        assert M.sum(0).abs().max() < 1e-12


def test_every_metric_vanishes_on_exact_collapse():
    H, y, W, logits = _collapsed()
    m = nc.collapse_metrics(H, y, W, logits)
    for name, value in m.as_dict().items():
        assert abs(value) < 1e-10, (name, value)


def test_metrics_are_large_on_random_features():
    m = nc.collapse_metrics(*_random()[:2], _random()[2], _random()[3])
    assert m.nc1 > 1.0
    assert m.equiangularity > 0.05 and m.max_angle > 0.05
    assert m.etf_distance > 0.3 and m.nc3 > 0.5 and m.nc4 > 0.3


def test_noise_raises_nc1_monotonically():
    values = [nc.nc1(*_collapsed(noise=s)[:2]) for s in (0.01, 0.1, 0.5, 1.0)]
    assert values == sorted(values) and values[0] < 1e-3 < values[-1]


@pytest.mark.parametrize("seed", [0, 1])
def test_invariant_to_scale_and_rotation(seed):
    H, y, W, logits = _random(seed)
    g = torch.Generator().manual_seed(100 + seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    base = nc.collapse_metrics(H, y, W, logits).as_dict()
    rotated = nc.collapse_metrics(7.5 * H @ Q, y, 0.2 * W @ Q, logits).as_dict()
    for k in base:
        assert math.isclose(base[k], rotated[k], rel_tol=1e-9, abs_tol=1e-12), (k, base[k], rotated[k])


# --- a second formulation of each metric -----------------------------------------------------------

def _loop_stats(H, y):
    Cn = int(y.max()) + 1
    mus = [H[y == c].mean(0) for c in range(Cn)]
    mu_g = H.mean(0)
    sw = sum(torch.outer(h - mus[int(c)], h - mus[int(c)]) for h, c in zip(H, y)) / len(H)
    sb = sum(torch.outer(m - mu_g, m - mu_g) for m in mus) / Cn
    return Cn, torch.stack(mus), mu_g, sw, sb


@pytest.mark.parametrize("seed", [3, 4])
def test_agrees_with_an_independent_formulation(seed):
    H, y, W, logits = _random(seed)
    H = H + 0.8 * nc.simplex_etf(C, D, generator=torch.Generator().manual_seed(seed))[y] * 3
    logits = H @ W.T
    Cn, mus, mu_g, sw, sb = _loop_stats(H, y)
    # NC1 with the Moore-Penrose inverse of the rank-(C-1) Sigma_B
    pinv = torch.linalg.pinv(sb, rtol=1e-9, hermitian=True)
    assert abs(nc.nc1(H, y) - float(torch.trace(sw @ pinv)) / Cn) < 1e-6
    Mc = mus - mu_g
    norms = torch.tensor([float(torch.sqrt((m * m).sum())) for m in Mc], dtype=torch.float64)
    assert abs(nc.equinorm(H, y)["means"] - float(norms.std(unbiased=False) / norms.mean())) < 1e-6
    cosines = torch.tensor([float(Mc[a] @ Mc[b] / (norms[a] * norms[b]))
                            for a, b in itertools.combinations(range(Cn), 2)], dtype=torch.float64)
    assert abs(nc.equiangularity(H, y) - float(cosines.std(unbiased=False))) < 1e-6
    assert abs(nc.max_angle(H, y) - float((cosines + 1 / (Cn - 1)).abs().mean())) < 1e-6
    # ETF distance from entries: the normalised Gram against (C/(C-1))^{1/2}-scaled (I - J/C)
    G = Mc @ Mc.T
    E = torch.tensor([[(1 - 1 / Cn) if a == b else -1 / Cn for b in range(Cn)] for a in range(Cn)],
                     dtype=torch.float64)
    ref = math.sqrt(sum(float(G[a, b] / torch.sqrt((G ** 2).sum()) - E[a, b] / math.sqrt(Cn - 1)) ** 2
                        for a in range(Cn) for b in range(Cn)))
    assert abs(nc.etf_distance(Mc) - ref) < 1e-6
    ref3 = sum(float(W[c, j] / W.norm() - Mc[c, j] / Mc.norm()) ** 2 for c in range(Cn) for j in range(D))
    assert abs(nc.nc3(W, H, y) - ref3) < 1e-6
    ncc = [min(range(Cn), key=lambda c: float(((h - mus[c]) ** 2).sum())) for h in H]
    ref4 = sum(int(a != int(b)) for a, b in zip(ncc, logits.argmax(1))) / len(H)
    assert abs(nc.nc4(H, y, logits) - ref4) < 1e-12


def test_collect_features_reads_the_classifier_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    model.train()
    X = torch.randn(50, 6)
    H, out = nc.collect_features(model, X, batch_size=16)
    assert model.training, "the model's mode must be restored"
    model.eval()
    with torch.no_grad():
        assert torch.allclose(H, torch.relu(model[0](X)))
        assert torch.allclose(out, model(X))
    assert nc.last_linear(model) is model[3]
    Hout, _ = nc.collect_features(model, X, model[0], which="output")
    assert torch.allclose(Hout, model[0](X).detach())


def test_bad_input_names_the_argument():
    H, y, W, logits = _random()
    with pytest.raises(ValueError, match="H"):
        nc.nc1(H[0], y)
    with pytest.raises(ValueError, match="y"):
        nc.nc1(H, y[:-1])
    with pytest.raises(TypeError, match="y"):
        nc.nc1(H, y.double())
    with pytest.raises(ValueError, match="empty classes"):
        nc.nc1(H, y, num_classes=C + 1)
    with pytest.raises(ValueError, match="W"):
        nc.nc3(W[:2], H, y)
    with pytest.raises(ValueError, match="logits"):
        nc.nc4(H, y, logits[:, :2])
    with pytest.raises(ValueError, match="dim"):
        nc.simplex_etf(5, 3)
    with pytest.raises(ValueError, match="which"):
        nc.collect_features(nn.Linear(3, 2), torch.randn(4, 3), which="middle")
    with pytest.raises(ValueError, match="nn.Linear"):
        nc.last_linear(nn.ReLU())
