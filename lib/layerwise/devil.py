"""DeViL: Decoding Vision features into Language (Dani, Rio-Torto, Alaniz, Akata; GCPR 2023).

A frozen vision backbone gives feature maps at several layers; a frozen language model
writes text. DeViL trains only a small *translation transformer* in between (paper §3, Fig. 2):

1. every chosen layer's map ``(B, C_l, H_l, W_l)`` is average-pooled to one vector — during
   training over a random subset of its locations (**spatial dropout**,
   :func:`spatial_dropout_pool`, §3.2);
2. each vector is projected to the translator's width and gets its layer's position
   embedding; a few learnable *prefix* tokens are appended;
3. the layer tokens are randomly dropped from attention (**layer-token dropout**,
   :func:`layer_token_mask`, at least one kept), so the translator learns to describe any
   single layer as well as their combination;
4. the translator's outputs at the prefix tokens, projected to the language model's
   embedding size, are a **soft prompt**: they are placed after the BOS token as
   ``inputs_embeds`` of the frozen LM, which is trained to continue them with the image's
   caption (the captioning loss, the only loss, §3.3).

At inference, keeping one layer's token gives that layer's caption; feeding *one location's*
feature of one layer and reading the LM's loss of a query phrase gives an open-vocabulary
attribution map (:func:`location_scores`, §3.4).

Everything here works with any backbone exposing ``feature_maps(images) -> list of maps`` and any
``transformers`` causal LM (the course's tiny GPT-2, :func:`tiny_lm`, trained on the captions in the
zoo, or the pretrained ``gpt2`` on Colab, :func:`pretrained_gpt2`). The chapter's pieces are here too:
the backbone :class:`CaptionCNN`, the word tokenizer, the LM's keyword prompts, the translator's
training loop :func:`fit_translator` and the attribution queries :func:`query_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["spatial_dropout_pool", "sample_spatial_keep", "layer_token_mask", "layer_token_masks",
           "location_scores", "TranslatorConfig", "Translator", "DeViL", "encode_captions", "training_loss", "pointing_game",
           "CaptionCNN", "cnn_targets", "word_tokenizer", "tiny_lm", "pretrained_gpt2", "keyword_prompts",
           "all_feature_maps", "fit_translator", "query_losses"]


def _check_prob(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} (a drop probability) must be in [0, 1), got {p}")
    return float(p)


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


# ----------------------------------------------------------------------------- §3.2 spatial dropout

def spatial_dropout_pool(fmap: Tensor, keep: Tensor) -> Tensor:
    """Average-pool a feature map over the kept locations only (spatial dropout, §3.2).

    fmap: ``(B, C, H, W)`` floating; keep: ``(B, H, W)`` bool (or 0/1), at least one location
    kept per image. Returns ``(B, C)`` in ``fmap``'s dtype: for each image the mean of
    ``fmap[b, :, i, j]`` over the locations with ``keep[b, i, j]``. With every location kept
    it is global average pooling; with one kept it is that location's feature.
    """
    if not isinstance(fmap, Tensor) or fmap.dim() != 4 or not fmap.is_floating_point():
        raise ValueError(f"fmap must be a floating (B, C, H, W) tensor, got {getattr(fmap, 'shape', type(fmap).__name__)}")
    b, _, h, w = fmap.shape
    if not isinstance(keep, Tensor) or keep.shape != (b, h, w):
        raise ValueError(f"keep must be a ({b}, {h}, {w}) tensor matching fmap {tuple(fmap.shape)}, "
                         f"got {getattr(keep, 'shape', type(keep).__name__)}")
    weight = keep.to(fmap.dtype)
    count = weight.sum(dim=(1, 2))
    if (count <= 0).any():
        raise ValueError("keep must keep at least one location of every image")
    return torch.einsum("bchw,bhw->bc", fmap, weight) / count.unsqueeze(1)


def sample_spatial_keep(batch: int, height: int, width: int, p: float, generator: torch.Generator) -> Tensor:
    """Random keep masks ``(batch, height, width)`` bool for :func:`spatial_dropout_pool`.

    Each location is dropped with probability ``p`` (``u < p`` for ``u = torch.rand``); an
    image whose locations were all dropped keeps its location of largest ``u`` instead. (The
    official code draws such an all-dropped mask again; keeping one location is our choice and
    changes only those rare draws: probability ``p ** (height * width)``.)
    """
    p = _check_prob(p, "p")
    u = torch.rand(batch, height * width, generator=_check_generator(generator))
    keep = u >= p
    none = ~keep.any(1)
    keep[none, u[none].argmax(1)] = True
    return keep.view(batch, height, width)


# ----------------------------------------------------------------------------- §3.2 layer-token dropout

def layer_token_mask(num_layers: int, drop: float, generator: torch.Generator) -> Tensor:
    """Which layer tokens the translator sees in one training example (§3.2): ``(num_layers,)`` bool.

    Draw ``u = torch.rand(num_layers, generator=generator)``; a layer is kept where
    ``u >= drop``. If no layer was kept, draw ``u`` again (same call) until one is: the
    translator always sees at least one layer. Deterministic given the generator's state.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    drop = _check_prob(drop, "drop")
    _check_generator(generator)
    while True:
        keep = torch.rand(num_layers, generator=generator) >= drop
        if keep.any():
            return keep


def layer_token_masks(batch: int, num_layers: int, drop: float, generator: torch.Generator) -> Tensor:
    """``(batch, num_layers)`` bool: one :func:`layer_token_mask` per example."""
    return torch.stack([layer_token_mask(num_layers, drop, generator) for _ in range(batch)])


# ----------------------------------------------------------------------------- §3.4 attribution maps

def location_scores(losses_per_location: Tensor, height: int, width: int) -> Tensor:
    """An attribution map from the LM's loss of a query phrase at each location (§3.4).

    losses_per_location: ``(..., height * width)``, locations in row-major order (location
    ``i * width + j`` is row ``i``, column ``j``). The score is ``-loss`` (a phrase the LM finds
    likely scores high), rescaled per map to [0, 1] by min–max (a constant map gives zeros).
    Returns ``(..., height, width)`` in the input's dtype.
    """
    if not isinstance(losses_per_location, Tensor) or not losses_per_location.is_floating_point():
        raise TypeError(f"losses_per_location must be a floating tensor, got {type(losses_per_location).__name__}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if losses_per_location.dim() < 1 or losses_per_location.shape[-1] != height * width:
        raise ValueError(f"losses_per_location must end in height * width = {height * width} locations, "
                         f"got shape {tuple(losses_per_location.shape)}")
    score = -losses_per_location
    low = score.amin(dim=-1, keepdim=True)
    span = score.amax(dim=-1, keepdim=True) - low
    score = torch.where(span > 0, (score - low) / torch.where(span > 0, span, torch.ones_like(span)),
                        torch.zeros_like(score))
    return score.reshape(*score.shape[:-1], height, width)


# ----------------------------------------------------------------------------- §3.1 the translator

@dataclass
class TranslatorConfig:
    """Sizes of the translation transformer.

    feature_dims: channels of each decoded layer (shallow to deep); lm_dim: the LM's embedding
    size; dim/depth/heads: the translator; prefix_tokens: length of the soft prompt.
    """

    feature_dims: Sequence[int] = field(default_factory=lambda: [16, 32, 64])
    lm_dim: int = 64
    dim: int = 64
    depth: int = 2
    heads: int = 4
    prefix_tokens: int = 4


class Translator(nn.Module):
    """Layer tokens + learnable prefix tokens → transformer encoder → soft prompt (§3.1).

    ``forward(pooled, keep)``: pooled is a list of ``(B, C_l)`` vectors, one per layer;
    keep ``(B, L)`` bool says which layer tokens attend (None: all). Returns the soft prompt
    ``(B, prefix_tokens, lm_dim)``. Each layer's vector is layer-normalised before its
    projection (our choice: pooled means and single locations then have the same scale).
    """

    def __init__(self, config: TranslatorConfig):
        super().__init__()
        if not config.feature_dims:
            raise ValueError("config.feature_dims must name at least one layer")
        self.config = config
        d = config.dim
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in config.feature_dims)
        self.projections = nn.ModuleList(nn.Linear(c, d) for c in config.feature_dims)
        self.layer_embedding = nn.Parameter(0.1 * torch.randn(len(config.feature_dims), d))
        self.prefix = nn.Parameter(0.1 * torch.randn(config.prefix_tokens, d))
        block = nn.TransformerEncoderLayer(d, config.heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.lm_dim)

    @property
    def num_layers(self) -> int:
        return len(self.config.feature_dims)

    def forward(self, pooled: Sequence[Tensor], keep: Tensor | None = None) -> Tensor:
        if len(pooled) != self.num_layers:
            raise ValueError(f"pooled must hold {self.num_layers} layers' vectors, got {len(pooled)}")
        tokens = torch.stack([proj(norm(v)) for v, norm, proj in zip(pooled, self.norms, self.projections)], 1)
        b = tokens.shape[0]
        tokens = tokens + self.layer_embedding
        x = torch.cat([tokens, self.prefix.expand(b, -1, -1)], 1)
        if keep is None:
            keep = torch.ones(b, self.num_layers, dtype=torch.bool, device=x.device)
        if keep.shape != (b, self.num_layers) or not keep.any(1).all():
            raise ValueError(f"keep must be a ({b}, {self.num_layers}) bool mask keeping >= 1 layer per row")
        ignore = torch.cat([~keep.bool(), torch.zeros(b, self.config.prefix_tokens, dtype=torch.bool,
                                                      device=x.device)], 1)
        h = self.encoder(x, src_key_padding_mask=ignore)
        return self.out(self.norm(h[:, self.num_layers:]))


# ----------------------------------------------------------------------------- the whole model

def encode_captions(tokenizer, captions: Sequence[str], device=None) -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` each ``(B, T)``: ``<bos> caption <eos>`` right-padded with the pad token.

    Works with the course's word-level tokenizer and with GPT-2's (whose pad is its eos)."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, not one string")
    body = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    seqs = [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] for ids in body]
    t = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(seqs), t), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


class DeViL(nn.Module):
    """Frozen ``vision`` (with ``feature_maps``) + trainable :class:`Translator` + frozen ``lm``.

    ``vision`` and ``lm`` never train (``train()`` keeps them in eval mode, their parameters do
    not require grad); ``tokenizer`` is a ``transformers`` tokenizer with bos/eos/pad ids.
    """

    def __init__(self, vision: nn.Module, lm: nn.Module, tokenizer, translator: Translator):
        super().__init__()
        self.vision, self.lm, self.translator = vision, lm, translator
        self.tokenizer = tokenizer
        self.vision.requires_grad_(False)
        self.lm.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "DeViL":
        super().train(mode)
        self.vision.eval()
        self.lm.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.translator.prefix.device

    @torch.no_grad()
    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The frozen backbone's maps, shallow to deep: list of ``(B, C_l, H_l, W_l)``."""
        return [f.detach() for f in self.vision.feature_maps(images.to(self.device))]

    def soft_prompt(self, fmaps: Sequence[Tensor], keep_layers: Tensor | None = None,
                    spatial_keep: Sequence[Tensor | None] | None = None) -> Tensor:
        """Pool every map (over ``spatial_keep[l]`` if given, else everywhere) and translate:
        ``(B, prefix_tokens, lm_dim)``."""
        pooled = []
        for i, f in enumerate(fmaps):
            k = None if spatial_keep is None else spatial_keep[i]
            pooled.append(f.mean(dim=(2, 3)) if k is None else spatial_dropout_pool(f, k))
        return self.translator(pooled, keep_layers)

    def embed_prompt(self, prompt: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``inputs_embeds`` = [emb(<bos>), soft prompt, emb(rest)] and its attention mask."""
        emb = self.lm.get_input_embeddings()(ids)
        p = prompt.shape[1]
        x = torch.cat([emb[:, :1], prompt.to(emb.dtype), emb[:, 1:]], 1)
        m = torch.cat([mask[:, :1], mask.new_ones(mask.shape[0], p), mask[:, 1:]], 1)
        return x, m

    def token_nll(self, prompt: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """``(B, T-1)`` negative log-likelihood of every token after ``<bos>`` given the soft
        prompt (0 at padding)."""
        x, m = self.embed_prompt(prompt, ids, mask)
        logits = self.lm(inputs_embeds=x, attention_mask=m).logits
        p = prompt.shape[1]
        pred = logits[:, p:-1]                         # positions that predict ids[:, 1:]
        nll = F.cross_entropy(pred.transpose(1, 2).float(), ids[:, 1:], reduction="none")
        return nll * mask[:, 1:]

    def caption_loss(self, prompt: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """The captioning loss (§3.3): mean NLL per caption token (eos included)."""
        return self.token_nll(prompt, ids, mask).sum() / mask[:, 1:].sum()

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_tokens: int = 16) -> list[str]:
        """Greedy captions continuing ``<bos> + soft prompt``: B strings."""
        b = prompt.shape[0]
        tok = self.tokenizer
        ids = torch.full((b, 1), tok.bos_token_id, dtype=torch.long, device=prompt.device)
        done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
        for _ in range(max_tokens):
            x, m = self.embed_prompt(prompt, ids, torch.ones_like(ids))
            nxt = self.lm(inputs_embeds=x, attention_mask=m).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, tok.eos_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == tok.eos_token_id
            if done.all():
                break
        return [tok.decode([t for t in row.tolist()[1:] if t != tok.eos_token_id], skip_special_tokens=True).strip()
                for row in ids]

    def layer_keep(self, batch: int, layer: int | None) -> Tensor | None:
        """Keep mask that shows only ``layer`` (None: all layers)."""
        if layer is None:
            return None
        n = self.translator.num_layers
        if not -n <= layer < n:
            raise ValueError(f"layer must be in [-{n}, {n}), got {layer}")
        keep = torch.zeros(batch, n, dtype=torch.bool, device=self.device)
        keep[:, layer] = True
        return keep

    @torch.no_grad()
    def describe(self, images: Tensor, layer: int | None = None, max_tokens: int = 16,
                 batch_size: int = 256) -> list[str]:
        """Captions of ``images`` from one layer (or all layers when ``layer`` is None), ``batch_size``
        images at a time."""
        out: list[str] = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            fmaps = self.feature_maps(chunk)
            out += self.generate(self.soft_prompt(fmaps, self.layer_keep(len(chunk), layer)), max_tokens)
        return out

    def location_prompts(self, fmap: Tensor, layer: int, window: int = 1) -> Tensor:
        """Soft prompts from every single location of one layer's map ``(B, C, H, W)``:
        ``(B * H * W, prefix_tokens, lm_dim)``, row-major per image (§3.4). ``window > 1``
        averages each location's ``window × window`` neighbourhood first (as the paper's code can)."""
        b, c, h, w = fmap.shape
        if window > 1:
            fmap = F.avg_pool2d(fmap, window, stride=1, padding=window // 2, count_include_pad=False)
        loc = fmap.permute(0, 2, 3, 1).reshape(b * h * w, c)
        pooled = [torch.zeros(b * h * w, d, device=fmap.device) for d in self.translator.config.feature_dims]
        pooled[layer] = loc
        return self.translator(pooled, self.layer_keep(b * h * w, layer))

    @torch.no_grad()
    def phrase_losses(self, prompts: Tensor, phrases: Sequence[str]) -> Tensor:
        """``(len(phrases), N)``: summed NLL of each phrase's words right after each soft prompt
        (no ``<eos>``: a phrase is the start of a caption)."""
        out = []
        for phrase in phrases:
            ids, mask = encode_captions(self.tokenizer, [phrase], self.device)
            ids, mask = ids[:, :-1], mask[:, :-1]                         # drop <eos>
            n = prompts.shape[0]
            out.append(self.token_nll(prompts, ids.expand(n, -1), mask.expand(n, -1)).sum(1))
        return torch.stack(out)


# ----------------------------------------------------------------------------- §3.3 training objective

def training_loss(model: DeViL, fmaps: Sequence[Tensor], ids: Tensor, mask: Tensor, *, p_spatial: float,
                  p_token: float, generator: torch.Generator) -> Tensor:
    """The captioning loss of one batch with both dropouts (§3.2–3.3).

    fmaps: the frozen backbone's maps of the batch (:meth:`DeViL.feature_maps`); ids, mask: the
    captions from :func:`encode_captions`. Every map is pooled over a random subset of locations
    (each dropped with probability ``p_spatial``; 0 switches spatial dropout off) and each
    example sees a random subset of layer tokens (each dropped with probability ``p_token``,
    at least one kept).
    """
    b = ids.shape[0]
    spatial = None
    if p_spatial > 0:
        spatial = [sample_spatial_keep(b, f.shape[2], f.shape[3], p_spatial, generator).to(f.device) for f in fmaps]
    keep = None
    if p_token > 0:
        keep = layer_token_masks(b, model.translator.num_layers, p_token, generator).to(ids.device)
    return model.caption_loss(model.soft_prompt(fmaps, keep, spatial), ids, mask)


# ----------------------------------------------------------------------------- §4 evaluation

def pointing_game(scores: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Does each map's highest-scoring location fall on its object? ``(N,)`` bool.

    scores: ``(N, h, w)`` attribution maps; masks: ``(N, H, W)`` the true objects' coverage,
    with ``H, W`` multiples of ``h, w``. A location is on the object when the object covers
    more than ``threshold`` of some pixel of the image block that location stands for.
    """
    if scores.dim() != 3 or masks.dim() != 3 or scores.shape[0] != masks.shape[0]:
        raise ValueError(f"scores (N, h, w) and masks (N, H, W) must agree in N, got {tuple(scores.shape)} "
                         f"and {tuple(masks.shape)}")
    n, h, w = scores.shape
    block = F.adaptive_max_pool2d(masks.unsqueeze(1).float(), (h, w)).view(n, h * w)
    best = scores.reshape(n, h * w).argmax(1)
    return block[torch.arange(n), best] > threshold


# ----------------------------------------------------------------------------- the chapter's backbone and LM

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

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        last = self.feature_maps(x)[-1]
        return self.head(F.adaptive_avg_pool2d(last, 3).flatten(1))


def cnn_targets(attributes: Tensor) -> Tensor:
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


def word_tokenizer():
    """A ``transformers`` fast tokenizer over the caption vocabulary: one id per word, built here
    (nothing downloaded). bos/eos/pad are ``<bos>``/``<eos>``/``<pad>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from layerwise.data.captions import VOCAB

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_lm(n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_positions: int = 40):
    """An untrained tiny ``GPT2LMHeadModel`` over :func:`word_tokenizer`'s vocabulary (untied
    output layer, no dropout); the chapter's frozen LM is this, trained on the captions (zoo
    ``devil_lm``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from layerwise.data.captions import VOCAB

    config = GPT2Config(vocab_size=len(VOCAB), bos_token_id=VOCAB.index("<bos>"), eos_token_id=VOCAB.index("<eos>"),
                        pad_token_id=VOCAB.index("<pad>"), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=False, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        n_positions=n_positions)
    return GPT2LMHeadModel(config)


def pretrained_gpt2(device=None):
    """(GPT2LMHeadModel, GPT2TokenizerFast) from the hub's ``gpt2`` (needs the network: Colab's full
    profile only). The tokenizer's pad is its eos."""
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    tok.pad_token = tok.eos_token
    return GPT2LMHeadModel.from_pretrained("gpt2").to(device or "cpu").eval(), tok


def keyword_prompts(ids: Tensor, mask: Tensor, slots: int, keep: float,
                    generator: torch.Generator) -> Tensor:
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


# ----------------------------------------------------------------------------- training the translator

@torch.no_grad()
def all_feature_maps(model: "DeViL", images: Tensor, chunk: int = 1000) -> list[Tensor]:
    """The frozen backbone's maps of ``images`` (computed ``chunk`` at a time), shallow to deep."""
    parts = [model.feature_maps(images[i:i + chunk]) for i in range(0, len(images), chunk)]
    return [torch.cat([p[l] for p in parts]) for l in range(len(parts[0]))]


def fit_translator(model: "DeViL", data, *, steps: int, batch_size: int, lr: float, p_spatial: float,
                   p_token: float, generator: torch.Generator, progress: bool | None = None) -> list[float]:
    """Train ``model.translator`` on captioned scenes ``data`` (:mod:`layerwise.data.captions`)
    with :func:`training_loss`, the backbone and LM frozen: AdamW (weight decay 0.01), 100 warm-up
    steps and a cosine decay, gradient clipping at 1 (:func:`layerwise.core.train.fit_steps`).
    The frozen backbone's maps and the tokenised captions are computed once. Returns the losses."""
    from layerwise.core.train import fit_steps

    fmaps = all_feature_maps(model, data.images)
    ids, mask = encode_captions(model.tokenizer, data.captions, model.device)

    def loss_fn(step: int) -> Tensor:
        idx = torch.randint(0, len(data), (batch_size,), generator=generator).to(model.device)
        width = int(mask[idx].sum(1).max())
        return training_loss(model, [f[idx] for f in fmaps], ids[idx, :width], mask[idx, :width],
                             p_spatial=p_spatial, p_token=p_token, generator=generator)

    hist = fit_steps(model, loss_fn, steps, lr=lr, weight_decay=0.01, params=model.translator.parameters(),
                     warmup=100, cosine=True, clip=1.0, progress=progress, desc="translator")
    return hist.loss


# ----------------------------------------------------------------------------- attribution queries

@torch.no_grad()
def query_losses(model: "DeViL", prompts: Tensor) -> dict[str, Tensor]:
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
            x, m = model.embed_prompt(prompts, ids, torch.ones_like(ids))
            logp = model.lm(inputs_embeds=x, attention_mask=m).logits.float().log_softmax(-1)
            lp = logp[:, p, a] + logp[:, p + 1, c]
            colour.append(-lp)
            pair.append(-(lp.unsqueeze(0) + logp[:, p + 2, shapes].T))
        colour, pair = torch.stack(colour), torch.stack(pair)
    return {"colour": colour, "pair": pair, "shape": -torch.logsumexp(-pair, dim=0)}
