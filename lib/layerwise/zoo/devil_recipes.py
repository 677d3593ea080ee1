"""Zoo models of chapter 10 (DeViL, :mod:`layerwise.devil`): the frozen pieces and the translators.

- ``devil_cnn``: :class:`CaptionCNN`, a three-block CNN on 24×24 captioned scenes
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

import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.core.env import progress_bar
from layerwise.zoo.registry import Recipe, register

__all__ = ["CaptionCNN", "word_tokenizer", "tiny_lm", "cnn_targets", "load_devil", "fit_translator", "query_losses",
           "keyword_prompts",
           "pretrained_gpt2", "CNN", "LM", "TRANSLATOR", "TRANSLATOR_NAMES"]


# --- the backbone ---------------------------------------------------------------------------------

class CaptionCNN(nn.Module):
    """Three conv–BN–ReLU–maxpool blocks (24 → 12 → 6 → 3) and a linear head on the pooled last map.

    ``feature_maps(x)`` returns the three blocks' outputs (what DeViL decodes); ``forward(x)``
    returns ``(B, 9 * (colours + shapes))`` logits: is colour c / shape s in cell k?
    """

    def __init__(self, widths=(16, 32, 64), outputs: int = 63):
        super().__init__()
        blocks, c = [], 3
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                        nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c * 9, outputs)
        self.widths = tuple(widths)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.feature_maps(x)[-1]
        return self.head(F.adaptive_avg_pool2d(last, 3).flatten(1))


def cnn_targets(attributes: torch.Tensor) -> torch.Tensor:
    """``(n, 63)`` 0/1 targets from scene attributes ``(n, 2, 3)``: 36 cell×colour, then 27 cell×shape."""
    from layerwise.data.captions import CAPTION_SHAPES, COLORS

    n = attributes.shape[0]
    nc, ns = len(COLORS), len(CAPTION_SHAPES)
    t = torch.zeros(n, 9 * (nc + ns))
    for k in range(attributes.shape[1]):
        a = attributes[:, k]
        rows = (a[:, 0] >= 0).nonzero().squeeze(1)
        t[rows, a[rows, 2] * nc + a[rows, 0]] = 1
        t[rows, 9 * nc + a[rows, 2] * ns + a[rows, 1]] = 1
    return t


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

    data = captioned_scenes(cfg["data"]["n"], cfg["data"]["size"], seed=cfg["data"]["seed"])
    t = cnn_targets(data.attributes)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    for _ in progress_bar(range(steps), desc="devil_cnn", enabled=progress):
        idx = torch.randint(0, len(data), (cfg["batch_size"],), generator=generator)
        loss = F.binary_cross_entropy_with_logits(model(data.images[idx].to(device)), t[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
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

def word_tokenizer():
    """A ``transformers`` fast tokenizer over the caption vocabulary: one id per word, built here
    (nothing downloaded). bos/eos/pad are ``<bos>``/``<eos>``/``<pad>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from layerwise.data.captions import VOCAB

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


LM = dict(model=dict(n_embd=64, n_layer=2, n_head=4, n_positions=40), data=dict(n=40000, seed=41),
          batch_size=64, lr=3e-3, prompt_slots=4)


def tiny_lm(cfg: dict | None = None):
    """An untrained tiny ``GPT2LMHeadModel`` over :func:`word_tokenizer`'s vocabulary (untied
    output layer, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from layerwise.data.captions import VOCAB

    m = (cfg or LM)["model"]
    config = GPT2Config(vocab_size=len(VOCAB), bos_token_id=VOCAB.index("<bos>"), eos_token_id=VOCAB.index("<eos>"),
                        pad_token_id=VOCAB.index("<pad>"), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=False, **m)
    return GPT2LMHeadModel(config)


def pretrained_gpt2(device=None):
    """(GPT2LMHeadModel, GPT2TokenizerFast) from the hub's ``gpt2`` (needs the network: Colab's full
    profile only). The tokenizer's pad is its eos."""
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    tok.pad_token = tok.eos_token
    return GPT2LMHeadModel.from_pretrained("gpt2").to(device or "cpu").eval(), tok


@torch.no_grad()
def _lm_nll(model, captions, device) -> float:
    """Per-token NLL of ``captions`` after ``<bos>`` and an empty (all ``<pad>``) prompt."""
    from layerwise.devil import encode_captions

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


def keyword_prompts(ids: torch.Tensor, mask: torch.Tensor, slots: int, keep: float,
                    generator: torch.Generator) -> torch.Tensor:
    """``(B, slots)`` token ids: a random subset (each kept with probability ``keep``) of each
    caption's content words (colours, shapes, positions), in random order, padded with ``<pad>``."""
    from layerwise.data.captions import CAPTION_SHAPES, COLORS, POSITIONS, VOCAB

    content = torch.zeros(len(VOCAB), dtype=torch.bool)
    content[[VOCAB.index(w) for w in COLORS + CAPTION_SHAPES + POSITIONS]] = True
    pad = VOCAB.index("<pad>")
    chosen = content[ids] & (mask > 0) & (torch.rand(ids.shape, generator=generator) < keep)
    order = torch.where(chosen, torch.rand(ids.shape, generator=generator), torch.full(ids.shape, 2.0)).argsort(1)
    words = torch.where(chosen.gather(1, order), ids.gather(1, order), torch.full_like(ids, pad))
    out = torch.full((ids.shape[0], slots), pad, dtype=torch.long)
    width = min(slots, ids.shape[1])
    out[:, :width] = words[:, :width]
    return out


def _fit_lm(model, cfg, steps, generator, device, progress=None):
    """Captions preceded by ``prompt_slots`` keyword slots (a random subset of the caption's own
    content words, or ``<pad>``), with the loss on the caption only: the LM learns to *follow a
    prompt* in the positions where DeViL's soft prompt will sit, as a large pretrained LM does."""
    from layerwise.data.captions import random_captions
    from layerwise.devil import encode_captions

    tok = word_tokenizer()
    ids, mask = encode_captions(tok, random_captions(cfg["data"]["n"], seed=cfg["data"]["seed"]))
    slots = cfg["prompt_slots"]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    for _ in progress_bar(range(steps), desc="devil_lm", enabled=progress):
        idx = torch.randint(0, len(ids), (cfg["batch_size"],), generator=generator)
        b_ids, b_mask = ids[idx], mask[idx]
        keep = float(torch.rand((), generator=generator))            # how much of the caption the prompt gives away
        prompt = keyword_prompts(b_ids, b_mask, slots, keep, generator)
        x = torch.cat([b_ids[:, :1], prompt, b_ids[:, 1:]], 1)
        m = torch.cat([b_mask[:, :1], torch.ones_like(prompt), b_mask[:, 1:]], 1)
        labels = torch.cat([torch.full((len(idx), 1 + slots), -100), b_ids[:, 1:].masked_fill(b_mask[:, 1:] == 0, -100)], 1)
        loss = model(input_ids=x.to(device), attention_mask=m.to(device), labels=labels.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {"metric": _lm_nll(model, random_captions(2000, seed=777), device)}


def _eval_lm(model, generator, device):
    from layerwise.data.captions import random_captions

    seed = int(torch.randint(10_000, 1_000_000, (), generator=generator))
    return _lm_nll(model, random_captions(2000, seed=seed), device)


register(Recipe(
    name="devil_lm", build=lambda cfg: tiny_lm(cfg), fit=_fit_lm, evaluate=_eval_lm, config=LM, steps=1500,
    seed=41, metric="heldout_caption_nll_per_token", tolerance=1.1,
    description="chapter 10's frozen language model: tiny GPT-2 (transformers, 2 layers, width 64) trained from "
                "scratch on template captions, word-level tokenizer of the caption vocabulary"))


# --- the translators ------------------------------------------------------------------------------

TRANSLATOR = dict(model=dict(feature_dims=[16, 32, 64], lm_dim=64, dim=64, depth=2, heads=4, prefix_tokens=4),
                  data=dict(n=8000, size=24, seed=42), batch_size=64, lr=3e-3, p_token=0.5, p_spatial=0.5)
#: zoo name of the translator trained with / without spatial dropout
TRANSLATOR_NAMES = {True: "devil_translator", False: "devil_translator_nosd"}


def _build_translator(cfg):
    from layerwise.devil import Translator, TranslatorConfig

    return Translator(TranslatorConfig(**cfg["model"]))


def load_devil(spatial_dropout: bool = True, device=None):
    """The chapter's trained :class:`~layerwise.devil.DeViL` (frozen CNN and LM from the zoo,
    translator trained with or without spatial dropout), in eval mode."""
    from layerwise.devil import DeViL
    from layerwise.zoo import load

    return DeViL(load("devil_cnn", device=device), load("devil_lm", device=device), word_tokenizer(),
                 load(TRANSLATOR_NAMES[bool(spatial_dropout)], device=device)).eval()


@torch.no_grad()
def _all_feature_maps(model, images, chunk: int = 1000) -> list[torch.Tensor]:
    parts = [model.feature_maps(images[i:i + chunk]) for i in range(0, len(images), chunk)]
    return [torch.cat([p[l] for p in parts]) for l in range(len(parts[0]))]


def fit_translator(model, data, *, steps: int, batch_size: int, lr: float, p_spatial: float, p_token: float,
                   generator: torch.Generator, progress=None) -> list[float]:
    """Train ``model.translator`` (a :class:`~layerwise.devil.DeViL`) on captioned scenes ``data``
    with :func:`~layerwise.devil.training_loss`: AdamW, warm-up and cosine schedule. The frozen
    backbone's maps and the tokenised captions are computed once. Returns the losses."""
    from layerwise.devil import encode_captions, training_loss

    fmaps = _all_feature_maps(model, data.images)
    ids, mask = encode_captions(model.tokenizer, data.captions, model.device)
    params = list(model.translator.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    model.train()
    losses = []
    for _ in progress_bar(range(steps), desc="translator", enabled=progress):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator).to(model.device)
        width = int(mask[idx].sum(1).max())
        loss = training_loss(model, [f[idx] for f in fmaps], ids[idx, :width], mask[idx, :width],
                             p_spatial=p_spatial, p_token=p_token, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def _caption_nll(model, scenes) -> float:
    """Held-out captioning loss (per token) with every layer, no dropout."""
    from layerwise.devil import encode_captions

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(scenes), 500):
        ids, mask = encode_captions(model.tokenizer, scenes.captions[i:i + 500], model.device)
        nll = model.token_nll(model.soft_prompt(model.feature_maps(scenes.images[i:i + 500])), ids, mask)
        total, count = total + nll.sum().item(), count + mask[:, 1:].sum().item()
    return total / count


def _devil_around(translator, device):
    from layerwise.devil import DeViL
    from layerwise.zoo import load

    return DeViL(load("devil_cnn", device=device), load("devil_lm", device=device), word_tokenizer(),
                 translator.to(device))


def _fit_translator(translator, cfg, steps, generator, device, progress=None):
    from layerwise.data.captions import captioned_scenes

    model = _devil_around(translator, device)
    data = captioned_scenes(cfg["data"]["n"], cfg["data"]["size"], seed=cfg["data"]["seed"])
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


# --- queries for attribution maps -----------------------------------------------------------------

@torch.no_grad()
def query_losses(model, prompts: torch.Tensor) -> dict[str, torch.Tensor]:
    """LM losses of the chapter's query phrases after each soft prompt ``(N, P, D)``.

    ``"colour"``: ``(4, N)`` loss of "a <colour>"; ``"pair"``: ``(4, 3, N)`` of "a <colour> <shape>";
    ``"shape"``: ``(3, N)`` of the shape with the colour word marginalised,
    ``-log Σ_c p(a c shape)``. With a one-token-per-word tokenizer this needs one LM call per
    colour (the next-token distributions give every shape at once); otherwise it scores each
    phrase with :meth:`~layerwise.devil.DeViL.phrase_losses`.
    """
    from layerwise.data.captions import CAPTION_SHAPES, COLORS

    vocab = model.lm.get_output_embeddings().weight.shape[0]
    chunk = max(64, int(2e8 // (vocab * 8)))          # bounds the (rows, tokens, vocab) logits in memory
    if prompts.shape[0] > chunk:
        parts = [query_losses(model, prompts[i:i + chunk]) for i in range(0, prompts.shape[0], chunk)]
        return {k: torch.cat([p[k] for p in parts], dim=-1) for k in parts[0]}
    tok = model.tokenizer
    word_ids = [tok(w, add_special_tokens=False)["input_ids"] for w in ("a", *COLORS, *CAPTION_SHAPES)]
    n, p = prompts.shape[0], prompts.shape[1]
    if any(len(w) != 1 for w in word_ids):              # e.g. GPT-2's BPE: score whole phrases
        pair = model.phrase_losses(prompts, [f"a {c} {s}" for c in COLORS for s in CAPTION_SHAPES])
        pair = pair.view(len(COLORS), len(CAPTION_SHAPES), n)
        colour = model.phrase_losses(prompts, [f"a {c}" for c in COLORS])
    else:
        a, colours, shapes = word_ids[0][0], [w[0] for w in word_ids[1:1 + len(COLORS)]], [w[0] for w in word_ids[1 + len(COLORS):]]
        colour, pair = [], []
        for c in colours:
            ids = torch.tensor([[tok.bos_token_id, a, c]], device=prompts.device).expand(n, -1)
            x, m = model._embed(prompts, ids, torch.ones_like(ids))
            logp = model.lm(inputs_embeds=x, attention_mask=m).logits.float().log_softmax(-1)
            lp = logp[:, p, a] + logp[:, p + 1, c]
            colour.append(-lp)
            pair.append(-(lp.unsqueeze(0) + logp[:, p + 2, shapes].T))
        colour, pair = torch.stack(colour), torch.stack(pair)
    return {"colour": colour, "pair": pair, "shape": -torch.logsumexp(-pair, dim=0)}
