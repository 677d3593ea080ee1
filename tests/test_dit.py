"""Tests of the diffusion core's networks: TinyDiT, TinyAutoencoder, UNetDenoiser."""

from __future__ import annotations

import pytest
import torch

from layerwise.diffusion import (AEConfig, DiTConfig, TinyAutoencoder, TinyDiT, UNetDenoiser, grid_position_ids)
from layerwise.diffusion.dit import patchify, rope_angles, unpatchify


def _dit(**kw) -> TinyDiT:
    torch.manual_seed(0)
    model = TinyDiT(DiTConfig(**{"in_channels": 3, "image_size": 8, "patch": 2, "dim": 32, "depth": 2, "heads": 2,
                                 **kw}))
    for p in model.parameters():          # leave adaLN-Zero's zero start so outputs depend on inputs
        if p.dim() > 0 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_adaln_zero_starts_as_a_zero_predictor():
    torch.manual_seed(0)
    model = TinyDiT(in_channels=3, image_size=8, patch=2, dim=32, depth=2, heads=2)
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([3, 700]))
    assert out.shape == (2, 3, 8, 8) and out.abs().max() == 0


def test_patchify_roundtrip_non_square():
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 24, 12)
    torch.testing.assert_close(unpatchify(tokens, 2, 3, 8, 12), x)
    model = _dit()
    assert model(x, torch.tensor([1, 2])).shape == x.shape


def test_permuting_tokens_with_their_position_ids_permutes_the_output():
    """Positions enter only through the ids (rotary), so order in the sequence does not matter."""
    model = _dit()
    tokens = torch.randn(1, 16, 12)
    ids = grid_position_ids(4, 4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100])
    out = model.forward_tokens(tokens, t, pos_ids=ids)
    out_p = model.forward_tokens(tokens[:, perm], t, pos_ids=ids[perm])
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-4)
    # and the ids matter: the same tokens at other positions give another output
    assert not torch.allclose(model.forward_tokens(tokens, t, pos_ids=ids[perm]), out, atol=1e-4)


def test_cloned_position_ids_give_identical_codes():
    ids = torch.tensor([[0, 1, 2], [1, 1, 2], [0, 3, 0]])
    ang = rope_angles(ids[:, 1:], 8)
    torch.testing.assert_close(ang[0], ang[1])          # same (y, x), different layer
    assert not torch.allclose(ang[0], ang[2])


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masked_keys_cannot_influence_other_tokens(kind):
    model = _dit()
    n = 16
    keep = torch.ones(n, n, dtype=torch.bool)
    keep[:, 8:] = False                                   # nobody may look at tokens 8..15 ...
    keep[8:, 8:] = torch.eye(8, dtype=torch.bool)         # ... except themselves
    mask = keep if kind == "bool" else torch.zeros(n, n).masked_fill(~keep, float("-inf"))
    tokens = torch.randn(1, n, 12)
    changed = tokens.clone()
    changed[:, 8:] = torch.randn(1, 8, 12)
    ids, t = grid_position_ids(4, 4), torch.tensor([500])
    a = model.forward_tokens(tokens, t, pos_ids=ids, mask=mask)
    b = model.forward_tokens(changed, t, pos_ids=ids, mask=mask)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    unmasked = model.forward_tokens(changed, t, pos_ids=ids)
    assert not torch.allclose(unmasked[:, :8], a[:, :8])


def test_three_axis_positions_and_batched_ids():
    model = _dit(pos_axes=3, dim=48, heads=2)              # head dim 24 = 3 axes × 8
    tokens = torch.randn(2, 10, 12)
    ids = torch.stack([grid_position_ids(2, 5, axes=3, layer=k) for k in (0, 1)])
    out = model.forward_tokens(tokens, torch.tensor([5, 6]), pos_ids=ids)
    assert out.shape == (2, 10, 12)
    with pytest.raises(ValueError, match="pos_ids"):
        model.forward_tokens(tokens, torch.tensor([5, 6]), pos_ids=grid_position_ids(2, 5))


def test_label_and_vector_conditions_change_the_output():
    labelled = _dit(num_classes=4)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    a, b = labelled(x, t, torch.tensor([0, 0])), labelled(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(a, b) and labelled(x, t, None).shape == a.shape   # None = the null label
    vec = _dit(cond_dim=5)
    assert not torch.allclose(vec(x, t, torch.zeros(2, 5)), vec(x, t, torch.ones(2, 5)))
    with pytest.raises(ValueError, match="cond"):
        _dit()(x, t, torch.zeros(2, 5))


def test_attention_processor_can_be_swapped():
    model = _dit()
    calls = []

    def processor(attn, x, angles, mask):
        calls.append(x.shape)
        return attn.attend(*attn.split(x, angles), mask)

    x, t = torch.randn(1, 3, 8, 8), torch.tensor([1])
    ref = model(x, t)
    for block in model.blocks:
        block.attn.processor = processor
    torch.testing.assert_close(model(x, t), ref)
    assert len(calls) == len(model.blocks)


def test_dit_bad_config_and_input():
    with pytest.raises(ValueError, match="patch"):
        DiTConfig(image_size=10, patch=4)
    with pytest.raises(ValueError, match="heads"):
        DiTConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="x must"):
        _dit()(torch.randn(1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="multiples of patch"):
        _dit()(torch.randn(1, 3, 7, 8), torch.tensor([1]))


def test_autoencoder_shapes_and_scale_buffer():
    torch.manual_seed(0)
    ae = TinyAutoencoder(AEConfig())
    x = torch.rand(2, 3, 32, 32)
    z = ae.encode(x)
    assert z.shape == (2, 4, 8, 8) and ae.decode(z).shape == x.shape
    assert "scale" in ae.state_dict()
    ae.scale.fill_(2.0)
    torch.testing.assert_close(ae.encode(x), 2 * z)
    with pytest.raises(ValueError, match="x must"):
        ae.encode(torch.rand(2, 4, 32, 32))


def test_unet_denoiser_interface():
    torch.manual_seed(0)
    net = UNetDenoiser(in_channels=3, image_size=16, channels=(16, 32), num_classes=3)
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([1, 500]), torch.tensor([0, 2]))
    assert out.shape == x.shape and net(x, torch.tensor([1, 500])).shape == x.shape


def test_embed_add_is_added_after_the_embedding():
    """An embed_add of zeros changes nothing; a per-token vector equals adding it to the embedding by hand."""
    from layerwise.diffusion.dit import DiTConfig, TinyDiT, grid_position_ids

    torch.manual_seed(0)
    model = TinyDiT(DiTConfig(in_channels=4, image_size=8, patch=1, dim=48, depth=2, heads=4, pos_axes=3)).eval()
    for block in model.blocks:                       # leave adaLN-Zero's start so the blocks do something
        torch.nn.init.normal_(block.ada[1].weight, std=0.2)
    torch.nn.init.normal_(model.out.weight, std=0.2)
    torch.nn.init.normal_(model.ada_out[1].weight, std=0.2)
    tokens = torch.randn(2, 16, 4)
    ids = grid_position_ids(4, 4, axes=3)
    t = torch.tensor([10, 500])
    base = model.forward_tokens(tokens, t, pos_ids=ids)
    torch.testing.assert_close(model.forward_tokens(tokens, t, pos_ids=ids, embed_add=torch.zeros(16, 48)), base)
    extra = torch.randn(16, 48)
    got = model.forward_tokens(tokens, t, pos_ids=ids, embed_add=extra)
    assert not torch.allclose(got, base)
    with torch.no_grad():                            # the same thing done by hand: fold extra into embed's bias
        by_hand = TinyDiT(model.config).eval()
        by_hand.load_state_dict(model.state_dict())
        by_hand.embed = torch.nn.Sequential(by_hand.embed, _AddPerToken(extra))
    torch.testing.assert_close(got, by_hand.forward_tokens(tokens, t, pos_ids=ids))
    batched = model.forward_tokens(tokens, t, pos_ids=ids, embed_add=extra.expand(2, 16, 48))
    torch.testing.assert_close(batched, got)
    with pytest.raises(ValueError, match="embed_add"):
        model.forward_tokens(tokens, t, pos_ids=ids, embed_add=torch.zeros(15, 48))


class _AddPerToken(torch.nn.Module):
    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return x + self.extra
