"""Zoo models of chapter 13 (LayerDecomp, :mod:`layerwise.layer_decomp`).

Both predict the clean layers (x0-prediction, as chapter 14's decomposer; an ε-predicting model of
width 32 never got past the trivial noise predictor, see :mod:`layerwise.layer_decomp`), width 72,
4 blocks, 3 heads, 900 steps of batch 16 (~5 CPU-minutes each).

- ``layer_decomp_v2``: the paper's "V2": a :class:`~layerwise.layer_decomp.LayerDecompDiT` trained on
  labelled triplets (objects with shadows, foreground supervised) and camera-style pairs
  (reflections; foreground masked out of the diffusion loss), without the consistency loss;
- ``layer_decomp_consist``: the same model, data, batches, timesteps and noise, plus the
  consistency loss (weight :data:`~layerwise.layer_decomp.VARIANTS`, each item weighted by ᾱ_t).

Training data come from :func:`layerwise.data.decomposition.decomposition_set` with seeds 131 /
132; ``fit`` scores on held-out sets of seed 777 (and the manifest keeps the decomposition metrics
of 64 held-out camera scenes), ``evaluate`` on sets drawn with another seed each time.
"""

from __future__ import annotations

import torch

from layerwise.data.decomposition import decomposition_set, effect_region
from layerwise.layer_decomp import VARIANTS, ld_zoo_name
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["LAYER_DECOMP"]

LAYER_DECOMP = dict(model=dict(image_size=32, patch=4, dim=72, depth=4, heads=3, residual=True, prediction="x0"),
                    data=dict(n=4000, seeds=[131, 132], distractor_prob=0.5),
                    batch_size=16, lr=1e-3, warmup=50, ema=0.995, weighting="abar")
_EVAL_N = 128          # held-out scenes per split for the diffusion-loss check
_DECOMP_N = 64         # held-out camera scenes decomposed for the manifest's metrics


def _build(cfg: dict):
    from layerwise.layer_decomp import LayerDecompDiT, LDConfig

    return LayerDecompDiT(LDConfig(**cfg["model"]))


def _mixed(n: int, seeds, distractor_prob: float) -> dict:
    """``n`` examples, half labelled (seed ``seeds[0]``) and half camera (``seeds[1]``), interleaved."""
    a = decomposition_set(max(1, n // 2), "labelled", seed=seeds[0], distractor_prob=distractor_prob)
    b = decomposition_set(max(1, n - n // 2), "camera", seed=seeds[1], distractor_prob=distractor_prob)
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _heldout(seed: int) -> dict:
    return _mixed(2 * _EVAL_N, [seed, seed + 1], LAYER_DECOMP["data"]["distractor_prob"])


def _fit(model, cfg, steps, generator, device, progress=None, consistency_weight: float = 0.0):
    from layerwise.layer_decomp import decompose, evaluate_decomposition, heldout_loss, train_layer_decomp

    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    data = _mixed(n, cfg["data"]["seeds"], cfg["data"]["distractor_prob"])
    _, hist = train_layer_decomp(data, steps=steps, consistency_weight=consistency_weight, generator=generator,
                                 model=model, batch_size=cfg["batch_size"], lr=cfg["lr"], warmup=cfg["warmup"],
                                 ema=cfg["ema"], weighting=cfg["weighting"], device=device, progress=progress)
    metric = heldout_loss(model, _heldout(777), generator=torch.Generator().manual_seed(0))
    test = decomposition_set(_DECOMP_N, "camera", seed=778)
    pred = decompose(model, test["image"], test["mask"], steps=25, generator=torch.Generator().manual_seed(0))
    regions = {k: effect_region(test, k) for k in ("any", "reflection")}
    scores = {f"camera_{k}": float(v.nanmean()) for k, v in evaluate_decomposition(pred, test, regions).items()}
    tail = hist.loss[-100:]
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail)), **scores}


def _eval(model, generator, device):
    """The held-out masked diffusion loss (x₀-MSE) on fresh scenes (both splits)."""
    from layerwise.layer_decomp import heldout_loss

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return heldout_loss(model.to(device), _heldout(seed), generator=generator)


def _fit_v2(model, cfg, steps, generator, device, progress=None):
    return _fit(model, cfg, steps, generator, device, progress, consistency_weight=VARIANTS["v2"])


def _fit_consist(model, cfg, steps, generator, device, progress=None):
    return _fit(model, cfg, steps, generator, device, progress, consistency_weight=VARIANTS["consist"])


_STEPS, _SEED = 900, 13
for _variant, _fit_fn, _what in (("v2", _fit_v2, "without the consistency loss (the paper's V2)"),
                                 ("consist", _fit_consist, f"with the consistency loss (weight {VARIANTS['consist']:g}, "
                                                           "each item weighted by ᾱ_t)")):
    register(Recipe(
        name=ld_zoo_name(_variant), build=_build, fit=_fit_fn, evaluate=_eval, config=LAYER_DECOMP, steps=_STEPS,
        seed=_SEED, metric="heldout_masked_x0_mse", tolerance=1.25,
        description=f"LayerDecomp in pixel space: a TinyDiT over [background | RGBA foreground | composite | mask] "
                    f"tokens (32×32, patch 4, segment-type embedding), trained on labelled shadow triplets and "
                    f"camera-style reflection pairs (foreground masked out of the diffusion loss), {_what}; EMA"))
