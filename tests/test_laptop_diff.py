"""Tests of layerwise.laptop_diff (LAPTOP-Diff: output-loss layer pruning, additivity, normalised
feature distillation), plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from layerwise import laptop_diff as ld
from layerwise.diffusion.dit import DiTConfig, TinyDiT

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "block_removal_loss": (
        "def block_removal_loss(model, units, batch):\n"
        "    units = {units} if isinstance(units, int) else set(units)\n"
        "    x, t, c = batch['x_t'], batch['t'], batch.get('cond')\n"
        "    hooks = [b.register_forward_hook(lambda mod, inp, out: inp[0])  # the block passes its input on\n"
        "             for i, b in enumerate(model.blocks) if i in units]\n"
        "    try:\n"
        "        with torch.no_grad():\n"
        "            pruned = model(x, t, c)\n"
        "    finally:\n"
        "        for h in hooks:\n"
        "            h.remove()\n"
        "    with torch.no_grad():\n"
        "        full = model(x, t, c)\n"
        "    return torch.nn.functional.mse_loss(pruned, full).item()\n"),
    "select_blocks": (
        "def select_blocks(scores, budget, costs=None):\n"
        "    scores = torch.as_tensor(scores, dtype=torch.float64)\n"
        "    costs = torch.ones_like(scores) if costs is None else torch.as_tensor(costs, dtype=torch.float64)\n"
        "    order = torch.argsort(scores, stable=True)\n"
        "    left, out = float(budget), []\n"
        "    for i in order.tolist():\n"
        "        if costs[i].item() <= left + 1e-9:\n"
        "            out.append(i)\n"
        "            left -= costs[i].item()\n"
        "    out.sort()\n"
        "    return out\n"),
    "normalized_feature_loss": (
        "def normalized_feature_loss(student_feats, teacher_feats, eps=1e-8):\n"
        "    total = 0.0\n"
        "    for s, t in zip(student_feats, teacher_feats):\n"
        "        n = t.numel()\n"
        "        total = total + ((s - t) ** 2).sum() / n / ((t.detach() ** 2).sum() / n + eps)\n"
        "    return total\n"),
}
# Plausible mistakes: each must lose its item's points. The later ones pass the visible test and are
# caught only by the hidden tests (several blocks at once, costs, layers of different sizes, eps).
WRONG_ANSWERS = {
    "block_removal_loss": [
        ("import copy\n\n"
         "def block_removal_loss(model, units, batch):\n"
         "    x, t, c = batch['x_t'], batch['t'], batch.get('cond')\n"
         "    pruned = copy.deepcopy(model)\n"
         "    for i in ([units] if isinstance(units, int) else units):\n"
         "        del pruned.blocks[i]\n"
         "    with torch.no_grad():\n"
         "        return ((pruned(x, t, c) - batch['noise']) ** 2).mean().item()  # against the true noise, not the model\n"),
        ("import copy\n\n"
         "def block_removal_loss(model, units, batch):\n"
         "    x, t, c = batch['x_t'], batch['t'], batch.get('cond')\n"
         "    pruned = copy.deepcopy(model)\n"
         "    for i in ([units] if isinstance(units, int) else units):\n"
         "        del pruned.blocks[i]  # ascending order: after the first deletion the indices have shifted\n"
         "    with torch.no_grad():\n"
         "        return ((pruned(x, t, c) - model(x, t, c)) ** 2).mean().item()\n"),
        ("import copy\n\n"
         "def block_removal_loss(model, units, batch):\n"
         "    x, t, c = batch['x_t'], batch['t'], batch.get('cond')\n"
         "    pruned = copy.deepcopy(model)\n"
         "    for i in sorted([units] if isinstance(units, int) else units, reverse=True):\n"
         "        del pruned.blocks[i]\n"
         "    with torch.no_grad():\n"
         "        return ((pruned(x, t) - model(x, t)) ** 2).mean().item()  # the condition is dropped\n"),
    ],
    "select_blocks": [
        ("def select_blocks(scores, budget, costs=None):\n"
         "    scores = torch.as_tensor(scores, dtype=torch.float64)\n"
         "    order = torch.argsort(scores, descending=True, stable=True)  # removes the most important units\n"
         "    costs = [1.0] * len(scores) if costs is None else [float(c) for c in costs]\n"
         "    out, used = [], 0.0\n"
         "    for i in order.tolist():\n"
         "        if used + costs[i] <= budget:\n"
         "            out.append(i)\n"
         "            used += costs[i]\n"
         "    return sorted(out)\n"),
        ("def select_blocks(scores, budget, costs=None):\n"
         "    scores = torch.as_tensor(scores, dtype=torch.float64)\n"
         "    costs = [1.0] * len(scores) if costs is None else [float(c) for c in costs]\n"
         "    out, used = [], 0.0\n"
         "    for i in torch.argsort(scores, stable=True).tolist():\n"
         "        if used + costs[i] > budget:\n"
         "            break  # stops at the first unit that does not fit; cheaper ones later might\n"
         "        out.append(i)\n"
         "        used += costs[i]\n"
         "    return sorted(out)\n"),
        ("def select_blocks(scores, budget, costs=None):\n"
         "    scores = torch.as_tensor(scores, dtype=torch.float64)\n"
         "    costs = [1.0] * len(scores) if costs is None else [float(c) for c in costs]\n"
         "    out, used = [], 0.0\n"
         "    for i in torch.argsort(scores, stable=True).tolist():\n"
         "        if used + costs[i] <= budget:\n"
         "            out.append(i)\n"
         "            used += costs[i]\n"
         "    return out  # in score order, not sorted by index\n"),
    ],
    "normalized_feature_loss": [
        ("def normalized_feature_loss(student_feats, teacher_feats, eps=1e-8):\n"
         "    return sum(((s - t) ** 2).mean() for s, t in zip(student_feats, teacher_feats))  # raw, not normalised\n"),
        ("def normalized_feature_loss(student_feats, teacher_feats, eps=1e-8):\n"
         "    return sum(((s - t) ** 2).mean() / ((t ** 2).mean().sqrt() + eps)  # divided by the RMS, not the mean square\n"
         "               for s, t in zip(student_feats, teacher_feats))\n"),
        ("def normalized_feature_loss(student_feats, teacher_feats, eps=1e-8):\n"
         "    return sum(((s - t) ** 2).mean() / ((s ** 2).mean() + eps)  # divided by the student's features\n"
         "               for s, t in zip(student_feats, teacher_feats))\n"),
        ("def normalized_feature_loss(student_feats, teacher_feats, eps=1e-8):\n"
         "    terms = [((s - t) ** 2).mean() / ((t ** 2).mean() + eps) for s, t in zip(student_feats, teacher_feats)]\n"
         "    return sum(terms) / len(terms)  # the mean over layers, not the sum\n"),
        ("def normalized_feature_loss(student_feats, teacher_feats, eps=1e-8):\n"
         "    return sum(((s - t) ** 2).mean() / (t ** 2).mean().clamp_min(eps)  # eps as a floor, not added\n"
         "               for s, t in zip(student_feats, teacher_feats))\n"),
    ],
}


# ----------------------------------------------------------------------------- helpers

def _dit(depth=4, dim=32, patch=4, classes=3, seed=0, dtype=torch.float32, zero_gates=()) -> TinyDiT:
    """A small TinyDiT with random weights everywhere (adaLN-Zero starts at zero: every block
    would be an identity), optionally with the gates of some blocks exactly zero."""
    torch.manual_seed(seed)
    m = TinyDiT(DiTConfig(in_channels=3, image_size=16, patch=patch, dim=dim, depth=depth, heads=4, num_classes=classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
        for i in zero_gates:
            m.blocks[i].ada[1].weight.zero_()
            m.blocks[i].ada[1].bias.zero_()
    return m.to(dtype).eval()


def _batch(b=6, h=16, w=16, classes=3, seed=0, dtype=torch.float32, cond=True):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 3, h, w, generator=g, dtype=dtype) * 2 - 1
    y = torch.randint(0, classes, (b,), generator=g) if cond else None
    return ld.calibration_batch(x0, cond=y, generator=g)


def _manual_forward(model, x, t, cond, skip):
    """The model's forward with blocks ``skip`` left out, written against TinyDiT's pieces."""
    from layerwise.diffusion.dit import grid_position_ids, patchify, rope_angles, unpatchify

    p = model.config.patch
    _, _, h, w = x.shape
    c = model.conditioning(t, cond, x.shape[0], x.device)
    angles = rope_angles(grid_position_ids(h // p, w // p), model.head_dim, model.config.rope_base)[None]
    z = model.embed(patchify(x, p))
    for i, block in enumerate(model.blocks):
        if i not in skip:
            z = block(z, c, angles, None)
    shift, scale = model.ada_out(c).chunk(2, dim=-1)
    z = model.out(model.norm_out(z) * (1 + scale[:, None]) + shift[:, None])
    return unpatchify(z, p, 3, h, w)


# ----------------------------------------------------------------------------- removing blocks

def test_remove_blocks_is_the_model_with_those_blocks_skipped():
    m, batch = _dit(depth=5), _batch()
    x, t, c = batch["x_t"], batch["t"], batch["cond"]
    for drop in ([], [0], [2], [1, 3], [0, 4], [0, 1, 2, 3, 4]):
        pruned = ld.remove_blocks(m, drop)
        assert isinstance(pruned, ld.PrunedDiT) and len(pruned.blocks) == 5 - len(drop)
        assert pruned.kept.tolist() == [i for i in range(5) if i not in drop]
        with torch.no_grad():
            torch.testing.assert_close(pruned(x, t, c), _manual_forward(m, x, t, c, set(drop)), atol=1e-6, rtol=1e-5)


def test_remove_blocks_copies_and_composes():
    m = _dit(depth=6, dtype=torch.float64)
    pruned = ld.remove_blocks(m, [1, 4])
    assert next(pruned.parameters()).dtype == torch.float64 and not pruned.training
    assert pruned.config.depth == 4 and m.config.depth == 6 and len(m.blocks) == 6
    with torch.no_grad():
        pruned.blocks[0].mlp[0].weight.add_(1.0)                 # its own parameters
    assert not torch.equal(pruned.blocks[0].mlp[0].weight, m.blocks[0].mlp[0].weight)
    again = ld.remove_blocks(pruned, [0, 2])                    # pruned blocks 0, 2 = teacher blocks 0, 3
    assert again.kept.tolist() == [2, 5]
    state = ld.remove_blocks(m, [0, 1, 3, 4]).state_dict()
    assert state["kept"].tolist() == [2, 5]
    loaded = ld.PrunedDiT(DiTConfig(**{**m.config.to_dict(), "depth": 2})).double()
    loaded.load_state_dict(state)
    assert loaded.kept.tolist() == [2, 5]


def test_block_removal_loss_known_answers():
    m, batch = _dit(depth=4, zero_gates=(2,)), _batch()
    assert ld.block_removal_loss(m, [], batch) == 0.0             # nothing removed
    assert ld.block_removal_loss(m, 2, batch) == 0.0              # a block whose gates are zero is an identity
    others = [ld.block_removal_loss(m, i, batch) for i in (0, 1, 3)]
    assert all(v > 1e-4 for v in others)
    # removing the identity block along with another costs exactly what the other costs alone
    assert ld.block_removal_loss(m, [2, 3], batch) == pytest.approx(others[2], rel=1e-5)
    assert ld.block_removal_loss(m, [3, 1], batch) == ld.block_removal_loss(m, (1, 3), batch)
    # it is the mean squared difference to the full model's output
    x, t, c = batch["x_t"], batch["t"], batch["cond"]
    with torch.no_grad():
        want = (_manual_forward(m, x, t, c, {0, 3}) - m(x, t, c)).pow(2).mean().item()
    assert ld.block_removal_loss(m, [0, 3], batch) == pytest.approx(want, rel=1e-5)


def test_an_untrained_adaln_zero_model_has_nothing_to_prune():
    """Pitfall 4: with zero gates every block is an identity, every score is 0 and additivity holds
    trivially; the chapter's teacher must be trained."""
    torch.manual_seed(0)
    m = TinyDiT(DiTConfig(in_channels=3, image_size=16, patch=4, dim=32, depth=4, heads=4, num_classes=3)).eval()
    batch = _batch()
    assert torch.equal(ld.removal_scores(m, batch), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(ld.gate_magnitudes(m, torch.arange(0, 1000, 100)), torch.zeros(4, 2, dtype=torch.float64))


def test_removal_scores_and_subset_losses_agree_with_block_removal_loss():
    m, batch = _dit(depth=5, seed=3), _batch(seed=3)
    scores = ld.removal_scores(m, batch)
    assert scores.shape == (5,) and scores.dtype == torch.float64
    for i in range(5):
        assert scores[i].item() == pytest.approx(ld.block_removal_loss(m, i, batch), rel=1e-6)
    per = ld.removal_scores(m, batch, per_example=True)
    assert per.shape == (5, 6)
    torch.testing.assert_close(per.mean(1), scores)
    subs = [(0, 1), (2,), (1, 3, 4)]
    got = ld.subset_losses(m, batch, subs)
    for s, v in zip(subs, got):
        assert v.item() == pytest.approx(ld.block_removal_loss(m, s, batch), rel=1e-6)
    # the scoring leaves the model whole
    assert len(m.blocks) == 5


def test_calibration_batch_is_common_random_numbers():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    x0 = torch.rand(32, 3, 16, 16) * 2 - 1
    steps = ld.sampling_timesteps(10)
    a = ld.calibration_batch(x0, generator=g1, timesteps=steps)
    b = ld.calibration_batch(x0, generator=g2, timesteps=steps)
    for k in ("x_t", "t", "noise"):
        assert torch.equal(a[k], b[k])
    assert set(a["t"].tolist()) <= set(steps.tolist())
    from layerwise.diffusion.schedule import make_scheduler
    acp = make_scheduler("ddpm").alphas_cumprod
    abar = acp[a["t"]].view(-1, 1, 1, 1)
    torch.testing.assert_close(a["x_t"], abar.sqrt() * x0 + (1 - abar).sqrt() * a["noise"])
    assert steps.tolist() == sorted(steps.tolist(), reverse=True) and len(steps) == 10 and steps.max() < 1000


# ----------------------------------------------------------------------------- additivity

def test_pearson_and_additivity_known_answers():
    assert ld.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert ld.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(ld.pearson([1, 1, 1], [1, 2, 3]))
    single = torch.tensor([0.1, 0.2, 0.4, 0.8])
    subsets = [(0, 1), (1, 2), (2, 3), (0, 3), (0, 1, 2), (1, 2, 3), (0, 2, 3)]
    exact = [float(single[list(s)].sum()) for s in subsets]
    out = ld.additivity(single, subsets, exact)
    assert set(out) == {2, 3}
    assert out[2]["r"] == pytest.approx(1.0) and out[2]["ratio"] == pytest.approx(1.0) and out[2]["n"] == 4
    doubled = [2 * v + 0.01 for v in exact]                     # super-additive, still perfectly ranked
    out = ld.additivity(single, subsets, doubled)
    assert out[3]["r"] == pytest.approx(1.0) and out[3]["ratio"] > 2


def test_removal_losses_are_additive_for_blocks_that_do_not_interact():
    """Blocks whose branches are tiny perturbations add up almost exactly (first order); the
    chapter measures how far a trained teacher is from this."""
    m, batch = _dit(depth=6, seed=5), _batch(b=16, seed=5)
    with torch.no_grad():
        for b in m.blocks:
            b.ada[1].weight.mul_(0.02)
            b.ada[1].bias.mul_(0.02)
    single = ld.removal_scores(m, batch)
    subs = ld.random_subsets(6, [2, 3], 12, torch.Generator().manual_seed(0))
    out = ld.additivity(single, subs, ld.subset_losses(m, batch, subs))
    assert out[2]["r"] > 0.8 and 0.5 < out[2]["ratio"] < 2


def test_independent_draws_shared_and_own():
    errors = torch.arange(24, dtype=torch.float64).view(3, 8)          # row k: 8k … 8k + 7
    shared = ld.independent_draws(errors, 3, torch.Generator().manual_seed(0), shared=True)
    torch.testing.assert_close(shared - shared[0], torch.tensor([0.0, 8.0, 16.0], dtype=torch.float64))
    full = ld.independent_draws(errors, 8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(full, errors.mean(1))
    own = torch.stack([ld.independent_draws(errors, 2, torch.Generator().manual_seed(i)) for i in range(50)])
    spread = own - own[:, :1] - torch.tensor([0.0, 8.0, 16.0], dtype=torch.float64)
    assert spread.abs().max() > 0                                     # the rows drew different examples


def test_candidate_removals_and_removal_metrics():
    m, batch = _dit(depth=8, seed=9), _batch(b=8, seed=9)
    scores = ld.removal_scores(m, batch)
    cands = ld.candidate_removals(m, scores, 4, torch.Generator().manual_seed(0))
    assert list(cands) == ["output loss", "weight magnitude", "random", "every other", "last blocks"]
    assert cands["output loss"] == ld.select_blocks(scores, 4) and cands["every other"] == [1, 3, 5, 7]
    assert all(len(v) == 4 for v in cands.values())
    metrics = ld.removal_metrics(m, batch, [[], cands["output loss"], 3])
    assert metrics["output_loss"][0].item() == 0.0
    assert metrics["output_loss"][1].item() == pytest.approx(ld.block_removal_loss(m, cands["output loss"], batch), rel=1e-6)
    with torch.no_grad():
        full = m(batch["x_t"], batch["t"], batch["cond"])
    assert metrics["eps_loss"][0].item() == pytest.approx((full - batch["noise"]).pow(2).mean().item(), rel=1e-6)
    # the lowest summed score is the lowest loss among these candidates only if additivity holds; at least
    # the criterion's own choice is no worse than removing the four blocks with the highest scores
    worst = sorted(scores.argsort(descending=True)[:4].tolist())
    assert ld.block_removal_loss(m, cands["output loss"], batch) <= ld.block_removal_loss(m, worst, batch)


def test_random_subsets():
    g = torch.Generator().manual_seed(0)
    subs = ld.random_subsets(8, [2, 4], 20, g)
    assert len(subs) == 40 and len(set(subs)) == 40
    assert all(len(s) in (2, 4) and list(s) == sorted(s) and max(s) < 8 for s in subs)
    assert ld.random_subsets(8, [2, 4], 20, torch.Generator().manual_seed(0)) == subs
    assert len(ld.random_subsets(4, [2], 50, g)) == 6           # all C(4, 2) when there are fewer


# ----------------------------------------------------------------------------- selection

def test_select_blocks_known_answers():
    assert ld.select_blocks([0.5, 0.1, 0.9, 0.2], 2) == [1, 3]
    assert ld.select_blocks(torch.tensor([0.5, 0.1, 0.9, 0.2]), 0) == []
    assert ld.select_blocks([0.5, 0.1, 0.9, 0.2], 10) == [0, 1, 2, 3]
    assert ld.select_blocks([1.0, 1.0, 1.0, 0.5], 2) == [0, 3]        # ties: lower index first
    # costs: unit 1 is cheapest to lose but too big; units 0 and 3 fit
    assert ld.select_blocks([0.3, 0.1, 0.9, 0.2], 3, costs=[1, 4, 1, 2]) == [0, 3]
    assert ld.select_blocks([0.3, 0.1, 0.9, 0.2], 2.5, costs=[1, 4, 1, 2]) == [3]
    assert ld.select_blocks([0.3, 0.1, 0.9, 0.2], 2.5, costs=[0.5, 4, 1, 2]) == [0, 3]


def test_baseline_criteria():
    assert ld.handcrafted_removal(8, 4, "every_other") == [1, 3, 5, 7]
    assert ld.handcrafted_removal(8, 4, "last") == [4, 5, 6, 7]
    assert ld.handcrafted_removal(8, 2, "every_other") == [1, 3]
    r = ld.random_removal(8, 4, torch.Generator().manual_seed(0))
    assert len(r) == 4 and r == sorted(set(r)) and r == ld.random_removal(8, 4, torch.Generator().manual_seed(0))
    m = _dit(depth=3)
    with torch.no_grad():
        for p in m.blocks[1].parameters():
            p.mul_(0.1)
    mag = ld.magnitude_scores(m)
    assert mag.shape == (3,) and mag.argmin().item() == 1


def test_gate_magnitudes_see_each_blocks_gates():
    m = _dit(depth=3, zero_gates=(1,))
    g = ld.gate_magnitudes(m, torch.tensor([10, 500, 900]), torch.tensor([0, 1, 2]))
    assert g.shape == (3, 2) and torch.equal(g[1], torch.zeros(2, dtype=torch.float64)) and (g[[0, 2]] > 0).all()


# ----------------------------------------------------------------------------- feature distillation

def test_feature_losses_known_answers_and_scale_invariance():
    t = [torch.ones(2, 3), torch.full((4,), 10.0)]
    s = [torch.zeros(2, 3), torch.full((4,), 11.0)]
    raw = ld.feature_loss_terms(s, t, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([1.0, 1.0]))
    norm = ld.feature_loss_terms(s, t, normalize=True, eps=0.0)
    torch.testing.assert_close(norm, torch.tensor([1.0, 0.01]))
    assert ld.normalized_feature_loss(s, t, eps=0.0).item() == pytest.approx(1.01)
    assert ld.normalized_feature_loss(s, t, eps=1.0).item() == pytest.approx(0.5 + 1 / 101)
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(3, 5, 8, generator=g) for _ in range(3)]
    t = [torch.randn(3, 5, 8, generator=g) for _ in range(3)]
    big_s, big_t = [x * 7 for x in s], [x * 7 for x in t]
    torch.testing.assert_close(ld.feature_loss_terms(big_s, big_t, normalize=True, eps=0.0),
                               ld.feature_loss_terms(s, t, normalize=True, eps=0.0))
    torch.testing.assert_close(ld.feature_loss_terms(big_s, big_t, normalize=False),
                               49 * ld.feature_loss_terms(s, t, normalize=False))
    assert ld.normalized_feature_loss(t, t).item() == 0.0


def test_normalised_loss_balances_layers_of_different_scale():
    """The imbalance the paper fixes: the same relative error in every layer gives equal shares
    only after normalisation."""
    g = torch.Generator().manual_seed(1)
    scales = [1.0, 2.0, 4.0, 16.0]
    t = [torch.randn(8, 16, generator=g) * c for c in scales]
    s = [x * 1.1 for x in t]                                     # 10 % relative error everywhere
    raw = ld.loss_shares(ld.feature_loss_terms(s, t, normalize=False))
    norm = ld.loss_shares(ld.feature_loss_terms(s, t, normalize=True))
    assert raw[-1] > 0.9 and raw.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(norm, torch.full((4,), 0.25, dtype=torch.float64), atol=1e-6, rtol=0)


def test_normalised_loss_gradient_reaches_only_the_student():
    t = [torch.randn(4, 6, requires_grad=True)]
    s = [torch.randn(4, 6, requires_grad=True)]
    ld.normalized_feature_loss(s, t).backward()
    assert s[0].grad is not None and s[0].grad.abs().sum() > 0
    assert t[0].grad is not None       # through the numerator only (the divisor is detached)
    eps = 1e-8
    want = -2 * (s[0] - t[0]).detach() / s[0].numel() / (t[0].detach().pow(2).mean() + eps)
    torch.testing.assert_close(t[0].grad, want)


def test_block_features_and_distillation_loss():
    teacher = _dit(depth=4, seed=7)
    batch = _batch(b=4, seed=7)
    eps, feats = ld.block_features(teacher, batch["x_t"], batch["t"], batch["cond"])
    with torch.no_grad():
        torch.testing.assert_close(eps, teacher(batch["x_t"], batch["t"], batch["cond"]))
    assert len(feats) == 4 and feats[0].shape == (4, 16, 32)
    # a student that is the whole teacher: no output or feature loss, only the task loss
    same = ld.remove_blocks(teacher, [])
    loss, logs = ld.distillation_loss(same, teacher, batch["x0"], cond=batch["cond"],
                                      generator=torch.Generator().manual_seed(0), normalize=True)
    assert logs["out"].item() == 0 and logs["feat"].item() == 0
    assert loss.item() == pytest.approx(logs["task"].item())
    student = ld.remove_blocks(teacher, [1, 2])
    for normalize in (False, True):
        loss, logs = ld.distillation_loss(student, teacher, batch["x0"], cond=batch["cond"],
                                          generator=torch.Generator().manual_seed(0), normalize=normalize)
        assert {"raw_0", "raw_1", "norm_0", "norm_1"} <= set(logs) and "raw_2" not in logs
        part = sum(logs[f"{'norm' if normalize else 'raw'}_{j}"] for j in range(2))
        assert logs["feat"].item() == pytest.approx(part.item(), rel=1e-5)
        assert loss.item() == pytest.approx((logs["task"] + logs["out"] + logs["feat"]).item(), rel=1e-5)
        loss.backward()
        assert all(p.grad is not None for p in student.blocks.parameters())
        assert all(p.grad is None for p in teacher.parameters())
        student.zero_grad()


def test_distill_brings_the_student_closer_to_the_teacher():
    teacher = _dit(depth=4, seed=8)
    g = torch.Generator().manual_seed(8)
    data = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, 3, (64,), generator=g)
    batch = ld.calibration_batch(data[:32], cond=labels[:32], generator=torch.Generator().manual_seed(1))
    student = ld.remove_blocks(teacher, [1, 2])

    def gap():
        with torch.no_grad():
            return (student(batch["x_t"], batch["t"], batch["cond"]) - teacher(batch["x_t"], batch["t"], batch["cond"])).pow(2).mean().item()

    before = gap()
    hist = ld.distill(student, teacher, data, labels=labels, steps=30, normalize=True, generator=g, batch_size=16,
                      lr=1e-3, progress=False)
    assert len(hist.loss) == 30 and "norm_1" in hist.logs and not student.training
    assert gap() < before
    assert len(teacher.blocks) == 4


def test_loss_shares():
    torch.testing.assert_close(ld.loss_shares([1.0, 3.0]), torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(ld.loss_shares([0.0, 0.0]), torch.tensor([0.5, 0.5], dtype=torch.float64))


# ----------------------------------------------------------------------------- judging samples

class _Const(nn.Module):
    """A 'classifier' that always says shape 1 with probability softmax([0, 2, 0])[1]."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.tensor([[0.0, 2.0, 0.0]]).expand(x.shape[0], 3) + 0 * self.w


def test_shape_scores_and_sample_quality():
    correct, conf = ld.shape_scores(_Const(), torch.zeros(3, 3, 16, 16), torch.tensor([1, 0, 1]))
    assert correct.tolist() == [1.0, 0.0, 1.0]
    p = math.exp(2) / (math.exp(2) + 2)
    torch.testing.assert_close(conf, torch.tensor([p, 1 - p, p], dtype=torch.float64) * torch.tensor([1, 0.5, 1], dtype=torch.float64))
    m = _dit(depth=2, classes=3)
    a = ld.sample_quality(m, _Const(), torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0), steps=2)
    b = ld.sample_quality(m, _Const(), torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0), steps=2)
    assert a["x"].shape == (3, 3, 16, 16) and torch.equal(a["x"], b["x"]) and a["correct"].tolist() == [0, 1, 0]


def test_student_zoo_names():
    assert ld.student_zoo_name("oloss", True, 0) == "laptop_student_oloss_norm_s0"
    assert ld.student_zoo_name("handmade", False, 2) == "laptop_student_handmade_raw_s2"
    from layerwise import zoo
    for sel, norm in ld.STUDENT_VARIANTS:
        for seed in ld.STUDENT_SEEDS:
            assert ld.student_zoo_name(sel, norm, seed) in zoo.REGISTRY


# ----------------------------------------------------------------------------- the zoo teacher

def test_the_zoo_teacher_is_trained_enough_to_prune():
    """Pitfall 4 measured: the teacher's gates are far from zero and removing any block costs
    something."""
    from layerwise import zoo

    teacher = zoo.load("laptop_teacher16")
    assert len(teacher.blocks) == 8
    gates = ld.gate_magnitudes(teacher, torch.arange(0, 1000, 50), torch.arange(20) % 6)
    assert gates.min() > 0.05, gates
    from layerwise.data.sprite_sets import primer_sprites
    x, y = primer_sprites(64, seed=4321)
    batch = ld.calibration_batch(x * 2 - 1, cond=y, generator=torch.Generator().manual_seed(0),
                                 timesteps=ld.sampling_timesteps(25))
    scores = ld.removal_scores(teacher, batch)
    assert (scores > 1e-4).all()


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_name_the_argument():
    m, batch = _dit(depth=3), _batch()
    with pytest.raises(TypeError, match="model"):
        ld.block_removal_loss(nn.Linear(2, 2), 0, batch)
    with pytest.raises(ValueError, match="units.*outside"):
        ld.block_removal_loss(m, 3, batch)
    with pytest.raises(ValueError, match="units.*outside"):
        ld.block_removal_loss(m, [-1], batch)
    with pytest.raises(ValueError, match="units.*twice"):
        ld.block_removal_loss(m, [1, 1], batch)
    with pytest.raises(TypeError, match="units"):
        ld.block_removal_loss(m, 1.0, batch)
    with pytest.raises(TypeError, match="units"):
        ld.block_removal_loss(m, [True], batch)
    with pytest.raises(TypeError, match="batch"):
        ld.block_removal_loss(m, 0, (batch["x_t"], batch["t"]))
    with pytest.raises(ValueError, match="batch lacks"):
        ld.block_removal_loss(m, 0, {"x_t": batch["x_t"]})
    with pytest.raises(ValueError, match=r"batch\['x_t'\]"):
        ld.block_removal_loss(m, 0, {**batch, "x_t": batch["x_t"][:, :2]})
    with pytest.raises(TypeError, match=r"batch\['x_t'\]"):
        ld.block_removal_loss(m, 0, {**batch, "x_t": batch["x_t"].long()})
    with pytest.raises(ValueError, match=r"batch\['t'\]"):
        ld.block_removal_loss(m, 0, {**batch, "t": batch["t"].float()})
    with pytest.raises(ValueError, match=r"batch\['t'\]"):
        ld.block_removal_loss(m, 0, {**batch, "t": batch["t"][:2]})
    with pytest.raises(ValueError, match=r"batch\['cond'\]"):
        ld.block_removal_loss(m, 0, {**batch, "cond": batch["cond"][:2]})
    with pytest.raises(TypeError, match="model"):
        ld.remove_blocks("model", [0])
    with pytest.raises(ValueError, match="units"):
        ld.remove_blocks(m, [5])
    with pytest.raises(ValueError, match="kept"):
        ld.PrunedDiT(DiTConfig(depth=2), kept=[0])
    with pytest.raises(TypeError, match="model"):
        ld.removal_scores(None, batch)
    with pytest.raises(ValueError, match="subsets"):
        ld.subset_losses(m, batch, [])
    with pytest.raises(ValueError, match="x0"):
        ld.calibration_batch(torch.zeros(3, 16, 16), generator=torch.Generator())
    with pytest.raises(ValueError, match="x0"):
        ld.calibration_batch(torch.zeros(2, 3, 16, 16, dtype=torch.long), generator=torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        ld.calibration_batch(torch.zeros(2, 3, 16, 16), generator=0)
    with pytest.raises(ValueError, match="timesteps"):
        ld.calibration_batch(torch.zeros(2, 3, 16, 16), generator=torch.Generator(), timesteps=torch.tensor([5, 1000]))
    with pytest.raises(ValueError, match="cond"):
        ld.calibration_batch(torch.zeros(2, 3, 16, 16), generator=torch.Generator(), cond=torch.zeros(3))
    with pytest.raises(ValueError, match="steps"):
        ld.sampling_timesteps(0)
    with pytest.raises(ValueError, match="n_units"):
        ld.random_subsets(0, [1], 3, torch.Generator())
    with pytest.raises(ValueError, match="sizes"):
        ld.random_subsets(4, [5], 3, torch.Generator())
    with pytest.raises(ValueError, match="per_size"):
        ld.random_subsets(4, [2], 0, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        ld.random_subsets(4, [2], 3, None)
    with pytest.raises(ValueError, match="same length"):
        ld.pearson([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="subsets"):
        ld.additivity([0.1, 0.2], [(0, 1)], [0.3, 0.4])
    with pytest.raises(ValueError, match="subsets"):
        ld.additivity([0.1, 0.2], [(0, 2)], [0.3])
    with pytest.raises(ValueError, match="actual"):
        ld.additivity([0.1, 0.2], [(0, 1)], [float("nan")])
    with pytest.raises(ValueError, match="scores"):
        ld.select_blocks([], 1)
    with pytest.raises(TypeError, match="scores"):
        ld.select_blocks("abc", 1)
    with pytest.raises(ValueError, match="scores"):
        ld.select_blocks([[0.1, 0.2]], 1)
    with pytest.raises(ValueError, match="budget"):
        ld.select_blocks([0.1, 0.2], -1)
    with pytest.raises(ValueError, match="budget"):
        ld.select_blocks([0.1, 0.2], "2")
    with pytest.raises(ValueError, match="costs"):
        ld.select_blocks([0.1, 0.2], 1, costs=[1.0])
    with pytest.raises(ValueError, match="costs"):
        ld.select_blocks([0.1, 0.2], 1, costs=[1.0, 0.0])
    with pytest.raises(TypeError, match="model"):
        ld.magnitude_scores(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="kind"):
        ld.handcrafted_removal(8, 4, "middle")
    with pytest.raises(ValueError, match="n_remove"):
        ld.handcrafted_removal(8, 5, "every_other")
    with pytest.raises(ValueError, match="n_remove"):
        ld.handcrafted_removal(8, 9, "last")
    with pytest.raises(ValueError, match="depth"):
        ld.handcrafted_removal(0, 0, "last")
    with pytest.raises(ValueError, match="n_remove"):
        ld.random_removal(4, 5, torch.Generator())
    with pytest.raises(ValueError, match="errors"):
        ld.independent_draws(torch.zeros(3), 1, torch.Generator())
    with pytest.raises(ValueError, match="size"):
        ld.independent_draws(torch.zeros(3, 4), 5, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        ld.independent_draws(torch.zeros(3, 4), 2, None)
    with pytest.raises(ValueError, match="scores"):
        ld.candidate_removals(m, [0.1, 0.2], 1, torch.Generator())
    with pytest.raises(ValueError, match="noise"):
        ld.removal_metrics(m, {k: v for k, v in batch.items() if k != "noise"}, [[0]])
    with pytest.raises(ValueError, match="subsets"):
        ld.removal_metrics(m, batch, [])
    with pytest.raises(ValueError, match="subsets"):
        ld.removal_metrics(m, batch, [[7]])
    with pytest.raises(ValueError, match="t must"):
        ld.gate_magnitudes(m, torch.tensor(5))
    with pytest.raises(TypeError, match="student_feats"):
        ld.normalized_feature_loss(torch.zeros(3), [torch.zeros(3)])
    with pytest.raises(TypeError, match="teacher_feats"):
        ld.normalized_feature_loss([torch.zeros(3)], [])
    with pytest.raises(ValueError, match="layers"):
        ld.normalized_feature_loss([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        ld.normalized_feature_loss([torch.zeros(3)], [torch.zeros(4)])
    with pytest.raises(TypeError, match=r"student_feats\[0\]"):
        ld.normalized_feature_loss([torch.zeros(3, dtype=torch.long)], [torch.zeros(3)])
    with pytest.raises(ValueError, match="eps"):
        ld.normalized_feature_loss([torch.zeros(3)], [torch.zeros(3)], eps=-1.0)
    with pytest.raises(TypeError, match="normalize"):
        ld.feature_loss_terms([torch.zeros(3)], [torch.zeros(3)], normalize="yes")
    with pytest.raises(ValueError, match="terms"):
        ld.loss_shares([1.0, -1.0])
    teacher = _dit(depth=3)
    with pytest.raises(ValueError, match="teacher"):
        ld.distillation_loss(ld.remove_blocks(_dit(depth=5), [0]), teacher, batch["x0"], cond=None,
                             generator=torch.Generator(), normalize=True)
    with pytest.raises(TypeError, match="student"):
        ld.distillation_loss(nn.Linear(2, 2), teacher, batch["x0"], cond=None, generator=torch.Generator(),
                             normalize=True)
    with pytest.raises(ValueError, match="x0"):
        ld.distillation_loss(teacher, teacher, batch["x0"][0], cond=None, generator=torch.Generator(), normalize=True)
    with pytest.raises(ValueError, match="data"):
        ld.distill(teacher, teacher, torch.zeros(4, 3), steps=1, normalize=True, generator=torch.Generator())
    with pytest.raises(ValueError, match="labels"):
        ld.distill(teacher, teacher, torch.zeros(4, 3, 16, 16), labels=torch.zeros(3), steps=1, normalize=True,
                   generator=torch.Generator())
    with pytest.raises(ValueError, match="steps"):
        ld.distill(teacher, teacher, torch.zeros(4, 3, 16, 16), steps=-1, normalize=True, generator=torch.Generator())
    with pytest.raises(ValueError, match="cond_drop"):
        ld.distill(teacher, teacher, torch.zeros(4, 3, 16, 16), steps=1, normalize=True, generator=torch.Generator(),
                   cond_drop=2.0)
    with pytest.raises(TypeError, match="classifier"):
        ld.shape_scores(None, torch.zeros(2, 3, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        ld.shape_scores(_Const(), torch.zeros(2, 3, 16, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="x must"):
        ld.shape_scores(_Const(), torch.zeros(2, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        ld.sample_quality(m, _Const(), torch.zeros(0, dtype=torch.long), generator=torch.Generator())
    with pytest.raises(ValueError, match="steps"):
        ld.sample_quality(m, _Const(), torch.zeros(2, dtype=torch.long), generator=torch.Generator(), steps=0)
    with pytest.raises(ValueError, match="selection"):
        ld.student_zoo_name("last", True, 0)
    with pytest.raises(TypeError, match="normalize"):
        ld.student_zoo_name("oloss", 1, 0)
    with pytest.raises(ValueError, match="seed"):
        ld.student_zoo_name("oloss", True, -1)
