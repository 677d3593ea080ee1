"""Tests of layerwise.diff_decompose (DiffDecompose), plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise import diff_decompose as dd
from layerwise.data import blend as library_blend, premultiplied_rgb
from layerwise.data.alphablend import SUBTASKS, alphablend
from layerwise.diffusion import grid_position_ids, make_scheduler
from layerwise.diffusion.dit import rope_angles

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "blend": (
        "def blend(fg_rgba, bg, mode):\n"
        "    modes = [mode] * bg.shape[0] if isinstance(mode, str) else list(mode)\n"
        "    outs = []\n"
        "    for f, b, m in zip(fg_rgba, bg, modes):\n"
        "        c, a = f[:3], f[3:]\n"
        "        if m == 'over':\n"
        "            mixed = c\n"
        "        elif m == 'screen':\n"
        "            mixed = c + b - c * b\n"
        "        elif m == 'add':\n"
        "            mixed = torch.minimum(c + b, torch.ones_like(b))\n"
        "        elif m == 'multiply':\n"
        "            mixed = c * b\n"
        "        else:\n"
        "            raise ValueError(m)\n"
        "        outs.append((b + a * (mixed - b)).clamp(0, 1))\n"
        "    return torch.stack(outs)\n"),
    "in_context_positions": (
        "def in_context_positions(scheme, height, width):\n"
        "    layers = {'distinct': [0, 1, 2], 'cloned': [0, 1, 0], 'shared': [0, 0, 0]}[scheme]\n"
        "    rows = []\n"
        "    for layer in layers:\n"
        "        for y in range(height):\n"
        "            for x in range(width):\n"
        "                rows.append([layer, y, x])\n"
        "    return torch.tensor(rows, dtype=torch.long)\n"),
    "per_task_rmse": (
        "def per_task_rmse(pred, target, task_ids, num_tasks=None):\n"
        "    k = int(task_ids.max()) + 1 if num_tasks is None else num_tasks\n"
        "    err = ((pred - target) * 255).pow(2).reshape(pred.shape[0], -1).mean(dim=1).sqrt()\n"
        "    out = []\n"
        "    for j in range(k):\n"
        "        sel = task_ids == j\n"
        "        out.append(err[sel].mean() if sel.any() else torch.tensor(float('nan'), dtype=pred.dtype))\n"
        "    return torch.stack(out).to(pred.dtype)\n"),
}

_BLEND_HEAD = (
    "def blend(fg_rgba, bg, mode):\n"
    "    modes = [mode] * bg.shape[0] if isinstance(mode, str) else list(mode)\n"
    "    c, a = fg_rgba[:, :3], fg_rgba[:, 3:]\n"
    "    out = []\n"
    "    for i, m in enumerate(modes):\n"
    "        ci, ai, bi = c[i], a[i], bg[i]\n")
# Plausible mistakes: each must lose its item's points.
WRONG_ANSWERS = {
    "blend": [
        _BLEND_HEAD + (   # add without the clamp inside the blend (only the final one)
            "        mixed = {'over': ci, 'screen': 1 - (1 - ci) * (1 - bi), 'add': ci + bi, 'multiply': ci * bi}[m]\n"
            "        out.append(((1 - ai) * bi + ai * mixed).clamp(0, 1))\n"
            "    return torch.stack(out)\n"),
        (   # one mode for the whole batch: the first
            "def blend(fg_rgba, bg, mode):\n"
            "    m = mode if isinstance(mode, str) else mode[0]\n"
            "    c, a = fg_rgba[:, :3], fg_rgba[:, 3:]\n"
            "    mixed = {'over': c, 'screen': 1 - (1 - c) * (1 - bg), 'add': (c + bg).clamp(max=1), 'multiply': c * bg}[m]\n"
            "    return ((1 - a) * bg + a * mixed).clamp(0, 1)\n"),
        _BLEND_HEAD + (   # multiply without alpha: the layer's colour times the background everywhere
            "        mixed = {'over': ci, 'screen': 1 - (1 - ci) * (1 - bi), 'add': (ci + bi).clamp(max=1), 'multiply': ci * bi}[m]\n"
            "        out.append(mixed.clamp(0, 1) if m == 'multiply' else ((1 - ai) * bi + ai * mixed).clamp(0, 1))\n"
            "    return torch.stack(out)\n"),
        _BLEND_HEAD + (   # screen written as the sum (that is add, unclamped)
            "        mixed = {'over': ci, 'screen': ci + bi, 'add': (ci + bi).clamp(max=1), 'multiply': ci * bi}[m]\n"
            "        out.append(((1 - ai) * bi + ai * mixed).clamp(0, 1))\n"
            "    return torch.stack(out)\n"),
    ],
    "in_context_positions": [
        (   # clones the foreground with the composite instead of the background
            "def in_context_positions(scheme, height, width):\n"
            "    layers = {'distinct': [0, 1, 2], 'cloned': [0, 0, 1], 'shared': [0, 0, 0]}[scheme]\n"
            "    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')\n"
            "    grid = torch.stack([ys.flatten(), xs.flatten()], 1)\n"
            "    return torch.cat([torch.cat([torch.full_like(grid[:, :1], k), grid], 1) for k in layers])\n"),
        (   # (x, y) instead of (y, x): the same on square grids only
            "def in_context_positions(scheme, height, width):\n"
            "    layers = {'distinct': [0, 1, 2], 'cloned': [0, 1, 0], 'shared': [0, 0, 0]}[scheme]\n"
            "    ys, xs = torch.meshgrid(torch.arange(width), torch.arange(height), indexing='ij')\n"
            "    grid = torch.stack([ys.flatten(), xs.flatten()], 1)\n"
            "    return torch.cat([torch.cat([torch.full_like(grid[:, :1], k), grid], 1) for k in layers])\n"),
        (   # int32 ids
            "def in_context_positions(scheme, height, width):\n"
            "    layers = {'distinct': [0, 1, 2], 'cloned': [0, 1, 0], 'shared': [0, 0, 0]}[scheme]\n"
            "    rows = [[k, y, x] for k in layers for y in range(height) for x in range(width)]\n"
            "    return torch.tensor(rows, dtype=torch.int32)\n"),
    ],
    "per_task_rmse": [
        (   # pools the squared errors of all a task's pixels instead of averaging per-image RMSEs
            "def per_task_rmse(pred, target, task_ids, num_tasks=None):\n"
            "    k = int(task_ids.max()) + 1 if num_tasks is None else num_tasks\n"
            "    sq = ((pred - target) * 255).pow(2).flatten(1).mean(1)\n"
            "    out = torch.full((k,), float('nan'), dtype=pred.dtype)\n"
            "    for j in range(k):\n"
            "        if (task_ids == j).any():\n"
            "            out[j] = sq[task_ids == j].mean().sqrt()\n"
            "    return out\n"),
        (   # forgets the 0-255 scale
            "def per_task_rmse(pred, target, task_ids, num_tasks=None):\n"
            "    k = int(task_ids.max()) + 1 if num_tasks is None else num_tasks\n"
            "    err = (pred - target).pow(2).flatten(1).mean(1).sqrt()\n"
            "    out = torch.full((k,), float('nan'), dtype=pred.dtype)\n"
            "    for j in range(k):\n"
            "        if (task_ids == j).any():\n"
            "            out[j] = err[task_ids == j].mean()\n"
            "    return out\n"),
        (   # a subtask without images gets 0 instead of NaN
            "def per_task_rmse(pred, target, task_ids, num_tasks=None):\n"
            "    k = int(task_ids.max()) + 1 if num_tasks is None else num_tasks\n"
            "    err = ((pred - target) * 255).pow(2).flatten(1).mean(1).sqrt()\n"
            "    total = torch.zeros(k, dtype=pred.dtype).index_add_(0, task_ids.long(), err)\n"
            "    count = torch.zeros(k, dtype=pred.dtype).index_add_(0, task_ids.long(), torch.ones_like(err))\n"
            "    return total / count.clamp(min=1)\n"),
        (   # counts the subtasks present instead of max id + 1
            "def per_task_rmse(pred, target, task_ids, num_tasks=None):\n"
            "    k = len(torch.unique(task_ids)) if num_tasks is None else num_tasks\n"
            "    err = ((pred - target) * 255).pow(2).flatten(1).mean(1).sqrt()\n"
            "    out = torch.full((k,), float('nan'), dtype=pred.dtype)\n"
            "    for j in range(k):\n"
            "        if (task_ids == j).any():\n"
            "            out[j] = err[task_ids == j].mean()\n"
            "    return out\n"),
    ],
}


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- blend

@pytest.mark.parametrize("mode", ["over", "screen", "add", "multiply"])
def test_blend_one_mode_is_the_librarys_blend(mode):
    fg, bg = _rand(5, 4, 6, 7, seed=1), _rand(5, 3, 6, 7, seed=2)
    assert torch.allclose(dd.blend(fg, bg, mode), library_blend(fg, bg, mode))


def test_blend_per_image_modes_and_known_answers():
    fg, bg = _rand(4, 4, 5, 5, seed=3), _rand(4, 3, 5, 5, seed=4)
    modes = ["multiply", "over", "add", "screen"]
    out = dd.blend(fg, bg, modes)
    for i, m in enumerate(modes):
        assert torch.allclose(out[i], library_blend(fg[i], bg[i], m))
    # known answers: an opaque layer "over" is the layer; a white layer multiplies by 1; a black one screens
    # and adds nothing; a clear layer changes nothing in any mode
    c = torch.full((1, 3, 2, 2), 0.3)
    one, zero = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    b = torch.full((1, 3, 2, 2), 0.6)
    assert torch.allclose(dd.blend(torch.cat([c, one], 1), b, "over"), c)
    assert torch.allclose(dd.blend(torch.cat([torch.ones_like(c), one], 1), b, "multiply"), b)
    for m in ("screen", "add"):
        assert torch.allclose(dd.blend(torch.cat([torch.zeros_like(c), one], 1), b, m), b)
    for m in ("over", "screen", "add", "multiply"):
        assert torch.allclose(dd.blend(torch.cat([c, zero], 1), b, m), b)
    # add saturates at 1 inside the blend: half-opaque 0.8 onto 0.6 -> 0.5 * 0.6 + 0.5 * 1
    half = torch.cat([torch.full((1, 3, 2, 2), 0.8), 0.5 * one], 1)
    assert torch.allclose(dd.blend(half, b, "add"), torch.full_like(b, 0.8))
    assert dd.blend(fg.double(), bg.double(), "over").dtype == torch.float64


@pytest.mark.parametrize("call, exc, match", [
    (lambda fg, bg: dd.blend(fg, bg, "lighten"), ValueError, "mode"),
    (lambda fg, bg: dd.blend(fg, bg, ["over"] * 2), ValueError, "mode"),
    (lambda fg, bg: dd.blend(fg, bg, 3), TypeError, "mode"),
    (lambda fg, bg: dd.blend(fg[:, :3], bg, "over"), ValueError, "fg_rgba"),
    (lambda fg, bg: dd.blend(fg, bg[:, :1], "over"), ValueError, "bg"),
    (lambda fg, bg: dd.blend(fg, (bg * 255).long(), "over"), TypeError, "bg"),
    (lambda fg, bg: dd.blend(fg.numpy(), bg, "over"), TypeError, "fg_rgba"),
    (lambda fg, bg: dd.blend(fg[:2], bg, "over"), ValueError, "same batch"),
    (lambda fg, bg: dd.blend(fg, bg[..., :4], "over"), ValueError, "same batch"),
])
def test_blend_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_rand(3, 4, 5, 5), _rand(3, 3, 5, 5))


# ----------------------------------------------------------------------------- positions

def test_positions_per_scheme():
    h, w = 3, 5
    n = h * w
    grid = grid_position_ids(h, w)
    for scheme, layers in dd.LAYER_INDEX.items():
        ids = dd.in_context_positions(scheme, h, w)
        assert ids.shape == (3 * n, 3) and ids.dtype == torch.long
        for k, layer in enumerate(layers):
            seg = ids[k * n:(k + 1) * n]
            assert (seg[:, 0] == layer).all() and torch.equal(seg[:, 1:], grid)
    cloned = dd.in_context_positions("cloned", h, w)
    assert torch.equal(cloned[:n], cloned[2 * n:]), "composite and background share every id (LPEC)"
    assert not torch.equal(cloned[:n], cloned[n:2 * n]), "the foreground gets ids of its own"
    distinct = dd.in_context_positions("distinct", h, w)
    assert len({tuple(r) for r in distinct.tolist()}) == 3 * n
    shared = dd.in_context_positions("shared", h, w)
    assert torch.equal(shared[:n], shared[n:2 * n]) and torch.equal(shared[:n], shared[2 * n:])


def test_cloned_ids_give_background_and_composite_the_same_rotary_code():
    ids = dd.in_context_positions("cloned", 4, 4)
    angles = rope_angles(ids, head_dim=24)
    assert torch.equal(angles[:16], angles[32:]) and not torch.equal(angles[:16], angles[16:32])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: dd.in_context_positions("lpec", 2, 2), ValueError, "scheme"),
    (lambda: dd.in_context_positions(None, 2, 2), ValueError, "scheme"),
    (lambda: dd.in_context_positions("cloned", 0, 2), ValueError, "height"),
    (lambda: dd.in_context_positions("cloned", 2, 2.0), TypeError, "width"),
    (lambda: dd.in_context_positions("cloned", True, 2), TypeError, "height"),
    (lambda: dd.zoo_name("offset"), ValueError, "scheme"),
])
def test_positions_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- scores

def test_rmse_known_answers():
    target = torch.zeros(3, 3, 4, 4)
    pred = target.clone()
    pred[0] += 1 / 255                       # image 0: off by one grey level everywhere -> RMSE 1
    pred[1, 0, 0, 0] = 1.0                   # image 1: one channel of one pixel fully wrong
    assert torch.allclose(dd.per_image_rmse(pred, target), torch.tensor([1.0, 255 / math.sqrt(48), 0.0]))
    got = dd.per_task_rmse(pred, target, torch.tensor([2, 2, 0]))
    assert got.shape == (3,) and got[0] == 0 and torch.isnan(got[1])
    assert torch.allclose(got[2], (1.0 + 255 / math.sqrt(48)) / 2 * torch.ones(()))
    assert dd.per_task_rmse(pred, target, torch.tensor([2, 2, 0]), num_tasks=6).shape == (6,)
    assert dd.per_task_rmse(pred.double(), target.double(), torch.tensor([0, 0, 0])).dtype == torch.float64


@pytest.mark.parametrize("call, exc, match", [
    (lambda p, t: dd.per_task_rmse(p, t, torch.tensor([0.0, 1.0])), TypeError, "task_ids"),
    (lambda p, t: dd.per_task_rmse(p, t, torch.tensor([0, 1, 2])), ValueError, "task_ids"),
    (lambda p, t: dd.per_task_rmse(p, t, torch.tensor([0, -1])), ValueError, "task_ids"),
    (lambda p, t: dd.per_task_rmse(p, t, torch.tensor([0, 6]), num_tasks=6), ValueError, "num_tasks"),
    (lambda p, t: dd.per_task_rmse(p, t, torch.tensor([0, 1]), num_tasks=0), ValueError, "num_tasks"),
    (lambda p, t: dd.per_task_rmse(p, t, [0, 1]), TypeError, "task_ids"),
    (lambda p, t: dd.per_task_rmse(p, t[:, :2], torch.tensor([0, 1])), ValueError, "same shape"),
    (lambda p, t: dd.per_task_rmse(p.long(), t, torch.tensor([0, 1])), TypeError, "pred"),
    (lambda p, t: dd.per_image_rmse(p, t.numpy()), TypeError, "target"),
    (lambda p, t: dd.per_image_rmse(p[:0], t[:0]), ValueError, "pred"),
])
def test_scores_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_rand(2, 3, 4, 4), _rand(2, 3, 4, 4, seed=1))


# ----------------------------------------------------------------------------- the state and the model

def test_layer_state_round_trip():
    data = alphablend(2, seed=5)
    state = dd.layer_state(data.foreground, data.background)
    assert state.shape == (len(data), 8, 32, 32) and state.min() >= -1 and state.max() <= 1
    assert (state[:, 7] == 1).all(), "the background is an opaque layer"
    fg, bg = dd.split_state(state)
    assert torch.allclose(bg, data.background, atol=1e-6)
    assert torch.allclose(premultiplied_rgb(fg), premultiplied_rgb(data.foreground), atol=1e-3)
    assert torch.allclose(fg[:, 3], data.foreground[:, 3], atol=1e-6)
    with pytest.raises(ValueError, match="state"):
        dd.split_state(state[:, :4])
    with pytest.raises(ValueError, match="foreground"):
        dd.layer_state(data.background, data.background)
    with pytest.raises(TypeError, match="background"):
        dd.layer_state(data.foreground, data.background.numpy())


def _randomised(scheme: str) -> dd.InContextDecomposer:
    """A small decomposer whose zero-initialised output layers are randomised too."""
    torch.manual_seed(0)
    model = dd.InContextDecomposer(scheme=scheme, image_size=16, patch=4, dim=24, depth=2, heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_untrained_model_predicts_zero_and_shapes():
    model = dd.InContextDecomposer(scheme="cloned", image_size=16, patch=4, dim=24, depth=2, heads=2)
    assert torch.equal(model.pos_ids, dd.in_context_positions("cloned", 4, 4))
    x = torch.randn(3, 8, 16, 16)
    z = torch.rand(3, 3, 16, 16)
    out = model(x, torch.tensor([0, 500, 999]), z, torch.tensor([0, 3, 5]))
    assert out.shape == (3, 8, 16, 16) and (out == 0).all(), "adaLN-Zero: an untrained DiT outputs 0"
    assert model.tokens(x, z).shape == (3, 48, 64)
    acp = make_scheduler("ddpm").alphas_cumprod
    t = torch.tensor([0, 500, 999])
    a = acp[t].view(3, 1, 1, 1)
    x0, eps = model.predict(x, t, z, None, acp)          # x0-prediction: x0 = 0, so eps = x_t / √(1−ᾱ)
    assert (x0 == 0).all() and torch.allclose(eps, x / (1 - a).sqrt())
    for prediction in ("v", "x0", "eps"):
        other = dd.InContextDecomposer(scheme="cloned", image_size=16, patch=4, dim=24, depth=2, heads=2,
                                       prediction=prediction)
        x0, eps = other.predict(x, t, z, None, acp)
        if prediction == "v":                            # v = 0 means x0 = √ᾱ x_t, ε = √(1−ᾱ) x_t
            assert torch.allclose(x0, a.sqrt() * x) and torch.allclose(eps, (1 - a).sqrt() * x)
        elif prediction == "x0":
            assert (x0 == 0).all() and torch.allclose(eps, x / (1 - a).sqrt())
        else:
            assert (eps == 0).all() and torch.allclose(x0, x / a.sqrt())


def test_the_three_predictions_agree_on_a_known_state():
    """For the true clean state and noise, each parametrisation's target maps back to (s0, eps)."""
    acp = make_scheduler("ddpm").alphas_cumprod
    s0, eps = torch.rand(2, 8, 16, 16) * 2 - 1, torch.randn(2, 8, 16, 16)
    t = torch.tensor([30, 800])
    a = acp[t].view(2, 1, 1, 1)
    xt = a.sqrt() * s0 + (1 - a).sqrt() * eps
    targets = {"v": a.sqrt() * eps - (1 - a).sqrt() * s0, "x0": s0, "eps": eps}
    for prediction, target in targets.items():
        model = dd.InContextDecomposer(image_size=16, patch=4, dim=24, depth=1, heads=2, prediction=prediction)
        model.forward = lambda *args, target=target: target
        got_x0, got_eps = model.predict(xt, t, torch.rand(2, 3, 16, 16), None, acp)
        assert torch.allclose(got_x0, s0, atol=1e-4) and torch.allclose(got_eps, eps, atol=1e-3), prediction


def test_shared_ids_cannot_tell_foreground_from_background():
    """With all segments on one position grid, attention is blind to which segment a token is in:
    swapping the foreground and background inputs swaps the outputs exactly. Distinct or cloned ids
    break that symmetry."""
    x = torch.randn(2, 8, 16, 16)
    swapped = torch.cat([x[:, 4:], x[:, :4]], 1)
    z, t, task = torch.rand(2, 3, 16, 16), torch.tensor([100, 700]), torch.tensor([1, 4])
    with torch.no_grad():
        for scheme in dd.SCHEMES:
            model = _randomised(scheme)
            out, out_sw = model(x, t, z, task), model(swapped, t, z, task)
            symmetric = torch.allclose(out_sw, torch.cat([out[:, 4:], out[:, :4]], 1), atol=1e-5)
            assert symmetric == (scheme == "shared"), scheme


def test_model_bad_input():
    model = dd.InContextDecomposer(image_size=16, patch=4, dim=24, depth=1, heads=2)
    x, z, t = torch.randn(2, 8, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="state_t"):
        model(x[:, :4], t, z)
    with pytest.raises(ValueError, match="state_t"):
        model(torch.randn(2, 8, 32, 32), t, torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="composite"):
        model(x, t, z[:1])
    with pytest.raises(ValueError, match="task"):
        model(x, t, z, torch.tensor([0, 6]))
    with pytest.raises(TypeError, match="task"):
        model(x, t, z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="scheme"):
        dd.DecomposerConfig(scheme="lpec")
    with pytest.raises(ValueError, match="prediction"):
        dd.DecomposerConfig(prediction="flow")


def test_loss_training_and_decompose():
    data = alphablend(6, 16, seed=2)
    acp = make_scheduler("ddpm").alphas_cumprod
    torch.manual_seed(0)
    x0_model = dd.InContextDecomposer(image_size=16, patch=4, dim=24, depth=2, heads=2, prediction="x0")
    g = torch.Generator().manual_seed(0)
    loss = dd.decomposition_loss(x0_model, data, acp, generator=g)
    state = dd.layer_state(data.foreground, data.background)
    assert torch.allclose(loss, state.pow(2).mean()), "x0-prediction from an untrained model: the loss is E[s0^2]"
    model = x0_model
    eps_model = dd.InContextDecomposer(image_size=16, patch=4, dim=24, depth=2, heads=2, prediction="eps")
    assert abs(dd.decomposition_loss(eps_model, data, acp, generator=g).item() - 1.0) < 0.1
    hist = dd.train_decomposer(model, data, steps=30, batch_size=12, lr=3e-3, warmup=5, ema=None,
                               generator=torch.Generator().manual_seed(1), progress=False)
    assert len(hist.loss) == 30 and not model.training
    assert sum(hist.loss[-5:]) / 5 < 0.7 * sum(hist.loss[:5]) / 5
    fg, bg = dd.decompose(model, data.composite[:4], data.task[:4], steps=3, generator=torch.Generator().manual_seed(0))
    assert fg.shape == (4, 4, 16, 16) and bg.shape == (4, 3, 16, 16)
    assert fg.min() >= 0 and fg.max() <= 1 and bg.min() >= 0 and bg.max() <= 1
    again, _ = dd.decompose(model, data.composite[:4], data.task[:4], steps=3, generator=torch.Generator().manual_seed(0),
                            batch_size=3)
    assert torch.allclose(fg, again, atol=1e-5), "the same noise gives the same decomposition, in any batching"
    other, _ = dd.decompose(model, data.composite[:4], data.task[:4], steps=3, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(fg, other)
    res = dd.evaluate_decomposition(model, data, steps=2)
    for key in ("bg", "fg", "recomposite", "bg_trivial", "fg_trivial"):
        assert res[key].shape == (len(data),) and torch.isfinite(res[key]).all()
    assert torch.allclose(res["bg_trivial"], dd.per_image_rmse(data.composite, data.background))
    assert torch.allclose(res["fg_trivial"], dd.per_image_rmse(torch.zeros(len(data), 3, 16, 16),
                                                               premultiplied_rgb(data.foreground)))


def test_training_and_sampling_bad_input():
    model = dd.InContextDecomposer(image_size=16, patch=4, dim=24, depth=1, heads=2)
    data = alphablend(1, 16, seed=0)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="batch"):
        dd.decomposition_loss(model, data.composite, make_scheduler("ddpm").alphas_cumprod, generator=g)
    with pytest.raises(TypeError, match="data"):
        dd.train_decomposer(model, data.composite, steps=1, generator=g)
    with pytest.raises(TypeError, match="model"):
        dd.decompose(torch.nn.Linear(2, 2), data.composite, data.task)
    with pytest.raises(ValueError, match="steps"):
        dd.decompose(model, data.composite, data.task, steps=0)
    with pytest.raises(ValueError, match="task"):
        dd.decompose(model, data.composite, data.task[:2])
    with pytest.raises(ValueError, match="composite"):
        dd.decompose(model, data.foreground, data.task)
    with pytest.raises(ValueError, match="batch_size"):
        dd.decompose(model, data.composite, data.task, batch_size=0)
    with pytest.raises(ValueError, match="steps"):
        dd.train_decomposer(model, data, steps=-1, generator=g)
    with pytest.raises(TypeError, match="model"):
        dd.train_decomposer(torch.nn.Linear(2, 2), data, steps=1, generator=g)
    with pytest.raises(TypeError, match="data"):
        dd.evaluate_decomposition(model, data.composite)


def test_zoo_names():
    assert [dd.zoo_name(s) for s in dd.SCHEMES] == [f"diffdecompose_{s}" for s in dd.SCHEMES]
    assert len(SUBTASKS) == dd.DecomposerConfig().num_tasks


def test_loss_at_given_timesteps():
    data = alphablend(2, 16, seed=4)
    acp = make_scheduler("ddpm").alphas_cumprod
    model = dd.InContextDecomposer(image_size=16, patch=4, dim=24, depth=1, heads=2, prediction="eps")
    g = torch.Generator().manual_seed(0)
    t = torch.full((len(data),), 999)
    assert abs(dd.decomposition_loss(model, data, acp, generator=g, t=t).item() - 1.0) < 0.1
    with pytest.raises(ValueError, match="t must"):
        dd.decomposition_loss(model, data, acp, generator=g, t=t[:3])
    with pytest.raises(ValueError, match="t must"):
        dd.decomposition_loss(model, data, acp, generator=g, t=t.float())
