"""Multi-sample dropout: what do M samples cost?

1. A full training step of the chapter's model (ConvTrunk on digits) with M = 8 over M = 1.
2. The batched head (one call on an (M, B, D) tensor) over a Python loop over the M samples,
   forward and backward, at a head size where the head's cost is visible.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layerwise import msd
from layerwise.bench import Ratio
from layerwise.core import ConvTrunk, compare_times, get_device, train_step_fn


def msd_logits_loop(h: torch.Tensor, head: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    """The straightforward version the library avoids: one head call per dropout sample."""
    return torch.stack([head(masks[m] * h) for m in range(masks.shape[0])])


def run(quick: bool = False) -> list[Ratio]:
    device = get_device()
    repeats = 5 if quick else 50
    torch.manual_seed(0)

    # 1. training step of the chapter's model, M = 8 vs M = 1
    x = torch.rand(64, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (64,), device=device)

    def model(m: int) -> nn.Module:
        torch.manual_seed(0)
        trunk = ConvTrunk(1, (32, 64))
        return nn.Sequential(trunk, msd.MultiSampleDropout(nn.Linear(trunk.out_features, 10), m, 0.5)).to(device)

    step = {m: train_step_fn(model(m), msd.msd_loss, x, y) for m in (8, 1)}
    t = compare_times({"M=8": step[8], "M=1": step[1]}, repeats=repeats, warmup=3)
    out = [Ratio("training step, chapter model (digits, batch 64)", "M=8", "M=1", t["M=8"], t["M=1"])]

    # 2. batched head vs a loop over samples (forward + backward): the chapter's head size, and a larger one
    for b, d, c in ((64, 64, 10), (256, 512, 100)):
        h = torch.randn(b, d, device=device, requires_grad=True)
        head = nn.Linear(d, c).to(device)
        masks = msd.sample_dropout_masks(8, h.shape, 0.5, device=device)
        target = torch.randint(0, c, (b,), device=device)

        def fwd_bwd(fn, h=h, head=head, masks=masks, target=target):
            def call():
                msd.msd_loss(fn(h, head, masks), target).backward()
            return call

        assert torch.allclose(msd.msd_logits(h, head, masks), msd_logits_loop(h, head, masks), atol=1e-5)
        t = compare_times({"loop": fwd_bwd(msd_logits_loop), "batched": fwd_bwd(msd.msd_logits)},
                          repeats=repeats, warmup=3)
        out.append(Ratio(f"M=8 heads, B={b}, D={d}, C={c}, fwd+bwd", "loop over samples", "batched",
                         t["loop"], t["batched"]))
    return out
