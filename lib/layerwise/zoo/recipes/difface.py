"""Zoo model of chapter 16 (DifFace, :mod:`layerwise.difface`).

- ``difface_restorer16``: the diffused estimator f, a small residual CNN trained with L1 on
  *mild* degradations (:data:`~layerwise.data.degrade.DEGRADATIONS` ``"mild"``) of the diffusion
  primer's 16×16 sprites (the distribution ``sprite_dit16`` learnt), in the prior's range [−1, 1].
  Every step degrades a fresh batch, so the restorer never sees the same pair twice.

The chapter's prior and judge are the primer's ``sprite_dit16`` (its null label) and
``sprite_classifier16``, unchanged. The held-out metric is the L1 error on mild degradations of
sprites from another seed; the severe and unseen sets are recorded beside it.
"""

from __future__ import annotations

import torch

from layerwise.core.train import fit_steps
from layerwise.data.degrade import degrade
from layerwise.data.sprite_sets import primer_sprites
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["DIFFACE_RESTORER16"]

DIFFACE_RESTORER16 = dict(model=dict(channels=3, width=32, blocks=3),
                          data=dict(n=12000, seed=16, degradation="mild"),
                          batch_size=64, lr=2e-3, warmup=50)
_EVAL_N = 384


def _build(cfg: dict):
    from layerwise.difface import Restorer, RestorerConfig

    return Restorer(RestorerConfig(**cfg["model"]))


@torch.no_grad()
def _l1(model, kind: str, seed: int, device) -> tuple[float, float]:
    """(L1 of f(y₀), L1 of y₀ itself) against the clean sprites, on ``_EVAL_N`` fresh pairs."""
    clean, _ = primer_sprites(_EVAL_N, seed=seed)
    y0 = degrade(clean, kind, seed + 1)
    model.eval()
    out = torch.cat([model((y0[i:i + 128] * 2 - 1).to(device)).clamp(-1, 1).cpu() for i in range(0, _EVAL_N, 128)])
    x0 = clean * 2 - 1
    return float((out - x0).abs().mean()), float(((y0 * 2 - 1) - x0).abs().mean())


def _fit(model, cfg, steps, generator, device, progress=None):
    from layerwise.difface import restoration_l1

    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    clean, _ = primer_sprites(n, seed=cfg["data"]["seed"])

    def loss_fn(step):
        idx = torch.randint(0, n, (cfg["batch_size"],), generator=generator)
        y0 = degrade(clean[idx], cfg["data"]["degradation"], generator)
        return restoration_l1(model((y0 * 2 - 1).to(device)), (clean[idx] * 2 - 1).to(device))

    hist = fit_steps(model, loss_fn, steps, lr=cfg["lr"], warmup=cfg["warmup"], cosine=True, progress=progress,
                     desc="restorer (L1)")
    metrics = {"train_loss_last100": sum(hist.loss[-100:]) / max(1, len(hist.loss[-100:]))}
    for kind in ("mild", "severe", "unseen"):
        restored, degraded = _l1(model, kind, 777, device)
        metrics[f"heldout_l1_{kind}"], metrics[f"heldout_l1_{kind}_unrestored"] = restored, degraded
    return {"metric": metrics["heldout_l1_mild"], **metrics}


def _evaluate(model, generator, device):
    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _l1(model, DIFFACE_RESTORER16["data"]["degradation"], seed, device)[0]


register(Recipe(
    name="difface_restorer16", build=_build, fit=_fit, evaluate=_evaluate, config=DIFFACE_RESTORER16,
    steps=1500, seed=16, metric="heldout_l1_mild", tolerance=1.25,
    description="DifFace's diffused estimator f: residual CNN (57 k params), L1 on mild degradations "
                "(blur σ ≤ 1, ×1–2 down/up, noise ≤ 0.05) of the primer's 16×16 sprites, images in [-1, 1]"))
