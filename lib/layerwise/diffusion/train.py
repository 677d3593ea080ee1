"""Training a denoiser with the ε-loss: the loop every zoo recipe and chapter shares."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from layerwise.core.env import progress_bar
from layerwise.diffusion.schedule import eps_loss, make_scheduler

__all__ = ["EMA", "fit_denoiser", "heldout_eps_loss"]


class EMA:
    """Exponential moving average of a model's weights (what diffusion models sample with)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))   # warm-up: follow the model closely at first
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow.state_dict())


def fit_denoiser(model: nn.Module, data: Tensor, *, labels: Tensor | None = None, steps: int, batch_size: int = 64,
                 lr: float = 1e-3, weight_decay: float = 0.0, warmup: int = 100, ema: float | None = 0.999,
                 cond_drop: float = 0.1, generator: torch.Generator, device: torch.device | str = "cpu",
                 progress: bool | None = None) -> list[float]:
    """Train ``model`` (a denoiser ``model(x_t, t, cond)``) on ``data`` (N, C, H, W) with the ε-loss.

    ``labels`` (N,) condition the model; with probability ``cond_drop`` a label is replaced by
    ``None`` ("no label", for classifier-free guidance). With ``ema`` the model ends holding
    the EMA weights. Returns the per-step training losses.
    """
    if data.dim() != 4:
        raise ValueError(f"data must be (N, C, H, W), got shape {tuple(data.shape)}")
    if labels is not None and labels.shape[0] != data.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows but data has {data.shape[0]}")
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    device = torch.device(device)
    model.to(device).train()
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    averager = EMA(model, ema) if ema else None
    losses: list[float] = []
    bar = progress_bar(range(steps), desc="ε-loss training", enabled=progress)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        x0 = data[idx].to(device)
        cond = None
        if labels is not None and torch.rand((), generator=generator).item() >= cond_drop:
            cond = labels[idx].to(device)
        loss = eps_loss(model, x0, acp, generator=generator, cond=cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if averager:
            averager.update(model, step)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    if averager:
        averager.copy_to(model)
    model.eval()
    return losses


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
