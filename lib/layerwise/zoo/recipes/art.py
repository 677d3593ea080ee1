"""Zoo models of chapter 12 (ART, :mod:`layerwise.art`): layered generators over anonymous layouts.

- ``art_sprites``: an :class:`~layerwise.art.AnonymousRegionDiT` that generates a merged image, a
  background and 2–6 transparent sprite layers (32×32 pixels, colour + alpha, 4-pixel tokens)
  from a layout of boxes alone, trained on ART's regional sequences (crop tokens only) with
  3-axis rotary positions and a learned layer embedding, as the released model.

- ``art_sprites_2d`` and ``art_sprites_2d_pe``: the same recipe, seed, steps and scenes with 2-axis
  ``(y, x)`` rotary positions only, and with 2-axis positions + the layer embedding: the paper's
  Table 5 ablation, one training run per variant (the chapter's full profile also trains the three
  over seeds with :func:`~layerwise.art.position_ablation`).

Training scenes are drawn fresh every step (:func:`~layerwise.data.layouts.layered_scenes`, seeded by
the recipe's seed and the step), so no data set is stored and a 2-step smoke run is as fast as its
two steps; held-out scenes come from other seeds.
"""

from __future__ import annotations

import torch

from layerwise.art import POSITION_VARIANTS, art_zoo_name
from layerwise.data.layouts import layered_scenes
from layerwise.zoo.registry import Recipe, register

__all__ = ["ART_BASE"]

ART_BASE = dict(
    model=dict(channels=4, canvas=32, patch=4, dim=96, depth=4, heads=4, max_layers=8, prediction="v"),
    data=dict(size=32, n_layers=[2, 6], backgrounds=["flat", "gradient"], radius=[0.12, 0.25], glass_prob=0.1,
              seed=31),
    batch_size=16, lr=2e-3, warmup=100, cosine=True, ema=0.995)
_HELD_OUT_SEED = 777
_EVAL_N = 64


def _scene_kwargs(data: dict) -> dict:
    return dict(size=data["size"], n_layers=tuple(data["n_layers"]), backgrounds=tuple(data["backgrounds"]),
                radius=tuple(data["radius"]), glass_prob=data["glass_prob"])


def _scenes(data: dict, n: int, seed: int):
    return layered_scenes(n, seed=seed, **_scene_kwargs(data))


def _max_layers(data: dict) -> int:
    return data["n_layers"][1]


def _build(cfg: dict):
    from layerwise.art import AnonymousRegionDiT, ARTConfig

    return AnonymousRegionDiT(ARTConfig(**cfg["model"]))


def _fit(model, cfg, steps, generator, device, progress=None):
    from layerwise.art import fit_art, generate, heldout_loss, layer_metrics, layered_batch

    data, patch = cfg["data"], cfg["model"]["patch"]
    hist = fit_art(model, steps=steps, scenes=_scene_kwargs(data), batch_size=cfg["batch_size"], lr=cfg["lr"],
                   warmup=cfg["warmup"], cosine=cfg["cosine"], ema=cfg["ema"], seed=data["seed"], generator=generator, device=device,
                   progress=progress)
    held, _ = layered_batch(_scenes(data, 2 * _EVAL_N, _HELD_OUT_SEED), patch)
    metric = heldout_loss(model, held, generator=torch.Generator().manual_seed(0))
    # the samples' metrics of a real run: 32 layouts, 25 DDIM steps (a smoke run of a few steps
    # samples as many layouts with as many DDIM steps as it trained: the same code, less work)
    n_show = min(32, max(2, steps))
    few, stacked = layered_batch(_scenes(data, n_show, _HELD_OUT_SEED + 1), patch, max_layers=_max_layers(data))
    m = layer_metrics(generate(model, few, steps=min(25, n_show), generator=torch.Generator().manual_seed(0)), stacked)
    tail = hist.loss[-100:]
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail)),
            "consistency_psnr_db": float(m["consistency_psnr"].mean()),
            "stays_inside_share": float(m["stays_inside"].float().mean()), "box_iou": float(m["box_iou"].mean())}


@torch.no_grad()
def _evaluate(model, generator, device):
    """The held-out v-loss on the crop tokens of fresh scenes (the manifest's metric)."""
    from layerwise.art import heldout_loss, layered_batch

    data = ART_BASE["data"]
    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    batch, _ = layered_batch(_scenes(data, 2 * _EVAL_N, seed), ART_BASE["model"]["patch"])
    return heldout_loss(model.to(device), batch, generator=generator)


for _variant in POSITION_VARIANTS:
    _axes, _pe = POSITION_VARIANTS[_variant]
    _cfg = {**ART_BASE, "model": {**ART_BASE["model"], "pos_axes": _axes, "layer_embedding": _pe}}
    _what = {"3d": "3-axis (layer, y, x) rotary positions + a learned layer embedding, as the released model",
             "2d": "2-axis (y, x) rotary positions only (Table 5's 2D-RoPE)",
             "2d_pe": "2-axis (y, x) rotary positions + a learned layer embedding (Table 5's 2D-RoPE + LayerPE)"}[_variant]
    register(Recipe(
        name=art_zoo_name(_variant), build=_build, fit=_fit, evaluate=_evaluate, config=_cfg, steps=4500, seed=31,
        metric="heldout_v_mse", tolerance=1.25,
        description=f"ART's anonymous-region DiT (pixel space, 32×32 RGBA layers, 4-px tokens): merged image + "
                    f"background + 2–6 sprite layers from a layout of boxes; {_what}; EMA"))
