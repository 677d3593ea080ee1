"""The shared zoo models (Part IV's diffusion primer and latent models).

Each recipe keeps its data generator seeded and separate from the evaluation data (the
evaluation draws with another seed), so ``check`` measures the model on images it never saw.
"""

from __future__ import annotations

import torch

from layerwise.core.env import progress_bar
from layerwise.core.train import fit_steps
from layerwise.data.sprite_sets import labelled_sprites
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["SPRITE_DIT16", "AE32", "SPRITE_CLASSIFIER16"]


# --- sprite_dit16: a pixel-space, shape-conditional DiT on 16×16 sprites (the primer) --------------

SPRITE_DIT16 = dict(model=dict(in_channels=3, image_size=16, patch=2, dim=128, depth=4, heads=4, num_classes=6),
                    data=dict(n=12000, size=16, seed=0, sprites=dict(centered=True, radius=[0.3, 0.45])),
                    batch_size=64, lr=1e-3, ema=0.999)


def _sprite_data(cfg: dict, seed: int, n: int | None = None):
    images, labels = labelled_sprites(n or cfg["data"]["n"], cfg["data"]["size"], seed=seed,
                                      **cfg["data"].get("sprites", {}))
    return images * 2 - 1, labels                       # the model works in [-1, 1]


def _build_dit(cfg: dict):
    from layerwise.diffusion.dit import DiTConfig, TinyDiT

    return TinyDiT(DiTConfig(**cfg["model"]))


def _fit_sprite_dit(model, cfg, steps, generator, device, progress=None):
    from layerwise.diffusion.train import fit_denoiser, heldout_eps_loss

    x, y = _sprite_data(cfg, cfg["data"]["seed"], training_set_size(cfg["data"]["n"], steps, cfg["batch_size"]))
    losses = fit_denoiser(model, x, labels=y, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"],
                          ema=cfg["ema"], generator=generator, device=device, progress=progress)
    xv, yv = _sprite_data(cfg, 777, n=2048)
    metric = heldout_eps_loss(model, xv, labels=yv, generator=torch.Generator().manual_seed(0), device=device)
    return {"metric": metric, "train_loss_last100": sum(losses[-100:]) / max(1, len(losses[-100:]))}


def _eval_sprite_dit(model, generator, device):
    from layerwise.diffusion.train import heldout_eps_loss

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    xv, yv = _sprite_data(SPRITE_DIT16, seed, n=1024)   # a few per cent between seeds: enough against the 25 % tolerance
    return heldout_eps_loss(model, xv, labels=yv, generator=generator, device=device)


register(Recipe(
    name="sprite_dit16", build=_build_dit, fit=_fit_sprite_dit, evaluate=_eval_sprite_dit,
    config=SPRITE_DIT16, steps=4000, seed=0, metric="heldout_eps_mse", tolerance=1.25,
    description="TinyDiT (1.3 M params) ε-predictor, 16×16 centred sprites on grey, conditioned on the shape "
                "(6 classes + 'none'); pixel values in [-1, 1]; EMA weights"))


# --- ae32: the frozen "VAE" of the latent models: RGB 32×32 ↔ 4×8×8 ---------------------------------

AE32 = dict(model=dict(in_channels=3, latent_channels=4, width=32, downsample=2),
            data=dict(n=12000, size=32, seed=1), batch_size=64, lr=2e-3)


def _ae_data(cfg: dict, seed: int, n: int | None = None):
    """Half scenes (textured backgrounds, sprites, glass, shadows), half premultiplied sprites on black."""
    from layerwise.data.rgba import premultiply
    from layerwise.data.scene import scenes, stack_scenes
    from layerwise.data.sprite_sets import rgba_sprites

    n = n or cfg["data"]["n"]
    size = cfg["data"]["size"]
    bar = (lambda it: progress_bar(it, desc="scenes")) if n >= 5000 else None
    sc = stack_scenes(scenes(n // 2, size, seed=seed, shadow_prob=0.4, reflection_prob=0.2, glass_prob=0.3,
                             progress=bar))
    rgba, _ = rgba_sprites(n - n // 2, size, seed=seed + 1)
    images = torch.cat([sc["image"], premultiply(rgba)[:, :3]])
    return images[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def _build_ae(cfg: dict):
    from layerwise.diffusion.autoencoder import AEConfig, TinyAutoencoder

    return TinyAutoencoder(AEConfig(**cfg["model"]))


@torch.no_grad()
def _ae_mse(model, images, device) -> float:
    model.eval()
    err = [(model(images[i:i + 256].to(device)) - images[i:i + 256].to(device)).pow(2).mean().item()
           for i in range(0, len(images), 256)]
    return sum(err) / len(err)


def _fit_ae(model, cfg, steps, generator, device, progress=None):
    x = _ae_data(cfg, cfg["data"]["seed"], training_set_size(cfg["data"]["n"], steps, cfg["batch_size"]))

    def loss_fn(step):
        batch = x[torch.randint(0, len(x), (cfg["batch_size"],), generator=generator)].to(device)
        out = model(batch)
        return (out - batch).abs().mean() + (out - batch).pow(2).mean()

    fit_steps(model, loss_fn, steps, lr=cfg["lr"], weight_decay=0.01, warmup=100, cosine=True, progress=progress,
              desc="autoencoder")           # weight decay 0.01: AdamW's default, as the weights were trained
    with torch.no_grad():   # latents to unit variance, as SD's scaling_factor does
        z = torch.cat([model.encoder(x[i:i + 512].to(device) * 2 - 1) for i in range(0, min(2048, len(x)), 512)])
        model.scale.fill_(1.0 / z.std().item())
    xv = _ae_data(cfg, 777, n=1024)
    mse = _ae_mse(model, xv, device)
    return {"metric": mse, "psnr_db": float(-10 * torch.log10(torch.tensor(mse))), "latent_scale": model.scale.item()}


def _eval_ae(model, generator, device):
    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _ae_mse(model, _ae_data(AE32, seed, n=1024), device)


register(Recipe(
    name="ae32", build=_build_ae, fit=_fit_ae, evaluate=_eval_ae, config=AE32, steps=2000, seed=1,
    metric="heldout_mse", tolerance=1.3,
    description="TinyAutoencoder RGB 32×32 ↔ 4×8×8 latent (the latent models' frozen 'VAE'): scenes and "
                "premultiplied sprites; latents scaled to unit std"))


# --- sprite_classifier16: which shape is it? (scores samples of sprite_dit16) -----------------------

SPRITE_CLASSIFIER16 = dict(model=dict(widths=[32, 64], classes=6),
                           data=dict(n=12000, size=16, seed=2, sprites=dict(radius=[0.2, 0.45])),
                           batch_size=128, lr=3e-3)


def _build_classifier(cfg: dict):
    from torch import nn

    from layerwise.core.models import ConvTrunk

    trunk = ConvTrunk(3, cfg["model"]["widths"])
    return nn.Sequential(trunk, nn.Linear(trunk.out_features, cfg["model"]["classes"]))


@torch.no_grad()
def _classifier_error(model, x, y, device) -> float:
    model.eval()
    wrong = sum((model(x[i:i + 512].to(device)).argmax(1).cpu() != y[i:i + 512]).sum().item()
                for i in range(0, len(x), 512))
    return wrong / len(x)


def _fit_classifier(model, cfg, steps, generator, device, progress=None):
    """Trained on the sprite model's own input range ([-1, 1]); half the batches with added Gaussian
    noise of std up to 0.2, so slightly imperfect samples are still read for their shape."""
    x, y = _sprite_data(cfg, cfg["data"]["seed"], training_set_size(cfg["data"]["n"], steps, cfg["batch_size"]))

    def loss_fn(step):
        idx = torch.randint(0, len(x), (cfg["batch_size"],), generator=generator)
        xb = x[idx] + 0.2 * torch.rand(len(idx), 1, 1, 1, generator=generator) * torch.randn(x[idx].shape, generator=generator)
        return torch.nn.functional.cross_entropy(model(xb.to(device)), y[idx].to(device))

    fit_steps(model, loss_fn, steps, lr=cfg["lr"], weight_decay=1e-4, progress=progress, desc="shape classifier")
    xv, yv = _sprite_data(cfg, 777, n=4096)
    return {"metric": _classifier_error(model, xv, yv, device)}


def _eval_classifier(model, generator, device):
    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _classifier_error(model, *_sprite_data(SPRITE_CLASSIFIER16, seed, n=4096), device)


register(Recipe(
    name="sprite_classifier16", build=_build_classifier, fit=_fit_classifier, evaluate=_eval_classifier,
    config=SPRITE_CLASSIFIER16, steps=800, seed=2, metric="heldout_error", tolerance=1.5, slack=0.01,
    description="small CNN that names the shape of a 16×16 sprite (inputs in [-1, 1]); scores the "
                "diffusion primer's samples"))
