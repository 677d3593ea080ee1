"""LAPTOP-Diff: Layer Pruning and Normalized Distillation for Compressing Diffusion Models
(Zhang et al. 2024, arXiv:2404.11098).

LAPTOP-Diff makes a denoiser smaller by removing whole layers, in two steps:

1. **One-shot pruning by output loss** (the paper's pruning criterion). Removing a set S of
   residual units changes the denoiser's output; the paper poses pruning as choosing S (under a
   budget) to minimise ``E‖ε_{−S}(x_t, t) − ε(x_t, t)‖²``. It scores every unit by the output loss
   when it *alone* is removed (:func:`block_removal_loss`, :func:`removal_scores`) and relies on
   **additivity**: the loss of removing a set is close to the sum of its members' losses
   (:func:`additivity`), so the best set is found at once by taking the lowest scores up to the
   budget (:func:`select_blocks`), with no search over subsets.
2. **Retraining with normalised feature distillation.** The pruned student is retrained to
   match the teacher's output and its intermediate features. In plain feature distillation a
   few layers with numerically large features dominate the sum of feature losses; the paper
   re-weights each layer's term by the size of the teacher's feature
   (:func:`normalized_feature_loss`), so every layer counts.

What is the paper's and what is ours. Only the abstract is a primary source (the paper's code
is not public). From it: layer pruning, a one-shot output-loss criterion justified by
additivity, normalised feature distillation because "a few numerically significant feature
loss terms dominate". Our choices, marked *(ours)* where they appear:

- the removable unit is one whole DiT block (attention + MLP, adaLN-Zero): removing it is an
  exact identity on the residual stream, so a pruned model is simply a shorter
  :class:`~layerwise.diffusion.dit.TinyDiT` (:class:`PrunedDiT`);
- the output loss is the mean squared difference over every element, on one fixed calibration
  batch with *common random numbers* (the same x₀, t and ε for every unit and subset,
  :func:`calibration_batch`), t drawn from the sampler's timesteps;
- the normalisation divides each layer's mean squared feature error by the mean square of the
  teacher's feature, ``Σ_l ‖F_S^l − F_T^l‖² / ‖F_T^l‖²`` (the exact formula is not public);
- the retraining objective is BK-SDM's sum ``L_task + λ_out‖ε_S − ε_T‖² + λ_feat L_feat``
  (:func:`distillation_loss`), each kept block's output matched to the teacher's block of the
  same original index.

Conventions: models are :class:`~layerwise.diffusion.dit.TinyDiT` ε-predictors
``model(x_t, t, cond)``, x: (B, C, H, W); a *batch* is a dict ``{"x_t", "t", "cond"}``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from itertools import combinations
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from layerwise.core.train import History, fit_steps
from layerwise.diffusion.dit import TinyDiT, grid_position_ids, patchify, unpatchify
from layerwise.diffusion.schedule import make_scheduler, q_sample, sample

__all__ = ["PrunedDiT", "calibration_batch", "sampling_timesteps", "remove_blocks", "block_removal_loss",
           "removal_errors", "removal_scores", "subset_losses", "random_subsets", "pearson", "additivity",
           "independent_draws", "select_blocks", "magnitude_scores", "handcrafted_removal", "random_removal",
           "candidate_removals", "removal_metrics", "HANDCRAFTED",
           "STUDENT_VARIANTS", "STUDENT_SEEDS", "student_zoo_name",
           "gate_magnitudes", "block_features", "feature_loss_terms", "normalized_feature_loss", "loss_shares",
           "distillation_loss", "distill", "shape_scores", "sample_quality"]

#: The hand-made removals the chapter compares with (our reading of "handcrafted" layer removal).
HANDCRAFTED = ("every_other", "last")
#: The retrained students of the zoo: (selection, normalised feature distillation?) pairs, each
#: trained with every seed of :data:`STUDENT_SEEDS` (named by :func:`student_zoo_name`). ``"oloss"``
#: is the output-loss criterion, ``"handmade"`` the better of the :data:`HANDCRAFTED` removals on
#: the same calibration batch (the paper compares with the best hand-made method).
STUDENT_VARIANTS = (("oloss", True), ("oloss", False), ("handmade", True))
STUDENT_SEEDS = (0, 1, 2)


def student_zoo_name(selection: str, normalize: bool, seed: int) -> str:
    """The zoo name of a retrained student, e.g. ``laptop_student_oloss_norm_s0``."""
    if selection not in ("oloss", "handmade"):
        raise ValueError(f"selection must be 'oloss' or 'handmade', got {selection!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    _check_int(seed, "seed", 0)
    return f"laptop_student_{selection}_{'norm' if normalize else 'raw'}_s{seed}"


# ----------------------------------------------------------------------------- argument checks

def _check_dit(model, name: str = "model") -> TinyDiT:
    if not isinstance(model, TinyDiT):
        raise TypeError(f"{name} must be a layerwise TinyDiT (or PrunedDiT), got {type(model).__name__}")
    return model


def _check_int(value, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_units(units, depth: int, name: str = "units") -> tuple[int, ...]:
    """An int or a sequence of distinct ints in [0, depth) → a sorted tuple."""
    if isinstance(units, Tensor):
        units = units.tolist()
    items = [units] if isinstance(units, int) and not isinstance(units, bool) else units
    if not isinstance(items, (list, tuple, range, set, frozenset)):
        raise TypeError(f"{name} must be a block index or a sequence of block indices, got {type(units).__name__}")
    out = []
    for u in items:
        if isinstance(u, bool) or not isinstance(u, int):
            raise TypeError(f"{name} must hold ints (block indices), got {u!r}")
        if not 0 <= u < depth:
            raise ValueError(f"{name}: block index {u} is outside the model's {depth} blocks (0 … {depth - 1})")
        out.append(u)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} names a block twice: {list(items)}")
    return tuple(sorted(out))


def _check_batch(batch, model: TinyDiT, name: str = "batch") -> tuple[Tensor, Tensor, Tensor | None]:
    if not isinstance(batch, dict):
        raise TypeError(f"{name} must be a dict with 'x_t', 't' and optionally 'cond', got {type(batch).__name__}")
    missing = {"x_t", "t"} - set(batch)
    if missing:
        raise ValueError(f"{name} lacks {sorted(missing)} (a batch is {{'x_t': (B, C, H, W), 't': (B,), 'cond'}})")
    x_t, t, cond = batch["x_t"], batch["t"], batch.get("cond")
    if not isinstance(x_t, Tensor) or not x_t.is_floating_point():
        raise TypeError(f"{name}['x_t'] must be a floating-point tensor, got {getattr(x_t, 'dtype', type(x_t).__name__)}")
    c = model.config.in_channels
    if x_t.dim() != 4 or x_t.shape[1] != c or x_t.shape[0] == 0:
        raise ValueError(f"{name}['x_t'] must be (B, {c}, H, W) with B >= 1, got shape {tuple(x_t.shape)}")
    if not isinstance(t, Tensor) or t.is_floating_point() or t.dim() != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"{name}['t'] must be an integer tensor (B,) = ({x_t.shape[0]},), got "
                         f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if cond is not None and (not isinstance(cond, Tensor) or cond.shape[:1] != x_t.shape[:1]):
        raise ValueError(f"{name}['cond'] must be None or a tensor with B = {x_t.shape[0]} rows, got "
                         f"{tuple(getattr(cond, 'shape', ())) or type(cond).__name__}")
    return x_t, t, cond


def _vector(x, name: str, n: int | None = None) -> Tensor:
    """A finite 1-D float64 tensor from a tensor or sequence of numbers."""
    if isinstance(x, Tensor):
        v = x.detach().cpu()
        if v.dtype == torch.bool:
            raise TypeError(f"{name} must hold numbers, got a bool tensor")
        v = v.double()
    else:
        try:
            v = torch.as_tensor(list(x), dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a 1-D tensor or sequence of numbers, got {type(x).__name__}") from None
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(v.shape)}")
    if n is not None and v.numel() != n:
        raise ValueError(f"{name} must have {n} entries, got {v.numel()}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or inf")
    return v


# ----------------------------------------------------------------------------- the pruned model

class PrunedDiT(TinyDiT):
    """A :class:`~layerwise.diffusion.dit.TinyDiT` holding a subset of a teacher's blocks.

    ``kept`` (a buffer, saved with the weights) names, for each block, its index in the teacher;
    the rest is a TinyDiT of depth ``len(kept)``: it runs and trains exactly like one, only with
    fewer blocks. Build one from a teacher with :func:`remove_blocks`.
    """

    def __init__(self, config=None, *, kept: Sequence[int] | None = None, **overrides):
        super().__init__(config, **overrides)
        kept = list(range(self.config.depth)) if kept is None else [int(k) for k in kept]
        if len(kept) != self.config.depth:
            raise ValueError(f"kept must name one teacher index per block ({self.config.depth}), got {kept}")
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.long))


def remove_blocks(model: TinyDiT, units: int | Sequence[int]) -> PrunedDiT:
    """A copy of ``model`` without the blocks ``units`` (indices into ``model.blocks``).

    Every DiT block adds its output to the residual stream, so dropping one is an identity map
    in its place: the pruned model is a shorter TinyDiT with the remaining blocks' weights (its
    ``kept`` buffer records their indices in the original teacher). The copy has its own
    parameters, on ``model``'s device and dtype, and the same train/eval mode.
    """
    _check_dit(model)
    depth = len(model.blocks)
    drop = set(_check_units(units, depth))
    keep = [i for i in range(depth) if i not in drop]
    original = model.kept.tolist() if isinstance(model, PrunedDiT) else list(range(depth))
    ref = next(model.parameters())
    with torch.random.fork_rng(devices=[]):          # building modules draws from the global generator
        new = PrunedDiT(replace(model.config, depth=len(keep)), kept=[original[i] for i in keep])
    new = new.to(device=ref.device, dtype=ref.dtype)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            if int(idx) in drop:
                continue
            key = f"blocks.{keep.index(int(idx))}.{rest}"
        elif key == "kept":
            continue
        state[key] = value
    new.load_state_dict({**state, "kept": new.kept})
    for j, i in enumerate(keep):
        new.blocks[j].attn.processor = model.blocks[i].attn.processor
    return new.train(model.training)


@contextlib.contextmanager
def _without(model: TinyDiT, units: tuple[int, ...]):
    """Run ``model`` with ``units`` skipped, without copying it (restored on exit)."""
    blocks = model.blocks
    model.blocks = nn.ModuleList([b for i, b in enumerate(blocks) if i not in units])
    try:
        yield model
    finally:
        model.blocks = blocks


# ----------------------------------------------------------------------------- the output-loss criterion

def sampling_timesteps(steps: int) -> Tensor:
    """The timesteps a ``steps``-step DDIM sampler visits (the course's schedule): (steps,) long."""
    _check_int(steps, "steps", 1)
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.clone().long()


def calibration_batch(x0: Tensor, *, generator: torch.Generator, cond: Tensor | None = None,
                      timesteps: Tensor | None = None, alphas_cumprod: Tensor | None = None) -> dict:
    """One fixed batch to score every unit and subset on: ``{"x_t", "t", "cond", "noise", "x0"}``.

    t is drawn uniformly from ``timesteps`` (e.g. :func:`sampling_timesteps`; default every
    t in 0 … T−1), ε ~ N(0, I), both once, with ``generator``; x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε.
    Scoring everything on this one batch is *common random numbers*: differences between units
    are then differences between units, not between draws of noise. x0: (B, C, H, W).
    """
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() != 4 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a floating-point (B, C, H, W) tensor with B >= 1, got "
                         f"{getattr(x0, 'dtype', type(x0).__name__)} {tuple(getattr(x0, 'shape', ()))}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if cond is not None and (not isinstance(cond, Tensor) or cond.shape[:1] != x0.shape[:1]):
        raise ValueError(f"cond must be None or a tensor with {x0.shape[0]} rows, got "
                         f"{tuple(getattr(cond, 'shape', ())) or type(cond).__name__}")
    acp = make_scheduler("ddpm").alphas_cumprod if alphas_cumprod is None else alphas_cumprod
    if timesteps is None:
        timesteps = torch.arange(len(acp))
    if (not isinstance(timesteps, Tensor) or timesteps.is_floating_point() or timesteps.dim() != 1
            or timesteps.numel() == 0 or timesteps.min() < 0 or timesteps.max() >= len(acp)):
        raise ValueError(f"timesteps must be a non-empty 1-D integer tensor of values in [0, {len(acp)}), "
                         f"got {timesteps!r}")
    b = x0.shape[0]
    t = timesteps.long()[torch.randint(0, timesteps.numel(), (b,), generator=generator)].to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return {"x_t": q_sample(x0, t, noise, acp), "t": t, "cond": cond, "noise": noise, "x0": x0}


@torch.no_grad()
def removal_errors(model: TinyDiT, units: int | Sequence[int], batch: dict, reference: Tensor | None = None) -> Tensor:
    """Per-example output loss of removing ``units``: mean over (C, H, W) of (ε_{−S} − ε)²: (B,).

    ``reference``, if given, is the full model's output on the batch (saves recomputing it).
    """
    _check_dit(model)
    x_t, t, cond = _check_batch(batch, model)
    units = _check_units(units, len(model.blocks))
    if reference is None:
        reference = model(x_t, t, cond)
    with _without(model, units) as pruned:
        out = pruned(x_t, t, cond)
    return (out - reference).pow(2).flatten(1).mean(1)


def block_removal_loss(model: TinyDiT, units: int | Sequence[int], batch: dict) -> float:
    """The output loss of removing ``units`` (one block index or several) from ``model``:
    ``mean (ε_{−S}(x_t, t, c) − ε(x_t, t, c))²`` over every element of the batch, a float.

    model: a TinyDiT; batch: ``{"x_t": (B, C, H, W), "t": (B,), "cond": (B,) or None}``. Removing
    a block means running the model without it (its residual branch is skipped). The paper's
    criterion scores each unit by this loss with the unit alone removed.
    """
    return float(removal_errors(model, units, batch).mean())


@torch.no_grad()
def removal_scores(model: TinyDiT, batch: dict, *, per_example: bool = False) -> Tensor:
    """The output loss of removing each block alone: (depth,) float64; with ``per_example``,
    (depth, B) (to see how each block's importance depends on t)."""
    _check_dit(model)
    x_t, t, cond = _check_batch(batch, model)
    ref = model(x_t, t, cond)
    rows = [removal_errors(model, i, batch, ref).double() for i in range(len(model.blocks))]
    out = torch.stack(rows)
    return out if per_example else out.mean(1)


@torch.no_grad()
def subset_losses(model: TinyDiT, batch: dict, subsets: Sequence[Sequence[int]], *, per_example: bool = False
                  ) -> Tensor:
    """The actual output loss of removing each subset at once: (len(subsets),) float64; with
    ``per_example``, (len(subsets), B)."""
    _check_dit(model)
    x_t, t, cond = _check_batch(batch, model)
    if not isinstance(subsets, (list, tuple)) or not subsets:
        raise ValueError("subsets must be a non-empty list of block-index sequences")
    ref = model(x_t, t, cond)
    out = torch.stack([removal_errors(model, s, batch, ref).double() for s in subsets])
    return out if per_example else out.mean(1)


def independent_draws(errors: Tensor, size: int, generator: torch.Generator, *, shared: bool = False) -> Tensor:
    """Per-example losses ``errors`` (K, B), each row averaged over ``size`` of the B examples:
    (K,) float64. With ``shared``, every row uses the *same* random examples (common random
    numbers on a batch of ``size``); otherwise each row draws its own, independently, as if every
    measurement had been taken on its own batch: rows then differ by their draw of x₀, t and ε as
    well as by what they measure."""
    if not isinstance(errors, Tensor) or errors.dim() != 2 or errors.shape[1] == 0:
        raise ValueError(f"errors must be a (K, B) tensor of per-example losses, got {getattr(errors, 'shape', type(errors).__name__)}")
    _check_int(size, "size", 1)
    if size > errors.shape[1]:
        raise ValueError(f"size={size} is more than the {errors.shape[1]} examples per row")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    rows = 1 if shared else errors.shape[0]
    picks = torch.stack([torch.randperm(errors.shape[1], generator=generator)[:size] for _ in range(rows)])
    return errors.double().cpu().gather(1, picks.expand(errors.shape[0], size)).mean(1)


def random_subsets(n_units: int, sizes: Iterable[int], per_size: int, generator: torch.Generator
                   ) -> list[tuple[int, ...]]:
    """Up to ``per_size`` distinct random subsets of {0 … n_units−1} of each size (all of them
    when there are fewer), each a sorted tuple; sizes in order, deterministic given ``generator``."""
    _check_int(n_units, "n_units", 1)
    _check_int(per_size, "per_size", 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    sizes = list(sizes)
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_units:
            raise ValueError(f"sizes must be ints in [1, n_units={n_units}], got {k!r}")
    out: list[tuple[int, ...]] = []
    for k in sizes:
        total = math.comb(n_units, k)
        if total <= per_size:
            out += list(combinations(range(n_units), k))
            continue
        seen: list[tuple[int, ...]] = []
        while len(seen) < per_size:
            s = tuple(sorted(torch.randperm(n_units, generator=generator)[:k].tolist()))
            if s not in seen:
                seen.append(s)
        out += seen
    return out


def pearson(a, b) -> float:
    """Pearson correlation of two equal-length sequences (NaN when either is constant)."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.numel() != y.numel():
        raise ValueError(f"a and b must have the same length, got {x.numel()} and {y.numel()}")
    if x.numel() < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return float((x * y).sum() / den) if den > 0 else float("nan")


def additivity(single, subsets: Sequence[Sequence[int]], actual) -> dict[int, dict[str, float]]:
    """How well the summed single-unit losses predict the loss of removing a whole subset.

    single: (n_units,) loss of each unit alone; subsets: the removed sets; actual: their
    measured losses. Returns, per subset size k, ``{"r": Pearson(Σ_{i∈S} L_i, L_S), "ratio":
    median(L_S / Σ L_i), "n": count}``: r near 1 means the sum ranks subsets right (what the
    one-shot selection needs); ratio > 1 means removing blocks together hurts more than the sum
    (super-additivity).
    """
    s = _vector(single, "single")
    y = _vector(actual, "actual")
    if not isinstance(subsets, (list, tuple)) or len(subsets) != y.numel():
        raise ValueError(f"subsets must be a list with one entry per value of actual ({y.numel()})")
    groups: dict[int, list[tuple[float, float]]] = {}
    for sub, value in zip(subsets, y.tolist()):
        idx = _check_units(list(sub), s.numel(), "subsets")
        groups.setdefault(len(idx), []).append((float(s[list(idx)].sum()), value))
    out = {}
    for k in sorted(groups):
        pred, act = zip(*groups[k])
        ratios = sorted(a / p for p, a in zip(pred, act) if p > 0)
        out[k] = {"r": pearson(pred, act) if len(pred) > 1 else float("nan"),
                  "ratio": ratios[len(ratios) // 2] if ratios else float("nan"), "n": float(len(pred))}
    return out


def select_blocks(scores, budget: float, costs=None) -> list[int]:
    """The units to remove: lowest score first, as long as the total cost stays within ``budget``.

    scores: (n,) the output loss of each unit alone; costs: (n,) positive (default: 1 each, so
    ``budget`` is the number of units to remove). Units are visited in ascending score (ties:
    lower index first); a unit is taken when the cost removed so far plus its own is at most
    ``budget``, otherwise skipped (later, cheaper units may still fit). Returns the chosen indices,
    sorted. With equal costs and additive losses this is the exact minimiser of the summed loss.
    """
    s = _vector(scores, "scores")
    c = torch.ones_like(s) if costs is None else _vector(costs, "costs", s.numel())
    if (c <= 0).any():
        raise ValueError("costs must all be > 0")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0 or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number >= 0, got {budget!r}")
    order = sorted(range(s.numel()), key=lambda i: (float(s[i]), i))
    chosen, used = [], 0.0
    for i in order:
        if used + float(c[i]) <= budget + 1e-9:
            chosen.append(i)
            used += float(c[i])
    return sorted(chosen)


def magnitude_scores(model: TinyDiT) -> Tensor:
    """The weight-magnitude criterion *(our baseline)*: each block's mean absolute parameter
    value, (depth,) float64 — small weights are taken to matter little."""
    _check_dit(model)
    return torch.tensor([float(torch.cat([p.detach().abs().flatten() for p in b.parameters()]).double().mean())
                         for b in model.blocks], dtype=torch.float64)


def handcrafted_removal(depth: int, n_remove: int, kind: str) -> list[int]:
    """A hand-made removal of ``n_remove`` of ``depth`` blocks *(our reading)*: ``"every_other"``
    drops blocks 1, 3, 5, … (the first ``n_remove`` odd indices), ``"last"`` the last ``n_remove``."""
    _check_int(depth, "depth", 1)
    _check_int(n_remove, "n_remove", 0)
    if kind not in HANDCRAFTED:
        raise ValueError(f"kind must be one of {HANDCRAFTED}, got {kind!r}")
    if kind == "every_other":
        if n_remove > depth // 2:
            raise ValueError(f"n_remove={n_remove} is more than every other block of {depth}")
        return list(range(1, 2 * n_remove, 2))
    if n_remove > depth:
        raise ValueError(f"n_remove={n_remove} is more than the model's {depth} blocks")
    return list(range(depth - n_remove, depth))


def candidate_removals(model: TinyDiT, scores, n_remove: int, generator: torch.Generator) -> dict[str, list[int]]:
    """The removals the chapter compares, each of ``n_remove`` blocks: ``"output loss"`` (the
    paper's criterion: :func:`select_blocks` on ``scores``), ``"weight magnitude"``, ``"random"``
    (with ``generator``) and the hand-made ``"every other"`` and ``"last blocks"``."""
    depth = len(_check_dit(model).blocks)
    _vector(scores, "scores", depth)
    return {"output loss": select_blocks(scores, n_remove),
            "weight magnitude": select_blocks(magnitude_scores(model), n_remove),
            "random": random_removal(depth, n_remove, generator),
            "every other": handcrafted_removal(depth, n_remove, "every_other"),
            "last blocks": handcrafted_removal(depth, n_remove, "last")}


@torch.no_grad()
def removal_metrics(model: TinyDiT, batch: dict, subsets: Sequence[int | Sequence[int]]) -> dict[str, Tensor]:
    """How ``model`` does with each of ``subsets`` removed (no retraining) on ``batch``, which must
    hold the true ``"noise"``: ``{"output_loss": (K,), "eps_loss": (K,)}`` float64, the mean
    (ε_{−S} − ε)² against the full model and the mean (ε_{−S} − noise)² against the true noise."""
    _check_dit(model)
    x_t, t, cond = _check_batch(batch, model)
    if not isinstance(batch.get("noise"), Tensor) or batch["noise"].shape != x_t.shape:
        raise ValueError("batch['noise'] must be the true noise, shaped like batch['x_t']")
    if not isinstance(subsets, (list, tuple)) or not subsets:
        raise ValueError("subsets must be a non-empty list of block indices or index sequences")
    ref = model(x_t, t, cond)
    out, eps = [], []
    for units in subsets:
        with _without(model, _check_units(units, len(model.blocks), "subsets")) as pruned:
            pred = pruned(x_t, t, cond)
        out.append(float((pred - ref).pow(2).mean()))
        eps.append(float((pred - batch["noise"]).pow(2).mean()))
    return {"output_loss": torch.tensor(out, dtype=torch.float64), "eps_loss": torch.tensor(eps, dtype=torch.float64)}


def random_removal(depth: int, n_remove: int, generator: torch.Generator) -> list[int]:
    """``n_remove`` of ``depth`` blocks chosen uniformly at random (sorted)."""
    _check_int(depth, "depth", 1)
    _check_int(n_remove, "n_remove", 0)
    if n_remove > depth:
        raise ValueError(f"n_remove={n_remove} is more than depth={depth}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return sorted(torch.randperm(depth, generator=generator)[:n_remove].tolist())


@torch.no_grad()
def gate_magnitudes(model: TinyDiT, t: Tensor, cond: Tensor | None = None) -> Tensor:
    """Mean |gate| of each block's attention and MLP branch (adaLN-Zero's g₁, g₂) at timesteps
    ``t`` (B,) and conditions ``cond``: (depth, 2). Near zero everywhere means an under-trained
    model whose blocks barely act, so removing them costs nothing."""
    _check_dit(model)
    if not isinstance(t, Tensor) or t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of timesteps, got {getattr(t, 'shape', type(t).__name__)}")
    device = next(model.parameters()).device
    c = model.conditioning(t.to(device), None if cond is None else cond.to(device), t.shape[0], device)
    rows = []
    for block in model.blocks:
        _, _, g1, _, _, g2 = block.ada(c).chunk(6, dim=-1)
        rows.append(torch.stack([g1.abs().mean(), g2.abs().mean()]))
    return torch.stack(rows).double().cpu()


# ----------------------------------------------------------------------------- normalised feature distillation

def block_features(model: TinyDiT, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """``(ε̂ (B, C, H, W), [output of each block (B, N, dim)])``: the model's prediction and the
    residual stream after every block (what feature distillation matches)."""
    _check_dit(model)
    _check_batch({"x_t": x_t, "t": t, "cond": cond}, model, "the batch")
    p = model.config.patch
    _, _, h, w = x_t.shape
    pos = grid_position_ids(h // p, w // p, axes=model.config.pos_axes, device=x_t.device)
    out, hidden = model.forward_tokens(patchify(x_t, p), t, cond, pos_ids=pos, return_hidden=True)
    return unpatchify(out, p, model.out_channels, h, w), hidden


def _check_feats(student_feats, teacher_feats) -> None:
    for feats, name in ((student_feats, "student_feats"), (teacher_feats, "teacher_feats")):
        if not isinstance(feats, (list, tuple)) or not feats:
            raise TypeError(f"{name} must be a non-empty list of feature tensors, got {type(feats).__name__}")
        for i, f in enumerate(feats):
            if not isinstance(f, Tensor) or not f.is_floating_point():
                raise TypeError(f"{name}[{i}] must be a floating-point tensor, got "
                                f"{getattr(f, 'dtype', type(f).__name__)}")
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"student_feats has {len(student_feats)} layers but teacher_feats has {len(teacher_feats)}")
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        if s.shape != t.shape:
            raise ValueError(f"layer {i}: student_feats {tuple(s.shape)} and teacher_feats {tuple(t.shape)} differ in shape")


def feature_loss_terms(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *, normalize: bool,
                       eps: float = 1e-8) -> Tensor:
    """Each layer's feature-distillation loss: (L,).

    Raw (BK-SDM's feature KD): ``mean (F_S^l − F_T^l)²``. Normalised *(our formula; the paper's
    is not public)*: the same divided by the teacher feature's mean square,
    ``mean (F_S^l − F_T^l)² / (mean (F_T^l)² + eps)`` — a relative error, so a layer whose
    features are numerically large no longer outweighs the others. The divisor is a constant
    (the teacher is frozen; it is detached).
    """
    _check_feats(student_feats, teacher_feats)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    terms = []
    for s, t in zip(student_feats, teacher_feats):
        term = (s - t).pow(2).mean()
        if normalize:
            term = term / (t.detach().pow(2).mean() + eps)
        terms.append(term)
    return torch.stack(terms)


def normalized_feature_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor],
                            eps: float = 1e-8) -> Tensor:
    """The normalised feature loss ``Σ_l mean (F_S^l − F_T^l)² / (mean (F_T^l)² + eps)``: a
    0-dim tensor (see :func:`feature_loss_terms`; the normalisation is ours, the paper's
    formula is not public). student_feats, teacher_feats: lists of equally shaped tensors."""
    return feature_loss_terms(student_feats, teacher_feats, normalize=True, eps=eps).sum()


def loss_shares(terms) -> Tensor:
    """Each term's share of their sum, (L,) float64 (the imbalance the paper points at)."""
    v = _vector(terms, "terms")
    if (v < 0).any():
        raise ValueError("terms must be >= 0 (losses)")
    total = v.sum()
    return v / total if total > 0 else torch.full_like(v, 1.0 / v.numel())


def _teacher_index(student: TinyDiT, teacher: TinyDiT) -> list[int]:
    kept = student.kept.tolist() if isinstance(student, PrunedDiT) else list(range(len(student.blocks)))
    if max(kept) >= len(teacher.blocks):
        raise ValueError(f"the student's blocks come from teacher indices {kept}, but the teacher has "
                         f"{len(teacher.blocks)} blocks")
    return kept


def distillation_loss(student: TinyDiT, teacher: TinyDiT, x0: Tensor, *, cond: Tensor | None,
                      generator: torch.Generator, normalize: bool, lambda_out: float = 1.0,
                      lambda_feat: float = 1.0, alphas_cumprod: Tensor | None = None) -> tuple[Tensor, dict]:
    """One batch of the retraining objective ``L_task + λ_out ‖ε_S − ε_T‖² + λ_feat L_feat``.

    t ~ U{0 … T−1} and ε are drawn with ``generator``; L_task is the ε-loss on the true noise,
    the output term matches the teacher's prediction, and L_feat sums :func:`feature_loss_terms`
    (raw or ``normalize``\\ d) over the student's blocks, each matched to the teacher's block of
    the same original index (``student.kept``). Returns ``(loss, logs)``; the logs hold the three
    parts and, per student block j, both its raw (``raw_j``) and its normalised (``norm_j``) term,
    whichever one is optimised.
    """
    _check_dit(student, "student")
    _check_dit(teacher, "teacher")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() != 4:
        raise ValueError(f"x0 must be a floating-point (B, C, H, W) tensor, got {getattr(x0, 'shape', type(x0).__name__)}")
    index = _teacher_index(student, teacher)
    acp = make_scheduler("ddpm").alphas_cumprod if alphas_cumprod is None else alphas_cumprod
    b = x0.shape[0]
    t = torch.randint(0, len(acp), (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, noise, acp)
    with torch.no_grad():
        eps_t, feats_t = block_features(teacher, x_t, t, cond)
    eps_s, feats_s = block_features(student, x_t, t, cond)
    matched = [feats_t[k] for k in index]
    raw = feature_loss_terms(feats_s, matched, normalize=False)
    scale = torch.stack([f.pow(2).mean() for f in matched]) + 1e-8
    norm = raw / scale
    task = (eps_s - noise).pow(2).mean()
    out = (eps_s - eps_t).pow(2).mean()
    feat = (norm if normalize else raw).sum()
    loss = task + lambda_out * out + lambda_feat * feat
    logs = {"task": task.detach(), "out": out.detach(), "feat": feat.detach()}
    logs.update({f"raw_{j}": v.detach() for j, v in enumerate(raw)})
    logs.update({f"norm_{j}": v.detach() for j, v in enumerate(norm)})
    return loss, logs


def distill(student: TinyDiT, teacher: TinyDiT, data: Tensor, *, labels: Tensor | None = None, steps: int,
            normalize: bool, generator: torch.Generator, batch_size: int = 64, lr: float = 3e-4,
            cond_drop: float = 0.1, lambda_out: float = 1.0, lambda_feat: float = 1.0, warmup: int = 20,
            device: torch.device | str = "cpu", progress: bool | None = None) -> History:
    """Retrain ``student`` (in place) from ``teacher`` with :func:`distillation_loss` on random
    batches of ``data`` (N, C, H, W), on :func:`~layerwise.core.train.fit_steps` (AdamW, warm-up,
    cosine decay, clipping at norm 1). With probability ``cond_drop`` a batch is given no label,
    so the student keeps the null label for guidance. Returns the History (``logs`` per step)."""
    _check_dit(student, "student")
    _check_dit(teacher, "teacher")
    if not isinstance(data, Tensor) or data.dim() != 4 or not data.is_floating_point():
        raise ValueError(f"data must be a floating-point (N, C, H, W) tensor, got {getattr(data, 'shape', type(data).__name__)}")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape[0] != data.shape[0]):
        raise ValueError(f"labels must be None or a tensor with {data.shape[0]} rows")
    _check_int(steps, "steps", 0)
    _check_int(batch_size, "batch_size", 1)
    if not 0.0 <= cond_drop <= 1.0:
        raise ValueError(f"cond_drop must be in [0, 1], got {cond_drop!r}")
    device = torch.device(device)
    student.to(device)
    teacher.to(device).eval()
    _teacher_index(student, teacher)
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)

    def loss_fn(step: int):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        cond = None
        if labels is not None and torch.rand((), generator=generator).item() >= cond_drop:
            cond = labels[idx].to(device)
        return distillation_loss(student, teacher, data[idx].to(device), cond=cond, generator=generator,
                                 normalize=normalize, lambda_out=lambda_out, lambda_feat=lambda_feat,
                                 alphas_cumprod=acp)

    return fit_steps(student, loss_fn, steps, lr=lr, warmup=warmup, cosine=True, clip=1.0, progress=progress,
                     desc=f"{'normalised' if normalize else 'raw'} feature distillation")


# ----------------------------------------------------------------------------- judging samples

@torch.no_grad()
def shape_scores(classifier: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: (1.0 if the classifier names the intended shape else 0.0, its probability of
    the intended shape) — our stand-ins for the paper's prompt-alignment score. x in [-1, 1]."""
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"x must be a floating-point (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(labels, Tensor) or labels.shape != x.shape[:1]:
        raise ValueError(f"labels must be a tensor (B,) = ({x.shape[0]},), got {getattr(labels, 'shape', type(labels).__name__)}")
    device = next(classifier.parameters()).device
    prob = torch.softmax(classifier(x.clamp(-1, 1).to(device)), dim=1).cpu()
    want = labels.long().cpu()
    return (prob.argmax(1) == want).double(), prob.gather(1, want[:, None])[:, 0].double()


@torch.no_grad()
def sample_quality(model: nn.Module, classifier: nn.Module, labels: Tensor, *, generator: torch.Generator,
                   steps: int = 25, guidance: float = 2.0, image_shape: tuple[int, int, int] = (3, 16, 16),
                   device: torch.device | str | None = None) -> dict:
    """DDIM samples of ``model`` for the shapes ``labels`` (B,) and how the classifier reads them:
    ``{"x": samples, "correct": (B,), "confidence": (B,)}``. The same ``generator`` state gives
    every model the same starting noise (common random numbers between models)."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty (B,) tensor, got {getattr(labels, 'shape', type(labels).__name__)}")
    _check_int(steps, "steps", 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = sample(model, (labels.numel(), *image_shape), steps=steps, cond=labels.to(device), guidance=guidance,
               generator=generator, device=device)
    correct, conf = shape_scores(classifier, x, labels)
    return {"x": x.cpu(), "correct": correct, "confidence": conf}
