"""Tests of layerwise.diffusion.schedule (the diffusion primer's reference), plus the answers
the grading tests submit for the primer's exercise."""

from __future__ import annotations

import pytest
import torch

from layerwise.diffusion import schedule as S

ALTERNATIVE_ANSWERS = {
    "q_sample": (
        "def q_sample(x0, t, noise, alphas_cumprod):\n"
        "    out = torch.empty_like(x0)\n"
        "    for i in range(x0.shape[0]):\n"
        "        a = alphas_cumprod[int(t[i])].item()\n"
        "        out[i] = (a ** 0.5) * x0[i] + ((1 - a) ** 0.5) * noise[i]\n"
        "    return out\n"),
    "ddim_step": (
        "def ddim_step(x_t, eps, abar_t, abar_prev, *, eta=0.0, noise=None):\n"
        "    abar_t, abar_prev = float(abar_t), float(abar_prev)\n"
        "    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5\n"
        "    var = eta ** 2 * (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)\n"
        "    out = abar_prev ** 0.5 * x0 + max(1 - abar_prev - var, 0.0) ** 0.5 * eps\n"
        "    if eta > 0:\n"
        "        out = out + var ** 0.5 * noise\n"
        "    return out\n"),
    "ddim_inversion_step": (
        "def ddim_inversion_step(x_t, eps, abar_t, abar_next):\n"
        "    a, b = torch.as_tensor(abar_t, dtype=x_t.dtype), torch.as_tensor(abar_next, dtype=x_t.dtype)\n"
        "    ratio = (b / a).sqrt()\n"
        "    return ratio * x_t + ((1 - b).sqrt() - ratio * (1 - a).sqrt()) * eps\n"),
}
WRONG_ANSWERS = {
    "q_sample": [
        "def q_sample(x0, t, noise, alphas_cumprod):\n"
        "    a = alphas_cumprod[t].view(-1, 1, 1, 1)\n"
        "    return a * x0 + (1 - a) * noise  # forgot the square roots\n",
        "def q_sample(x0, t, noise, alphas_cumprod):\n"
        "    a = alphas_cumprod[t].view(-1, 1, 1, 1).float()  # assumes 4-d input, float32\n"
        "    return a.sqrt() * x0 + (1 - a).sqrt() * noise\n",
    ],
    "ddim_step": [
        "def ddim_step(x_t, eps, abar_t, abar_prev, *, eta=0.0, noise=None):\n"
        "    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5\n"
        "    return abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps  # ignores eta\n",
        "def ddim_step(x_t, eps, abar_t, abar_prev, *, eta=0.0, noise=None):\n"
        "    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5\n"
        "    sigma = eta * ((1 - abar_prev) / (1 - abar_t)) ** 0.5  # missing the second factor\n"
        "    out = abar_prev ** 0.5 * x0 + (1 - abar_prev - sigma ** 2) ** 0.5 * eps\n"
        "    return out + sigma * noise if eta > 0 else out\n",
    ],
    "ddim_inversion_step": [
        "def ddim_inversion_step(x_t, eps, abar_t, abar_next):\n"
        "    return abar_next ** 0.5 * x_t + (1 - abar_next) ** 0.5 * eps  # treats x_t as x0\n",
        "def ddim_inversion_step(x_t, eps, abar_t, abar_next):\n"
        "    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5\n"
        "    return abar_next ** 0.5 * x0 + (1 - abar_t) ** 0.5 * eps  # wrong noise level\n",
    ],
}


@pytest.fixture(scope="module")
def acp() -> torch.Tensor:
    return S.make_scheduler("ddpm").alphas_cumprod


def test_make_scheduler_kinds_and_bad_kind():
    for kind in ("ddpm", "ddim", "ddim_inverse"):
        s = S.make_scheduler(kind)
        assert s.config.num_train_timesteps == 1000 and not s.config.clip_sample
    with pytest.raises(ValueError, match="kind"):
        S.make_scheduler("euler")


def test_q_sample_matches_diffusers_add_noise(acp):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, 4, 6, generator=g), torch.randn(5, 3, 4, 6, generator=g)
    t = torch.tensor([0, 10, 500, 998, 999])
    expected = S.make_scheduler("ddpm").add_noise(x0, noise, t)
    torch.testing.assert_close(S.q_sample(x0, t, noise, acp), expected)
    # the end points: t=0 is almost clean, t=T-1 is almost pure noise
    assert (S.q_sample(x0, t, noise, acp)[0] - x0[0]).abs().max() < 0.05
    assert (S.q_sample(x0, t, noise, acp)[-1] - noise[-1]).abs().max() < 0.05


def test_q_sample_keeps_dtype_and_any_rank(acp):
    x0 = torch.randn(2, 7, dtype=torch.float64)
    out = S.q_sample(x0, torch.tensor([3, 900]), torch.zeros_like(x0), acp)
    assert out.dtype == torch.float64 and out.shape == (2, 7)
    torch.testing.assert_close(out, x0 * acp[[3, 900]].double().sqrt()[:, None])


def test_q_sample_bad_input(acp):
    with pytest.raises(ValueError, match="noise"):
        S.q_sample(torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(2, 4), acp)
    with pytest.raises(ValueError, match="t must"):
        S.q_sample(torch.zeros(2, 3), torch.tensor([1]), torch.zeros(2, 3), acp)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(eta):
    sched = S.make_scheduler("ddim")
    sched.set_timesteps(20)
    g = torch.Generator().manual_seed(1)
    ts = list(sched.timesteps)
    for i, t in enumerate(ts):
        x, eps, z = (torch.randn(3, 3, 8, 8, generator=g) for _ in range(3))
        prev = ts[i + 1] if i + 1 < len(ts) else None
        a_prev = sched.alphas_cumprod[prev] if prev is not None else sched.final_alpha_cumprod
        expected = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        got = S.ddim_step(x, eps, sched.alphas_cumprod[t], a_prev, eta=eta, noise=z)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ddim_step_needs_noise_when_stochastic():
    with pytest.raises(ValueError, match="noise"):
        S.ddim_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.6, eta=0.5)


def test_ddim_inversion_step_matches_diffusers_inverse_scheduler():
    inv = S.make_scheduler("ddim_inverse")
    inv.set_timesteps(25)
    g = torch.Generator().manual_seed(2)
    ratio = 1000 // 25
    for t in inv.timesteps:
        x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        cur = int(t) - ratio
        a_cur = inv.alphas_cumprod[cur] if cur >= 0 else inv.initial_alpha_cumprod
        expected = inv.step(eps, t, x).prev_sample
        torch.testing.assert_close(S.ddim_inversion_step(x, eps, a_cur, inv.alphas_cumprod[t]), expected)


def test_ddim_step_then_inversion_step_is_identity_for_fixed_eps():
    x, eps = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    down = S.ddim_step(x, eps, 0.3, 0.7)
    torch.testing.assert_close(S.ddim_inversion_step(down, eps, 0.7, 0.3), x, atol=1e-5, rtol=1e-5)


class _Oracle(torch.nn.Module):
    """The ideal denoiser for a data set of one image: ε̂ = (x_t − √ᾱ x₀)/√(1−ᾱ)."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0
        self.acp = S.make_scheduler("ddpm").alphas_cumprod

    def forward(self, x, t, cond=None):
        a = self.acp[t].view(-1, *[1] * (x.dim() - 1))
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def test_eps_loss_is_zero_for_the_oracle(acp):
    x0 = torch.rand(1, 3, 4, 4) * 2 - 1
    loss = S.eps_loss(_Oracle(x0), x0.expand(6, -1, -1, -1), acp, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8
    per = S.eps_loss(lambda x, t, c: torch.zeros_like(x), x0.expand(6, -1, -1, -1), acp,
                     generator=torch.Generator().manual_seed(0), reduce=False)
    assert per.shape == (6,) and 0.5 < per.mean().item() < 1.5   # predicting 0 costs E‖ε‖² = 1


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_reach_the_single_training_image(sampler):
    x0 = torch.rand(1, 3, 4, 4) * 2 - 1
    out = S.sample(_Oracle(x0), (3, 3, 4, 4), sampler=sampler, steps=20, generator=torch.Generator().manual_seed(0),
                   device="cpu", progress=False)
    assert (out - x0).abs().max() < 1e-3


def test_sample_trajectory_and_bad_arguments():
    x0 = torch.zeros(1, 1, 2, 2)
    out, traj = S.sample(_Oracle(x0), (1, 1, 2, 2), steps=5, return_trajectory=True, device="cpu", progress=False)
    assert len(traj) == 5 and traj[0][0] > traj[-1][0]
    with pytest.raises(ValueError, match="sampler"):
        S.sample(_Oracle(x0), (1, 1, 2, 2), sampler="euler", device="cpu")
    with pytest.raises(ValueError, match="steps"):
        S.sample(_Oracle(x0), (1, 1, 2, 2), steps=0, device="cpu")


def test_inversion_then_sampling_returns_the_input_with_a_trained_model():
    """The property the editing chapters rely on, with the zoo's trained sprite model."""
    from layerwise import zoo
    from layerwise.data.sprite_sets import primer_sprites

    model = zoo.load("sprite_dit16", train_if_missing=False)
    x, y = primer_sprites(8, seed=4242)
    x = x * 2 - 1
    x_T = S.invert(model, x, steps=50, cond=y, progress=False)
    assert 0.2 < x_T.std().item() < 1.5      # noise-like (DDIM-inverted noise is often less spread than N(0, I))
    back = S.sample(model, x.shape, x_T=x_T, steps=50, cond=y, device="cpu", progress=False)
    err = (back - x).abs().mean().item()
    assert err < 0.05, f"inversion + sampling mean abs error {err:.3f} (pixels in [-1, 1])"
    # and it is the inversion that makes it work: sampling from fresh noise lands elsewhere
    fresh = S.sample(model, x.shape, steps=50, cond=y, generator=torch.Generator().manual_seed(0), device="cpu",
                     progress=False)
    assert (fresh - x).abs().mean().item() > 5 * err
