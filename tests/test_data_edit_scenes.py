"""Tests of layerwise.data.edit_scenes: editable scenes whose edits render exactly."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from layerwise.data import compose
from layerwise.data.edit_scenes import (SMOOTH_BACKGROUNDS, SceneSpec, drop_object, edit_object, render_specs,
                                        scene_images, scene_specs)


def _one(shape="square", center=(16.0, 16.0), radius=7.0, angle=0.3, shadow=False, size=32):
    return SceneSpec(background=torch.full((3, size, size), 0.4), shapes=(shape,),
                     centers=torch.tensor([center], dtype=torch.float64), radii=torch.tensor([radius], dtype=torch.float64),
                     angles=torch.tensor([angle], dtype=torch.float64), colors=torch.tensor([[0.9, 0.2, 0.1]], dtype=torch.float64),
                     shadows=torch.tensor([shadow]), light=(2, 1, 1.0, 0.5))


def test_specs_are_seeded_and_valid():
    a, b, c = scene_specs(20, seed=3), scene_specs(20, seed=3), scene_specs(20, seed=4)
    assert all(torch.equal(x.background, y.background) and torch.equal(x.centers, y.centers) for x, y in zip(a, b))
    assert not all(torch.equal(x.centers, y.centers) for x, y in zip(a, c))
    for s in scene_specs(60, 32, seed=0, n_objects=(1, 3), gap=2.0):
        assert 1 <= len(s) <= 3 and s.size == (32, 32)
        r, (cy, cx) = s.radii, s.centers.T
        assert bool(((cy - r >= -1e-9) & (cy + r <= 32 + 1e-9) & (cx - r >= -1e-9) & (cx + r <= 32 + 1e-9)).all())
        d = torch.hypot(cy[1:] - cy[0], cx[1:] - cx[0])
        assert bool((d >= r[0] + r[1:] + 2.0 - 1e-9).all()), "another object comes too close to the target"
    # the smooth backgrounds only
    s = scene_specs(30, seed=1, backgrounds=("flat",))
    assert all(bool((x.background == x.background[:, :1, :1]).all()) for x in s)
    assert set(SMOOTH_BACKGROUNDS) <= {"flat", "gradient", "noise"}


def test_render_composites_the_layers_with_the_target_on_top():
    specs = scene_specs(6, seed=5, shadow_prob=1.0, n_objects=2)
    r = render_specs(specs)
    assert r["image"].shape == (6, 3, 32, 32) and r["alpha"].shape[:2] == (6, 2)
    assert float(r["image"].min()) >= 0 and float(r["image"].max()) <= 1
    for i, s in enumerate(specs):
        layers = []
        for j in reversed(range(len(s))):
            layers.append(torch.cat([torch.zeros(3, 32, 32), r["shadow"][i, j][None]]))
            layers.append(torch.cat([s.colors[j].float()[:, None, None].expand(3, 32, 32), r["alpha"][i, j][None]]))
        assert torch.allclose(compose(s.background, torch.stack(layers)), r["image"][i], atol=1e-6)
        assert bool((r["shadow"][i, : len(s)].flatten(1).amax(1) > 0).all())     # shadow_prob 1: every object casts one


def test_drop_object_reveals_what_lies_behind():
    specs = scene_specs(8, seed=2, shadow_prob=0.5, n_objects=2)
    full, bg = render_specs(specs), render_specs([drop_object(s) for s in specs])
    support = (full["alpha"][:, 0] > 0) | (full["shadow"][:, 0] > 0)
    same = (full["image"] - bg["image"]).abs().amax(1) < 1e-6
    assert bool(same[~support].all()), "dropping the target changed pixels it does not touch"
    assert bool((~same & support).any())
    only = drop_object(_one())
    assert len(only) == 0 and torch.allclose(render_specs([only])["image"][0], only.background)
    assert len(drop_object(specs[0], 0)) == len(specs[0]) - 1


def test_edits_render_exactly():
    base = _one("triangle", center=(16.0, 16.0), angle=0.4)
    a = render_specs([base])["alpha"][0, 0]
    moved = render_specs([edit_object(base, shift=(3, -5))])["alpha"][0, 0]
    assert torch.allclose(moved[3:, :-5], a[:-3, 5:], atol=1e-5), "an integer shift moves the rendered alpha by pixels"
    flipped = render_specs([edit_object(base, flip=True)])["alpha"][0, 0]
    assert torch.allclose(flipped, a.flip(-1), atol=1e-5), "flip mirrors the object about its centre"
    assert not torch.allclose(flipped, a, atol=1e-3)
    small = render_specs([edit_object(base, scale=0.5)])["alpha"][0, 0]
    assert 0.2 < float(small.sum() / a.sum()) < 0.3
    # the shadow follows the object
    sh = replace(base, shadows=torch.tensor([True]))
    s0, s1 = render_specs([sh])["shadow"][0, 0], render_specs([edit_object(sh, shift=(0, 4))])["shadow"][0, 0]
    assert torch.allclose(s1[:, 4:], s0[:, :-4], atol=1e-5)
    # the original spec is untouched
    assert base.centers[0, 0] == 16.0 and base.radii[0] == 7.0


def test_scene_images():
    x = scene_images(10, 24, seed=0, chunk=4)
    assert x.shape == (10, 3, 24, 24) and x.dtype == torch.float32
    assert torch.equal(x, scene_images(10, 24, seed=0))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n=0), ValueError, "n must"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(n_objects=0), ValueError, "n_objects"),
    (dict(n_objects=(2, 1)), ValueError, "n_objects"),
    (dict(shadow_prob=2.0), ValueError, "shadow_prob"),
    (dict(backgrounds=("marble",)), ValueError, "backgrounds"),
    (dict(backgrounds=()), ValueError, "backgrounds"),
    (dict(shapes=("blob",)), ValueError, "shapes"),
    (dict(radius=(0.3, 0.1)), ValueError, "radius"),
    (dict(gap=-1.0), ValueError, "gap"),
    (dict(size=0), ValueError, "size"),
])
def test_scene_specs_bad_input(kwargs, exc, match):
    args = dict(n=2, seed=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        scene_specs(args.pop("n"), **args)


def test_render_and_edit_bad_input():
    s = _one()
    with pytest.raises(ValueError, match="specs"):
        render_specs([])
    with pytest.raises(TypeError, match=r"specs\[0\]"):
        render_specs(["not a spec"])
    with pytest.raises(ValueError, match="same size"):
        render_specs([s, _one(size=16, center=(8.0, 8.0), radius=4.0)])
    with pytest.raises(ValueError, match="index"):
        drop_object(s, 1)
    with pytest.raises(TypeError, match="spec"):
        drop_object("scene")
    with pytest.raises(ValueError, match="shift"):
        edit_object(s, shift=(1,))
    with pytest.raises(ValueError, match="shift"):
        edit_object(s, shift=(math.inf, 0))
    with pytest.raises(ValueError, match="scale"):
        edit_object(s, scale=0.0)
    with pytest.raises(TypeError, match="flip"):
        edit_object(s, flip=1)
    with pytest.raises(ValueError, match="index"):
        edit_object(s, index=-1)
    with pytest.raises(ValueError, match="chunk"):
        scene_images(2, seed=0, chunk=0)
