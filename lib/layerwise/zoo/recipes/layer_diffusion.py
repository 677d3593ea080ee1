"""Zoo models of chapter 11 (LayerDiffuse, :mod:`layerwise.layer_diffusion`).

- ``latent_transparency_h0`` / ``_h0.1`` / ``_h1``: offset encoder + transparent decoder on
  32×32 RGBA sprites (:func:`~layerwise.data.sprite_sets.sprite_layers`), trained over the frozen ``ae32`` with
  harmlessness weight 0, 0.1 and 1: the chapter's trade-off sweep.
- ``latent_dit_sprites``: the "pretrained latent model": a TinyDiT ε-predictor on ``ae32``
  latents of premultiplied sprites, conditioned on the shape.
- ``layer_dit_sprites``: that model fine-tuned on *adjusted* latents (``E*(I) + offset``) of
  the same sprites, so that its samples decode to RGBA through the transparent decoder.

Training data and evaluation data come from different seeds, so ``check`` measures each
model on sprites it never saw.
"""

from __future__ import annotations

import torch

from layerwise.data.rgba import premultiplied_rgb
from layerwise.data.sprite_sets import sprite_layers
from layerwise.layer_diffusion import HARMLESSNESS_SWEEP, adjusted_latent, lt_zoo_name
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["LT_BASE", "LATENT_DIT", "LAYER_DIT"]


def _ae(device):
    from layerwise.zoo import load

    return load("ae32", device=device).requires_grad_(False)


# --- latent transparency: offset encoder + transparent decoder ------------------------------------

LT_BASE = dict(model=dict(width=16, latent_channels=4, pad_iterations=8),
               data=dict(n=6000, size=32, seed=21, glass_share=0.5), batch_size=32, lr=2e-3)
_EVAL_N = 512


def _build_lt(cfg: dict):
    from layerwise.layer_diffusion import LatentTransparency, LTConfig

    return LatentTransparency(LTConfig(**cfg["model"]))


def _fit_lt(model, cfg, steps, generator, device, progress=None):
    from layerwise.layer_diffusion import evaluate_latent_transparency, train_latent_transparency

    ae = _ae(device)
    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    data, _ = sprite_layers(n, cfg["data"]["seed"], cfg["data"]["size"], cfg["data"]["glass_share"])
    _, hist = train_latent_transparency(ae, data, harmlessness_weight=cfg["model"]["harmlessness_weight"], steps=steps,
                                        generator=generator, device=device, model=model,
                                        batch_size=cfg["batch_size"], lr=cfg["lr"], progress=progress)
    held, _ = sprite_layers(_EVAL_N, 777, cfg["data"]["size"], cfg["data"]["glass_share"])
    m = evaluate_latent_transparency(ae, model, held, device=device)
    tail = hist["loss"][-100:]
    return {"metric": m["reconstruction_loss"], **m, "train_loss_last100": sum(tail) / max(1, len(tail))}


@torch.no_grad()
def _eval_lt(model, generator, device):
    """The held-out reconstruction loss (the manifest's metric) on fresh sprites."""
    from layerwise.layer_diffusion import reconstruction_loss

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    held, _ = sprite_layers(_EVAL_N, seed)
    ae, model = _ae(device), model.to(device).eval()
    pred = torch.cat([model.decode(ae, model.encode(ae, held[i:i + 256].to(device))).cpu()
                      for i in range(0, len(held), 256)])
    return float(reconstruction_loss(pred, held))


for _w in HARMLESSNESS_SWEEP:
    _cfg = {**LT_BASE, "model": {**LT_BASE["model"], "harmlessness_weight": _w}}
    register(Recipe(
        name=lt_zoo_name(_w), build=_build_lt, fit=_fit_lt, evaluate=_eval_lt, config=_cfg, steps=500, seed=21,
        metric="heldout_reconstruction_loss", requires=("ae32",), tolerance=1.3,
        description=f"LayerDiffuse latent transparency over the frozen ae32: offset encoder + transparent "
                    f"decoder, harmlessness weight {_w:g}; 32×32 RGBA sprites (half glass, faded and darkened ones: alpha is ambiguous in RGB)"))


# --- the pretrained latent model and its transparent fine-tune ------------------------------------

LATENT_DIT = dict(model=dict(in_channels=4, image_size=8, patch=2, dim=96, depth=4, heads=4, num_classes=6),
                  data=dict(n=8000, size=32, seed=22, glass_share=0.5), batch_size=128, lr=1e-3, ema=0.999)
LAYER_DIT = {**LATENT_DIT, "lr": 3e-4, "transparency": lt_zoo_name(1.0)}


def _build_latent_dit(cfg: dict):
    from layerwise.diffusion.dit import DiTConfig, TinyDiT

    return TinyDiT(DiTConfig(**cfg["model"]))


@torch.no_grad()
def _latents(rgba, device, transparency: str | None = None) -> torch.Tensor:
    """ae32 latents of the premultiplied layers, adjusted by the offset of ``transparency`` if given."""
    from layerwise.zoo import load

    ae = _ae(device)
    lt = load(transparency, device=device) if transparency else None
    out = []
    for i in range(0, rgba.shape[0], 512):
        x = rgba[i:i + 512].to(device)
        out.append((adjusted_latent(ae, x, lt.offset) if lt is not None else ae.encode(premultiplied_rgb(x))).cpu())
    return torch.cat(out)


def _fit_dit(model, cfg, steps, generator, device, progress=None, transparency=None):
    from layerwise.diffusion.train import fit_denoiser, heldout_eps_loss

    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    rgba, labels = sprite_layers(n, cfg["data"]["seed"], cfg["data"]["size"], cfg["data"]["glass_share"])
    z = _latents(rgba, device, transparency)
    losses = fit_denoiser(model, z, labels=labels, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"],
                          ema=cfg["ema"], generator=generator, device=device, progress=progress)
    held, held_labels = sprite_layers(_EVAL_N * 2, 777, cfg["data"]["size"], cfg["data"]["glass_share"])
    metric = heldout_eps_loss(model, _latents(held, device, transparency), labels=held_labels,
                              generator=torch.Generator().manual_seed(0), device=device)
    tail = losses[-100:]
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail))}


def _fit_latent_dit(model, cfg, steps, generator, device, progress=None):
    return _fit_dit(model, cfg, steps, generator, device, progress)


def _fit_layer_dit(model, cfg, steps, generator, device, progress=None):
    from layerwise.zoo import load

    model.load_state_dict(load("latent_dit_sprites", device=device).state_dict())   # start from the pretrained model
    return _fit_dit(model, cfg, steps, generator, device, progress, transparency=cfg["transparency"])


def _eval_dit(model, generator, device, transparency=None):
    from layerwise.diffusion.train import heldout_eps_loss

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    held, labels = sprite_layers(_EVAL_N * 2, seed)
    return heldout_eps_loss(model, _latents(held, device, transparency), labels=labels, generator=generator,
                            device=device)


register(Recipe(
    name="latent_dit_sprites", build=_build_latent_dit, fit=_fit_latent_dit, evaluate=_eval_dit, config=LATENT_DIT,
    steps=2000, seed=22, metric="heldout_eps_mse", requires=("ae32",), tolerance=1.25,
    description="TinyDiT ε-predictor on ae32 latents (4×8×8) of premultiplied 32×32 sprites (half glass), "
                "conditioned on the shape (6 classes + 'none'): chapter 11's 'pretrained latent model'; EMA"))

register(Recipe(
    name="layer_dit_sprites", build=_build_latent_dit, fit=_fit_layer_dit,
    evaluate=lambda model, generator, device: _eval_dit(model, generator, device, LAYER_DIT["transparency"]),
    config=LAYER_DIT, steps=600, seed=23, metric="heldout_eps_mse",
    requires=("ae32", "latent_dit_sprites", LAYER_DIT["transparency"]), tolerance=1.25,
    description="latent_dit_sprites fine-tuned on adjusted latents E*(I) + offset of "
                f"{LAYER_DIT['transparency']}: samples decode to RGBA sprites; EMA"))
