"""Tests of the synthetic layered RGBA data (layerwise.data.shapes / rgba / scenes / sprite_sets) and
core.plot.image_grid."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.data import scene as scene_module
from layerwise.data import shapes as sprite_module
from layerwise.data import (BACKGROUNDS, BLEND_MODES, SHAPES, Scene, alpha_over, background, blend, checkerboard,
                            compose, drop_shadow, glass, make_scene, premultiply, reflection, scenes, shape_alpha,
                            sprite, sprites, stack_scenes, unpremultiply)

EFFECTS = dict(shadow_prob=0.6, reflection_prob=0.5, glass_prob=0.4, modes=BLEND_MODES)


def _rand_rgba(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape[:-3], 4, *shape[-2:], generator=g, dtype=dtype)


def _com(a: torch.Tensor) -> tuple[float, float]:
    """Centre of mass (row, column) of ``a: (H, W)`` in pixel indices."""
    h, w = a.shape
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    a = a.double()
    return float((a * ys).sum() / a.sum()), float((a * xs).sum() / a.sum())


@pytest.fixture(scope="module")
def many_scenes() -> list[Scene]:
    return scenes(60, 24, seed=5, n_objects=(1, 4), **EFFECTS) + scenes(20, (20, 36), seed=6, **EFFECTS)


# ----------------------------------------------------------------------------- scenes

def test_scene_image_is_exactly_the_composite(many_scenes):
    kinds_seen, modes_seen = set(), set()
    for s in many_scenes:
        assert torch.equal(compose(s.background, s.layers, s.modes), s.image)
        assert torch.equal(compose(s.background, list(s.layers), s.modes), s.image)
        kinds_seen.update(s.kinds)
        modes_seen.update(s.modes)
    assert kinds_seen == {"sprite", "glass", "shadow", "reflection"}
    assert modes_seen == set(BLEND_MODES)


def test_scene_values_shapes_and_types(many_scenes):
    for s in many_scenes:
        n, h, w = len(s.kinds), *s.image.shape[-2:]
        assert s.image.shape == s.background.shape == (3, h, w)
        assert s.layers.shape == (n, 4, h, w) and s.boxes.shape == (n, 4) and s.masks.shape == (n, h, w)
        assert len(s.modes) == n and s.owner.shape == (n,)
        assert s.image.dtype == s.background.dtype == s.layers.dtype == torch.float32
        assert s.boxes.dtype == s.owner.dtype == torch.long and s.masks.dtype == torch.bool
        for t in (s.image, s.background, s.layers):
            assert t.min() >= 0 and t.max() <= 1


def test_scene_effects_sit_just_below_their_object(many_scenes):
    for s in many_scenes:
        owner = s.owner.tolist()
        for i, (kind, o) in enumerate(zip(s.kinds, owner)):
            if kind in ("sprite", "glass"):
                assert o == i
            else:
                assert o > i and s.kinds[o] in ("sprite", "glass")
                assert all(s.kinds[j] in ("shadow", "reflection") and owner[j] == o for j in range(i, o))
                assert s.modes[i] == "over"
        # one object layer per owner, effect layers are never empty
        assert all((s.layers[i, 3] > 0.01).any() for i in range(len(owner)))


def test_shadow_is_black_and_below_reflection_is_mirrored(many_scenes):
    for s in many_scenes:
        for i, kind in enumerate(s.kinds):
            obj = s.layers[s.owner[i]]
            if kind == "shadow":
                assert torch.equal(s.layers[i, :3], torch.zeros_like(s.layers[i, :3]))
                assert _com(s.layers[i, 3])[0] >= _com(obj[3])[0] - 1e-6 or s.boxes[i, 3] == s.image.shape[-2]
            if kind == "reflection":
                floor = int(scene_module._boxes(obj[3:4])[0, 3])          # the object's bottom edge
                assert s.layers[i, :, :floor].abs().sum() == 0  # nothing above the floor
                assert s.boxes[i, 1] >= floor


def test_same_seed_same_data_different_seed_different():
    a, b, c = (scenes(6, 24, seed=s, **EFFECTS) for s in (3, 3, 4))
    for x, y in zip(a, b):
        for f in ("image", "background", "layers", "boxes", "masks", "owner"):
            assert torch.equal(getattr(x, f), getattr(y, f))
        assert x.modes == y.modes and x.kinds == y.kinds
    assert not all(torch.equal(x.image, y.image) for x, y in zip(a, c))
    assert torch.equal(sprites(50, 16, seed=1, glass_prob=0.5), sprites(50, 16, seed=1, glass_prob=0.5))
    assert not torch.equal(sprites(50, 16, seed=1), sprites(50, 16, seed=2))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(make_scene(24, generator=g1, **EFFECTS).image, make_scene(24, generator=g2, **EFFECTS).image)
    assert torch.equal(make_scene(24, generator=9).layers, make_scene(24, generator=9).layers)


def test_boxes_are_tight_and_masks_match_alpha(many_scenes):
    for s in many_scenes:
        alpha = s.layers[:, 3]
        assert torch.equal(s.masks, alpha > 0.5)
        for a, (x0, y0, x1, y1) in zip(alpha, s.boxes.tolist()):
            on = a > 0.01
            inside = torch.zeros_like(on)
            inside[y0:y1, x0:x1] = True
            assert not (on & ~inside).any()                       # contains every pixel
            assert on[y0].any() and on[y1 - 1].any() and on[:, x0].any() and on[:, x1 - 1].any()  # tight


def test_boxes_of_an_empty_layer_are_zero():
    a = torch.zeros(2, 5, 7)
    a[1, 2:4, 3] = 0.3
    assert scene_module._boxes(a).tolist() == [[0, 0, 0, 0], [3, 2, 4, 4]]


def test_make_scene_counts_and_non_square():
    for k in range(5):
        s = make_scene((20, 44), n_objects=2, generator=k)
        assert s.image.shape == (3, 20, 44) and s.kinds == ["sprite", "sprite"]
    s = make_scene(16, n_objects=0, generator=0)
    assert s.layers.shape == (0, 4, 16, 16) and torch.equal(s.image, s.background)
    counts = {sum(k in ("sprite", "glass") for k in s.kinds) for s in scenes(40, 16, seed=0, n_objects=(1, 3))}
    assert counts == {1, 2, 3}


def test_make_scene_options_are_respected():
    for s in scenes(10, 24, seed=2, shapes=("ring",), modes=("screen",), glass_prob=1.0, background_kind="flat"):
        assert set(s.kinds) == {"glass"} and set(s.modes) == {"screen"}
        assert torch.equal(s.background, s.background[:, :1, :1].expand_as(s.background))


def test_stack_scenes_pads_with_empty_layers(many_scenes):
    batch = many_scenes[:12]
    d = stack_scenes(batch, max_layers=12)
    n = 12
    assert d["image"].shape == (12, 3, 24, 24) and d["layers"].shape == (12, n, 4, 24, 24)
    assert d["boxes"].shape == (12, n, 4) and d["valid"].shape == (12, n) and d["valid"].dtype == torch.bool
    for i, s in enumerate(batch):
        k = len(s.kinds)
        assert d["valid"][i].tolist() == [True] * k + [False] * (n - k)
        assert torch.equal(d["layers"][i, :k], s.layers) and d["layers"][i, k:].abs().sum() == 0
        assert torch.equal(d["boxes"][i, :k], s.boxes) and (d["owner"][i, k:] == -1).all()
        # the padding changes nothing, whatever its mode
        assert torch.equal(compose(d["background"][i], d["layers"][i], s.modes + ["screen"] * (n - k)), s.image)
    assert stack_scenes(batch)["layers"].shape[1] == max(len(s.kinds) for s in batch)


def test_compose_batched_equals_per_item():
    bg = torch.rand(3, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    layers = _rand_rgba(3, 4, 4, 8, 9, seed=1)
    modes = ["over", "screen", "add", "multiply"]
    out = compose(bg, layers, modes)
    assert out.shape == (3, 3, 8, 9)
    for i in range(3):
        assert torch.equal(out[i], compose(bg[i], layers[i], modes))
    assert torch.equal(compose(bg[0], []), bg[0])
    assert torch.equal(compose(bg[0], layers[0], "screen"), compose(bg[0], layers[0], ["screen"] * 4))


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("r", [4.0, 7.5, 12.3])
def test_circle_area_and_anti_aliasing(r):
    a = shape_alpha("circle", 40, (20.0, 19.3), r)
    assert abs(a.sum().item() - math.pi * r * r) < 0.03 * math.pi * r * r
    edge = (a > 0) & (a < 1)
    assert edge.sum() > 2 * math.pi * r * 0.5                      # a ring of partial coverage
    assert a.min() == 0 and a.max() == 1


def test_shape_alpha_is_the_clamped_signed_distance():
    a = shape_alpha("circle", (10, 14), (4.0, 6.0), 3.0, softness=2.0)
    ys = torch.arange(10).view(10, 1) + 0.5
    xs = torch.arange(14).view(1, 14) + 0.5
    sdf = torch.hypot(ys - 4.0, xs - 6.0) - 3.0
    assert torch.allclose(a, (0.5 - sdf / 2.0).clamp(0, 1), atol=1e-6)


def test_known_polygon_areas():
    r = 14.0
    areas = {"square": 2 * r * r, "triangle": 3 * math.sqrt(3) / 4 * r * r, "diamond": 1.2 * r * r,
             "ring": math.pi * r * r * (1 - sprite_module._RING_INNER ** 2),
             "star": 5 * r * (0.45 * r) * math.sin(math.pi / 5)}
    for name, area in areas.items():
        a = shape_alpha(name, 48, (24.0, 24.0), r, angle=0.37)
        assert abs(a.sum().item() - area) < 0.02 * area, name


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_fit_in_their_disc_at_any_angle(shape):
    r, soft = 9.0, 1.5
    ys = torch.arange(30).view(30, 1) + 0.5
    xs = torch.arange(26).view(1, 26) + 0.5
    outside = torch.hypot(ys - 15.2, xs - 12.7) > r + soft / 2
    for angle in (0.0, 0.4, 1.3, 2.9):
        a = shape_alpha(shape, (30, 26), (15.2, 12.7), r, angle=angle, softness=soft)
        assert a.shape == (30, 26) and a[outside].max() == 0 and a.max() == 1
        assert ((a > 0) & (a < 1)).any()


def test_shape_orientation_and_symmetry():
    up = shape_alpha("triangle", 32, (16, 16), 12)
    down = shape_alpha("triangle", 32, (16, 16), 12, angle=math.pi)
    assert up[6, 16] == 1 and up[25, 16] == 0 and down[25, 16] == 1 and down[6, 16] == 0
    assert torch.allclose(down, up.flip(0), atol=1e-4)
    sq = shape_alpha("square", 32, (16, 16), 11)
    assert torch.allclose(shape_alpha("square", 32, (16, 16), 11, angle=math.pi / 2), sq, atol=1e-4)
    assert torch.allclose(sq, sq.t(), atol=1e-5) and sq[9, 9] == 1 and sq[16, 7] == 0   # axis-aligned
    star = shape_alpha("star", 32, (16, 16), 12)
    assert torch.allclose(star, star.flip(1), atol=1e-5)               # mirror symmetric about the vertical


def test_shape_alpha_batched_matches_single():
    names = ["circle", "star", "ring", "square", "triangle", "diamond", "star"]
    center = torch.tensor([[10.0, 12.0], [8.0, 9.5], [12.0, 14.0], [9.0, 10.0], [11.0, 13.0], [10.0, 10.0], [6.0, 7.0]])
    radius = torch.tensor([5.0, 6.0, 7.0, 4.5, 6.5, 5.5, 3.0])
    angle = torch.linspace(0, 3, 7)
    batch = shape_alpha(names, (20, 24), center, radius, angle=angle)
    assert batch.shape == (7, 20, 24)
    for i in range(7):
        single = shape_alpha(names[i], (20, 24), center[i].tolist(), float(radius[i]), angle=float(angle[i]))
        assert torch.allclose(batch[i], single, atol=1e-5)
    shared = shape_alpha("circle", 16, center[:3], 4.0)                # one batched argument suffices
    assert shared.shape == (3, 16, 16)


def test_sprite_and_glass():
    s = sprite("circle", (20, 30), color=(0.2, 0.4, 0.9), center=(10, 15), radius=8, opacity=0.7)
    assert s.shape == (4, 20, 30)
    assert torch.equal(s[:3], torch.tensor([0.2, 0.4, 0.9]).view(3, 1, 1).expand(3, 20, 30))
    assert torch.allclose(s[3], 0.7 * shape_alpha("circle", (20, 30), (10, 15), 8))
    b = sprite(["circle", "ring"], 16, color=torch.rand(2, 3), center=(8, 8), radius=torch.tensor([5.0, 6.0]))
    assert b.shape == (2, 4, 16, 16)

    g = glass("circle", 48, color=(0.1, 0.8, 0.3), center=(24, 24), radius=18, opacity=0.4)
    a = g[3]
    assert abs(a[26, 26].item() - 0.4) < 0.02                          # interior ≈ opacity
    ring = (a[24, 6:9].max() + a[24, 39:42].max()) / 2                  # near the edge, inside
    assert ring > 0.6                                                  # a more opaque rim
    assert g[:3].min(0).values.max() > 0.9 and a.max() > 0.9            # a bright, opaque highlight
    assert a[0, 0] == 0                                                # transparent outside
    assert g.min() >= 0 and g.max() <= 1
    assert g[:3, 26, 26].mean() > 0.5 * (0.1 + 0.8 + 0.3) / 3          # lighter than the tint


def test_sprites_batch():
    x = sprites(300, (16, 20), seed=0, glass_prob=0.5)
    assert x.shape == (300, 4, 16, 20) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    amax = x[:, 3].flatten(1).max(1).values
    assert (amax > 0.5).all()                                          # none is empty
    solid = (amax == 1).float().mean()
    assert 0.3 < solid < 0.7                                           # about half are glass
    c = sprites(20, 17, seed=1, shapes=("circle",), centered=True)
    for a in c[:, 3]:
        cy, cx = _com(a)
        assert abs(cy - 8.0) < 1e-3 and abs(cx - 8.0) < 1e-3           # centre (H/2, W/2) = pixel 8 + 0.5


# ----------------------------------------------------------------------------- backgrounds

@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_background_kinds(kind):
    x = background((18, 27), generator=torch.Generator().manual_seed(1), kind=kind)
    assert x.shape == (3, 18, 27) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    distinct = x.flatten(1).unique(dim=1).shape[1]
    assert distinct == 1 if kind == "flat" else distinct > 1
    if kind == "checker":
        assert distinct == 2
    assert torch.equal(x, background((18, 27), generator=1, kind=kind))


def test_background_random_kind_varies():
    xs = [background(12, generator=s) for s in range(12)]
    assert len({x.flatten(1).unique(dim=1).shape[1] == 1 for x in xs}) == 2   # some flat, some not


def test_checkerboard():
    c = checkerboard((5, 7), square=2, light=0.9, dark=0.1)
    assert c.shape == (3, 5, 7)
    assert c[0, 0, 0] == 0.9 and c[0, 0, 2] == 0.1 and c[0, 2, 2] == 0.9 and c[0, 1, 1] == 0.9
    assert torch.equal(c[0], c[2])


# ----------------------------------------------------------------------------- blending

def test_blend_known_pixels():
    def px(rgb, a):
        return torch.tensor([*rgb, a]).view(4, 1, 1)

    bg = torch.tensor([0.5, 0.4, 0.6]).view(3, 1, 1)
    fg = px((0.5, 0.7, 0.2), 1.0)
    assert torch.allclose(blend(fg, bg, "screen").flatten(), torch.tensor([0.75, 0.82, 0.68]))
    assert torch.allclose(blend(fg, bg, "multiply").flatten(), torch.tensor([0.25, 0.28, 0.12]))
    assert torch.allclose(blend(fg, bg, "add").flatten(), torch.tensor([1.0, 1.0, 0.8]))
    assert torch.allclose(blend(fg, bg, "over").flatten(), torch.tensor([0.5, 0.7, 0.2]))
    half = px((0.5, 0.7, 0.2), 0.25)
    assert torch.allclose(blend(half, bg).flatten(), 0.75 * bg.flatten() + 0.25 * torch.tensor([0.5, 0.7, 0.2]))
    screened = torch.tensor([0.75, 0.82, 0.68])
    assert torch.allclose(blend(half, bg, "screen").flatten(), 0.75 * bg.flatten() + 0.25 * screened)


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_blend_transparent_leaves_background(mode):
    fg = _rand_rgba(2, 4, 6, 5, seed=3)
    fg[:, 3] = 0
    bg = torch.rand(2, 3, 6, 5)
    assert torch.equal(blend(fg, bg, mode), bg)
    out = blend(_rand_rgba(4, 6, 5, seed=4), bg, mode)                 # broadcasts over leading dims
    assert out.shape == (2, 3, 6, 5) and out.min() >= 0 and out.max() <= 1
    assert blend(fg.double(), bg.double(), mode).dtype == torch.float64


def test_alpha_over_rgba_matches_premultiplied_math():
    a, b, c = (_rand_rgba(4, 7, 6, seed=s, dtype=torch.float64) for s in (0, 1, 2))
    a[3, 0, 0] = b[3, 0, 0] = 0                                       # a fully transparent pixel
    ab = alpha_over(a, b)
    expected = premultiply(a) + (1 - a[3:4]) * premultiply(b)          # Porter–Duff over, premultiplied
    assert torch.allclose(premultiply(ab), expected, atol=1e-12)
    assert torch.equal(ab[:, 0, 0], torch.zeros(4, dtype=torch.float64))
    left, right = alpha_over(ab, c), alpha_over(a, alpha_over(b, c))
    assert torch.allclose(premultiply(left), premultiply(right), atol=1e-12)   # associative
    bg = torch.rand(3, 7, 6, dtype=torch.float64)
    assert torch.equal(alpha_over(a, bg), blend(a, bg, "over"))
    # flattening the stack first gives the same picture as blending layer by layer
    assert torch.allclose(alpha_over(ab, bg), blend(a, blend(b, bg)), atol=1e-12)


def test_premultiply_round_trip():
    x = _rand_rgba(3, 4, 9, 8, seed=7)
    x[:, 3] = x[:, 3].clamp(min=0.01)
    assert torch.allclose(unpremultiply(premultiply(x)), x, atol=1e-5)
    x[0, 3] = 0
    u = unpremultiply(premultiply(x))
    assert torch.equal(u[0, :3], torch.zeros(3, 9, 8)) and torch.equal(u[:, 3], x[:, 3])


# ----------------------------------------------------------------------------- effects

def test_drop_shadow_offset_moves_centre_of_mass_exactly():
    a = shape_alpha("star", 40, (18.3, 16.1), 8.0, angle=0.5)
    for dy, dx in [(3, 2), (-2, 5), (0, -4), (6, 0)]:
        s = drop_shadow(a, offset=(dy, dx), blur=0, strength=1.0)
        cy0, cx0 = _com(a)
        cy, cx = _com(s)
        assert abs(cy - cy0 - dy) < 1e-6 and abs(cx - cx0 - dx) < 1e-6
        assert torch.equal(s, torch.roll(a, (dy, dx), (0, 1)))          # no content reaches the border


def test_drop_shadow_zero_fill_no_wraparound():
    a = torch.zeros(6, 5)
    a[5, 0] = 1.0
    assert drop_shadow(a, offset=(1, 0), blur=0, strength=1).sum() == 0
    assert drop_shadow(a, offset=(0, -1), blur=0, strength=1).sum() == 0
    assert drop_shadow(a, offset=(-5, 4), blur=0, strength=1)[0, 4] == 1
    assert drop_shadow(a, offset=(99, 0), blur=0.0).sum() == 0


def test_drop_shadow_blur_preserves_mass_and_kernel_radius():
    a = shape_alpha("ring", 48, (24, 24), 8.0)
    for blur in (0.5, 1.0, 2.3):
        s = drop_shadow(a, offset=(1, 1), blur=blur, strength=1.0)
        assert abs(s.sum().item() - a.sum().item()) < 1e-4 * a.sum().item()
        assert s.min() >= 0 and s.max() <= 1
    impulse = torch.zeros(21, 21, dtype=torch.float64)
    impulse[10, 10] = 1
    s = drop_shadow(impulse, offset=(0, 0), blur=1.2, strength=1.0)
    support = (s > 0).nonzero()
    assert support.min().item() == 10 - 4 and support.max().item() == 10 + 4   # radius ceil(3 * 1.2) = 4
    k = torch.exp(-torch.arange(-4, 5, dtype=torch.float64) ** 2 / (2 * 1.2 ** 2))
    k = k / k.sum()
    assert torch.allclose(s[6:15, 6:15], torch.outer(k, k), atol=1e-12)
    assert s.dtype == torch.float64


def test_drop_shadow_strength_scales_and_batches():
    a = shape_alpha(["circle", "square", "star"], 24, torch.tensor([[12.0, 12.0]] * 3), 6.0)
    s6 = drop_shadow(a, offset=(2, -1), blur=1.0, strength=0.6)
    s3 = drop_shadow(a, offset=(2, -1), blur=1.0, strength=0.3)
    assert torch.allclose(s6, 2 * s3, atol=1e-6)
    for i in range(3):
        assert torch.allclose(s6[i], drop_shadow(a[i], offset=(2, -1), blur=1.0, strength=0.6), atol=1e-6)
    assert torch.equal(drop_shadow(a, strength=0.0), torch.zeros_like(a))


def test_reflection_mirrors_below_floor():
    x = _rand_rgba(4, 20, 9, seed=2)
    h, floor, fade, strength = 20, 12, 0.3, 0.5
    r = reflection(x, floor=floor, fade=fade, strength=strength)
    assert r.shape == x.shape and r[:, :floor].abs().sum() == 0        # nothing above the floor
    for k in range(h - floor):
        assert torch.equal(r[:3, floor + k], x[:3, floor - 1 - k])
        w = max(0.0, 1 - k / (fade * h)) * strength
        assert torch.allclose(r[3, floor + k], x[3, floor - 1 - k] * w, atol=1e-6)
    assert r[3, floor + 6:].sum() == 0                                 # faded out after fade * H = 6 rows
    assert reflection(x, floor=0).abs().sum() == 0 and reflection(x, floor=h).abs().sum() == 0
    low = reflection(x, floor=3, fade=2.0)                             # sources above row 0 are off the canvas
    assert low[:, 6:].abs().sum() == 0 and low[3, 3:6].sum() > 0
    both = reflection(torch.stack([x, x.flip(0)]), floor=torch.tensor(floor), fade=fade, strength=strength)
    assert torch.equal(both[0], r) and both.shape == (2, 4, 20, 9)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, name", [
    (lambda: shape_alpha("hexagon", 8, (4, 4), 2), "shape"),
    (lambda: shape_alpha("circle", 0, (4, 4), 2), "size"),
    (lambda: shape_alpha("circle", (8, -1), (4, 4), 2), "size"),
    (lambda: shape_alpha("circle", 8, (4, 4, 4), 2), "center"),
    (lambda: shape_alpha("circle", 8, (4, 4), -2), "radius"),
    (lambda: shape_alpha("circle", 8, (4, 4), 2, softness=0), "softness"),
    (lambda: shape_alpha(["circle", "ring"], 8, torch.zeros(3, 2), 2), "center"),
    (lambda: sprite("circle", 8, color=(1, 0), center=(4, 4), radius=2), "color"),
    (lambda: sprite("circle", 8, color=(1, 0, 2), center=(4, 4), radius=2), "color"),
    (lambda: glass("circle", 8, color=(1, 0, 0), center=(4, 4), radius=2, opacity=1.5), "opacity"),
    (lambda: background(8, generator=0, kind="plaid"), "kind"),
    (lambda: blend(torch.rand(4, 5, 5), torch.rand(3, 5, 5), "overlay"), "mode"),
    (lambda: blend(torch.rand(3, 5, 5), torch.rand(3, 5, 5)), "fg"),
    (lambda: blend(torch.rand(4, 5, 5), torch.rand(4, 5, 5)), "bg"),
    (lambda: blend(torch.rand(4, 5, 5), torch.rand(3, 5, 6)), "fg and bg"),
    (lambda: alpha_over(torch.rand(4, 5, 5), torch.rand(2, 5, 5)), "bg"),
    (lambda: premultiply(torch.rand(3, 5, 5)), "rgba"),
    (lambda: reflection(torch.rand(5, 5), floor=2), "rgba"),
    (lambda: reflection(torch.rand(4, 5, 5), floor=2.5), "floor"),
    (lambda: reflection(torch.rand(4, 5, 5), floor=2, fade=0), "fade"),
    (lambda: drop_shadow(torch.rand(5, 5), offset=(1.5, 0)), "offset"),
    (lambda: drop_shadow(torch.rand(5, 5), blur=-1), "blur"),
    (lambda: drop_shadow(torch.rand(5, 5), strength=2), "strength"),
    (lambda: drop_shadow(torch.rand(5), offset=(1, 0)), "alpha"),
    (lambda: compose(torch.rand(3, 5, 5), torch.rand(2, 4, 5, 5), ["over"]), "modes"),
    (lambda: compose(torch.rand(3, 5, 5), torch.rand(2, 4, 5, 5), ["over", "dodge"]), "mode"),
    (lambda: compose(torch.rand(3, 5, 5), torch.rand(2, 3, 5, 5)), "layers"),
    (lambda: compose(torch.rand(2, 3, 5, 5), torch.rand(3, 1, 4, 5, 5)), "layers"),
    (lambda: compose(torch.rand(4, 5, 5), []), "background"),
    (lambda: make_scene(16, generator=0, modes=("dodge",)), "modes"),
    (lambda: make_scene(16, generator=0, shapes=("blob",)), "shapes"),
    (lambda: make_scene(16, generator=0, shadow_prob=1.5), "shadow_prob"),
    (lambda: make_scene(16, generator=0, n_objects=(3, 1)), "n_objects"),
    (lambda: make_scene(16, generator=0, radius=(0.3, 0.1)), "radius"),
    (lambda: make_scene(16, generator=0, background_kind="plaid"), "background_kind"),
    (lambda: sprites(0), "n"),
    (lambda: sprites(4, radius=(0.2, 0.8)), "radius"),
    (lambda: checkerboard(8, square=0), "square"),
    (lambda: stack_scenes(scenes(2, 8, seed=0, n_objects=2), max_layers=1), "max_layers"),
    (lambda: stack_scenes([make_scene(8, generator=0), make_scene(9, generator=0)]), "same size"),
])
def test_bad_input_raises_value_error_naming_it(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match="star"):
        shape_alpha("hexagon", 8, (4, 4), 2)
    with pytest.raises(ValueError, match="multiply"):
        blend(torch.rand(4, 5, 5), torch.rand(3, 5, 5), "overlay")


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="generator"):
        background(8, generator="seed")
    with pytest.raises(TypeError, match="size"):
        shape_alpha("circle", 8.5, (4, 4), 2)
    with pytest.raises(TypeError, match="alpha"):
        drop_shadow(torch.ones(4, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- plotting

def test_image_grid_draws_rgb_and_rgba():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from layerwise.core import image_grid

    rgba = sprites(5, 8, seed=0)
    ax = image_grid(rgba, nrow=3, titles=list("abcde"))
    shown = ax.images[0].get_array()
    assert shown.ndim == 3 and shown.shape[2] == 3 and shown.shape[0] > 16 and shown.shape[1] > 24
    assert len(ax.texts) == 5 and not ax.get_xticks().size and not ax.get_yticks().size
    plt.close(ax.figure)

    clear = torch.zeros(1, 4, 8, 8)                                    # fully transparent: shows the board
    ax = image_grid(clear)
    board = checkerboard(8, square=1).permute(1, 2, 0).numpy()
    assert (abs(ax.images[0].get_array()[1:9, 1:9] - board) < 1e-6).all()   # inside a 1-pixel frame
    plt.close(ax.figure)

    fig, axes = plt.subplots(1, 2)
    out = image_grid([torch.rand(3, 6, 7), torch.rand(4, 6, 7)], ax=axes[0], checker=False)
    assert out is axes[0] and out.images[0].get_array().max() <= 1
    assert image_grid(torch.rand(3, 1, 5, 5) * 3 - 1, ax=axes[1]).images[0].get_array().min() >= 0   # clipped
    with pytest.raises(ValueError, match="titles"):
        image_grid(torch.rand(2, 3, 4, 4), titles=["one"], ax=axes[1])
    with pytest.raises(ValueError, match="images"):
        image_grid(torch.rand(2, 2, 4, 4), ax=axes[1])
    plt.close(fig)


def test_shift_moves_without_wraparound_and_checks_its_arguments():
    x = torch.arange(12.0).view(1, 3, 4)
    moved = sprite_module.shift(x, 1, -1)             # down one row, left one column
    assert torch.equal(moved[0, 1:, :3], x[0, :2, 1:]) and moved[0, 0].abs().sum() == 0 and moved[0, :, 3].abs().sum() == 0
    assert torch.equal(sprite_module.shift(x, 0, 0), x)
    assert sprite_module.shift(x, 3, 0).abs().sum() == 0   # moved out of the canvas entirely
    for args, name in (((torch.zeros(3), 0, 0), "x"), (([[1.0]], 0, 0), "x"), ((x, 1.5, 0), "dy"), ((x, 0, True), "dx")):
        with pytest.raises(ValueError, match=name):
            sprite_module.shift(*args)
