"""The shared step-based training loop (core.train.fit_steps, EMA, lr_factor) and the denoiser
training built on it (diffusion.train.fit_denoiser, heldout_eps_loss)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from layerwise.core.train import EMA, fit_steps, lr_factor
from layerwise.diffusion.train import fit_denoiser, heldout_eps_loss


def _regression(seed: int = 0):
    """A linear model and a loss_fn that draws batches of y = x·w* + 0.1 from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0]) + 0.1
    torch.manual_seed(seed)
    model = nn.Linear(5, 1)

    def loss_fn(step):
        idx = torch.randint(0, 256, (32,), generator=g)
        return (model(x[idx]).squeeze(1) - y[idx]).pow(2).mean()
    return model, loss_fn, (x, y)


def _full_loss(model, data) -> float:
    x, y = data
    with torch.no_grad():
        return (model(x).squeeze(1) - y).pow(2).mean().item()


def test_loss_falls_and_history_is_per_step():
    model, loss_fn, data = _regression()
    before = _full_loss(model, data)
    hist = fit_steps(model, loss_fn, 300, lr=0.05, progress=False)
    assert len(hist.loss) == len(hist.lr) == 300 and hist.seconds > 0
    assert _full_loss(model, data) < 0.01 * before
    assert sum(hist.loss[-20:]) / 20 < 0.05 * sum(hist.loss[:20]) / 20
    assert not model.training


def test_same_seed_gives_the_same_weights_and_another_seed_does_not():
    runs = []
    for seed in (0, 0, 1):
        model, loss_fn, _ = _regression(seed)
        fit_steps(model, loss_fn, 50, lr=0.01, warmup=10, cosine=True, clip=1.0, ema=0.9, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_ema_weights_are_copied_back_and_average_the_trajectory():
    model, loss_fn, _ = _regression()
    plain, loss_fn_plain, _ = _regression()
    fit_steps(plain, loss_fn_plain, 100, lr=0.05, progress=False)
    fit_steps(model, loss_fn, 100, lr=0.05, ema=0.95, progress=False)
    # same trajectory, but the EMA model holds an average of it, not its last point
    assert not torch.allclose(model.weight, plain.weight)
    assert torch.allclose(model.weight, plain.weight, atol=0.5)
    # EMA by hand: after one update of a zero shadow towards ones with decay d, the shadow is 1 - d
    m = nn.Linear(2, 2)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        ema.shadow.weight.zero_()
        m.weight.fill_(1.0)
    ema.update(m, step=100)                      # past the warm-up: d = min(0.5, 101/110) = 0.5
    ema.copy_to(m)
    assert torch.allclose(m.weight, torch.full((2, 2), 0.5))


def test_lr_factor_warmup_and_cosine():
    assert lr_factor(0, steps=100) == 1.0
    assert [lr_factor(s, steps=100, warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(0, steps=100, cosine=True) == 1.0
    assert lr_factor(50, steps=100, cosine=True) == pytest.approx(0.5)
    assert lr_factor(100, steps=100, cosine=True) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(9, steps=100, warmup=20, cosine=True) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    model, loss_fn, _ = _regression()
    hist = fit_steps(model, loss_fn, 10, lr=0.1, warmup=5, cosine=True, progress=False)
    assert hist.lr == pytest.approx([0.1 * lr_factor(s, steps=10, warmup=5, cosine=True) for s in range(10)])


def test_clip_params_and_logs():
    model, loss_fn, _ = _regression()
    frozen = nn.Linear(5, 1)
    before = frozen.weight.clone()
    seen = []

    def logged(step):
        loss = loss_fn(step)
        seen.append(step)
        return loss, {"double": 2 * loss, "step": step}
    hist = fit_steps(nn.ModuleList([model, frozen]), logged, 7, params=model.parameters(), clip=1e-3,
                     progress=False)
    assert seen == list(range(7))
    assert torch.equal(frozen.weight, before)                      # only `params` are trained
    assert hist.logs["step"] == list(range(7))
    assert hist.logs["double"] == pytest.approx([2 * v for v in hist.loss])


def test_zero_steps_change_nothing():
    model, loss_fn, _ = _regression()
    before = [p.clone() for p in model.parameters()]
    hist = fit_steps(model, loss_fn, 0, ema=0.99, progress=False)
    assert hist.loss == [] and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_input_is_named():
    model, loss_fn, _ = _regression()
    for kwargs, word in [(dict(steps=-1), "steps"), (dict(steps=1.5), "steps"), (dict(lr=0), "lr"),
                         (dict(lr=float("nan")), "lr"), (dict(warmup=-2), "warmup"), (dict(clip=0), "clip"),
                         (dict(log_every=0), "log_every"), (dict(params=[]), "params"), (dict(ema=1.0), "decay")]:
        args = {"steps": 3, **kwargs}
        with pytest.raises((ValueError, TypeError), match=word):
            fit_steps(model, loss_fn, args.pop("steps"), progress=False, **args)
    with pytest.raises(TypeError, match="model"):
        fit_steps(lambda x: x, loss_fn, 3)
    with pytest.raises(TypeError, match="loss_fn"):
        fit_steps(model, 3.0, 3)
    with pytest.raises(TypeError, match="scalar"):
        fit_steps(model, lambda step: torch.ones(2, requires_grad=True), 1, progress=False)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit_steps(model, lambda step: model.weight.sum() * float("nan"), 1, progress=False)


# ----------------------------------------------------------------------------- denoisers

class _TinyDenoiser(nn.Module):
    """ε̂ = conv(x) + a per-timestep bias; conditional on an optional label."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.t = nn.Embedding(1000, 1)
        self.label = nn.Embedding(3, 1)
        self.calls: list[object] = []

    def forward(self, x, t, cond=None):
        self.calls.append(cond)
        out = self.conv(x) + self.t(t.long()).view(-1, 1, 1, 1)
        return out if cond is None else out + self.label(cond).view(-1, 1, 1, 1)


def _denoise_data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_fit_denoiser_lowers_the_heldout_loss_and_is_reproducible():
    x, y = _denoise_data()
    xv, yv = _denoise_data(seed=1)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _TinyDenoiser()
        before = heldout_eps_loss(model, xv, labels=yv, generator=torch.Generator().manual_seed(5))
        losses = fit_denoiser(model, x, labels=y, steps=150, batch_size=16, lr=0.02, warmup=10, ema=0.9,
                              generator=torch.Generator().manual_seed(3), progress=False)
        after = heldout_eps_loss(model, xv, labels=yv, generator=torch.Generator().manual_seed(5))
        assert len(losses) == 150 and after < 0.8 * before
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_fit_denoiser_drops_the_label_at_the_given_rate():
    x, y = _denoise_data()
    for drop, lo, hi in ((0.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.3, 0.7)):
        model = _TinyDenoiser()
        fit_denoiser(model, x, labels=y, steps=60, cond_drop=drop, generator=torch.Generator().manual_seed(0),
                     progress=False)
        share = sum(c is not None for c in model.calls) / len(model.calls)
        assert lo <= share <= hi, (drop, share)


def test_heldout_eps_loss_is_seeded():
    x, _ = _denoise_data(32)
    model = _TinyDenoiser()
    a = heldout_eps_loss(model, x, generator=torch.Generator().manual_seed(0), repeats=3, batch_size=10)
    b = heldout_eps_loss(model, x, generator=torch.Generator().manual_seed(0), repeats=3, batch_size=10)
    c = heldout_eps_loss(model, x, generator=torch.Generator().manual_seed(1), repeats=3, batch_size=10)
    assert a == b and a != c and 0.5 < a < 5


def test_fit_denoiser_bad_input():
    x, y = _denoise_data()
    model = _TinyDenoiser()
    g = torch.Generator()
    with pytest.raises(ValueError, match="data"):
        fit_denoiser(model, x[:, 0], steps=1, generator=g)
    with pytest.raises(ValueError, match="labels"):
        fit_denoiser(model, x, labels=y[:5], steps=1, generator=g)
    with pytest.raises(ValueError, match="steps"):
        fit_denoiser(model, x, steps=-1, generator=g)
    with pytest.raises(ValueError, match="cond_drop"):
        fit_denoiser(model, x, labels=y, steps=1, cond_drop=1.5, generator=g)
