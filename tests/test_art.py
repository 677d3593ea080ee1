"""Tests of layerwise.art (ART: anonymous region transformer), plus the answers the grading tests submit."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise import art
from layerwise.data import compose
from layerwise.data.layouts import layered_scenes
from layerwise.diffusion.schedule import make_scheduler

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "align_box": (
        "def align_box(box, patch, size):\n"
        "    h, w = (size, size) if isinstance(size, int) else tuple(size)\n"
        "    x0, y0, x1, y1 = (float(v) for v in box)\n"
        "    if x1 == x0 or y1 == y0:\n"
        "        return None\n"
        "    x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)\n"
        "    y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)\n"
        "    down = lambda v: int(v // patch) * patch\n"
        "    up = lambda v: -int(-v // patch) * patch\n"
        "    return (down(x0), down(y0), up(x1), up(y1))\n"),
    "crop_tokens": (
        "def crop_tokens(grid_tokens, boxes):\n"
        "    pieces = []\n"
        "    for layer in range(boxes.shape[0]):\n"
        "        x0, y0, x1, y1 = (int(v) for v in boxes[layer])\n"
        "        for y in range(y0, y1):\n"
        "            for x in range(x0, x1):\n"
        "                pieces.append(grid_tokens[:, layer, y, x])\n"
        "    if not pieces:\n"
        "        return grid_tokens.new_zeros(grid_tokens.shape[0], 0, grid_tokens.shape[-1])\n"
        "    return torch.stack(pieces, dim=1)\n"),
    "fill_tokens": (
        "def fill_tokens(seq, boxes, like):\n"
        "    out = like.clone()\n"
        "    i = 0\n"
        "    for layer, (x0, y0, x1, y1) in enumerate(boxes.tolist()):\n"
        "        for y in range(y0, y1):\n"
        "            for x in range(x0, x1):\n"
        "                out[:, layer, y, x] = seq[:, i]\n"
        "                i += 1\n"
        "    return out\n"),
    "layer_position_ids": (
        "def layer_position_ids(boxes):\n"
        "    rows = [[layer, y, x] for layer, (x0, y0, x1, y1) in enumerate(boxes.tolist())\n"
        "            for y in range(y0, y1) for x in range(x0, x1)]\n"
        "    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)\n"),
    "gray_encode": (
        "def gray_encode(rgba):\n"
        "    rgb, a = rgba[..., :3, :, :], rgba[..., 3:, :, :]\n"
        "    return 0.5 + a * (rgb - 0.5)\n"),
}
# Plausible mistakes: each must lose its item's points.
WRONG_ANSWERS = {
    "align_box": [
        ("def align_box(box, patch, size):\n"
         "    x0, y0, x1, y1 = box\n"
         "    if x1 == x0 or y1 == y0:\n"
         "        return None\n"
         "    return tuple(int(round(v / patch)) * patch for v in (x0, y0, x1, y1))  # rounds: can cut the box\n"),
        ("def align_box(box, patch, size):\n"
         "    h, w = (size, size) if isinstance(size, int) else size\n"
         "    x0, y0, x1, y1 = box\n"
         "    if x1 == x0 or y1 == y0:\n"
         "        return None\n"
         "    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)\n"
         "    return tuple(int(v // patch) * patch for v in (x0, y0, x1, y1))  # floors the end too\n"),
        ("import math\n"
         "def align_box(box, patch, size):\n"
         "    x0, y0, x1, y1 = box\n"
         "    if x1 == x0 or y1 == y0:\n"
         "        return None\n"
         "    return (math.floor(x0 / patch) * patch, math.floor(y0 / patch) * patch,\n"
         "            math.ceil(x1 / patch) * patch, math.ceil(y1 / patch) * patch)  # never clamps to the canvas\n"),
        ("import math\n"
         "def align_box(box, patch, size):\n"
         "    h, w = (size, size) if isinstance(size, int) else size\n"
         "    x0, y0, x1, y1 = box\n"
         "    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)\n"
         "    return (math.floor(x0 / patch) * patch, math.floor(y0 / patch) * patch,\n"
         "            math.ceil(x1 / patch) * patch, math.ceil(y1 / patch) * patch)  # an empty box is not None\n"),
    ],
    "crop_tokens": [
        ("def crop_tokens(grid_tokens, boxes):\n"
         "    b, d = grid_tokens.shape[0], grid_tokens.shape[-1]\n"
         "    parts = [grid_tokens[:, i, y0:y1, x0:x1].transpose(1, 2).reshape(b, -1, d)  # column-major\n"
         "             for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())]\n"
         "    return torch.cat(parts, 1)\n"),
        ("def crop_tokens(grid_tokens, boxes):\n"
         "    b, d = grid_tokens.shape[0], grid_tokens.shape[-1]\n"
         "    parts = [grid_tokens[:, i, x0:x1, y0:y1].reshape(b, -1, d)  # x and y swapped\n"
         "             for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())]\n"
         "    return torch.cat(parts, 1)\n"),
        ("def crop_tokens(grid_tokens, boxes):\n"
         "    b, d = grid_tokens.shape[0], grid_tokens.shape[-1]\n"
         "    parts = [grid_tokens[:, i, y0:y1 + 1, x0:x1 + 1].reshape(b, -1, d)  # inclusive ends\n"
         "             for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())]\n"
         "    return torch.cat(parts, 1)\n"),
    ],
    "fill_tokens": [
        ("def fill_tokens(seq, boxes, like):\n"
         "    out = torch.zeros_like(like)  # ignores what 'like' holds outside the boxes\n"
         "    b, d, start = like.shape[0], like.shape[-1], 0\n"
         "    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):\n"
         "        k = (x1 - x0) * (y1 - y0)\n"
         "        out[:, i, y0:y1, x0:x1] = seq[:, start:start + k].reshape(b, y1 - y0, x1 - x0, d)\n"
         "        start += k\n"
         "    return out\n"),
        ("def fill_tokens(seq, boxes, like):\n"
         "    out = like.clone()\n"
         "    b, d, start = like.shape[0], like.shape[-1], 0\n"
         "    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):\n"
         "        k = (x1 - x0) * (y1 - y0)\n"
         "        out[:, i, y0:y1, x0:x1] = seq[:, start:start + k].reshape(b, x1 - x0, y1 - y0, d).transpose(1, 2)\n"
         "        start += k  # reads the crop column by column\n"
         "    return out\n"),
        ("def fill_tokens(seq, boxes, like):\n"
         "    out = like.clone()\n"
         "    b, d = like.shape[0], like.shape[-1]\n"
         "    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):\n"
         "        k = (x1 - x0) * (y1 - y0)\n"
         "        out[:, i, y0:y1, x0:x1] = seq[:, :k].reshape(b, y1 - y0, x1 - x0, d)  # always from the start\n"
         "    return out\n"),
    ],
    "layer_position_ids": [
        ("def layer_position_ids(boxes):\n"
         "    rows = [[i, y - y0, x - x0] for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())\n"
         "            for y in range(y0, y1) for x in range(x0, x1)]  # positions inside the crop\n"
         "    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)\n"),
        ("def layer_position_ids(boxes):\n"
         "    rows = [[i, x, y] for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())\n"
         "            for y in range(y0, y1) for x in range(x0, x1)]  # (layer, x, y)\n"
         "    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)\n"),
        ("def layer_position_ids(boxes):\n"
         "    rows, layer = [], 0\n"
         "    for x0, y0, x1, y1 in boxes.tolist():\n"
         "        if x1 > x0 and y1 > y0:\n"
         "            rows += [[layer, y, x] for y in range(y0, y1) for x in range(x0, x1)]\n"
         "            layer += 1  # counts only the non-empty layers\n"
         "    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)\n"),
    ],
    "gray_encode": [
        ("def gray_encode(rgba):\n"
         "    return rgba[..., 3:, :, :] * rgba[..., :3, :, :]  # premultiplied: over black, not grey\n"),
        ("def gray_encode(rgba):\n"
         "    a = rgba[..., 3:, :, :]\n"
         "    return (1 - a) * rgba[..., :3, :, :] + a * 0.5  # alpha used the wrong way round\n"),
        ("def gray_encode(rgba):\n"
         "    a = rgba[..., 3:, :, :].float()\n"
         "    return a * rgba[..., :3, :, :].float() + (1 - a) * 0.5  # always float32\n"),
    ],
}


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------- grey encoding

def test_gray_encode_known_values_and_dtype():
    rgba = torch.tensor([[[[0.2]], [[0.4]], [[1.0]], [[0.0]]], [[[0.2]], [[0.4]], [[1.0]], [[1.0]]],
                         [[[0.2]], [[0.4]], [[1.0]], [[0.5]]]])          # (3, 4, 1, 1)
    out = art.gray_encode(rgba)
    assert out.shape == (3, 3, 1, 1)
    assert torch.allclose(out[0].flatten(), torch.full((3,), 0.5)), "transparent → grey whatever the colour"
    assert torch.allclose(out[1].flatten(), torch.tensor([0.2, 0.4, 1.0])), "opaque → its colour"
    assert torch.allclose(out[2].flatten(), torch.tensor([0.35, 0.45, 0.75]))
    assert art.gray_encode(rgba.double()).dtype == torch.float64
    assert art.gray_encode(torch.rand(2, 5, 4, 3, 6)).shape == (2, 5, 3, 3, 6)


def test_gray_decode_inverts_and_composites():
    g = torch.Generator().manual_seed(0)
    rgba = torch.rand(4, 4, 8, 8, generator=g)
    rgba[:, 3] = torch.where(rgba[:, 3] < 0.3, torch.zeros_like(rgba[:, 3]), rgba[:, 3])
    enc = art.gray_encode(rgba)
    dec = art.gray_decode(enc, rgba[:, 3])
    vis = rgba[:, 3:] > 1e-3
    assert torch.allclose(torch.where(vis, dec[:, :3], 0 * dec[:, :3]), torch.where(vis, rgba[:, :3], 0 * dec[:, :3]),
                          atol=1e-5)
    assert torch.equal(dec[:, 3], rgba[:, 3])
    bg = torch.rand(4, 3, 8, 8, generator=g)
    over = compose(bg, dec[:, None])
    assert torch.allclose(over, enc + (1 - rgba[:, 3:]) * (bg - 0.5), atol=1e-5)


@pytest.mark.parametrize("bad, exc, match", [
    (torch.rand(2, 3, 4, 4), ValueError, r"\(\.\.\., 4, H, W\)"),
    (torch.ones(2, 4, 4, 4, dtype=torch.long), TypeError, "floating"),
    ([[0.5]], TypeError, "torch.Tensor"),
    (torch.rand(4, 4), ValueError, "at least 3"),
])
def test_gray_encode_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        art.gray_encode(bad)


def test_gray_decode_bad_input():
    with pytest.raises(ValueError, match="encoded"):
        art.gray_decode(torch.rand(1, 4, 4, 4), torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        art.gray_decode(torch.rand(1, 3, 4, 4), torch.rand(1, 5, 5))


# ----------------------------------------------------------------------------- boxes

@pytest.mark.parametrize("box, patch, size, want", [
    ((5, 3, 10, 13), 4, 32, (4, 0, 12, 16)),
    ((4, 8, 12, 16), 4, 32, (4, 8, 12, 16)),                  # already on the grid: unchanged
    ((0, 0, 1, 1), 4, 32, (0, 0, 4, 4)),                      # one pixel → one token
    ((30.5, 1.2, 31.9, 2.0), 4, 32, (28, 0, 32, 4)),          # fractional coordinates
    ((-3, 5, 7, 40), 4, 32, (0, 4, 8, 32)),                   # partly outside: clamped to the canvas
    ((17, 3, 40, 9), 16, (32, 48), (16, 0, 48, 16)),          # (H, W) canvas, the official 16-px grid
    ((3, 3, 3, 9), 4, 32, None),                              # empty
    ((3, 5, 9, 5), 4, 32, None),
])
def test_align_box_known_cases(box, patch, size, want):
    assert art.align_box(box, patch, size) == want
    assert art.align_box(torch.tensor(box), patch, size) == want


def test_align_box_contains_the_box_and_is_the_smallest_such():
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        x0, y0 = (int(v) for v in torch.randint(0, 30, (2,), generator=g))
        x1, y1 = x0 + int(torch.randint(1, 33 - x0, (1,), generator=g)), y0 + int(torch.randint(1, 33 - y0, (1,), generator=g))
        a = art.align_box((x0, y0, x1, y1), 4, 32)
        assert all(v % 4 == 0 for v in a)
        assert a[0] <= x0 < x1 <= a[2] and a[1] <= y0 < y1 <= a[3]
        assert a[0] > x0 - 4 and a[1] > y0 - 4 and a[2] < x1 + 4 and a[3] < y1 + 4


@pytest.mark.parametrize("args, exc, match", [
    (((9, 3, 5, 8), 4, 32), ValueError, "x0 <= x1"),
    (((40, 3, 50, 8), 4, 32), ValueError, "outside"),
    (((-9, 3, -1, 8), 4, 32), ValueError, "outside"),
    (((1, 2, 3), 4, 32), ValueError, "4 numbers"),
    ((("a", 2, 3, 4), 4, 32), TypeError, "finite numbers"),
    (((1, 2, 3, float("nan")), 4, 32), TypeError, "finite numbers"),
    (((1, 2, 3, 4), 0, 32), ValueError, "patch"),
    (((1, 2, 3, 4), 2.5, 32), TypeError, "patch"),
    (((1, 2, 3, 4), 4, 30), ValueError, "multiple of patch"),
    (((1, 2, 3, 4), 4, (32, 32, 3)), ValueError, "size"),
])
def test_align_box_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        art.align_box(*args)


def test_token_boxes_divides_the_aligned_boxes():
    got = art.token_boxes([(5, 3, 10, 13), None, (0, 0, 32, 32), (7, 7, 7, 9)], 4, 32)
    assert torch.equal(got, _boxes([1, 0, 3, 4], [0, 0, 0, 0], [0, 0, 8, 8], [0, 0, 0, 0]))
    assert torch.equal(art.token_boxes(torch.tensor([[5, 3, 10, 13]]), 4, 32), _boxes([1, 0, 3, 4]))
    with pytest.raises(ValueError, match="empty"):
        art.token_boxes([], 4, 32)
    with pytest.raises(TypeError, match="boxes"):
        art.token_boxes("boxes", 4, 32)


# ----------------------------------------------------------------------------- crops and positions

def _coord_grid(b: int, n_layers: int, h: int, w: int) -> torch.Tensor:
    """A grid whose token features are (batch, layer, y, x): (B, L, h, w, 4)."""
    idx = torch.meshgrid(torch.arange(b), torch.arange(n_layers), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack(idx, -1).float()


def test_crop_tokens_order_is_layer_major_then_row_major():
    grid = _coord_grid(2, 3, 4, 5)
    boxes = _boxes([0, 0, 5, 4], [1, 2, 3, 4], [4, 0, 5, 1])
    seq = art.crop_tokens(grid, boxes)
    assert seq.shape == (2, 20 + 4 + 1, 4)
    assert art.region_tokens(boxes).tolist() == [20, 4, 1]
    want = [(1, y, x) for y in (2, 3) for x in (1, 2)]
    assert [tuple(int(v) for v in t[1:]) for t in seq[0, 20:24]] == want
    assert tuple(int(v) for v in seq[1, -1]) == (1, 2, 0, 4)
    # the positions of the crop are exactly the coordinates its tokens came from
    assert torch.equal(art.layer_position_ids(boxes), seq[0, :, 1:].long())


def test_crop_tokens_skips_empty_boxes_and_keeps_layer_indices():
    grid = _coord_grid(1, 3, 4, 4)
    boxes = _boxes([0, 0, 2, 2], [1, 1, 1, 3], [2, 2, 4, 3])
    seq = art.crop_tokens(grid, boxes)
    assert seq.shape == (1, 4 + 0 + 2, 4)
    ids = art.layer_position_ids(boxes)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [2, 2, 2], [2, 2, 3]]
    assert torch.equal(ids, seq[0, :, 1:].long())
    none = art.crop_tokens(grid, _boxes([0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 3]))
    assert none.shape == (1, 0, 4)
    assert art.layer_position_ids(_boxes([0, 0, 0, 0])).shape == (0, 3)


def test_fill_tokens_round_trip_is_the_identity_inside_the_boxes():
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 4, 6, 7, 5, generator=g, dtype=torch.float64)
    boxes = _boxes([0, 0, 7, 6], [2, 1, 5, 4], [6, 5, 7, 6], [3, 3, 3, 3])
    like = torch.full_like(grid, -7.0)
    back = art.fill_tokens(art.crop_tokens(grid, boxes), boxes, like)
    inside = torch.zeros(4, 6, 7, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside[i, y0:y1, x0:x1] = True
    assert back.dtype == torch.float64 and back.shape == grid.shape
    assert torch.equal(back[:, inside], grid[:, inside])
    assert torch.equal(back[:, ~inside], like[:, ~inside])
    assert torch.equal(like, torch.full_like(grid, -7.0)), "like is not modified in place"


@pytest.mark.parametrize("grid, boxes, exc, match", [
    (torch.rand(1, 2, 4, 4, 3), _boxes([0, 0, 5, 4], [0, 0, 1, 1]), ValueError, "outside"),
    (torch.rand(1, 2, 4, 4, 3), _boxes([0, 0, 2, 2]), ValueError, "2 layers"),
    (torch.rand(1, 2, 4, 4, 3), _boxes([3, 0, 2, 2], [0, 0, 1, 1]), ValueError, "not a box"),
    (torch.rand(1, 2, 4, 4, 3), torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]]), TypeError, "integer"),
    (torch.rand(1, 2, 4, 4, 3), torch.zeros(2, 3, dtype=torch.long), ValueError, r"\(L, 4\)"),
    (torch.rand(2, 4, 4, 3), _boxes([0, 0, 2, 2], [0, 0, 1, 1]), ValueError, r"\(B, L, h, w, D\)"),
    (torch.ones(1, 2, 4, 4, 3, dtype=torch.long), _boxes([0, 0, 2, 2], [0, 0, 1, 1]), TypeError, "floating"),
])
def test_crop_tokens_bad_input(grid, boxes, exc, match):
    with pytest.raises(exc, match=match):
        art.crop_tokens(grid, boxes)


def test_fill_tokens_bad_input():
    like = torch.zeros(1, 2, 4, 4, 3)
    boxes = _boxes([0, 0, 2, 2], [1, 1, 3, 2])
    with pytest.raises(ValueError, match="N=6"):
        art.fill_tokens(torch.zeros(1, 5, 3), boxes, like)
    with pytest.raises(ValueError, match="outside"):
        art.fill_tokens(torch.zeros(1, 6, 3), _boxes([0, 0, 2, 2], [3, 3, 5, 5]), like)
    with pytest.raises(ValueError, match="like"):
        art.fill_tokens(torch.zeros(1, 6, 3), boxes, torch.zeros(2, 4, 4, 3))
    with pytest.raises(TypeError, match="seq"):
        art.fill_tokens(torch.zeros(1, 6, 3, dtype=torch.long), boxes, like)


def test_layer_position_ids_bad_input():
    with pytest.raises(TypeError, match="integer"):
        art.layer_position_ids(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="tensor"):
        art.layer_position_ids([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="not a box"):
        art.layer_position_ids(_boxes([0, 3, 1, 1]))


def test_full_position_ids():
    ids = art.full_position_ids(3, (2, 4))
    assert ids.shape == (24, 3) and ids[8].tolist() == [1, 0, 0] and ids[-1].tolist() == [2, 1, 3]
    with pytest.raises(ValueError, match="n_layers"):
        art.full_position_ids(0, (2, 2))


# ----------------------------------------------------------------------------- cost model

def test_attention_cost_formula_and_crossover():
    d = 96
    assert art.attention_cost(100, d, 2) == 2 * (24 * 100 * d * d + 4 * 100 * 100 * d)
    n = 6 * d                                              # where the attention term equals the linear one
    assert math.isclose(4 * n * n * d, 24 * n * d * d)
    many = art.attention_cost(torch.tensor([10.0, 1000.0]), d)
    assert many.shape == (2,) and many[1] > 100 * many[0]
    assert art.attention_matrix_bytes(100, 4, 2) == 2 * 4 * 100 * 100 * 4
    with pytest.raises(ValueError, match="n_tokens"):
        art.attention_cost(-1, d)
    with pytest.raises(ValueError, match="dim"):
        art.attention_cost(10, 0)
    with pytest.raises(TypeError, match="heads"):
        art.attention_matrix_bytes(10, 2.0)


# ----------------------------------------------------------------------------- the model

def _live(model: art.AnonymousRegionDiT, seed: int = 0) -> art.AnonymousRegionDiT:
    """Give the zero-initialised adaLN and output layers random weights, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada" in name or name.startswith("dit.out"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _toy(**kw) -> art.AnonymousRegionDiT:
    torch.manual_seed(0)
    return _live(art.AnonymousRegionDiT(art.ARTConfig(canvas=8, patch=2, dim=48, heads=2, depth=2, **kw)))


def test_model_starts_at_zero_and_has_the_layer_embedding():
    m = art.AnonymousRegionDiT(art.ARTConfig(canvas=8, patch=2, dim=48, heads=2, depth=2))
    x = torch.randn(2, 5, 16)
    ids = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 1], [2, 1, 2], [3, 0, 3]])
    assert torch.equal(m(x, torch.tensor([3, 900]), ids), torch.zeros_like(x))
    assert m.layer_embed.shape == (8, 48) and 0.005 < float(m.layer_embed.detach().std()) < 0.03
    assert art.AnonymousRegionDiT(art.ARTConfig(layer_embedding=False)).layer_embed is None


def test_three_axis_positions_tell_layers_apart_two_axis_do_not():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 16, generator=g)
    x[0, 1] = x[0, 0]                                     # two identical tokens at the same (y, x) ...
    ids = torch.tensor([[0, 1, 1], [3, 1, 1], [1, 0, 2]])  # ... of layers 0 and 3, and a third token
    t = torch.tensor([500])
    same = lambda out: torch.allclose(out[0, 0], out[0, 1], atol=1e-6)   # noqa: E731
    assert same(_toy(pos_axes=2, layer_embedding=False)(x, t, ids)), "2-axis positions cannot tell them apart"
    assert not same(_toy(pos_axes=3, layer_embedding=False)(x, t, ids))
    assert not same(_toy(pos_axes=2, layer_embedding=True)(x, t, ids))


def test_rotary_layer_axis_is_relative_a_layer_embedding_is_absolute():
    """RoPE only sees layer *differences*: two identical tokens of layers 0 and 3, alone, look the same to
    3-axis RoPE (each sees the other 3 layers away); a learned layer embedding tells them apart."""
    x = torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(4)).expand(1, 2, 16).clone()
    ids = torch.tensor([[0, 1, 1], [3, 1, 1]])
    t = torch.tensor([500])
    same = lambda out: torch.allclose(out[0, 0], out[0, 1], atol=1e-6)   # noqa: E731
    assert same(_toy(pos_axes=3, layer_embedding=False)(x, t, ids))
    assert not same(_toy(pos_axes=3, layer_embedding=True)(x, t, ids))


def test_padding_does_not_change_the_real_tokens():
    m = _toy()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 16, generator=g)
    ids = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 2, 2], [2, 3, 0], [2, 3, 1], [2, 3, 2]])
    t = torch.tensor([250])
    ref = m(x, t, ids)
    padded = torch.cat([x, 100 * torch.randn(1, 3, 16, generator=g)], 1)
    pids = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)])
    valid = torch.tensor([[True] * 6 + [False] * 3])
    assert torch.allclose(m(padded, t, pids, valid)[:, :6], ref, atol=1e-5)
    assert not torch.allclose(m(padded, t, pids)[:, :6], ref, atol=1e-3), "without the mask padding leaks in"


def test_regional_pass_equals_full_canvases_with_out_of_box_keys_masked():
    """The crop is exact: attention over the crop sequence = attention over every layer's whole canvas
    with the out-of-box tokens masked out, on the in-box tokens (positions are absolute)."""
    m = _toy(max_layers=4)
    g = torch.Generator().manual_seed(2)
    grid = torch.randn(2, 4, 4, 4, 16, generator=g)                # 8×8 canvas, patch 2: 4×4 tokens
    boxes = _boxes([0, 0, 4, 4], [0, 0, 4, 4], [1, 0, 3, 2], [2, 2, 4, 4])
    t = torch.tensor([10, 700])
    regional = art.fill_tokens(m(art.crop_tokens(grid, boxes), t, art.layer_position_ids(boxes)), boxes,
                               torch.zeros_like(grid))
    ids = art.full_position_ids(4, (4, 4))
    inside = art.fill_tokens(torch.ones(2, int(art.region_tokens(boxes).sum()), 1), boxes,
                             torch.zeros(2, 4, 4, 4, 1)).reshape(2, -1).bool()
    full = m(grid.reshape(2, 64, 16), t, ids, inside).reshape(grid.shape)
    mask = inside.reshape(2, 4, 4, 4)
    assert torch.allclose(regional[mask], full[mask], atol=1e-5)


def test_model_bad_input():
    m = _toy()
    ids = torch.zeros(3, 3, dtype=torch.long)
    t = torch.tensor([1])
    with pytest.raises(ValueError, match="tokens"):
        m(torch.randn(1, 3, 12), t, ids)
    with pytest.raises(ValueError, match="pos_ids"):
        m(torch.randn(1, 3, 16), t, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="max_layers"):
        m(torch.randn(1, 3, 16), t, torch.tensor([[9, 0, 0]] * 3))
    with pytest.raises(ValueError, match="valid"):
        m(torch.randn(1, 3, 16), t, ids, torch.ones(1, 3))
    with pytest.raises(TypeError, match="floating"):
        m(torch.ones(1, 3, 16, dtype=torch.long), t, ids)
    with pytest.raises(ValueError, match="in_box"):
        _toy(box_embedding=True)(torch.randn(1, 3, 16), t, ids)
    with pytest.raises(ValueError, match="pos_axes"):
        art.ARTConfig(pos_axes=1)
    with pytest.raises(ValueError, match="head dim"):
        art.ARTConfig(dim=64, heads=4, pos_axes=3)


# ----------------------------------------------------------------------------- data → sequences → data

@pytest.fixture(scope="module")
def scenes():
    return layered_scenes(6, seed=11, n_layers=(2, 5))


def test_pack_and_unpack_regions_round_trip(scenes):
    batch, stacked = art.layered_batch(scenes, 4)
    canv, boxes, valid = art.scene_layers(stacked)
    assert canv.shape[:3] == (6, 2 + stacked["layers"].shape[1], 4)
    assert torch.equal(valid[:, 2:], stacked["valid"])
    lengths = [int(art.region_tokens(batch.boxes[i]).sum()) for i in range(6)]
    assert batch.lengths.tolist() == lengths and batch.tokens.shape[1] == max(lengths)
    assert float(batch.tokens.abs().max()) <= 1.0 and bool((batch.tokens[~batch.valid] == 0).all())
    back = art.unpack_regions(batch.tokens, batch, 4, 32)
    merged, bg, layers = art.split_layers(back)
    assert torch.allclose(merged, stacked["image"], atol=1e-6) and torch.allclose(bg, stacked["background"], atol=1e-6)
    assert torch.allclose(layers[:, :, 3], stacked["layers"][:, :, 3], atol=1e-6), "alpha lies inside the aligned boxes"
    assert torch.allclose(art.consistency_psnr(merged, bg, layers), torch.full((6,), 100.0))
    # outside the aligned boxes a layer is empty: grey, alpha 0
    for i in range(6):
        for j, (x0, y0, x1, y1) in enumerate((batch.boxes[i, 2:] * 4).tolist()):
            out = torch.ones(32, 32, dtype=torch.bool)
            out[y0:y1, x0:x1] = False
            assert bool((back[i, 2 + j, 3][out] == 0).all()) and torch.allclose(back[i, 2 + j, :3][:, out],
                                                                                 torch.tensor(0.5))


def test_pack_full_has_every_layer_at_full_size(scenes):
    full, stacked = art.layered_batch(scenes, 4, full=True)
    regional, _ = art.layered_batch(scenes, 4)
    n_layers = 2 + stacked["layers"].shape[1]
    assert full.tokens.shape[1] == n_layers * 64
    assert torch.equal(full.in_box.sum(1), regional.lengths), "the boxes hold as many tokens as the crops"
    assert torch.equal(full.valid.sum(1), (2 + stacked["valid"].sum(1)) * 64)
    back = art.unpack_full(full.tokens, full, 4, 32)
    assert torch.allclose(back, art.scene_layers(stacked)[0], atol=1e-6)


def test_regional_loss_ignores_padding(scenes):
    batch, _ = art.layered_batch(scenes, 4)
    torch.manual_seed(0)
    m = _live(art.AnonymousRegionDiT(art.ARTConfig(dim=48, heads=2, depth=1)))
    acp = make_scheduler("ddpm").alphas_cumprod
    a = art.regional_loss(m, batch, acp, generator=torch.Generator().manual_seed(0))
    junk = art.RegionBatch(torch.where(batch.valid[..., None], batch.tokens, 50.0), batch.pos_ids, batch.valid,
                           batch.boxes, batch.in_box)
    b = art.regional_loss(m, junk, acp, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-5)
    fresh = art.AnonymousRegionDiT(art.ARTConfig(dim=48, heads=2, depth=1))
    e_v2 = art.heldout_loss(fresh, batch, generator=torch.Generator().manual_seed(0))
    assert 0.3 < e_v2 < 1.1, "an untrained model predicts v̂ = 0: loss = E[v²] = E[ᾱ + (1 − ᾱ) x₀²] < 1"
    eps_model = art.AnonymousRegionDiT(art.ARTConfig(dim=48, heads=2, depth=1, prediction="eps"))
    assert 0.9 < art.heldout_loss(eps_model, batch, generator=torch.Generator().manual_seed(0)) < 1.1, \
        "an untrained ε-model predicts ε̂ = 0: loss ≈ E[ε²] = 1"


def test_v_and_eps_targets_convert_back_exactly():
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.rand(3, 7, 16, generator=g) * 2 - 1, torch.randn(3, 7, 16, generator=g)
    acp = make_scheduler("ddpm").alphas_cumprod
    t = torch.tensor([3, 500, 990])
    x_t = torch.sqrt(acp[t]).view(3, 1, 1) * x0 + torch.sqrt(1 - acp[t]).view(3, 1, 1) * noise
    for kind in art.PREDICTIONS:
        eps, rec = art.to_eps_x0(kind, art.target(kind, x0, noise, acp[t]), x_t, acp[t])
        assert torch.allclose(eps, noise, atol=1e-4) and torch.allclose(rec, x0, atol=2e-3 if kind == "eps" else 1e-4)
    v = art.target("v", x0, noise, acp[t])
    assert torch.allclose(v[2], (acp[990].sqrt() * noise[2] - (1 - acp[990]).sqrt() * x0[2]))
    with pytest.raises(ValueError, match="prediction"):
        art.target("x0", x0, noise, acp[t])
    with pytest.raises(ValueError, match="prediction"):
        art.ARTConfig(prediction="flow")


def test_generate_gives_layer_stacks_and_metrics(scenes):
    batch, stacked = art.layered_batch(scenes, 4, max_layers=5)
    torch.manual_seed(0)
    m = art.AnonymousRegionDiT(art.ARTConfig(dim=48, heads=2, depth=1))
    canv = art.generate(m, batch, steps=2, generator=torch.Generator().manual_seed(0))
    assert canv.shape == (6, 7, 4, 32, 32) and float(canv.min()) >= 0 and float(canv.max()) <= 1
    again = art.generate(m, batch, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(canv, again)
    got = art.layer_metrics(canv, stacked)
    n_real = int(stacked["valid"].sum())
    assert got["consistency_psnr"].shape == (6,) and got["in_box"].shape == (n_real,)
    truth = art.layer_metrics(art.scene_layers(stacked)[0], stacked)
    assert bool(truth["stays_inside"].all()) and float(truth["consistency_psnr"].min()) == 100.0


def test_consistency_psnr_drops_for_layers_of_another_image(scenes):
    _, stacked = art.layered_batch(scenes, 4)
    m, bg, layers = stacked["image"], stacked["background"], stacked["layers"]
    good = art.consistency_psnr(m, bg, layers)
    bad = art.consistency_psnr(m, bg, layers.roll(1, 0))
    assert bool((good > 60).all()) and float(bad.mean()) < 30


def test_alpha_in_box_and_box_iou_known_cases():
    alpha = torch.zeros(1, 3, 8, 8)
    alpha[0, 0, 2:4, 2:6] = 1.0                          # 8 pixels, all inside (2, 2, 6, 4)
    alpha[0, 1, 0:2, 0:2] = 1.0                          # 4 pixels: 2 inside (1, 0, 8, 8)
    alpha[0, 2, 5, 5] = 0.05                             # faint speckle only: ignored
    boxes = torch.tensor([[[2, 2, 6, 4], [1, 0, 8, 8], [0, 0, 8, 8]]])
    share = art.alpha_in_box(alpha, boxes)
    assert share.tolist() == [[1.0, 0.5, 1.0]]
    iou = art.box_iou(alpha, boxes)
    assert torch.allclose(iou, torch.tensor([[1.0, 2 / (4 + 56 - 2), 0.0]]))
    with pytest.raises(ValueError, match="boxes"):
        art.alpha_in_box(alpha, boxes[:, :2])


def test_scene_layers_and_split_layers_bad_input():
    with pytest.raises(ValueError, match="stack_scenes"):
        art.scene_layers({"image": torch.zeros(1, 3, 4, 4)})
    with pytest.raises(ValueError, match="canvases"):
        art.split_layers(torch.rand(2, 3, 3, 4, 4))
    with pytest.raises(ValueError, match="boxes"):
        art.pack_regions(torch.rand(2, 3, 4, 8, 8), torch.zeros(2, 2, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="same shape"):
        art.psnr(torch.rand(2, 3), torch.rand(2, 4))


# ----------------------------------------------------------------------------- measuring cost

def test_peak_bytes_sees_a_known_allocation():
    def alloc():
        x = torch.ones(1024, 1024)          # 4 MiB, freed on return
        return float(x.sum())

    peak = art.peak_bytes(alloc)
    assert 4 * 2**20 <= peak < 5 * 2**20
    assert art.peak_bytes(lambda: None) < 2**16
    with pytest.raises(TypeError, match="fn"):
        art.peak_bytes(3)
    with pytest.raises(ValueError, match="device"):
        art.peak_bytes(lambda: None, "meta")


def test_cost_layout_and_passes():
    boxes = art.cost_layout(12, generator=0)
    assert boxes.shape == (14, 4) and boxes[:2].tolist() == [[0, 0, 8, 8]] * 2
    assert bool((art.region_tokens(boxes)[2:] > 0).all())
    torch.manual_seed(0)
    m = art.AnonymousRegionDiT(art.ARTConfig(**{**art.COST_CONFIG, "depth": 1}))
    assert m.config.token_dim == 4 and m.config.grid == 8
    reg, full = art.cost_pass(m, boxes, batch=2), art.cost_pass(m, boxes, batch=2, mode="full")
    assert reg().shape == full().shape == (2, 14, 8, 8, 4)
    rows = art.measure_cost(m, [art.cost_layout(2, generator=1), boxes], batch=2, repeats=1, warmup=0)
    assert [r["layers"] for r in rows] == [2, 12]
    r = rows[1]
    assert r["n_full"] == 14 * 64 and r["n_regional"] == int(art.region_tokens(boxes).sum()) < r["n_full"]
    assert r["mem_full"] > r["mem_regional"] > 0 and r["flops_full"] > r["flops_regional"]
    assert r["naive_attn_full"] == 2 * 4 * r["n_full"] ** 2 * 4
    with pytest.raises(ValueError, match="mode"):
        art.cost_pass(m, boxes, mode="sparse")
    with pytest.raises(ValueError, match="max_layers"):
        art.cost_pass(m, art.cost_layout(60, generator=0))
    with pytest.raises(ValueError, match="repeats"):
        art.measure_cost(m, [boxes], repeats=0)


def test_zoo_names():
    assert art.art_zoo_name("3d") == "art_sprites" and art.art_zoo_name("2d_pe") == "art_sprites_2d_pe"
    with pytest.raises(ValueError, match="variant"):
        art.art_zoo_name("4d")


def test_attention_ablation_runs_both_models_per_seed():
    cfg = dict(dim=48, heads=2, depth=1, max_layers=5)
    got = art.attention_ablation(cfg, seeds=[0, 1], steps=2, scenes=dict(n_layers=(2, 3)), batch_size=4,
                                 n_eval=3, ddim_steps=2, progress=False)
    assert set(got) == {"regional", "full"}
    for mode in got.values():
        assert all(len(v) == 2 for v in mode.values())
        assert all(0 <= v <= 1 for v in mode["stays_inside"] + mode["box_iou"])
    with pytest.raises(ValueError, match="seeds"):
        art.attention_ablation(cfg, seeds=[], steps=1, scenes={})


def test_position_ablation_trains_each_variant_per_seed():
    cfg = dict(dim=48, heads=2, depth=1, max_layers=5)
    got = art.position_ablation(cfg, variants=("2d", "3d"), seeds=[0, 1], steps=2, scenes=dict(n_layers=(2, 3)),
                                batch_size=4, n_eval=3, ddim_steps=2, progress=False)
    assert set(got) == {"2d", "3d"}
    for res in got.values():
        assert set(res) == {"heldout_loss", "consistency_psnr", "stays_inside", "seconds"}
        assert all(len(v) == 2 for v in res.values())
        assert all(0 < v < 2 for v in res["heldout_loss"]) and all(0 <= v <= 1 for v in res["stays_inside"])
    assert got["2d"]["heldout_loss"] != got["3d"]["heldout_loss"], "the variants must be different models"
    with pytest.raises(ValueError, match="seeds"):
        art.position_ablation(cfg, seeds=[], steps=1, scenes={})
    with pytest.raises(ValueError, match="variant"):
        art.position_ablation(cfg, variants=("4d",), seeds=[0], steps=1, scenes={})


def test_layout_image_draws_outlines():
    img = art.layout_image(torch.tensor([[2, 2, 6, 5], [0, 0, 0, 0], [5, 1, 8, 8]]), 8)
    assert img.shape == (4, 8, 8)
    assert float(img[3, 2, 2]) == 1.0 and abs(float(img[3, 3, 3]) - 0.25) < 1e-6 and float(img[3, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="outside"):
        art.layout_image(torch.tensor([[2, 2, 9, 5]]), 8)


def test_remaining_public_functions_name_their_bad_arguments(scenes):
    batch, stacked = art.layered_batch(scenes, 4)
    canv = art.scene_layers(stacked)[0]
    m = art.AnonymousRegionDiT(art.ARTConfig(dim=48, heads=2, depth=1))
    acp = make_scheduler("ddpm").alphas_cumprod
    g = torch.Generator().manual_seed(0)
    checks = [
        (lambda: art.unpack_regions(batch.tokens[:, :3], batch, 4, 32), ValueError, "seq"),
        (lambda: art.unpack_regions(batch.tokens, "batch", 4, 32), TypeError, "RegionBatch"),
        (lambda: art.unpack_full(batch.tokens[:, :5], batch, 4, 32), ValueError, "seq"),
        (lambda: art.pack_full(canv, stacked["boxes"], stacked["valid"], 4), ValueError, "valid_layers"),
        (lambda: art.regional_loss(m, {"tokens": 1}, acp, generator=g), TypeError, "RegionBatch"),
        (lambda: art.generate(m, batch, steps=0, generator=g), ValueError, "steps"),
        (lambda: art.heldout_loss(m, batch, generator=g, repeats=0), ValueError, "repeats"),
        (lambda: art.fit_art(m, steps=-1, scenes={}, generator=g), ValueError, "steps"),
        (lambda: art.fit_art(m, steps=1, scenes=[], generator=g), TypeError, "scenes"),
        (lambda: art.fit_art(m, steps=1, scenes={}, batch_size=0, generator=g), ValueError, "batch_size"),
        (lambda: art.consistency_psnr(stacked["image"], stacked["background"], stacked["layers"][:, 0]), ValueError, "layers"),
        (lambda: art.box_iou(torch.ones(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 3, 4)), TypeError, "alpha"),
        (lambda: art.box_iou(torch.ones(2, 3, 4, 4), torch.zeros(2, 2, 4)), ValueError, "boxes"),
        (lambda: art.layer_metrics(canv, {"valid": stacked["valid"]}), ValueError, "stacked"),
        (lambda: art.layer_metrics(canv[:, :3], stacked), ValueError, "foreground layers"),
        (lambda: art.region_tokens(torch.zeros(3, 4)), TypeError, "integer"),
        (lambda: art.cost_layout(0, generator=0), ValueError, "k"),
        (lambda: art.layered_batch([], 4), ValueError, "scenes"),
    ]
    for fn, exc, match in checks:
        with pytest.raises(exc, match=match):
            fn()
