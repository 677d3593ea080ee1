"""Tests of layerwise.devil (DeViL) and layerwise.data.captions, plus the answers the grading tests submit."""

from __future__ import annotations

import pytest
import torch

from layerwise import devil
from layerwise.data import captions as cap

# Submitted by tests/test_assignments.py in place of the exercise's answer cells.
# Faithful reimplementations written differently from the reference: must score full.
ALTERNATIVE_ANSWERS = {
    "spatial_dropout_pool": (
        "def spatial_dropout_pool(fmap, keep):\n"
        "    w = keep.unsqueeze(1).to(fmap.dtype)\n"
        "    return (fmap * w).sum(dim=(-2, -1)) / w.sum(dim=(-2, -1))\n"),
    "layer_token_mask": (
        "def layer_token_mask(num_layers, drop, generator):\n"
        "    u = torch.rand(num_layers, generator=generator)\n"
        "    while not bool((u >= drop).any()):\n"
        "        u = torch.rand(num_layers, generator=generator)\n"
        "    return u >= drop\n"),
    "location_scores": (
        "def location_scores(losses_per_location, height, width):\n"
        "    s = -losses_per_location\n"
        "    lo = s.min(dim=-1, keepdim=True).values\n"
        "    hi = s.max(dim=-1, keepdim=True).values\n"
        "    out = (s - lo) / (hi - lo).clamp_min(torch.finfo(s.dtype).tiny)\n"
        "    return out.view(*s.shape[:-1], height, width)\n"),
}
# Plausible mistakes: each must lose its item's points. The last of each passes the visible
# test and is caught only by the hidden tests (batches, edge cases).
WRONG_ANSWERS = {
    "spatial_dropout_pool": [
        "def spatial_dropout_pool(fmap, keep):\n"
        "    return (fmap * keep.unsqueeze(1)).mean(dim=(2, 3))  # divides by all H*W locations\n",
        "def spatial_dropout_pool(fmap, keep):\n"
        "    w = keep.unsqueeze(1).to(fmap.dtype)\n"
        "    return (fmap * w).sum(dim=(2, 3)) / keep.sum()  # counts the kept locations of the whole batch\n",
    ],
    "layer_token_mask": [
        "def layer_token_mask(num_layers, drop, generator):\n"
        "    keep = torch.rand(num_layers, generator=generator) < drop  # keeps with probability drop\n"
        "    if not keep.any():\n"
        "        keep[0] = True\n"
        "    return keep\n",
        "def layer_token_mask(num_layers, drop, generator):\n"
        "    keep = torch.rand(num_layers, generator=generator) >= drop\n"
        "    if not keep.any():\n"
        "        keep[0] = True  # always rescues the first layer instead of drawing again\n"
        "    return keep\n",
    ],
    "location_scores": [
        "def location_scores(losses_per_location, height, width):\n"
        "    s = losses_per_location  # forgot the minus: high loss = unlikely phrase\n"
        "    lo, hi = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)\n"
        "    return ((s - lo) / (hi - lo)).reshape(*s.shape[:-1], height, width)\n",
        "def location_scores(losses_per_location, height, width):\n"
        "    s = -losses_per_location\n"
        "    s = (s - s.min()) / (s.max() - s.min())  # one min-max over all maps, and no guard for flat maps\n"
        "    return s.reshape(*s.shape[:-1], height, width)\n",
    ],
}


# ----------------------------------------------------------------------------- spatial dropout

def test_spatial_dropout_pool_known_answer():
    fmap = torch.arange(8.0).view(1, 2, 2, 2)                  # channel 0: 0..3, channel 1: 4..7
    keep = torch.tensor([[[True, False], [False, True]]])
    torch.testing.assert_close(devil.spatial_dropout_pool(fmap, keep), torch.tensor([[1.5, 5.5]]))
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    torch.testing.assert_close(devil.spatial_dropout_pool(fmap, full), fmap.mean(dim=(2, 3)))


def test_spatial_dropout_pool_one_location_is_that_feature_and_keeps_dtype():
    fmap = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    keep = torch.zeros(3, 4, 6, dtype=torch.bool)
    keep[:, 2, 1] = True
    out = devil.spatial_dropout_pool(fmap, keep)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, fmap[:, :, 2, 1])


def test_spatial_dropout_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="keep"):
        devil.spatial_dropout_pool(torch.randn(2, 3, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one"):
        devil.spatial_dropout_pool(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="fmap"):
        devil.spatial_dropout_pool(torch.randn(3, 4, 4), torch.ones(3, 4, 4, dtype=torch.bool))


def test_sample_spatial_keep_rate_and_never_empty():
    g = torch.Generator().manual_seed(0)
    keep = devil.sample_spatial_keep(4000, 3, 3, 0.5, g)
    assert keep.shape == (4000, 3, 3) and keep.dtype == torch.bool
    assert keep.flatten(1).any(1).all()
    assert abs(keep.float().mean().item() - 0.5) < 0.02
    assert devil.sample_spatial_keep(5, 2, 2, 0.0, g).all()
    with pytest.raises(ValueError, match="p"):
        devil.sample_spatial_keep(2, 2, 2, 1.0, g)


# ----------------------------------------------------------------------------- layer-token dropout

def test_layer_token_mask_is_u_at_least_drop():
    g = torch.Generator().manual_seed(1)
    u = torch.rand(5, generator=torch.Generator().manual_seed(1))
    assert (u >= 0.5).any()
    assert torch.equal(devil.layer_token_mask(5, 0.5, g), u >= 0.5)


def test_layer_token_mask_redraws_until_one_is_kept():
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([devil.layer_token_mask(3, 0.9, g) for _ in range(3000)])
    assert masks.any(1).all()
    # conditional on at least one kept, each layer is kept with probability 0.1 / (1 - 0.9**3)
    assert abs(masks.float().mean().item() - 0.1 / (1 - 0.9 ** 3)) < 0.03
    assert devil.layer_token_mask(4, 0.0, g).all()
    assert devil.layer_token_masks(7, 3, 0.5, g).shape == (7, 3)


def test_layer_token_mask_is_deterministic_given_the_generator():
    a = devil.layer_token_mask(6, 0.7, torch.Generator().manual_seed(11))
    b = devil.layer_token_mask(6, 0.7, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


@pytest.mark.parametrize("args,err", [((0, 0.5), ValueError), ((2, 1.0), ValueError), ((2, "x"), TypeError)])
def test_layer_token_mask_rejects_bad_input(args, err):
    with pytest.raises(err):
        devil.layer_token_mask(*args, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        devil.layer_token_mask(2, 0.5, 0)


# ----------------------------------------------------------------------------- attribution maps

def test_location_scores_known_answer():
    losses = torch.tensor([3.0, 1.0, 2.0, 5.0, 1.0, 4.0])        # 2 x 3 map, row-major
    s = devil.location_scores(losses, 2, 3)
    torch.testing.assert_close(s, torch.tensor([[0.5, 1.0, 0.75], [0.0, 1.0, 0.25]]))


def test_location_scores_batched_per_map_and_flat_maps():
    losses = torch.stack([torch.arange(6.0), 10 * torch.arange(6.0), torch.full((6,), 2.0)]).double()
    s = devil.location_scores(losses, 3, 2)
    assert s.shape == (3, 3, 2) and s.dtype == torch.float64
    torch.testing.assert_close(s[0], s[1])
    assert torch.equal(s[2], torch.zeros(3, 2, dtype=torch.float64))
    assert s[0].argmax() == 0


def test_location_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="height"):
        devil.location_scores(torch.rand(5), 2, 3)
    with pytest.raises(TypeError, match="losses"):
        devil.location_scores(torch.arange(6), 2, 3)
    with pytest.raises(ValueError, match="width"):
        devil.location_scores(torch.rand(6), 6, 0)


# ----------------------------------------------------------------------------- translator and model

def _tiny_devil(seed: int = 0):
    from layerwise.devil import CaptionCNN, tiny_lm, word_tokenizer

    torch.manual_seed(seed)
    cnn = CaptionCNN((4, 8, 8))
    tr = devil.Translator(devil.TranslatorConfig(feature_dims=[4, 8, 8], lm_dim=64, dim=32, depth=1, heads=2,
                                                 prefix_tokens=3))
    return devil.DeViL(cnn.eval(), tiny_lm().eval(), word_tokenizer(), tr)


def test_translator_shapes_and_masked_layers_are_ignored():
    tr = devil.Translator(devil.TranslatorConfig(feature_dims=[4, 6], lm_dim=10, dim=16, depth=1, heads=2,
                                                 prefix_tokens=3)).eval()
    a = [torch.randn(5, 4), torch.randn(5, 6)]
    b = [a[0], torch.randn(5, 6)]                        # the second layer changes...
    keep = torch.tensor([[True, False]] * 5)             # ...but is masked
    out = tr(a, keep)
    assert out.shape == (5, 3, 10)
    torch.testing.assert_close(out, tr(b, keep))
    assert not torch.allclose(tr(a), tr(b))
    with pytest.raises(ValueError, match="keep"):
        tr(a, torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="pooled"):
        tr(a[:1])


def test_encode_captions_adds_bos_eos_and_pads():
    from layerwise.devil import word_tokenizer

    tok = word_tokenizer()
    ids, mask = devil.encode_captions(tok, ["a red circle at top", "a blue square at centre and a red circle at top"])
    assert ids[0, 0] == tok.bos_token_id and ids[0, 6] == tok.eos_token_id and ids[0, 7] == tok.pad_token_id
    assert mask.sum(1).tolist() == [7, 13]
    assert tok.decode(ids[0, 1:6]) == "a red circle at top"
    with pytest.raises(TypeError, match="captions"):
        devil.encode_captions(tok, "a red circle")


def test_training_loss_trains_only_the_translator():
    model = _tiny_devil()
    scenes = cap.captioned_scenes(6, seed=0)
    ids, mask = devil.encode_captions(model.tokenizer, scenes.captions)
    loss = devil.training_loss(model, model.feature_maps(scenes.images), ids, mask, p_spatial=0.5, p_token=0.5,
                               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    assert all(p.grad is None for p in model.lm.parameters()) and all(p.grad is None for p in model.vision.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.translator.parameters())
    model.train()
    assert not model.lm.training and not model.vision.training and model.translator.training


def test_caption_loss_matches_the_lm_own_loss():
    """Our token NLL after the soft prompt equals transformers' own loss on the same inputs_embeds."""
    model = _tiny_devil(1)
    scenes = cap.captioned_scenes(4, seed=1)
    ids, mask = devil.encode_captions(model.tokenizer, scenes.captions)
    prompt = model.soft_prompt(model.feature_maps(scenes.images))
    x, m = model.embed_prompt(prompt, ids, mask)
    p = prompt.shape[1]
    labels = torch.cat([torch.full((4, 1 + p), -100), ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)], 1)
    want = model.lm(inputs_embeds=x, attention_mask=m, labels=labels).loss
    torch.testing.assert_close(model.caption_loss(prompt, ids, mask), want)


def test_generate_locations_and_phrases():
    model = _tiny_devil(2)
    scenes = cap.captioned_scenes(3, seed=2)
    texts = model.describe(scenes.images, layer=1, max_tokens=5)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    fmaps = model.feature_maps(scenes.images)
    assert [tuple(f.shape[1:]) for f in fmaps] == [(4, 12, 12), (8, 6, 6), (8, 3, 3)]
    prompts = model.location_prompts(fmaps[1], 1)
    assert prompts.shape == (3 * 36, 3, 64)
    losses = model.phrase_losses(prompts, ["red", "blue circle"])
    assert losses.shape == (2, 3 * 36) and (losses > 0).all()
    maps = devil.location_scores(losses.view(2, 3, 36), 6, 6)
    assert maps.shape == (2, 3, 6, 6)
    with pytest.raises(ValueError, match="layer"):
        model.layer_keep(2, 3)


# ----------------------------------------------------------------------------- captioned scenes

def test_captioned_scenes_are_seeded_and_consistent():
    a, b = cap.captioned_scenes(64, seed=5), cap.captioned_scenes(64, seed=5)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (64, 3, 24, 24) and 0 <= a.images.min() and a.images.max() <= 1
    assert a.masks.shape == (64, 2, 24, 24)
    for i in range(64):
        stated = cap.parse_caption(a.captions[i])
        truth = [tuple(r) for r in a.attributes[i].tolist() if r[0] >= 0]
        assert stated == truth
        for k, (c, s, p) in enumerate(truth):
            ys, xs = torch.nonzero(a.masks[i, k] > 0.5, as_tuple=True)
            assert len(ys) > 0 and (ys.float().mean() // 8).item() == p // 3 and (xs.float().mean() // 8).item() == p % 3
        assert a.attributes[i, 1, 0] < 0 or a.attributes[i, 0, 2] < a.attributes[i, 1, 2]   # reading order
    assert 0.3 < (a.num_objects == 2).float().mean() < 0.7
    assert not torch.equal(a.images, cap.captioned_scenes(64, seed=6).images)


def test_caption_vocabulary_and_corpus():
    words = {w for c in cap.random_captions(500, seed=0) for w in c.split()}
    assert words <= set(cap.VOCAB) and len(words) == len(cap.VOCAB) - len(cap.SPECIALS)
    assert cap.parse_caption("a red blob at nowhere") == [(0, -1, -1)]
    with pytest.raises(ValueError, match="n"):
        cap.captioned_scenes(0)
    with pytest.raises(TypeError, match="text"):
        cap.parse_caption(3)


# ----------------------------------------------------------------------------- evaluation and chapter helpers

def test_attribute_accuracy_scores_phrase_by_phrase():
    attrs = torch.tensor([[[0, 0, 0], [1, 1, 4]], [[2, 2, 8], [-1, -1, -1]]])
    texts = ["a red circle at top-left and a green circle at centre", "a blue triangle at top"]
    acc = cap.attribute_accuracy(texts, attrs)
    assert acc == {"colour": 1.0, "shape": 2 / 3, "position": 2 / 3, "objects": 1.0}
    assert cap.attribute_accuracy(["", ""], attrs)["colour"] == 0.0
    with pytest.raises(ValueError, match="texts"):
        cap.attribute_accuracy(texts[:1], attrs)


def test_pointing_game():
    masks = torch.zeros(2, 6, 6)
    masks[:, 0:2, 4:6] = 1.0                      # the object sits in the top-right 2 x 2 block
    scores = torch.zeros(2, 3, 3)
    scores[0, 0, 2] = 1.0                         # points at it
    scores[1, 2, 0] = 1.0                         # points elsewhere
    assert devil.pointing_game(scores, masks).tolist() == [True, False]
    with pytest.raises(ValueError, match="agree"):
        devil.pointing_game(scores, masks[:1])


def test_keyword_prompts_hold_only_the_caption_content_words():
    from layerwise.devil import keyword_prompts, word_tokenizer

    tok = word_tokenizer()
    texts = cap.random_captions(50, seed=3)
    ids, mask = devil.encode_captions(tok, texts)
    g = torch.Generator().manual_seed(0)
    pad = tok.pad_token_id
    full = keyword_prompts(ids, mask, 4, 1.0, g)
    assert full.shape == (50, 4)
    assert (keyword_prompts(ids, mask, 4, 0.0, g) == pad).all()
    for row, text in zip(full.tolist(), texts):
        words = [tok.convert_ids_to_tokens(t) for t in row if t != pad]
        content = [w for w in text.split() if w not in ("a", "at", "and")]
        assert len(words) == min(4, len(content)) and set(words) <= set(content)


def test_query_losses_match_phrase_losses():
    from layerwise.devil import query_losses

    model = _tiny_devil(3)
    scenes = cap.captioned_scenes(2, seed=3)
    prompts = model.location_prompts(model.feature_maps(scenes.images)[2], 2)
    q = query_losses(model, prompts)
    pairs = model.phrase_losses(prompts, [f"a {c} {s}" for c in cap.COLORS for s in cap.CAPTION_SHAPES])
    torch.testing.assert_close(q["pair"], pairs.view(len(cap.COLORS), len(cap.CAPTION_SHAPES), -1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q["colour"], model.phrase_losses(prompts, [f"a {c}" for c in cap.COLORS]),
                               rtol=1e-4, atol=1e-4)
    assert q["shape"].shape == (len(cap.CAPTION_SHAPES), 18) and (q["shape"] <= q["pair"].min(0).values + 1e-5).all()


# ----------------------------------------------------------------------------- the pretrained GPT-2 path

def _gpt2_like(tmp_path):
    """The classes the full profile's ``pretrained_gpt2`` returns (GPT2TokenizerFast, GPT2LMHeadModel),
    built offline: a byte-level BPE vocabulary with no merges and a randomly initialised 1-layer model."""
    import json

    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]          # GPT-2's byte-to-unicode table
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab["<|endoftext|>"] = len(vocab)
    special = dict(unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    try:                                                  # transformers 5: the vocabulary itself
        tok = GPT2TokenizerFast(vocab=vocab, merges=[], **special)
    except TypeError:                                     # transformers 4: files
        (tmp_path / "vocab.json").write_text(json.dumps(vocab))
        (tmp_path / "merges.txt").write_text("#version: 0.2\n")
        tok = GPT2TokenizerFast(vocab_file=str(tmp_path / "vocab.json"),
                                merges_file=str(tmp_path / "merges.txt"), **special)
    assert len(tok) == 257
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    return lm, tok


def test_the_gpt2_tokenizer_path_trains_generates_and_scores(tmp_path):
    """GPT-2's tokenizer has no pad token and uses one id for bos and eos: the code must cope."""
    from layerwise.devil import CaptionCNN

    lm, tok = _gpt2_like(tmp_path)
    assert tok.pad_token_id is None and tok.bos_token_id == tok.eos_token_id
    ids, mask = devil.encode_captions(tok, ["a red circle", "a blue square at top"])
    assert ids[0, 0] == tok.bos_token_id and mask.sum(1).tolist() == [len("a red circle") + 2, len("a blue square at top") + 2]
    assert tok.decode(ids[1, 1:-1]) == "a blue square at top"
    torch.manual_seed(0)
    tr = devil.Translator(devil.TranslatorConfig(feature_dims=[4, 8, 8], lm_dim=32, dim=32, depth=1, heads=2,
                                                 prefix_tokens=3))
    model = devil.DeViL(CaptionCNN((4, 8, 8)).eval(), lm, tok, tr)
    scenes = cap.captioned_scenes(4, seed=3)
    ids, mask = devil.encode_captions(tok, scenes.captions)
    loss = devil.training_loss(model, model.feature_maps(scenes.images), ids, mask, p_spatial=0.5, p_token=0.5,
                               generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.translator.parameters())
    texts = model.describe(scenes.images, max_tokens=4)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    prompts = model.location_prompts(model.feature_maps(scenes.images)[1], 1)
    losses = model.phrase_losses(prompts, ["red", "blue circle"])
    assert losses.shape == (2, prompts.shape[0]) and torch.isfinite(losses).all()
