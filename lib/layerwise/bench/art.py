"""ART: what does the layer-wise region crop save?

One denoiser pass of a tiny DiT with 3-axis positions (:data:`layerwise.art.COST_CONFIG`: ``ae32``-sized
8×8 latents, patch 1, batch 4) over the layer stack of a layout with 10, 25 and 50 sprite layers:
full attention over every layer's whole canvas, over ART's regional sequence (merged + background + one
crop per layer). Time ratios are medians of interleaved runs; memory ratios compare the peak the
profiler sees allocated during one pass. The paper's claim: over 12× faster at 50 layers.
"""

from __future__ import annotations

import torch

from layerwise import art
from layerwise.bench import Ratio
from layerwise.core import compare_times, get_device

LAYERS = (10, 25, 50)


class MemoryRatio(Ratio):
    """A ratio of peak bytes (the two fields hold bytes, not seconds)."""

    def line(self) -> str:
        return (f"{self.name}: {self.numerator} / {self.denominator} = {self.ratio:.2f}x "
                f"({self.seconds_num / 2**20:.1f} MiB vs {self.seconds_den / 2**20:.1f} MiB peak)")


def run(quick: bool = False) -> list[Ratio]:
    device = get_device()
    torch.manual_seed(0)
    cfg = dict(art.COST_CONFIG, depth=1) if quick else art.COST_CONFIG     # quick: a smoke test
    model = art.AnonymousRegionDiT(art.ARTConfig(**cfg)).to(device).eval()
    repeats, warmup = (1, 1) if quick else (5, 2)
    out: list[Ratio] = []
    for k in LAYERS:
        boxes = art.cost_layout(k, generator=k)
        fns = {m: art.cost_pass(model, boxes, batch=4, mode=m) for m in ("full", "regional")}
        t = compare_times(fns, repeats=repeats, warmup=warmup)
        n_reg, n_full = int(art.region_tokens(boxes).sum()), boxes.shape[0] * model.config.grid ** 2
        out.append(Ratio(f"ART one denoiser pass, {k} layers ({n_full} vs {n_reg} tokens, batch 4)",
                         "full attention", "regional", t["full"], t["regional"]))
        mem = {m: art.peak_bytes(fn, device) for m, fn in fns.items()}
        out.append(MemoryRatio(f"ART peak memory of that pass, {k} layers", "full attention", "regional",
                               float(mem["full"]), float(mem["regional"])))
    return out
