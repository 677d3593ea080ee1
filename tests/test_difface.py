"""Tests of layerwise.difface (DifFace) and layerwise.data.degrade, plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise import difface as df
from layerwise.data import degrade as dg
from layerwise.diffusion import ddim_step, make_scheduler, q_sample

ACP = make_scheduler("ddpm").alphas_cumprod

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "difface_start": (
        "def difface_start(y_restored, t_n, alphas_cumprod, noise):\n"
        "    a = alphas_cumprod[t_n].item()\n"
        "    est = torch.minimum(torch.maximum(y_restored, -torch.ones_like(y_restored)), torch.ones_like(y_restored))\n"
        "    return est * math.sqrt(a) + noise * math.sqrt(1.0 - a)\n"),
    "truncated_timesteps": (
        "def truncated_timesteps(n_steps, t_n, num_train_timesteps=1000):\n"
        "    k = math.ceil(t_n * n_steps / num_train_timesteps) if t_n * n_steps % num_train_timesteps else t_n * n_steps // num_train_timesteps\n"
        "    if k == 0:\n"
        "        return torch.tensor([0])\n"
        "    return torch.tensor([(t_n * (k - i)) // k for i in range(k + 1)], dtype=torch.int64)\n"),
    "transition_mismatch": (
        "def transition_mismatch(err_sq, abar_n):\n"
        "    snr = torch.as_tensor(abar_n, dtype=err_sq.dtype) / (1 - torch.as_tensor(abar_n, dtype=err_sq.dtype))\n"
        "    return 0.5 * snr * err_sq\n"),
}
# Plausible mistakes: each must lose its item's points, some at the visible test, the others at the hidden
# tests (out-of-range estimates, steps off the visible grid, per-image ᾱ, float64).
WRONG_ANSWERS = {
    "difface_start": [
        ("def difface_start(y_restored, t_n, alphas_cumprod, noise):\n"
         "    a = alphas_cumprod[t_n]\n"
         "    return a * y_restored + (1 - a) * noise  # variances used as the scales\n"),
        ("def difface_start(y_restored, t_n, alphas_cumprod, noise):\n"
         "    a = alphas_cumprod[t_n]\n"
         "    return a.sqrt() * y_restored + (1 - a).sqrt() * noise  # the estimate is not clipped\n"),
        ("def difface_start(y_restored, t_n, alphas_cumprod, noise):\n"
         "    a = alphas_cumprod[max(t_n - 1, 0)]  # one step too early\n"
         "    return a.sqrt() * y_restored.clamp(-1, 1) + (1 - a).sqrt() * noise\n"),
        ("def difface_start(y_restored, t_n, alphas_cumprod, noise):\n"
         "    a = alphas_cumprod[t_n].float()\n"
         "    return (a.sqrt() * y_restored.clamp(-1, 1) + (1 - a).sqrt() * noise).float()  # always float32\n"),
    ],
    "truncated_timesteps": [
        ("def truncated_timesteps(n_steps, t_n, num_train_timesteps=1000):\n"
         "    return torch.linspace(t_n, 0, n_steps + 1).long()  # the whole grid's length, whatever t_n\n"),
        ("def truncated_timesteps(n_steps, t_n, num_train_timesteps=1000):\n"
         "    stride = num_train_timesteps // n_steps\n"
         "    return torch.arange(0, t_n + 1, stride).flip(0)  # the fixed grid: misses t_n unless on it\n"),
        ("def truncated_timesteps(n_steps, t_n, num_train_timesteps=1000):\n"
         "    k = -(-t_n * n_steps // num_train_timesteps)\n"
         "    if k == 0:\n"
         "        return torch.zeros(1, dtype=torch.long)\n"
         "    t = torch.div(t_n * (k - torch.arange(k + 1)), k, rounding_mode='floor')\n"
         "    return t[1:]  # the official off-by-one: starts one stride below the step it diffused to\n"),
    ],
    "transition_mismatch": [
        ("def transition_mismatch(err_sq, abar_n):\n"
         "    return abar_n * err_sq / (1 - abar_n)  # the 1/2 of the Gaussian KL forgotten\n"),
        ("def transition_mismatch(err_sq, abar_n):\n"
         "    abar_n = torch.as_tensor(abar_n, dtype=err_sq.dtype)\n"
         "    return (1 - abar_n) * err_sq / (2 * abar_n)  # κ inverted\n"),
        ("def transition_mismatch(err_sq, abar_n):\n"
         "    abar_n = torch.as_tensor(abar_n, dtype=err_sq.dtype)\n"
         "    return (abar_n * err_sq / (2 * (1 - abar_n))).mean()  # one number for the whole batch\n"),
    ],
}


def _clean(n=8, seed=0, size=16):
    from layerwise.data.sprite_sets import primer_sprites

    return primer_sprites(max(n, 6), seed=seed, size=size)[0][:n]


# ----------------------------------------------------------------------------- data.degrade

def test_degrade_is_seeded_in_range_and_keeps_shape_and_dtype():
    x = _clean(6)
    for kind in dg.DEGRADATIONS:
        a, b = dg.degrade(x, kind, 3), dg.degrade(x, kind, 3)
        assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
        assert 0 <= a.min() and a.max() <= 1
        assert not torch.equal(a, dg.degrade(x, kind, 4))
    y = dg.degrade(x.double(), "severe", 0)
    assert y.dtype == torch.float64


def test_severe_and_unseen_degrade_more_than_mild():
    x = _clean(64, seed=1)
    err = {k: (dg.degrade(x, k, 5) - x).abs().mean().item() for k in dg.DEGRADATIONS}
    assert err["severe"] > 2 * err["mild"] and err["unseen"] > 2 * err["mild"], err


def test_params_follow_the_preset_ranges():
    p = dg.sample_params(2000, "mild", 0)
    assert p["blur"].min() >= 0.1 and p["blur"].max() <= 1.0
    assert set(p["scale"].tolist()) == {1, 2} and p["noise"].max() <= 0.05 and p["impulse"].max() == 0
    q = dg.sample_params(500, "unseen", 0)
    assert 0.08 <= q["impulse"].min() and q["impulse"].max() <= 0.15
    _, back = dg.degrade(_clean(4), "severe", 2, return_params=True)
    assert back["scale"].tolist() == [4, 4, 4, 4]


def test_gaussian_blur_properties():
    x = torch.rand(3, 3, 11, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(dg.gaussian_blur(x, 0.0), x)
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(dg.gaussian_blur(flat, 1.5), flat, atol=1e-6)          # reflect padding: flat stays flat
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1
    k = dg.gaussian_blur(impulse, 1.0)
    assert abs(k.sum().item() - 1) < 1e-5 and torch.allclose(k, k.flip(-1)) and torch.allclose(k, k.transpose(-1, -2))
    var = (k[0, 0] * (torch.arange(15.0) - 7)[None, :] ** 2).sum()
    assert abs(var.item() - 1.0) < 0.02                                          # σ = 1 → variance 1 per axis
    sig = torch.tensor([0.0, 0.7, 2.0])
    batched = dg.gaussian_blur(x, sig)                                            # one σ per image
    for i in range(3):
        assert torch.allclose(batched[i:i + 1], dg.gaussian_blur(x[i:i + 1], float(sig[i])), atol=1e-6)


def test_down_up_and_noise_and_impulses():
    x = torch.rand(4, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(dg.down_up(x, 1), x)
    flat = torch.full((2, 3, 16, 16), 0.6)
    assert torch.allclose(dg.down_up(flat, [2, 4]), flat, atol=1e-6)
    mixed = dg.down_up(x, [1, 2, 4, 1])
    assert torch.equal(mixed[0], x[0]) and torch.allclose(mixed[2:3], dg.down_up(x[2:3], 4))
    # detail finer than the factor is gone: a one-pixel checkerboard becomes flat grey at ×2 and ×4
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(2, 3, 16, 16)
    assert torch.allclose(dg.down_up(checker, [2, 4]), torch.full_like(checker, 0.5), atol=1e-6)
    assert (dg.down_up(x, 2) - x).abs().mean() > 0.1
    z = dg.add_noise(torch.zeros(2000, 1, 4, 4), 0.1, 0)
    assert abs(z.std().item() - 0.1) < 0.005
    sp = dg.salt_and_pepper(torch.full((400, 3, 8, 8), 0.5), 0.2, 0)
    hit = (sp[:, 0] != 0.5)
    assert abs(hit.float().mean().item() - 0.2) < 0.01
    assert torch.equal(sp[:, 0] != 0.5, sp[:, 2] != 0.5)                         # all channels of a pixel at once
    assert set(sp[hit[:, None].expand_as(sp)].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(dg.salt_and_pepper(x, 0.0, 0), x)
    cast = dg.colour_cast(torch.full((2, 3, 4, 4), 0.5), [0.2, 0.0, -0.6])
    assert torch.allclose(cast[:, :, 0, 0], torch.tensor([[0.7, 0.5, 0.0]] * 2))


@pytest.mark.parametrize("call, match", [
    (lambda: dg.gaussian_blur([1.0], 1.0), "x must be a torch.Tensor"),
    (lambda: dg.gaussian_blur(torch.zeros(3, 8, 8), 1.0), r"x must be a non-empty batch"),
    (lambda: dg.gaussian_blur(torch.zeros(1, 3, 8, 8, dtype=torch.long), 1.0), "floating-point"),
    (lambda: dg.gaussian_blur(torch.zeros(2, 3, 8, 8), -1.0), "sigma must lie in"),
    (lambda: dg.gaussian_blur(torch.zeros(2, 3, 8, 8), [1.0, 2.0, 3.0]), r"sigma must be a number or have shape \(2,\)"),
    (lambda: dg.down_up(torch.zeros(2, 3, 8, 8), 1.5), "factor must be an int"),
    (lambda: dg.down_up(torch.zeros(2, 3, 8, 8), 0), "factor must lie in"),
    (lambda: dg.down_up(torch.zeros(2, 3, 8, 8), 2, noise=torch.zeros(2, 3, 4, 4)), "noise must have x's shape"),
    (lambda: dg.add_noise(torch.zeros(2, 3, 8, 8), -0.1, 0), "std must lie in"),
    (lambda: dg.add_noise(torch.zeros(2, 3, 8, 8), 0.1, "seed"), "generator must be a torch.Generator or an int"),
    (lambda: dg.salt_and_pepper(torch.zeros(2, 3, 8, 8), 1.5, 0), "amount must lie in"),
    (lambda: dg.colour_cast(torch.zeros(2, 3, 8, 8), [0.1, 0.2]), "shift must have shape"),
    (lambda: dg.colour_cast(torch.zeros(2, 3, 8, 8), [0.1, 0.2, 3.0]), "shift must lie in"),
    (lambda: dg.degrade(torch.zeros(2, 3, 8, 8), "terrible", 0), "unknown kind 'terrible'"),
    (lambda: dg.degrade(torch.zeros(2, 3, 8, 8), 3, 0), "kind must be a preset name"),
    (lambda: dg.degrade(torch.zeros(2, 3, 8, 8), {"blur": (0, 1)}, 0), "kind must have the keys"),
    (lambda: dg.sample_params(0, "mild", 0), "n must be an int >= 1"),
    (lambda: dg.sample_params(3, dict(blur=(0, 1), scale=(2, 1.5), noise=(0, 0), impulse=(0, 0)), 0), "lo <= hi"),
])
def test_degrade_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# ----------------------------------------------------------------------------- the start, the grid, the mismatch

def test_difface_start_is_the_forward_process_of_the_clipped_estimate():
    g = torch.Generator().manual_seed(0)
    est = torch.rand(4, 3, 8, 6, generator=g) * 2 - 1
    noise = torch.randn(est.shape, generator=g)
    t = torch.full((4,), 400)
    assert torch.allclose(df.difface_start(est, 400, ACP, noise), q_sample(est, t, noise, ACP), atol=1e-6)
    wild = est * 3                                                              # out of range: clipped first
    assert torch.allclose(df.difface_start(wild, 400, ACP, noise), q_sample(wild.clamp(-1, 1), t, noise, ACP), atol=1e-6)
    zero = df.difface_start(est, 999, ACP, torch.zeros_like(est))
    assert torch.allclose(zero, ACP[999].sqrt() * est, atol=1e-7)
    assert df.difface_start(est.double(), 10, ACP, noise.double()).dtype == torch.float64


def test_truncated_timesteps_start_where_they_diffused_and_keep_the_grid_spacing():
    assert df.truncated_timesteps(25, 400).tolist() == list(range(400, -1, -40))
    assert df.truncated_timesteps(250, 400).tolist() == list(range(400, -1, -4))   # the official spacing, 101 calls
    assert df.truncated_timesteps(25, 0).tolist() == [0]
    assert df.truncated_timesteps(25, 100).tolist() == [100, 66, 33, 0]
    for n in (1, 7, 10, 25, 50, 250, 1000):
        for t in (1, 3, 99, 400, 517, 999):
            ts = df.truncated_timesteps(n, t)
            assert ts.dtype == torch.int64 and ts[0] == t and ts[-1] == 0
            assert (ts[:-1] > ts[1:]).all()
            assert len(ts) == math.ceil(t * n / 1000) + 1
            assert (ts[:-1] - ts[1:]).max() <= math.ceil(1000 / n)               # no stride coarser than the grid's
    assert df.truncated_timesteps(7, 50, num_train_timesteps=100).tolist() == [50, 37, 25, 12, 0]


def test_transition_mismatch_is_the_kl_of_the_two_starts():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1
    est = (x0 + 0.3 * torch.randn(x0.shape, generator=g)).clamp(-1, 1)
    err = df.estimator_error_sq(x0, est)
    for t in (100, 400):
        a = float(ACP[t])
        closed = df.transition_mismatch(err, a)
        # Monte-Carlo KL: E_q[log q(x) − log p(x)], q = N(√ᾱ f, (1−ᾱ)I), p = N(√ᾱ x0, (1−ᾱ)I)
        z = torch.randn(20000, *x0.shape, generator=g)
        x = a ** 0.5 * est + (1 - a) ** 0.5 * z
        log_ratio = ((x - a ** 0.5 * x0) ** 2 - (x - a ** 0.5 * est) ** 2).flatten(2).sum(2) / (2 * (1 - a))
        mc = log_ratio.mean(0)
        assert torch.allclose(mc, closed, rtol=0.05, atol=0.05 * closed.mean().item()), (t, mc, closed)
    kl = [df.transition_mismatch(err, float(ACP[t])) for t in (50, 200, 400, 800)]
    assert all((a > b).all() for a, b in zip(kl, kl[1:]))                      # the contraction: falls with N
    per_image = df.transition_mismatch(err, ACP[torch.tensor([50, 400, 800])])
    assert torch.allclose(per_image, torch.stack([kl[0][0], kl[2][1], kl[3][2]]))
    assert df.transition_mismatch(err.double(), 0.5).dtype == torch.float64
    assert torch.allclose(df.transition_mismatch(torch.tensor([2.0]), 0.5), torch.tensor([1.0]))


@pytest.mark.parametrize("call, match", [
    (lambda: df.difface_start(torch.zeros(3, 8, 8), 10, ACP, torch.zeros(3, 8, 8)), r"y_restored must be a 4-D"),
    (lambda: df.difface_start(torch.zeros(1, 3, 8, 8), 1000, ACP, torch.zeros(1, 3, 8, 8)), r"t_n must be an int in \[0, 999\]"),
    (lambda: df.difface_start(torch.zeros(1, 3, 8, 8), 10.0, ACP, torch.zeros(1, 3, 8, 8)), "t_n must be an int"),
    (lambda: df.difface_start(torch.zeros(1, 3, 8, 8), 10, ACP, torch.zeros(1, 3, 8, 4)), "noise"),
    (lambda: df.difface_start(torch.zeros(1, 3, 8, 8), 10, [0.5, 0.4], torch.zeros(1, 3, 8, 8)), "alphas_cumprod"),
    (lambda: df.difface_start(torch.zeros(1, 3, 8, 8), 1, torch.tensor([1.0, 0.5]), torch.zeros(1, 3, 8, 8)), "alphas_cumprod must lie"),
    (lambda: df.truncated_timesteps(0, 10), "n_steps must be an int in"),
    (lambda: df.truncated_timesteps(25, -1), "t_n must be an int in"),
    (lambda: df.truncated_timesteps(25, 1000), "t_n must be an int in"),
    (lambda: df.truncated_timesteps(25.0, 10), "n_steps must be an int"),
    (lambda: df.truncated_timesteps(True, 10), "n_steps must be an int"),
    (lambda: df.truncated_timesteps(25, 10, num_train_timesteps=0), "num_train_timesteps"),
    (lambda: df.transition_mismatch([1.0], 0.5), "err_sq must be a torch.Tensor"),
    (lambda: df.transition_mismatch(torch.tensor([1]), 0.5), "err_sq must be a floating-point"),
    (lambda: df.transition_mismatch(torch.tensor([-1.0]), 0.5), "err_sq holds negative"),
    (lambda: df.transition_mismatch(torch.tensor([1.0]), 1.0), "abar_n must lie strictly"),
    (lambda: df.transition_mismatch(torch.tensor([1.0]), "0.5"), "abar_n must be a number"),
    (lambda: df.estimator_error_sq(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5)), "must have the same shape"),
])
def test_start_grid_mismatch_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# ----------------------------------------------------------------------------- the reverse diffusion

def test_ddim_step_clipped_is_the_library_step_plus_the_clip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    eps, z = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    a_t, a_p = ACP[400], ACP[360]
    for eta in (0.0, 0.5, 1.0):
        ours = df.ddim_step_clipped(x, eps, a_t, a_p, eta=eta, noise=z, clip_x0=False)
        assert torch.allclose(ours, ddim_step(x, eps, a_t, a_p, eta=eta, noise=z), atol=1e-5)
    big = df.ddim_step_clipped(5 * x, eps, a_t, 1.0, eta=0.5)                   # to ᾱ = 1: the clipped x̂₀ itself
    assert big.abs().max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="eta > 0 needs noise"):
        df.ddim_step_clipped(x, eps, a_t, a_p, eta=0.5)
    with pytest.raises(ValueError, match="eta must be a number"):
        df.ddim_step_clipped(x, eps, a_t, a_p, eta=1.5, noise=z)
    with pytest.raises(ValueError, match="abar_t <= abar_prev"):
        df.ddim_step_clipped(x, eps, a_p, a_t, eta=0.0)


class _Oracle(torch.nn.Module):
    """A denoiser that knows the clean image: ε̂ = (x_t − √ᾱ_t x₀) / √(1 − ᾱ_t)."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.calls = x0, []

    def forward(self, x, t, cond=None):
        self.calls.append(int(t[0]))
        a = ACP[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def test_reverse_diffusion_with_a_perfect_denoiser_returns_the_clean_image():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    oracle = _Oracle(x0)
    est = torch.zeros_like(x0)                                                  # a poor estimate: only the denoiser helps
    for eta in (0.0, 0.5, 1.0):
        oracle.calls.clear()
        out = df.restore(oracle, est, 400, ACP, n_steps=25, eta=eta, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(out, x0, atol=1e-4)
        assert oracle.calls == df.truncated_timesteps(25, 400).tolist()          # first call at the step it diffused to
    assert torch.equal(df.restore(oracle, 3 * x0, 0, ACP), (3 * x0).clamp(-1, 1))   # t_n = 0: the estimate alone


def test_restore_is_seeded_and_an_untrained_restorer_makes_difface_sdedit():
    torch.manual_seed(0)
    prior = torch.nn.Conv2d(3, 3, 3, padding=1)
    model = lambda x, t, cond=None: prior(x)                                    # noqa: E731
    y0 = torch.rand(2, 3, 8, 8) * 2 - 1
    f = df.Restorer(width=8, blocks=1)
    assert torch.equal(f(y0), y0)                                                # zero-initialised output layer
    a = df.restore(model, f(y0), 200, ACP, generator=torch.Generator().manual_seed(3))
    b = df.restore(model, y0, 200, ACP, generator=torch.Generator().manual_seed(3))
    c = df.restore(model, y0, 200, ACP, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(b, c) and a.abs().max() <= 1


@pytest.mark.parametrize("call, match", [
    (lambda: df.reverse_diffusion(lambda x, t, c: x, torch.zeros(1, 3, 4, 4), torch.tensor([400, 0, 10]), ACP), "descend strictly to 0"),
    (lambda: df.reverse_diffusion(lambda x, t, c: x, torch.zeros(1, 3, 4, 4), torch.tensor([400, 200]), ACP), "descend strictly to 0"),
    (lambda: df.reverse_diffusion(lambda x, t, c: x, torch.zeros(1, 3, 4, 4), [400, 0], ACP), "timesteps must be a non-empty"),
    (lambda: df.restore(lambda x, t, c: x, torch.zeros(1, 3, 4, 4), -5, ACP), "t_n must be an int in"),
    (lambda: df.restore(lambda x, t, c: x, torch.zeros(1, 3, 4, 4), 100, ACP, eta=-0.1), "eta must be a number"),
    (lambda: df.Restorer(width=0), "width must be an int in"),
    (lambda: df.Restorer()(torch.zeros(1, 1, 8, 8)), "y must have 3 channels"),
    (lambda: df.restoration_l1(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)), "same shape"),
])
def test_sampler_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# ----------------------------------------------------------------------------- measurements

def test_psnr_and_frechet_distance_known_values():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1] += 0.2                                                                 # MSE 0.04 → 10 log10(4 / 0.04) = 20 dB
    p = df.psnr(y, x)
    assert p.shape == (2,) and abs(p[1].item() - 20.0) < 1e-5 and p[0].item() == pytest.approx(10 * math.log10(4e10))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    b = 2 + 3 * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    fd = df.frechet_distance(a, b)
    mu, sd = b.mean() - a.mean(), b.std() - a.std()
    assert fd == pytest.approx(float(mu ** 2 + sd ** 2), rel=1e-6)              # 1-D: (μ₁−μ₂)² + (σ₁−σ₂)²
    c = torch.randn(300, 5, generator=g)
    assert abs(df.frechet_distance(c, c)) < 1e-6
    d = c @ torch.randn(5, 5, generator=g) + 1
    assert df.frechet_distance(c, d) == pytest.approx(df.frechet_distance(d, c), rel=1e-6) and df.frechet_distance(c, d) > 0


@pytest.mark.parametrize("call, match", [
    (lambda: df.psnr(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5)), "pred .* and target .* must have the same shape"),
    (lambda: df.psnr(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), "pred must be a 4-D"),
    (lambda: df.psnr(torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 3, 4, 4)), "pred must be a floating-point"),
    (lambda: df.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3)), "feats needs at least 2 rows"),
    (lambda: df.frechet_distance(torch.zeros(4, 3), torch.zeros(5, 2)), "feats has 3 features but reference has 2"),
    (lambda: df.frechet_distance(torch.zeros(4, 3), [[0.0, 1.0]]), "reference must be a torch.Tensor"),
])
def test_measurements_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_nearest_feature_distance():
    ref = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = df.nearest_feature_distance(torch.tensor([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]]), ref)
    assert d.tolist() == [1.0, 0.0, 5.0] and d.dtype == torch.float64
    with pytest.raises(ValueError, match="but reference has 2"):
        df.nearest_feature_distance(torch.zeros(2, 3), ref)
    with pytest.raises(ValueError, match="feats must be a 2-D"):
        df.nearest_feature_distance(torch.zeros(3), ref)


def test_judge_reads_the_classifier():
    from layerwise.core.models import ConvTrunk

    torch.manual_seed(0)
    trunk = ConvTrunk(3, [4])
    clf = torch.nn.Sequential(trunk, torch.nn.Linear(trunk.out_features, 6)).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    out = df.judge(clf, x, torch.arange(5))
    assert out["features"].shape == (5, 4) and out["pred"].shape == (5,) and out["correct"].shape == (5,)
    assert torch.allclose(out["confidence"], clf(x).softmax(1).max(1).values)
    with pytest.raises(TypeError, match="classifier must be an nn.Sequential"):
        df.judge(trunk[0], x)
    with pytest.raises(ValueError, match="labels must be a tensor of shape"):
        df.judge(clf, x, torch.arange(4))


def test_run_trial_pairs_the_methods_and_measures_each_image():
    from layerwise.core.models import ConvTrunk

    torch.manual_seed(0)
    trunk = ConvTrunk(3, [4])
    clf = torch.nn.Sequential(trunk, torch.nn.Linear(trunk.out_features, 6)).eval()
    x0 = _clean(6, seed=2) * 2 - 1
    labels = torch.arange(6)
    oracle = _Oracle(x0)
    ref = df.judge(clf, _clean(6, seed=3) * 2 - 1)["features"]
    y0 = (x0 + 0.4).clamp(-1, 1)
    trial = df.run_trial(oracle, clf, x0, labels, y0, 300, ACP, ref, method="sdedit", n_steps=10, seed=5)
    assert trial.images.shape == x0.shape and trial.psnr.shape == (6,) and (trial.psnr > 60).all()   # the oracle restores
    assert torch.allclose(trial.mismatch, df.transition_mismatch(df.estimator_error_sq(x0, y0), float(ACP[300])))
    alone = df.run_trial(oracle, clf, x0, labels, y0, 0, ACP, ref, method="f")
    assert torch.isnan(alone.mismatch).all() and torch.allclose(alone.images, y0)
    s = trial.summary(ref)
    assert s["t_n"] == 300 and s["method"] == "sdedit" and set(s) >= {"psnr", "accuracy", "frechet", "mismatch", "realism"}
    assert s["frechet"] == pytest.approx(df.frechet_distance(trial.features, ref))
    part = trial[2:5]
    assert len(part) == 3 and torch.equal(part.images, trial.images[2:5]) and torch.equal(part.psnr, trial.psnr[2:5])
    assert torch.allclose(trial.realism, torch.cdist(trial.features.double(), ref.double()).min(1).values)
    # the sweep: every (method, start); the same seed per start for every method → identical estimates, identical outputs
    prior = torch.nn.Conv2d(3, 3, 3, padding=1)
    model = lambda x, t, cond=None: prior(x)                                    # noqa: E731
    runs = df.sweep(model, clf, x0, labels, {"a": y0, "b": y0.clone()}, [0, 150, 600], ACP, ref, n_steps=5)
    assert sorted(runs) == [("a", 0), ("a", 150), ("a", 600), ("b", 0), ("b", 150), ("b", 600)]
    assert all(torch.equal(runs[("a", t)].images, runs[("b", t)].images) for t in (0, 150, 600))
    assert not torch.equal(runs[("a", 150)].images, runs[("a", 600)].images)
    rows = df.tabulate(runs, {"first": slice(0, 3), "rest": torch.tensor([3, 4, 5])}, ref)
    assert len(rows) == 12 and {r["set"] for r in rows} == {"first", "rest"}
    r = next(r for r in rows if r["set"] == "rest" and r["method"] == "a" and r["t_n"] == 150)
    assert r["psnr"] == pytest.approx(float(runs[("a", 150)].psnr[3:].mean()))
    assert r["mismatch_median"] == pytest.approx(float(runs[("a", 150)].mismatch[3:].median()))
    assert r["frechet"] == pytest.approx(df.frechet_distance(runs[("a", 150)].features[3:], ref))
    with pytest.raises(ValueError, match="groups must be a non-empty dict"):
        df.tabulate(runs, {}, ref)
    with pytest.raises(ValueError, match="estimates must be a non-empty dict"):
        df.sweep(model, clf, x0, labels, {}, [100], ACP, ref)
    with pytest.raises(ValueError, match="starts must be a non-empty sequence"):
        df.sweep(model, clf, x0, labels, {"a": y0}, 100, ACP, ref)
    with pytest.raises(ValueError, match="estimate"):
        df.run_trial(oracle, clf, x0, labels, y0[:3], 300, ACP, ref)
    with pytest.raises(TypeError, match="seed must be an int"):
        df.run_trial(oracle, clf, x0, labels, y0, 300, ACP, ref, seed=0.5)
