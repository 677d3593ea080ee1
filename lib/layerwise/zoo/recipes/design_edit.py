"""Zoo model of chapter 15 (DesignEdit, :mod:`layerwise.design_edit`).

- ``scene_dit32``: the *scene prior*, an unconditional pixel-space TinyDiT ε-predictor on 32×32
  scenes of :mod:`layerwise.data.edit_scenes` (smooth backgrounds, one or two sprites, some drop
  shadows), patch 4, so that the image is an 8×8 grid of tokens and an object covers several of
  them. DesignEdit is training-free: this is the "pretrained model" it edits with. Besides the
  held-out ε-loss, ``fit`` records how well DDIM inversion (25 steps) of held-out scenes comes
  back (PSNR), the ceiling of every edit made with it.

Training data and evaluation data come from different seeds.
"""

from __future__ import annotations

import torch

from layerwise.data.edit_scenes import scene_images
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["SCENE_DIT32"]

SCENE_DIT32 = dict(model=dict(in_channels=3, image_size=32, patch=4, dim=96, depth=6, heads=4),
                   data=dict(n=20000, size=32, seed=30, shadow_prob=0.3, n_objects=[1, 2]),
                   batch_size=64, lr=1e-3, ema=0.998, inversion_steps=25)
_EVAL_N = 512


def _scenes(cfg: dict, seed: int, n: int) -> torch.Tensor:
    d = cfg["data"]
    return scene_images(n, d["size"], seed=seed, shadow_prob=d["shadow_prob"], n_objects=tuple(d["n_objects"])) * 2 - 1


def _build(cfg: dict):
    from layerwise.diffusion.dit import DiTConfig, TinyDiT

    return TinyDiT(DiTConfig(**cfg["model"]))


@torch.no_grad()
def _inversion_psnr(model, x: torch.Tensor, steps: int, device) -> float:
    """PSNR (dB, images in [0, 1]) of DDIM sampling from the DDIM inversion of ``x`` (in [-1, 1])."""
    from layerwise.diffusion import invert, sample

    x = x.to(device)
    x_t = invert(model, x, steps=steps, progress=False)
    back = sample(model, tuple(x.shape), steps=steps, x_T=x_t, device=device, progress=False)
    mse = ((back.clamp(-1, 1) - x) / 2).pow(2).mean()
    return float(-10 * torch.log10(mse))


def _fit(model, cfg, steps, generator, device, progress=None):
    from layerwise.diffusion.train import fit_denoiser, heldout_eps_loss

    x = _scenes(cfg, cfg["data"]["seed"], training_set_size(cfg["data"]["n"], steps, cfg["batch_size"]))
    losses = fit_denoiser(model, x, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"], ema=cfg["ema"],
                          generator=generator, device=device, progress=progress)
    held = _scenes(cfg, 777, _EVAL_N)
    metric = heldout_eps_loss(model, held, generator=torch.Generator().manual_seed(0), device=device)
    tail = losses[-100:]
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail)),
            "inversion_psnr_db": _inversion_psnr(model, held[:64], cfg["inversion_steps"], device)}


def _evaluate(model, generator, device):
    from layerwise.diffusion.train import heldout_eps_loss

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return heldout_eps_loss(model, _scenes(SCENE_DIT32, seed, _EVAL_N), generator=generator, device=device)


register(Recipe(
    name="scene_dit32", build=_build, fit=_fit, evaluate=_evaluate, config=SCENE_DIT32, steps=1800, seed=30,
    metric="heldout_eps_mse", tolerance=1.25,
    description="TinyDiT (1.1 M params) unconditional ε-predictor on 32×32 pixel scenes (smooth backgrounds, "
                "1-2 sprites, some drop shadows), patch 4 (8×8 tokens); pixel values in [-1, 1]; EMA weights: "
                "chapter 15's scene prior (DesignEdit edits with it, training-free)"))
