"""CutMix: what does the augmentation cost?

1. Per-image boxes (timm's "elem" mode): :func:`layerwise.cutmix.cutmix_per_sample`, built with
   one broadcast mask, over the straightforward Python loop that pastes one box per image.
2. One box for the batch (the paper's Algorithm 1): :func:`layerwise.cutmix.cutmix`, one slice
   assignment, over the same loop (each image pasted separately).
3. A full training step of the chapter's model (ConvTrunk on digits) with CutMix over without:
   the paper calls the overhead negligible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from layerwise import cutmix as cm
from layerwise.bench import Ratio
from layerwise.core import ConvTrunk, compare_times, get_device, train_step_fn
from layerwise.core.augment import mixed_cross_entropy


def cutmix_loop(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, centers: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The straightforward version the library avoids: one box pasted per image, in a Python loop."""
    x_mix = x.clone()
    lam_adj = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    H, W = x.shape[-2:]
    for i, (li, (r, c), j) in enumerate(zip(lam.tolist(), centers.tolist(), perm.tolist())):
        y1, y2, x1, x2 = cm.rand_bbox(H, W, li, (r, c))
        x_mix[i, :, y1:y2, x1:x2] = x[j, :, y1:y2, x1:x2]
        lam_adj[i] = 1.0 - (y2 - y1) * (x2 - x1) / (H * W)
    return x_mix, y, y[perm], lam_adj


def run(quick: bool = False) -> list[Ratio]:
    device = get_device()
    repeats = 5 if quick else 50
    rng = np.random.default_rng(0)
    out = []

    # 1 and 2. the augmentation alone, on a CIFAR-sized batch
    b = 128
    x = torch.rand(b, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (b,), device=device)
    lam, perm, centers = cm.sample_cutmix(b, 32, 32, 1.0, per_sample=True, rng=rng)
    perm = perm.to(device)
    got, want = cm.cutmix_per_sample(x, y, lam, perm, centers), cutmix_loop(x, y, lam, perm, centers)
    assert torch.equal(got[0], want[0]) and torch.allclose(got[3], want[3])
    t = compare_times({"loop": lambda: cutmix_loop(x, y, lam, perm, centers),
                       "batched": lambda: cm.cutmix_per_sample(x, y, lam, perm, centers)},
                      repeats=repeats, warmup=3)
    out.append(Ratio(f"CutMix, a box per image, B={b}, 3x32x32", "loop over samples", "batched",
                     t["loop"], t["batched"]))

    lam1, center = float(lam[0]), tuple(centers[0].tolist())
    same_lam, same_centers = torch.full((b,), lam1, dtype=torch.float64), centers[:1].expand(b, 2)
    assert torch.equal(cm.cutmix(x, y, lam1, perm, center)[0], cutmix_loop(x, y, same_lam, perm, same_centers)[0])
    t = compare_times({"loop": lambda: cutmix_loop(x, y, same_lam, perm, same_centers),
                       "batched": lambda: cm.cutmix(x, y, lam1, perm, center)}, repeats=repeats, warmup=3)
    out.append(Ratio(f"CutMix, one box per batch (paper), B={b}, 3x32x32", "loop over samples", "batched",
                     t["loop"], t["batched"]))

    # 3. a training step of the chapter's model, with and without CutMix
    xd = torch.rand(64, 1, 8, 8, device=device)
    yd = torch.randint(0, 10, (64,), device=device)

    def model() -> nn.Module:
        torch.manual_seed(0)
        trunk = ConvTrunk(1, (32, 64))
        return nn.Sequential(trunk, nn.Linear(trunk.out_features, 10)).to(device)

    steps = {"cutmix": train_step_fn(model(), mixed_cross_entropy, xd, yd, augment=cm.CutMix(1.0, prob=1.0, seed=0)),
             "plain": train_step_fn(model(), mixed_cross_entropy, xd, yd)}
    t = compare_times(steps, repeats=repeats, warmup=3)
    out.append(Ratio("training step, chapter model (digits, batch 64)", "with CutMix", "without",
                     t["cutmix"], t["plain"]))
    return out
