"""Tests of layerwise.fedd2s and layerwise.core.federated, plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise import fedd2s
from layerwise.core.federated import (ClientData, Cohort, EpochSampler, LocalConfig, client_generator, local_train,
                                      run_fedavg, run_local, sample_participants, weighted_average)

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "dirichlet_split": (
        "def dirichlet_split(labels, proportions):\n"
        "    C, K = proportions.shape\n"
        "    owner = torch.empty(labels.shape[0], dtype=torch.long)\n"
        "    for c in range(C):\n"
        "        idx = (labels == c).nonzero().view(-1)\n"
        "        n = len(idx)\n"
        "        edges = [0] + [int(torch.round(v * n)) for v in proportions[c].double().cumsum(0)[:-1]] + [n]\n"
        "        for k in range(K):\n"
        "            lo = max(edges[:k + 1])\n"
        "            owner[idx[lo:max(lo, edges[k + 1])]] = k\n"
        "    return [(owner == k).nonzero().view(-1) for k in range(K)]\n"),
    "kd_loss": (
        "def kd_loss(student_logits, teacher_probs, temperature):\n"
        "    logp = F.log_softmax(student_logits / temperature, dim=1)\n"
        "    kl = F.kl_div(logp, teacher_probs.to(logp.dtype), reduction='batchmean')\n"
        "    return kl * temperature * temperature\n"),
    "active_depth": (
        "def active_depth(round, num_layers, rate):\n"
        "    dropped = int(rate * round)\n"
        "    return num_layers - dropped if num_layers - dropped >= 1 else 1\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests.
WRONG_ANSWERS = {
    "dirichlet_split": [
        ("def dirichlet_split(labels, proportions):\n"   # shares of the whole data set, not per class
         "    n = labels.shape[0]\n"
         "    cuts = torch.round(proportions.mean(0).double().cumsum(0) * n).long()\n"
         "    starts = torch.cat([torch.zeros(1, dtype=torch.long), cuts[:-1]])\n"
         "    return [torch.arange(int(a), int(b)) for a, b in zip(starts, cuts)]\n"),
        ("def dirichlet_split(labels, proportions):\n"   # rounds each share alone: not a partition
         "    C, K = proportions.shape\n"
         "    parts = [[] for _ in range(K)]\n"
         "    for c in range(C):\n"
         "        idx = (labels == c).nonzero().view(-1)\n"
         "        start = 0\n"
         "        for k in range(K):\n"
         "            m = int(torch.round(proportions[c, k] * len(idx)))\n"
         "            parts[k].append(idx[start:start + m])\n"
         "            start += m\n"
         "    return [torch.sort(torch.cat(p)).values for p in parts]\n"),
    ],
    "kd_loss": [
        ("def kd_loss(student_logits, teacher_probs, temperature):\n"   # forgot the T^2
         "    logp = F.log_softmax(student_logits / temperature, dim=-1)\n"
         "    return (teacher_probs * (torch.log(teacher_probs) - logp)).sum(-1).mean()\n"),
        ("def kd_loss(student_logits, teacher_probs, temperature):\n"   # 0 * log 0 gives NaN
         "    logp = F.log_softmax(student_logits / temperature, dim=-1)\n"
         "    kl = (teacher_probs * (torch.log(teacher_probs) - logp)).sum(-1).mean()\n"
         "    return temperature ** 2 * kl\n"),
    ],
    "active_depth": [
        ("def active_depth(round, num_layers, rate):\n"   # drops from the shallow end: counts up
         "    return min(num_layers, 1 + math.floor(rate * round))\n"),
        ("def active_depth(round, num_layers, rate):\n"   # no floor of one layer
         "    return num_layers - math.floor(rate * round)\n"),
    ],
}


def _toy_clients(num_clients=3, n=80, seed=0, d=6, c=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(num_clients):
        X = torch.randn(n, d, generator=g)
        y = torch.randint(0, c, (n,), generator=g)
        out.append(ClientData(k, X, y, X[:20].clone(), y[:20].clone()))
    return out


# ----------------------------------------------------------------------------- dirichlet_split

def test_dirichlet_split_is_a_partition_with_the_requested_clients():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (1000,), generator=g)
    for alpha in (0.05, 0.5, 100.0):
        props = fedd2s.dirichlet_proportions(10, 7, alpha, g)
        parts = fedd2s.dirichlet_split(labels, props)
        assert len(parts) == 7
        allidx = torch.cat(parts)
        assert torch.equal(torch.sort(allidx).values, torch.arange(1000))      # each index exactly once
        for p in parts:
            assert p.dtype == torch.long and torch.equal(p, torch.sort(p).values)


def test_dirichlet_split_follows_the_proportions():
    labels = torch.tensor([0] * 10 + [1] * 4)
    props = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    parts = fedd2s.dirichlet_split(labels, props)
    assert parts[0].tolist() == [0, 1, 2, 10, 11, 12, 13] and parts[1].tolist() == list(range(3, 10))


def test_split_clients_is_reproducible_by_seed_and_skews_labels():
    from layerwise.data import digits
    d = digits(flat=True, test_size=0.3)
    a, pa = fedd2s.split_clients(d.X_train, d.y_train, d.X_test, d.y_test, 10, 0.3,
                                 generator=torch.Generator().manual_seed(3))
    b, pb = fedd2s.split_clients(d.X_train, d.y_train, d.X_test, d.y_test, 10, 0.3,
                                 generator=torch.Generator().manual_seed(3))
    c, pc = fedd2s.split_clients(d.X_train, d.y_train, d.X_test, d.y_test, 10, 0.3,
                                 generator=torch.Generator().manual_seed(4))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert all(torch.equal(x.y_train, y.y_train) and torch.equal(x.X_test, y.X_test) for x, y in zip(a, b))
    assert sum(x.num_examples for x in a) == len(d.y_train) and sum(len(x.y_test) for x in a) == len(d.y_test)
    # non-IID: the label distributions differ a lot between clients, and test follows train
    dist = torch.stack([x.label_counts(10).double() / x.num_examples for x in a])
    assert (dist.max(0).values - dist.min(0).values).max() > 0.3
    test_dist = torch.stack([torch.bincount(x.y_test, minlength=10).double() / len(x.y_test) for x in a])
    assert (test_dist - dist).abs().max() < 0.2


def test_dirichlet_bad_inputs():
    with pytest.raises(ValueError, match="proportions"):
        fedd2s.dirichlet_split(torch.tensor([0, 1]), torch.tensor([[0.5, 0.6], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="labels"):
        fedd2s.dirichlet_split(torch.tensor([0, 2]), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="labels"):
        fedd2s.dirichlet_split(torch.tensor([0.0, 1.0]), torch.eye(2))
    with pytest.raises(ValueError, match="alpha"):
        fedd2s.dirichlet_proportions(10, 5, 0.0)


# ----------------------------------------------------------------------------- active_depth

@pytest.mark.parametrize("num_layers,rate", [(4, 0.2), (3, 0.5), (6, 1.0), (5, 0.1), (2, 3.0)])
def test_active_depth_is_monotone_deep_to_shallow_and_respects_its_rate(num_layers, rate):
    depths = [fedd2s.active_depth(t, num_layers, rate) for t in range(60)]
    assert depths[0] == num_layers                                     # everyone takes part at first
    assert all(b <= a for a, b in zip(depths, depths[1:]))             # monotone: layers only leave
    assert min(depths) == 1                                            # the shallowest layer stays
    for t, d in enumerate(depths):                                     # the rate: floor(rate * t) dropped
        assert d == max(1, num_layers - math.floor(rate * t))
        assert num_layers - d <= rate * t + 1e-9
    assert all(a - b <= math.ceil(rate) for a, b in zip(depths, depths[1:]))


def test_active_depth_rate_zero_never_drops_and_bad_inputs():
    assert [fedd2s.active_depth(t, 3, 0.0) for t in range(10)] == [3] * 10
    with pytest.raises(ValueError, match="round"):
        fedd2s.active_depth(-1, 3, 0.1)
    with pytest.raises(ValueError, match="num_layers"):
        fedd2s.active_depth(0, 0, 0.1)
    with pytest.raises(ValueError, match="rate"):
        fedd2s.active_depth(0, 3, -0.1)


# ----------------------------------------------------------------------------- kd_loss

def test_kd_loss_matches_kl_div_and_scales_with_t_squared():
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    for T in (1.0, 2.0, 4.0):
        q = F.softmax(t / T, -1)
        want = F.kl_div(F.log_softmax(s / T, -1), q, reduction="batchmean") * T * T
        torch.testing.assert_close(fedd2s.kd_loss(s, q, T), want)
    assert abs(fedd2s.kd_loss(s, F.softmax(s / 2.0, -1), 2.0).item()) < 1e-5       # zero at agreement


def test_kd_loss_one_hot_teacher_and_large_logits():
    s = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1.0, 2.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = fedd2s.kd_loss(s, q, 1.0)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, F.cross_entropy(s, q.argmax(-1)))               # one-hot: CE
    assert fedd2s.kd_loss(s.double(), q, 2.0).dtype == torch.float64


def test_kd_loss_bad_inputs():
    with pytest.raises(ValueError, match="teacher_probs"):
        fedd2s.kd_loss(torch.randn(2, 3), torch.rand(2, 4), 1.0)
    with pytest.raises(ValueError, match="student_logits"):
        fedd2s.kd_loss(torch.randn(3), torch.rand(3), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        fedd2s.kd_loss(torch.randn(2, 3), torch.rand(2, 3), 0.0)


# ----------------------------------------------------------------------------- federated machinery

def test_fedavg_with_one_client_equals_centralised_training_step_for_step():
    """One client, full participation: FedAvg is plain SGD on that client's data (same seed, same batches)."""
    client = _toy_clients(1, n=96)[0]
    cfg = LocalConfig(steps=3, batch_size=16, lr=0.1, optimizer="sgd")
    make = lambda: (torch.manual_seed(5), fedd2s.mlp_net(6, (8, 8), 4))[1]   # noqa: E731
    rounds = 4
    fed = run_fedavg(make, [client], rounds, cfg, ratio=1.0, seed=7, progress=False)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = EpochSampler(client.num_examples, 16, client_generator(7, 0))
    for _ in range(rounds * cfg.steps):
        idx = sampler.next()
        loss = F.cross_entropy(model(client.X_train[idx]), client.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fed.extra["weights"][k], v, rtol=1e-6, atol=1e-7)


def test_cohort_training_equals_separate_training():
    clients = _toy_clients(3)
    cfg = LocalConfig(steps=4, batch_size=8, lr=1e-2, optimizer="adam")
    torch.manual_seed(0)
    net = fedd2s.mlp_net(6, (8, 8), 4)
    together = Cohort(net, 3)
    new, _ = local_train(together, together.params, clients,
                         [EpochSampler(c.num_examples, 8, client_generator(1, k)) for k, c in enumerate(clients)], cfg)
    for k, c in enumerate(clients):
        alone = Cohort(net, 1)
        one, _ = local_train(alone, alone.params, [c], [EpochSampler(c.num_examples, 8, client_generator(1, k))], cfg)
        for name in new:
            torch.testing.assert_close(new[name][k], one[name][0], rtol=1e-5, atol=1e-6)


def test_weighted_average_and_participants():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(5)}
    avg = weighted_average([a, b], [1, 3])
    torch.testing.assert_close(avg["w"], torch.tensor([3.0, 5.0]))
    assert avg["n"].item() == 3
    g = torch.Generator().manual_seed(0)
    assert sample_participants(10, 1.0, g) == list(range(10))
    chosen = sample_participants(10, 0.3, g)
    assert len(chosen) == 3 and chosen == sorted(set(chosen))
    with pytest.raises(ValueError, match="ratio"):
        sample_participants(10, 0.0)
    with pytest.raises(ValueError, match="weights"):
        weighted_average([a], [1, 2])


def test_fedd2s_round_sends_only_the_active_heads_and_uploads_representations():
    clients = _toy_clients(2, n=40)
    torch.manual_seed(0)
    net = fedd2s.mlp_net(6, (8, 8, 8), 4)
    cohort = Cohort(net, 2)
    heads = fedd2s.make_heads(net.feature_dims, 4)
    states = [heads[l].state_dict() for l in range(2)]
    cfg, d2s = LocalConfig(steps=2, batch_size=8, lr=1e-2, optimizer="adam"), fedd2s.D2SConfig()
    samplers = [EpochSampler(40, 8, client_generator(0, k)) for k in range(2)]
    new, results = fedd2s.client_update(cohort, cohort.params, clients, samplers,
                                        fedd2s.D2SFitIns(3, 2, states), cfg, d2s)
    assert len(results) == 2 and all(len(r.features) == 2 for r in results)
    assert results[0].features[1].shape == (40, 8) and results[0].soft_labels.shape == (40, 4)
    torch.testing.assert_close(results[0].soft_labels.sum(-1), torch.ones(40))
    before = [h.weight.clone() for h in heads]
    fedd2s.server_update(heads, results, 2, d2s, torch.Generator().manual_seed(0))
    assert not torch.equal(before[0], heads[0].weight) and not torch.equal(before[1], heads[1].weight)
    assert torch.equal(before[2], heads[2].weight)                                   # the dropped layer's head
    with pytest.raises(ValueError, match="heads"):
        fedd2s.client_update(cohort, cohort.params, clients, samplers,
                             fedd2s.D2SFitIns(3, 1, states), cfg, d2s)


def test_run_fedd2s_learns_on_digits_and_follows_the_schedule():
    from layerwise.data import digits
    d = digits(flat=True, test_size=0.3)
    clients, _ = fedd2s.split_clients(d.X_train, d.y_train, d.X_test, d.y_test, 5, 0.5,
                                      generator=torch.Generator().manual_seed(0), min_train=32)
    make = lambda: (torch.manual_seed(0), fedd2s.mlp_net(64, (32, 32, 32), 10))[1]   # noqa: E731
    cfg = LocalConfig(steps=5, batch_size=32, lr=5e-3, optimizer="adam")
    h = fedd2s.run_fedd2s(make, clients, 8, cfg, fedd2s.D2SConfig(rate=0.5), ratio=0.6, seed=0, progress=False)
    assert h.acc.shape == (8, 5) and h.extra["depths"] == [3, 3, 2, 2, 1, 1, 1, 1]
    assert all(len(p) == 3 for p in h.participants)
    assert h.mean[-1] > 0.45 and h.mean[-1] > h.mean[0] + 0.1
    loc = run_local(make, clients, 3, cfg, progress=False)
    assert loc.acc.shape == (3, 5)


def test_models_expose_their_layers():
    net = fedd2s.conv_net(3, (4, 8), 10)
    logits, reps = net(torch.randn(2, 3, 16, 16), features=True)
    assert logits.shape == (2, 10) and [r.shape for r in reps] == [(2, 4), (2, 8)]
    with pytest.raises(ValueError, match="optimizer"):
        LocalConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="buffers"):
        Cohort(nn.BatchNorm1d(3), 2)
