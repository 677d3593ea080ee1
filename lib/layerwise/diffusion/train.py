"""Training a denoiser with the ε-loss (on :func:`layerwise.core.train.fit_steps`), and its held-out loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layerwise.core.train import EMA, fit_steps
from layerwise.diffusion.schedule import eps_loss, make_scheduler

__all__ = ["EMA", "fit_denoiser", "heldout_eps_loss"]


def fit_denoiser(model: nn.Module, data: Tensor, *, labels: Tensor | None = None, steps: int, batch_size: int = 64,
                 lr: float = 1e-3, weight_decay: float = 0.0, warmup: int = 100, ema: float | None = 0.999,
                 cond_drop: float = 0.1, generator: torch.Generator, device: torch.device | str = "cpu",
                 progress: bool | None = None) -> list[float]:
    """Train ``model`` (a denoiser ``model(x_t, t, cond)``) on ``data`` (N, C, H, W) with the ε-loss.

    Each step draws ``batch_size`` random rows of ``data`` (with ``generator``) and runs one
    :func:`~layerwise.core.train.fit_steps` step: AdamW, ``warmup`` steps of linear warm-up,
    gradient clipping at norm 1. ``labels`` (N,) condition the model; with probability
    ``cond_drop`` a batch is given no label (``None``, for classifier-free guidance). With
    ``ema`` the model ends holding the EMA weights. Returns the per-step training losses.
    """
    if not isinstance(data, Tensor) or data.dim() != 4:
        raise ValueError(f"data must be a (N, C, H, W) tensor, got {getattr(data, 'shape', type(data).__name__)}")
    if labels is not None and labels.shape[0] != data.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows but data has {data.shape[0]}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not 0.0 <= cond_drop <= 1.0:
        raise ValueError(f"cond_drop must be in [0, 1], got {cond_drop!r}")
    device = torch.device(device)
    model.to(device)
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)

    def loss_fn(step: int) -> Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        cond = None
        if labels is not None and torch.rand((), generator=generator).item() >= cond_drop:
            cond = labels[idx].to(device)
        return eps_loss(model, data[idx].to(device), acp, generator=generator, cond=cond)

    hist = fit_steps(model, loss_fn, steps, lr=lr, weight_decay=weight_decay, warmup=warmup, clip=1.0, ema=ema,
                     progress=progress, desc="ε-loss training")
    return hist.loss


@torch.no_grad()
def heldout_eps_loss(model: nn.Module, data: Tensor, *, labels: Tensor | None = None, generator: torch.Generator,
                     device: torch.device | str = "cpu", batch_size: int = 256, repeats: int = 2) -> float:
    """Mean ε-loss of ``model`` on ``data`` over random timesteps and noise (seeded by ``generator``)."""
    model.eval()
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)
    total, count = 0.0, 0
    for _ in range(repeats):
        for i in range(0, data.shape[0], batch_size):
            x0 = data[i:i + batch_size].to(device)
            cond = labels[i:i + batch_size].to(device) if labels is not None else None
            total += eps_loss(model, x0, acp, generator=generator, cond=cond).item() * x0.shape[0]
            count += x0.shape[0]
    return total / count
