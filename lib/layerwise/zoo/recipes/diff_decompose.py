"""Zoo models of chapter 14 (DiffDecompose, :mod:`layerwise.diff_decompose`).

One in-context decomposer per position scheme, identical in everything else (config, seed, data,
steps), so the chapter's comparison of the schemes is paired:

- ``diffdecompose_cloned``: composite and background share their position ids (the paper's
  layer position encoding cloning, LPEC);
- ``diffdecompose_distinct``: one layer index per segment (our "without LPEC");
- ``diffdecompose_shared``: all three segments on one position grid.

Trained on AlphaBlend-mini (:func:`~layerwise.data.alphablend.alphablend`) and measured on other
seeds: the manifest's metric is the held-out denoising loss; its ``metrics`` add the sampled
decompositions' per-subtask RMSE (0-255) on the test set.
"""

from __future__ import annotations

import time

import torch

from layerwise.data.alphablend import SUBTASKS, alphablend, alphablend_test_set
from layerwise.diff_decompose import SCHEMES, zoo_name
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["DECOMPOSER"]

DECOMPOSER = dict(model=dict(image_size=32, patch=4, dim=72, depth=4, heads=3, mlp_ratio=4.0, prediction="x0"),
                  data=dict(n_per_task=2000, seed=141), batch_size=16, lr=2e-3, warmup=50, ema=0.995,
                  eval=dict(n_per_task=16, ddim_steps=10))
_HELD_SEED = 4242           # the held-out set of the manifest's metric (the test set has its own seed)
_EVAL_PER_TASK = 32


def _build(cfg: dict):
    from layerwise.diff_decompose import DecomposerConfig, InContextDecomposer

    return InContextDecomposer(DecomposerConfig(**cfg["model"]))


@torch.no_grad()
def _heldout_loss(model, data, seed: int, device, repeats: int = 4) -> float:
    """The denoising loss over ``data`` at ``repeats`` timesteps per composite, spread evenly over
    {0, ..., T-1} (stratified, so the number varies little between draws); noise seeded by ``seed``."""
    from layerwise.diff_decompose import decomposition_loss
    from layerwise.diffusion import make_scheduler

    model.to(device).eval()
    acp = make_scheduler("ddpm").alphas_cumprod
    g = torch.Generator().manual_seed(seed)
    n, steps = len(data), len(acp)
    total = 0.0
    for r in range(repeats):
        t_all = (torch.arange(n) * 7919 + r * steps // repeats) % steps
        for i in range(0, n, 128):
            part = data[i:i + 128]
            total += decomposition_loss(model, part, acp, generator=g, t=t_all[i:i + 128]).item() * len(part)
    return total / (n * repeats)


def _fit(model, cfg, steps, generator, device, progress=None):
    from layerwise.diff_decompose import evaluate_decomposition, train_decomposer

    per_task = max(1, training_set_size(cfg["data"]["n_per_task"] * len(SUBTASKS), steps, cfg["batch_size"])
                   // len(SUBTASKS))
    data = alphablend(per_task, seed=cfg["data"]["seed"])
    cpu = time.process_time()
    hist = train_decomposer(model.to(device), data, steps=steps, generator=generator, batch_size=cfg["batch_size"],
                            lr=cfg["lr"], warmup=min(cfg["warmup"], steps), ema=cfg["ema"], progress=progress)
    cpu = time.process_time() - cpu
    metric = _heldout_loss(model, alphablend(_EVAL_PER_TASK, seed=_HELD_SEED), 0, device)
    test = alphablend_test_set(cfg["eval"]["n_per_task"])
    res = evaluate_decomposition(model, test, steps=cfg["eval"]["ddim_steps"], seed=0)
    out = {"metric": metric, "train_cpu_s": cpu, "train_loss_last100": sum(hist.loss[-100:]) / len(hist.loss[-100:])}
    for k, name in enumerate(SUBTASKS):
        sel = test.task == k
        for key in ("bg", "fg", "bg_trivial", "fg_trivial"):
            out[f"test_{key}_rmse_{name}"] = float(res[key][sel].mean())
    for key in ("bg", "fg", "bg_trivial", "fg_trivial"):
        out[f"test_{key}_rmse_mean"] = float(res[key].mean())
    return out


def _evaluate(model, generator, device):
    """The held-out denoising loss on a fresh AlphaBlend-mini draw (a few seconds)."""
    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _heldout_loss(model, alphablend(_EVAL_PER_TASK, seed=seed), seed, device)


for _scheme in SCHEMES:
    _cfg = {**DECOMPOSER, "model": {**DECOMPOSER["model"], "scheme": _scheme}}
    register(Recipe(
        name=zoo_name(_scheme), build=_build, fit=_fit, evaluate=_evaluate, config=_cfg, steps=800, seed=14,
        metric="heldout_x0_mse", tolerance=1.25,
        description=f"DiffDecompose in-context decomposer, position scheme '{_scheme}': TinyDiT (3-axis RoPE, "
                    "patch 4) over [composite | premultiplied RGBA foreground | background] of 32×32 "
                    "AlphaBlend-mini composites (six subtasks, label-conditioned), x0-prediction; EMA"))
