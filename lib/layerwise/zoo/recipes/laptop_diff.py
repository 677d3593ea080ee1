"""Zoo models of chapter 17 (LAPTOP-Diff, :mod:`layerwise.laptop_diff`).

- ``laptop_teacher16``: the teacher, deep enough for "remove half the layers": a depth-8 TinyDiT
  ε-predictor on the diffusion primer's 16×16 centred sprites (shape-conditional, null label;
  EMA weights), so that ``sprite_classifier16`` can judge its samples. Width 64 and patch 4 (16
  tokens) keep a training step at ~0.1 s on one thread; 6000 steps (~10 CPU-minutes) bring its
  samples to the primer's ``sprite_dit16`` level (the classifier names the intended shape in
  about 45 % of 10-step DDIM samples, for both; 1500 steps gave 31 %).
- ``laptop_student_<selection>_<kd>_s<seed>``: the teacher with half its blocks removed and
  retrained by feature distillation: ``selection`` is the one-shot output-loss criterion
  (``oloss``, scored on a fixed calibration batch) or the better of the hand-made removals
  (every other block, the last blocks) on that batch (``handmade``); ``kd`` is raw or normalised
  feature distillation; three retraining seeds each.

Training data and evaluation data come from different seeds, so ``check`` measures each
model on sprites it never saw.
"""

from __future__ import annotations

import torch

from layerwise.data.sprite_sets import primer_sprites
from layerwise.laptop_diff import STUDENT_SEEDS, STUDENT_VARIANTS, student_zoo_name
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["TEACHER", "STUDENT"]

TEACHER = dict(model=dict(in_channels=3, image_size=16, patch=4, dim=64, depth=8, heads=4, num_classes=6),
               data=dict(n=12000, seed=0), batch_size=64, lr=1.5e-3, ema=0.998)
_EVAL_N = 2048


def _data(seed: int, n: int):
    x, y = primer_sprites(n, seed=seed)
    return x * 2 - 1, y                              # the model works in [-1, 1]


def _build_teacher(cfg: dict):
    from layerwise.diffusion.dit import DiTConfig, TinyDiT

    return TinyDiT(DiTConfig(**cfg["model"]))


def _fit_teacher(model, cfg, steps, generator, device, progress=None):
    from layerwise.diffusion.train import fit_denoiser, heldout_eps_loss
    from layerwise.laptop_diff import gate_magnitudes

    x, y = _data(cfg["data"]["seed"], training_set_size(cfg["data"]["n"], steps, cfg["batch_size"]))
    losses = fit_denoiser(model, x, labels=y, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"],
                          ema=cfg["ema"], generator=generator, device=device, progress=progress)
    xv, yv = _data(777, _EVAL_N)
    metric = heldout_eps_loss(model, xv, labels=yv, generator=torch.Generator().manual_seed(0), device=device)
    gates = gate_magnitudes(model, torch.arange(0, 1000, 40), torch.arange(25) % 6)
    tail = losses[-100:]
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail)),
            "min_mean_gate": float(gates.min()), "max_mean_gate": float(gates.max())}


def _eval_eps(model, generator, device):
    from layerwise.diffusion.train import heldout_eps_loss

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    xv, yv = _data(seed, _EVAL_N)
    return heldout_eps_loss(model, xv, labels=yv, generator=generator, device=device)


register(Recipe(
    name="laptop_teacher16", build=_build_teacher, fit=_fit_teacher, evaluate=_eval_eps, config=TEACHER,
    steps=6000, seed=170, metric="heldout_eps_mse", tolerance=1.25,
    description="LAPTOP-Diff's teacher: TinyDiT depth 8 (dim 64, patch 4), ε-predictor on 16×16 centred sprites "
                "on grey, conditioned on the shape (6 classes + 'none'); pixel values in [-1, 1]; EMA weights"))


# --- the pruned and retrained students ------------------------------------------------------------

STUDENT = dict(teacher="laptop_teacher16", remove=4, calibration=dict(n=256, seed=1, steps=25),
               data=dict(n=12000, seed=0), batch_size=32, lr=5e-4, lambda_out=1.0, lambda_feat=1.0)


def _removal(cfg: dict, teacher, device) -> list[int]:
    """The blocks the recipe removes from ``teacher``: the lowest output-loss scores on the fixed
    calibration batch (``oloss``), or the hand-made removal with the lower output loss on it."""
    from layerwise.laptop_diff import (HANDCRAFTED, block_removal_loss, calibration_batch, handcrafted_removal,
                                       removal_scores, sampling_timesteps, select_blocks)

    cal = cfg["calibration"]
    x0, y = _data(cal["seed"] + 5000, cal["n"])
    batch = calibration_batch(x0.to(device), cond=y.to(device), generator=torch.Generator().manual_seed(cal["seed"]),
                              timesteps=sampling_timesteps(cal["steps"]))
    if cfg["selection"] == "oloss":
        return select_blocks(removal_scores(teacher, batch), cfg["remove"])
    options = [handcrafted_removal(len(teacher.blocks), cfg["remove"], kind) for kind in HANDCRAFTED]
    return min(options, key=lambda units: block_removal_loss(teacher, units, batch))


def _build_student(cfg: dict):
    from layerwise.diffusion.dit import DiTConfig
    from layerwise.laptop_diff import PrunedDiT

    model_cfg = dict(TEACHER["model"], depth=TEACHER["model"]["depth"] - cfg["remove"])
    return PrunedDiT(DiTConfig(**model_cfg))


def _fit_student(model, cfg, steps, generator, device, progress=None):
    from layerwise.diffusion.train import heldout_eps_loss
    from layerwise.laptop_diff import distill, remove_blocks
    from layerwise.zoo import load

    teacher = load(cfg["teacher"], device=device)
    drop = _removal(cfg, teacher, device)
    model.load_state_dict(remove_blocks(teacher, drop).state_dict())      # start from the one-shot pruned teacher
    x, y = _data(cfg["data"]["seed"], training_set_size(cfg["data"]["n"], steps, cfg["batch_size"]))
    hist = distill(model, teacher, x, labels=y, steps=steps, normalize=cfg["normalize"], generator=generator,
                   batch_size=cfg["batch_size"], lr=cfg["lr"], lambda_out=cfg["lambda_out"],
                   lambda_feat=cfg["lambda_feat"], device=device, progress=progress)
    xv, yv = _data(777, _EVAL_N)
    metric = heldout_eps_loss(model, xv, labels=yv, generator=torch.Generator().manual_seed(0), device=device)
    tail = hist.loss[-100:]
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail)),
            "removed_mask": float(sum(2 ** i for i in drop))}


for _sel, _norm in STUDENT_VARIANTS:
    for _seed in STUDENT_SEEDS:
        register(Recipe(
            name=student_zoo_name(_sel, _norm, _seed), build=_build_student, fit=_fit_student, evaluate=_eval_eps,
            config={**STUDENT, "selection": _sel, "normalize": _norm}, steps=200, seed=1700 + _seed,
            metric="heldout_eps_mse", requires=("laptop_teacher16",), tolerance=1.25,
            description=f"laptop_teacher16 with 4 of 8 blocks removed ({'output-loss criterion' if _sel == 'oloss' else 'the better hand-made removal'}) "
                        f"and retrained by {'normalised' if _norm else 'raw'} feature distillation, seed {_seed}"))
