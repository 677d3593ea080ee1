"""LAPTOP-Diff: what does removing half the blocks buy at sampling time?

The zoo's depth-8 teacher (``laptop_teacher16``) against its pruned, retrained student
(``laptop_student_oloss_norm_s0``: 4 of 8 blocks removed by the output-loss criterion): the same
DDIM sampler, the same number of steps, the same batch and starting noise, with classifier-free
guidance (two network calls per step), measured side by side. The issue's goal is at least 1.8×
at 50 % of the blocks removed; the embedding, the output head and the sampler's own arithmetic
are not pruned, so the ratio stays below 2×.
"""

from __future__ import annotations

import torch

from layerwise.bench import Ratio
from layerwise.core import compare_times, get_device
from layerwise.diffusion.schedule import sample
from layerwise.laptop_diff import student_zoo_name


def run(quick: bool = False) -> list[Ratio]:
    from layerwise import zoo

    device = get_device()
    teacher = zoo.load("laptop_teacher16", device=device)
    student = zoo.load(student_zoo_name("oloss", True, 0), device=device)
    batch, steps = 64, (5 if quick else 25)
    cond = (torch.arange(batch) % 6).to(device)
    noise = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def sampler(model):
        return lambda: sample(model, tuple(noise.shape), steps=steps, cond=cond, guidance=2.0, x_T=noise,
                              device=device, progress=False)

    t = compare_times({"teacher": sampler(teacher), "student": sampler(student)},
                      repeats=1 if quick else 5, warmup=1)
    blocks = f"{len(teacher.blocks)} → {len(student.blocks)} blocks"
    return [Ratio(f"DDIM sampling, {steps} steps, batch {batch}, guidance 2 ({blocks})", "teacher",
                  "pruned student", t["teacher"], t["student"])]
