"""Tests of AlphaBlend-mini (layerwise.data.alphablend): six procedural subtasks with known layers."""

from __future__ import annotations

import pytest
import torch

from layerwise.data import blend
from layerwise.data.alphablend import (SUBTASK_MODES, SUBTASKS, TEST_SEED, AlphaBlendSet, alphablend,
                                       alphablend_test_set, foregrounds)


@pytest.fixture(scope="module")
def small() -> AlphaBlendSet:
    return alphablend(12, seed=3)


def test_shapes_ranges_and_interleaved_tasks(small):
    n = 12 * len(SUBTASKS)
    assert len(small) == n
    assert small.composite.shape == (n, 3, 32, 32) and small.background.shape == (n, 3, 32, 32)
    assert small.foreground.shape == (n, 4, 32, 32)
    for x in (small.composite, small.foreground, small.background):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert small.task.dtype == torch.long
    assert small.task[: len(SUBTASKS)].tolist() == list(range(len(SUBTASKS)))
    assert torch.bincount(small.task).tolist() == [12] * len(SUBTASKS)


def test_composite_is_each_subtasks_blend_of_its_layers(small):
    for k, name in enumerate(SUBTASKS):
        s = small.of_task(name)
        assert len(s) == 12 and (s.task == k).all()
        assert torch.allclose(s.composite, blend(s.foreground, s.background, SUBTASK_MODES[name]), atol=1e-6)
    assert small.modes[: len(SUBTASKS)] == [SUBTASK_MODES[t] for t in SUBTASKS]


def test_seeded_and_the_test_set_is_its_own_draw():
    a, b, c = alphablend(3, seed=7), alphablend(3, seed=7), alphablend(3, seed=8)
    assert torch.equal(a.composite, b.composite) and torch.equal(a.foreground, b.foreground)
    assert not torch.equal(a.composite, c.composite)
    t = alphablend_test_set(3)
    assert torch.equal(t.composite, alphablend(3, seed=TEST_SEED).composite)
    assert not torch.equal(t.composite, a.composite)


def test_subset_indexing(small):
    one = small[0]
    assert isinstance(one, AlphaBlendSet) and len(one) == 1 and one.composite.shape == (1, 3, 32, 32)
    assert len(small[-1]) == 1 and torch.equal(small[-1].task, small.task[-1:])
    part = small[torch.tensor([1, 4])]
    assert part.task.tolist() == [1, 4]
    assert len(small.of_task(2)) == 12


def test_only_some_subtasks_and_non_square():
    s = alphablend(4, (24, 40), seed=1, tasks=("cells", "xray"))
    assert s.composite.shape == (8, 3, 24, 40)
    assert set(s.task.tolist()) == {SUBTASKS.index("cells"), SUBTASKS.index("xray")}
    for name in SUBTASKS:
        fg = foregrounds(name, 3, (20, 28), generator=0)
        assert fg.shape == (3, 4, 20, 28) and fg.min() >= 0 and fg.max() <= 1


def test_each_subtask_draws_its_own_kind_of_layer():
    n = 64
    fg = {name: foregrounds(name, n, 32, generator=11) for name in SUBTASKS}
    a = {name: x[:, 3] for name, x in fg.items()}
    # occlusion: a global fog, every pixel at least 10 % covered; the others leave most pixels clear
    assert a["occlusion"].amin() >= 0.1
    for name in ("watermark", "glassware", "cells", "xray"):
        assert (a[name] < 0.01).float().mean() > 0.4, name
    # watermarks: semi-transparent, at most 50 % opaque; cells: faint discs
    assert a["watermark"].max() <= 0.5 + 1e-6 and a["watermark"].max() > 0.25
    assert a["cells"].max() <= 0.85 and a["cells"].flatten(1).amax(1).min() > 0.2
    # flares are warm (red >= blue), X-ray tints bluish (blue > red), fog light
    f, x = fg["flare"][:, :3, 0, 0], fg["xray"][:, :3, 0, 0]
    assert (f[:, 0] >= f[:, 2]).all() and (x[:, 2] > x[:, 0]).all()
    assert fg["occlusion"][:, :3].amin() >= 0.7
    # glass has a more opaque rim and a bright highlight: alpha ranges widely inside one layer
    assert (a["glassware"].flatten(1).amax(1) > 0.6).all()
    # the X-ray item inside the bag is denser than the bag
    assert (a["xray"].flatten(1).amax(1) >= 0.75).all()


def test_trivial_background_error_differs_by_subtask(small):
    """The 'background = composite' baseline: the global fog changes the image most."""
    err = {name: (s.composite - s.background).pow(2).mean().sqrt().item()
           for name in SUBTASKS for s in [small.of_task(name)]}
    assert max(err, key=err.get) == "occlusion"
    assert all(v > 0 for v in err.values())


@pytest.mark.parametrize("call, exc, match", [
    (lambda: alphablend(0, seed=1), ValueError, "n_per_task"),
    (lambda: alphablend(2, seed=1.5), TypeError, "seed"),
    (lambda: alphablend(2, seed=1, tasks=("flare", "smoke")), ValueError, "tasks"),
    (lambda: alphablend(2, seed=1, tasks=("flare", "flare")), ValueError, "tasks"),
    (lambda: alphablend(2, 0, seed=1), ValueError, "size"),
    (lambda: alphablend(2, (32, 32, 3), seed=1), ValueError, "size"),
    (lambda: foregrounds("smoke", 2, generator=0), ValueError, "task"),
    (lambda: foregrounds(["flare"], 2, generator=0), TypeError, "task"),
    (lambda: foregrounds("flare", 0, generator=0), ValueError, "n"),
    (lambda: foregrounds("flare", 2, generator="seed"), TypeError, "generator"),
    (lambda: alphablend_test_set(-1), ValueError, "n_per_task"),
    (lambda: alphablend(1, seed=0).of_task("smoke"), ValueError, "task"),
    (lambda: alphablend(1, seed=0).of_task(6), ValueError, "task"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
