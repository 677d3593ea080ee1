"""Tests of layerwise.layer_masking (layer masking for CNNs), plus the answers the grading tests submit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise import layer_masking as lm
from layerwise.core import ConvTrunk, SmallResNet

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "neighbor_pad": (
        "def neighbor_pad(x, keep, iterations):\n"
        "    m = keep.to(x.dtype).expand_as(x).clone()\n"
        "    out = torch.where(m > 0, x, torch.zeros_like(x))\n"
        "    for _ in range(iterations):\n"
        "        H, W = x.shape[-2:]\n"
        "        po = F.pad(out, (1, 1, 1, 1))\n"
        "        pm = F.pad(m, (1, 1, 1, 1))\n"
        "        s = sum(po[..., i:i + H, j:j + W] for i in range(3) for j in range(3))\n"
        "        n = sum(pm[..., i:i + H, j:j + W] for i in range(3) for j in range(3))\n"
        "        grow = (m == 0) & (n > 0)\n"
        "        out = torch.where(grow, s / torch.where(n > 0, n, torch.ones_like(n)), out)\n"
        "        m = torch.where(grow, torch.ones_like(m), m)\n"
        "    return out\n"),
    "propagate_mask": (
        "def propagate_mask(keep, kernel, stride, padding):\n"
        "    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel\n"
        "    sh, sw = (stride, stride) if isinstance(stride, int) else stride\n"
        "    ph, pw = (padding, padding) if isinstance(padding, int) else padding\n"
        "    k = F.pad(keep, (pw, pw, ph, ph))\n"
        "    windows = k.unfold(2, kh, sh).unfold(3, kw, sw)   # (B, 1, H', W', kh, kw)\n"
        "    return windows.amax(dim=(-1, -2))\n"),
    "masked_global_pool": (
        "def masked_global_pool(x, keep):\n"
        "    k = keep.to(x.dtype).expand_as(x)\n"
        "    num = torch.einsum('bchw,bchw->bc', torch.where(k > 0, x, torch.zeros_like(x)), k)\n"
        "    den = k.sum(dim=(-1, -2))\n"
        "    safe = torch.where(den == 0, torch.ones_like(den), den)\n"
        "    return torch.where(den == 0, torch.zeros_like(num), num / safe)\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests.
WRONG_ANSWERS = {
    "neighbor_pad": [
        ("def neighbor_pad(x, keep, iterations):\n"     # averages over all 9 cells, removed ones as 0
         "    out = x * keep\n"
         "    w = torch.ones(x.shape[1], 1, 3, 3, dtype=x.dtype) / 9\n"
         "    for _ in range(iterations):\n"
         "        out = torch.where(keep > 0, out, F.conv2d(out, w, padding=1, groups=x.shape[1]))\n"
         "    return out\n"),
        ("def neighbor_pad(x, keep, iterations):\n"     # never updates the mask: counts only the original visible cells
         "    out = x * keep\n"
         "    w = torch.ones(x.shape[1], 1, 3, 3, dtype=x.dtype)\n"
         "    n = F.conv2d(keep.expand_as(x).to(x.dtype), w, padding=1, groups=x.shape[1])\n"
         "    for _ in range(iterations):\n"
         "        s = F.conv2d(out, w, padding=1, groups=x.shape[1])\n"
         "        out = torch.where((keep == 0) & (n > 0), s / n.clamp_min(1), out)\n"
         "    return out\n"),
    ],
    "propagate_mask": [
        ("def propagate_mask(keep, kernel, stride, padding):\n"   # erosion: visible only if ALL inputs are
         "    return -F.max_pool2d(-F.pad(keep, (padding,) * 4), kernel, stride)\n"),
        ("def propagate_mask(keep, kernel, stride, padding):\n"   # always float32
         "    return F.max_pool2d(keep.float(), kernel, stride, padding)\n"),
    ],
    "masked_global_pool": [
        ("def masked_global_pool(x, keep):\n"                      # divides by H*W, not by the visible count
         "    return (x * keep).mean(dim=(2, 3))\n"),
        ("def masked_global_pool(x, keep):\n"                      # 0/0 = NaN for a fully removed image
         "    return (x * keep).sum(dim=(2, 3)) / keep.sum(dim=(2, 3))\n"),
    ],
}


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters, then eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _resnet(seed: int = 0, c: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return _random_bn(SmallResNet(c, 10, (8, 16)), seed)


def _box_keep(b: int, h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    keep = torch.ones(b, 1, h, w)
    r0, r1, c0, c1 = box
    keep[:, :, r0:r1, c0:c1] = 0
    return keep


# ----------------------------------------------------------------------------- neighbor_pad

def test_neighbor_pad_known_answer():
    x = torch.tensor([[[[1.0, 2.0, 3.0],
                        [4.0, 99.0, 6.0],
                        [7.0, 8.0, 9.0]]]])
    keep = torch.ones(1, 1, 3, 3)
    keep[0, 0, 1, 1] = 0
    out = lm.neighbor_pad(x, keep, 1)
    assert out[0, 0, 1, 1].item() == pytest.approx((1 + 2 + 3 + 4 + 6 + 7 + 8 + 9) / 8)
    torch.testing.assert_close(out * keep, x * keep)           # visible cells unchanged


def test_neighbor_pad_grows_one_ring_per_iteration():
    x = torch.zeros(1, 1, 1, 5)
    x[0, 0, 0, 0] = 4.0
    keep = torch.tensor([[[[1.0, 0.0, 0.0, 0.0, 0.0]]]])
    assert lm.neighbor_pad(x, keep, 0).tolist() == [[[[4.0, 0.0, 0.0, 0.0, 0.0]]]]
    assert lm.neighbor_pad(x, keep, 1).tolist() == [[[[4.0, 4.0, 0.0, 0.0, 0.0]]]]
    assert lm.neighbor_pad(x, keep, 3).tolist() == [[[[4.0, 4.0, 4.0, 4.0, 0.0]]]]


def test_neighbor_pad_ignores_removed_values_and_keeps_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    keep = (torch.rand(2, 1, 6, 7, generator=g) > 0.5).double()
    y = x.clone()
    y[keep.expand_as(x) == 0] = float("inf")
    a, b = lm.neighbor_pad(x, keep, 3), lm.neighbor_pad(y, keep, 3)
    assert a.dtype == torch.float64 and torch.equal(a, b)


# ----------------------------------------------------------------------------- propagate_mask

def test_propagate_mask_shapes_match_the_layer():
    keep = torch.ones(2, 1, 9, 11)
    for k, s, p in [(3, 1, 1), (3, 2, 1), (1, 1, 0), ((1, 3), (2, 1), (0, 1)), (3, 1, 2), (5, 3, 0)]:
        conv = nn.Conv2d(1, 1, k, s, p)
        assert lm.propagate_mask(keep, k, s, p).shape == conv(torch.zeros(2, 1, 9, 11)).shape


def test_propagate_mask_hole_shrinks_by_the_receptive_field():
    keep = _box_keep(1, 12, 12, (2, 10, 2, 10))               # an 8×8 hole
    after = lm.propagate_mask(keep, 3, 1, 1)
    assert (after == 0).sum().item() == 36                        # 6×6: one cell less on each side
    after = lm.propagate_mask(after, 5, 1, 2)
    assert (after == 0).sum().item() == 4                         # 2×2
    assert lm.propagate_mask(keep, 3, 1, 1).dtype == torch.float32


def test_propagate_mask_padding_is_not_visible():
    keep = torch.zeros(1, 1, 4, 4)
    assert lm.propagate_mask(keep, 3, 1, 2).sum().item() == 0     # padding larger than half the kernel is fine


# ----------------------------------------------------------------------------- masked_global_pool

def test_masked_global_pool_known_answer():
    x = torch.arange(8.0).view(1, 2, 2, 2)
    keep = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    torch.testing.assert_close(lm.masked_global_pool(x, keep), torch.tensor([[1.0, 5.0]]))
    torch.testing.assert_close(lm.masked_global_pool(x, torch.ones(1, 1, 2, 2)), x.mean((2, 3)))
    assert lm.masked_global_pool(x, torch.zeros(1, 1, 2, 2)).tolist() == [[0.0, 0.0]]


# ----------------------------------------------------------------------------- the wrapper

@pytest.mark.parametrize("make", [_resnet, lambda: _random_bn(ConvTrunk(1, (8, 16))),
                                  lambda: _random_bn(nn.Sequential(ConvTrunk(1, (8,)), nn.Linear(8, 3)))])
def test_full_mask_reproduces_the_plain_model(make):
    model = make()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(lm.LayerMasked(model)(x, torch.ones(4, 1, 8, 8)), model(x), atol=1e-6, rtol=0)
        assert torch.equal(lm.LayerMasked(model, fill="zero")(x, torch.ones(4, 8, 8, dtype=torch.bool)), model(x))


@pytest.mark.parametrize("fill", ["neighbor", "zero"])
def test_removed_pixels_cannot_influence_the_output(fill):
    model = _resnet(1, c=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g)
    keep = (torch.rand(3, 1, 8, 8, generator=g) > 0.4).float()
    wrapped = lm.LayerMasked(model, fill=fill)
    with torch.no_grad():
        ref = wrapped(x, keep)
        for junk in (1e6, -1e6):
            y = torch.where(keep > 0, x, torch.full_like(x, junk))
            assert torch.equal(wrapped(y, keep), ref)
        y = torch.where(keep > 0, x, torch.randn(x.shape, generator=g) * 100)
        assert torch.equal(wrapped(y, keep), ref)
        assert not torch.equal(ref, model(x))                      # and masking does change the output


def test_mask_shrinks_through_the_network():
    model = _random_bn(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()))
    keep = _box_keep(1, 16, 16, (2, 14, 2, 14))                # a 12×12 hole
    out = lm._MaskInterpreter(torch.fx.symbolic_trace(model), "neighbor").run(lm.Masked(torch.randn(1, 1, 16, 16), keep))
    # conv 3×3: hole 10×10 (rows 3..12); max-pool 2: windows (4,5)..(10,11) are all removed, a 4×4 hole;
    # conv 3×3: 2×2. The feature map is the plain model's size and 0 wherever the mask is.
    assert out.keep.shape == (1, 1, 8, 8) and (out.keep == 0).sum().item() == 4
    assert bool((out.x[out.keep.expand_as(out.x) == 0] == 0).all())


def test_global_pooling_by_mean_and_functional_relu():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    net = Net().eval()
    x = torch.randn(2, 1, 6, 6)
    wrapped = lm.LayerMasked(net)
    torch.testing.assert_close(wrapped(x, torch.ones(2, 1, 6, 6)), net(x))
    keep = _box_keep(2, 6, 6, (0, 3, 0, 6))
    assert wrapped(x, keep).shape == (2, 2)


def test_unsupported_layers_are_named():
    with pytest.raises(TypeError, match="LayerNorm"):
        lm.LayerMasked(nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 4, 4])))
    with pytest.raises(TypeError, match="Flatten"):
        lm.LayerMasked(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))(
            torch.randn(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    with pytest.raises(TypeError, match="padding_mode"):
        lm.LayerMasked(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
                                     nn.AdaptiveAvgPool2d(1)))(torch.randn(1, 1, 4, 4), torch.ones(1, 1, 4, 4))


def test_bad_input_is_rejected():
    model = _resnet()
    wrapped = lm.LayerMasked(model)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match="model"):
        lm.LayerMasked(lambda t: t)
    with pytest.raises(ValueError, match="fill"):
        lm.LayerMasked(model, fill="grey")
    with pytest.raises(ValueError, match="keep"):
        wrapped(x, torch.ones(2, 1, 8, 7))
    with pytest.raises(ValueError, match="keep"):
        wrapped(x, torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(TypeError, match="keep"):
        wrapped(x, [[1.0]])
    with pytest.raises(TypeError, match="x"):
        wrapped(x.long(), torch.ones(2, 1, 8, 8))
    model.train()
    with pytest.raises(ValueError, match="eval"):
        wrapped(x, torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="iterations"):
        lm.neighbor_pad(x, torch.ones(2, 1, 8, 8), -1)
    with pytest.raises(ValueError, match="kernel"):
        lm.propagate_mask(torch.ones(2, 1, 8, 8), 0, 1, 0)
    with pytest.raises(ValueError, match="padding"):
        lm.propagate_mask(torch.ones(2, 1, 8, 8), 3, 1, -1)
    with pytest.raises(TypeError, match="keep"):
        lm.masked_global_pool(x, torch.ones(2, 1, 8, 8, dtype=torch.long))


# ----------------------------------------------------------------------------- experiment helpers

def test_segments_removal_and_fills():
    seg = lm.patch_segments(4, 6, 2)
    assert seg.shape == (4, 6) and seg.max().item() == 5 and seg[1, 3].item() == 1 and seg[2, 0].item() == 3
    removed = lm.random_removal(50, 6, 0.5, generator=torch.Generator().manual_seed(0))
    assert removed.shape == (50, 6) and bool((removed.sum(1) == 3).all())
    keep = lm.keep_from_segments(seg, removed)
    assert keep.shape == (50, 1, 4, 6) and keep.mean().item() == 0.5
    x = torch.rand(50, 3, 4, 6)
    grey = lm.fill_removed(x, keep, torch.tensor([0.5, 0.5, 0.5]))
    assert bool((grey[keep.expand_as(x) == 0] == 0.5).all()) and torch.equal(grey * keep, x * keep)
    mean = lm.fill_removed(x, keep, "mean")
    torch.testing.assert_close(mean[0, :, ~keep[0, 0].bool()][:, 0], x[0].mean((1, 2)))
    with pytest.raises(ValueError, match="fraction"):
        lm.random_removal(2, 6, 1.5)
    with pytest.raises(ValueError, match="patch"):
        lm.patch_segments(5, 6, 2)


def test_missingness_metrics():
    labels = torch.tensor([0, 1, 2, 3])
    m = lm.missingness_metrics(torch.tensor([0, 0, 0, 0]), labels, labels, 4)
    assert m["accuracy"] == 0.25 and m["unchanged"] == 0.25 and m["entropy"] == 0.0
    m = lm.missingness_metrics(labels, labels, labels, 4)
    assert m["accuracy"] == 1.0 and m["entropy"] == pytest.approx(np.log(4))


def test_lime_recovers_a_linear_model_and_agreement():
    g = torch.Generator().manual_seed(0)
    z = lm.lime_perturbations(400, 4, generator=g)
    assert bool(z[0].all())
    truth = torch.tensor([0.5, 0.0, 0.2, 0.0], dtype=torch.float64)
    w = lm.lime_kernel_weights(z)
    assert w[0].item() == pytest.approx(1.0) and bool((w <= 1).all())
    scores = lm.lime_scores(z, z.double() @ truth, w, alpha=1e-6)
    np.testing.assert_allclose(scores, truth.numpy(), atol=1e-4)
    seg = lm.patch_segments(4, 4, 2)
    obj = torch.zeros(4, 4)
    obj[:2, :2] = 1                                                # the object fills segment 0
    assert lm.segment_agreement(np.array([1.0, -1 / 3, -1 / 3, -1 / 3]), seg, obj) == pytest.approx(1.0)
    assert lm.segment_agreement(np.array([-1.0, 1 / 3, 1 / 3, 1 / 3]), seg, obj) == pytest.approx(-1.0)


def test_masks_trace_starts_at_the_input_and_grows():
    model = _resnet()
    keep = _box_keep(1, 8, 8, (2, 6, 2, 6))
    trace = lm.LayerMasked(model).masks(torch.randn(1, 1, 8, 8), keep)
    names = list(trace)
    assert names[0] == "input" and torch.equal(trace["input"], keep)
    assert (trace[names[1]] == 0).sum().item() == 4               # the 3×3 stem leaves a 2×2 hole
    assert trace[names[-1]].shape[-2:] == (4, 4)                  # after the max-pool
