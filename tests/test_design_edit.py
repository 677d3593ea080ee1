"""Tests of layerwise.design_edit (DesignEdit), plus the answers the grading tests submit."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from layerwise import design_edit as de
from layerwise.diffusion import DiTConfig, TinyDiT

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "key_masked_attention": (
        "def key_masked_attention(q, k, v, keep, mode):\n"
        "    w = keep.to(q.dtype).unsqueeze(1).unsqueeze(-1)\n"
        "    if mode == 'keys':\n"
        "        k = k * w\n"
        "    elif mode == 'queries':\n"
        "        q = q * w\n"
        "    elif mode == 'values':\n"
        "        v = v * w\n"
        "    logits = torch.einsum('bhnd,bhmd->bhnm', q, k) / math.sqrt(q.shape[-1])\n"
        "    if mode == 'hard':\n"
        "        logits = logits.masked_fill((keep == 0)[:, None, None, :], -math.inf)\n"
        "    return torch.einsum('bhnm,bhmd->bhnd', logits.softmax(-1), v)\n"),
    "latent_blend": (
        "def latent_blend(x_edit, x_src, mask):\n"
        "    m = mask.to(x_edit.dtype)\n"
        "    return x_src + m * (x_edit - x_src)\n"),
    "dilate_mask": (
        "def dilate_mask(mask, px):\n"
        "    h, w = mask.shape[-2:]\n"
        "    x = mask.to(torch.float64)\n"
        "    pad = F.pad(x.reshape(-1, h, w), (px, px, px, px))\n"
        "    out = torch.zeros_like(x.reshape(-1, h, w))\n"
        "    for dy in range(2 * px + 1):\n"
        "        for dx in range(2 * px + 1):\n"
        "            out = torch.maximum(out, pad[:, dy:dy + h, dx:dx + w])\n"
        "    out = out.reshape(mask.shape)\n"
        "    return out > 0.5 if mask.dtype == torch.bool else out.to(mask.dtype)\n"),
    "paste_layer": (
        "def paste_layer(canvas, fg, mask, dx, dy, flip=False):\n"
        "    B, C, H, W = canvas.shape\n"
        "    fg, mask = fg.clone(), mask.clone().to(canvas.dtype)\n"
        "    if flip:\n"
        "        for b in range(B):\n"
        "            cols = torch.nonzero(mask[b, 0].sum(0) > 0).flatten()\n"
        "            if len(cols):\n"
        "                a, z = int(cols.min()), int(cols.max())\n"
        "                fg[b, :, :, a:z + 1] = fg[b, :, :, a:z + 1].flip(-1)\n"
        "                mask[b, :, :, a:z + 1] = mask[b, :, :, a:z + 1].flip(-1)\n"
        "    def move(x):\n"
        "        out = torch.zeros_like(x)\n"
        "        for y in range(H):\n"
        "            for x_ in range(W):\n"
        "                ys, xs = y - dy, x_ - dx\n"
        "                if 0 <= ys < H and 0 <= xs < W:\n"
        "                    out[..., y, x_] = x[..., ys, xs]\n"
        "        return out\n"
        "    fg, mask = move(fg), move(mask)\n"
        "    return mask * fg + (1 - mask) * canvas, mask\n"),
}
# Plausible mistakes: each must lose its item's points.
WRONG_ANSWERS = {
    "key_masked_attention": [
        ("def key_masked_attention(q, k, v, keep, mode):\n"       # masks the logits of the hidden *queries*
         "    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])\n"
         "    if mode == 'hard':\n"
         "        logits = logits.masked_fill((keep == 0)[:, None, :, None], -1e4)\n"
         "    w = keep.to(q.dtype)[:, None, :, None]\n"
         "    if mode == 'keys':\n"
         "        logits = logits * w\n"
         "    if mode == 'queries':\n"
         "        logits = logits * w\n"
         "    if mode == 'values':\n"
         "        v = v * w\n"
         "    return logits.softmax(-1) @ v\n"),
        ("def key_masked_attention(q, k, v, keep, mode):\n"       # forgets the 1/sqrt(D) scale
         "    w = keep.to(q.dtype)[:, None, :, None]\n"
         "    if mode == 'keys': k = k * w\n"
         "    if mode == 'queries': q = q * w\n"
         "    if mode == 'values': v = v * w\n"
         "    logits = q @ k.transpose(-1, -2)\n"
         "    if mode == 'hard':\n"
         "        logits = logits.masked_fill((keep == 0)[:, None, None, :], float('-inf'))\n"
         "    return logits.softmax(-1) @ v\n"),
        ("def key_masked_attention(q, k, v, keep, mode):\n"       # 'keys' hides the keys hard, as in 'hard'
         "    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])\n"
         "    w = keep.to(q.dtype)[:, None, :, None]\n"
         "    if mode in ('keys', 'hard'):\n"
         "        logits = logits.masked_fill((keep == 0)[:, None, None, :], float('-inf'))\n"
         "    if mode == 'queries':\n"
         "        logits = (q * w) @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])\n"
         "    if mode == 'values':\n"
         "        v = v * w\n"
         "    return logits.softmax(-1) @ v\n"),
    ],
    "latent_blend": [
        ("def latent_blend(x_edit, x_src, mask):\n"               # the roles swapped
         "    return x_src * mask + x_edit * (1 - mask)\n"),
        ("def latent_blend(x_edit, x_src, mask):\n"               # binarises a soft mask
         "    m = (mask > 0.5).to(x_edit.dtype)\n"
         "    return x_edit * m + x_src * (1 - m)\n"),
    ],
    "dilate_mask": [
        ("def dilate_mask(mask, px):\n"                           # a window of px, not 2 px + 1
         "    x = mask.float().reshape(-1, 1, *mask.shape[-2:])\n"
         "    out = F.max_pool2d(x, px + 1, stride=1, padding=px // 2 + 0)[..., :mask.shape[-2], :mask.shape[-1]]\n"
         "    out = out.reshape(mask.shape)\n"
         "    return out > 0.5 if mask.dtype == torch.bool else out.to(mask.dtype)\n"),
        ("def dilate_mask(mask, px):\n"                           # binarises soft masks
         "    x = (mask > 0).float().reshape(-1, 1, *mask.shape[-2:])\n"
         "    out = F.max_pool2d(x, 2 * px + 1, stride=1, padding=px).reshape(mask.shape)\n"
         "    return out > 0.5 if mask.dtype == torch.bool else out.to(mask.dtype)\n"),
        ("def dilate_mask(mask, px):\n"                           # a cross (4-neighbours), not a square
         "    out = mask.clone()\n"
         "    for _ in range(px):\n"
         "        p = F.pad(out.float(), (1, 1, 1, 1))\n"
         "        out = torch.maximum(torch.maximum(p[..., 1:-1, 1:-1], p[..., :-2, 1:-1]),\n"
         "                            torch.maximum(torch.maximum(p[..., 2:, 1:-1], p[..., 1:-1, :-2]), p[..., 1:-1, 2:]))\n"
         "        out = out > 0.5 if mask.dtype == torch.bool else out.to(mask.dtype)\n"
         "    return out\n"),
    ],
    "paste_layer": [
        ("def paste_layer(canvas, fg, mask, dx, dy, flip=False):\n"   # torch.roll wraps around instead of zero fill
         "    if flip:\n"
         "        fg, mask = fg.flip(-1), mask.flip(-1)\n"
         "    fg, mask = fg.roll((dy, dx), (-2, -1)), mask.roll((dy, dx), (-2, -1)).to(canvas.dtype)\n"
         "    return canvas * (1 - mask) + fg * mask, mask\n"),
        ("def paste_layer(canvas, fg, mask, dx, dy, flip=False):\n"   # flips the whole canvas, not the object in place
         "    H, W = canvas.shape[-2:]\n"
         "    mask = mask.to(canvas.dtype)\n"
         "    if flip:\n"
         "        fg, mask = fg.flip(-1), mask.flip(-1)\n"
         "    out_fg, out_m = torch.zeros_like(fg), torch.zeros_like(mask)\n"
         "    ys, xs = slice(max(dy, 0), H + min(dy, 0)), slice(max(dx, 0), W + min(dx, 0))\n"
         "    yr, xr = slice(max(-dy, 0), H - max(dy, 0)), slice(max(-dx, 0), W - max(dx, 0))\n"
         "    out_fg[..., ys, xs], out_m[..., ys, xs] = fg[..., yr, xr], mask[..., yr, xr]\n"
         "    return canvas * (1 - out_m) + out_fg * out_m, out_m\n"),
        ("def paste_layer(canvas, fg, mask, dx, dy, flip=False):\n"   # dx and dy exchanged
         "    H, W = canvas.shape[-2:]\n"
         "    mask = mask.to(canvas.dtype)\n"
         "    out_fg, out_m = torch.zeros_like(fg), torch.zeros_like(mask)\n"
         "    ys, xs = slice(max(dx, 0), H + min(dx, 0)), slice(max(dy, 0), W + min(dy, 0))\n"
         "    yr, xr = slice(max(-dx, 0), H - max(dx, 0)), slice(max(-dy, 0), W - max(dy, 0))\n"
         "    out_fg[..., ys, xs], out_m[..., ys, xs] = fg[..., yr, xr], mask[..., yr, xr]\n"
         "    return canvas * (1 - out_m) + out_fg * out_m, out_m\n"),
    ],
}


# ----------------------------------------------------------------------------- helpers

def _qkv(b=2, h=3, n=10, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3))


def _manual(q, k, v, keep, mode):
    w = keep.to(q.dtype)[:, None, :, None]
    if mode == "keys":
        k = k * w
    if mode == "queries":
        q = q * w
    if mode == "values":
        v = v * w
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mode == "hard":
        logits = logits.masked_fill((keep == 0)[:, None, None, :], float("-inf"))
    return logits.softmax(-1) @ v


def _dit(seed=0, scale=0.05):
    torch.manual_seed(seed)
    m = TinyDiT(DiTConfig(in_channels=3, image_size=16, patch=4, dim=24, depth=2, heads=2))
    for p in m.parameters():
        p.data.normal_(0, scale)
    return m.eval()


def _scene(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = 0.3 + 0.4 * torch.rand(b, 3, size, size, generator=g)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, 5:10, 4:9] = 1.0
    img = img * (1 - mask) + mask * torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    return img, mask


def _tiny_unet(sdxl=False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=10 + 24) \
        if sdxl else {}
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                                attention_head_dim=4, norm_num_groups=8, **extra).eval()


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=16).eval()


# ----------------------------------------------------------------------------- key_masked_attention

@pytest.mark.parametrize("mode", de.MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_key_masked_attention_matches_the_formula(mode, dtype):
    q, k, v = _qkv(dtype=dtype)
    keep = torch.rand(2, 10, generator=torch.Generator().manual_seed(1), dtype=dtype)
    keep[:, :3] = 0
    keep[:, 3:5] = 1
    out = de.key_masked_attention(q, k, v, keep, mode)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.allclose(out, _manual(q, k, v, keep, mode), atol=1e-5)
    # keeping everything is plain attention, whatever the mode
    ones = torch.ones(2, 10, dtype=dtype)
    assert torch.allclose(de.key_masked_attention(q, k, v, ones, mode), F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_what_each_mode_does_to_the_hidden_tokens():
    q, k, v = _qkv(b=1, n=12)
    keep = torch.ones(1, 12)
    keep[0, :4] = 0
    v2 = v.clone()
    v2[:, :, :4] += 5.0                        # change what the hidden tokens would pass on
    hard = de.key_masked_attention(q, k, v, keep, "hard")
    assert torch.allclose(hard, de.key_masked_attention(q, k, v2, keep, "hard"), atol=1e-6), "hard: hidden keys get no weight"
    soft = de.key_masked_attention(q, k, v, keep, "keys")
    assert not torch.allclose(soft, de.key_masked_attention(q, k, v2, keep, "keys"), atol=1e-3), "soft: e^0 weight remains"
    # soft: a hidden key's logit is 0, so its weight is exp(0) / Z for every query
    logits = torch.cat([torch.zeros(1, 3, 12, 4), (q @ k[:, :, 4:].transpose(-1, -2)) / math.sqrt(8)], -1)
    assert torch.allclose(soft, logits.softmax(-1) @ v, atol=1e-5)
    # queries: a hidden query attends uniformly (the mean of the values)
    qo = de.key_masked_attention(q, k, v, keep, "queries")
    assert torch.allclose(qo[:, :, :4], v.mean(2, keepdim=True).expand(-1, -1, 4, -1), atol=1e-5)
    # values: hidden tokens pass nothing, so scaling their values changes nothing
    vo = de.key_masked_attention(q, k, v, keep, "values")
    assert torch.allclose(vo, de.key_masked_attention(q, k, v2, keep, "values"), atol=1e-6)


def test_key_masked_attention_bad_input():
    q, k, v = _qkv()
    keep = torch.ones(2, 10)
    with pytest.raises(ValueError, match="mode"):
        de.key_masked_attention(q, k, v, keep, "logits")
    with pytest.raises(ValueError, match="keep"):
        de.key_masked_attention(q, k, v, torch.ones(2, 9), "keys")
    with pytest.raises(TypeError, match="keep"):
        de.key_masked_attention(q, k, v, keep.long(), "keys")
    with pytest.raises(ValueError, match="q, k, v"):
        de.key_masked_attention(q, k[:, :, :5], v, keep, "keys")
    with pytest.raises(ValueError, match="q must"):
        de.key_masked_attention(q[0], k, v, keep, "keys")
    with pytest.raises(TypeError, match="v must"):
        de.key_masked_attention(q, k, [1, 2], keep, "keys")
    with pytest.raises(ValueError, match="every key"):
        de.key_masked_attention(q, k, v, torch.zeros(2, 10), "hard")


# ----------------------------------------------------------------------------- blend, dilate, paste, guidance

def test_latent_blend():
    a, b = torch.full((2, 4, 3, 5), 2.0), torch.full((2, 4, 3, 5), -1.0)
    m = torch.zeros(1, 1, 3, 5)
    m[..., 1, 2] = 1.0
    m[..., 0, 0] = 0.25
    out = de.latent_blend(a, b, m)
    assert out[0, 0, 1, 2] == 2.0 and out[1, 3, 2, 4] == -1.0 and torch.isclose(out[0, 0, 0, 0], torch.tensor(-0.25))
    with pytest.raises(ValueError, match="same shape"):
        de.latent_blend(a, b[:, :2], m)
    with pytest.raises(ValueError, match="mask"):
        de.latent_blend(a, b, torch.zeros(2, 2, 3, 5))
    with pytest.raises(TypeError, match="x_edit"):
        de.latent_blend(a.long(), b, m)


def test_dilate_mask():
    m = torch.zeros(1, 7, 9)
    m[0, 0, 4] = 1.0
    m[0, 5, 0] = 0.5
    out = de.dilate_mask(m, 1)
    assert out.shape == m.shape and out.dtype == m.dtype
    assert out[0, :2, 3:6].eq(1).all() and out[0, 2].sum() == 0 and out[0, 0, 2] == 0
    assert out[0, 4:7, :2].eq(0.5).all(), "soft values spread as they are; the border is treated as 0"
    b = de.dilate_mask(m > 0, 2)
    assert b.dtype == torch.bool and int(b[0].sum()) == 3 * 5 + 4 * 3
    assert torch.equal(de.dilate_mask(m, 0), m)
    with pytest.raises(ValueError, match="px"):
        de.dilate_mask(m, -1)
    with pytest.raises(TypeError, match="px"):
        de.dilate_mask(m, 1.5)
    with pytest.raises(TypeError, match="mask"):
        de.dilate_mask(m.long(), 1)
    with pytest.raises(ValueError, match="mask"):
        de.dilate_mask(torch.zeros(5), 1)


def test_paste_layer_shift_flip_and_zero_fill():
    canvas = torch.zeros(2, 1, 4, 6)
    fg = torch.arange(24.0).view(1, 1, 4, 6).expand(2, 1, 4, 6).clone()
    mask = torch.zeros(2, 1, 4, 6)
    mask[0, 0, 1, 1:4] = 1.0                     # a 1×3 object in image 0; image 1 has none
    fused, moved = de.paste_layer(canvas, fg, mask, 2, 1)
    assert moved[0, 0, 2, 3:6].eq(1).all() and moved[0].sum() == 3 and moved[1].sum() == 0
    assert torch.equal(fused[0, 0, 2, 3:6], fg[0, 0, 1, 1:4]) and fused[1].abs().sum() == 0
    flipped, m2 = de.paste_layer(canvas, fg, mask, 0, 0, flip=True)
    assert torch.equal(m2, mask) and torch.equal(flipped[0, 0, 1, 1:4], fg[0, 0, 1, 1:4].flip(-1))
    gone, m3 = de.paste_layer(canvas, fg, mask, 9, 0)
    assert m3.sum() == 0 and gone.abs().sum() == 0, "shifted off the canvas: zero fill, no wrap-around"
    with pytest.raises(TypeError, match="dx"):
        de.paste_layer(canvas, fg, mask, 1.5, 0)
    with pytest.raises(ValueError, match="mask"):
        de.paste_layer(canvas, fg, mask[:1], 1, 0)
    with pytest.raises(TypeError, match="flip"):
        de.paste_layer(canvas, fg, mask, 1, 0, flip="yes")
    with pytest.raises(ValueError, match="same shape"):
        de.paste_layer(canvas, fg[:, :, :3], mask, 1, 0)


def test_masking_guidance():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert torch.equal(de.masking_guidance(a, b, 1.0), b) and torch.equal(de.masking_guidance(a, b, 0.0), a)
    assert torch.allclose(de.masking_guidance(a, b, 7.5), torch.full_like(a, 7.5))
    with pytest.raises(ValueError, match="weight"):
        de.masking_guidance(a, b, -1.0)
    with pytest.raises(ValueError, match="match"):
        de.masking_guidance(a, b[:1], 2.0)


def test_token_keep():
    hide = torch.zeros(1, 1, 16, 16)
    hide[..., :8, :8] = 1.0
    keep = de.token_keep(hide, 16)
    assert keep.shape == (1, 16) and keep.view(4, 4)[:2, :2].eq(0).all() and keep.view(4, 4)[2:, 2:].eq(1).all()
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., :, :6] = 1.0                            # not on the 4-pixel grid: a soft boundary token
    soft, hard = de.token_keep(edge, 16), de.token_keep(edge, 16, "hard")
    assert ((soft > 0) & (soft < 1)).any() and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert bool((hard <= soft).all())
    assert de.token_keep(torch.zeros(2, 1, 8, 16), 32).shape == (2, 32)
    with pytest.raises(ValueError, match="tokens"):
        de.token_keep(hide, 15)
    with pytest.raises(ValueError, match="hide"):
        de.token_keep(hide * 2, 16)


# ----------------------------------------------------------------------------- processors

def test_dit_processor_identity_and_masking():
    model = _dit(scale=0.3).requires_grad_(False)
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 300)
    plain = model(x, t)
    state = de.KeyMask(hide=torch.zeros(2, 1, 16, 16))
    with de.install_key_masking(model, state):
        same = model(x, t)
        state.hide = torch.zeros(2, 1, 16, 16)
        state.hide[1, :, :8, :8] = 1.0
        masked = model(x, t)
    assert torch.allclose(same, plain, atol=1e-6), "an all-ones keep mask changes nothing"
    assert torch.allclose(masked[0], plain[0], atol=1e-6) and float((masked[1] - plain[1]).abs().max()) > 1e-2
    assert state.calls == 2 * len(model.blocks)
    assert all(b.attn.processor is None for b in model.blocks), "processors restored after the with block"
    assert torch.allclose(model(x, t), plain)


def test_dit_processor_hard_mask_gives_hidden_keys_no_weight():
    model = _dit()
    attn = model.blocks[0].attn
    x = torch.randn(1, 16, 24)
    hide = torch.zeros(1, 1, 16, 16)
    hide[..., :8, :8] = 1.0                           # tokens 0, 1, 4, 5 of the 4×4 grid
    hidden = torch.tensor([0, 1, 4, 5])
    x2 = x.clone()
    x2[:, hidden] += 3.0
    for mode, unchanged in (("hard", True), ("keys", False)):
        proc = de.DiTKeyMaskProcessor(de.KeyMask(hide=hide, mode=mode))
        a, b = proc(attn, x, None, None), proc(attn, x2, None, None)
        others = torch.ones(16, dtype=torch.bool)
        others[hidden] = False
        assert torch.allclose(a[:, others], b[:, others], atol=1e-5) == unchanged, mode


def test_diffusers_processor_on_a_tiny_unet():
    unet = _tiny_unet()
    x, t, ehs = torch.randn(2, 4, 8, 8), torch.tensor([50, 50]), torch.randn(2, 5, 12)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=ehs).sample
        state = de.KeyMask(hide=torch.zeros(2, 1, 8, 8))
        with de.install_key_masking(unet, state):
            same = unet(x, t, encoder_hidden_states=ehs).sample
            calls = state.calls
            state.hide[1, :, 2:6, 2:6] = 1.0
            masked = unet(x, t, encoder_hidden_states=ehs).sample
        after = unet(x, t, encoder_hidden_states=ehs).sample
    n_self = sum(1 for name in unet.attn_processors if name.endswith("attn1.processor"))
    assert calls == n_self, "only self-attention is masked; cross-attention passes through"
    assert torch.allclose(same, plain, atol=1e-5), "an all-ones keep mask changes nothing"
    assert torch.allclose(masked[0], plain[0], atol=1e-5) and not torch.allclose(masked[1], plain[1], atol=1e-4)
    assert torch.allclose(after, plain, atol=1e-6)
    assert not any(isinstance(p, de.DiffusersKeyMaskProcessor) for p in unet.attn_processors.values())


def test_diffusers_processor_masked_keys_get_no_weight():
    """One diffusers Attention module: hard masking ignores the hidden keys entirely; soft masking
    equals attention with those keys set to zero."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    h = torch.randn(1, 16, 16)                         # 16 tokens of a 4×4 layer
    hide = torch.zeros(1, 1, 8, 8)
    hide[..., :4, :4] = 1.0                            # the top-left 2×2 tokens
    hidden = torch.tensor([0, 1, 4, 5])
    others = torch.ones(16, dtype=torch.bool)
    others[hidden] = False
    h2 = h.clone()
    h2[:, hidden] += 4.0
    with torch.no_grad():
        hard = de.DiffusersKeyMaskProcessor(de.KeyMask(hide=hide, mode="hard"))
        assert torch.allclose(hard(attn, h)[:, others], hard(attn, h2)[:, others], atol=1e-5)
        soft = de.DiffusersKeyMaskProcessor(de.KeyMask(hide=hide, mode="keys"))
        q, k, v = (f(h).view(1, 16, 2, 8).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        k = k.clone()
        k[:, :, hidden] = 0
        want = attn.to_out[0](F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 16, 16))
        assert torch.allclose(soft(attn, h), want, atol=1e-5)
        plain = de.DiffusersKeyMaskProcessor(de.KeyMask(hide=None))
        from diffusers.models.attention_processor import AttnProcessor2_0
        assert torch.allclose(plain(attn, h), AttnProcessor2_0()(attn, h), atol=1e-6)


def test_processor_and_install_bad_input():
    with pytest.raises(TypeError, match="state"):
        de.DiTKeyMaskProcessor("mask")
    with pytest.raises(TypeError, match="state"):
        de.DiffusersKeyMaskProcessor(None)
    with pytest.raises(TypeError, match="model"):
        with de.install_key_masking(torch.nn.Linear(2, 2), de.KeyMask()):
            pass
    model = _dit()
    state = de.KeyMask(hide=torch.zeros(3, 1, 16, 16))
    with de.install_key_masking(model, state), pytest.raises(ValueError, match="rows"):
        model(torch.randn(2, 3, 16, 16), torch.full((2,), 10))
    with pytest.raises(ValueError, match="mode"):
        de.KeyMask(hide=torch.zeros(1, 1, 4, 4), mode="hidden").keep(16, 1, torch.float32, "cpu")


# ----------------------------------------------------------------------------- the SDXL code path, offline

def test_conditioned_unet_and_removal_in_a_latent_space():
    """What the chapter's SDXL cell runs, on a tiny random UNet with SDXL's added conditioning and a
    tiny AutoencoderKL: the processors install on the UNet and removal runs end to end."""
    unet, vae = _tiny_unet(sdxl=True), de.LatentVAE(_tiny_vae())
    denoiser = de.ConditionedUNet(unet, torch.randn(1, 5, 12),
                                  {"text_embeds": torch.randn(1, 10), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])})
    img, mask = _scene(b=2, size=16)
    with torch.no_grad():
        z = vae.encode(img)
        assert z.shape == (2, 4, 8, 8) and denoiser(z, torch.tensor([10, 10])).shape == z.shape
    out = de.remove_object(denoiser, img, mask, ae=vae, steps=4, schedule=de.SDXL_SCHEDULE, dilate=1,
                           return_details=True, progress=False)
    assert out.image.shape == img.shape and out.hole.shape == (2, 1, 8, 8)
    assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1
    assert not any(isinstance(p, de.DiffusersKeyMaskProcessor) for p in unet.attn_processors.values())
    with pytest.raises(TypeError, match="unet"):
        de.ConditionedUNet(torch.nn.Linear(2, 2), torch.randn(1, 5, 12))
    with pytest.raises(ValueError, match="one prompt"):
        de.ConditionedUNet(unet, torch.randn(2, 5, 12))
    with pytest.raises(TypeError, match="vae"):
        de.LatentVAE(torch.nn.Linear(2, 2))


def test_sdxl_parts_builds_the_conditioning_from_a_pipeline():
    unet, vae = _tiny_unet(sdxl=True), _tiny_vae()

    def encode_prompt(prompt, device=None, num_images_per_prompt=1, do_classifier_free_guidance=True):
        assert prompt == "" and not do_classifier_free_guidance
        return torch.randn(1, 5, 12), None, torch.randn(1, 10), None

    pipe = types.SimpleNamespace(unet=unet, vae=vae, encode_prompt=encode_prompt)
    denoiser, ae = de.sdxl_parts(pipe)
    assert isinstance(denoiser, de.ConditionedUNet) and isinstance(ae, de.LatentVAE)
    assert denoiser.added_cond_kwargs["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]
    with torch.no_grad():
        assert denoiser(torch.randn(1, 4, 8, 8), torch.tensor([5])).shape == (1, 4, 8, 8)
    with de.install_key_masking(pipe, de.KeyMask()):
        assert all(isinstance(p, de.DiffusersKeyMaskProcessor) for p in unet.attn_processors.values())
    with pytest.raises(TypeError, match="pipe"):
        de.sdxl_parts(types.SimpleNamespace(unet=unet))
    with pytest.raises(TypeError, match="prompt"):
        de.sdxl_parts(pipe, prompt=None)


# ----------------------------------------------------------------------------- the pipeline

def test_ddim_plan():
    plan = de.ddim_plan(25)
    assert len(plan) == 25 and plan.timesteps[0] > plan.timesteps[-1] == 0
    assert bool((plan.abar_prev[:-1] == plan.abar[1:]).all()) and float(plan.abar_prev[-1]) == 1.0
    sdxl = de.ddim_plan(50, de.SDXL_SCHEDULE)
    assert float(sdxl.abar_prev[-1]) < 1.0        # set_alpha_to_one=False, as the official code
    with pytest.raises(ValueError, match="steps"):
        de.ddim_plan(0)
    with pytest.raises(TypeError, match="schedule"):
        de.ddim_plan(10, "sdxl")


def test_inversion_of_a_zero_predictor_is_exact():
    """Untrained TinyDiT predicts ε = 0, for which DDIM inversion and sampling are exact inverses."""
    model = TinyDiT(DiTConfig(in_channels=3, image_size=16, patch=4, dim=24, depth=1, heads=2)).eval()
    img, _ = _scene()
    inv = de.invert_source(model, img, steps=8, progress=False)
    assert len(inv.inverted) == 9 and len(inv.source) == 8
    assert torch.allclose((inv.reconstruction + 1) / 2, img, atol=1e-5)
    assert torch.allclose((inv.plain_reconstruction + 1) / 2, img, atol=1e-5)
    assert torch.allclose(inv.inverted[-1], img * 2 - 1)
    with pytest.raises(ValueError, match="proximal"):
        de.invert_source(model, img, steps=2, proximal=2.0)


def test_proximal_guidance_pulls_the_source_copy_towards_the_inversion():
    model = _dit()
    img, _ = _scene()
    inv = de.invert_source(model, img, steps=8, progress=False)
    off = de.invert_source(model, img, steps=8, proximal=0.0, progress=False)
    assert torch.allclose(inv.plain_reconstruction, off.reconstruction, atol=1e-5)
    target = img * 2 - 1
    assert (inv.reconstruction - target).abs().mean() < (inv.plain_reconstruction - target).abs().mean()


def test_removal_changes_only_the_hole_and_the_modes_differ():
    model = _dit()
    img, mask = _scene()
    inv = de.invert_source(model, img, steps=6, progress=False)
    runs = {mode: de.remove_object(model, img, mask, steps=6, mode=mode, inversion=inv, blend_until=6, proximal=0.0,
                                   return_details=True, progress=False) for mode in de.MODES}
    recon = (inv.reconstruction + 1) / 2
    for mode, r in runs.items():
        out = r.image
        assert torch.allclose(out * (1 - r.hole), recon.clamp(0, 1) * (1 - r.hole), atol=1e-5), mode
        assert r.hole.sum() > mask.sum(), "the hole is the dilated mask"
    assert not torch.allclose(runs["keys"].image, runs["values"].image, atol=1e-4)
    # no masked step: every mode is the same run
    a = de.remove_object(model, img, mask, steps=6, mask_until=1, mode="keys", inversion=inv, progress=False)
    b = de.remove_object(model, img, mask, steps=6, mask_until=1, mode="queries", inversion=inv, progress=False)
    assert torch.equal(a, b)
    # guidance 1 = the masked prediction only; more guidance moves further
    g1 = de.remove_object(model, img, mask, steps=6, guidance=1.0, inversion=inv, progress=False)
    g3 = de.remove_object(model, img, mask, steps=6, guidance=3.0, inversion=inv, progress=False)
    assert not torch.allclose(g1, g3, atol=1e-4)


def test_remove_object_bad_input():
    model = _dit()
    img, mask = _scene()
    with pytest.raises(ValueError, match="empty"):
        de.remove_object(model, img, torch.zeros_like(mask), steps=2)
    with pytest.raises(ValueError, match="mask"):
        de.remove_object(model, img, mask[..., :8], steps=2)
    with pytest.raises(ValueError, match="mask"):
        de.remove_object(model, img, mask * 3, steps=2)
    with pytest.raises(ValueError, match="image"):
        de.remove_object(model, img[:, :2], mask, steps=2)
    with pytest.raises(TypeError, match="image"):
        de.remove_object(model, (img * 255).to(torch.uint8), mask, steps=2)
    with pytest.raises(ValueError, match="mode"):
        de.remove_object(model, img, mask, steps=2, mode="key")
    with pytest.raises(ValueError, match="steps"):
        de.remove_object(model, img, mask, steps=0)
    with pytest.raises(ValueError, match="mask_until"):
        de.remove_object(model, img, mask, steps=4, mask_until=5)
    with pytest.raises(ValueError, match="guidance"):
        de.remove_object(model, img, mask, steps=2, guidance=-1.0)
    with pytest.raises(ValueError, match="dilate"):
        de.remove_object(model, img, mask, steps=2, dilate=-1)
    inv = de.invert_source(model, img, steps=3, progress=False)
    with pytest.raises(ValueError, match="inversion"):
        de.remove_object(model, img, mask, steps=4, inversion=inv)
    with pytest.raises(TypeError, match="inversion"):
        de.remove_object(model, img, mask, steps=3, inversion="inv")


def test_edit_with_a_zero_predictor_is_cut_and_paste():
    """With ε = 0 every DDIM step only rescales, so fusing late and denoising gives exactly the pixel
    cut-and-paste: a known answer for the whole layer-editing pipeline."""
    model = TinyDiT(DiTConfig(in_channels=3, image_size=16, patch=4, dim=24, depth=1, heads=2)).eval()
    img, mask = _scene()
    for kw in (dict(shift=(2, -3)), dict(shift=(0, 2), flip=True), dict(scale=0.6)):
        e = de.edit_layer(model, img, mask, steps=5, progress=False, **kw)
        want = de.paste_baseline(img, img, mask, **kw)
        assert torch.allclose(e.image, want, atol=1e-5), kw
        assert e.placed.shape == mask.shape
    e = de.edit_layer(model, img, mask, shift=(1, 1), steps=5, progress=False)
    again = de.edit_layer(model, img, mask, shift=(1, 1), steps=5, removal=e.removal, progress=False)
    assert torch.allclose(again.image, e.image)
    with pytest.raises(TypeError, match="shift"):
        de.edit_layer(model, img, mask, shift=(1.5, 0), steps=5)
    with pytest.raises(ValueError, match="ignored"):
        de.edit_layer(model, img, mask, steps=5, removal=e.removal, mode="hard")
    with pytest.raises(ValueError, match="fuse_at"):
        de.edit_layer(model, img, mask, steps=5, removal=e.removal, fuse_at=5)
    with pytest.raises(ValueError, match="steps"):
        de.edit_layer(model, img, mask, steps=6, removal=e.removal)


def test_transform_layer():
    img, mask = _scene(b=1)
    same_img, same_mask = de.transform_layer(img, mask)
    assert torch.equal(same_img, img) and torch.equal(same_mask, mask)
    fi, fm = de.transform_layer(img, mask, flip=True)
    assert torch.equal(fm, mask), "a box mirrored about its own centroid stays put"
    assert torch.allclose(fi[..., 5:10, 4:9], img[..., 5:10, 4:9].flip(-1), atol=1e-5)
    _, small = de.transform_layer(img, mask, scale=0.5)
    assert 0.1 < float(small.sum() / mask.sum()) < 0.5
    with pytest.raises(ValueError, match="scale"):
        de.transform_layer(img, mask, scale=0.0)
    with pytest.raises(TypeError, match="flip"):
        de.transform_layer(img, mask, flip=None)


def test_metrics():
    a = torch.full((2, 3, 4, 4), 0.5)
    b = a.clone()
    b[0, :, 0, 0] = 0.6
    region = torch.zeros(2, 1, 4, 4)
    region[:, :, 0, 0] = 1.0
    p = de.region_psnr(b, a, region)
    assert math.isclose(float(p[0]), 20.0, abs_tol=1e-3) and math.isclose(float(p[1]), 60.0, abs_tol=1e-4)
    assert math.isclose(float(de.region_psnr(b, a)[0]), 20.0 + 10 * math.log10(16), abs_tol=1e-3)
    bg, src = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    src[..., 1:3, 1:3] = 1.0
    obj = (src[:, :1] > 0).float()
    assert float(de.residue(bg, src, bg, obj)) == 0.0 and float(de.residue(src, src, bg, obj)) == 1.0
    assert math.isclose(float(de.residue(src / 2, src, bg, obj)), 0.5)
    with pytest.raises(ValueError, match="region"):
        de.region_psnr(b, a, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="differ"):
        de.residue(bg, bg, bg, obj)
    with pytest.raises(ValueError, match="same shape"):
        de.region_psnr(b, a[:1])


def test_harmonic_fill_recovers_a_linear_gradient_and_scores():
    xs = torch.linspace(0.1, 0.9, 16)
    bg = torch.stack([xs.expand(16, 16), xs.view(16, 1).expand(16, 16), torch.full((16, 16), 0.5)])[None]
    img, mask = bg.clone(), torch.zeros(1, 1, 16, 16)
    mask[..., 5:11, 4:10] = 1.0
    img = img * (1 - mask) + mask * torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    filled = de.harmonic_fill(img, mask, iterations=400)
    assert torch.allclose(filled, bg, atol=1e-2), "a linear field is harmonic: the fill recovers it"
    assert torch.equal(filled * (1 - mask), img * (1 - mask))
    s = de.removal_scores(filled, img, bg, mask, mask)
    assert set(s) == {"hole_psnr", "outside_psnr", "residue"} and float(s["hole_psnr"][0]) > 35
    assert math.isclose(float(s["outside_psnr"][0]), 60.0, abs_tol=1e-4) and float(s["residue"][0]) < 0.02
    with pytest.raises(ValueError, match="iterations"):
        de.harmonic_fill(img, mask, iterations=-1)
    with pytest.raises(ValueError, match="hole"):
        de.harmonic_fill(img, mask[..., :8])


def test_per_image_shifts_and_take():
    model = TinyDiT(DiTConfig(in_channels=3, image_size=16, patch=4, dim=24, depth=1, heads=2)).eval()
    img, mask = _scene(b=2)
    e = de.edit_layer(model, img, mask, shift=[(0, 3), (1, -2)], steps=4, progress=False)
    assert torch.allclose(e.image, de.paste_baseline(img, img, mask, shift=[(0, 3), (1, -2)]), atol=1e-5)
    assert torch.allclose(e.image[1:], de.paste_baseline(img[1:], img[1:], mask[1:], shift=(1, -2)), atol=1e-5)
    one = e.removal.take([1])
    assert one.image.shape[0] == 1 and one.latents[0].shape[0] == 1 and one.inversion.inverted[0].shape[0] == 1
    again = de.edit_layer(model, img[1:], mask[1:], shift=(1, -2), steps=4, removal=one, progress=False)
    assert torch.allclose(again.image, e.image[1:], atol=1e-6)
    with pytest.raises(ValueError, match="shift"):
        de.edit_layer(model, img, mask, shift=[(0, 1)] * 3, steps=4, removal=e.removal)
    with pytest.raises(ValueError, match="index"):
        e.removal.take([5])


def test_hole_attention():
    model = _dit(scale=0.3)
    img, mask = _scene(b=2)
    x = img * 2 - 1
    hole = torch.zeros(2, 1, 16, 16)
    hole[..., :8, :8] = 1.0
    plain, soft, hard = (de.hole_attention(model, x, 100, hole, m) for m in (None, "keys", "hard"))
    assert plain.shape == (2,) and bool((plain > 0).all())
    assert torch.allclose(hard, torch.zeros(2), atol=1e-6), "hard masking: the hole's queries pay the hole nothing"
    assert bool((soft > 0).all()), "soft masking: e^0 weight remains on the hole's keys"
    assert all(b.attn.processor is None for b in model.blocks)
    with pytest.raises(TypeError, match="TinyDiT"):
        de.hole_attention(torch.nn.Linear(2, 2), x, 100, hole)


def test_more_bad_input():
    model = _dit()
    img, mask = _scene()
    with pytest.raises(ValueError, match="same shape"):
        de.paste_baseline(img[:1], img, mask)
    with pytest.raises(TypeError, match="shift"):
        de.paste_baseline(img, img, mask, shift="left")
    with pytest.raises(ValueError, match="fraction"):
        de.default_steps(50, 1.5)
    with pytest.raises(ValueError, match="steps"):
        de.default_steps(0, 0.8)
    with pytest.raises(ValueError, match="image"):
        de.invert_source(model, img[:, :1], steps=2)
    with pytest.raises(ValueError, match="hole"):
        de.hole_attention(model, img * 2 - 1, 10, mask[..., :4])
    with pytest.raises(ValueError, match="mode"):
        de.hole_attention(model, img * 2 - 1, 10, mask, mode="k")
    with pytest.raises(TypeError, match="index"):
        de.invert_source(model, img, steps=2, progress=False).take(3)
    with pytest.raises(ValueError, match="hole"):
        de.removal_scores(img, img, img, mask[..., :4], mask)
