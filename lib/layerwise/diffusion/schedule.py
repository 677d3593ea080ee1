"""DDPM training and DDPM / DDIM sampling and DDIM inversion, on top of diffusers' schedulers.

The schedulers themselves (β schedule, timestep spacing, the update rules) come from
``diffusers``; what is written out here is the arithmetic each chapter needs to *see*:

- :func:`q_sample` — the forward process, x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4);
- :func:`eps_loss` — the simplified training objective ‖ε − ε_θ(x_t, t)‖² (Ho et al., eq. 14);
- :func:`predict_x0`, :func:`ddim_step` — one DDIM update (Song et al. 2021, eq. 12, with η);
- :func:`ddim_inversion_step` — the same update run towards more noise (deterministic η = 0);
- :func:`sample` and :func:`invert` — whole loops that drive diffusers' ``DDPMScheduler``,
  ``DDIMScheduler`` and ``DDIMInverseScheduler``.

A *denoiser* is any callable ``model(x_t, t, cond) → ε̂`` with x_t: (B, C, H, W) and t: (B,)
long — :class:`~layerwise.diffusion.dit.TinyDiT` and :class:`UNetDenoiser` both are.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from layerwise.core.env import progress_bar

__all__ = ["make_scheduler", "q_sample", "eps_loss", "predict_x0", "ddim_step", "ddim_inversion_step",
           "sample", "invert", "Denoiser", "SCHEDULE"]

Denoiser = Callable[..., Tensor]

#: The schedule every model in the zoo is trained with (diffusers' defaults of DDPM).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def make_scheduler(kind: Literal["ddpm", "ddim", "ddim_inverse"] = "ddim", **overrides):
    """A diffusers scheduler with the course's schedule (:data:`SCHEDULE`), no sample clipping."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "ddim_inverse": DDIMInverseScheduler}
    if kind not in classes:
        raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    return classes[kind](**{**SCHEDULE, "clip_sample": False, **overrides})


def _abar(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    a = alphas_cumprod.to(like.device, torch.float32)[t.to(like.device).long()]
    return a.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process q(x_t | x₀): x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε.

    x0, noise: (B, ...); t: (B,) integer timesteps; alphas_cumprod: (T,) → x_t: (B, ...).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    if t.dim() != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must be (B,) = ({x0.shape[0]},), got shape {tuple(t.shape)}")
    a = _abar(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def eps_loss(model: Denoiser, x0: Tensor, alphas_cumprod: Tensor, *, generator: torch.Generator | None = None,
             cond: Tensor | None = None, t: Tensor | None = None, reduce: bool = True) -> Tensor:
    """The simplified DDPM objective: E_{t, ε} ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖².

    t is drawn uniformly from {0, …, T−1} unless given. ``reduce=False`` returns (B,) losses.
    """
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator, device="cpu").to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
    pred = model(q_sample(x0, t, noise, alphas_cumprod), t, cond)
    per = (pred - noise).pow(2).flatten(1).mean(1)
    return per.mean() if reduce else per


def predict_x0(x_t: Tensor, eps: Tensor, abar_t: Tensor | float) -> Tensor:
    """x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t — the clean image the noise estimate implies."""
    abar_t = torch.as_tensor(abar_t, dtype=x_t.dtype, device=x_t.device)
    return (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()


def ddim_step(x_t: Tensor, eps: Tensor, abar_t: Tensor | float, abar_prev: Tensor | float, *,
              eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM update x_t → x_prev (Song et al. 2021, eq. 12).

    σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev);
    x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z.   η = 0 is deterministic; η = 1 is DDPM-like.
    """
    abar_t = torch.as_tensor(abar_t, dtype=x_t.dtype, device=x_t.device)
    abar_prev = torch.as_tensor(abar_prev, dtype=x_t.dtype, device=x_t.device)
    x0 = predict_x0(x_t, eps, abar_t)
    if eta == 0:
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
    if noise is None:
        raise ValueError("eta > 0 needs noise (the z of the stochastic update)")
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    return abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps + sigma * noise


def ddim_inversion_step(x_t: Tensor, eps: Tensor, abar_t: Tensor | float, abar_next: Tensor | float) -> Tensor:
    """Deterministic DDIM run backwards, x_t → x_next (more noise): √ᾱ_next x̂₀ + √(1−ᾱ_next) ε̂,
    with x̂₀ from (x_t, ε̂, ᾱ_t). Exact when ε̂ barely changes between the two timesteps."""
    abar_next = torch.as_tensor(abar_next, dtype=x_t.dtype, device=x_t.device)
    return abar_next.sqrt() * predict_x0(x_t, eps, abar_t) + (1 - abar_next).sqrt() * eps


def _call(model: Denoiser, x: Tensor, t: Tensor | int, cond: Tensor | None, guidance: float) -> Tensor:
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    if guidance == 1.0 or cond is None:
        return model(x, tt, cond)
    uncond = model(x, tt, None)
    return uncond + guidance * (model(x, tt, cond) - uncond)


@torch.no_grad()
def sample(model: Denoiser, shape: tuple[int, ...], *, sampler: Literal["ddim", "ddpm"] = "ddim", steps: int = 50,
           eta: float = 0.0, generator: torch.Generator | None = None, cond: Tensor | None = None,
           x_T: Tensor | None = None, guidance: float = 1.0, device: torch.device | str | None = None,
           return_trajectory: bool = False, progress: bool | None = None):
    """Generate (B, C, H, W) samples from pure noise with diffusers' DDIM or DDPM scheduler.

    ``x_T`` starts from a given noise (e.g. the output of :func:`invert`); ``guidance`` > 1
    applies classifier-free guidance (the model must accept ``cond=None``). With
    ``return_trajectory=True`` also returns the list of (timestep, x_t, x̂₀) along the way.
    """
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    device = torch.device(device) if device is not None else next(iter(_params(model)), torch.empty(0)).device
    scheduler = make_scheduler(sampler)
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator).to(device) if x_T is None else x_T.to(device).clone()
    trajectory = []
    for t in progress_bar(scheduler.timesteps, desc=f"{sampler} sampling", enabled=progress):
        eps = _call(model, x, t, cond, guidance)
        kwargs = {"eta": eta, "generator": generator} if sampler == "ddim" else {"generator": generator}
        if sampler == "ddim" and eta > 0:
            kwargs = {"eta": eta, "variance_noise": torch.randn(x.shape, generator=generator).to(device)}
        out = scheduler.step(eps, t, x, **kwargs)
        if return_trajectory:
            trajectory.append((int(t), x.cpu(), out.pred_original_sample.cpu()))
        x = out.prev_sample
    return (x, trajectory) if return_trajectory else x


@torch.no_grad()
def invert(model: Denoiser, x0: Tensor, *, steps: int = 50, cond: Tensor | None = None,
           return_trajectory: bool = False, progress: bool | None = None):
    """DDIM inversion with diffusers' ``DDIMInverseScheduler``: x₀ → x_T such that DDIM
    sampling (η = 0, same ``steps``) from x_T returns close to x₀."""
    scheduler = make_scheduler("ddim_inverse")
    scheduler.set_timesteps(steps)
    x = x0.clone()
    trajectory = [(0, x.cpu())]
    for t in progress_bar(scheduler.timesteps, desc="DDIM inversion", enabled=progress):
        eps = _call(model, x, t, cond, 1.0)
        x = scheduler.step(eps, t, x).prev_sample
        trajectory.append((int(t), x.cpu()))
    return (x, trajectory) if return_trajectory else x


def _params(model):
    return model.parameters() if hasattr(model, "parameters") else iter(())
