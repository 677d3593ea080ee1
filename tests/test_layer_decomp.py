"""Tests of layerwise.layer_decomp (LayerDecomp) and its data, layerwise.data.decomposition, plus the
answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise import layer_decomp as ld
from layerwise.data.decomposition import SPLITS, decomposition_example, decomposition_set, effect_region
from layerwise.data.rgba import alpha_over
from layerwise.diffusion import make_scheduler, q_sample

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "x0_from_eps": (
        "def x0_from_eps(x_t, eps, abar_t):\n"
        "    a = torch.as_tensor(abar_t, dtype=x_t.dtype)\n"
        "    if a.dim() == 1:\n"
        "        a = a[(...,) + (None,) * (x_t.dim() - 1)]\n"
        "    return x_t / torch.sqrt(a) - torch.sqrt((1 - a) / a) * eps\n"),
    "recomposite": (
        "def recomposite(bg, fg_rgba):\n"
        "    rgb, alpha = fg_rgba.split([3, 1], dim=1)\n"
        "    alpha = torch.clamp(alpha, min=0.0, max=1.0)\n"
        "    return bg + alpha * (rgb - bg)\n"),
    "consistency_loss": (
        "def consistency_loss(bg_hat, fg_hat, image, reduction='mean'):\n"
        "    a = fg_hat[:, 3:].clamp(0, 1)\n"
        "    err = torch.abs(a * fg_hat[:, :3] + (1 - a) * bg_hat - image)\n"
        "    per_item = err.reshape(err.shape[0], -1).mean(dim=1)\n"
        "    if reduction == 'none':\n"
        "        return per_item\n"
        "    if reduction == 'sum':\n"
        "        return err.sum()\n"
        "    return per_item.mean()\n"),
    "masked_diffusion_loss": (
        "def masked_diffusion_loss(eps_hat_bg, eps_bg, eps_hat_fg, eps_fg, has_fg):\n"
        "    bg_err = ((eps_hat_bg - eps_bg) ** 2).reshape(-1)\n"
        "    fg_err = ((eps_hat_fg[has_fg] - eps_fg[has_fg]) ** 2).reshape(-1)\n"
        "    return torch.cat([bg_err, fg_err]).mean()\n"),
}
# Plausible mistakes: each must lose its item's points. Some fail the visible test already; the others are caught by
# the hidden tests (one ᾱ per item, alpha outside [0, 1], reductions, a NaN in a masked foreground).
WRONG_ANSWERS = {
    "x0_from_eps": [
        ("def x0_from_eps(x_t, eps, abar_t):\n"
         "    a = torch.as_tensor(abar_t, dtype=x_t.dtype)\n"
         "    if a.dim() == 1:\n"
         "        a = a.view(-1, *([1] * (x_t.dim() - 1)))\n"
         "    return (x_t - (1 - a) * eps) / a  # forgot the square roots\n"),
        ("def x0_from_eps(x_t, eps, abar_t):\n"
         "    a = torch.as_tensor(abar_t, dtype=x_t.dtype)\n"
         "    return (x_t - torch.sqrt(1 - a) * eps) / torch.sqrt(a)  # (B,) ᾱ broadcast over the last axis\n"),
        ("def x0_from_eps(x_t, eps, abar_t):\n"
         "    a = torch.as_tensor(abar_t, dtype=x_t.dtype)\n"
         "    if a.dim() == 1:\n"
         "        a = a.view(-1, *([1] * (x_t.dim() - 1)))\n"
         "    return x_t - torch.sqrt(1 - a) * eps  # forgot to divide by √ᾱ\n"),
    ],
    "recomposite": [
        ("def recomposite(bg, fg_rgba):\n"
         "    a = fg_rgba[:, 3:]\n"
         "    return fg_rgba[:, :3] + (1 - a) * bg  # treats the colour as premultiplied\n"),
        ("def recomposite(bg, fg_rgba):\n"
         "    a = fg_rgba[:, 3:]  # alpha not clipped to [0, 1]\n"
         "    return a * fg_rgba[:, :3] + (1 - a) * bg\n"),
        ("def recomposite(bg, fg_rgba):\n"
         "    a = fg_rgba[:, 3:].clamp(0, 1)\n"
         "    return (a * fg_rgba[:, :3] + (1 - a) * bg).clamp(0, 1)  # clips the colours too\n"),
    ],
    "consistency_loss": [
        ("def consistency_loss(bg_hat, fg_hat, image, reduction='mean'):\n"
         "    a = fg_hat[:, 3:].clamp(0, 1)\n"
         "    err = (a * fg_hat[:, :3] + (1 - a) * bg_hat - image) ** 2  # L2, not L1\n"
         "    if reduction == 'none':\n"
         "        return err.flatten(1).mean(1)\n"
         "    return err.sum() if reduction == 'sum' else err.mean()\n"),
        ("def consistency_loss(bg_hat, fg_hat, image, reduction='mean'):\n"
         "    a = fg_hat[:, 3:].clamp(0, 1)\n"
         "    err = (a * fg_hat[:, :3] + (1 - a) * bg_hat - image).abs()\n"
         "    if reduction == 'none':\n"
         "        return err.flatten(1).sum(1)  # per-item sum, not mean\n"
         "    return err.sum() if reduction == 'sum' else err.mean()\n"),
        ("def consistency_loss(bg_hat, fg_hat, image, reduction='mean'):\n"
         "    a = fg_hat[:, 3:].clamp(0, 1)\n"
         "    err = (a * fg_hat[:, :3] + (1 - a) * bg_hat - image).abs()\n"
         "    if reduction == 'none':\n"
         "        return err.flatten(1).mean(1)\n"
         "    return err.mean()  # 'sum' ignored\n"),
    ],
    "masked_diffusion_loss": [
        ("def masked_diffusion_loss(eps_hat_bg, eps_bg, eps_hat_fg, eps_fg, has_fg):\n"
         "    return ((eps_hat_bg - eps_bg) ** 2).mean() + ((eps_hat_fg - eps_fg) ** 2).mean()  # no masking\n"),
        ("def masked_diffusion_loss(eps_hat_bg, eps_bg, eps_hat_fg, eps_fg, has_fg):\n"
         "    m = has_fg.to(eps_fg.dtype).view(-1, 1, 1, 1)\n"
         "    sq = ((eps_hat_bg - eps_bg) ** 2).sum() + (m * (eps_hat_fg - eps_fg) ** 2).sum()\n"
         "    return sq / (eps_bg.numel() + eps_fg.numel())  # divides by every element, masked ones too\n"),
        ("def masked_diffusion_loss(eps_hat_bg, eps_bg, eps_hat_fg, eps_fg, has_fg):\n"
         "    m = has_fg.to(eps_fg.dtype).view(-1, 1, 1, 1)\n"
         "    sq = ((eps_hat_bg - eps_bg) ** 2).sum() + (m * (eps_hat_fg - eps_fg) ** 2).sum()  # NaN * 0 = NaN\n"
         "    return sq / (eps_bg.numel() + int(has_fg.sum()) * eps_fg[0].numel())\n"),
    ],
}


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def labelled() -> dict:
    return decomposition_set(24, "labelled", seed=3)


@pytest.fixture(scope="module")
def camera() -> dict:
    return decomposition_set(24, "camera", seed=4)


@pytest.fixture(scope="module")
def small_model() -> ld.LayerDecompDiT:
    torch.manual_seed(0)
    m = ld.LayerDecompDiT(image_size=32, patch=4, dim=24, depth=1, heads=2)
    with torch.no_grad():               # leave adaLN-Zero's start: every output would be 0
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=_g(1)))
    return m.eval()


# ----------------------------------------------------------------------------- the data

def test_data_is_seeded_and_the_image_is_the_composite(labelled, camera):
    again = decomposition_set(24, "labelled", seed=3)
    assert all(torch.equal(labelled[k], again[k]) for k in labelled)
    other = decomposition_set(24, "labelled", seed=5)
    assert not torch.equal(labelled["image"], other["image"])
    for d in (labelled, camera):
        assert torch.equal(alpha_over(d["foreground"], d["background"]), d["image"])
        for k in ("image", "background", "foreground"):
            assert d[k].dtype == torch.float32 and d[k].min() >= 0 and d[k].max() <= 1


def test_data_shapes_mask_and_layers(labelled):
    n = 24
    assert labelled["image"].shape == labelled["background"].shape == (n, 3, 32, 32)
    assert labelled["foreground"].shape == (n, 4, 32, 32)
    for k in ("mask", "object_alpha", "shadow_alpha", "reflection_alpha"):
        assert labelled[k].shape == (n, 1, 32, 32)
    assert labelled["has_fg"].dtype == torch.bool and labelled["has_fg"].all()
    assert set(labelled["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(labelled["mask"], (labelled["object_alpha"] > 0.5).float())
    assert (labelled["mask"].flatten(1).sum(1) > 0).all()
    fg_a = labelled["foreground"][:, 3:]
    assert (fg_a >= labelled["object_alpha"] - 1e-6).all() and (fg_a >= labelled["shadow_alpha"] - 1e-6).all()
    outside = fg_a == 0          # where the foreground is empty the image is the background
    assert torch.equal(labelled["image"] * outside, labelled["background"] * outside)


def test_splits_hold_their_effects(labelled, camera):
    assert (labelled["reflection_alpha"] == 0).all() and (labelled["shadow_alpha"].flatten(1).amax(1) > 0).all()
    assert not camera["has_fg"].any()
    assert (effect_region(camera, "reflection").flatten(1).sum(1) >= 8).all()
    assert (effect_region(labelled, "shadow").flatten(1).sum(1) >= 8).all()
    has_shadow = camera["shadow_alpha"].flatten(1).amax(1) > 0
    assert 0 < has_shadow.float().mean() < 1            # "some shadows" in the camera split
    # the reflection lies below the object (a floor mirror), the shadow's alpha is the layer's alpha there
    rows = torch.arange(32).view(1, 32, 1).float().expand(1, 32, 32)
    for i in range(4):
        r, m = camera["reflection_alpha"][i] > 0.05, camera["mask"][i] > 0.5
        assert rows[r].mean() > rows[m].mean()
    region = effect_region(labelled, "shadow") & (labelled["object_alpha"] == 0)
    assert region.sum() > 100 and torch.allclose(labelled["foreground"][:, 3:][region], labelled["shadow_alpha"][region])


def test_mixed_split_alternates_and_distractors_sit_in_the_background():
    d = decomposition_set(10, "mixed", seed=1)
    assert d["has_fg"].tolist() == [True, False] * 5
    none = decomposition_set(6, "labelled", seed=2, distractor_prob=0.0)
    # without distractors the background is the plain texture: the image differs from it only where the fg is
    assert torch.equal(none["image"] * (none["foreground"][:, 3:] == 0), none["background"] * (none["foreground"][:, 3:] == 0))
    many = decomposition_set(6, "labelled", seed=2, distractor_prob=1.0)
    assert not torch.equal(many["background"], none["background"])


def test_effect_region_kinds(camera):
    any_, refl, sh = (effect_region(camera, k) for k in ("any", "reflection", "shadow"))
    assert any_.dtype == torch.bool and any_.shape == camera["mask"].shape
    assert (refl <= any_).all() and (sh <= any_).all() and not (any_ & (camera["mask"] > 0.5)).any()


@pytest.mark.parametrize("call, name", [
    (lambda: decomposition_set(0), "n"),
    (lambda: decomposition_set(2, "photo"), "split"),
    (lambda: decomposition_set(2, seed=1.5), "seed"),
    (lambda: decomposition_set(2, distractor_prob=1.5), "distractor_prob"),
    (lambda: decomposition_set(2, min_effect=-1), "min_effect"),
    (lambda: decomposition_set(2, size=0), "size"),
    (lambda: decomposition_set(2, progress="bar"), "progress"),
    (lambda: decomposition_example(generator="seed"), "generator"),
    (lambda: effect_region({"mask": torch.zeros(1, 1, 4, 4)}), "data"),
    (lambda: effect_region(decomposition_set(1), "glare"), "kind"),
])
def test_data_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


# ----------------------------------------------------------------------------- the token sequence

def test_segment_tokens_order_padding_and_types():
    b, h = 2, 8
    parts = [torch.full((b, c, h, h), float(i + 1)) for i, c in enumerate((3, 4, 3, 1))]
    tok = ld.segment_tokens(*parts, patch=4)
    assert tok.shape == (b, 4 * 4, 4 * 16)
    for i, c in enumerate((3, 4, 3, 1)):
        seg = tok[:, 4 * i:4 * (i + 1)].reshape(b, 4, 4, 16)            # (B, N, C, p²)
        assert (seg[:, :, :c] == i + 1).all() and (seg[:, :, c:] == 0).all()
    assert ld.segment_types(3).tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_model_space_references_and_round_trip(camera):
    img, mask = camera["image"][:3], camera["mask"][:3]
    rb, rf = ld.references(img, mask, residual=True)
    assert torch.equal(rb, img) and torch.equal(rf, ld.known_foreground(img, mask))
    pb, pf = ld.references(img, mask, residual=False)
    assert pb.shape == (3, 3, 32, 32) and pf.shape == (3, 4, 32, 32) and (pb == 0.5).all() and (pf == 0.5).all()
    for ref, layer in ((rb, camera["background"][:3]), (rf, camera["foreground"][:3]), (pb, camera["background"][:3])):
        x0 = ld.to_model_space(layer, ref)
        assert torch.allclose(ld.from_model_space(x0, ref), layer, atol=1e-6)
    assert torch.allclose(ld.to_model_space(camera["background"][:3], pb), camera["background"][:3] * 2 - 1)
    # residual: outside the object and its effects the background is the image, so its x₀ is 0 there
    x0 = ld.to_model_space(camera["background"][:3], rb)
    quiet = camera["foreground"][:3, 3:] == 0
    assert (x0 * quiet == 0).all() and (x0.abs() > 0).any()


def test_untrained_model_predicts_zero_noise_and_shapes():
    m = ld.LayerDecompDiT(dim=24, depth=1, heads=2)
    x_bg, x_fg = torch.randn(3, 3, 32, 32), torch.randn(3, 4, 32, 32)
    e_bg, e_fg = m(x_bg, x_fg, torch.tensor([0, 500, 999]), torch.rand(3, 3, 32, 32), torch.ones(3, 1, 32, 32))
    assert e_bg.shape == (3, 3, 32, 32) and e_fg.shape == (3, 4, 32, 32)
    assert (e_bg == 0).all() and (e_fg == 0).all()         # adaLN-Zero: the network starts at ε̂ = 0


def test_noisy_outputs_read_the_conditions_and_the_type_embedding(small_model, labelled):
    m = small_model
    x_bg, x_fg = torch.randn(2, 3, 32, 32, generator=_g(2)), torch.randn(2, 4, 32, 32, generator=_g(3))
    t = torch.tensor([100, 700])
    img, mask = labelled["image"][:2], labelled["mask"][:2]
    with torch.no_grad():
        base = m(x_bg, x_fg, t, img, mask)
        other_img = m(x_bg, x_fg, t, labelled["image"][2:4], mask)
        other_mask = m(x_bg, x_fg, t, img, 1 - mask)
        saved = m.type_embed.weight.clone()
        m.type_embed.weight[2:].zero_()
        no_types = m(x_bg, x_fg, t, img, mask)
        m.type_embed.weight.copy_(saved)
    for other in (other_img, other_mask, no_types):
        assert not torch.allclose(base[0], other[0]) and not torch.allclose(base[1], other[1])


def test_model_bad_input():
    m = ld.LayerDecompDiT(dim=24, depth=1, heads=2)
    ok = dict(x_bg=torch.zeros(1, 3, 32, 32), x_fg=torch.zeros(1, 4, 32, 32), t=torch.tensor([1]),
              composite=torch.zeros(1, 3, 32, 32), mask=torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="x_bg"):
        m(**{**ok, "x_bg": torch.zeros(1, 3, 16, 16)})
    with pytest.raises(ValueError, match="x_fg"):
        m(**{**ok, "x_fg": torch.zeros(1, 3, 32, 32)})
    with pytest.raises(ValueError, match="mask"):
        m(**{**ok, "mask": torch.zeros(1, 2, 32, 32)})
    with pytest.raises(ValueError, match="patch"):
        ld.segment_tokens(ok["x_bg"], ok["x_fg"], ok["composite"], ok["mask"], patch=5)
    with pytest.raises(ValueError, match="tokens_per_segment"):
        ld.segment_types(0)
    with pytest.raises(ValueError, match="variant"):
        ld.ld_zoo_name("v1")
    assert ld.ld_zoo_name("v2") == "layer_decomp_v2"


# ----------------------------------------------------------------------------- the losses

def test_x0_from_eps_inverts_the_forward_process():
    acp = make_scheduler("ddpm").alphas_cumprod
    x0, eps = torch.randn(4, 4, 8, 6, dtype=torch.float64), torch.randn(4, 4, 8, 6, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = q_sample(x0, t, eps, acp)
    assert torch.allclose(ld.x0_from_eps(x_t, eps, acp[t].double()), x0, atol=1e-8)
    assert torch.allclose(ld.x0_from_eps(x_t[:1], eps[:1], float(acp[0])), x0[:1], atol=1e-8)
    assert torch.equal(ld.x0_from_eps(x0, eps, 1.0), x0)             # ᾱ = 1: no noise at all


def test_recomposite_is_alpha_over_and_clips_only_alpha(labelled):
    fg, bg = labelled["foreground"], labelled["background"]
    assert torch.allclose(ld.recomposite(bg, fg), alpha_over(fg, bg), atol=1e-6)
    wild = torch.cat([fg[:, :3] * 1.5 - 0.2, fg[:, 3:] * 3 - 1], 1).requires_grad_(True)
    out = ld.recomposite(bg, wild)
    a = (wild[:, 3:] * 1).clamp(0, 1)
    assert torch.allclose(out, a * wild[:, :3] + (1 - a) * bg)
    out.sum().backward()
    colour_grad = wild.grad[:, :3]
    assert (colour_grad[(a > 0).expand_as(colour_grad)] != 0).all()   # colours outside [0, 1] still get gradient


def test_consistency_loss_is_zero_for_the_true_layers_and_sees_a_missing_reflection(camera):
    bg, fg, img = camera["background"], camera["foreground"], camera["image"]
    assert float(ld.consistency_loss(bg, fg, img)) < 1e-6
    no_effect = ld.known_foreground(img, camera["mask"])          # the object only: the reflection is lost
    per = ld.consistency_loss(bg, no_effect, img, reduction="none")
    assert per.shape == (24,) and (per > 0).all()
    err = (ld.recomposite(bg, no_effect) - img).abs().amax(1, keepdim=True) > 1e-4
    refl = effect_region(camera, "reflection")
    assert (err & refl).sum() > 0.8 * refl.sum()                     # the error sits where the reflection was
    mean, total = ld.consistency_loss(bg, no_effect, img), ld.consistency_loss(bg, no_effect, img, reduction="sum")
    assert torch.allclose(mean, per.mean()) and torch.allclose(total, mean * img.numel())
    # the loss cannot tell a faint reflection from an opaque copy of the image there (pitfall 1)
    opaque = torch.where(refl, torch.cat([img, torch.ones_like(img[:, :1])], 1), fg)
    assert float(ld.consistency_loss(bg, opaque, img)) < 1e-6


def test_masked_diffusion_loss_known_values_and_masking():
    g = _g(5)
    e_bg, h_bg = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    e_fg, h_fg = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    all_in = ld.masked_diffusion_loss(h_bg, e_bg, h_fg, e_fg, torch.tensor([True] * 3))
    flat = torch.cat([(h_bg - e_bg).flatten(), (h_fg - e_fg).flatten()])
    assert torch.allclose(all_in, flat.pow(2).mean())
    none = ld.masked_diffusion_loss(h_bg, e_bg, h_fg, e_fg, torch.tensor([False] * 3))
    assert torch.allclose(none, (h_bg - e_bg).pow(2).mean())
    has = torch.tensor([True, False, True])
    poisoned = h_fg.clone()
    poisoned[1] = float("nan")                                       # an unknown foreground can hold anything
    one_out = ld.masked_diffusion_loss(h_bg, e_bg, poisoned, e_fg, has)
    expect = torch.cat([(h_bg - e_bg).flatten(), (h_fg - e_fg)[has].flatten()]).pow(2).mean()
    assert torch.isfinite(one_out) and torch.allclose(one_out, expect)
    h = h_fg.clone().requires_grad_(True)
    ld.masked_diffusion_loss(h_bg, e_bg, h, e_fg, has).backward()
    assert (h.grad[1] == 0).all() and (h.grad[0] != 0).any()
    assert ld.masked_diffusion_loss(h_bg.double(), e_bg.double(), h_fg.double(), e_fg.double(), has).dtype == torch.float64


def test_training_loss_never_reads_a_camera_pairs_foreground(small_model, camera, labelled):
    acp = make_scheduler("ddpm").alphas_cumprod
    batch = {k: torch.cat([labelled[k][:3], camera[k][:3]]) for k in ("image", "background", "foreground", "mask", "has_fg")}
    swapped = dict(batch, foreground=batch["foreground"].clone())
    swapped["foreground"][3:] = torch.rand(3, 4, 32, 32)            # the camera items' foreground: anything
    changed = dict(batch, foreground=batch["foreground"].clone())
    changed["foreground"][:3] = torch.rand(3, 4, 32, 32)            # a labelled item's foreground: matters
    for lam in (0.0, 1.0):
        a, logs = ld.training_loss(small_model, batch, acp, generator=_g(7), consistency_weight=lam)
        b, _ = ld.training_loss(small_model, swapped, acp, generator=_g(7), consistency_weight=lam)
        c, _ = ld.training_loss(small_model, changed, acp, generator=_g(7), consistency_weight=lam)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert ("consist" in logs) == (lam > 0)
    base, _ = ld.training_loss(small_model, batch, acp, generator=_g(7))
    with_c, logs = ld.training_loss(small_model, batch, acp, generator=_g(7), consistency_weight=2.0)
    assert torch.allclose(with_c, base + 2.0 * logs["consist"])
    uni, logs_u = ld.training_loss(small_model, batch, acp, generator=_g(7), consistency_weight=1.0, weighting="uniform")
    assert logs_u["consist"] > logs["consist"]                       # ᾱ ≤ 1 only ever lowers the weight


def test_consistency_gradient_reaches_the_foreground_of_camera_items():
    """Without the consistency loss a camera pair's foreground prediction gets no gradient at all."""
    d = decomposition_set(2, "camera", seed=8)
    bg_hat = d["background"].clone()
    fg_hat = ld.known_foreground(d["image"], d["mask"]).requires_grad_(True)
    ld.consistency_loss(bg_hat, fg_hat, d["image"]).backward()
    assert fg_hat.grad[:, 3][effect_region(d, "reflection")[:, 0]].abs().min() > 0


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_a_few_training_steps_lower_the_loss(prediction):
    data = decomposition_set(16, "mixed", seed=9, size=16)
    torch.manual_seed(0)
    cfg = dict(image_size=16, patch=4, dim=32, depth=1, heads=2, prediction=prediction)
    model, hist = ld.train_layer_decomp(data, steps=40, consistency_weight=1.0, generator=_g(0),
                                        config=ld.LDConfig(**cfg), batch_size=16, lr=3e-3, warmup=5, ema=None,
                                        progress=False)
    assert not model.training and len(hist.loss) == 40 and set(hist.logs) == {"dm", "consist"}
    if prediction == "eps":     # x0: the untrained output 0 is already close (most of the residual x₀ is 0)
        assert sum(hist.loss[-10:]) / 10 < 0.8 * sum(hist.loss[:5]) / 5
    held = ld.heldout_loss(model, decomposition_set(16, "mixed", seed=10, size=16), generator=_g(1))
    untrained = ld.heldout_loss(ld.LayerDecompDiT(**cfg), decomposition_set(16, "mixed", seed=10, size=16),
                                generator=_g(1))
    assert held < untrained


class _Oracle(torch.nn.Module):
    """Outputs exactly the x₀ / v / noise that separates x_t from the true layers: DDIM must land on them."""

    predict = ld.LayerDecompDiT.predict

    def __init__(self, data, residual, prediction="eps", emit=None):
        super().__init__()
        self.config = ld.LDConfig(residual=residual, prediction=prediction)
        self.emit = emit or prediction          # what forward outputs (a wrong kind to test the loss)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.data = data
        self.acp = make_scheduler("ddpm").alphas_cumprod

    def forward(self, x_bg, x_fg, t, composite, mask):
        rb, rf = ld.references(composite, mask, self.config.residual)
        a = self.acp[t].view(-1, 1, 1, 1)
        outs = []
        for x, layer, ref in ((x_bg, self.data["background"], rb), (x_fg, self.data["foreground"], rf)):
            x0 = ld.to_model_space(layer, ref)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            outs.append({"x0": x0, "eps": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.emit])
        return outs[0], outs[1]


@pytest.mark.parametrize("residual,prediction", [(False, "eps"), (True, "eps"), (True, "x0"), (False, "v")])
def test_decompose_with_the_exact_prediction_returns_the_true_layers(camera, residual, prediction):
    data = {k: v[:4] for k, v in camera.items()}
    out = ld.decompose(_Oracle(data, residual, prediction), data["image"], data["mask"], steps=5, generator=_g(0))
    assert torch.allclose(out["background"], data["background"], atol=1e-4)
    assert torch.allclose(out["foreground"], data["foreground"], atol=1e-4)


@pytest.mark.parametrize("prediction", ld.PREDICTIONS)
def test_predict_outputs_agree_with_the_forward_process(prediction, labelled):
    torch.manual_seed(0)
    m = ld.LayerDecompDiT(image_size=32, patch=4, dim=24, depth=1, heads=2, prediction=prediction)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=_g(1)))
    acp = make_scheduler("ddpm").alphas_cumprod
    x_bg, x_fg = torch.randn(3, 3, 32, 32, generator=_g(2)), torch.randn(3, 4, 32, 32, generator=_g(3))
    t = torch.tensor([5, 400, 990])
    out = m.predict(x_bg, x_fg, t, labelled["image"][:3], labelled["mask"][:3], acp)
    a = acp[t].view(-1, 1, 1, 1)
    raw = m(x_bg, x_fg, t, labelled["image"][:3], labelled["mask"][:3])
    for i, x in enumerate((x_bg, x_fg)):
        assert torch.allclose(a.sqrt() * out["x0"][i] + (1 - a).sqrt() * out["eps"][i], x, atol=1e-4)
        assert torch.equal(out["out"][i], raw[i])
        own = {"x0": out["x0"][i], "eps": out["eps"][i]}.get(prediction)
        if own is not None:
            assert torch.equal(own, raw[i])             # the output *is* the prediction of its kind
        else:
            assert torch.allclose(a.sqrt() * out["eps"][i] - (1 - a).sqrt() * out["x0"][i], raw[i], atol=1e-4)


@pytest.mark.parametrize("prediction", ld.PREDICTIONS)
def test_training_loss_of_the_exact_prediction_is_zero(prediction, labelled, camera):
    data = {k: torch.cat([labelled[k][:3], camera[k][:3]]) for k in labelled}
    oracle = _Oracle(data, True, prediction)
    loss, logs = ld.training_loss(oracle, data, make_scheduler("ddpm").alphas_cumprod, generator=_g(5),
                                  consistency_weight=1.0)
    assert float(logs["dm"]) < 1e-6 and float(logs["consist"]) < 1e-4
    # … and a wrong prediction is not: the oracle of another kind is off
    other = _Oracle(data, True, prediction, emit="x0" if prediction != "x0" else "eps")
    loss_wrong, _ = ld.training_loss(other, data, make_scheduler("ddpm").alphas_cumprod, generator=_g(5))
    assert float(loss_wrong) > 1e-2


def test_prediction_must_be_known():
    with pytest.raises(ValueError, match="prediction"):
        ld.LDConfig(prediction="flow")


def test_decompose_shapes_range_and_determinism(small_model, camera):
    out = ld.decompose(small_model, camera["image"][:3], camera["mask"][:3], steps=3, generator=_g(1))
    assert out["background"].shape == (3, 3, 32, 32) and out["foreground"].shape == (3, 4, 32, 32)
    assert out["background"].min() >= 0 and out["foreground"].max() <= 1
    again = ld.decompose(small_model, camera["image"][:3], camera["mask"][:3], steps=3, generator=_g(1), batch_size=2)
    assert torch.allclose(out["background"], again["background"], atol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        ld.decompose(small_model, camera["image"][:2], torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="steps"):
        ld.decompose(small_model, camera["image"][:1], camera["mask"][:1], steps=0)


# ----------------------------------------------------------------------------- metrics

def test_metrics_known_values():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    b[0] += 0.1                                                      # MSE 0.01 → 20 dB
    p = ld.psnr(b, a)
    assert p.dtype == torch.float64 and abs(float(p[0]) - 20) < 1e-5 and abs(float(p[1]) - 100) < 1e-9
    region = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    region[0, :, :2] = True
    pr = ld.psnr(b, a, region)
    assert abs(float(pr[0]) - 20) < 1e-5 and math.isnan(float(pr[1]))
    true = torch.zeros(2, 1, 4, 4)
    true[:, :, :2] = 0.5
    full = torch.ones(2, 1, 4, 4)
    reg = true > 0
    assert torch.allclose(ld.effect_captured(true, true, reg), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ld.effect_captured(full, true, reg), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ld.effect_captured(true * 0.5, true, reg), torch.full((2,), 0.5, dtype=torch.float64))
    assert (ld.effect_captured(torch.zeros_like(true), true, reg) == 0).all()
    assert torch.allclose(ld.alpha_error(full, true, reg), torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.allclose(ld.alpha_error(full, true), torch.full((2,), 0.75, dtype=torch.float64))


def test_evaluate_decomposition_of_the_truth_and_of_the_object_only(camera):
    regions = {k: effect_region(camera, k) for k in ("any", "reflection")}
    truth = {"background": camera["background"], "foreground": camera["foreground"]}
    m = ld.evaluate_decomposition(truth, camera, regions)
    assert set(m) == {"bg_psnr", "comp_psnr", "bg_psnr_effect", "reflection_captured", "alpha_mae", "alpha_mae_effect"}
    assert (m["bg_psnr"] == 100).all() and (m["comp_psnr"] > 60).all()
    assert torch.allclose(m["reflection_captured"], torch.ones(24, dtype=torch.float64)) and (m["alpha_mae"] == 0).all()
    cut = {"background": camera["background"], "foreground": ld.known_foreground(camera["image"], camera["mask"])}
    m2 = ld.evaluate_decomposition(cut, camera, regions)
    assert (m2["reflection_captured"] < 0.05).all() and (m2["comp_psnr"] < m["comp_psnr"]).all()


@pytest.mark.parametrize("call, name", [
    (lambda: ld.x0_from_eps([1.0], torch.zeros(1), 0.5), "x_t"),
    (lambda: ld.x0_from_eps(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 0.5), "eps"),
    (lambda: ld.x0_from_eps(torch.zeros(2, 3), torch.zeros(2, 4), 0.5), "same shape"),
    (lambda: ld.x0_from_eps(torch.zeros(2, 3), torch.zeros(2, 3), torch.full((3,), 0.5)), "abar_t"),
    (lambda: ld.x0_from_eps(torch.zeros(2, 3), torch.zeros(2, 3), 0.0), "abar_t"),
    (lambda: ld.x0_from_eps(torch.zeros(2, 3), torch.zeros(2, 3), "0.5"), "abar_t"),
    (lambda: ld.recomposite(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)), "bg"),
    (lambda: ld.recomposite(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), "fg_rgba"),
    (lambda: ld.recomposite(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 8, 6)), "agree"),
    (lambda: ld.recomposite(torch.zeros(1, 3, 8, 8, dtype=torch.long), torch.zeros(1, 4, 8, 8)), "bg"),
    (lambda: ld.consistency_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 8, 8), "max"), "reduction"),
    (lambda: ld.consistency_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 8, 8), torch.zeros(1, 1, 8, 8)), "image"),
    (lambda: ld.masked_diffusion_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4),
                                      torch.zeros(2, 4, 4, 4), torch.tensor([1, 0])), "has_fg"),
    (lambda: ld.masked_diffusion_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4),
                                      torch.zeros(2, 4, 4, 4), torch.tensor([True])), "has_fg"),
    (lambda: ld.masked_diffusion_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 4, 4),
                                      torch.zeros(2, 4, 4, 4), torch.tensor([True, False])), "eps_bg"),
    (lambda: ld.masked_diffusion_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4),
                                      torch.zeros(2, 4, 4, 4), torch.tensor([True, False])), "eps_hat_fg"),
    (lambda: ld.known_foreground(torch.zeros(1, 3, 8, 8), torch.full((1, 1, 8, 8), 2.0)), "mask"),
    (lambda: ld.known_foreground(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4)), "agree"),
    (lambda: ld.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)), "same shape"),
    (lambda: ld.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4)), "region"),
    (lambda: ld.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 2, 2, dtype=torch.bool)), "region"),
    (lambda: ld.effect_captured(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), None), "region"),
    (lambda: ld.alpha_error(torch.zeros(1, 4, 4, 4), torch.zeros(1, 1, 4, 4)), "pred_alpha"),
    (lambda: ld.evaluate_decomposition({"background": None}, {}, {}), "pred"),
    (lambda: ld.evaluate_decomposition({"background": 0, "foreground": 0}, {}, {"any": 0}), "regions"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_training_bad_input(small_model, labelled):
    acp = make_scheduler("ddpm").alphas_cumprod
    batch = {k: labelled[k][:2] for k in ("image", "background", "foreground", "mask", "has_fg")}
    with pytest.raises(ValueError, match="batch"):
        ld.training_loss(small_model, {"image": batch["image"]}, acp, generator=_g())
    with pytest.raises(ValueError, match="consistency_weight"):
        ld.training_loss(small_model, batch, acp, generator=_g(), consistency_weight=-1.0)
    with pytest.raises(ValueError, match="weighting"):
        ld.training_loss(small_model, batch, acp, generator=_g(), consistency_weight=1.0, weighting="late")
    with pytest.raises(ValueError, match="steps"):
        ld.train_layer_decomp(labelled, steps=-1, consistency_weight=0.0, generator=_g())
    with pytest.raises(ValueError, match="batch_size"):
        ld.train_layer_decomp(labelled, steps=1, consistency_weight=0.0, generator=_g(), batch_size=0)
