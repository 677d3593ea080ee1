"""Tests of layerwise.data.layouts (ART's multi-layer scenes and sprite layouts)."""

from __future__ import annotations

import pytest
import torch

from layerwise.data import compose
from layerwise.data.layouts import layered_scenes, sprite_layout


def test_layered_scenes_are_seeded_and_have_the_asked_layer_counts():
    a = layered_scenes(12, seed=3, n_layers=(2, 6))
    b = layered_scenes(12, seed=3, n_layers=(2, 6))
    c = layered_scenes(12, seed=4, n_layers=(2, 6))
    assert all(torch.equal(x.image, y.image) and torch.equal(x.layers, y.layers) for x, y in zip(a, b))
    assert not all(torch.equal(x.image, y.image) for x, y in zip(a, c))
    counts = [len(s.kinds) for s in layered_scenes(80, seed=0, n_layers=(2, 6))]
    assert min(counts) == 2 and max(counts) == 6
    assert {len(s.kinds) for s in layered_scenes(10, seed=0, n_layers=3)} == {3}


def test_layered_scenes_composite_boxes_and_backgrounds():
    for s in layered_scenes(20, (24, 32), seed=1, backgrounds=("flat",), glass_prob=0.5):
        assert s.image.shape == (3, 24, 32)
        assert torch.allclose(compose(s.background, s.layers, s.modes), s.image)
        assert set(s.modes) == {"over"} and set(s.kinds) <= {"sprite", "glass"}
        flat = s.background.flatten(1)
        assert torch.equal(flat, flat[:, :1].expand_as(flat)), "a 'flat' background is one colour"
        for layer, (x0, y0, x1, y1) in zip(s.layers, s.boxes.tolist()):
            on = layer[3] > 0.01
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 24
            assert on[y0:y1, x0:x1].sum() == on.sum(), "the box holds all of the layer"


def test_layered_scenes_glass_prob_gives_see_through_layers():
    kinds = [k for s in layered_scenes(40, seed=2, glass_prob=1.0) for k in s.kinds]
    assert set(kinds) == {"glass"}
    kinds = [k for s in layered_scenes(40, seed=2, glass_prob=0.0) for k in s.kinds]
    assert set(kinds) == {"sprite"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0, seed=0), "n must"),
    (dict(n=2, seed=0, n_layers=(0, 2)), "n_layers"),
    (dict(n=2, seed=0, n_layers=(4, 2)), "n_layers"),
    (dict(n=2, seed=0, backgrounds=("plaid",)), "backgrounds"),
    (dict(n=2, seed=0, backgrounds=()), "backgrounds"),
    (dict(n=2, seed=0, radius=(0.3, 0.1)), "radius"),
    (dict(n=2, seed=0, glass_prob=1.5), "glass_prob"),
    (dict(n=2, seed=0, shapes=("blob",)), "shapes"),
])
def test_layered_scenes_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layered_scenes(**kwargs)


def test_layered_scenes_bad_seed_and_size():
    with pytest.raises(TypeError, match="seed"):
        layered_scenes(2, seed=1.5)
    with pytest.raises(ValueError, match="size"):
        layered_scenes(2, 0, seed=0)


def test_sprite_layout_boxes():
    boxes = sprite_layout(50, 32, generator=0)
    assert boxes.shape == (50, 4) and boxes.dtype == torch.long
    x0, y0, x1, y1 = boxes.unbind(1)
    assert bool(((x0 < x1) & (y0 < y1) & (x0 >= 0) & (y0 >= 0) & (x1 <= 32) & (y1 <= 32)).all())
    assert torch.equal(boxes, sprite_layout(50, 32, generator=0))
    assert not torch.equal(boxes, sprite_layout(50, 32, generator=1))
    small = sprite_layout(200, 32, generator=2, radius=(0.05, 0.1))
    big = sprite_layout(200, 32, generator=2, radius=(0.2, 0.3))
    area = lambda b: ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).float().mean()   # noqa: E731
    assert area(small) < area(big) / 3


def test_sprite_layout_bad_input():
    with pytest.raises(ValueError, match="k must"):
        sprite_layout(0, generator=0)
    with pytest.raises(TypeError, match="generator"):
        sprite_layout(3, generator="seed")
    with pytest.raises(ValueError, match="radius"):
        sprite_layout(3, generator=0, radius=(0.0, 0.1))
