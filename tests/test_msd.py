"""Tests of layerwise.msd (Multi-Sample Dropout), plus the answers the grading tests submit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise import msd

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "dropout_masks": (
        "def dropout_masks(u, p):\n"
        "    scale = torch.full_like(u, 1.0 / (1.0 - p))\n"
        "    return torch.where(u >= p, scale, torch.zeros_like(u))\n"),
    "msd_logits": (
        "def msd_logits(h, head, masks):\n"
        "    outs = []\n"
        "    for m in range(masks.shape[0]):\n"
        "        outs.append(head(h * masks[m]))\n"
        "    return torch.stack(outs)\n"),
    "msd_loss": (
        "def msd_loss(logits, y):\n"
        "    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)\n"
        "    idx = y.view(1, -1, 1).expand(logits.shape[0], -1, 1)\n"
        "    return -logp.gather(-1, idx).squeeze(-1).mean(dim=1).mean()\n"),
}
# Plausible mistakes: each must lose its item's points. The second of each passes the visible
# test and is caught only by the hidden tests (dtype, batch size, numerical stability).
WRONG_ANSWERS = {
    "dropout_masks": [
        "def dropout_masks(u, p):\n    return (u >= p).to(u.dtype)  # forgot the 1/(1-p) rescaling\n",
        "def dropout_masks(u, p):\n    return (u >= p).float() / (1 - p)  # always float32\n",
    ],
    "msd_logits": [
        "def msd_logits(h, head, masks):\n    return head(h).unsqueeze(0).expand(masks.shape[0], -1, -1)  # no masks\n",
        "def msd_logits(h, head, masks):\n    return head(masks * h[0])  # only right for a batch of one\n",
    ],
    "msd_loss": [
        "def msd_loss(logits, y):\n    return F.cross_entropy(logits.mean(0), y)  # CE of the averaged logits\n",
        ("def msd_loss(logits, y):\n"
         "    logp = torch.log(torch.softmax(logits, dim=-1))  # unstable for large logits\n"
         "    idx = y.view(1, -1, 1).expand(logits.shape[0], -1, 1)\n"
         "    return -logp.gather(-1, idx).mean()\n"),
    ],
}


def _head(d: int, c: int, seed: int = 0, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, c).to(dtype)


# ----------------------------------------------------------------------------- dropout_masks

def test_dropout_masks_values_and_scaling():
    u = torch.tensor([0.0, 0.25, 0.5, 0.75])
    assert torch.equal(msd.dropout_masks(u, 0.5), torch.tensor([0.0, 0.0, 2.0, 2.0]))
    assert torch.equal(msd.dropout_masks(u, 0.0), torch.ones(4))


def test_dropout_masks_unbiased():
    g = torch.Generator().manual_seed(0)
    m = msd.sample_dropout_masks(2000, (50,), 0.3, generator=g)
    assert m.shape == (2000, 50)
    assert abs(m.mean().item() - 1.0) < 0.02          # E[mask] = 1
    assert abs((m > 0).float().mean().item() - 0.7) < 0.01


def test_dropout_masks_keep_dtype():
    u = torch.rand(3, 4, dtype=torch.float64)
    assert msd.dropout_masks(u, 0.2).dtype == torch.float64


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_p_is_rejected(p):
    with pytest.raises(ValueError, match="p"):
        msd.dropout_masks(torch.rand(3), p)
    with pytest.raises(ValueError, match="p"):
        msd.MultiSampleDropout(nn.Linear(3, 2), 2, p)


def test_bad_types_are_rejected():
    with pytest.raises(TypeError, match="u"):
        msd.dropout_masks([0.1, 0.2], 0.5)
    with pytest.raises(TypeError, match="u"):
        msd.dropout_masks(torch.tensor([1, 2]), 0.5)
    with pytest.raises(TypeError, match="p"):
        msd.dropout_masks(torch.rand(2), "0.5")
    with pytest.raises(TypeError, match="head"):
        msd.MultiSampleDropout(lambda x: x, 2, 0.5)


@pytest.mark.parametrize("m", [0, -1, 2.0, True])
def test_bad_num_samples_is_rejected(m):
    with pytest.raises(ValueError, match="M"):
        msd.MultiSampleDropout(nn.Linear(3, 2), m, 0.5)
    with pytest.raises(ValueError, match="M"):
        msd.sample_dropout_masks(m, (2, 3), 0.5)


# ----------------------------------------------------------------------------- msd_logits

def test_msd_logits_matches_per_sample_head():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 7, generator=g)
    head = _head(7, 3)
    masks = msd.sample_dropout_masks(4, h.shape, 0.5, generator=g)
    out = msd.msd_logits(h, head, masks)
    assert out.shape == (4, 5, 3)
    for m in range(4):
        torch.testing.assert_close(out[m], head(masks[m] * h))


def test_msd_logits_is_one_batched_call():
    calls = []
    head = _head(6, 2)
    head.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    msd.msd_logits(torch.randn(3, 6), head, torch.ones(8, 3, 6))
    assert calls == [torch.Size([8, 3, 6])]


@pytest.mark.parametrize("h_shape,mask_shape", [((3, 6), (8, 3, 5)), ((3, 6), (8, 4, 6)), ((3, 6), (3, 6)),
                                                ((6,), (8, 1, 6))])
def test_msd_logits_shape_mismatch(h_shape, mask_shape):
    with pytest.raises(ValueError, match="masks|h"):
        msd.msd_logits(torch.randn(h_shape), _head(6, 2), torch.ones(mask_shape))


# ----------------------------------------------------------------------------- msd_loss

def test_loss_is_mean_of_per_sample_ce():
    g = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(6, 10, 4, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    want = torch.stack([F.cross_entropy(logits[m], y) for m in range(6)]).mean()
    torch.testing.assert_close(msd.msd_loss(logits, y), want)


def test_loss_differs_from_ce_of_mean_logits():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(32, 16, generator=g)
    y = torch.randint(0, 5, (32,), generator=g)
    head = _head(16, 5)
    logits = msd.msd_logits(h, head, msd.sample_dropout_masks(8, h.shape, 0.5, generator=g))
    ours, mistaken = msd.msd_loss(logits, y), msd.ce_of_mean_logits(logits, y)
    assert ours.item() > mistaken.item() + 1e-3      # Jensen: strictly larger when samples differ


def test_loss_equals_ce_of_mean_logits_at_p_zero():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(12, 9, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    logits = msd.msd_logits(h, _head(9, 3), msd.sample_dropout_masks(8, h.shape, 0.0, generator=g))
    torch.testing.assert_close(msd.msd_loss(logits, y), msd.ce_of_mean_logits(logits, y))
    torch.testing.assert_close(msd.msd_loss(logits, y), F.cross_entropy(logits[0], y))


def test_loss_stable_for_large_logits():
    logits = torch.tensor([[[1000.0, 0.0], [0.0, -1000.0]]])
    y = torch.tensor([0, 0])
    assert torch.isfinite(msd.msd_loss(logits, y))


def test_loss_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        msd.msd_loss(torch.randn(2, 3, 4, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y"):
        msd.msd_loss(torch.randn(2, 3, 4), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- the module

def test_module_train_and_eval_modes():
    head = _head(10, 4)
    layer = msd.MultiSampleDropout(head, num_samples=8, p=0.5)
    h = torch.randn(6, 10)
    out = layer(h)
    assert out.shape == (8, 6, 4)
    assert not torch.allclose(out[0], out[1])          # the samples differ in training
    layer.eval()
    torch.testing.assert_close(layer(h), head(h))      # no dropout at inference


def test_module_gradients_flow_and_match_loop():
    """The batched module's gradient equals the average of per-sample gradients with the same masks."""
    torch.manual_seed(0)
    head = _head(5, 3)
    h = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    masks = msd.sample_dropout_masks(3, h.shape, 0.5, generator=torch.Generator().manual_seed(0))
    msd.msd_loss(msd.msd_logits(h, head, masks), y).backward()
    g_batched = h.grad.clone()
    h.grad = None
    loss = sum(F.cross_entropy(head(masks[m] * h), y) for m in range(3)) / 3
    loss.backward()
    torch.testing.assert_close(g_batched, h.grad)


def test_training_with_msd_learns():
    from layerwise.core import train
    from layerwise.data import digits
    d = digits(flat=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), msd.MultiSampleDropout(nn.Linear(64, 10), 4, 0.5))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    hist = train(model, d.train, msd.msd_loss, opt, epochs=3, eval_data=d.test, progress=False)
    assert hist.eval_acc[-1] > 0.85
