"""Tests of layerwise.cutmix (CutMix) and its baselines in layerwise.core.augment, plus the answers
the grading tests submit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise import cutmix as cm
from layerwise.core.augment import (Cutout, MixedTarget, Mixup, box_mask, cutout, mixed_cross_entropy, mixup, occlude,
                                    occlusion_sensitivity)

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "rand_bbox": (
        "import math\n\n"
        "def rand_bbox(H, W, lam, center):\n"
        "    r = math.sqrt(1 - lam)\n"
        "    h, w = math.floor(H * r), math.floor(W * r)\n"
        "    cy, cx = center\n"
        "    top, left = cy - h // 2, cx - w // 2\n"
        "    clip = lambda v, hi: max(0, min(hi, v))\n"
        "    return clip(top, H), clip(top + h, H), clip(left, W), clip(left + w, W)\n"),
    "cutmix": (
        "def cutmix(x, y, lam, perm, center):\n"
        "    H, W = x.shape[2], x.shape[3]\n"
        "    y1, y2, x1, x2 = rand_bbox(H, W, lam, center)\n"
        "    mask = torch.zeros(H, W, dtype=torch.bool)\n"
        "    mask[y1:y2, x1:x2] = True\n"
        "    x_mix = torch.where(mask, x[perm], x)\n"
        "    return x_mix, y.clone(), y[perm], 1.0 - mask.double().mean().item()\n"),
    "cutmix_per_sample": (
        "def cutmix_per_sample(x, y, lam, perm, centers):\n"
        "    x_mix = x.clone()\n"
        "    lam_adj = torch.empty(x.shape[0], dtype=x.dtype)\n"
        "    H, W = x.shape[2], x.shape[3]\n"
        "    for i in range(x.shape[0]):\n"
        "        y1, y2, x1, x2 = rand_bbox(H, W, float(lam[i]), (int(centers[i, 0]), int(centers[i, 1])))\n"
        "        x_mix[i, :, y1:y2, x1:x2] = x[perm[i], :, y1:y2, x1:x2]\n"
        "        lam_adj[i] = 1 - (y2 - y1) * (x2 - x1) / (H * W)\n"
        "    return x_mix, y, y[perm], lam_adj\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests (non-square images, clipped boxes, float64).
WRONG_ANSWERS = {
    "rand_bbox": [
        ("def rand_bbox(H, W, lam, center):\n"
         "    h, w = int(H * (1 - lam)), int(W * (1 - lam))  # side proportional to 1 - lam, not its root\n"
         "    cy, cx = center\n"
         "    return max(cy - h // 2, 0), min(cy - h // 2 + h, H), max(cx - w // 2, 0), min(cx - w // 2 + w, W)\n"),
        ("import math\n\n"
         "def rand_bbox(H, W, lam, center):\n"
         "    r = math.sqrt(1 - lam)\n"
         "    h, w = int(W * r), int(H * r)  # height and width swapped: only right for square images\n"
         "    cy, cx = center\n"
         "    return max(cy - h // 2, 0), min(cy - h // 2 + h, H), max(cx - w // 2, 0), min(cx - w // 2 + w, W)\n"),
    ],
    "cutmix": [
        ("def cutmix(x, y, lam, perm, center):\n"
         "    y1, y2, x1, x2 = rand_bbox(x.shape[2], x.shape[3], lam, center)\n"
         "    x_mix = x.clone()\n"
         "    x_mix[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]\n"
         "    return x_mix, y, y[perm], lam  # lambda not corrected to the pasted area\n"),
        ("import math\n\n"
         "def cutmix(x, y, lam, perm, center):\n"
         "    H, W = x.shape[2], x.shape[3]\n"
         "    r = math.sqrt(1 - lam)\n"
         "    h, w = int(H * r), int(W * r)\n"
         "    top, left = center[0] - h // 2, center[1] - w // 2\n"
         "    x_mix = x.clone()\n"
         "    y1, y2, x1, x2 = max(top, 0), min(top + h, H), max(left, 0), min(left + w, W)\n"
         "    x_mix[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]\n"
         "    return x_mix, y, y[perm], 1 - h * w / (H * W)  # area of the box before clipping\n"),
    ],
    "cutmix_per_sample": [
        ("def cutmix_per_sample(x, y, lam, perm, centers):\n"
         "    c = (int(centers[0, 0]), int(centers[0, 1]))\n"
         "    y1, y2, x1, x2 = rand_bbox(x.shape[2], x.shape[3], float(lam[0]), c)  # one box for all\n"
         "    x_mix = x.clone()\n"
         "    x_mix[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]\n"
         "    frac = 1 - (y2 - y1) * (x2 - x1) / (x.shape[2] * x.shape[3])\n"
         "    return x_mix, y, y[perm], torch.full((x.shape[0],), frac, dtype=x.dtype)\n"),
        ("def cutmix_per_sample(x, y, lam, perm, centers):\n"
         "    H, W = x.shape[-2:]\n"
         "    r = torch.sqrt(1 - lam)\n"
         "    h, w = (H * r).long(), (W * r).long()\n"
         "    y1, x1 = (centers[:, 0] - h // 2).clamp(0, H), (centers[:, 1] - w // 2).clamp(0, W)\n"
         "    y2, x2 = (centers[:, 0] - h // 2 + h).clamp(0, H), (centers[:, 1] - w // 2 + w).clamp(0, W)\n"
         "    i, j = torch.arange(H).view(1, 1, H, 1), torch.arange(W).view(1, 1, 1, W)\n"
         "    box = lambda t: t.view(-1, 1, 1, 1)\n"
         "    inside = (i >= box(y1)) & (i < box(y2)) & (j >= box(x1)) & (j < box(x2))\n"
         "    lam_adj = 1 - ((y2 - y1) * (x2 - x1)).float() / (H * W)  # always float32\n"
         "    return torch.where(inside, x[perm], x), y, y[perm], lam_adj\n"),
    ],
}


def _random_setting(rng: np.random.Generator) -> tuple[int, int, float, tuple[int, int]]:
    H, W = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    lam = float(rng.choice([rng.random(), 0.0, 1.0, rng.random() ** 4]))
    return H, W, lam, (int(rng.integers(0, H)), int(rng.integers(0, W)))


def _two_tone(b: int, c: int, H: int, W: int, dtype=torch.float32) -> torch.Tensor:
    """Image i is filled with the value i + 1, so every pixel tells which image it came from."""
    return (torch.arange(1, b + 1, dtype=dtype).view(b, 1, 1, 1)).expand(b, c, H, W).clone()


# ----------------------------------------------------------------------------- rand_bbox

def test_rand_bbox_known_answers():
    assert cm.rand_bbox(8, 8, 0.75, (4, 4)) == (2, 6, 2, 6)     # a 4×4 box: √(1 − 0.75) · 8 = 4
    assert cm.rand_bbox(8, 8, 0.75, (0, 0)) == (0, 2, 0, 2)     # clipped at the top-left corner
    assert cm.rand_bbox(8, 8, 0.75, (7, 7)) == (5, 8, 5, 8)     # and at the bottom-right
    assert cm.rand_bbox(10, 6, 0.75, (5, 2)) == (3, 8, 1, 4)   # non-square: 5 rows (10·0.5), 3 columns (6·0.5)
    assert cm.rand_bbox(8, 8, 0.0, (4, 4)) == (0, 8, 0, 8)      # λ = 0: the whole image
    y1, y2, x1, x2 = cm.rand_bbox(8, 8, 1.0, (3, 5))
    assert y1 == y2 and x1 == x2                                # λ = 1: an empty box


def test_rand_bbox_returns_python_ints_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(300):
        H, W, lam, c = _random_setting(rng)
        box = cm.rand_bbox(H, W, lam, c)
        assert all(type(v) is int for v in box)
        y1, y2, x1, x2 = box
        assert 0 <= y1 <= y2 <= H and 0 <= x1 <= x2 <= W


def test_unclipped_box_has_the_paper_size():
    """Away from the border the box has ⌊H√(1−λ)⌋ × ⌊W√(1−λ)⌋ pixels, i.e. about a 1 − λ share."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        H, W, lam = int(rng.integers(8, 64)), int(rng.integers(8, 64)), float(rng.random())
        y1, y2, x1, x2 = cm.rand_bbox(H, W, lam, (H // 2, W // 2))
        r = math.sqrt(1 - lam)
        assert (y2 - y1, x2 - x1) == (math.floor(H * r), math.floor(W * r))
        assert (y2 - y1) * (x2 - x1) <= (1 - lam) * H * W + 1e-9


def test_rand_bboxes_matches_rand_bbox():
    g = torch.Generator().manual_seed(2)
    H, W = 13, 7
    lam = torch.rand(50, generator=g, dtype=torch.float64)
    centers = torch.stack([torch.randint(0, H, (50,), generator=g), torch.randint(0, W, (50,), generator=g)], 1)
    boxes = cm.rand_bboxes(H, W, lam, centers)
    assert boxes.shape == (50, 4) and boxes.dtype == torch.int64
    for i in range(50):
        assert tuple(boxes[i].tolist()) == cm.rand_bbox(H, W, lam[i].item(), tuple(centers[i].tolist()))


# ----------------------------------------------------------------------------- cutmix: the corrected λ

def test_corrected_lambda_is_the_unpasted_pixel_fraction():
    """For any box (clipped at the border or not, square image or not) λ_adjusted is exactly the
    fraction of pixels of x_mix that still come from x."""
    rng = np.random.default_rng(3)
    clipped = 0
    for _ in range(400):
        H, W, lam, c = _random_setting(rng)
        x = _two_tone(3, 2, H, W)
        perm = torch.tensor([1, 2, 0])
        x_mix, _, _, lam_adj = cm.cutmix(x, torch.arange(3), lam, perm, c)
        own = (x_mix == x).all(dim=1).double().mean(dim=(1, 2))     # per image: pixels still its own
        assert isinstance(lam_adj, float)
        assert torch.allclose(own, torch.full_like(own, lam_adj), atol=1e-12), (H, W, lam, c, lam_adj, own)
        assert torch.equal(x_mix != x, (x_mix == x[perm]) & (x_mix != x))   # other pixels come from the partner
        y1, y2, x1, x2 = cm.rand_bbox(H, W, lam, c)
        r = math.sqrt(1 - lam)
        clipped += (y2 - y1) * (x2 - x1) < math.floor(H * r) * math.floor(W * r)
        assert lam_adj >= lam - 1e-12                            # clipping and rounding only shrink the box
    assert clipped > 50                                          # the sample did exercise clipped boxes


def test_lambda_one_changes_nothing():
    x = torch.randn(5, 3, 9, 6)
    y = torch.arange(5)
    for c in [(0, 0), (4, 3), (8, 5)]:
        x_mix, y_a, y_b, lam = cm.cutmix(x, y, 1.0, torch.tensor([4, 3, 2, 1, 0]), c)
        assert torch.equal(x_mix, x) and lam == 1.0 and torch.equal(y_a, y)
    x_mix, _, _, lam = cm.cutmix_per_sample(x, y, torch.ones(5), torch.tensor([4, 3, 2, 1, 0]),
                                            torch.tensor([[0, 0], [4, 3], [8, 5], [1, 1], [2, 2]]))
    assert torch.equal(x_mix, x) and torch.equal(lam, torch.ones(5))
    x_mix, *_, lam = mixup(x, y, 1.0, torch.tensor([4, 3, 2, 1, 0]))
    assert torch.equal(x_mix, x) and lam == 1.0


def test_cutmix_labels_and_partner():
    x = _two_tone(4, 1, 8, 8)
    y = torch.tensor([7, 1, 3, 5])
    perm = torch.tensor([2, 0, 3, 1])
    x_orig = x.clone()
    x_mix, y_a, y_b, lam = cm.cutmix(x, y, 0.75, perm, (4, 4))
    assert torch.equal(x, x_orig)                                # the input is not modified
    assert torch.equal(y_a, y) and torch.equal(y_b, y[perm])
    assert lam == 0.75
    for i in range(4):                                           # the box of image i holds image perm[i]
        assert torch.all(x_mix[i, :, 2:6, 2:6] == perm[i] + 1)
        assert (x_mix[i] == i + 1).sum() == 48


def test_labels_mix_in_proportion():
    """The mixed loss is the cross-entropy against the soft label λ·onehot(y_a) + (1 − λ)·onehot(y_b)."""
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    perm = torch.randperm(16, generator=g)
    x = torch.rand(16, 1, 8, 5, generator=g)
    _, y_a, y_b, lam = cm.cutmix(x, y, 0.3, perm, (6, 1))
    soft = lam * F.one_hot(y_a, 10).float() + (1 - lam) * F.one_hot(y_b, 10).float()
    torch.testing.assert_close(mixed_cross_entropy(logits, MixedTarget(y_a, y_b, lam)), F.cross_entropy(logits, soft))
    # one λ per image
    lam_t = torch.rand(16, generator=g, dtype=torch.float64)
    centers = torch.stack([torch.randint(0, 8, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)], 1)
    _, y_a, y_b, lam_adj = cm.cutmix_per_sample(x, y, lam_t, perm, centers)
    soft = lam_adj[:, None] * F.one_hot(y_a, 10).float() + (1 - lam_adj[:, None]) * F.one_hot(y_b, 10).float()
    got = mixed_cross_entropy(logits, MixedTarget(y_a, y_b, lam_adj))
    torch.testing.assert_close(got, F.cross_entropy(logits, soft))
    # plain labels: plain cross-entropy
    torch.testing.assert_close(mixed_cross_entropy(logits, y), F.cross_entropy(logits, y))


def test_cutmix_per_sample_matches_a_loop():
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(12, 3, 10, 7, generator=g, dtype=dtype)
        y = torch.randint(0, 4, (12,), generator=g)
        lam = torch.rand(12, generator=g, dtype=torch.float64)
        perm = torch.randperm(12, generator=g)
        centers = torch.stack([torch.randint(0, 10, (12,), generator=g), torch.randint(0, 7, (12,), generator=g)], 1)
        x_mix, y_a, y_b, lam_adj = cm.cutmix_per_sample(x, y, lam, perm, centers)
        assert lam_adj.dtype == dtype and lam_adj.shape == (12,)
        for i in range(12):
            y1, y2, x1, x2 = cm.rand_bbox(10, 7, lam[i].item(), tuple(centers[i].tolist()))
            want = x[i].clone()
            want[:, y1:y2, x1:x2] = x[perm[i], :, y1:y2, x1:x2]
            assert torch.equal(x_mix[i], want)
            assert lam_adj[i].item() == pytest.approx(1 - (y2 - y1) * (x2 - x1) / 70)
        assert torch.equal(y_b, y[perm])


def test_identity_partner_leaves_images_unchanged():
    x = torch.randn(3, 2, 6, 6)
    x_mix, y_a, y_b, lam = cm.cutmix(x, torch.arange(3), 0.4, torch.arange(3), (3, 3))
    assert torch.equal(x_mix, x) and torch.equal(y_a, y_b) and lam < 1


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("H,W", [(0, 8), (8, -1), (8.0, 8), (True, 8)])
def test_bad_image_size(H, W):
    with pytest.raises(ValueError, match="H|W"):
        cm.rand_bbox(H, W, 0.5, (0, 0))


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_bad_lambda_value(lam):
    with pytest.raises(ValueError, match="lam"):
        cm.rand_bbox(8, 8, lam, (0, 0))
    with pytest.raises(ValueError, match="lam"):
        mixup(torch.rand(2, 1, 4, 4), torch.arange(2), lam, torch.arange(2))


def test_bad_lambda_type():
    with pytest.raises(TypeError, match="lam"):
        cm.rand_bbox(8, 8, "0.5", (0, 0))
    with pytest.raises(TypeError, match="lam"):
        mixup(torch.rand(2, 1, 4, 4), torch.arange(2), "0.5", torch.arange(2))


@pytest.mark.parametrize("center", [(8, 0), (0, 8), (-1, 2), (1,), (1.5, 2)])
def test_bad_center(center):
    with pytest.raises(ValueError, match="center"):
        cm.rand_bbox(8, 8, 0.5, center)


def test_bad_batch():
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match="perm"):
        cm.cutmix(x, y, 0.5, torch.tensor([0, 0, 1, 2]), (1, 1))
    with pytest.raises(ValueError, match="perm"):
        cm.cutmix(x, y, 0.5, torch.arange(3), (1, 1))
    with pytest.raises(TypeError, match="perm"):
        cm.cutmix(x, y, 0.5, [0, 1, 2, 3], (1, 1))
    with pytest.raises(ValueError, match="y"):
        cm.cutmix(x, torch.arange(3), 0.5, torch.arange(4), (1, 1))
    with pytest.raises(ValueError, match="x"):
        cm.cutmix(torch.rand(4, 8, 8), y, 0.5, torch.arange(4), (1, 1))
    with pytest.raises(TypeError, match="x"):
        cm.cutmix(torch.zeros(4, 1, 8, 8, dtype=torch.long), y, 0.5, torch.arange(4), (1, 1))
    with pytest.raises(ValueError, match="lam"):
        cm.cutmix_per_sample(x, y, torch.rand(3), torch.arange(4), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="beta"):
        cm.CutMix(beta=0.0)
    with pytest.raises(ValueError, match="prob"):
        cm.CutMix(prob=1.5)


# ----------------------------------------------------------------------------- sampling and the augmenter

def test_sample_cutmix_distribution():
    rng = np.random.default_rng(6)
    lam, perm, centers = cm.sample_cutmix(20000, 8, 5, 1.0, per_sample=True, rng=rng)
    assert lam.shape == (20000,) and centers.shape == (20000, 2)
    assert abs(lam.mean().item() - 0.5) < 0.01 and abs(lam.var().item() - 1 / 12) < 0.005   # Beta(1, 1) = U(0, 1)
    assert centers[:, 0].min() == 0 and centers[:, 0].max() == 7 and centers[:, 1].max() == 4
    assert torch.equal(perm.sort().values, torch.arange(20000))
    lam, perm, center = cm.sample_cutmix(6, 8, 5, 1.0, rng=rng)
    assert isinstance(lam, float) and center.shape == (2,) and perm.shape == (6,)


def test_cutmix_augmenter_probability_and_reproducibility():
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    assert cm.CutMix(prob=0.0)(x, y)[1] is y
    a = cm.CutMix(prob=1.0, seed=3)(x, y)
    b = cm.CutMix(prob=1.0, seed=3)(x, y)
    assert isinstance(a[1], MixedTarget) and torch.equal(a[0], b[0]) and a[1].lam == b[1].lam
    mixed = sum(isinstance(cm.CutMix(prob=0.5, seed=s)(x, y)[1], MixedTarget) for s in range(200))
    assert 70 < mixed < 130
    per = cm.CutMix(prob=1.0, per_sample=True, seed=0)(x, y)[1]
    assert per.lam.shape == (8,)


# ----------------------------------------------------------------------------- the baselines

def test_mixup_is_a_convex_combination():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 3, 4, 5, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    perm = torch.randperm(6, generator=g)
    x_mix, y_a, y_b, lam = mixup(x, y, 0.3, perm)
    torch.testing.assert_close(x_mix, 0.3 * x + 0.7 * x[perm])
    assert torch.equal(y_a, y) and torch.equal(y_b, y[perm]) and lam == 0.3
    assert isinstance(Mixup(0.2, seed=1)(x, y)[1], MixedTarget)


def test_cutout_zeroes_a_clipped_square():
    x = torch.ones(3, 2, 8, 6)
    out = cutout(x, 4, torch.tensor([[4, 3], [0, 0], [7, 5]]))
    assert torch.equal(x, torch.ones(3, 2, 8, 6))                          # not in place
    assert (out[0] == 0).all(0).sum() == 16 and (out[0, :, 2:6, 1:5] == 0).all()
    assert (out[1] == 0).all(0).sum() == 4 and (out[1, :, 0:2, 0:2] == 0).all()   # clipped at the corner
    assert (out[2] == 0).all(0).sum() == 9 and (out[2, :, 5:8, 3:6] == 0).all()   # 3×3 left at the far corner
    assert torch.equal(cutout(x, 0, torch.zeros(3, 2, dtype=torch.long)), x)
    out, y = Cutout(4, seed=0)(x, torch.arange(3))
    assert torch.equal(y, torch.arange(3)) and (out == 0).any()


def test_occlude_covers_exactly_size_squared_pixels():
    x = torch.ones(50, 1, 8, 7)
    out = occlude(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal((out == 0).sum(dim=(1, 2, 3)), torch.full((50,), 16))
    with pytest.raises(ValueError, match="size"):
        occlude(x, 8)


def test_box_mask_matches_slicing():
    boxes = torch.tensor([[0, 3, 1, 2], [2, 2, 0, 5], [0, 5, 0, 4]])
    m = box_mask(5, 4, boxes)
    assert m.shape == (3, 1, 5, 4)
    for i, (y1, y2, x1, x2) in enumerate(boxes.tolist()):
        want = torch.zeros(5, 4, dtype=torch.bool)
        want[y1:y2, x1:x2] = True
        assert torch.equal(m[i, 0], want)


def test_occlusion_sensitivity_matches_one_square_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 3))
    x, y = torch.rand(2, 1, 4, 5), torch.tensor([0, 2])
    s = occlusion_sensitivity(model, x, y, size=2, batch_size=5)          # several chunks
    assert s.shape == (2, 4, 5) and model.training                        # mode restored
    p = lambda z: model(z).softmax(-1)[torch.arange(2), y]                 # noqa: E731
    for r in range(4):
        for c in range(5):
            want = p(x) - p(cutout(x, 2, torch.tensor([[r, c], [r, c]])))
            torch.testing.assert_close(s[:, r, c], want.detach())
    coarse = occlusion_sensitivity(model, x, y, size=2, stride=2)
    assert coarse.shape == (2, 2, 3)
    torch.testing.assert_close(coarse, s[:, ::2, ::2])


# ----------------------------------------------------------------------------- training

def test_training_with_cutmix_learns():
    from layerwise.core import train
    from layerwise.data import digits
    d = digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    hist = train(model, d.train, mixed_cross_entropy, opt, epochs=4, eval_data=d.test, progress=False,
                 augment=cm.CutMix(1.0, prob=1.0, seed=0))
    assert hist.eval_acc[-1] > 0.85
    assert all(0 <= a <= 1 for a in hist.acc)
