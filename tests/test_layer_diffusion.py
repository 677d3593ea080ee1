"""Tests of layerwise.layer_diffusion (LayerDiffuse), plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from layerwise import layer_diffusion as ld

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "pad_rgb": (
        "def pad_rgb(rgba, iterations):\n"
        "    h, w = rgba.shape[-2:]\n"
        "    known = rgba[:, 3:] > 0\n"
        "    col = torch.where(known, rgba[:, :3], torch.zeros_like(rgba[:, :3]))\n"
        "    for _ in range(iterations):\n"
        "        k = known.to(rgba.dtype)\n"
        "        cp, kp = F.pad(col * k, (1, 1, 1, 1)), F.pad(k, (1, 1, 1, 1))\n"
        "        s = sum(cp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3))\n"
        "        n = sum(kp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3))\n"
        "        new = (~known) & (n > 0)\n"
        "        col = torch.where(new, s / torch.where(n > 0, n, torch.ones_like(n)), col)\n"
        "        known = known | new\n"
        "    return col\n"),
    "reconstruction_loss": (
        "def reconstruction_loss(pred_rgba, target_rgba):\n"
        "    a = target_rgba[:, 3]\n"
        "    alpha_term = F.mse_loss(pred_rgba[:, 3], a)\n"
        "    weights = a.unsqueeze(1).expand(-1, 3, -1, -1)\n"
        "    sq = (pred_rgba[:, :3] - target_rgba[:, :3]) ** 2\n"
        "    if weights.sum() > 0:\n"
        "        return alpha_term + (weights * sq).sum() / weights.sum()\n"
        "    return alpha_term\n"),
    "alpha_iou": (
        "def alpha_iou(pred_alpha, target_alpha, threshold=0.5):\n"
        "    scores = []\n"
        "    for p, t in zip(pred_alpha, target_alpha):\n"
        "        p, t = p > threshold, t > threshold\n"
        "        union = (p | t).sum().item()\n"
        "        scores.append(1.0 if union == 0 else (p & t).sum().item() / union)\n"
        "    return sum(scores) / len(scores)\n"),
}
# Plausible mistakes: each must lose its item's points. All but the first of each pass the visible test
# and are caught only by the hidden tests (soft alpha, several images, an empty mask, float64).
WRONG_ANSWERS = {
    "pad_rgb": [
        ("def pad_rgb(rgba, iterations):\n"
         "    col = rgba[:, :3] * (rgba[:, 3:] > 0)\n"
         "    box = torch.ones(3, 1, 3, 3, dtype=rgba.dtype) / 9\n"
         "    for _ in range(iterations):\n"
         "        col = F.conv2d(col, box, padding=1, groups=3)  # blurs every pixel, visible ones too\n"
         "    return col\n"),
        ("def pad_rgb(rgba, iterations):\n"
         "    known = (rgba[:, 3:] > 0).float()  # always float32\n"
         "    col = torch.where(known > 0, rgba[:, :3], torch.zeros_like(rgba[:, :3])).float()\n"
         "    box = torch.ones(4, 1, 3, 3)\n"
         "    for _ in range(iterations):\n"
         "        s = F.conv2d(torch.cat([col, known], 1), box, padding=1, groups=4)\n"
         "        grow = (known == 0) & (s[:, 3:] > 0)\n"
         "        col = torch.where(grow, s[:, :3] / s[:, 3:].clamp_min(1), col)\n"
         "        known = torch.where(grow, torch.ones_like(known), known)\n"
         "    return col\n"),
        ("def pad_rgb(rgba, iterations):\n"
         "    known = (rgba[:, 3:] >= 0.5).to(rgba.dtype)  # 'visible' taken as alpha >= 0.5\n"
         "    col = torch.where(known > 0, rgba[:, :3], torch.zeros_like(rgba[:, :3]))\n"
         "    box = torch.ones(4, 1, 3, 3, dtype=rgba.dtype)\n"
         "    for _ in range(iterations):\n"
         "        s = F.conv2d(torch.cat([col, known], 1), box, padding=1, groups=4)\n"
         "        grow = (known == 0) & (s[:, 3:] > 0)\n"
         "        col = torch.where(grow, s[:, :3] / s[:, 3:].clamp_min(1), col)\n"
         "        known = torch.where(grow, torch.ones_like(known), known)\n"
         "    return col\n"),
    ],
    "reconstruction_loss": [
        ("def reconstruction_loss(pred_rgba, target_rgba):\n"
         "    return F.mse_loss(pred_rgba, target_rgba)  # colour counted where the layer is invisible\n"),
        ("def reconstruction_loss(pred_rgba, target_rgba):\n"
         "    a = target_rgba[:, 3:]\n"
         "    alpha_term = ((pred_rgba[:, 3:] - a) ** 2).mean()\n"
         "    per_image = (a * (pred_rgba[:, :3] - target_rgba[:, :3]) ** 2).sum((1, 2, 3)) / (3 * a.sum((1, 2, 3)))\n"
         "    return alpha_term + per_image.mean()  # normalised per image, not over the batch\n"),
        ("def reconstruction_loss(pred_rgba, target_rgba):\n"
         "    a = target_rgba[:, 3:]\n"
         "    alpha_term = ((pred_rgba[:, 3:] - a) ** 2).mean()\n"
         "    return alpha_term + (a * (pred_rgba[:, :3] - target_rgba[:, :3]) ** 2).sum() / (3 * a.sum())  # 0/0\n"),
    ],
    "alpha_iou": [
        ("def alpha_iou(pred_alpha, target_alpha, threshold=0.5):\n"
         "    p, t = pred_alpha > threshold, target_alpha > threshold\n"
         "    return ((p & t).sum() / (p | t).sum()).item()  # one IoU over the whole batch\n"),
        ("def alpha_iou(pred_alpha, target_alpha, threshold=0.5):\n"
         "    p, t = pred_alpha >= threshold, target_alpha >= threshold  # >= instead of >\n"
         "    p, t = p.flatten(1), t.flatten(1)\n"
         "    union = (p | t).sum(1)\n"
         "    iou = torch.where(union > 0, (p & t).sum(1) / union.clamp_min(1), torch.ones(len(union)))\n"
         "    return iou.mean().item()\n"),
        ("def alpha_iou(pred_alpha, target_alpha, threshold=0.5):\n"
         "    p, t = (pred_alpha > threshold).flatten(1), (target_alpha > threshold).flatten(1)\n"
         "    return ((p & t).sum(1) / (p | t).sum(1)).mean().item()  # NaN when both masks are empty\n"),
    ],
}


def _rgba(b=2, h=8, w=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 4, h, w, generator=g, dtype=dtype)
    x[:, 3] = torch.where(x[:, 3] < 0.5, torch.zeros_like(x[:, 3]), x[:, 3])      # half transparent
    return x


# ----------------------------------------------------------------------------- pad_rgb

def test_pad_rgb_known_small_case():
    rgba = torch.zeros(1, 4, 3, 4)
    rgba[0, :3, 1, 1] = torch.tensor([1.0, 0.0, 0.0])
    rgba[0, 3, 1, 1] = 0.2                                # red, barely visible
    rgba[0, :3, 1, 3] = torch.tensor([0.0, 0.0, 1.0])
    rgba[0, 3, 1, 3] = 1.0                                # blue, opaque
    out = ld.pad_rgb(rgba, 1)
    assert out.shape == (1, 3, 3, 4)
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([1.0, 0.0, 0.0]))    # visible: unchanged
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))    # only red nearby
    torch.testing.assert_close(out[0, :, 1, 2], torch.tensor([0.5, 0.0, 0.5]))    # both neighbours
    torch.testing.assert_close(out[0, :, 2, 3], torch.tensor([0.0, 0.0, 1.0]))
    # two steps: column 0 was already filled; nothing is left unknown on a 3×4 canvas
    out2 = ld.pad_rgb(rgba, 2)
    torch.testing.assert_close(out2, out)                 # every pixel was reached in one step


def test_pad_rgb_keeps_visible_pixels_and_ignores_stored_colour():
    rgba = _rgba(3, 10, 12, seed=1)
    visible = rgba[:, 3:] > 0
    garbage = rgba.clone()
    garbage[:, :3] = torch.where(visible, rgba[:, :3], torch.rand_like(rgba[:, :3]) * 5)
    for it in (0, 1, 4):
        out = ld.pad_rgb(rgba, it)
        assert torch.equal(torch.where(visible, out, torch.zeros_like(out)),
                           torch.where(visible, rgba[:, :3], torch.zeros_like(out)))
        torch.testing.assert_close(ld.pad_rgb(garbage, it), out)


def test_pad_rgb_iterations_grow_the_filled_region():
    rgba = torch.zeros(1, 4, 9, 9)
    rgba[0, :, 4, 4] = torch.tensor([0.2, 0.4, 0.6, 1.0])
    for it in range(0, 6):
        out = ld.pad_rgb(rgba, it)
        filled = (out.abs().sum(1) > 0)[0]
        # the filled region is the (2·it+1)-wide square around the visible pixel, clipped to the canvas
        want = torch.zeros(9, 9, dtype=torch.bool)
        want[max(0, 4 - it):5 + it, max(0, 4 - it):5 + it] = True
        assert torch.equal(filled, want), it
    torch.testing.assert_close(ld.pad_rgb(rgba, 4)[0], torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 9, 9))


def test_pad_rgb_edge_cases():
    empty = torch.rand(2, 4, 5, 7)
    empty[:, 3] = 0
    assert torch.equal(ld.pad_rgb(empty, 3), torch.zeros(2, 3, 5, 7))       # nothing visible: all zero
    opaque = torch.rand(1, 4, 5, 7, dtype=torch.float64)
    opaque[:, 3] = 1
    out = ld.pad_rgb(opaque, 3)
    assert out.dtype == torch.float64 and torch.equal(out, opaque[:, :3])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_pad_rgb_bad_iterations(bad):
    with pytest.raises(ValueError, match="iterations"):
        ld.pad_rgb(_rgba(), bad)


def test_pad_rgb_bad_rgba():
    with pytest.raises(ValueError, match="rgba"):
        ld.pad_rgb(torch.rand(2, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="rgba"):
        ld.pad_rgb(torch.rand(4, 8, 8), 1)
    with pytest.raises(TypeError, match="rgba"):
        ld.pad_rgb(torch.ones(1, 4, 8, 8, dtype=torch.long), 1)


# ----------------------------------------------------------------------------- networks

@pytest.fixture(scope="module")
def ae():
    from layerwise.zoo import build
    return build("ae32").eval().requires_grad_(False)      # untrained is enough for shapes and invariants


def test_zero_init_offset_leaves_the_latent_unchanged(ae):
    torch.manual_seed(0)
    model = ld.LatentTransparency()
    rgba = _rgba(4, 32, 32, seed=2)
    off = model.offset(rgba)
    assert off.shape == (4, 4, 8, 8) and torch.equal(off, torch.zeros_like(off))
    torch.testing.assert_close(ld.adjusted_latent(ae, rgba, model.offset), ae.encode(ld.premultiplied_rgb(rgba)))
    torch.testing.assert_close(model.encode(ae, rgba), ae.encode(rgba[:, :3] * rgba[:, 3:]))


def test_transparent_decoder_shapes_range_and_zero_init_latent(ae):
    torch.manual_seed(0)
    dec = ld.TransparentDecoder()
    rgb = torch.rand(3, 3, 32, 32)
    z = torch.randn(3, 4, 8, 8)
    out = dec(rgb, z)
    assert out.shape == (3, 4, 32, 32) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(dec(rgb, torch.randn(3, 4, 8, 8)), out)   # the latent path starts at zero
    # non-square works too
    assert dec(torch.rand(2, 3, 16, 24), torch.randn(2, 4, 4, 6)).shape == (2, 4, 16, 24)
    with pytest.raises(ValueError, match="latent"):
        dec(rgb, torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match="rgb"):
        dec(torch.rand(3, 4, 32, 32), z)
    with pytest.raises(ValueError, match="x"):
        ld.OffsetEncoder()(torch.rand(2, 3, 32, 32))
    rgba = ld.decode_rgba(ae, z, dec)
    assert rgba.shape == (3, 4, 32, 32)


def test_gradients_reach_both_networks(ae):
    torch.manual_seed(0)
    model = ld.LatentTransparency()
    rgba = _rgba(2, 32, 32, seed=3)
    latent = model.encode(ae, rgba)
    decoded = ae.decode(latent)
    loss = ld.reconstruction_loss(model.decoder(decoded, latent), rgba) + ld.harmlessness_loss(decoded, rgba[:, :3])
    loss.backward()
    last = model.encoder.blocks[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0     # zero init still learns
    assert model.decoder.latent_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.parameters())


def test_training_runs_and_reduces_the_loss(ae):
    torch.manual_seed(0)
    from layerwise.data.sprite_sets import rgba_sprites
    data, _ = rgba_sprites(32, 16, seed=5, glass_prob=0.5)          # 16×16 keeps the test quick
    model, hist = ld.train_latent_transparency(ae, data, harmlessness_weight=0.1, steps=20,
                                               generator=torch.Generator().manual_seed(0), batch_size=8,
                                               progress=False)
    assert set(hist) == {"loss", "reconstruction", "harmlessness", "offset_ms"} and len(hist["loss"]) == 20
    assert all(math.isfinite(v) for v in hist["loss"])
    assert sum(hist["reconstruction"][-5:]) < sum(hist["reconstruction"][:5])
    assert model.config.harmlessness_weight == 0.1 and not model.training
    m = ld.evaluate_latent_transparency(ae, model, data[:8])
    for key in ("alpha_psnr", "alpha_iou", "rgb_psnr", "identity_psnr", "identity_psnr_no_offset", "offset_rms"):
        assert math.isfinite(m[key]), key
    with pytest.raises(ValueError, match="harmlessness_weight"):
        ld.train_latent_transparency(ae, data, harmlessness_weight=-1.0, steps=1,
                                     generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="steps"):
        ld.train_latent_transparency(ae, data, harmlessness_weight=1.0, steps=-1,
                                     generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- losses

def test_harmlessness_loss():
    x = torch.rand(2, 3, 8, 8)
    assert ld.harmlessness_loss(x, x.clone()).item() == 0.0
    torch.testing.assert_close(ld.harmlessness_loss(x + 0.1, x), torch.tensor(0.01))
    with pytest.raises(ValueError, match="reference"):
        ld.harmlessness_loss(x, torch.rand(2, 3, 8, 4))
    with pytest.raises(TypeError, match="decoded_adjusted"):
        ld.harmlessness_loss(x.numpy(), x)


def test_reconstruction_loss_known_answer():
    target = torch.zeros(1, 4, 1, 2)
    target[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 1.0])         # opaque red
    target[0, :, 0, 1] = torch.tensor([0.3, 0.3, 0.3, 0.0])         # transparent: its colour never counts
    pred = target.clone()
    assert ld.reconstruction_loss(pred, target).item() == 0.0
    pred[0, :3, 0, 1] = torch.tensor([0.9, 0.9, 0.9])                # another colour where invisible: still 0
    assert ld.reconstruction_loss(pred, target).item() == 0.0
    pred[0, :, 0, 0] = torch.tensor([0.7, 0.0, 0.0, 0.5])            # colour error 0.3 on one channel, alpha 0.5
    # alpha: (0.5² + 0) / 2 pixels; colour: 1 · 0.3² / (3 · 1)
    torch.testing.assert_close(ld.reconstruction_loss(pred, target), torch.tensor(0.125 + 0.03))


def test_reconstruction_loss_batch_normalisation_and_empty_target():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 4, 5, 6, generator=g), torch.rand(3, 4, 5, 6, generator=g)
    a = target[:, 3:]
    want = (pred[:, 3:] - a).pow(2).mean() + (a * (pred[:, :3] - target[:, :3]).pow(2)).sum() / (3 * a.sum())
    torch.testing.assert_close(ld.reconstruction_loss(pred, target), want)
    target[:, 3] = 0
    out = ld.reconstruction_loss(pred, target)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, pred[:, 3].pow(2).mean())
    assert ld.reconstruction_loss(pred.double(), target.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="target_rgba"):
        ld.reconstruction_loss(pred, target[:, :, :4])
    with pytest.raises(ValueError, match="pred_rgba"):
        ld.reconstruction_loss(pred[:, :3], target)


# ----------------------------------------------------------------------------- metrics

def test_psnr_known_answers():
    x = torch.zeros(2, 1, 4, 4)
    assert ld.psnr(x + 0.1, x) == pytest.approx(20.0)
    assert ld.alpha_psnr(x[:, 0] + 0.01, x[:, 0]) == pytest.approx(40.0)
    assert ld.identity_psnr(x, x) == pytest.approx(100.0)
    # mean of per-image PSNRs, not the PSNR of the pooled error
    y = torch.stack([x[0] + 0.1, x[1] + 0.01])
    assert ld.psnr(y, x) == pytest.approx(30.0)
    assert ld.identity_psnr(x + 5, x) == pytest.approx(0.0)               # clipped to [0, 1] first


def test_alpha_iou_known_answers():
    t = torch.zeros(1, 4, 4)
    t[0, :2] = 1.0                                                         # 8 pixels
    p = torch.zeros(1, 4, 4)
    p[0, 1:3] = 0.9                                                        # 8 pixels, 4 shared
    assert ld.alpha_iou(p, t) == pytest.approx(4 / 12)
    assert ld.alpha_iou(t, t) == 1.0
    assert ld.alpha_iou(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)) == 1.0       # both empty
    assert ld.alpha_iou(torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2)) == 0.0  # strictly greater
    assert ld.alpha_iou(torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2), threshold=0.4) == 1.0
    # the mean of per-image IoUs, not one IoU over the batch
    both = ld.alpha_iou(torch.cat([p, torch.zeros(1, 4, 4)]), torch.cat([t, torch.zeros(1, 4, 4)]))
    assert both == pytest.approx((4 / 12 + 1) / 2)
    with pytest.raises(ValueError, match="threshold"):
        ld.alpha_iou(p, t, threshold=1.5)
    with pytest.raises(ValueError, match="target_alpha"):
        ld.alpha_iou(p, t[:, :2])


def test_core_opacity():
    rgba = torch.zeros(3, 4, 10, 10)
    rgba[0, 3, 2:8, 2:8] = 1.0
    rgba[0, 3, 1, 2:8] = 0.3                                          # a soft edge does not lower it
    rgba[1, 3, 2:8, 2:8] = 0.4                                        # a faded layer reads its opacity
    torch.testing.assert_close(ld.core_opacity(rgba), torch.tensor([1.0, 0.4, 0.0]))
    with pytest.raises(ValueError, match="quantile"):
        ld.core_opacity(rgba, quantile=0.0)


def test_premultiplied_rgb():
    rgba = torch.tensor([0.5, 1.0, 0.2, 0.5]).view(1, 4, 1, 1)
    torch.testing.assert_close(ld.premultiplied_rgb(rgba).flatten(), torch.tensor([0.25, 0.5, 0.1]))


def test_alpha_is_ambiguous_in_premultiplied_colour():
    """Why the offset is needed: a half-transparent layer and an opaque darker one give the
    frozen VAE the same image."""
    from layerwise.data import sprite
    kw = dict(center=(16.0, 16.0), radius=10.0)
    glassy = sprite("circle", 32, color=(0.8, 0.4, 0.2), opacity=0.5, **kw)
    dark = sprite("circle", 32, color=(0.4, 0.2, 0.1), opacity=1.0, **kw)
    a, b = ld.premultiplied_rgb(glassy[None]), ld.premultiplied_rgb(dark[None])
    torch.testing.assert_close(a, b)
    assert (glassy[3] - dark[3]).abs().max() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- the zoo recipes

def test_zoo_recipes_are_registered():
    from layerwise.zoo import REGISTRY
    for name in ("latent_transparency_h0", "latent_transparency_h0.1", "latent_transparency_h1",
                 "latent_dit_sprites", "layer_dit_sprites"):
        assert name in REGISTRY, name
        assert "ae32" in REGISTRY[name].requires
    assert "latent_dit_sprites" in REGISTRY["layer_dit_sprites"].requires
    assert [REGISTRY[f"latent_transparency_h{w}"].config["model"]["harmlessness_weight"]
            for w in ("0", "0.1", "1")] == [0.0, 0.1, 1.0]
