"""Zoo models of chapter 10 (DeViL, :mod:`layerwise.devil`): the frozen pieces and the translators.

- ``devil_cnn``: :class:`~layerwise.devil.CaptionCNN`, a three-block CNN on 24×24 captioned scenes
  (:mod:`layerwise.data.captions`), trained to say which colour and which shape sits in each
  of the 9 cells (63 binary outputs); DeViL decodes its three blocks' maps (12×12, 6×6, 3×3).
- ``devil_lm``: a tiny GPT-2 (``transformers.GPT2LMHeadModel``, 2 layers, width 64) trained
  from scratch on the caption corpus with the word-level tokenizer of :func:`word_tokenizer`; each
  training caption is preceded by 4 slots holding a random subset of its own content words
  (:func:`keyword_prompts`), so that the LM follows whatever sits where DeViL's soft prompt goes.
- ``devil_translator`` / ``devil_translator_nosd``: the translation transformer trained over
  the frozen two with layer-token dropout 0.5, with and without spatial dropout (p = 0.5).

Training and evaluation scenes come from different seeds, so ``check`` measures every model
on scenes it never saw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise.core.train import fit_steps
from layerwise.devil import (CaptionCNN, DeViL, Translator, TranslatorConfig, cnn_targets, encode_captions,
                             fit_translator, keyword_prompts, tiny_lm, word_tokenizer)
from layerwise.zoo.registry import Recipe, register, training_set_size

__all__ = ["CNN", "LM", "TRANSLATOR", "TRANSLATOR_NAMES", "load_devil"]


# --- the backbone ---------------------------------------------------------------------------------

CNN = dict(model=dict(widths=[16, 32, 64]), data=dict(n=8000, size=24, seed=40), batch_size=64, lr=3e-3)


def _build_cnn(cfg):
    return CaptionCNN(tuple(cfg["model"]["widths"]))


@torch.no_grad()
def _cnn_error(model, scenes, device) -> float:
    """Share of scenes whose 63 predicted bits are not all right."""
    model.eval()
    t = cnn_targets(scenes.attributes)
    wrong = 0
    for i in range(0, len(scenes), 512):
        pred = (model(scenes.images[i:i + 512].to(device)) > 0).float().cpu()
        wrong += (pred != t[i:i + 512]).any(1).sum().item()
    return wrong / len(scenes)


def _fit_cnn(model, cfg, steps, generator, device, progress=None):
    from layerwise.data.captions import captioned_scenes

    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    data = captioned_scenes(n, cfg["data"]["size"], seed=cfg["data"]["seed"])
    t = cnn_targets(data.attributes)

    def loss_fn(step):
        idx = torch.randint(0, len(data), (cfg["batch_size"],), generator=generator)
        return F.binary_cross_entropy_with_logits(model(data.images[idx].to(device)), t[idx].to(device))

    fit_steps(model, loss_fn, steps, lr=cfg["lr"], weight_decay=1e-4, cosine=True, progress=progress, desc="devil_cnn")
    return {"metric": _cnn_error(model, captioned_scenes(2000, cfg["data"]["size"], seed=777), device)}


def _eval_cnn(model, generator, device):
    from layerwise.data.captions import captioned_scenes

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _cnn_error(model, captioned_scenes(2000, CNN["data"]["size"], seed=seed), device)


register(Recipe(
    name="devil_cnn", build=_build_cnn, fit=_fit_cnn, evaluate=_eval_cnn, config=CNN, steps=2500, seed=40,
    metric="heldout_scene_error", tolerance=1.5, slack=0.02,
    description="chapter 10's frozen backbone: 3-block CNN (16/32/64 channels; maps 12×12, 6×6, 3×3) on 24×24 "
                "captioned scenes, trained to name the colour and shape in each of 9 cells"))


# --- the language model ---------------------------------------------------------------------------

LM = dict(model=dict(n_embd=64, n_layer=2, n_head=4, n_positions=40), data=dict(n=40000, seed=41),
          batch_size=64, lr=3e-3, prompt_slots=4)


@torch.no_grad()
def _lm_nll(model, captions, device) -> float:
    """Per-token NLL of ``captions`` after ``<bos>`` and an empty (all ``<pad>``) prompt."""
    model.eval()
    tok = word_tokenizer()
    total, count = 0.0, 0
    for i in range(0, len(captions), 512):
        ids, mask = encode_captions(tok, captions[i:i + 512], device)
        slots = torch.full((len(ids), LM["prompt_slots"]), tok.pad_token_id, device=device)   # an empty prompt
        x = torch.cat([ids[:, :1], slots, ids[:, 1:]], 1)
        m = torch.cat([mask[:, :1], torch.ones_like(slots), mask[:, 1:]], 1)
        logits = model(input_ids=x, attention_mask=m).logits[:, slots.shape[1]:-1]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
        total, count = total + nll.sum().item(), count + mask[:, 1:].sum().item()
    return total / count


def _fit_lm(model, cfg, steps, generator, device, progress=None):
    """Captions preceded by ``prompt_slots`` keyword slots (a random subset of the caption's own
    content words, or ``<pad>``), with the loss on the caption only: the LM learns to *follow a
    prompt* in the positions where DeViL's soft prompt will sit, as a large pretrained LM does."""
    from layerwise.data.captions import random_captions

    tok = word_tokenizer()
    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    ids, mask = encode_captions(tok, random_captions(n, seed=cfg["data"]["seed"]))
    slots = cfg["prompt_slots"]

    def loss_fn(step):
        idx = torch.randint(0, len(ids), (cfg["batch_size"],), generator=generator)
        b_ids, b_mask = ids[idx], mask[idx]
        keep = float(torch.rand((), generator=generator))            # how much of the caption the prompt gives away
        prompt = keyword_prompts(b_ids, b_mask, slots, keep, generator)
        x = torch.cat([b_ids[:, :1], prompt, b_ids[:, 1:]], 1)
        m = torch.cat([b_mask[:, :1], torch.ones_like(prompt), b_mask[:, 1:]], 1)
        labels = torch.cat([torch.full((len(idx), 1 + slots), -100), b_ids[:, 1:].masked_fill(b_mask[:, 1:] == 0, -100)], 1)
        return model(input_ids=x.to(device), attention_mask=m.to(device), labels=labels.to(device)).loss

    fit_steps(model, loss_fn, steps, lr=cfg["lr"], weight_decay=0.01, cosine=True, progress=progress, desc="devil_lm")
    return {"metric": _lm_nll(model, random_captions(2000, seed=777), device)}


def _eval_lm(model, generator, device):
    from layerwise.data.captions import random_captions

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _lm_nll(model, random_captions(2000, seed=seed), device)


register(Recipe(
    name="devil_lm", build=lambda cfg: tiny_lm(**cfg["model"]), fit=_fit_lm, evaluate=_eval_lm, config=LM, steps=1500,
    seed=41, metric="heldout_caption_nll_per_token", tolerance=1.1,
    description="chapter 10's frozen language model: tiny GPT-2 (transformers, 2 layers, width 64) trained from "
                "scratch on template captions, word-level tokenizer of the caption vocabulary"))


# --- the translators ------------------------------------------------------------------------------

TRANSLATOR = dict(model=dict(feature_dims=[16, 32, 64], lm_dim=64, dim=64, depth=2, heads=4, prefix_tokens=4),
                  data=dict(n=8000, size=24, seed=42), batch_size=64, lr=3e-3, p_token=0.5, p_spatial=0.5)
#: zoo name of the translator trained with / without spatial dropout
TRANSLATOR_NAMES = {True: "devil_translator", False: "devil_translator_nosd"}


def _build_translator(cfg):
    return Translator(TranslatorConfig(**cfg["model"]))


@torch.no_grad()
def _caption_nll(model, scenes) -> float:
    """Held-out captioning loss (per token) with every layer, no dropout."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(scenes), 500):
        ids, mask = encode_captions(model.tokenizer, scenes.captions[i:i + 500], model.device)
        nll = model.token_nll(model.soft_prompt(model.feature_maps(scenes.images[i:i + 500])), ids, mask)
        total, count = total + nll.sum().item(), count + mask[:, 1:].sum().item()
    return total / count


def _devil_around(translator, device):
    from layerwise.zoo import load

    return DeViL(load("devil_cnn", device=device), load("devil_lm", device=device), word_tokenizer(),
                 translator.to(device))


def _fit_translator(translator, cfg, steps, generator, device, progress=None):
    from layerwise.data.captions import captioned_scenes

    model = _devil_around(translator, device)
    n = training_set_size(cfg["data"]["n"], steps, cfg["batch_size"])
    data = captioned_scenes(n, cfg["data"]["size"], seed=cfg["data"]["seed"])
    losses = fit_translator(model, data, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"],
                            p_spatial=cfg["p_spatial"], p_token=cfg["p_token"], generator=generator,
                            progress=progress)
    tail = losses[-100:]
    metric = _caption_nll(model, captioned_scenes(1000, cfg["data"]["size"], seed=777))
    return {"metric": metric, "train_loss_last100": sum(tail) / max(1, len(tail))}


def _eval_translator(translator, generator, device):
    from layerwise.data.captions import captioned_scenes

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _caption_nll(_devil_around(translator, device), captioned_scenes(1000, TRANSLATOR["data"]["size"], seed=seed))


for _sd, _name in TRANSLATOR_NAMES.items():
    _cfg = {**TRANSLATOR, "p_spatial": TRANSLATOR["p_spatial"] if _sd else 0.0}
    register(Recipe(
        name=_name, build=_build_translator, fit=_fit_translator, evaluate=_eval_translator, config=_cfg,
        steps=3000, seed=42 if _sd else 43, metric="heldout_caption_nll_per_token",
        requires=("devil_cnn", "devil_lm"), tolerance=1.25, slack=0.01,
        description=f"DeViL translation transformer (2 layers, width 64, 4 prefix tokens) over the frozen devil_cnn "
                    f"and devil_lm; layer-token dropout 0.5, spatial dropout {_cfg['p_spatial']:g}"))


def load_devil(spatial_dropout: bool = True, device=None) -> DeViL:
    """The chapter's trained :class:`~layerwise.devil.DeViL` from the zoo (frozen CNN and LM,
    translator trained with or without spatial dropout), in eval mode."""
    from layerwise.zoo import load

    return _devil_around(load(TRANSLATOR_NAMES[bool(spatial_dropout)], device=device), device).eval()
